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
# this way since chapter 4. This chapter takes the idea apart: what the
# straight path is, why its ODE is DDIM's ODE in other coordinates, how straight the paths the
# model actually follows are, how **reflow** makes them straighter, so that a few Euler steps
# do far better than on the original paths, and how pairing each training batch by **optimal transport**
# straightens them without a trained model to start from.
#
# **After this chapter you can**
# - write the flow's path $x_s = (1-s)\,x_0 + s\,\varepsilon$, its velocity target, and SD3's logit-normal choice of $s$;
# - show that Euler on the flow ODE *is* DDIM, and convert a velocity into $\hat\varepsilon$, $\hat x_0$ and DDPM's $v$;
# - measure how straight sampling paths are, and straighten them by reflow (Liu et al. 2022);
# - prove that two lines of a pairing of least total squared length that pass close at the same time move in
#   nearly the same direction, and train on minibatch optimal-transport pairs (Tong et al. 2023; Pooladian et al. 2023).
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
from diffusion_lib.continuous import flow_loss
from diffusion_lib.course import ch08, exercises
from diffusion_lib.course.measured import load_measured
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
# ideal denoiser. This is *conditional flow matching* (Lipman et al. 2023; Liu et al. 2022).
#
# **Why the average velocity carries noise to data.** Each single line moves its own probability mass with
# its own velocity. A density $p_s$ moved by a velocity field $u$ obeys the continuity equation
# $\partial_s p_s + \nabla\cdot(p_s\,u) = 0$, which is linear in the pair (density, density times velocity).
# Averaging over all lines, the mixture density $p_s$ (the distribution of $x_s$) is moved by the averaged
# flux, and that flux is $p_s(x)\,\mathbb E[\varepsilon - x_0 \mid x_s = x] = p_s(x)\,v^*(x, s)$. So $v^*$ moves
# the distribution of $x_s$ along the path (Lipman et al. 2023, Theorem 1), and solving $dx/ds = v^*(x, s)$
# from $s = 1$ (pure noise) down to $0$ carries noise to data. The paths of $v^*$ are in general not
# straight: at each point they follow an *average* of directions, and the average changes along the way.
#
# The library's `flow_loss` is this loss. The network's time input is $1000\,s$ (chapter 4; its sinusoidal
# embedding, chapter 6's section 1, was built for steps 0 to 999). The cell computes the loss by hand on a batch and compares:

# %%
x0 = dl.load_mnist(train=True)[0][:8]
g = torch.Generator().manual_seed(0)
z = torch.randn(8, generator=g)  # a standard normal draw that sets s (below)
eps = torch.randn(x0.shape, generator=g)
s = torch.sigmoid(z)  # SD3's logit-normal s
x_s = (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * eps
with torch.no_grad():
    by_hand = ((model(x_s, 1000 * s) - (eps - x0)) ** 2).mean()
    library = flow_loss(model, x0, z, eps)
print(f"loss by hand {by_hand:.6f}, dl.continuous.flow_loss {library:.6f}")

# %% [markdown]
# **Which $s$ to train on.** Stable Diffusion 3 (Esser et al. 2024, Sec. 3.1) draws $s = \mathrm{sigmoid}(z)$
# with $z \sim \mathcal N(0, 1)$, the *logit-normal* distribution, instead of uniform $s$. Their argument: at
# both ends the best answer is simple. At $s = 1$ the input is pure noise and $v^* = x - \mathbb E[x_0]$ (the noise
# minus the mean image); at $s = 0$ the input is the image and $v^* = -x$ (the noise's mean, 0, minus the image).
# In between, the network must decide what the image becomes, so SD3 spends more training steps there, and
# found that this gave better images than uniform $s$ in its comparison of time distributions:

# %%
z_draws = torch.randn(100_000, generator=torch.Generator().manual_seed(1))
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.hist(torch.sigmoid(z_draws).numpy(), bins=50, density=True, alpha=0.7, label="logit-normal (SD3, the library's flow)")
ax.hist(torch.rand(100_000).numpy(), bins=50, density=True, alpha=0.5, label="uniform")
ax.set(xlabel="s (0 = data, 1 = noise)", ylabel="density")
ax.legend(fontsize=8)
plt.show()
middle = ((torch.sigmoid(z_draws) > 0.25) & (torch.sigmoid(z_draws) < 0.75)).float().mean()
print(f"share of training times in the middle half 0.25 < s < 0.75: logit-normal {middle:.0%}, uniform 50%")

# %% [markdown]
# ## 2. Two moons: train a flow and follow its paths
#
# A small MLP learns the velocity of two moons in seconds. To sample, integrate $dx/ds = v_\theta(x, s)$
# from noise at $s = 1$ down to $s = 0$. **Euler's method** steps from time $s$ to the next, smaller time $s'$:
# $x \leftarrow x + (s' - s)\,v_\theta(x, s)$, one network call a step. (Heun's method, chapter 4, corrects each
# step with the slope at its end: two calls a step, except the last step to $s = 0$, which it leaves
# uncorrected, so $N$ steps cost $2N - 1$ calls.) The figure draws the Euler paths of 40 points: each starts at
# a black dot (noise) and ends at a red cross.

# %%
moons_steps = 600 if FAST else 3000
start = time.perf_counter()
flow_moons, flow_moons_info = ch08.train_moons("flow", moons_steps)
flow_seconds = time.perf_counter() - start  # section 6 compares training costs
moons_data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(0))
noise2d = torch.randn(500, 2, generator=torch.Generator().manual_seed(3))
panels = []
for steps in (2, 8, 64):
    xs, times = ch08.flow_paths(flow_moons, noise2d, steps)
    panels.append((f"Euler, {steps} steps", xs))
display(ch08.paths_figure(panels, moons_data))

# %% [markdown]
# With 64 steps the paths bend: they leave the noise heading inwards, towards the middle of the data, and turn
# towards one moon late. With 2 steps most points land near the middle, off both moons. Section 3 shows why:
# a flow's velocity gives a prediction of the clean point, $\hat x_0 = x_s - s\,v$, and an Euler step from $s$ to
# $0$ lands exactly on it. With two steps, the second step goes from $s = \tfrac12$ to $0$ and lands on
# $\hat x_0$ at $s = \tfrac12$: the *average* of the data points that half-noised point could have come from,
# which for a point between the moons lies between them. (With one step every point lands on $\hat x_0$ at
# $s = 1$: for the ideal network that is the mean of the whole data set, since pure noise says nothing about the
# point; a trained network lands near it.) The paths are curved, and curvature is what costs steps.
#
# ## 3. The same ODE as DDIM
#
# **The coordinates.** Chapter 5 found that deterministic DDIM solves an ODE: with $\bar x = x_t / \sqrt{\bar\alpha_t}$
# and $\rho = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$, we have $\bar x = x_0 + \rho\,\varepsilon$ and DDIM's step is Euler's,
# $\bar x_{t'} = \bar x_t + (\rho_{t'} - \rho_t)\,\hat\varepsilon$. Divide $\bar x$ by $1 + \rho$ and call $s = \rho / (1 + \rho)$: then
# $\bar x / (1 + \rho) = (1-s)\,x_0 + s\,\varepsilon = x_s$. In DDPM's own variables,
#
# $$x_s = \frac{x_t}{\sqrt{\bar\alpha_t} + \sqrt{1-\bar\alpha_t}}, \qquad s = \frac{\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t} + \sqrt{1-\bar\alpha_t}} :$$
#
# a DDPM noise level and the flow time with the same signal-to-noise ratio describe the same noisy images,
# up to that scale factor.
#
# **From a velocity to $\hat\varepsilon$ and $\hat x_0$.** The flow's two equations $x_s = (1-s)\,x_0 + s\,\varepsilon$ and
# $v = \varepsilon - x_0$ have two unknowns; substituting $x_0 = \varepsilon - v$ gives
# $\hat\varepsilon = x_s + (1-s)\,v$ and $\hat x_0 = x_s - s\,v$ (exercise 2). By construction
# $(1-s)\,\hat x_0 + s\,\hat\varepsilon = x_s$ and $\hat\varepsilon - \hat x_0 = v$. This is how the library's denoiser
# (`denoisers.flow_estimates`) answers every sampler, DDIM, DDPM and DPM-Solver++ included, for a flow model.
#
# **The ideal networks define one field.** The ideal flow network is $v^*(x, s) = \mathbb E[\varepsilon - x_0 \mid x_s = x]$
# (section 1) and the ideal DDPM network $\varepsilon^*(x_t, t) = \mathbb E[\varepsilon \mid x_t]$ (chapter 3). On any one
# line, $x_s + (1-s)(\varepsilon - x_0) = \varepsilon$; take the expectation given $x_s$:
# $\mathbb E[\varepsilon \mid x_s] = x_s + (1-s)\,v^*(x_s, s)$, which is the conversion above applied to $v^*$. And $x_s$ and
# $x_t$ at the same signal-to-noise ratio differ by the known factor derived above, so conditioning on one is
# conditioning on the other. The ideal flow network, converted, *is* the ideal DDPM network: both objectives,
# trained perfectly, give the same $\hat\varepsilon$, hence the same ODE. (How each loss weights the noise levels does
# not matter here: the best answer at each point and noise level is the same conditional mean whatever the
# weight, as long as every level gets some.)
#
# **Why the DDIM step and the Euler step agree exactly.** A DDIM step ($\eta = 0$) freezes the model's
# $(\hat x_0, \hat\varepsilon)$ and moves to $\bar x_{t'} = \hat x_0 + \rho_{t'}\,\hat\varepsilon$, which in flow coordinates is
# $(1-s')\,\hat x_0 + s'\,\hat\varepsilon$. Euler in $s$ moves to
# $x_s + (s' - s)\,v = (1-s)\,\hat x_0 + s\,\hat\varepsilon + (s' - s)(\hat\varepsilon - \hat x_0) = (1-s')\,\hat x_0 + s'\,\hat\varepsilon$: the
# same point. So DDIM on a flow model *is* Euler at the noise levels DDIM visits, with no approximation, as long
# as $\hat x_0$ is not clipped to $[-1, 1]$ (chapter 5's sampler clips it for images; this check does not). The
# cell runs the library's DDIM on `mnist_uncond`, and Euler written out at DDIM's ten noise levels, from the same noise:

# %%
schedule = dl.make_schedule(info["schedule"], info["T"])
ddim_steps = 10
x_T = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
ddim = dl.sample_loop(dl.as_eps_model(model, schedule, info["prediction"], with_x0=True), x_T.shape, schedule,
                      "ddim", ddim_steps, x_T=x_T)  # the library's DDIM, eta = 0, no clipping

# Euler by hand on dx/ds = v, at the flow times of DDIM's levels (then s = 0, the data)
ab = schedule.alpha_bars[dl.ddim_timesteps(info["T"], ddim_steps)]
times = ((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())).tolist() + [0.0]
x = x_T / (ab[0].sqrt() + (1 - ab[0]).sqrt()).item()  # x_s = x_t / (alpha + sigma) at the first level
with torch.no_grad():
    for s_now, s_next in zip(times[:-1], times[1:]):
        v = model(x, torch.full((len(x),), 1000 * s_now))  # the network is told its level as 1000 s
        x = x + (s_next - s_now) * v  # one Euler step
print(f"DDIM-{ddim_steps} vs Euler at the same {ddim_steps} noise levels: largest difference "
      f"{(ddim - x).abs().max().item():.1e} (pixels reach {ddim.abs().max().item():.2f})")

# %% [markdown]
# **DDPM's $v$-prediction and the flow's velocity.** Salimans & Ho (2022) train DDPM networks to predict
# $v_{\text{DDPM}} = \alpha\,\varepsilon - \sigma\,x_0$, with $\alpha = \sqrt{\bar\alpha_t}$ and $\sigma = \sqrt{1-\bar\alpha_t}$: the velocity of the path
# $x_t = \alpha x_0 + \sigma\varepsilon$ with respect to the angle $\phi$ when $\alpha = \cos\phi$, $\sigma = \sin\phi$ (chapter 3, section 1). The flow's target is
# $v_{\text{flow}} = \varepsilon - x_0$. From $x_t$ and $v_{\text{DDPM}}$ both unknowns come back ($\varepsilon = \sigma x_t + \alpha v_{\text{DDPM}}$ and
# $x_0 = \alpha x_t - \sigma v_{\text{DDPM}}$, since $\alpha^2 + \sigma^2 = 1$), so
#
# $$v_{\text{flow}} = (\alpha + \sigma)\,v_{\text{DDPM}} + (\sigma - \alpha)\,x_t = (\alpha + \sigma)\big(v_{\text{DDPM}} + (\sigma - \alpha)\,x_s\big),
# \qquad v_{\text{DDPM}} = \frac{v_{\text{flow}}}{\alpha + \sigma} - (\sigma - \alpha)\,x_s ,$$
#
# using $x_t = (\alpha + \sigma)\,x_s$ from above. The same target up to the known factor $\alpha + \sigma$ and a multiple
# of the input; in the middle of the path, where $\alpha = \sigma$, exactly $v_{\text{flow}} = \sqrt 2\, v_{\text{DDPM}}$.
# Checked on random draws at three noise levels:

# %%
for t_value in (100, 500, 900):
    alpha, sigma = schedule.alpha_bars[t_value].sqrt().item(), (1 - schedule.alpha_bars[t_value]).sqrt().item()
    x_t = alpha * x0 + sigma * eps
    v_ddpm = alpha * eps - sigma * x0
    v_flow = (alpha + sigma) * v_ddpm + (sigma - alpha) * x_t
    back = v_flow / (alpha + sigma) - (sigma - alpha) * x_t / (alpha + sigma)
    print(f"t = {t_value}: alpha = {alpha:.3f}, sigma = {sigma:.3f}; |v_flow - (eps - x0)| max "
          f"{(v_flow - (eps - x0)).abs().max():.1e}, back to v_DDPM {(back - v_ddpm).abs().max():.1e}")

# %% [markdown]
# **A DDPM-trained model follows the same kind of path.** If the two ODEs are one ODE, a model trained
# with DDPM's loss should trace paths as curved as the flow model's, once both are drawn in the same
# coordinates. The cell trains a DDPM model ($v$-prediction, cosine schedule) on the same moons, runs
# DDIM with 64 steps, converts each point to flow coordinates, and compares the paths with the flow
# model's Euler paths from the same noise, both on the same 64 noise levels (DDIM's) and on 64 even steps.
#
# To compare curvature we need a number. Liu et al. (2022) measure **straightness** as the average squared
# difference between the velocity along the path and the velocity of the straight line from its start to
# its end (the path's **chord**). `dl.distill.straightness` divides that by the chord's squared speed, so $S = 0$ is a
# straight line run at constant speed (one Euler step lands exactly), and $S = 1$ is a path whose velocity
# strays from the line's, in mean square, by as much as the line's velocity itself. $S$ can exceed 1: a path
# that turns late, as the moons' do, moves far from its chord's direction for part of the way.

# %%
ddpm_moons, ddpm_moons_info = ch08.train_moons("ddpm", moons_steps)
ddim_times = ch08.ddim_flow_times(ddpm_moons_info, 64)
flow_xs, flow_times_ = ch08.flow_paths(flow_moons, noise2d, 64)
flow_ddim_xs, _ = ch08.flow_paths(flow_moons, noise2d, 64, times=ddim_times)
ddpm_xs, ddpm_times = ch08.ddpm_paths(ddpm_moons, ddpm_moons_info, noise2d, 64)
display(ch08.paths_figure([("flow model, Euler-64", flow_xs), ("DDPM model, DDIM-64, flow coordinates", ddpm_xs)],
                          moons_data))
moons_s = {"flow": straightness(flow_xs, flow_times_), "flow, DDIM's times": straightness(flow_ddim_xs, ddim_times),
           "ddpm": straightness(ddpm_xs, ddpm_times)}
print(f"straightness S: flow model {moons_s['flow']:.2f} (even steps), {moons_s['flow, DDIM' + chr(39) + 's times']:.2f} "
      f"(DDIM's noise levels); DDPM model {moons_s['ddpm']:.2f} (DDIM's noise levels)")

# %% [markdown]
# Both sets of paths bend the same way, and their straightness values are of the same size (2.49 and 2.76, one
# trained network each). On the same noise levels
# what difference remains comes from two networks trained with different losses and time weightings, not
# from different ODEs. **The objective alone does not straighten the paths**: a flow model trained on
# independent (noise, image) pairs follows the same curved ODE that DDIM solves. What bends them is that
# each point of noise could become many images.
#
# ## 4. How straight are MNIST's paths?
#
# In 784 dimensions the picture changes. The cell measures $S$ for the Euler paths of `mnist_uncond` (64
# even steps, as for the moons), and how far noise lies from the data compared with how far the data's
# points lie from each other:

# %%
n_paths = 16 if FAST else 64
teacher_xs, teacher_times = ch08.mnist_paths(model, n_paths, steps=64)
teacher_s = straightness(teacher_xs, teacher_times)
print(f"mnist_uncond: straightness S = {teacher_s:.3f} over {n_paths} paths")
for name, data in (("MNIST", dl.load_mnist(train=True)[0]), ("two moons", moons_data)):
    d = ch08.squared_distances(data)
    print(f"{name}: mean squared distance noise -> data point {d['noise_to_data']:.1f}, "
          f"data point -> data point {d['data_to_data']:.1f} (ratio {d['noise_to_data'] / d['data_to_data']:.1f})")

# %% [markdown]
# The MNIST paths are much straighter than the moons' ($S$ of a few hundredths against more than 2). Part of the
# reason is visible in the distances: a noise draw lies almost four times farther (in squared distance) from an MNIST
# digit than two digits lie from each other, while on two moons the two distances are about the same. The choice
# between digits is then a small turn compared with the whole line; between the moons it is most of the journey. (That
# ratio alone does not explain a factor of 60 in $S$; it is one reason, not a derivation.) Small as it is, the
# curvature left still costs steps: in section 5's table the teacher with 4 Euler steps scores an MNIST-FID of 86
# against 26.7 for Heun with 18 steps. Where along the path does the velocity stray? For each Euler step, the figure
# plots the step's **stray**: the squared difference between the step's velocity and the chord's, divided by the
# chord's squared speed, both averaged over the paths. $S$ is the average of the strays over the path's steps, each
# weighted by its length in time, $|\Delta s|$. The figure also draws `mnist_reflow`, the same network retrained on
# pairs of a noise draw and the image the teacher's ODE makes from it (reflow, which section 5 builds):

# %%
fig, ax = plt.subplots(figsize=(5.5, 2.8))
middles, values = dl.distill.segment_strays(teacher_xs, teacher_times)
ax.plot(middles, values, label="mnist_uncond")
reflow_xs, reflow_times = ch08.mnist_paths(reflowed, n_paths, steps=64)
middles, values = dl.distill.segment_strays(reflow_xs, reflow_times)
ax.plot(middles, values, label="mnist_reflow (section 5)")
ax.set(xlabel="s (0 = data, 1 = noise)", ylabel="squared stray / squared chord", yscale="log")
ax.invert_xaxis()
ax.legend()
plt.show()
for name, (xs, times) in (("mnist_uncond", (teacher_xs, teacher_times)), ("mnist_reflow", (reflow_xs, reflow_times))):
    middles, values = dl.distill.segment_strays(xs, times)
    parts = {"s > 0.75 (near the noise)": [v for m, v in zip(middles, values) if m > 0.75],
             "0.25 < s < 0.75": [v for m, v in zip(middles, values) if 0.25 <= m <= 0.75],
             "s < 0.25 (near the data)": [v for m, v in zip(middles, values) if m < 0.25]}
    print(f"{name}: mean squared stray / squared chord, " + ", ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in parts.items()))

# %% [markdown]
# The velocity strays most at the two ends of the path, not in the middle. Near the noise ($s$ close to 1) the
# first steps head for the average of everything the noise could become, and must turn as a digit starts to
# show; at the very end, near the data, the fine strokes are settled; in between the velocity follows the
# chord closely. After reflow (section 5) the curve is lower everywhere: averaged over each of the three parts,
# by more than ten times (compare the two lines above), by less at single steps near the noise. Large first or
# last steps are where a few-step sampler loses most.
#
# ## 5. Reflow: retrain on the model's own pairs
#
# Liu et al. (2022) observe that the curvature comes from the *pairing*: training joins each image to
# an independent noise draw, so lines cross, and the average velocity at a crossing points between them.
# **Reflow** changes the pairing:
#
# 1. draw noise $\varepsilon$ and run the trained model's ODE (the library uses Heun's method) to get its image
#    $x = \Phi(\varepsilon)$;
# 2. train a new flow (starting from the old weights) on straight lines between these pairs,
#    $x_s = (1-s)\,x + s\,\varepsilon$ with target $\varepsilon - x$ (the library draws $s$ uniformly here, as Liu et al. do).
#
# The new pairing is a deterministic map, $\varepsilon \mapsto \Phi(\varepsilon)$. Liu et al. prove that it moves the same
# distribution of images at no higher transport cost; in practice the straight lines between its pairs cross far
# less often than lines between independent draws, so a velocity field can follow each of them at nearly constant
# speed: straight paths, which Euler follows in few steps. In principle reflow keeps the *distribution* of images
# the old model makes and changes only the routes to them; in practice the student inherits the teacher's errors
# and adds its own.
#
# The training lines themselves, for 40 noise draws on two moons: on the left each is joined to a random data
# point, as flow matching trains; on the right to where the moons model's ODE takes it (its Euler-64 end from
# section 3), the kind of pair reflow trains on (the run below draws its own 4,000 pairs, with Heun's method). The
# cell counts how many pairs of lines cross:

# %%
def crossings(starts, ends):
    """How many pairs of the 2-D segments starts[i] -> ends[i] intersect."""
    def turn(p, q, r):  # the sign of the turn p -> q -> r: +1 left, -1 right
        return torch.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))
    count = 0
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            a, b, c, d = starts[i], ends[i], starts[j], ends[j]
            count += int(turn(a, b, c) != turn(a, b, d) and turn(c, d, a) != turn(c, d, b))
    return count


n_lines = 40
starts = noise2d[:n_lines]
couplings = {"independent: noise and a random data point":
             moons_data[torch.randint(len(moons_data), (n_lines,), generator=torch.Generator().manual_seed(5))],
             "reflow: noise and the model's image of it": flow_xs[-1][:n_lines]}
crossed = {title: crossings(starts, ends) for title, ends in couplings.items()}
display(ch08.paths_figure([(f"{title.split(':')[0]}: {crossed[title]} crossings", [starts, ends])
                           for title, ends in couplings.items()], moons_data))  # each line a two-point path
for title, count in crossed.items():
    print(f"{title}: {count} of the {n_lines * (n_lines - 1) // 2} pairs of lines cross")

# %% [markdown]
# Of the 780 pairs of lines, 185 cross when each noise draw is joined to a random data point, and 3 when it is
# joined to where the model's ODE takes it: the model's own map sends each draw to a nearby part of the moons, so
# neighbouring lines run side by side. A crossing in the picture is a proxy: the network has to average two lines'
# directions only where they pass the same point at the same $s$, which lines crossing in space make likely for
# nearby times. A velocity field trained on the right-hand lines rarely has to average two directions, and that
# averaging is what bent the paths of section 2.
#
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
reflow_seconds = time.perf_counter() - start
print(f"reflow on two moons: {reflow_seconds:.1f} s")
reflow_moons_xs, reflow_moons_times = ch08.flow_paths(reflow_moons, noise2d, 64)
moons_s["reflow"] = straightness(reflow_moons_xs, reflow_moons_times)
display(ch08.paths_figure([("before reflow, Euler-64", flow_xs), ("after reflow, Euler-64", reflow_moons_xs)],
                          moons_data))
print(f"straightness S: before {moons_s['flow']:.3f}, after reflow {moons_s['reflow']:.3f}")

# %% [markdown]
# After reflow the paths are nearly straight lines from noise to the moons. The committed MNIST model
# `mnist_reflow` was made the same way from `mnist_uncond` by the course's command (its README records the
# time it took and the machine):
#
# ```bash
# OMP_NUM_THREADS=1 python -m diffusion_lib distill --method reflow --teacher mnist_uncond --pairs 6000 --pair-steps 18 --steps 2000 --lr 2e-4 --seed 0 --max-minutes 30 --quiet --out ../runs/distill/mnist_reflow
# ```
#
# The cell measures its straightness on the same noise as the teacher's above (the figure in section 4 already
# showed its segments), and lists what the benchmark measured on 1,000 samples per row (`python
# benchmarks/run.py --only fewsteps`, with the network under bfloat16 autocast):

# %%
reflow_s = straightness(reflow_xs, reflow_times)
print(f"straightness S over {n_paths} paths: mnist_uncond {teacher_s:.3f}, mnist_reflow {reflow_s:.3f}")
measured = load_measured("fewsteps")["figures"]
floor = measured["real_baseline_fid"]
rows = {(r["model"], r["sampler"], r["steps"]): r for r in measured["rows"] if r["precision"] == "bf16"}
print(f"\nMNIST-FID (real-digit floor {floor:.1f}) and share recognised, n = {measured['n']:,}:")
print(f"{'sampler':>9} | {'mnist_uncond':>22} | {'mnist_reflow':>22}")
for sampler, steps in (("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("heun", 18)):
    before, after = rows[("mnist_uncond", sampler, steps)], rows[("mnist_reflow", sampler, steps)]
    print(f"{sampler + '-' + str(steps):>9} | {before['mnist_fid']:>8.1f} {100 * before['recognised']:>11.1f}% | "
          f"{after['mnist_fid']:>8.1f} {100 * after['recognised']:>11.1f}%")

# %% [markdown]
# Reflow cut the MNIST model's $S$ by more than ten times, and the table shows what that buys: the fewer
# the steps, the larger the gain. With one Euler step the teacher lands every noise on its $\hat x_0$ at
# $s = 1$, close to the mean digit, which the classifier almost never recognises; the reflowed model draws
# digits (80.5% recognised). With two steps the FID falls from 395.0 to 62.8, with four from 86.0 to 50.1.
# At 8 steps the two are close (44.3 against 42.2), and both are still far from the teacher's Heun-18 (26.7): with
# eight short steps the teacher's curvature costs it little more than Euler's error costs the straighter model. The
# last row shows reflow's price. With Heun's method and 18 steps, which follows each model's own paths
# closely, the reflowed model scores 35.8 against the teacher's 26.7 (89.5% recognised against 92.1%):
# the student learnt from 6,000 pairs for 2,000 steps, inherits the teacher's errors and adds its own.
# Chapter 9 distils the teacher in two other ways and puts every row side by side.
#
# ## 6. Pairing inside each batch: minibatch optimal transport
#
# Reflow needs a trained model first and one ODE solve for every pair. Tong et al. (2023) and Pooladian et al.
# (2023) change the pairing during training instead, one batch at a time: given the batch's $B$ images and
# $B$ noise draws, join them so that the total squared length of the lines,
# $\sum_i \lVert x_{0,i} - \varepsilon_{\pi(i)}\rVert^2$, is least over all $B!$ pairings $\pi$. That is the
# *assignment problem*, which the Hungarian algorithm solves exactly in $O(B^3)$ operations and no network call.
#
# **Why the least total length helps.** Take two lines $i$ and $j$ of a pairing and look at them at one time $s$,
# $0 < s < 1$, where they are at the points $m_i$ and $m_j$, a distance $\delta = m_i - m_j$ apart. Write $d = x_0 - \varepsilon$
# for each line. From $m = (1-s)\,x_0 + s\,\varepsilon$ follow $x_0 - m = s\,d$ and $\varepsilon - m = -(1-s)\,d$, so after
# swapping the two noise draws the new lines have
#
# $$x_{0,i} - \varepsilon_j = \delta + s\,d_i + (1-s)\,d_j, \qquad x_{0,j} - \varepsilon_i = -\delta + s\,d_j + (1-s)\,d_i .$$
#
# Expanding the squares (with $s^2 + (1-s)^2 = 1 - 2s(1-s)$), their lengths add up to the old total
# $\lVert d_i\rVert^2 + \lVert d_j\rVert^2$ minus $2s(1-s)\,\lVert d_i - d_j\rVert^2$, plus
# $2\lVert\delta\rVert^2 + 2(2s-1)\,\delta\cdot(d_i - d_j)$. In a pairing of least total length no swap helps, so
# for every two of its lines at every $s$:
#
# $$s(1-s)\,\lVert d_i - d_j\rVert^2 \;\le\; \lVert\delta\rVert^2 + |2s-1|\,\lVert\delta\rVert\,\lVert d_i - d_j\rVert .$$
#
# Two of its lines that pass close to each other at the same time therefore move in nearly the same direction
# (their velocities are $-d$): at $s = \tfrac12$ the inequality reads $\lVert d_i - d_j\rVert \le 2\lVert\delta\rVert$. Independent
# pairs promise nothing of the kind: two lines can pass near each other heading in opposite directions, and
# there (section 5) the network has to average them. The promise holds inside one batch only: lines of
# different batches were never compared, and the best pairing of a batch of $B$ points is a worse stand-in
# for a good pairing of the whole data set the fewer points it has to choose from, which in many dimensions is
# a serious limit.
#
# The pairing in three lines, checked against the library's (`dl.objectives.ot_pairing`, which objective
# `"flow-ot"` applies to every batch before the flow loss), and drawn for section 5's 40 noise draws and their
# 40 random data points:

# %%
from scipy.optimize import linear_sum_assignment


def pair_by_ot(x0, noise):
    cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()) ** 2  # (B, B): squared length of each line
    _, columns = linear_sum_assignment(cost.numpy())  # the pairing of least total cost: x0_i with noise_columns[i]
    return noise[torch.as_tensor(columns)]


random_ends = couplings["independent: noise and a random data point"]
ot_starts = pair_by_ot(random_ends, starts)  # the same 40 lines' ends, each given a noise draw by OT
print(f"the chapter's pairing = the library's: {torch.equal(ot_starts, dl.objectives.ot_pairing(random_ends, starts))}")

pairings = {"independent": starts, "minibatch OT": ot_starts}
crossed = {title: crossings(line_starts, random_ends) for title, line_starts in pairings.items()}
display(ch08.paths_figure([(f"{title} pairs: {crossed[title]} crossings", [line_starts, random_ends])
                           for title, line_starts in pairings.items()], moons_data))
for title, count in crossed.items():
    print(f"{title:>13}: {count:>3} of the {n_lines * (n_lines - 1) // 2} pairs of lines cross")

# %% [markdown]
# The same 40 noise draws and 40 data points, joined differently: each noise draw now goes to a data point on
# its own side of the picture and the lines run side by side, with far fewer crossings (printed above). The
# crossings left are crossings in space at *different* times $s$, which the inequality allows.
#
# Training with it: section 2's flow again, the same steps and seed, with every batch of 256 re-paired
# (objective `"flow-ot"`). The cell times the training (beside section 2's and reflow's), measures the
# straightness $S$ of its Euler-64 paths beside the other two models', and scores samples at 1 to 8 Euler steps by the **energy distance** to 2,000 held-out
# moons points, $2\,\mathbb E\lVert X - Y\rVert - \mathbb E\lVert X - X'\rVert - \mathbb E\lVert Y - Y'\rVert$ (zero for the
# same distribution; it can come out slightly negative, since it is estimated from samples). Printed beside it,
# what perfect samples score: ten further sets of real moons points, each measured the same way:

# %%
from diffusion_lib.evaluation import energy_distance  # the formula above; a point's distance to itself left out

held_out_moons = dl.make_toy("moons", 2000, torch.Generator().manual_seed(11))
floor_draws = [energy_distance(dl.make_toy("moons", 2000, torch.Generator().manual_seed(100 + k)), held_out_moons)
               for k in range(10)]  # ten sets of real points: what perfect samples score
start = time.perf_counter()
ot_moons = ch08.train_moons("flow-ot", moons_steps)[0]  # section 2's training, every batch re-paired
ot_seconds = time.perf_counter() - start
ot_xs, ot_times = ch08.flow_paths(ot_moons, noise2d, 64)
moons_s["minibatch OT"] = straightness(ot_xs, ot_times)
display(ch08.paths_figure([("independent pairs, Euler-64", flow_xs), ("minibatch OT, Euler-64", ot_xs)], moons_data))
print(f"training {moons_steps} steps, batches of {flow_moons_info['train_config']['batch_size']} from "
      f"{dl.training.TOY_POINTS:,} points: flow {flow_seconds:.1f} s, flow-ot {ot_seconds:.1f} s; "
      f"reflow, after the flow: {reflow_seconds:.1f} s more")
print(f"straightness S: flow {moons_s['flow']:.3f}, reflow {moons_s['reflow']:.3f}, minibatch OT {moons_s['minibatch OT']:.3f}")
test_noise2d = torch.randn(2000, 2, generator=torch.Generator().manual_seed(13))
print(f"energy distance to held-out moons (perfect samples, ten sets of real points: from {min(floor_draws):.4f} "
      f"to {max(floor_draws):.4f}):")
print(f"{'Euler steps':>12} {'flow':>8} {'reflow':>8} {'OT':>8}")
for k in (1, 2, 4, 8):
    ends = [ch08.flow_paths(m, test_noise2d, k)[0][-1] for m in (flow_moons, reflow_moons, ot_moons)]
    print(f"{k:>12} " + " ".join(f"{energy_distance(e, held_out_moons):>8.4f}" for e in ends))

# %% [markdown]
# On two moons, re-pairing within batches does most of what reflow did, with no model to start from: $S$ falls
# from 2.494 to 0.016 (reflow's 0.002). From two Euler steps on, the OT model's samples and reflow's both score
# inside the range of perfect samples, so this measure cannot rank them; at one step reflow is still inside it
# and the OT model above it (-0.0003 against 0.0025), while independent pairs stay above it even at eight
# steps. Reflow's edge at one step fits the limit of the argument: its pairs come from one deterministic map,
# the teacher's, defined on all of the noise, while minibatch OT pairs 256 points at a time out of 20,000. The
# price of OT here is training time. Solving a 256 x 256 assignment costs more than a step of this tiny
# network, so the OT training takes several times as long as section 2's (the times printed above); on MNIST's
# U-Net the network's step dominates instead.
#
# **On MNIST.** The benchmark trains the default recipe twice from scratch for the same steps and seed, once on
# independent pairs and once with every batch of 64 re-paired (`python benchmarks/run.py --only couplings`), and
# scores 1,000 samples per row:

# %%
coupled = load_measured("couplings")["figures"]
print(f"{'objective':>9} {'steps':>6} {'S':>6} | " + " | ".join(f"{q['sampler'] + '-' + str(q['steps']):<11}"
                                                              for q in coupled["rows"][0]["samples"]))
for r in coupled["rows"]:
    print(f"{r['objective']:>9} {r['steps']:>6} {r['straightness']:>6.3f} | "
          + " | ".join(f"{q['mnist_fid']:>6.1f} {100 * q['recognised']:>3.0f}%" for q in r["samples"]))
print(f"MNIST-FID and share recognised, n = {coupled['n']:,}; real-digit floor {coupled['real_baseline_fid']:.1f}")
print(f"(section 5's reflow started from mnist_uncond, trained {info['step']:,} steps)")

# What the pairing adds to a training step of the default U-Net, timed on this machine (float32):
recipe = dl.TrainConfig()
unet = dl.models.build_model(recipe.model_arch, recipe.model_config())
optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr)
mnist_batch = dl.load_mnist(train=False)[0][: recipe.batch_size]
mnist_noise = torch.randn(mnist_batch.shape, generator=torch.Generator().manual_seed(0))
mnist_z = torch.randn(len(mnist_batch), generator=torch.Generator().manual_seed(1))


def timed_step(pairing):
    start = time.perf_counter()
    loss = flow_loss(unet, mnist_batch, mnist_z, pairing(mnist_batch, mnist_noise))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


independent, with_ot = (lambda x0, noise: noise), dl.objectives.ot_pairing
for _ in range(2):  # warm-up: the first steps allocate, and the first pairing loads scipy's solver
    timed_step(independent), timed_step(with_ot)
times = {"independent": [], "OT": []}
for _ in range(1 if FAST else 5):  # alternated, so that a busy moment of the machine hits both
    times["independent"].append(timed_step(independent))
    times["OT"].append(timed_step(with_ot))
print("a training step, batch of " + str(len(mnist_batch)) + ": "
      + ", ".join(f"{name} {1000 * sorted(t)[len(t) // 2]:.0f} ms" for name, t in times.items()) + " (median)")

# %% [markdown]
# On MNIST the same re-pairing helps, but far less. After the same 2,500 steps the OT-paired model's paths are
# straighter than the independent model's ($S$ 0.025 against 0.043) and its few-step samples better: with two
# Euler steps MNIST-FID 256.9 against 437.6, with four 124.2 against 161.5. With Heun-18, which follows curved
# paths well, the two are level (73.7 and 74.2). Reflow did much more to the committed teacher (section 5:
# $S$ from 0.042 to 0.003, Euler-2 from 395.0 to 62.8), though that is not a like-for-like comparison: the teacher
# trained far longer (printed) and its rows were sampled under bfloat16. A likely reason for the smaller effect is
# the limit of the argument above: a batch of 64 images in 784 dimensions is a thin sample of the training set,
# so the best pairing inside it is a poor stand-in for a good pairing of the whole data set. (No run here varies
# the batch size to test this.) What minibatch OT costs is small (the step times printed: the network's forward
# and backward pass dominates) and it needs no trained model; reflow needs a teacher and an ODE solve for every
# pair, and from this course's teacher it straightened far more. These MNIST rows are one training
# seed each, so read differences of a few FID points with care.
#
# **Drag the slider**: the number of Euler steps for the moons flows (independent pairs, after reflow, with
# minibatch OT) and the MNIST model before and after reflow, from the same noise.

# %%
def show_steps(steps):
    display(ch08.steps_view(steps, {"independent pairs": flow_moons, "after reflow": reflow_moons, "minibatch OT": ot_moons},
                            {"mnist_uncond": (model, info), "mnist_reflow": (reflowed, reflow_info)}, moons_data))


widgets.interact(show_steps, steps=widgets.IntSlider(value=2, min=1, max=8, step=1, continuous_update=False));

# %% [markdown]
# ## Exercises
#
# Exercises marked *going further* are not needed by the chapters that follow: they suit a lab, homework or a
# second reading.
#
# **Exercise 1 (implement).** Write `my_flow_pair(x0, eps, s)`, returning the point $x_s$ of the straight
# path at times `s` (shape (B,)) and the velocity the network is trained to predict.

# %% tags=["solution", "exercise:ch08-flow-pair"]
def my_flow_pair(x0, eps, s):
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * eps, eps - x0


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_flow_pair(my_flow_pair)

# %% [markdown]
# **Exercise 2 (implement).** Section 3 ran DDIM on a flow model by turning its velocity into a noise
# prediction and a clean-image prediction. Write `my_eps_x0(x_s, v, s)` returning $(\hat\varepsilon, \hat x_0)$;
# here `s` already has a shape that broadcasts against `x_s` (one time per row).

# %% tags=["solution", "exercise:ch08-eps-x0"]
def my_eps_x0(x_s, v, s):
    return x_s + (1 - s) * v, x_s - s * v


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_eps_from_velocity(my_eps_x0)

# %% [markdown]
# **Exercise 3 (predict, then check).** `mnist_reflow` was trained on 6,000 pairs, each drawn from the
# teacher with Heun's method in 18 steps. How many network calls did drawing the pairs take?

# %% tags=["solution", "exercise:ch08-reflow-pair-calls"]
reflow_pair_calls = 6000 * 35


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_reflow_calls(reflow_pair_calls)

# %% [markdown] tags=["exercise:ch08-open-reflow-again"]
# **Exercise 4 (open question, going further).** Reflow can be repeated: draw new pairs from the reflowed model and
# train again ("2-rectified", "3-rectified" flow). What would you expect a second reflow to change in
# straightness and in sample quality, and why can't repeated reflow give a perfect one-step model for free?

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** Each reflow replaces the pairing by the current model's own
# deterministic map. Liu et al. (2022) show that a reflow never raises the transport cost, and that the
# straightness of the best of the first K rounds is bounded by a constant over K (an upper bound, not a
# measured rate): a second reflow is expected to
# straighten further, with diminishing returns, since most of the curvature goes in the first (here S fell
# from about 0.04 to 0.003 in one round). Quality is another matter: every reflow learns from samples, not
# from data. The student can at best reproduce its teacher's images, and each round adds its own fitting error (a finite number of
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
