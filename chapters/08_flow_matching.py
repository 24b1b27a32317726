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
# # Chapter 8: Flow matching and rectified flow — straight paths
#
# Stable Diffusion 3 and Flux are trained with *rectified flow*: noise and data are joined by straight
# lines, and the network learns the velocity along them. The course's own models have been trained
# this way since chapter 4 (it won the recipe study). This chapter takes the idea apart: what the
# straight path is, why its ODE is DDIM's ODE in other coordinates, how straight the paths the
# model actually follows are, and how **reflow** makes them straighter, so that a few Euler steps
# are enough.
#
# **After this chapter you can**
# - write the flow's path $x_s = (1-s)\,x_0 + s\,\varepsilon$, its velocity target, and SD3's logit-normal choice of $s$;
# - show that Euler on the flow ODE *is* DDIM, and convert a velocity into $\hat\varepsilon$, $\hat x_0$ and DDPM's $v$;
# - measure how straight sampling paths are, and straighten them by reflow (Liu et al. 2022).
#
# **Assumes**: chapter 4 (training, the flow objective, Heun's method), chapter 5 (DDIM and its ODE).
# Chapter 9 builds on this one to reach one to four steps.

# %%
# Setup: works unchanged locally, on Binder and on Colab (where it installs the course's library).
import sys

if "google.colab" in sys.modules:
    # %pip install -q "diffusion_lib @ git+https://github.com/diffusion-course/diffusion-course"
    pass

# %%
# %matplotlib inline
import tempfile
import time
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

import diffusion_lib as dl
from diffusion_lib.continuous import flow_loss, flow_velocity
from diffusion_lib.course import ch08, exercises
from diffusion_lib.course.measured import load_measured
from diffusion_lib.course.plots import show_grid
from diffusion_lib.distill import DistillConfig, distill, straightness

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
model, info = dl.pretrained("mnist_uncond")  # the course's flow-trained U-Net (chapter 4)
reflowed, reflow_info = dl.pretrained("mnist_reflow")  # the same network after reflow (section 5)
classifier, _ = dl.pretrained("mnist_classifier")

# %% [markdown]
# ## 1. A straight path from data to noise, and its velocity
#
# Pick an image $x_0$ and a noise draw $\varepsilon \sim \mathcal N(0, I)$, and join them by a straight line:
#
# $$x_s = (1-s)\,x_0 + s\,\varepsilon, \qquad s \in [0, 1], \qquad \frac{dx_s}{ds} = \varepsilon - x_0 .$$
#
# Along one line the velocity is constant. The network $v_\theta(x_s, s)$ sees only $x_s$ and $s$, not
# which line it lies on, so the best it can do under the squared loss
# $\mathbb E\,\lVert v_\theta(x_s, s) - (\varepsilon - x_0)\rVert^2$ is the average over every line through
# that point: $v^*(x, s) = \mathbb E[\varepsilon - x_0 \mid x_s = x]$, the same argument as chapter 3's
# ideal denoiser. This is *conditional flow matching* (Lipman et al. 2023; Liu et al. 2022): the
# average velocity $v^*$ moves the whole distribution of $x_s$ along the path, so solving
# $dx/ds = v^*(x, s)$ from $s = 1$ down to $0$ carries noise to data. Paths of $v^*$ are not straight: at
# each point they follow an *average* of directions, and the average changes along the way.
#
# The library's `flow_loss` is this loss; the cell computes it by hand on a batch and compares:

# %%
x0 = dl.load_mnist(train=True)[0][:8]
g = torch.Generator().manual_seed(0)
z = torch.randn(8, generator=g)  # a standard normal draw that sets s
eps = torch.randn(x0.shape, generator=g)
s = torch.sigmoid(z)  # SD3's logit-normal s (below)
x_s = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * eps
with torch.no_grad():
    by_hand = ((model(x_s, 1000 * s) - (eps - x0)) ** 2).mean()
    library = flow_loss(model, x0, z, eps)
print(f"loss by hand {by_hand:.6f}, dl.continuous.flow_loss {library:.6f}")

# %% [markdown]
# **Which $s$ to train on.** Stable Diffusion 3 (Esser et al. 2024, Sec. 3.1) draws $s = \mathrm{sigmoid}(u)$
# with $u \sim \mathcal N(0, 1)$, the *logit-normal* distribution, instead of uniform $s$. Their argument: at
# $s = 1$ the input is pure noise and the best answer is simple ($v^* = x - \mathbb E[x_0]$, the noise minus
# the mean image), and near $s = 0$ the image is almost visible; the middle of the path is where the
# network must decide what the image becomes, so they spend more training steps there, and found that
# this gave better images than uniform $s$ in their comparison of time distributions:

# %%
u = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.hist(torch.sigmoid(u).numpy(), bins=50, density=True, alpha=0.7, label="logit-normal (SD3, the library's flow)")
ax.hist(torch.rand(100_000).numpy(), bins=50, density=True, alpha=0.5, label="uniform")
ax.set(xlabel="s (0 = data, 1 = noise)", ylabel="density")
ax.legend(fontsize=8)
plt.show()
print(f"share of training times in the middle half 0.25 < s < 0.75: logit-normal "
      f"{((torch.sigmoid(u) > 0.25) & (torch.sigmoid(u) < 0.75)).float().mean():.0%}, uniform 50%")

# %% [markdown]
# ## 2. Two moons: train a flow, sample it with Euler and Heun
#
# A small MLP learns the velocity of two moons in seconds. To sample, integrate
# $dx/ds = v_\theta(x, s)$ from noise at $s = 1$ to $s = 0$: **Euler** takes $x \leftarrow x + (s' - s)\,v_\theta(x, s)$;
# **Heun** (chapter 4) averages that slope with the slope at the trial point, two calls per step.
# The figure draws the paths of 40 points; each starts at a black dot (noise) and ends at a red cross.

# %%
moons_steps = 600 if FAST else 3000
flow_moons, flow_moons_info = ch08.train_moons("flow", moons_steps)
moons_data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(0))
noise2d = torch.randn(500, 2, generator=torch.Generator().manual_seed(3))
panels = []
for steps in (2, 8, 64):
    xs, times = ch08.flow_paths(flow_moons, noise2d, steps)
    panels.append((f"Euler, {steps} steps", xs))
display(ch08.paths_figure(panels, moons_data))

# %% [markdown]
# With 64 steps the paths bend: they leave the noise heading for the middle of the data (the average
# of all the points they might become) and turn towards one moon late. Two Euler steps follow the
# first direction too far and land between the moons. The paths are curved, and curvature is what
# costs steps.
#
# ## 3. The same ODE as DDIM
#
# Chapter 5 found that deterministic DDIM solves an ODE: with $\bar x = x_t / \sqrt{\bar\alpha_t}$ and
# $\rho = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$, its step is Euler's, $\bar x_{t'} = \bar x_t + (\rho_{t'} - \rho_t)\,\hat\varepsilon$.
# The flow's coordinates are a rescaling of these: divide $\bar x = x_0 + \rho\,\varepsilon$ by $1 + \rho$ and call
# $s = \rho / (1 + \rho)$; then $\bar x / (1 + \rho) = (1-s)\,x_0 + s\,\varepsilon = x_s$. A DDPM noise level $\bar\alpha$
# and a flow time $s$ with the same signal-to-noise ratio describe the same noisy images, up to the scale
# factor $\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha}$.
#
# **Why the DDIM step and the Euler step agree exactly.** A DDIM step freezes the model's $(\hat x_0, \hat\varepsilon)$
# and moves to $\bar x_{t'} = \hat x_0 + \rho_{t'}\hat\varepsilon$. In flow coordinates that point is
# $(1-s')\,\hat x_0 + s'\,\hat\varepsilon$. Euler in $s$ from $x_s = (1-s)\hat x_0 + s\hat\varepsilon$ with the velocity
# $v = \hat\varepsilon - \hat x_0$ reaches $x_s + (s' - s)(\hat\varepsilon - \hat x_0) = (1-s')\,\hat x_0 + s'\,\hat\varepsilon$: the same point.
# Both steps move along a straight line in their own coordinates, and the map between the coordinates sends
# that line to a straight line. So DDIM on a flow model is Euler at the noise levels DDIM visits, with no
# approximation. The cell runs the library's DDIM on `mnist_uncond` (through `as_eps_model`, which turns a
# velocity into $\hat\varepsilon = x_s + (1-s)\,v$ and $\hat x_0 = x_s - s\,v$) and Euler at DDIM's ten noise
# levels, from the same noise:

# %%
check = ch08.ddim_against_euler(model, info, steps=10, n=8)
print(f"DDIM-10 vs Euler at the same 10 noise levels: largest difference {check['max_difference']:.1e} "
      f"(pixels reach {check['sample_scale']:.2f})")

# %% [markdown]
# **DDPM's $v$-prediction and the flow's velocity.** Salimans & Ho (2022) train DDPM networks to predict
# $v = \alpha\,\varepsilon - \sigma\,x_0$ with $\alpha = \sqrt{\bar\alpha_t}$, $\sigma = \sqrt{1-\bar\alpha_t}$: the velocity of the
# path $x_t = \alpha x_0 + \sigma\varepsilon$ with respect to the angle $\phi$ when $\alpha = \cos\phi$, $\sigma = \sin\phi$. The
# flow's target is $u = \varepsilon - x_0$. From $x_t$ and $v$ both unknowns come back
# ($\varepsilon = \sigma x_t + \alpha v$ and $x_0 = \alpha x_t - \sigma v$, since $\alpha^2 + \sigma^2 = 1$), so
#
# $$u = \varepsilon - x_0 = (\alpha + \sigma)\,v + (\sigma - \alpha)\,x_t :$$
#
# the same target up to the known factor $\alpha + \sigma$ and a multiple of the input. (At $\alpha = \sigma$, the
# middle of the path, $u$ is exactly $\sqrt 2\, v$.) Checked on random draws at three noise levels:

# %%
schedule = dl.make_schedule(info["schedule"], info["T"])
for t_value in (100, 500, 900):
    alpha, sigma = schedule.alpha_bars[t_value].sqrt().item(), (1 - schedule.alpha_bars[t_value]).sqrt().item()
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    u = (alpha + sigma) * v + (sigma - alpha) * x_t
    print(f"t = {t_value}: alpha = {alpha:.3f}, sigma = {sigma:.3f}, |u - (eps - x0)| max {(u - (eps - x0)).abs().max():.1e}")

# %% [markdown]
# **A DDPM-trained model follows the same kind of path.** If the two ODEs are one ODE, a model trained
# with DDPM's loss should trace paths as curved as the flow model's, once both are drawn in the same
# coordinates. The cell trains a DDPM model ($v$-prediction, cosine schedule) on the same moons, runs
# DDIM with 64 steps, converts each point to flow coordinates, and compares the paths with the flow
# model's Euler-64 paths from the same noise.
#
# To compare curvature we need a number. Liu et al. (2022, Eq. 6) measure **straightness** as the
# average squared difference between the velocity along the path and the velocity of the straight
# line from its start to its end. `dl.distill.straightness` divides that by the straight line's squared
# speed, so $S = 0$ is a straight line run at constant speed (one Euler step lands exactly) and $S = 1$ is a
# path whose velocity strays, on average, by as much as the whole line's.

# %%
ddpm_moons, ddpm_moons_info = ch08.train_moons("ddpm", moons_steps)
flow_xs, flow_times_ = ch08.flow_paths(flow_moons, noise2d, 64)
ddpm_xs, ddpm_times = ch08.ddpm_paths(ddpm_moons, ddpm_moons_info, noise2d, 64)
display(ch08.paths_figure([("flow model, Euler-64", flow_xs), ("DDPM model, DDIM-64, flow coordinates", ddpm_xs)],
                          moons_data))
moons_s = {"flow": straightness(flow_xs, flow_times_), "ddpm": straightness(ddpm_xs, ddpm_times)}
print(f"straightness S: flow model {moons_s['flow']:.2f}, DDPM model {moons_s['ddpm']:.2f}")

# %% [markdown]
# Both sets of paths bend the same way, and their straightness values are of the same size (the cell
# prints them; on this run they are within about 10% of each other). The small difference comes from
# two networks trained with different losses and time weightings, not from different ODEs. **The
# objective alone does not straighten the paths**: a flow model trained on independent (noise, image)
# pairs follows the same curved ODE that DDIM solves. What bends them is that each point of noise
# could become many images.
#
# ## 4. How straight are MNIST's paths?
#
# In 784 dimensions the picture changes. The cell measures $S$ for 64 paths of `mnist_uncond`
# (Euler with 32 steps):

# %%
n_paths = 16 if FAST else 64
teacher_s = ch08.mnist_straightness(model, n_paths, steps=32)["straightness"]
print(f"mnist_uncond: straightness S = {teacher_s:.3f} over {n_paths} paths")

# %% [markdown]
# The MNIST paths are much straighter than the moons' ($S$ of a few hundredths against about 2). In
# high dimension a noise draw is far from every image (its expected squared distance from an image is $784\,(1 + 0.93)$, the noise's 784 plus the image's own, since MNIST's pixels have mean square 0.93),
# so the straight line's own length dominates, and the turn towards one digit is a small part of it.
# Yet a few hundredths is not zero, and chapter 5 showed DDIM at 5 steps losing most of the quality.
# The turns are concentrated near the data, where the digit's details are decided, and that is where a
# large step goes wrong.
#
# ## 5. Reflow: retrain on the model's own pairs
#
# Liu et al. (2022) observe that the curvature comes from the *pairing*: training joins each image to
# an independent noise draw, so lines cross, and the average velocity at a crossing points between them.
# **Reflow** changes the pairing:
#
# 1. draw noise $z$ and run the trained model's ODE to get its image $x = \Phi(z)$;
# 2. train a new flow (starting from the old weights) on straight lines between these pairs,
#    $x_s = (1-s)\,x + s\,z$ with target $z - x$.
#
# The pairs come from ODE paths, which never cross one another, so straight lines between them cross far
# less often than lines between independent draws, and a velocity field can follow each of them at
# nearly constant speed: straight paths, which Euler follows in few steps. In principle reflow keeps the
# images the old model makes and changes only the route to them; in practice the student inherits the
# teacher's errors and adds its own.
#
# On two moons, reflow with 4,000 pairs takes seconds (`dl.distill.distill` with method "reflow", the
# same code as the command line's `distill`):

# %%
moons_dir = Path(tempfile.mkdtemp())  # distillation reads its teacher from a file: write the moons model to one
dl.save_model(moons_dir / "teacher.safetensors", flow_moons, flow_moons_info)
reflow_config = DistillConfig("reflow", str(moons_dir / "teacher.safetensors"), steps=300 if FAST else 1500,
                              batch_size=256, lr=1e-3, pairs=4000, pair_steps=32)
start = time.perf_counter()
reflow_moons = distill(reflow_config, progress=False).ema_model
print(f"reflow on two moons: {time.perf_counter() - start:.1f} s")
reflow_xs, reflow_times = ch08.flow_paths(reflow_moons, noise2d, 64)
moons_s["reflow"] = straightness(reflow_xs, reflow_times)
display(ch08.paths_figure([("before reflow, Euler-64", flow_xs), ("after reflow, Euler-64", reflow_xs)], moons_data))
print(f"straightness S: before {moons_s['flow']:.2f}, after reflow {moons_s['reflow']:.2f}")

# %% [markdown]
# After reflow the paths are nearly straight lines from noise to the moons. The committed MNIST model
# `mnist_reflow` was made the same way from `mnist_uncond` with the course's command (its README gives it,
# with the time it took):
#
# ```bash
# python -m diffusion_lib distill --method reflow --teacher mnist_uncond --pairs 6000 --pair-steps 18 --steps 2000 --lr 2e-4 --out ../runs/mnist_reflow
# ```
#
# The cell measures its straightness on the same noise as the teacher's above, and lists what the
# benchmark measured on 1,000 samples per row (`python benchmarks/run.py --only fewsteps`):

# %%
reflow_s = ch08.mnist_straightness(reflowed, n_paths, steps=32)["straightness"]
print(f"straightness S over {n_paths} paths: mnist_uncond {teacher_s:.3f}, mnist_reflow {reflow_s:.3f}")
measured = load_measured("fewsteps")["figures"]
floor = measured["real_baseline_fid"]
rows = {(r["model"], r["sampler"], r["steps"]): r for r in measured["rows"] if r["precision"] == "bf16"}
print(f"\nMNIST-FID (real-digit floor {floor:.1f}) and share recognised, n = {measured['n']:,}, Euler steps:")
print(f"{'steps':>5} | {'mnist_uncond':>22} | {'mnist_reflow':>22}")
for steps in (1, 2, 4, 8):
    before, after = rows[("mnist_uncond", "euler", steps)], rows[("mnist_reflow", "euler", steps)]
    print(f"{steps:>5} | {before['mnist_fid']:>8.1f} {100 * before['recognised']:>11.1f}% | "
          f"{after['mnist_fid']:>8.1f} {100 * after['recognised']:>11.1f}%")
print(f"teacher with Heun-18 (35 calls): {rows[('mnist_uncond', 'heun', 18)]['mnist_fid']:.1f}, "
      f"{100 * rows[('mnist_uncond', 'heun', 18)]['recognised']:.1f}%")

# %% [markdown]
# READ-THE-TABLE-PLACEHOLDER
#
# **Drag the slider**: the number of Euler steps for the moons flow and the MNIST model, before and
# after reflow, from the same noise.

# %%
def show_steps(steps):
    display(ch08.steps_view(steps, {"before reflow": flow_moons, "after reflow": reflow_moons},
                            {"mnist_uncond": (model, info), "mnist_reflow": (reflowed, reflow_info)}, moons_data))


widgets.interact(show_steps, steps=widgets.IntSlider(value=2, min=1, max=8, step=1, continuous_update=False));

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (implement).** Write `my_flow_pair(x0, eps, s)`, returning the point $x_s$ of the straight
# path at times `s` (shape (B,)) and the velocity the network is trained to predict.

# %% tags=["solution"]
def my_flow_pair(x0, eps, s):
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * eps, eps - x0


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_flow_pair(my_flow_pair)

# %% [markdown]
# **Exercise 2 (implement).** Section 3 ran DDIM on a flow model by turning its velocity into a noise
# prediction and a clean-image prediction. Write `my_eps_x0(x_s, v, s)` returning $(\hat\varepsilon, \hat x_0)$.

# %% tags=["solution"]
def my_eps_x0(x_s, v, s):
    return x_s + (1 - s) * v, x_s - s * v


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_eps_from_velocity(my_eps_x0)

# %% [markdown]
# **Exercise 3 (predict, then check).** `mnist_reflow` was trained on 6,000 pairs, each drawn from the
# teacher with Heun's method in 18 steps. How many network calls did drawing the pairs take?

# %% tags=["solution"]
reflow_pair_calls = 6000 * 35


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_reflow_calls(reflow_pair_calls)

# %% [markdown]
# **Exercise 4 (open question).** Reflow can be repeated: draw new pairs from the reflowed model and
# train again ("2-rectified", "3-rectified" flow). What would you expect a second reflow to change in
# straightness and in sample quality, and why can't repeated reflow give a perfect one-step model for free?

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** Each reflow replaces the pairing by the current model's own
# deterministic map, whose paths do not cross; training on straight lines between those pairs gives
# paths at least as straight as before (Liu et al. 2022 prove that the transport cost does not rise),
# so a second reflow straightens further, with diminishing returns, as most of the curvature goes in the
# first. Quality is another matter: every reflow learns from samples, not from data. The student can at
# best reproduce its teacher's images, and each round adds its own fitting error (a finite number of
# pairs, a short training run), so errors accumulate: straighter but blurrier or less varied samples.
# A one-step model also needs the velocity to be exactly constant along every path, which a network of
# finite size trained on finitely many pairs only approximates. That is why practical systems follow
# reflow with a distillation step (chapter 9) and why they keep the number of reflows to one or two.
#
# **Rubric.** (1) Straightness improves again, by less; (2) the student is trained on the teacher's
# samples, so it cannot exceed the teacher and errors compound; (3) names a cost: more pairs and training
# each round, or lost diversity; (4) relates to the measured rows above (what one reflow bought at 1-8 steps).

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
