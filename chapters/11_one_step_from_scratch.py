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
# # Chapter 11: One step from scratch — MeanFlow and consistency training
#
# Chapter 9 reached one to four steps in two stages: train a flow model (the teacher), then train a student to do in
# one step what the teacher does in many. This chapter trains one-step models **without a teacher**. Two ideas do
# it. **MeanFlow** (Geng et al. 2025) learns the *average* velocity over a whole interval of the path, through an
# identity that ties it to the ordinary velocity of chapter 8. **Consistency training** (Song et al. 2023) is
# chapter 9's consistency distillation with the teacher's ODE step replaced by the data itself. Sections 1 to 6 run
# on two moons, where the whole distribution can be seen and measured; section 7 puts a MeanFlow model and a
# consistency-trained model, both trained on MNIST, beside chapter 9's distilled students, by quality and by all the
# training each one needed.
#
# **After this chapter you can**
# - define the average velocity u(x, r, s), compute it by following an ODE, and derive the MeanFlow identity
#   u = v - (s - r) du/ds;
# - write the MeanFlow loss with one Jacobian-vector product (`torch.func.jvp`) and say what it costs;
# - train consistency models with and without a teacher, grow the teacherless one's grid over training, and measure
#   where each one-step model loses;
# - compare few-step models fairly: by quality at each number of calls and by all the training each one needed.
#
# **Assumes**: chapter 4 (the U-Net), chapter 5 (DDIM and DPM-Solver++), chapter 8 (the straight path x_s =
# (1 - s) x_0 + s eps, its velocity, the flow ODE, the energy distance on two moons) and chapter 9 (consistency
# distillation and its multistep sampler).

# %%
# Setup: works unchanged locally, on Binder and on Colab (where it installs the course's library).
import sys

if "google.colab" in sys.modules:
    # %pip install -q "diffusion_lib @ git+https://github.com/diffusion-course/diffusion-course"
    pass

# %%
# %matplotlib inline
import copy
import statistics
import time

import ipywidgets as widgets
import torch
from IPython.display import display

import diffusion_lib as dl
from diffusion_lib.continuous import flow_velocity
from diffusion_lib.course import ch08, ch09, ch11, exercises
from diffusion_lib.course.measured import load_measured
from diffusion_lib.denoisers import meanflow_times
from diffusion_lib.distill import consistency_loss, student_files
from diffusion_lib.evaluation import classify, committed_classifier, energy_distance
from diffusion_lib.models import build_model
from diffusion_lib.objectives import (CT_GRID, CT_GROWTH, MEANFLOW_C, MEANFLOW_SHARE, consistency_training_loss,
                                   ct_grid, meanflow_loss, meanflow_target)

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
moons_steps = 600 if FAST else 3000

# %% [markdown]
# ## 1. What one Euler step misses
#
# Chapter 8's flow model learns the velocity v(x, s) of the straight path, and its samples follow the ODE
# dx/ds = v(x, s) from noise at s = 1 to data at s = 0. The cell trains that model on two moons again
# (`ch08.train_moons`, chapter 8's recipe) and samples it with 1, 4 and 32 Euler steps, from the same 2,000 noise
# points. Each cloud is scored by chapter 8's energy distance to 2,000 held-out moons points, next to what perfect
# samples score (ten further sets of real points, measured the same way):

# %%
data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(0))  # drawn in grey behind every cloud
held_out = dl.make_toy("moons", 2000, torch.Generator().manual_seed(11))
floor = [energy_distance(dl.make_toy("moons", 2000, torch.Generator().manual_seed(100 + k)), held_out) for k in range(10)]
noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(13))  # what dl.generate draws with seed 13

start = time.perf_counter()
flow, flow_info = ch08.train_moons("flow", moons_steps)
seconds = {"flow": time.perf_counter() - start}
euler = {k: ch08.flow_paths(flow, noise, k)[0][-1] for k in (1, 4, 32)}
display(ch11.clouds_figure({f"flow, Euler-{k}": x for k, x in euler.items()}, data))
print(f"perfect samples score from {min(floor):.4f} to {max(floor):.4f}")
for k, x in euler.items():
    print(f"Euler-{k:<3} energy distance {energy_distance(x, held_out):.4f}")

# %% [markdown]
# Thirty-two steps land inside the range of perfect samples (-0.0002); four are far closer than one (0.0291
# against 0.7232) but still outside it. One step of length 1 follows the velocity at the noise, v(x_1, 1), all the
# way to s = 0, and lands on the model's $\hat x_0$ at s = 1. Pure noise says almost nothing about the data point,
# so that is close to the mean of the data, and the cloud collapses towards one point (chapter 8). The velocity
# changes along the path, and one step cannot know how.
#
# ## 2. The average velocity
#
# What a single jump needs is not the velocity at its start but the **average velocity** over the interval it
# covers. For a point x_s on an ODE path, with x_r the point where that path is at an earlier time r < s,
#
# $$u(x_s, r, s) = \frac{x_s - x_r}{s - r} = \frac{1}{s - r}\int_r^s v(x_\tau, \tau)\,d\tau .$$
#
# With u, one jump is exact for any interval, $x_r = x_s - (s - r)\,u(x_s, r, s)$: one network call from noise to
# data is $x_0 = x_1 - u(x_1, 0, 1)$. At r = s the average is the velocity itself, u(x, s, s) = v(x, s).
#
# The trained flow model defines an ODE, so its u can be computed: follow its path from x_s to r in many small
# Heun steps and divide the distance covered by the time. The cell does this for 300 noise points at s = 1 and
# compares u with the velocity at the start, for intervals ending at four times r:

# %%
def velocity(x, s):
    """The trained flow's v(x, s) at one time s (a float) for every point."""
    return flow_velocity(flow, x, torch.full((len(x),), float(s)))


@torch.no_grad()
def follow(x, s, r, steps=400):
    """Where the flow's ODE takes the points x from time s to time r (either direction): Heun steps."""
    times = torch.linspace(s, r, steps + 1).tolist()
    for a, b in zip(times[:-1], times[1:]):
        d = velocity(x, a)
        x = x + (b - a) * (d + velocity(x + (b - a) * d, b)) / 2
    return x


def average_velocity(x, r, s):
    return (x - follow(x, s, r)) / (s - r)


x1 = noise[:300]
with torch.no_grad():
    v1 = velocity(x1, 1.0)
for r in (0.75, 0.5, 0.25, 0.0):
    u = average_velocity(x1, r, 1.0)
    gap = ((u - v1).norm(dim=1) / v1.norm(dim=1)).mean()
    print(f"r = {r:.2f}: |u - v| is {gap:.0%} of |v| on average")

# %% [markdown]
# The shorter the interval, the closer u is to v (12% of the velocity's length for r = 0.75); over the whole path
# they differ by 125%, more than the velocity's own length: the paths bend.
#
# **The MeanFlow identity.** Multiply the definition by (s - r): $(s - r)\,u(x_s, r, s) = \int_r^s v(x_\tau,
# \tau)\,d\tau$. Now move the interval's upper end s, with x_s moving along its path (dx_s/ds = v) and r held fixed,
# and differentiate both sides in s. The right side's derivative is its integrand at the upper end, v(x_s, s); the
# left side's follows from the product rule:
#
# $$u(x_s, r, s) + (s - r)\,\frac{d}{ds}u(x_s, r, s) = v(x_s, s)
# \qquad\Longrightarrow\qquad u = v - (s - r)\,\frac{du}{ds}.$$
#
# The derivative is the *total* derivative along the path, by the chain rule
# $\frac{du}{ds} = \nabla_x u \cdot v + \partial_s u$: the change of u when x moves by v and s by 1 while r stays
# put. The identity defines u through v and u's own derivative, with no integral left. The cell checks it on the
# computed u at s = 0.8 and r = 0.3: du/ds by central differences, moving x_s along its path by h in each direction
# with `follow`:

# %%
s, r, h = 0.8, 0.3, 1e-3
x_s = follow(x1, 1.0, s)  # the same 300 paths, at s
u_minus = average_velocity(follow(x_s, s, s - h), r, s - h)
u_plus = average_velocity(follow(x_s, s, s + h), r, s + h)
du_ds = (u_plus - u_minus) / (2 * h)
u = average_velocity(x_s, r, s)
with torch.no_grad():
    v = velocity(x_s, s)
residual = (u - (v - (s - r) * du_ds)).norm(dim=1).mean()
print(f"mean |u - (v - (s - r) du/ds)| = {residual:.1e}, against mean |u - v| = {(u - v).norm(dim=1).mean():.3f}")

# %% [markdown]
# The identity holds to 4.1e-03, where the difference between u and v it accounts for is 0.867. What is left
# includes the rounding error of the central differences (float32 values divided by 2h) and the Heun steps' own
# error.
#
# ## 3. Training with the identity: the MeanFlow loss
#
# Computing u by following an ODE needs a trained flow model: a teacher. MeanFlow trains a network $u_\theta(x, r, s)$
# from data alone, with the identity as its regression target:
#
# $$\mathcal L = \mathbb E\,\big\lVert u_\theta(x_s, r, s) - \operatorname{sg}\big[v - (s - r)\,\tfrac{d}{ds}u_\theta(x_s, r, s)\big]\big\rVert^2,$$
#
# where sg holds the target fixed (no gradient flows through it). Two substitutions make it trainable:
#
# - **The network's own derivative** stands in for the true u's. A bounded $u_\theta$ that satisfies the identity
#   everywhere is the average velocity: the difference $\delta$ between it and the true u satisfies
#   $\delta = -(s - r)\,\frac{d\delta}{ds}$, that is $\frac{d}{ds}\big[(s - r)\,\delta\big] = 0$ along each path,
#   so $(s - r)\,\delta$ keeps the value it has at s = r, which is 0.
# - **The conditional velocity** $v = \varepsilon - x_0$ of one training pair stands in for the marginal velocity
#   $v^*(x_s, s) = \mathbb E[\varepsilon - x_0 \mid x_s]$ (chapter 8), as in flow matching. The target is affine in
#   v: v appears once alone and once inside $\frac{du}{ds} = \nabla_x u_\theta \cdot v + \partial_s u_\theta$, where
#   $u_\theta$ and its derivatives depend only on $(x_s, r, s)$, and r and s are drawn independently of the pair. So
#   the target's average over the pairs that pass through x_s is the target with $v^*$. Since the target is held
#   fixed, the loss's expected gradient is the gradient with that averaged target, and training settles where
#   $u_\theta$ satisfies the identity with $v^*$.
#
# The derivative along (v, 0, 1) is a **Jacobian-vector product**: `torch.func.jvp` runs the network forward once
# with a tangent attached to each input and returns the output and its derivative along that tangent. The network
# takes its two times as (s, s - r) (`meanflow_times`). The times are drawn as in the paper, with chapter 8's
# logit-normal (the paper tunes its mean and spread): for `MEANFLOW_SHARE` of a batch (printed) two logit-normal
# times, the larger s and the smaller r; for the rest r = s, where (s - r) du/ds vanishes and the example is plain
# flow matching. The paper also divides each example's error by its own size (an adaptive weight); the loss here,
# `meanflow_loss`'s default and the one this chapter trains two moons with, is the plain squared error (section 7
# measures what sets an example's error on points and on images, and trains images with the weight). The cell writes
# one batch's loss by hand and compares it with the library's `meanflow_loss` on the same draws, with an untrained
# network:

# %%
def my_meanflow_loss(net, x0, draw, noise):
    ends = torch.sigmoid(draw[:, :2])  # logit-normal times (mean 0, sd 1)
    jump = draw[:, 2] < MEANFLOW_SHARE
    s = torch.where(jump, ends.max(dim=1).values, ends[:, 0])
    r = torch.where(jump, ends.min(dim=1).values, ends[:, 0])
    x = (1 - s)[:, None] * x0 + s[:, None] * noise
    v = noise - x0

    def u(x, r, s):
        return net(x, meanflow_times(s, r))

    u_hat, du_ds = torch.func.jvp(u, (x, r, s), (v, torch.zeros_like(r), torch.ones_like(s)))
    target = (v - (s - r)[:, None] * du_ds).detach()
    return ((u_hat - target) ** 2).mean()


untrained = build_model("mlp", {"data_dim": 2, "interval": True})
generator = torch.Generator().manual_seed(1)
x0_batch, noise_batch = dl.make_toy("moons", 256, generator), torch.randn(256, 2, generator=generator)
draw = torch.cat([torch.randn(256, 2, generator=generator), torch.rand(256, 1, generator=generator)], dim=1)
print(f"MEANFLOW_SHARE = {MEANFLOW_SHARE}: {int((draw[:, 2] < MEANFLOW_SHARE).sum())} of 256 examples have r < s")
print(f"by hand {my_meanflow_loss(untrained, x0_batch, draw, noise_batch).item():.6f}, "
      f"library {meanflow_loss(untrained, x0_batch, draw, noise_batch).item():.6f}")

# %% [markdown]
# The two agree to the printed digits. (The library computes the JVP only for the examples with r < s; the
# others' target is v, so their loss is the same number.)
#
# **What the JVP costs.** A forward pass with tangents attached computes the outputs and their derivatives
# together, about the work of a second forward pass, and the backward pass then runs through it. The cell times 50
# optimiser steps of each loss on the two-moons network, batches of 256: flow matching (every example r = s), the
# loss by hand with the JVP on the whole batch, and the library's loss:

# %%
def time_steps(loss_of, steps=50):
    net = build_model("mlp", {"data_dim": 2, "interval": True})
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_of(net)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return (time.perf_counter() - start) / steps


flow_only = draw.clone()
flow_only[:, 2] = 1.0  # every example r = s: the library's loss is then flow matching's, with no JVP
per_step = {"flow matching": time_steps(lambda net: meanflow_loss(net, x0_batch, flow_only, noise_batch)),
            "MeanFlow, JVP on the whole batch": time_steps(lambda net: my_meanflow_loss(net, x0_batch, draw, noise_batch)),
            "MeanFlow, JVP where r < s (library)": time_steps(lambda net: meanflow_loss(net, x0_batch, draw, noise_batch))}
for name, t in per_step.items():
    print(f"{name:<38} {1000 * t:6.2f} ms a step ({t / per_step['flow matching']:.2f}x)")

# %% [markdown]
# A MeanFlow step costs a few flow-matching steps here (the last column; timings on a shared machine move from run to
# run). Computing the JVP for only the 75 examples with r < s instead of all 256 skips more than two thirds of the
# JVP's examples but saves next to none of its time here (the last two lines): the library then makes two network
# calls, a plain one for the r = s examples and the JVP for the others, and on a network this small, probably, much of
# a call's time does not grow with the batch (not measured here).
#
# ## 4. Two moons in one step
#
# The cell trains a MeanFlow network on two moons with the library (`objective="meanflow"`, the same network,
# batch and number of optimiser steps as the flow model of section 1), then jumps once from the same noise,
# $x_0 = x_1 - u_\theta(x_1, 0, 1)$, written out:

# %%
start = time.perf_counter()
meanflow, meanflow_info = ch08.train_moons("meanflow", moons_steps)
seconds["meanflow"] = time.perf_counter() - start
with torch.no_grad():
    ones = torch.ones(len(noise))
    one_jump = noise - meanflow(noise, meanflow_times(ones, 0 * ones))
library_jump, _ = dl.generate(meanflow, meanflow_info, len(noise), "meanflow", 1, seed=13)
print(f"trained in {seconds['meanflow']:.0f} s (the flow model: {seconds['flow']:.0f} s); "
      f"largest difference from the library's sampler: {(one_jump - library_jump).abs().max():.1e}")
display(ch11.clouds_figure({"flow, Euler-1": euler[1], "MeanFlow, 1 jump": one_jump, "flow, Euler-32": euler[32]}, data))
print(f"energy distance: MeanFlow 1 jump {energy_distance(one_jump, held_out):.4f}, flow Euler-1 "
      f"{energy_distance(euler[1], held_out):.4f}, flow Euler-32 {energy_distance(euler[32], held_out):.4f} "
      f"(perfect samples: {min(floor):.4f} to {max(floor):.4f})")

# %% [markdown]
# One jump scores 0.0021, against 0.7232 for one Euler step of the flow model and -0.0002 for thirty-two: just above
# the range of perfect samples (up to 0.0014), from one network call. The figure shows what that number barely
# registers: the single jump's cloud lies along the moons but also fills the space between them, where the data has no
# points. Energy distance compares two clouds as wholes, and a cloud that covers the moons' region with about the
# right spread scores close to the moons themselves; look at the points as well as the score.
#
# With more steps, MeanFlow jumps over each interval of an even grid, $x_r = x_s - (s - r)\,u_\theta(x_s, r, s)$,
# one call per step. And since r = s was three quarters of its training, the same network is also a flow model:
# $u_\theta(x, s, s)$ is its velocity, which Euler's method can follow.

# %%
print(f"{'steps':>6} {'MeanFlow':>9} {'its velocity, Euler':>20} {'flow model, Euler':>18}")
for k in (1, 2, 4, 8):
    jumped = dl.generate(meanflow, meanflow_info, len(noise), "meanflow", k, seed=13)[0]
    own = dl.generate(meanflow, meanflow_info, len(noise), "euler", k, seed=13)[0]
    other = dl.generate(flow, flow_info, len(noise), "euler", k, seed=13)[0]
    print(f"{k:>6} {energy_distance(jumped, held_out):>9.4f} {energy_distance(own, held_out):>20.4f} "
          f"{energy_distance(other, held_out):>18.4f}")

# %% [markdown]
# MeanFlow's jumps score between -0.0002 and 0.0041 at every number of steps, not falling steadily: two jumps
# (0.0041) scored worse than one (0.0021), a difference about as large as the spread of perfect samples' scores
# (-0.0011 to 0.0014), so this measure cannot rank them. The same network followed as a flow, Euler on
# $u_\theta(x, s, s)$, scores a little worse than the flow model trained for that alone at 1, 2 and 4 steps (0.7551
# against 0.7232, 0.1598 against 0.1357, 0.0319 against 0.0291) and level at eight (0.0055 against 0.0058): most of
# its training was flow matching.
#
# **Drag the sliders**: the network's jump from s to r for every point of the data noised to s, beside the data
# noised to r (grey; the jumps should cover it), with 40 jumps drawn as arrows and the energy distance between
# the two clouds in the title. At r = s - 0.05 a jump is nearly a flow step; at r = 0 it lands on the moons.

# %%
field_x0 = dl.make_toy("moons", 1000, torch.Generator().manual_seed(21))
field_noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(22))


def show_field(r, s):
    if r >= s:
        print(f"r = {r:.2f} is not below s = {s:.2f}: a jump goes from s down to r")
        return
    display(ch11.field_view(meanflow, field_x0, field_noise, r, s))


widgets.interact(show_field, r=widgets.FloatSlider(value=0.0, min=0.0, max=0.95, step=0.05, continuous_update=False),
                 s=widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, continuous_update=False));

# %% [markdown]
# ## 5. Consistency training: chapter 9 without the teacher
#
# Chapter 9's consistency distillation trains $f(x, s) = x - s\,v_\theta(x, s)$, the jump to the data, to agree with
# itself along the teacher's ODE: on a grid $s_n = n/N$, from $x$ at $s_n$ the teacher takes one Heun step (Euler on
# the last, to s = 0) to $\hat x$ at $s_{n-1}$, and the loss is $\lVert f(x, s_n) - \operatorname{sg}[f(\hat x,
# s_{n-1})]\rVert^2$. **Consistency training** drops the teacher: it takes the point at $s_{n-1}$ on the *same pair's*
# straight line, $(1 - s_{n-1})\,x_0 + s_{n-1}\,\varepsilon$: a step from x with the pair's own velocity
# $\varepsilon - x_0$ instead of the teacher's step along its learned velocity, its estimate of $v^*$. The pair's
# velocity is right only on average over the pairs through x ($v^*$ is that average), and f is not linear, so the
# average of the target over those pairs is not the target at the average velocity: the target is biased. With
# $\Delta = 1/N$ and $x' = x - \Delta v$, Taylor's theorem in $\Delta$ gives, for each component of f, $\mathbb
# E[f(x', s_{n-1})] = f(x - \Delta v^*, s_{n-1}) + \tfrac{1}{2}\Delta^2\,\mathrm{tr}\big(\nabla^2 f\;\mathrm{Cov}[v
# \mid x]\big) + O(\Delta^3)$ (the first-order term vanishes on average, since v averages to $v^*$): the bias of one
# link shrinks like $1/N^2$, so over the grid's N links, if the links' biases add up, like 1/N, and grows with how
# much the pairs through x disagree and how curved f is. MeanFlow's target, affine in v (section 3), has no such bias.
# At n = 1 the target is $f(x_0, 0) = x_0$, the data itself; from there agreement (f at $s_n$ matching f at $s_{n-1}$)
# spreads up the grid. The cell writes one batch's loss by hand against the library's `consistency_training_loss` (N =
# `CT_GRID`, printed), both on section 1's flow network:

# %%
def my_ct_loss(net, x0, n, noise):
    s, r = n / CT_GRID, (n - 1) / CT_GRID

    def f(x, s):
        return x - s[:, None] * flow_velocity(net, x, s)

    with torch.no_grad():
        target = f((1 - r)[:, None] * x0 + r[:, None] * noise, r)
    return ((f((1 - s)[:, None] * x0 + s[:, None] * noise, s) - target) ** 2).mean()


n_batch = torch.randint(1, CT_GRID + 1, (256,), generator=generator).float()
print(f"CT_GRID = {CT_GRID}; by hand {my_ct_loss(flow, x0_batch, n_batch, noise_batch).item():.6f}, "
      f"library {consistency_training_loss(flow, x0_batch, n_batch, noise_batch).item():.6f}")

# %% [markdown]
# The two agree. The cell trains a consistency model from scratch with the library (`objective="ct"` on this fixed
# grid: by default the library grows N during training, as below, and `ct_grid=(CT_GRID, CT_GRID)` holds it at
# `CT_GRID`; the same network, batch and steps), and, for the comparison, distils one from section 1's flow model with
# chapter 9's loss (`distill.consistency_loss`, on the same grid of N = `CT_GRID`), in a loop written out: the student
# starts from the flow model's weights and is its own target (held fixed), with no averaged copy of its weights (and
# its own learning rate, 5e-4, with no warm-up or clipping).

# %%
start = time.perf_counter()
ct, ct_info = ch08.train_moons("ct", moons_steps, ct_grid=(CT_GRID, CT_GRID))
seconds["consistency training (fixed grid)"] = time.perf_counter() - start

start = time.perf_counter()
cd = copy.deepcopy(flow).requires_grad_(True)
optimiser = torch.optim.Adam(cd.parameters(), lr=5e-4)
moons_train = dl.make_toy("moons", dl.training.TOY_POINTS, torch.Generator().manual_seed(0))
for step in range(moons_steps):
    x0 = moons_train[torch.randint(0, len(moons_train), (256,), generator=generator)]
    n = torch.randint(1, CT_GRID + 1, (256,), generator=generator).float()
    loss = consistency_loss(cd, cd, flow, x0, torch.randn(256, 2, generator=generator), n, CT_GRID)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
seconds["consistency distillation"] = time.perf_counter() - start

print(f"{'steps':>6} {'MeanFlow':>9} {'consistency training':>21} {'consistency distillation':>25}")
for k in (1, 2, 4):
    row = [dl.generate(meanflow, meanflow_info, len(noise), "meanflow", k, seed=13)[0],
           dl.generate(ct, ct_info, len(noise), "consistency", k, seed=13)[0],
           dl.generate(cd, flow_info, len(noise), "consistency", k, seed=13)[0]]
    print(f"{k:>6} {energy_distance(row[0], held_out):>9.4f} {energy_distance(row[1], held_out):>21.4f} "
          f"{energy_distance(row[2], held_out):>25.4f}")

# %% [markdown]
# The consistency models' single jump is their best, and a second or fourth jump makes their samples worse (without a
# teacher 0.0392, 0.0768 and 0.1091 at 1, 2 and 4 steps; distilled 0.0074, 0.0172 and 0.0249). Chapter 9's multistep
# sampler noises each jump's result again to a smaller s and jumps from there, so part of what a jump gets wrong
# carries into the next. The cell measures two ways a cloud can be wrong, at 1, 2, 4 and 8 steps. Consistency training
# fits each jump to targets that differ from pair to pair through the same x, and a squared error answers with their
# average (chapter 9), which would pull points in towards the middle: the **spread**, the mean distance of a cloud's
# points from their centre, shows that. And a cloud can put too many points on one moon: the **upper share** is the
# share of its points whose nearest held-out point lies on the upper moon (`make_toy` draws that moon first, so it is
# the first half of the held-out set). Beside them, what a fresh set of real points scores:

# %%
def spread(points):
    return (points - points.mean(dim=0)).norm(dim=1).mean().item()


def upper_share(points):
    nearest = torch.cdist(points, held_out).argmin(dim=1)
    return (nearest < len(held_out) // 2).float().mean().item()


real = dl.make_toy("moons", 2000, torch.Generator().manual_seed(100))
print(f"real points: spread {spread(real):.3f}, upper share {upper_share(real):.3f} (a share of {len(noise):,} points "
      f"drawn at 0.5 is uncertain by {(0.25 / len(noise)) ** 0.5:.3f}, one standard error)")
print(f"{'':>6} {'MeanFlow':^15} {'consistency training':^21} {'consistency distillation':^25}")
print(f"{'steps':>6} {'spread':>7} {'upper':>7} {'spread':>10} {'upper':>10} {'spread':>12} {'upper':>12}")
for k in (1, 2, 4, 8):
    clouds = [dl.generate(meanflow, meanflow_info, len(noise), "meanflow", k, seed=13)[0],
              dl.generate(ct, ct_info, len(noise), "consistency", k, seed=13)[0],
              dl.generate(cd, flow_info, len(noise), "consistency", k, seed=13)[0]]
    print(f"{k:>6} " + " ".join(f"{spread(c):>{w}.3f} {upper_share(c):>{w}.3f}" for c, w in zip(clouds, (7, 10, 12))))

# %% [markdown]
# The teacherless consistency model's clouds narrow as steps are added: spread 1.134 at one step (real points: 1.324),
# then 0.975, 0.889 and 0.770 at 2, 4 and 8. The distilled model's do not: its targets come from the teacher's step,
# one per x, with nothing to average. Both consistency models (seed 0) also tip towards the upper moon as steps are
# added: the teacherless one from 0.474 to 0.564 at eight steps, the distilled one, whose spread stays between 1.328
# and 1.341, from 0.502 to 0.553, beyond the uncertainty of a share of 2,000 points (printed). Fresh noise does not
# undo either change, likely because each jump starts in part from the last one's cloud. MeanFlow's later jumps add no
# fresh noise: they continue along the paths from where the last jump ended; its upper share stays between 0.491 and
# 0.500, and its spread between 1.291 and 1.383, around the real points' 1.324 with no trend (the widest, 1.383, is
# its single jump, which section 4's figure shows filling the gap between the moons).
#
# **Growing the grid.** The bias shrinks with the grid's step, so why not a fine grid? Song et al. (2023) give an
# intuition for not starting with one: on a coarse grid the target's noise is small next to the change it asks for
# between neighbouring points, so learning starts fast, at the price of bias; on a fine grid the target is nearly
# unbiased but noisy next to that change, which suits the end of training. Improved consistency training (Song &
# Dhariwal 2023) does both in turn, doubling N at equal stages of training. So does the library's `ct` unless told a
# fixed grid (`objectives.ct_grid`, from `CT_GROWTH`, printed). The cell trains it on three seeds beside the fixed N =
# `CT_GRID` (seed 0's is the model above), and on seed 0 also the growth's two ends held fixed, N = 4 and N = 128, all
# with the same network, batch and steps, and measures each at 1, 2, 4 and 8 steps:

# %%
first_step = {}
for step in range(moons_steps):
    first_step.setdefault(ct_grid(step, moons_steps, CT_GROWTH), step)
print(f"CT_GROWTH = {CT_GROWTH} over {moons_steps} steps: "
      + ", ".join(f"N = {N} from step {step}" for N, step in first_step.items()))

grown = {}
print(f"{'':>14} {'energy distance at 1, 2, 4, 8 steps':^36}  {'spread at 1, 2, 4, 8 steps':^27}")
for seed in (0, 1, 2):
    grids = (CT_GROWTH[0], CT_GRID, CT_GROWTH[1]) if seed == 0 else (CT_GRID,)
    arms = {f"N = {N}": (ct, ct_info) if (seed, N) == (0, CT_GRID) else
            ch08.train_moons("ct", moons_steps, seed, ct_grid=(N, N)) for N in grids}
    start = time.perf_counter()
    grown[seed] = arms["grown"] = ch08.train_moons("ct", moons_steps, seed)
    seconds.setdefault("consistency training (grown grid)", time.perf_counter() - start)  # seed 0's
    for name, (model, info) in arms.items():
        clouds = [dl.generate(model, info, len(noise), "consistency", k, seed=13)[0] for k in (1, 2, 4, 8)]
        print(f"seed {seed} {name:>7} " + " ".join(f"{energy_distance(c, held_out):>8.4f}" for c in clouds)
              + "  " + " ".join(f"{spread(c):>6.3f}" for c in clouds))

# %% [markdown]
# N doubles every sixth of training (500 steps here), from 4 to 128. On every seed the grown grid scores lower than
# the fixed N = 32 at every number of steps, clearly so from two steps on: at eight, 0.0667, 0.0669 and 0.0594 against
# 0.1719, 0.1294 and 0.1450. At one step the gains on seeds 1 and 2 (0.0275 to 0.0240, 0.0205 to 0.0177) are smaller
# than the differences between the fixed grid's seeds; seed 0's larger one (0.0392 to 0.0206) is mostly its fixed-grid
# model being the worst of the three. The grown clouds still narrow from one step to eight (spread 1.176-1.208, then
# 1.038-1.083), far less than the fixed grid's (1.134-1.256, then 0.770-0.868; real points 1.324).
#
# The growth's two ends, each held fixed on seed 0, behave differently. N = 4 makes the worst and narrowest single
# jump (0.0952, spread 0.919), as a large bias would, yet improves with two and four jumps (0.0645, 0.0421) before
# worsening at eight (0.1065). N = 128 makes the best single jump of the fixed grids (0.0284, spread 1.318), but
# shrinks and worsens with more (0.2578, spread 0.657 at eight). The grown grid is the best or level with the best at
# every number of steps (level with N = 4 at four, 0.0421); this run does not show why the fine grid fails under
# repeated jumps. Growing the grid does not catch up with distillation, which also starts from the teacher's weights
# (0.0074 at one step, 0.0249 at four), nor with MeanFlow. From here on, "consistency training" means the grown grid's
# seed-0 model, the library's default.
#
# **Drag the slider**: the four models side by side at 1 to 4 steps, from the same noise (flow: Euler; MeanFlow: its
# jumps; the consistency models: chapter 9's sampler), each with its energy distance to the held-out moons (on 1,000
# samples, so the numbers differ from the tables').

# %%
side_models = {"flow": (flow, flow_info, "euler"), "MeanFlow": (meanflow, meanflow_info, "meanflow"),
               "consistency training": (*grown[0], "consistency"),  # the grown grid's, seed 0
               "consistency distillation": (cd, flow_info, "consistency")}


def show_steps(steps):
    display(ch11.steps_view(steps, side_models, held_out, n=1000, seed=13))


widgets.interact(show_steps, steps=widgets.IntSlider(value=1, min=1, max=4, step=1, continuous_update=False));

# %% [markdown]
# ## 6. What each costs
#
# A fair comparison counts everything a model needed. Distillation needs the teacher first; the teacherless
# models need only their own training. The training times of this run (section 1's flow model is the teacher; its
# distillation ran as many optimiser steps as each model's own training):

# %%
seconds["flow + consistency distillation"] = seconds["flow"] + seconds["consistency distillation"]
for name, t in seconds.items():
    print(f"{name:<36} {t:6.1f} s")

# %% [markdown]
# On two moons the teacherless MeanFlow model cost about as much as the teacher and its distillation together, or more
# (the lines above; timings move from run to run), because each of its steps pays for the JVP; for that it made the
# best single jump of the one-step models by energy distance (0.0021, against 0.0074 distilled and 0.0206 for
# consistency training on the grown grid; section 4's figure shows what that score leaves out), and its velocity is a
# flow model nearly as good as the teacher. Consistency training was the cheapest way to one step, on either grid (its
# loss makes the same two network calls whatever N is), and the least accurate of the one-step models: 0.0392 on the
# fixed grid, 0.0206 on the grown one.
#
# ## 7. MNIST: one step without a teacher, against chapter 9's students
#
# MeanFlow's loss trains chapter 4's U-Net on MNIST, with a second time input (`"interval": True`: the network takes
# (s, s - r), as section 3's did). The committed model `mnist_meanflow` was trained from scratch with the library's
# command for 151 minutes, chosen to match the training time of chapter 9's 1-step progressive student, its
# teacher's training plus its distillation (the model's folder, `diffusion_lib/checkpoints/mnist_meanflow`, has a
# README with the commands and their times). The first of its three runs, each resuming where the last stopped:
#
# ```
# OMP_NUM_THREADS=1 python -m diffusion_lib train --data mnist --objective meanflow \
#     --model-config '{"base_channels": 32}' --steps 20000 --snapshots 1000,3000 --save-every 250 --seed 0 \
#     --max-minutes 110 --quiet --out ../runs/mnist_meanflow_p1
# ```
#
# Section 5's consistency training, with its grid grown from N = 4 to N = 128, trained the same U-Net without the
# second time input (its f(x, s) = x - s v(x, s) needs s alone) from scratch, within the same budget of time: the
# committed model `mnist_ct`, made by the same `train` command with `--objective ct` (its folder's README has the
# exact commands of its two runs, the second resuming the first, and the grid N at each step).
#
# One thing differs from two moons in MeanFlow's training: on images the library trains with the **adaptive weight**
# that section 3 left out. Geng et al. divide each example's squared error e by $(e + c)^p$, held fixed (sg), with a
# power p and a small constant c. (The library's e is the mean over the example's pixels or coordinates; the paper's
# is the sum, which for p = 1 gives the same weighted loss, e / (e + c), with c divided by the number of pixels.)
# Whether the weight helps depends on what makes e large. The cell measures e for the r < s examples of the two
# trained MeanFlow networks, section 4's on two moons and `mnist_meanflow`: each row keeps one data point and one
# interval (r, s) and draws the noise 8 times, and the share of the variance of log e that lies between the rows says
# how much of e the data point and its interval fix, rather than the noise. (With 8 draws a row's mean still carries
# some of the noise, so the share comes out a little high.)

# %%
def errors_by_draw(net, x0, draws=8, seed=0):
    """(examples, draws): each r < s example's squared error against its MeanFlow target, the noise drawn anew."""
    generator = torch.Generator().manual_seed(seed)
    ends = torch.sigmoid(torch.randn(len(x0), 2, generator=generator))
    s, r = ends.max(dim=1).values, ends.min(dim=1).values
    column = (-1,) + (1,) * (x0.dim() - 1)  # a time per example, against points or images

    def u(x, r, s):
        return net(x, meanflow_times(s, r))

    errors = []
    for _ in range(draws):
        noise = torch.randn(x0.shape, generator=generator)
        x = (1 - s).view(column) * x0 + s.view(column) * noise
        with torch.no_grad():  # no training here: the JVP alone, without the graph for a backward pass
            u_hat, target = meanflow_target(u, x, r, s, noise - x0)
        errors.append((u_hat - target).pow(2).flatten(1).mean(1))
    return torch.stack(errors, dim=1)


mnist_meanflow, mnist_meanflow_info = dl.pretrained("mnist_meanflow")
print(f"MEANFLOW_C = {MEANFLOW_C}")
for name, net, x0 in (("two moons", meanflow, dl.make_toy("moons", 256, torch.Generator().manual_seed(3))),
                      ("MNIST", mnist_meanflow, dl.load_mnist(train=False)[0][:32])):
    log_e = errors_by_draw(net, x0).log()
    print(f"{name:<10} {len(x0)} examples x 8 draws: e from {log_e.exp().min():.4f} to {log_e.exp().max():.1f}; "
          f"share of var(log e) between rows {log_e.mean(dim=1).var() / log_e.var():.2f}")

# %% [markdown]
# On MNIST most of the variation of e is between the rows: which image and which interval set e, and e spans more
# than three orders of magnitude. The plain loss is the mean of the examples' e, so the examples with the largest
# errors weigh the most in it and in its gradient. On two moons most of the variation is within the rows, the noise
# draw's own randomness. Dividing by e there would weight some draws of the same example more than others, and a
# weighted least-squares fit lands on the weighted mean of its targets, not on the plain average over draws that the
# network is meant to learn. With p = 1 every example's weighted loss e / (e + c) is below 1, close to 1 wherever e
# is much larger than c, and its gradient is $\nabla e / (e + c)$: the examples count on one scale.
# `meanflow_loss(..., power=1.0)` does this; the library's training uses p = 1 on images and p = 0 on points.
#
# The table places every model that draws an MNIST digit in at most 5 network calls (the teacher with chapter 5's and
# chapter 7's solvers too) beside what it cost to make: a distilled student pays for its teacher's training and then
# its own distillation; the two teacherless models pay only for themselves. `python benchmarks/run.py --only fewsteps`
# measured the rows (the same noise for every model; FID as a ratio to the floor of real digits, recognised and
# diversity as chapter 9 measured them; where seeds 1 and 2 were also measured, FID and recognised are the mean of the
# three, diversity is seed 0's):

# %%
teacher, teacher_info = dl.pretrained(ch09.TEACHER)
mnist_ct, mnist_ct_info = dl.pretrained("mnist_ct")
fewsteps = load_measured("fewsteps")["figures"]
mnist_floor = fewsteps["real_baseline_fid"]
print(f"{fewsteps['n']:,} samples per seed; real-digit floor (MNIST-FID) {mnist_floor:.1f}\n")
print(f"{'calls':>5}  {'model':<21}{'sampler':<13}{'training min':>12}{'seeds':>6}{'FID':>7}{'x floor':>8}"
      f"{'recognised':>11}{'diversity':>10}")
table = []
for (model, sampler, steps), rows in ch09.seed_groups(fewsteps).items():
    if rows[0]["calls"] <= 5:
        minutes = ch09.training_seconds(rows[0], fewsteps["training_seconds"]) / 60
        table.append((rows[0]["calls"], minutes, model, sampler, rows))
for calls, minutes, model, sampler, rows in sorted(table, key=lambda entry: entry[:3]):
    fid = statistics.mean(r["mnist_fid"] for r in rows)
    print(f"{calls:>5}  {model:<21}{sampler:<13}{minutes:>12.0f}{len(rows):>6}{fid:>7.1f}{fid / mnist_floor:>8.2f}"
          f"{100 * statistics.mean(r['recognised'] for r in rows):>10.1f}%{rows[0]['diversity']:>10.2f}")
print()
for name, info in ((ch09.TEACHER, teacher_info), ("mnist_meanflow", mnist_meanflow_info), ("mnist_ct", mnist_ct_info)):
    seconds_trained = fewsteps["training_seconds"][name]
    print(f"{name}: {info['step']:,} optimiser steps of 64 images ({info['step'] * 64 / 60_000:.1f} epochs) in "
          f"{seconds_trained / 60:.0f} min, {seconds_trained / info['step']:.2f} s a step")

# %% [markdown]
# At one call MeanFlow's digits (FID 110.5, 80.5% recognised) are behind all three of chapter 9's students: reflow
# (98.1, 81.4%), the 1-step progressive student, whose teacher and distillation took the same 151 minutes (75.2,
# 83.0%), and consistency distillation (66.4, 86.3%, 163 minutes). All of them are far better than the teacher's own
# single Euler step (1798.1, 0.5% recognised), chapter 9's blurred average. At two calls MeanFlow (62.3) is close to
# reflow (62.8) and behind the progressive (55.4, one seed) and consistency (38.3) students; at four (46.0) it is
# close to reflow (47.5), behind the two other students, and ahead of the teacher's Euler-4 (86.0) and, on one seed,
# of its best solver at five calls, DPM-Solver++ (52.1). Its diversity is like the students' at two and four calls and
# a little lower at one (16.60 against the students' 17.08 to 17.56).
#
# Consistency training is behind MeanFlow and every distilled student at every number of calls: 246.5 at one call
# (68.6% recognised), 182.7 at two and 148.9 at four, in 143 minutes, a little under the 151-minute budget it shared
# with MeanFlow (its last run reached the step count it was given before its time limit). More calls help it, and it
# is better than the teacher's Euler at one and two steps (1798.1, 395.0), but at four it is behind the teacher's
# Euler-4 (86.0). On two moons too it was the least accurate one-step model (section 6). We have not measured why;
# three differences are candidates. Its target carries section 5's bias, which shrinks only as N grows, and its grid
# did not grow in section 5's equal stages: the run was resumed with fewer planned steps, so the three coarsest grids
# took two thirds of the training and N = 32 almost none (the README gives N at each step); the finest, N = 128, had
# the last sixth, as equal stages would have given it. It has no anchor like MeanFlow's r = s examples, plain flow
# matching with an unbiased target: all its targets but those at n = 1 come from its own jumps. And Song & Dhariwal's
# recipe has parts that the library leaves out, among them a Pseudo-Huber distance,
# $\sqrt{\lVert d \rVert^2 + c^2} - c$ for a gap d, in place of the squared one, noise levels drawn from a log-normal rather than uniformly over the
# grid, and far finer final grids, and it was run for far more steps than these.
#
# The last lines show a difference that the table hides. A MeanFlow step took 1.03 s here against 0.38 s for one of
# the teacher's flow-matching steps, and a consistency-training step 0.49 s: two calls of the network, one of them
# without the graph for a backward pass. All three ran under bf16 autocast (wall times on a 2-core machine that was
# not always idle, so approximate; consistency training's first run also slowed by about half midway with the other
# core idle, for a reason we did not find), but MeanFlow's JVP, on a quarter of each batch, runs in float32: the
# library turns autocast off for it, since forward-mode differentiation does not take it. In its 151 minutes MeanFlow
# saw each training image 9.4 times, consistency training 18.7 times in 143 minutes; the teacher saw each 20.9 times
# in 123 minutes, and the rest of its students' time went to their distillation. Would the teacherless models overtake
# the students with longer training? This table, at one budget, cannot say.
#
# **Drag the slider**: the same noise through the two teacherless models, chapter 9's students and the teacher's
# Euler, at 1 to 4 network calls (there is no 3-step progressive student, so its row is left out at 3), with each
# row's sampling time. Look at which digit each noise becomes. MeanFlow's one jump, $\varepsilon - u(\varepsilon, 0,
# 1)$, is meant to land where the whole path of the flow ODE from $\varepsilon$ lands: the ODE of the data's velocity
# field, which the teacher learned and the students were distilled from. So is consistency training's $f(\varepsilon,
# 1)$, up to section 5's bias. Neither model saw the teacher; if one learned the same field as the teacher, the two
# draw the same digit from the same noise. (With more calls the consistency sampler adds fresh noise between its
# jumps, chapter 9, and may land elsewhere.)

# %%
mnist_reflow, mnist_reflow_info = dl.pretrained("mnist_reflow")
mnist_consistency, mnist_consistency_info = dl.pretrained("mnist_consistency")
progressive = {k: dl.load_model(path) for k, path in student_files("mnist_progressive").items()}
mnist_side = {"MeanFlow": (mnist_meanflow, mnist_meanflow_info, "meanflow"),
              "consistency training": (mnist_ct, mnist_ct_info, "consistency"),
              "reflow": (mnist_reflow, mnist_reflow_info, "euler"),
              "progressive": {k: (m, i, "euler") for k, (m, i) in progressive.items()},
              "consistency distillation": (mnist_consistency, mnist_consistency_info, "consistency"),
              "teacher, Euler": (teacher, teacher_info, "euler")}


def show_mnist(calls):
    display(ch09.side_by_side(calls, mnist_side, n=6))


widgets.interact(show_mnist, calls=widgets.IntSlider(value=1, min=1, max=4, step=1, continuous_update=False));

# %% [markdown]
# The slider shows six noises. The cell checks many more: the classifier names the digit each model draws in one
# call from each noise, and the cell counts how often it is the digit that the teacher's ODE, solved with 10 steps
# of DPM-Solver++ (chapter 5), draws from the same noise:

# %%
judge = committed_classifier("mnist")
noises = 100 if FAST else 500
with torch.no_grad():
    ode_digit, _ = classify(judge, dl.generate(teacher, teacher_info, noises, "dpm-solver++", 10, seed=5)[0])
    for label, entry in mnist_side.items():
        model, info, sampler = entry[1] if isinstance(entry, dict) else entry
        digit, _ = classify(judge, dl.generate(model, info, noises, sampler, 1, seed=5)[0])
        print(f"{label + ', 1 call':<34} the ODE's digit from {100 * (digit == ode_digit).float().mean():5.1f}% "
              f"of {noises} noises")

# %% [markdown]
# The teacher's own single Euler step, chapter 9's blurred average, draws the ODE's digit from 39.2% of the noises:
# even a blur leans towards the digit the noise will become. MeanFlow does far better, 66.8%: without ever seeing the
# teacher it learned much of the same map from noise to digit, likely because both were fitted to the same data's
# velocity field. Consistency training, whose digits are recognised less often, draws the ODE's digit from 68.2%,
# level with MeanFlow within the sampling error of 500 noises. The distilled students, trained to follow the
# teacher's ODE (reflow through its pairs), match it more often (81.4% to 83.6%).

# %% [markdown]
# ## Exercises
#
# Exercises marked *going further* are not needed by the chapters that follow: they suit a lab, homework or a
# second reading.
#
# **Exercise 1 (implement, going further).** Section 3's `u` was asked with (x, r, s). Many MeanFlow networks are asked with
# the interval's length instead, `u(x, s, d)` with d = s - r. Write `my_target(u, x, s, d, v)`: the MeanFlow target
# $v - (s - r)\,du/ds$, held fixed, for such a network, with x moving along the path with velocity v and r held
# still. Choose the tangent of each input with care. `s` and `d` have shape (B,): reshape d to (B, 1) before
# multiplying.

# %% tags=["solution", "exercise:ch11-meanflow-target"]
def my_target(u, x, s, d, v):
    # r = s - d stays still as s moves by 1, so d moves by 1 too
    _, du_ds = torch.func.jvp(u, (x, s, d), (v, torch.ones_like(s), torch.ones_like(d)))
    return (v - d[:, None] * du_ds).detach()


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_meanflow_target(my_target)

# %% [markdown]
# **Exercise 2 (implement).** Write MeanFlow sampling, `my_sample(u, noise, times)`: `times` are decreasing floats
# from 1 to 0, and `u(x, r, s)` takes floats r and s. One network call per interval.

# %% tags=["solution", "exercise:ch11-meanflow-sample"]
def my_sample(u, noise, times):
    sample = noise
    for s, r in zip(times[:-1], times[1:]):
        sample = sample - (s - r) * u(sample, r, s)
    return sample


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_meanflow_sampler(my_sample)

# %% [markdown]
# **Exercise 3 (predict, then check).** One-dimensional data x_0 ~ N(0, 0.5²). On the straight path x_s has
# standard deviation $\sqrt{(1 - s)^2\,0.5^2 + s^2}$, and the flow's ODE moves every point so that it keeps its
# place in the distribution (x_s divided by that standard deviation stays the same along a path). What is the average
# velocity u(1, 0, 1) over the whole path at the point x_1 = 1? The velocity there, v(1, 1), is 1.

# %% tags=["solution", "exercise:ch11-gaussian-average"]
gaussian_average = 1.0 - 1.0 * 0.5 / 1.0  # (x_1 - x_0) / (1 - 0), with x_0 = x_1 sd(0) / sd(1)


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_gaussian_average_velocity(gaussian_average)

# %% [markdown] tags=["exercise:ch11-open-why-flow"]
# **Exercise 4 (open question, going further).** Section 3 showed that a bounded u satisfying the identity for every interval is
# the average velocity, so the examples with r < s alone pin u down in principle. Yet MeanFlow spends most of every
# batch on r = s, plain flow matching. Give reasons why, from what the two kinds of example ask of the network and
# what they cost, and use section 4's table for one more.

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** (1) The r < s targets are built from the network's own derivative: they
# are only as good as the network already is, so early in training they carry little information and much noise.
# The r = s examples have a target from the data alone, eps - x_0, an unbiased estimate of the velocity $v^*$ that
# every longer interval's u grows out of (u tends to $v^*$ as r tends to s). (2) Intervals drawn at random almost
# never have s close to r, where the identity's argument starts (the diagonal has no width), so without r = s
# examples the network would learn the diagonal only by extrapolating. (3) They are cheaper: (s - r) du/ds is zero
# there, so no JVP is needed. (4) They make the network a flow model as well: u(x, s, s) is a velocity, which Euler
# or Heun can follow with many steps (section 4's middle column), so one network serves any number of steps.
#
# **Rubric.** (1) r < s targets are bootstrapped from the network, r = s targets come from data; (2) the diagonal
# would otherwise be reached only in the limit; (3) cost: no JVP at r = s; (4) reads section 4: the same network
# samples as a flow.

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
