# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 4: Training — teaching a network to denoise
#
# Chapter 3 showed that a noise predictor is all we need, and that the *ideal* one memorises.
# Now we train a real one: first on 2-D points in seconds, then on MNIST for a few minutes on your
# CPU, watching the loss fall and the samples sharpen.
#
# **After this chapter you can**
# - write the DDPM training step piece by piece (sample $t$, sample $\varepsilon$, noise, predict, squared error);
# - run the library's training loop with a progress bar and a live loss plot, and read the loss by timestep;
# - explain what the exponential moving average (EMA) of the weights does, and see its effect.
#
# **Assumes**: chapters 2-3; a gradient step with an optimiser such as Adam.

# %%
# Setup: works unchanged locally, on Binder and on Colab (where it installs the course's library).
import sys

if "google.colab" in sys.modules:
    # %pip install -q "diffusion_lib @ git+https://github.com/diffusion-course/diffusion-course"
    pass

# %%
# %matplotlib inline
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import diffusion_lib as dl
from diffusion_lib.course import ch04, exercises
from diffusion_lib.course.measured import load_measured
from diffusion_lib.course.plots import show_grid

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
classifier, _ = dl.pretrained("mnist_classifier")
test_images, _ = dl.load_mnist(train=False)

# %% [markdown]
# ## 1. One training step, piece by piece
#
# DDPM's Algorithm 1 (Ho et al. 2020): take a data batch $x_0$, draw a timestep $t$ uniformly and
# noise $\varepsilon \sim \mathcal N(0, I)$ per example, jump to $x_t$ with the closed form, and
# regress the network's output onto the noise:
#
# $$L_{\text{simple}} = \mathbb E_{x_0, t, \varepsilon}\,\big\lVert \varepsilon - \varepsilon_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\big)\big\rVert^2 .$$
#
# By hand on 2-D points with the library's MLP, then the same randomness through `dl.diffusion_loss`:

# %%
schedule = dl.make_schedule("linear", 1000)
mlp = dl.MLPDenoiser()
x0 = dl.make_toy("swissroll", 256, torch.Generator().manual_seed(0))
generator = torch.Generator().manual_seed(1)
t = torch.randint(0, schedule.T, (len(x0),), generator=generator)  # 1. a timestep per example
eps = torch.randn(x0.shape, generator=generator)  # 2. the noise
ab = schedule.alpha_bars.float()[t][:, None]
xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # 3. jump to x_t
eps_pred = mlp(xt, t)  # 4. predict the noise
loss_by_hand = (eps_pred - eps).pow(2).mean()  # 5. squared error
print(f"loss by hand {loss_by_hand.item():.6f}; dl.diffusion_loss {dl.diffusion_loss(mlp, x0, t, eps, schedule).item():.6f}")

# %% [markdown]
# Then the gradient step, repeated. The library's `train` loop does exactly this with AdamW,
# a learning-rate warm-up, gradient clipping and an EMA of the weights, and draws all its randomness
# from one seeded generator (so a run can be stopped and resumed bit for bit). On the Swiss roll,
# with a live loss plot:

# %%
roll_config = dl.TrainConfig(data="swissroll", steps=200 if FAST else 3000, batch_size=256, lr=3e-3, T=1000,
                             ema_decay=0.99, seed=0)
roll = dl.train(roll_config, callback=ch04.LiveLossPlot(every=100, title="Swiss roll: training loss"))
samples_2d, _ = dl.generate(roll.ema_model, roll_config.info(), 2000, "ddim", 50, seed=1)
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
axes[0].scatter(*dl.make_toy("swissroll", 2000, torch.Generator().manual_seed(2)).T, s=2)
axes[1].scatter(*samples_2d.T, s=2, color="C1")
axes[0].set(title="data", xlabel="x1", ylabel="x2")
axes[1].set(title=f"samples after {roll_config.steps} steps (DDIM-50)", xlabel="x1")
plt.show()

# %% [markdown]
# ## 2. MNIST on your CPU, for a few minutes
#
# A diffusion model on images is the same loop with a U-Net. What a few CPU-minutes buy depends
# on the recipe. `benchmarks/run.py --only recipes` trained several for the same number of steps
# and scored their samples (MNIST-FID, chapter 5: lower is better; "recognised": the share of
# samples the classifier calls a digit with probability at least 0.9). Its committed figures:

# %%
recipes = load_measured("recipes")
print(f"measured {recipes['date']}, {recipes['threads']} thread(s); {recipes['figures']['n']} samples each, "
      f"real-digit floor {recipes['figures']['real_baseline_fid']:.1f}")
for row in recipes["figures"]["rows"]:
    print(f"{row['recipe']:<20} {row['steps']} steps in {row['train_seconds']:4.0f} s: MNIST-FID {row['mnist_fid']:6.1f}, "
          f"recognised {100 * row['recognised']:3.0f}%")

# %% [markdown]
# The run below uses the recipe that did best for a short budget: a small U-Net (16 base
# channels), the cosine schedule, and the network trained to predict
# $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ instead of $\varepsilon$
# (chapter 3; the samplers convert it to $\varepsilon$).

# %%
mnist_steps = 40 if FAST else 1600
mnist_config = dl.TrainConfig(data="mnist", steps=mnist_steps, batch_size=32, lr=5e-3, warmup=50, ema_decay=0.995,
                              schedule="cosine", prediction="v", seed=0, model={"base_channels": 16})
start = time.perf_counter()
mnist_run = dl.train(mnist_config, callback=ch04.LiveLossPlot(every=100, title="MNIST: training loss"))
train_seconds = time.perf_counter() - start
print(f"{mnist_steps} steps of batch 32 in {train_seconds:.0f} s "
      f"({mnist_steps * 32 / train_seconds:.0f} images/s); U-Net of {sum(p.numel() for p in mnist_run.model.parameters()):,} parameters")
run_samples, _ = dl.generate(mnist_run.ema_model, mnist_config.info(), 16, "ddim", 20, seed=3)
display(show_grid(run_samples, f"your run: {mnist_steps} steps, {train_seconds:.0f} s (DDIM-20)", ncols=8))

# %% [markdown]
# ## 3. Samples improving over training
#
# The course's committed unconditional model, `mnist_uncond`, was trained with the same loop for
# longer, keeping its EMA weights at a few steps along the way (`train --snapshots`). Each snapshot
# samples from the same starting noise; drag through training:

# %%
snapshot_files = dl.pretrained_snapshots("mnist_uncond")
snapshots = ch04.snapshot_samples(snapshot_files, n=16, steps=20, seed=3)
snapshot_steps = sorted(snapshots)
uncond_model, uncond_info = dl.load_model(snapshot_files[-1])
recorded = uncond_info["train_config"]
print(f"mnist_uncond: {recorded['steps']} steps, batch {recorded['batch_size']}, lr {recorded['lr']}, "
      f"seed {recorded['seed']}, schedule {recorded['schedule']}, target {recorded['prediction']}, "
      f"base channels {uncond_model.config.base_channels}; snapshots at steps {snapshot_steps}")


def show_snapshot(step=snapshot_steps[-1]):
    return ch04.snapshot_view(snapshots, step)


widgets.interact(show_snapshot, step=widgets.SelectionSlider(options=snapshot_steps, value=snapshot_steps[-1],
                                                              continuous_update=False));

# %%
display(show_grid(torch.cat([snapshots[s][:8] for s in snapshot_steps]),
                  "mnist_uncond; rows: after " + ", ".join(map(str, snapshot_steps)) + " training steps", ncols=8))

# %% [markdown]
# What do minutes of training buy on a CPU like yours? `benchmarks/run.py --only budget` trained
# two recipes for fixed wall-clock budgets and scored the EMA model after each (MNIST-FID, chapter 5;
# lower is better; "recognised" is the share of samples the classifier calls a digit with
# probability at least 0.9). Its committed figures:

# %%
budget = load_measured("budget")
print(f"measured {budget['date']} with {budget['threads']} thread(s) on {budget['machine']['cpu']}; "
      f"{budget['figures']['n']} samples each, real-digit floor {budget['figures']['real_baseline_fid']:.1f}")
for recipe, rows in budget["figures"]["recipes"].items():
    print(recipe)
    for row in rows:
        print(f"  {row['minutes']:>4g} min: {row['steps']:>5} steps, MNIST-FID {row['mnist_fid']:6.1f}, "
              f"recognised {100 * row['recognised']:3.0f}%")

# %% [markdown]
# ## 4. What the EMA does
#
# Sampling uses not the final weights $\theta$ but their exponential moving average,
# $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$ after every step. Adam's steps jitter the
# weights around a good region; the average sits nearer its middle. Measured on your run, with
# the same noise for both:

# %%
n_eval = 64 if FAST else 256
ema_samples, _ = dl.generate(mnist_run.ema_model, mnist_config.info(), n_eval, "ddim", 20, seed=4)
raw_samples, _ = dl.generate(mnist_run.model.eval(), mnist_config.info(), n_eval, "ddim", 20, seed=4)
for name, images in (("final weights", raw_samples), (f"EMA weights (d={mnist_config.ema_decay})", ema_samples)):
    _, confidence = dl.classify(classifier, images)
    print(f"{name:<26} MNIST-FID {dl.evaluation.mnist_fid(images, classifier):7.1f}; "
          f"recognised as a digit {(confidence >= 0.9).float().mean().item():.2f}")

# %% [markdown]
# ## 5. The loss by timestep
#
# The one loss number averages very different tasks: at small $t$ the noise is tiny and hard to
# separate from detail, at large $t$ the input is nearly all noise. Per range of $t$, on test digits,
# for your run and the committed model (both predict $v$ on the cosine schedule, so the levels compare):

# %%
probe = test_images[: (64 if FAST else 512)]
bins = 10
fig, ax = plt.subplots(figsize=(6.5, 3.4))
centres = (np.arange(bins) + 0.5) * 1000 / bins
for name, model, info in (("your run", mnist_run.ema_model, mnist_config.info()),
                          (f"mnist_uncond ({recorded['steps']} steps)", uncond_model, uncond_info)):
    ax.plot(centres, ch04.loss_by_timestep_range(model, info, probe, bins), "o-", label=name)
ax.set(xlabel="t (centre of range)", ylabel="training loss on test digits", yscale="log", title="loss by timestep range")
ax.legend()
plt.show()

# %% [markdown]
# ## Summary
#
# - A training step: draw $t$ and $\varepsilon$, jump to $x_t$, predict, take the squared error; repeat with Adam.
# - A few CPU-minutes with a small U-Net give digit-like samples; the recipe (model size, schedule, target) matters, so measure it.
# - Snapshots of a longer run show the order of learning: blobs, then strokes, then digits.
# - Sample with the EMA of the weights; the loss depends strongly on $t$.
#
# ## Exercises
#
# **Exercise 1 (implement).** Write `my_loss(model, x0, t, noise, alpha_bars)`, the simple DDPM loss for given $t$ and noise.

# %% tags=["solution"]
def my_loss(model, x0, t, noise, alpha_bars):
    ab = alpha_bars[t].reshape(-1, *([1] * (x0.ndim - 1)))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return (model(xt, t) - noise).pow(2).mean()


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_training_loss(my_loss)

# %% [markdown]
# **Exercise 2 (predict, then check).** An EMA with decay $d = 0.999$ averages, roughly, over how
# many of the most recent steps?

# %% tags=["solution"]
ema_horizon = 1000

# %%
# NBVAL_CHECK_OUTPUT
exercises.check_ema_horizon(ema_horizon)

# %% [markdown]
# **Exercise 3 (open question).** In the measured recipes, predicting $v$ beat predicting
# $\varepsilon$ for short training runs. Look at the loss-by-timestep plot and chapter 3's identities:
# at which $t$ is $\varepsilon$-prediction an awkward target for a small, briefly trained network,
# and why does $v$ avoid that?

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
