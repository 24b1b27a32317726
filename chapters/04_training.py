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
# - run the library's training loop with a progress bar and a live loss plot, and read the loss by noise level;
# - train the straight-path velocity model of chapters 2 and 3 (flow matching, the library's default recipe), say what it changes in that step and why chapter 5's samplers still apply, and switch to DDPM's objective with one argument;
# - explain what the exponential moving average (EMA) of the weights does, and see its effect.
# - recognise the common training and sampling mistakes by their samples, and fix them;
# - train the same recipe on other images (Fashion-MNIST, a folder of your own), and, going further (exercise 6), say when it will only copy them.
#
# **Assumes**: chapters 2-3; a gradient step with an optimiser such as Adam. Samples are drawn with the
# library's samplers used as black boxes (DDIM for the 2-D data, Heun's method for digits); chapter 5
# derives DDIM.

# %%
# Setup: works unchanged locally, on Binder and on Colab (where it installs the course's library).
import sys

if "google.colab" in sys.modules:
    # %pip install -q "diffusion_lib @ git+https://github.com/diffusion-course/diffusion-course"
    pass

# %%
# %matplotlib inline
import copy
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
# The code takes the *mean* over the $D$ coordinates instead of the sum in $\lVert\cdot\rVert^2$: the loss divided by $D$,
# with the same minimiser, and a number comparable across image sizes (the noise target's trivial level is then 1).
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
# a learning-rate warm-up, gradient clipping and an EMA of the weights (an exponential moving average, kept
# beside them and used for sampling; section 4 shows what it does), and draws every batch, noise level
# and noise from one seeded generator (so a run can be stopped and resumed bit for bit). Its core is the
# function `fit` in `diffusion_lib/loop.py`, one screen long: draw a batch, compute the loss, backward,
# clip, AdamW's step, update the EMA; `train` and chapter 9's distillations both run it. Exercises 2 and 3
# have you write the loss the default recipe trains with and this loop yourself; exercise 3's check runs your
# loop and `dl.train` from the same start and compares them, loss for loss. On the Swiss roll, with a live loss plot:

# %%
roll_config = dl.TrainConfig(data="swissroll", steps=200 if FAST else 3000, batch_size=256, lr=3e-3, T=1000,
                             ema_decay=0.99, seed=0, objective="ddpm", schedule="linear", prediction="eps")
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
# A diffusion model on images is the same loop with a U-Net. On images this chapter trains on the
# straight path of chapter 2 (section 6), with the flow velocity of chapter 3 (section 1) as its target:
# **flow matching**, in the form Stable Diffusion 3 trains (Esser et al. 2024), and the library's default
# recipe (`dl.TrainConfig()`). Against section 1's loop, three lines change:
#
# - the noisy input: $x_s = (1-s)\,x_0 + s\,\varepsilon$ with $s \in [0, 1]$ (data at $s = 0$, pure noise at $s = 1$), instead of $\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$;
# - the target: the velocity $\frac{d x_s}{d s} = \varepsilon - x_0$, so the loss is $\lVert v_\theta(x_s, s) - (\varepsilon - x_0)\rVert^2$;
# - the noise level: $s = \mathrm{sigmoid}(z)$ with $z \sim \mathcal N(0, 1)$ instead of a uniform step; the plot at the end of chapter 3's section 1 showed where this puts the weight.
#
# The network is told its level as $1000\,s$, the range of DDPM's steps, so the same U-Net serves both.
# Why this recipe and not section 1's: on MNIST, for the same steps and CPU minutes, it gave better samples
# than the DDPM recipe it was compared with (one seed each; `benchmarks/RESULTS.md`, section "study", has the
# comparison and the commands). DDPM stays one argument away:
# `dl.TrainConfig(data="mnist", objective="ddpm", schedule="cosine", prediction="v")` trains DDPM's
# discrete-step objective on the same U-Net, here with the cosine schedule and chapter 3's $v$ as the target
# (`schedule="linear", prediction="eps"` gives exactly section 1's). The sampling cells below run on it
# unchanged (`dl.generate` then uses DDIM, a DDPM model's default sampler); section 5's loss-by-level plot
# would then be read per step $t$ instead of per $s$.
#
# A network that outputs zero everywhere scores this loss's **trivial level**: per pixel,
# $\mathbb E\,(\varepsilon - x_0)^2 = 1 + \mathbb E[x_0^2]$, since $\varepsilon$ is independent of $x_0$ with mean 0 and
# variance 1. That is above the noise target's trivial level of 1 (chapter 3, exercise 3), because this target
# contains the image too. On MNIST, whose pixels are mostly $-1$:

# %%
print(f"trivial level of the flow loss on the test digits: 1 + E[x0^2] = {1 + test_images.pow(2).mean().item():.3f}")

# %% [markdown]
# The live loss plot of the training run below starts near this level. The algebra that ties the recipe
# to DDPM, from chapters 2 and 3: divide $x_s$ by $c = \sqrt{(1-s)^2 + s^2}$ and it is a DDPM $x_t$ with
# $\sqrt{\bar\alpha} = (1-s)/c$; a velocity gives both of chapter 3's predictions, $\hat\varepsilon = x_s + (1-s)\,\hat v$
# and $\hat x_0 = x_s - s\,\hat v$. So chapter 5's samplers run on a flow model unchanged: at a DDPM timestep $t$,
# `dl.as_eps_model` picks the $s$ with the same signal-to-noise ratio, $s/(1-s) = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$,
# feeds the network $x_s = c\,x_t$, and returns $\hat\varepsilon$. The library's default sampler for a flow
# model instead integrates $dx/ds = v$ from $s = 1$ to $0$ with **Heun's method**: an Euler step, then a
# second network call at the step's end and the average of the two slopes. Checked on numbers, the last
# line with a stand-in "network" that knows the true velocity, so the library's conversion must return the
# true noise:

# %%
x0, eps, s = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.rand(4, 1, 1, 1)
xs = (1 - s) * x0 + s * eps
c = ((1 - s) ** 2 + s**2).sqrt()
sqrt_ab, sqrt_one_minus_ab = (1 - s) / c, s / c
v = eps - x0  # the true velocity
print("x_s / c is a DDPM x_t:", torch.allclose(xs / c, sqrt_ab * x0 + sqrt_one_minus_ab * eps, atol=1e-6),
      "| squares sum to 1:", torch.allclose(sqrt_ab**2 + sqrt_one_minus_ab**2, torch.ones(1)),
      "| eps = x_s + (1-s) v:", torch.allclose(xs + (1 - s) * v, eps, atol=1e-6),
      "| x0 = x_s - s v:", torch.allclose(xs - s * v, x0, atol=1e-6))
cosine = dl.make_schedule("cosine", 1000)
t = torch.tensor([50, 300, 600, 950])
ab = cosine.alpha_bars[t].float().reshape(-1, 1, 1, 1)
xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # a DDPM x_t of the same x0 and eps


def true_velocity(x, label, labels=None):  # the network's input is x_s and the label 1000 s
    return (x - x0) / (label / 1000).reshape(-1, 1, 1, 1)  # x_s - x0 = s (eps - x0)


eps_hat = dl.as_eps_model(true_velocity, cosine, "flow")(xt, t)
print(f"dl.as_eps_model at t = {t.tolist()}: largest |eps_hat - eps| = {(eps_hat - eps).abs().max():.1e}")

# %% [markdown]
# Now train with the default recipe: batch 64, learning rate $2\cdot10^{-3}$, a U-Net with 16 base
# channels, and bfloat16 arithmetic where your CPU has native support for it (`precision="auto"`):

# %%
mnist_steps = 40 if FAST else 1000
mnist_config = dl.TrainConfig(data="mnist", steps=mnist_steps, seed=0)
print(f"objective {mnist_config.objective}, batch {mnist_config.batch_size}, lr {mnist_config.lr}, "
      f"network {mnist_config.model_config()}, bf16: {dl.training.uses_bf16(mnist_config, torch.device('cpu'))}")
start = time.perf_counter()
mnist_run = dl.train(mnist_config, callback=ch04.LiveLossPlot(every=100, title="MNIST: training loss"))
train_seconds = time.perf_counter() - start
print(f"{mnist_steps} steps of batch {mnist_config.batch_size} in {train_seconds:.0f} s "
      f"({mnist_steps * mnist_config.batch_size / train_seconds:.0f} images/s); "
      f"U-Net of {sum(p.numel() for p in mnist_run.model.parameters()):,} parameters")
run_samples, _ = dl.generate(mnist_run.ema_model, mnist_config.info(), 16, seed=3)  # Heun, 18 steps
display(show_grid(run_samples, f"your run: {mnist_steps} steps, {train_seconds:.0f} s (Heun-18)", ncols=8))

# %% [markdown]
# ## 3. Samples improving over training
#
# The course's committed unconditional model, `mnist_uncond`, was trained with the same recipe and
# a wider U-Net (32 base channels) for much longer, keeping its EMA weights at a few steps along the
# way (`train --snapshots`). Each snapshot samples from the same starting noise; drag through training:

# %%
snapshot_files = dl.pretrained_snapshots("mnist_uncond")
snapshots = ch04.snapshot_samples(snapshot_files, n=16, seed=3)
snapshot_steps = sorted(snapshots)
uncond_model, uncond_info = dl.load_model(snapshot_files[-1])
recorded = dl.TrainConfig.from_stored(uncond_info["train_config"])
print(f"mnist_uncond: {uncond_info['step']} steps, batch {recorded.batch_size}, lr {recorded.lr}, seed {recorded.seed}, "
      f"objective {recorded.objective}, base channels {uncond_model.config.base_channels}; "
      f"snapshots at steps {snapshot_steps}")


def show_snapshot(step=snapshot_steps[-1]):
    return ch04.snapshot_view(snapshots, step)


widgets.interact(show_snapshot, step=widgets.SelectionSlider(options=snapshot_steps, value=snapshot_steps[-1],
                                                              continuous_update=False));

# %%
display(show_grid(torch.cat([snapshots[s][:8] for s in snapshot_steps]),
                  "mnist_uncond; rows: after " + ", ".join(map(str, snapshot_steps)) + " training steps", ncols=8))

# %% [markdown]
# ## 4. What the EMA does
#
# Sampling uses not the final weights $\theta$ but their exponential moving average,
# $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$ after every step. Adam's steps jitter the
# weights around a good region; the average sits nearer its middle. The library warms the decay up,
# $d_k = \min\big(d, \tfrac{1+k}{10+k}\big)$ at step $k$, so the random initial weights are forgotten
# quickly: after 1,000 steps that is 0.991 (how many steps such an average spans is exercise 4), and the full $d = 0.999$ applies only after 8,990 steps.
#
# Two measures score a set of samples. The share **recognised** is chapter 1's: the course classifier
# names a digit with probability at least 0.9. **MNIST-FID** is the Fréchet distance between two Gaussians,
# $\lVert\mu_1 - \mu_2\rVert^2 + \mathrm{tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2}\big)$,
# one fitted to the classifier's features of the samples and one to those of real test digits
# (`dl.evaluation.mnist_fid`; lower is better). FID depends on how many samples it sees, so it is read beside
# the **real-digit floor**: the MNIST-FID of as many real *training* digits, what a perfect model would score at
# that count. Measured on your run, with the same noise for both:

# %%
n_eval = 64 if FAST else 256
ema_samples, _ = dl.generate(mnist_run.ema_model, mnist_config.info(), n_eval, seed=4)
raw_samples, _ = dl.generate(mnist_run.model.eval(), mnist_config.info(), n_eval, seed=4)
for name, images in (("final weights", raw_samples), ("EMA weights", ema_samples)):
    _, confidence = dl.classify(classifier, images)
    print(f"{name:<26} MNIST-FID {dl.evaluation.mnist_fid(images, classifier):7.1f}; "
          f"recognised as a digit {(confidence >= 0.9).float().mean().item():.2f}")
print(f"real-digit floor at n = {n_eval}: {dl.evaluation.real_baseline_fid(n_eval, classifier):.1f}")

# %% [markdown]
# The average's MNIST-FID is much lower, while the share recognised moves far less: averaging changes
# how the samples look as a set (what MNIST-FID compares with real digits) more than it changes
# whether the classifier can name each one.

# %% [markdown]
# ## 5. The loss by noise level
#
# The one loss number averages very different tasks: at small $s$ the input is nearly the digit and
# the network must say which noise was added, at large $s$ it is nearly all noise and the network must
# say which digit lies under it. Per range of $s$, on test digits, for your run and the committed
# model (both flow models, so the levels compare):

# %%
probe = test_images[: (64 if FAST else 512)]
bins = 10
fig, ax = plt.subplots(figsize=(6.5, 3.4))
centres = (np.arange(bins) + 0.5) / bins
by_level = {}
for name, model, info in (("your run", mnist_run.ema_model, mnist_config.info()),
                          (f"mnist_uncond ({uncond_info['step']} steps)", uncond_model, uncond_info)):
    by_level[name] = ch04.loss_by_timestep_range(model, info, probe, bins)
    ax.plot(centres, by_level[name], "o-", label=name)
ax.set(xlabel="s (centre of range)", ylabel="training loss on test digits", yscale="log", title="loss by noise level")
ax.legend()
plt.show()
print(f"the pixels' variance over the test digits (the best possible loss at s = 1): {test_images.var(0).mean():.3f}")

# %% [markdown]
# The loss is lowest near $s = 0.35$ and higher towards both ends: your run's curve is highest in the first range, the
# committed model's near $s = 0.85$. The target is $\varepsilon - x_0$ at every $s$; what changes is how much of it
# the input reveals. Near $s = 0$ the input is almost the clean digit and shows the noise only faintly: where the
# image is known (the flat background) the noise can be read off, elsewhere it must be guessed, so the loss is high
# but well below the 1 per pixel that guessing everywhere would cost. Near $s = 1$ the input is almost pure noise, so
# the $x_0$ part must be guessed; in between, both are partly visible. At $s = 1$ exactly the input *is* the noise, so
# only $x_0$ is unknown and the best guess is the average digit: the loss there is the pixels' variance, printed under
# the plot. Just below 1 the digit is hardly more visible, but the loss is the $x_0$ error divided by $s^2$ (the
# identity below), which is why both curves come down a little in the last range. The committed model (longer-trained,
# and twice as wide) is lower at small and middle noise levels; at the highest levels the two nearly coincide, since
# there the input holds little of the digit. Away from $s = 1$, this plot alone cannot say how much of the loss is
# unavoidable.
#
# Chapter 3 measured the noise-prediction error *falling* steadily as the noise grows, and the two curves do
# not disagree. Chapter 3's table (section 1) turned the velocity error into the other two: on the straight
# path $\hat\varepsilon - \varepsilon = (1-s)(\hat v - v)$ and $\hat x_0 - x_0 = -s\,(\hat v - v)$, so
#
# $$\lVert\hat v - v\rVert^2 = \frac{\lVert\hat\varepsilon - \varepsilon\rVert^2}{(1-s)^2} = \frac{\lVert\hat x_0 - x_0\rVert^2}{s^2} .$$
#
# The flow loss is chapter 3's noise error weighted by $1/(1-s)^2$: near $s = 1$ the noise is easy to name
# (the input nearly *is* the noise), but the weight explodes, and the loss measures what is hard there, the
# hidden digit $x_0$. The objective decides which noise levels the loss, and so the training, pays attention to.

# %% [markdown]
# ## 6. When samples go wrong
#
# When your own samples look wrong, the cause is often one of a handful of mistakes, and each leaves
# its own signature in the samples. `python benchmarks/run.py --only gallery` made each one for real:
# the default recipe trained for the same number of steps with one thing changed (rows 6-7 change the
# whole recipe to DDPM with the $\varepsilon$ target, sampled with DDIM), or the reference model sampled
# the wrong way, and scored on 1,000 samples against the real-digit floor (the minutes it took are printed below: too long for this page, so the
# pictures and figures are committed):

# %%
gallery = load_measured("gallery")
print(f"`{gallery['command']}`, {gallery['date']}, {gallery['machine']['cpu']}, {gallery['threads']} thread(s), "
      f"{gallery['seconds'] / 60:.0f} min: {gallery['figures']['steps']:,} training steps per run; "
      f"{gallery['figures']['n']:,} samples scored per case")
display(ch04.gallery_figure(gallery["figures"]["entries"]))

# %% [markdown]
# Read each row against the first: the default recipe after the same 2,000 steps, digits but not
# yet good ones. The scores in the labels are over 1,000 samples; the pictures show the first eight.
#
# - **No EMA** (row 2). The raw weights of the same run draw the same digits from the same noise, with
#   rougher, sometimes broken strokes, and MNIST-FID nearly doubles. *Fix:* sample with the EMA weights
#   (`result.ema_model`; every checkpoint the library saves holds them).
# - **A learning rate ten times too high** (row 3). Speckled backgrounds and fragments; few samples are
#   recognised: the weights keep jumping instead of settling. *Fix:* lower it.
# - **Data left in [0, 1]** (row 4). The shapes are fine, but the background is grey: the model learned
#   that an empty pixel is 0, and everything here (the plots, the classifier) reads pixels in [-1, 1],
#   where 0 is mid-grey. *Fix:* scale pixels as $p/127.5 - 1$, as `dl.load_mnist` does, and map samples
#   back the same way.
# - **Two sampling steps** (row 5). Blurred, averaged digits: each long step lands near the average of
#   all the images the noise could still become. *Fix:* more steps (the default is 18 Heun steps), or a
#   sampler built for few steps (chapter 5's DPM-Solver++, chapter 9's distilled students).
# - **The $\varepsilon$ target, and few steps** (rows 6-7). The DDPM recipe with the $\varepsilon$ target, after the
#   same 2,000 steps, draws blotchy, textured digits even with DDIM-50, and DDIM-5 adds grain on top
#   (compare the scores). These rows change the path, the noise levels drawn and the target at once, so they do
#   not isolate the target; exercise 5 (going further) argues why the $\varepsilon$ target is the likely
#   culprit. *Fix:* the $v$ or the flow target, and enough steps for the target you have.
#
# None of these is pure noise, though the tenfold learning rate comes close. When samples are pure noise, the model and the sampler usually
# disagree about something basic, which none of these runs had wrong: the network's output read as the
# wrong target (a velocity taken for $\varepsilon$), noise levels passed in the wrong range or order, or
# a network that was never trained (built, but its weights never loaded). Even section 3's step-100
# snapshot is past that: it already draws strokes. Check those first.

# %% [markdown]
# ## 7. Your own images: Fashion-MNIST and a folder
#
# Nothing in the training step knows about digits. A data set is a tensor of images $(N, C, H, W)$ in
# $[-1, 1]$, and the U-Net is convolutional: the same weights slide over any height and width that its
# two halvings divide (multiples of 4 here), in 1 channel (gray) or 3 (RGB). Its config records the
# size and channels, so a checkpoint knows what shape to draw. The library ships a second data set,
# Fashion-MNIST (Xiao, Rasul and Vollgraf 2017: 70,000 gray 28x28 photos of clothes in ten classes,
# from Zalando's catalogue), and reads any folder of PNG or JPEG images (`--data folder:PATH`, below).
# Here are some real ones:

# %%
fashion_images, fashion_labels = dl.load_fashion_mnist(train=True)
fashion_classes = dl.data.CLASSES["fashion-mnist"]
picks = torch.cat([torch.nonzero(fashion_labels == k)[:2, 0] for k in range(10)])
display(show_grid(fashion_images[picks], "Fashion-MNIST: two training images of each class", ncols=10,
                  captions=[fashion_classes[k] for k in fashion_labels[picks].tolist()]))

# %% [markdown]
# The recipe that trained on digits in section 2 trains on these unchanged: same network, same loss,
# same optimiser; only `data` differs (and `conditional=True` adds a label embedding so that the ten
# classes become labels, which chapter 6 explains). `fashion_cond` is exactly that run, made by
# `python -m diffusion_lib train --data fashion-mnist --conditional --steps 5527` (its README has the
# details), here asked for each class twice:

# %%
fashion_config = dl.TrainConfig(data="fashion-mnist", conditional=True, steps=5527, seed=0)
committed_fashion, committed_info = dl.pretrained("fashion_cond")
assert dl.TrainConfig.from_stored(committed_info["train_config"]) == fashion_config  # the recipe, unchanged
wanted = torch.arange(20) % 10
fashion_samples, _ = dl.generate(committed_fashion, committed_info, 20, labels=wanted, seed=0)
display(show_grid(fashion_samples, f"fashion_cond ({committed_info['step']:,} steps; Heun, 18 steps, w = 1), each class "
                  "asked for twice", ncols=10, captions=[fashion_classes[k] for k in wanted.tolist()]))

# %% [markdown]
# Its 5,527 steps are as many as a conditional MNIST run of the same recipe made in 10 minutes on a 2-core CPU;
# an unconditional twin, `fashion_uncond`, trained for 5,464 steps. How good are they? Digits were judged by a digit classifier; clothes
# get their own, `fashion_classifier`, trained by the same command (`train --data fashion-mnist
# --arch classifier`; its README has the full line), and `evaluate` measures Fashion-MNIST-FID in its
# features against the test set, beside the real floor at the same $n$. The `fashion` benchmark
# scored both on 1,000 samples (with Heun's method in 25 steps, as those MNIST runs were), beside the MNIST runs
# of the same length:

# %%
fashion_measured = load_measured("fashion")
f = fashion_measured["figures"]
print(f"`{fashion_measured['command']}`, {fashion_measured['date']}; n = {f['n']}, {f['sampler']}, real floor "
      f"{f['real_baseline_fid']:.2f}; the judge is right on {100 * f['classifier_test_accuracy']:.1f}% of the test "
      f"images and at least 90% sure of {100 * f['real_recognised']:.1f}% of them (the digit judge: "
      f"{100 * f['mnist_real_recognised']:.1f}% of real test digits)")
study_runs = {(r["conditional"], r["steps"]): r for r in load_measured("study")["figures"]["runs"]
              if r["recipe"] == "flow b16 bf16" and r["seed"] == 0}
print(f"{'model':<15} {'steps':>6} {'w':>4}  {'FID/floor':>9} {'recognised':>10} {'requested':>9}   MNIST, same steps")
for name, m in f["models"].items():
    twin = study_runs.get((m["train_config"]["conditional"], m["step"]))
    for r in m["scores"]:
        mnist = next((s for s in twin["scores"] if s["guidance"] == r["guidance"]), None) if twin else None
        requested = f"{100 * r['accuracy']:8.1f}%" if "accuracy" in r else " " * 9
        other = (f"{mnist['mnist_fid'] / twin['real_baseline_fid']:.2f}x, {100 * mnist['recognised']:.1f}% recognised"
                 + (f", {100 * mnist['accuracy']:.1f}% requested" if "accuracy" in mnist else "")) if mnist else "not run"
        print(f"{name:<15} {m['step']:>6,} {'-' if r['guidance'] is None else format(r['guidance'], 'g'):>4}  "
              f"{r['fid'] / f['real_baseline_fid']:8.2f}x {100 * r['recognised']:9.1f}% {requested}   {other}")

# %% [markdown]
# Read the ratios with care: each is measured in its own judge's features, so 8.87x on clothes and
# 3.84x on digits are not on one scale. The recognised shares compare better, each beside what real
# test images score with the same judge (a reference, not a ceiling: guided samples below exceed it).
# The same steps buy less on clothes: 60.7% of the unconditional samples are recognised, where real
# clothes score 83.5%, while the digit model's 86.9% is closer to real digits' 98.7%. Clothes have
# texture and classes that look alike at 28x28 (T-shirt, shirt, pullover, coat), which is probably
# more for 204,449 weights and 5,464 steps to learn (the table shows that less is learned, not why).
# Labels help: at w = 1 (chapter 6's guidance scale; $w = 1$ is the plain conditional model, no guidance) the conditional model is at 4.82x the floor and 84.2% of its samples are the
# class asked for. Guidance (chapter 6) helps further, and of the three scales measured, unlike on
# digits, w = 2 has the lowest FID (3.49x, with 96.0% the requested class); at w = 3 the samples are
# recognised more often (93.4%) and are more often the class asked for (98.8%) while FID rises again,
# the trade-off chapter 6 measures on digits, where guidance narrows each class (diversity was not
# measured on clothes).

# %% [markdown]
# **A folder of your own.** `--data folder:PATH` (or `dl.TrainConfig(data="folder:PATH")`) reads every
# PNG and JPEG image in a folder, crops each to its largest centred square and resizes it to
# `image_size` (32 unless you say otherwise), in gray (`channels=1`) or colour (`channels=3`, the
# default). Class subfolders (`PATH/cats/*.jpg`, `PATH/dogs/*.jpg`) make it labelled, for
# `conditional=True`; a folder it cannot use (empty, an unreadable file, a strip too long to crop to a
# square) is refused with a message saying which file and what to do. Exercise 6 trains on one.

# %% [markdown]
# ## Summary
#
# - A training step: draw $t$ and $\varepsilon$, jump to $x_t$, predict, take the squared error; repeat with Adam.
# - The images of this chapter train on the straight path of chapter 2, $x_s = (1-s)x_0 + s\varepsilon$, regressing the velocity $\varepsilon - x_0$ with $s = \mathrm{sigmoid}(z)$ (flow matching, the library's default); its trivial loss level is $1 + \mathbb E[x_0^2]$. Divided by $\sqrt{(1-s)^2+s^2}$ it is a DDPM $x_t$, so DDPM's samplers apply, and `objective="ddpm"` trains DDPM's discrete-step objective instead (section 1's with `schedule="linear", prediction="eps"`).
# - A few CPU-minutes with a small U-Net give digit-like samples.
# - Snapshots of a longer run show the samples taking shape: scattered strokes after 100 steps, digit-like shapes by 1,000.
# - Sample with the EMA of the weights (its decay warms up over the first thousands of steps); the loss depends strongly on the noise level.
# - Failures have signatures (measured in section 6): no EMA roughens strokes, a too-high learning rate leaves speckle, data in [0, 1] a grey background, too few steps blur, and $\varepsilon$-prediction stays blotchy even with DDIM-50 and grainier in 5 steps.
# - The recipe is not about digits: Fashion-MNIST (judged by a classifier of its own) and a folder of your own images (files up to the loader's size limit, cropped and resized to a square whose side is a multiple of 4, gray or RGB) train the same way; going further, exercise 6 asks what a handful of images gives: copies or new images.
#
# ## Exercises
#
# Exercises marked *going further* are not needed by the chapters that follow: they suit a lab, homework or a
# second reading.
#
# **Exercise 1 (implement, going further).** Write `my_loss(model, x0, t, noise, alpha_bars)`, the simple DDPM loss for given $t$ and noise.

# %% tags=["solution", "exercise:ch04-loss"]
def my_loss(model, x0, t, noise, alpha_bars):
    ab = alpha_bars[t].reshape(-1, *([1] * (x0.ndim - 1)))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return (model(xt, t) - noise).pow(2).mean()


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_training_loss(my_loss)


# %% [markdown]
# **Exercise 2 (implement).** The library's default recipe (section 2) trains with flow matching, not
# $L_{\text{simple}}$: each example gets a time $s = \operatorname{sigmoid}(z)$ from a normal draw $z$ (so $s$
# lies in $(0, 1)$, most often near $\tfrac12$), the noisy input $x_s = (1-s)\,x_0 + s\,\varepsilon$, and the
# network, told its time as $1000\,s$ (the range of DDPM's steps), regresses the velocity $\varepsilon - x_0$.
# Write `my_flow_loss(model, x0, z, noise)`, the mean squared error of that regression.

# %% tags=["solution", "exercise:ch04-flow-loss"]
def my_flow_loss(model, x0, z, noise):
    """s = sigmoid(z), a (B,) vector; a copy of s shaped (B, 1, ...) forms x_s = (1 - s) x0 + s noise; the network is
    called as model(x_s, 1000 * s) with the (B,) vector; compare its output with noise - x0."""
    s = torch.sigmoid(z)
    column = s.reshape(-1, *([1] * (x0.ndim - 1)))
    x_s = (1 - column) * x0 + column * noise
    return (model(x_s, 1000 * s) - (noise - x0)).pow(2).mean()


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_flow_loss(my_flow_loss)

# %% [markdown]
# **Exercise 3 (implement).** Write the training loop: `my_train_loop(model, data, steps, batch_size, lr, seed, loss_fn)`
# returns the list of each step's loss and the EMA of the weights. Each step draws, from one
# `torch.Generator` seeded with `seed` and in this order, the batch's indices into `data` (uniformly, with
# replacement: `torch.randint(0, len(data), (batch_size,), generator=...)`), one $z$ per example
# (`torch.randn`) and the noise (`torch.randn` of the batch's shape); forms the loss with
# `loss_fn(model, x0, z, noise)` (the check passes the library's flow loss, which your `my_flow_loss` equals);
# zeroes the gradients, backpropagates and takes a step of AdamW (`weight_decay=0`); and blends every weight
# into the EMA with decay $\min(0.999, (1+k)/(10+k))$ at step $k = 0, 1, \dots$ (the warm-up of section 4).
# The EMA starts as a copy of the model made before the first step (`copy.deepcopy`). The check trains a small MLP
# on two moons with your loop and with `dl.train` from the same initial weights and seed, with the warm-up of
# the learning rate and the clipping switched off, and compares the twelve losses and the EMA weights.

# %% tags=["solution", "exercise:ch04-training-loop"]
import copy


def my_train_loop(model, data, steps, batch_size, lr, seed, loss_fn):
    """The EMA starts as a copy of the model. For each step k: draw indices (randint), z and noise (randn), from one
    generator, in that order; loss; zero_grad, backward, AdamW step; EMA update with decay
    min(0.999, (1 + k) / (10 + k)). The loss: loss_fn(model, x0, z, noise). Return (losses, ema_model)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    losses = []
    for k in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)  # a batch of data
        z = torch.randn(batch_size, generator=generator)  # a noise level per example
        noise = torch.randn((batch_size, *data.shape[1:]), generator=generator)  # the noise
        loss = loss_fn(model, data[idx], z, noise)  # noisy input, prediction, loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay = min(0.999, (1 + k) / (10 + k))
        with torch.no_grad():
            for average, weight in zip(ema_model.parameters(), model.parameters()):
                average.mul_(decay).add_((1 - decay) * weight)
        losses.append(loss.item())
    return losses, ema_model


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_training_loop(my_train_loop)

# %% [markdown]
# **Exercise 4 (predict, then check).** An EMA with decay $d = 0.999$ averages, roughly, over how
# many of the most recent steps?

# %% tags=["solution", "exercise:ch04-ema-horizon"]
ema_horizon = 1000

# %%
# NBVAL_CHECK_OUTPUT
exercises.check_ema_horizon(ema_horizon)

# %% [markdown] tags=["exercise:ch04-open-v-target"]
# **Exercise 5 (open question, going further).** In short training runs of DDPM recipes, predicting $v$ beat predicting
# $\varepsilon$ (`benchmarks/RESULTS.md`, section "recipes", sampled with DDIM-20), and section 6 shows an
# $\varepsilon$ model drawing blotchy digits even with DDIM-50. Use chapter 3's identities: at which $t$ is
# $\varepsilon$-prediction an awkward target for a small, briefly trained network (think of what
# $\hat x_0$ a small error in $\hat\varepsilon$ implies), and why do $v$ and the flow's velocity
# $\varepsilon - x_0$ avoid that?

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** From chapter 3,
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$, so an error $\delta$ in
# $\hat\varepsilon$ becomes an error $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,\delta$ in $\hat x_0$. At large $t$,
# where $\bar\alpha_t \to 0$, that factor is huge (about 30 at $\bar\alpha_t = 0.001$), while the target
# itself is nearly trivial: $x_t \approx \varepsilon$, so predicting $\varepsilon \approx x_t$ already gives
# a small loss and the network gets little signal about $x_0$. Yet the first sampling steps, which
# set the digit's layout, read $\hat x_0$ exactly there. With $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$,
# $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$: the error factor is
# $\sqrt{1-\bar\alpha_t} \le 1$, and at large $t$ the target $v \approx -x_0$ forces the network to say
# what the image is. The flow's velocity does the same: $\hat x_0 = x_s - s\,\hat v$ with $s \le 1$,
# and at $s \to 1$ the target $\varepsilon - x_0$ contains $-x_0$ in full.
#
# **Rubric.** (1) Writes $\hat x_0$ from $\hat\varepsilon$ and the error factor
# $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$; (2) names large $t$ (small $\bar\alpha_t$) as the awkward region and
# why (the factor blows up; the target is almost the input); (3) shows that $v$'s and the flow's
# $\hat x_0$ have a factor of at most 1; (4) links it to sampling: the early, high-noise steps set
# the layout. (1)-(3) make a full answer.

# %% [markdown] tags=["exercise:ch04-open-own-folder"]
# **Exercise 6 (open question, going further).** Train on a folder. Set `MY_FOLDER` to a folder of your own images
# (photos of one kind of thing work best; 32x32 is small, so pick something that survives it). Left
# as `None`, the cell writes a stand-in: eight Fashion-MNIST bags as PNG files. It trains the default
# recipe (fast mode: a few steps; full mode: 300), draws 16 samples, and finds for each sample the
# nearest training image. Before you run it: with only eight training images, what will a well-trained
# model draw, and why? (Chapter 3's ideal denoiser is the model that minimises the loss exactly on a
# finite data set.) Then compare your prediction with the distances it prints. With the stand-in it
# also prints the distance from 16 bags it never trained on, for comparison; with your own folder,
# keep a few images out of it and compare by eye. A handful of images shows the effect in 300 steps; a folder
# of hundreds takes far longer to be copied. (In fast mode the ten steps leave noise, far from everything.)

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** Copies of the eight training images. Chapter 3's ideal
# denoiser, the exact minimiser of the loss on a finite data set, pulls every noisy input towards a
# weighted average of the training images, and sampling with it ends on one of them. With eight images,
# a network of 204,449 weights (the U-Net of section 2) can get close to that minimiser (eight 32x32 images are 8,192 numbers): on the stand-in bags, 300 steps
# bring the samples to a median RMS pixel distance of 0.094 from a training bag, about a fifth of the
# distance (about 0.50) from 16 bags it never saw to the same eight. The samples are the training bags,
# redrawn, not new bags. Fashion-MNIST's 60,000 images are 47 million pixel values, far more than
# 204,449 weights can store, so what the network learns has to be shared across them; with a small
# folder of your own, expect copies.
#
# **Rubric.** (1) Predicts copies of the training images (memorisation); (2) connects it to the ideal
# denoiser as the loss's minimiser on a finite set; (3) reads the printed distances: samples far nearer
# to training images than unseen images are; (4) names what makes samples new: many more images (or a
# network too small to store them). (1)-(3) make a full answer.

# %%
import tempfile

MY_FOLDER = None  # for example "~/Pictures/shoes"
folder = MY_FOLDER or ch04.write_image_folder(fashion_images[fashion_labels == 8][:8], tempfile.mkdtemp() + "/bags")
folder_config = dl.TrainConfig(data=f"folder:{folder}", image_size=32, channels=1 if MY_FOLDER is None else 3,
                               steps=10 if FAST else 300, seed=0)
folder_run = dl.train(folder_config, progress=False)
folder_images, _ = dl.load_images(folder_config.data, True, *folder_config.image_shape())
folder_samples, _ = dl.generate(folder_run.ema_model, folder_config.info(), 16, seed=0)
distance, nearest = ch04.nearest_distances(folder_samples, folder_images)
display(show_grid(torch.cat([folder_samples[:8], folder_images[nearest[:8]]]),
                  f"{len(folder_images)} training images, {folder_config.steps} steps: 8 samples (top) and the "
                  "training image nearest each (bottom)", ncols=8))
print(f"after {folder_config.steps} steps, RMS pixel distance from each sample to its nearest training image: "
      f"median {distance.median():.3f}")
if MY_FOLDER is None:
    unseen = ch04.write_image_folder(fashion_images[fashion_labels == 8][8:24], tempfile.mkdtemp() + "/unseen")
    new_bags, _ = dl.load_folder(unseen, *folder_config.image_shape())  # read the same way as the training bags
    print(f"the same for 16 other bags, never trained on: median {ch04.nearest_distances(new_bags, folder_images)[0].median():.3f}")

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
