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
# # Chapter 5: DDIM — the same model, 20x fewer steps
#
# DDPM generates by undoing the forward process one step at a time: 1000 network calls per
# image. DDIM (Song et al. 2021) samples from the *same* trained network in 10 to 100 steps,
# deterministically if we like, and can run backwards to turn an image into its noise.
#
# **After this chapter you can**
# - write DDPM's ancestral step and DDIM's step, and show that DDIM with $\eta = 1$ on every step *is* DDPM;
# - derive deterministic DDIM as Euler's method on the probability-flow ODE, and DPM-Solver++ as a second-order step of the same ODE;
# - choose the number of steps from measured speed and quality, and see what $\eta$ between 0 and 1 changes;
# - invert an image to noise with DDIM and interpolate between two noises.
#
# **Assumes**: chapters 2-4 ($\bar\alpha_t$, $\hat x_0$ from $\varepsilon$; chapter 4's flow model `mnist_uncond`,
# turned into a noise predictor, and its Heun sampler).
#
# The model is the course's committed unconditional U-Net, `mnist_uncond` (chapter 4: trained with
# flow matching, so it predicts a velocity; the samplers turn its output into $\varepsilon$ by an
# exact change of variables, so everything below treats it as a noise predictor on the cosine schedule).

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
import torch
from IPython.display import display

import diffusion_lib as dl
from diffusion_lib.course import ch05, exercises
from diffusion_lib.course.measured import load_measured
from diffusion_lib.course.plots import show_grid

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
model, info = dl.pretrained("mnist_uncond")
classifier, _ = dl.pretrained("mnist_classifier")
schedule = dl.make_schedule(info["schedule"], info["T"])
eps_fn = dl.as_eps_fn(model, schedule, info["prediction"])  # x_t, t -> the model's epsilon

# %% [markdown]
# ## 1. Two ways to take a step
#
# **DDPM** (Ho et al. 2020, Algorithm 2) samples $x_{t-1}$ from the Gaussian posterior
# $q(x_{t-1} \mid x_t, \hat x_0)$ with the model's $\hat x_0$ plugged in:
#
# $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon_\theta(x_t, t)\Big) + \sigma_t z,
# \qquad \sigma_t^2 = \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t .$$
#
# **DDIM** (Song et al. 2021, Eq. 12) writes the step as "where the model thinks the data is, plus
# the noise direction, plus fresh noise", and allows jumping from any $t$ to any earlier $t'$:
#
# $$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma^2}\;\varepsilon_\theta(x_t, t) + \sigma z,
# \qquad \sigma = \eta\sqrt{\frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}}\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t'}}} .$$
#
# Why one network serves any subsequence of timesteps. Put the *true* $x_0$ and $\varepsilon$ into the step: if
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$, it gives
# $x_{t'} = \sqrt{\bar\alpha_{t'}}\,x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma^2}\,\varepsilon + \sigma z$, whose noise has variance
# $(1-\bar\alpha_{t'}-\sigma^2) + \sigma^2 = 1-\bar\alpha_{t'}$: exactly $q(x_{t'} \mid x_0)$, for any $t' < t$ and any
# $\sigma$ up to $\sqrt{1-\bar\alpha_{t'}}$. That is how Song et al. built the family (their Lemma 1, and Sec. 4.2 for
# subsequences of steps): whatever the steps
# and $\sigma$, its levels have DDPM's marginals $q(x_t \mid x_0)$, so every member has the same training objective,
# and one network trained once serves them all. With the network's estimates in place of the true $x_0$ and
# $\varepsilon$, the points a sampler visits are only approximately distributed like the forward process's levels,
# the more so the fewer the steps (section 2 measures what that costs). The levels the network is *asked about*
# are those of the step grid. A network trained on DDPM's steps was trained at each of them. Chapter 4's flow
# model drew its levels as $s = \mathrm{sigmoid}(z)$, $z \sim \mathcal N(0, 1)$; the cell finds, for DDIM-50's first
# two and last two calls, the straight-path level $s$ with the same SNR and how often training drew a level at
# least as extreme:

# %%
batch_size = dl.TrainConfig.from_stored(info["train_config"]).batch_size
n_examples = info["step"] * batch_size
ddim50 = dl.ddim_timesteps(schedule.T, 50)
for t_level in (ddim50[0], ddim50[1], ddim50[-2], ddim50[-1]):
    ab = schedule.alpha_bars[t_level]
    s_level = (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())  # the straight-path level with this SNR (chapter 2)
    noisier = s_level > 0.5  # at the noise end, count draws at least as noisy; at the data end, at least as clean
    p_beyond = torch.special.log_ndtr(-torch.logit(s_level) if noisier else torch.logit(s_level)).exp()
    if t_level == ddim50[0]:
        s_first = s_level.item()
    print(f"DDIM-50's call at t = {t_level}: s = {s_level.item():.6f}; a training draw lands at or "
          f"{'above' if noisier else 'below'} it with probability {p_beyond.item():.1e}, about "
          f"{p_beyond.item() * n_examples:.3g} of the {n_examples:,} examples mnist_uncond trained on")
print(f"weight of the network's v in eps-hat at t = {ddim50[0]}: 1 - s = {1 - s_first:.1e}; "
      f"weight of its x0-hat in the next point: sqrt(alpha-bar_{ddim50[1]}) = {schedule.alpha_bars[ddim50[1]].sqrt().item():.4f}; "
      f"weight of eps-hat in the last step's image: sqrt(1 - alpha-bar_0) = {(1 - schedule.alpha_bars[0]).sqrt().item():.4f}")

# %% [markdown]
# So two of the 50 calls ask the flow model about levels it practically never saw in training: the first, at
# $t = 999$, and the last, at $t = 0$, where the problem is the mirror image (hardly any draw is that clean).
# For the calls in between, training drew hundreds or thousands of examples at least as extreme (the second and the
# second-to-last printed). The answers at the two ends are extrapolations, but they carry little weight. At
# $t = 999$ the noise estimate is $\hat\varepsilon = x_s + (1-s)\,\hat v$ (chapter 3), so the network contributes to it
# only through the factor printed, and its $\hat x_0$ enters the next point scaled by $\sqrt{\bar\alpha_{979}}$, small
# beside that point's noise (though it is all the signal the next call sees);
# at $t = 0$ the last step returns $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ with $t = 0$, in which
# $\hat\varepsilon$ moves the image only by its small weight (all three printed).
#
# With $\eta = 0$ the step is deterministic. With $\eta = 1$ and $t' = t-1$ it is exactly DDPM's step:
# then $\sigma^2 = \tilde\beta_t$, the coefficient of $x_t$ is $\sqrt{\bar\alpha_{t-1}/\bar\alpha_t} = 1/\sqrt{\alpha_t}$, and since
# $1-\bar\alpha_{t-1}-\tilde\beta_t = \alpha_t (1-\bar\alpha_{t-1})^2/(1-\bar\alpha_t)$ the coefficient of $\varepsilon_\theta$ is
# $\big(\alpha_t(1-\bar\alpha_{t-1}) - (1-\bar\alpha_t)\big)/\sqrt{\alpha_t(1-\bar\alpha_t)} = -\beta_t/\sqrt{\alpha_t(1-\bar\alpha_t)}$,
# DDPM's. (The cell checks the DDPM and the DDIM step by hand against the library, then $\eta = 1$ against DDPM):

# %%
xt = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
z = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
t_value = 500
t = torch.full((2,), t_value)
alpha, beta = schedule.alphas[t_value].float(), schedule.betas[t_value].float()
ab, ab_prev = schedule.alpha_bars[t_value].float(), schedule.alpha_bars[t_value - 1].float()
with torch.no_grad():
    eps = eps_fn(xt, t)
ddpm_by_hand = (xt - beta / (1 - ab).sqrt() * eps) / alpha.sqrt() + schedule.posterior_variance[t_value].float().sqrt() * z
x0_hat = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
sigma = ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()  # eta = 1
ddim_by_hand = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma**2).sqrt() * eps + sigma * z
print(f"DDPM step by hand vs dl.ddpm_step:           {(ddpm_by_hand - dl.ddpm_step(eps, xt, t, schedule, noise=z)[0]).abs().max():.1e}")
print(f"DDIM (eta=1) by hand vs dl.ddim_step:        {(ddim_by_hand - dl.ddim_step(eps, xt, t, t - 1, schedule, 1.0, noise=z)[0]).abs().max():.1e}")
print(f"DDIM with eta=1, one step vs the DDPM step:  {(ddim_by_hand - ddpm_by_hand).abs().max():.1e}")

# %% [markdown]
# **What deterministic DDIM is solving: the probability-flow ODE.** Divide the noisy image by its
# signal coefficient: $\bar x = x_t / \sqrt{\bar\alpha_t}$, and measure the noise level by
# $\rho_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$ (the noise's standard deviation relative to the
# signal's). Then $\bar x = x_0 + \rho_t\,\varepsilon$, and the $\eta = 0$ step above, with
# $\hat x_0 = \bar x_t - \rho_t\,\varepsilon_\theta$, becomes
#
# $$\bar x_{t'} = \hat x_0 + \rho_{t'}\,\varepsilon_\theta = \bar x_t + (\rho_{t'} - \rho_t)\,\varepsilon_\theta(x_t, t),$$
#
# one step of **Euler's method** for the ordinary differential equation
# $d\bar x / d\rho = \varepsilon_\theta$ (Song et al. 2021, DDIM Sec. 4.3). With infinitely many steps DDIM
# follows this ODE exactly. Why its solution has the forward process's distribution at every level, for the
# *ideal* network $\varepsilon^*(\bar x, \rho) = \mathbb E[\varepsilon \mid \bar x]$: the density of $\bar x = x_0 + \rho\,\varepsilon$ is
# $p_\rho = p_\text{data} * \mathcal N(0, \rho^2 I)$, and a Gaussian blur of variance $\rho^2$ obeys the heat equation
# $\partial p_\rho / \partial\rho = \rho\,\Delta p_\rho$. Tweedie's formula, $\mathbb E[x_0 \mid \bar x] = \bar x + \rho^2\,\nabla\log p_\rho(\bar x)$
# (differentiate $p_\rho(\bar x) = \int p_\text{data}(x_0)\,\mathcal N(\bar x; x_0, \rho^2 I)\,dx_0$ under the integral), gives
# $\varepsilon^* = (\bar x - \mathbb E[x_0 \mid \bar x])/\rho = -\rho\,\nabla \log p_\rho$. Points moving with velocity $u = \varepsilon^*$ change the density by
# the continuity equation, $\partial p / \partial\rho = -\nabla\cdot(p\,u)$ (chapter 8 writes it out). Put $p_\rho$ itself into its
# right side: $-\nabla\cdot(p_\rho\,\varepsilon^*) = \nabla\cdot(\rho\,\nabla p_\rho) = \rho\,\Delta p_\rho = \partial p_\rho/\partial\rho$. So the
# forward process's densities solve the continuity equation of this velocity field, and since for a smooth
# velocity that equation has one solution per starting density, points that start distributed as $p_\rho$ at the
# largest $\rho$ are distributed as $p_\rho$ at every $\rho$. Two approximations remain in practice: the sampler
# starts from pure Gaussian noise, which is $p_\rho$ at the largest $\rho$ only nearly, and a trained
# $\varepsilon_\theta$ only approximates $\varepsilon^*$.
# This ODE is the **probability-flow ODE** of the diffusion (Song et al. 2021, score-based SDEs, Sec. 4.3). Deterministic samplers differ in how they solve it: DDIM with Euler steps in $\rho$,
# DPM-Solver++ (derived next) with second-order steps. Heun's method, chapter 4's sampler for flow models, is
# another second-order solver of the same ODE, written in the flow's variables instead of $\rho$; chapter 8
# shows the change of variables between the two. The $\eta = 0$ step, checked against one Euler step:

# %%
t_next = torch.full((2,), 400)
rho = ((1 - schedule.alpha_bars) / schedule.alpha_bars).sqrt().float()
sqrt_ab = schedule.alpha_bars.sqrt().float()
euler = sqrt_ab[400] * (xt / sqrt_ab[t_value] + (rho[400] - rho[t_value]) * eps)
print(f"DDIM eta=0 from t={t_value} to 400 vs one Euler step of dx/drho = eps: "
      f"{(euler - dl.ddim_step(eps, xt, t, t_next, schedule, 0.0)[0]).abs().max():.1e}")

# %% [markdown]
# **A second-order step: DPM-Solver++.** DDIM's step holds the model's $\hat x_0$ constant over the step. To see
# what that neglects, write the path in chapter 2's letters, $x_t = \alpha_t x_0 + \sigma_t \varepsilon$ with
# $\alpha_t = \sqrt{\bar\alpha_t}$ and $\sigma_t = \sqrt{1-\bar\alpha_t}$ (section 6 there; not the one-step $\alpha_t = 1 - \beta_t$ of
# section 1, nor its reverse-step $\sigma_t$ or DDIM's $\sigma$; the DPM-Solver papers use these letters), so that $\rho_t = \sigma_t/\alpha_t$, and measure the level by
# $\lambda_t = \log(\alpha_t/\sigma_t) = -\log\rho_t$, half the log signal-to-noise ratio, which grows as $t$ falls. In the
# ODE $d\bar x/d\rho = \varepsilon_\theta$ write $\varepsilon_\theta = (\bar x - \hat x_0)/\rho$ (from $\bar x = \hat x_0 + \rho\,\varepsilon_\theta$). Then
#
# $$d\Big(\frac{\bar x}{\rho}\Big) = \frac{d\bar x}{\rho} - \frac{\bar x\,d\rho}{\rho^2} = \frac{(\bar x - \hat x_0)\,d\rho}{\rho^2} - \frac{\bar x\,d\rho}{\rho^2} = -\frac{\hat x_0\,d\rho}{\rho^2} = \hat x_0\, d\Big(\frac{1}{\rho}\Big) = e^{\lambda}\,\hat x_0\, d\lambda ,$$
#
# and since $\bar x/\rho = x/\sigma$, integrating over a step from $t$ to $t'$, of size $h = \lambda_{t'} - \lambda_t$, gives exactly
#
# $$x_{t'} = \frac{\sigma_{t'}}{\sigma_t}\, x_t + \sigma_{t'} \int_{\lambda_t}^{\lambda_{t'}} e^{\lambda}\, \hat x_0(\lambda)\, d\lambda .$$
#
# DDIM is this integral with $\hat x_0$ held constant (first order): $\int e^\lambda d\lambda = e^{\lambda_{t'}} - e^{\lambda_t}$, and with
# $\sigma_{t'} e^{\lambda_{t'}} = \alpha_{t'}$ the step is $x_{t'} = \frac{\sigma_{t'}}{\sigma_t} x_t + \alpha_{t'}(1 - e^{-h})\,\hat x_0$, the $\eta = 0$ step
# written with $\hat x_0$ instead of $\hat\varepsilon$ (substitute $x_t = \alpha_t \hat x_0 + \sigma_t \hat\varepsilon$). Suppose instead that $\hat x_0$
# changes linearly in $\lambda$ along the step, with slope $k$. The integral of $e^\lambda k(\lambda - \lambda_t)$ adds
# $\sigma_{t'} e^{\lambda_t} k \int_0^h u\,e^u\,du = \sigma_{t'} e^{\lambda_t} k\,\big((h-1)e^h + 1\big) = \alpha_{t'}(h - 1 + e^{-h})\,k$ (by parts), that is, the constant $\hat x_0$ is replaced by $\hat x_0 + k\,\big(h/(1 - e^{-h}) - 1\big)$, and
# $h/(1-e^{-h}) - 1 = h/2 + h^2/12 + \dots$: to first order, $\hat x_0$ at the middle of the step. **DPM-Solver++(2M)**
# (Lu et al. 2022) estimates the slope from the previous step's prediction, $k \approx (\hat x_0 - \hat x_0^{\text{before}})/h_{\text{before}}$,
# and so replaces $\hat x_0$ by
#
# $$D = \hat x_0 + \frac{h}{2}\,\frac{\hat x_0 - \hat x_0^{\text{before}}}{h_{\text{before}}} = \Big(1 + \frac{1}{2r}\Big)\hat x_0 - \frac{1}{2r}\,\hat x_0^{\text{before}}, \qquad r = \frac{h_{\text{before}}}{h}$$
#
# Same network calls, one more multiply-add. Second order, in the paper's analysis: the slope's estimate is off
# by $O(h)$ and enters multiplied by $\alpha_{t'}(1 - e^{-h})\,h/2 = O(h^2)$, so each step errs by $O(h^3)$ and the run by $O(h^2)$. The first step, with
# no prediction before it, is first order like DDIM, and so is the library's last step, which jumps to the data and
# returns $\hat x_0$. The library's DPM-Solver++ also visits its own grid of steps: DDIM spends its last call at
# $t = 0$, DPM-Solver++ spends none on the nearly clean end (`dl.ddim_timesteps` and
# `dl.samplers.dpm_solver_timesteps` list the two). The cell takes the first two steps of DPM-Solver++-10 by hand
# against `dl.dpm_solver_step`, and compares the two slope terms at the second step's $h$:

# %%
grid = dl.samplers.dpm_solver_timesteps(schedule.T, 10)
ab64 = schedule.alpha_bars.double()
lam = lambda t: 0.5 * (ab64[t] / (1 - ab64[t])).log()  # noqa: E731 (lambda_t = log(alpha_t / sigma_t))
x_hand = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(6))
previous = None  # the library's memory of the step before (x0_hat, h); by hand: x0_before and h_before
for i, (t_now, t_after) in enumerate(zip(grid[:2], grid[1:3])):
    with torch.no_grad():
        eps_now = eps_fn(x_hand, torch.full((2,), t_now))
    x0_hat = (x_hand - (1 - ab64[t_now]).sqrt().float() * eps_now) / ab64[t_now].sqrt().float()
    h = (lam(t_after) - lam(t_now)).item()
    r = h_before / h if i else None
    data = x0_hat if i == 0 else (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_before  # D
    sigma_ratio = ((1 - ab64[t_after]) / (1 - ab64[t_now])).sqrt().item()
    x_hand_next = sigma_ratio * x_hand + ab64[t_after].sqrt().item() * (1 - torch.exp(torch.tensor(-h)).item()) * data
    x_lib, previous = dl.dpm_solver_step(x0_hat, x_hand, torch.full((2,), t_now), torch.full((2,), t_after), schedule, previous)
    print(f"step {i + 1}, t = {t_now} -> {t_after}: h = {h:.3f}{f', r = {r:.3f}' if i else ' (first order)'}; "
          f"by hand vs dl.dpm_solver_step: {(x_hand_next - x_lib).abs().max():.1e}")
    x_hand, x0_before, h_before = x_hand_next, x0_hat, h
print(f"slope terms at h = {h:.3f}: exact h/(1 - e^-h) - 1 = {h / (1 - torch.exp(torch.tensor(-h)).item()) - 1:.3f}, "
      f"DPM-Solver++'s h/2 = {h / 2:.3f}")

# %% [markdown]
# Read the two steps. The first, from $t = 999$, spans a long stretch of $\lambda$ (the printed $h$), so $r$ at the second
# step is large and the correction $\tfrac{1}{2r}(\hat x_0 - \hat x_0^{\text{before}})$ weighs little there. The two slope
# terms differ by about $h^2/12$, the next term of the series, which DPM-Solver++ drops.

# %% [markdown]
# ## 2. Fewer steps: what it costs and what it buys
#
# DDIM's step works for any decreasing subsequence of timesteps, so we can visit 50 of the 1000.
# The same starting noise, sampled with DDPM's 1000 steps and DDIM's 100, 50, 20, 10 and 5.
# (`clip_x0=True` clamps each $\hat x_0$ to the pixel range $[-1, 1]$ and recomputes $\varepsilon$ from it
# before the step, a common safeguard for images; it makes deterministic DDIM a slightly different
# map from the pure ODE step of section 1.)

# %%
n_show = 2 if FAST else 8
x_T = torch.randn(n_show, 1, 28, 28, generator=torch.Generator().manual_seed(3))
rows, timings = [], {}
for sampler, steps in [("ddpm", 1000), ("ddim", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("ddim", 5)]:
    start = time.perf_counter()
    out = dl.sample_loop(eps_fn, x_T.shape, schedule, sampler, steps, x_T=x_T, clip_x0=True,
                         generator=torch.Generator().manual_seed(4))
    timings[f"{sampler.upper()}-{steps}"] = (time.perf_counter() - start) / n_show
    rows.append(out.clamp(-1, 1))
display(show_grid(torch.cat(rows), "rows: " + ", ".join(timings), ncols=n_show))
for name, seconds in timings.items():
    print(f"{name:>10}: {seconds:.3f} s per image ({timings['DDPM-1000'] / seconds:5.1f}x faster than DDPM-1000)")

# %% [markdown]
# DDIM's rows mostly agree with each other (deterministic: the same noise leads to nearly the same
# digit at most step counts), but with few steps a digit can change (the third column from DDIM-20
# on, the last from DDIM-10), and at 5 steps strokes distort. DDPM, adding fresh noise at each of its
# 1000 steps, lands on a different digit from the same start.
#
# **Steps vs speed vs quality, measured.** Speed is easy to measure; quality needs a number. We use MNIST-FID
# (`dl.evaluation`: the Frechet distance between the classifier's features of the samples and of the MNIST test set;
# lower is better), with real training digits at the same sample count as the floor, because FID is biased upwards for
# small sample sets. "DDPM" with fewer than 1000 steps is the ancestral sampler on an evenly respaced chain (Improved
# DDPM Sec. 4), which is DDIM with $\eta = 1$: section 1's proof for $t' = t-1$ carries over with the jump's
# $\bar\alpha_t/\bar\alpha_{t'}$ in place of $\alpha_t$ and $1 - \bar\alpha_t/\bar\alpha_{t'}$ in place of $\beta_t$.

# %%
n_eval = 64 if FAST else 256
settings = [("ddim", 5), ("ddim", 10), ("ddim", 20)] if FAST else [("ddim", 5), ("ddim", 10), ("ddim", 20), ("ddim", 50),
                                                                    ("ddpm", 50), ("ddpm", 100), ("dpm-solver++", 10)]
start = time.perf_counter()
table = ch05.quality_table(model, info, classifier, settings, n=n_eval, seed=5)
baseline = dl.evaluation.real_baseline_fid(n_eval, classifier)
print(f"measured live: {n_eval} samples per row in {time.perf_counter() - start:.0f} s; real-digit floor MNIST-FID {baseline:.1f}")

# %% [markdown]
# The other rows (DDPM with 1000 and 250 steps, which would take minutes for a few hundred images here; DDIM-100 and
# DPM-Solver++ with 5 and 20 steps, which are quick but not repeated live) come from the committed results of
# `benchmarks/run.py`, made with the same function, model and seed on the machine it names. Where both measured a row
# with the same number of samples (full mode), the two FIDs should agree up to floating-point differences between
# machines: a check that the committed figures belong to this model. The s/image column mixes the two sources: live
# rows are timed on your machine, committed rows on the benchmark's (one thread), so compare times only within a
# source.

# %%
committed = load_measured("steps")
print(f"committed: `{committed['command']}`, {committed['date']}, {committed['machine']['cpu']} "
      f"({committed['threads']} thread(s)); {committed['figures']['n']} samples per row, "
      f"real-digit floor {committed['figures']['real_baseline_fid']:.1f}")
rows = ch05.merge_quality_tables(table, committed["figures"]["rows"], live_n=n_eval)
print(f"{'sampler':>12} {'steps':>6} {'s/image':>8} {'MNIST-FID':>10}  source")
for row in rows:
    print(f"{row['sampler']:>12} {row['steps']:>6} {row['seconds_per_image']:>8.3f} {row['mnist_fid']:>10.1f}  {row['source']}")
both = [r for r in rows if r["source"] != "committed" and r["committed_fid"] is not None]
if both and n_eval == committed["figures"]["n"]:
    print(f"rows measured both here and in the committed run: largest FID difference "
          f"{max(abs(r['mnist_fid'] - r['committed_fid']) for r in both):.2f}")
fig, ax = plt.subplots(figsize=(6, 3.4))
for sampler, marker in (("ddim", "o-"), ("ddpm", "s--"), ("dpm-solver++", "^-")):
    rows_of = sorted((r for r in committed["figures"]["rows"] if r["sampler"] == sampler), key=lambda r: r["steps"])
    ax.plot([r["steps"] for r in rows_of], [r["mnist_fid"] for r in rows_of], marker, label=f"{sampler.upper()} (committed)")
ax.axhline(committed["figures"]["real_baseline_fid"], color="gray", ls=":", label=f"real digits, n={committed['figures']['n']}")
ax.set(xscale="log", xlabel="sampling steps", ylabel="MNIST-FID (lower is better)", title="quality vs steps, mnist_uncond")
ax.legend()
plt.show()
ddpm, ddim = (next(r for r in committed["figures"]["rows"] if (r["sampler"], r["steps"]) == key)
              for key in (("ddpm", 1000), ("ddim", 50)))
print(f"DDIM-50 vs DDPM-1000: MNIST-FID {ddim['mnist_fid']:.1f} vs {ddpm['mnist_fid']:.1f}, "
      f"{ddpm['seconds_per_image'] / ddim['seconds_per_image']:.0f}x less time per image")

# %% [markdown]
# Read the committed table rather than a rule of thumb.
# For this model DDIM improves quickly up to 20 steps and little after (54.5, 51.8 and 51.3 at 20,
# 50 and 100), and DDIM-50's MNIST-FID is about 16% above DDPM-1000's (51.8 against 44.7), at a
# small fraction of the time (the last line above, from the committed one-thread timings; the live
# rows of the table come from your machine). Measured from the floor (41.0) the gap is larger still. At 100
# steps the stochastic respaced DDPM scores lower than deterministic DDIM (43.4 against 51.3); at 50 steps the
# two are within a point (50.8 against 51.8). The DDIM paper found deterministic DDIM better for its models
# (CIFAR-10 and CelebA, 10 to 100 steps), so which wins can depend on the model and the step count. The
# second-order `dpm-solver++` rows (section 1) do better than DDIM at 5 and 10 steps and
# match DDIM-50 with 20.
#
# How much should one trust a gap of a few points? An FID from 256 samples is itself a noisy estimate: the DDPM
# rows with 100, 250 and 1000 steps (43.4, 46.7, 44.7) lie within a few points of each other and of the floor,
# closer than this sample count can rank them, and even the 8 points between DDPM-100 and DDIM-100 come from one
# set of 256 samples. The next table measures DDIM, DPM-Solver++ and DDPM-1000 again on 1,000 samples (not
# the respaced DDPM rows, so that 8-point gap stays open). What deterministic
# DDIM gives beyond speed is a fixed map from noise to image, which section 4 uses to invert and interpolate.
#
# **The same table on 1,000 samples, down to one step.** Chapter 9 measures every sampler of the
# course on this model again with 1,000 samples a row (its FID is less noisy than at 256), beside the
# few-step models of chapters 8 and 9 (`python benchmarks/run.py --only fewsteps`; the network under
# bfloat16 autocast there, on the benchmark's machine, so its times do not compare with the live ones above).
# Besides DDPM, DDIM and DPM-Solver++ it has the flow model's own ODE solvers: `euler` steps evenly in the
# straight path's $s$ (chapter 8 shows that DDIM is Euler's method on another grid) and `heun` corrects each step
# with a second call, so its 18 steps cost 35 calls (chapter 4). Its rows for this model, and DDIM-50 again on
# two more sets of noise draws:

# %%
fewsteps = load_measured("fewsteps")["figures"]
print(f"n = {fewsteps['n']:,} per row, real-digit floor {fewsteps['real_baseline_fid']:.1f}")
for r in fewsteps["rows"]:
    if r["model"] == "mnist_uncond" and r["precision"] == "bf16":
        print(f"{r['sampler']:>12} {r['steps']:>5} steps ({r['calls']:>4} calls): MNIST-FID {r['mnist_fid']:6.1f}, "
              f"recognised {100 * r['recognised']:5.1f}%, {1000 * r['seconds_per_image']:6.1f} ms per image")
ddim50_fids = [r["mnist_fid"] for r in fewsteps["rows"] + fewsteps["seed_rows"]
               if (r["model"], r["sampler"], r["steps"], r["precision"]) == ("mnist_uncond", "ddim", 50, "bf16")]
print(f"DDIM-50 on {len(ddim50_fids)} sets of 1,000 noise draws: MNIST-FID from {min(ddim50_fids):.1f} to {max(ddim50_fids):.1f}")

# %% [markdown]
# On 1,000 samples the deterministic rows keep their order: DDIM gains little beyond 20 steps (31.0, 28.1 and
# 27.5 at 20, 50 and 100), and DPM-Solver++ leads DDIM at 5 and 10 steps (52.1 against 87.7, 32.1 against
# 40.6). How far does one set of draws move a row? DDIM-50 on three sets spans the range printed last, wider
# than several of the gaps above. DDPM-1000's 19.8, measured on one set only, lies below all three; together
# with the 256-sample table, where it was also ahead (44.7 against 51.8), that makes DDPM-1000 the likely better
# of the two for this model, at twenty times the network calls, though a claim about a gap of a few points
# would need several seeds of both. Chapter 9 adds the rows this chapter cannot reach: models distilled to
# take 1 to 8 steps.
#
# ## 3. Drag the steps and eta
#
# Sixteen samples, live. $\eta$ moves from deterministic DDIM ($0$) to DDPM-like ($1$).

# %%
def show_sampler(steps=20, eta=0.0):
    return ch05.sampler_view(steps, eta, model, info, n=16, seed=6)[0]


widgets.interact(show_sampler, steps=widgets.IntSlider(value=20, min=2, max=100, step=1, continuous_update=False),
                 eta=widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, continuous_update=False));

# %%
display(show_sampler(20, 0.0))  # the same view, for readers of the static page

# %% [markdown]
# **Scrub through one trajectory.** At each step the model also reports its current guess
# $\hat x_0$: the early guesses are blurry averages, the digit's identity can still change in the
# first part of the trajectory (scrub to see where it settles), and the last steps only add detail.

# %%
_, trajectory = dl.sample_loop(eps_fn, (1, 1, 28, 28), schedule, "ddim", 50, clip_x0=True, return_trajectory=True,
                               x_T=torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(7)))


def show_trajectory(step=10):
    return ch05.trajectory_view(trajectory, step - 1)


widgets.interact(show_trajectory, step=widgets.IntSlider(value=10, min=1, max=50, step=1, continuous_update=False));

# %%
display(show_grid(torch.cat([trajectory.x0_hats[i] for i in range(0, 50, 7)]).clamp(-1, 1),
                  "x0_hat at steps 1, 8, 15, ..., 50 of one DDIM-50 run", ncols=8))

# %% [markdown]
# ## 4. Running it backwards: inversion and interpolation
#
# Deterministic DDIM is (approximately) invertible: apply its update with the timesteps reversed and a real image
# becomes a noise tensor that DDIM maps back to it. Only approximately, because a step uses $\varepsilon_\theta$ at
# the point it starts from: run backwards, each step evaluates it at the less noisy end of the interval, where the
# forward step evaluated it at the noisier end, so the two agree only as far as $\varepsilon_\theta$ changes little
# over one step, and more closely the more steps there are.

# %%
real = dl.load_mnist(train=False)[0][:4]
errors = {}
for steps in ([20, 50] if FAST else [20, 50, 200]):
    noise = dl.ddim_invert(eps_fn, real, schedule, steps)
    back = dl.sample_loop(eps_fn, real.shape, schedule, "ddim", steps, x_T=noise)
    errors[steps] = (back - real).abs().mean().item()
    print(f"DDIM inversion with {steps:>3} steps: noise std {noise.std():.2f}; mean |reconstruction - original| {errors[steps]:.3f}")
display(show_grid(torch.cat([real, noise.clamp(-3, 3) / 3, back.clamp(-1, 1)]),
                  f"top: real; middle: inverted noise; bottom: DDIM-{steps} from that noise", ncols=4))

# %% [markdown]
# The reconstructions (bottom row) are close, but the "noise" DDIM finds (middle row) is not what a
# sampler would draw: its standard deviation is well below 1 (printed above), its background is a
# flat grey with a frame along the border, and the digit is plainly visible in it. The standard
# deviation grows with the number of inversion steps, so part of the gap is the coarseness of the
# steps; the exact ODE would carry typical digits to typical noise, but a few dozen steps with an
# imperfect model find a noise that maps back to this digit and looks nothing like a fresh draw.
#
# Two noises, two digits, and the path between them. Gaussian noise in 784 dimensions lives near a
# sphere of radius about $\sqrt{784} = 28$; the straight line between two draws dips inside it,
# so we interpolate along the sphere (`dl.slerp`):

# %%
z0, z1 = (torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in (8, 9))
path = torch.cat([dl.slerp(z0, z1, a) for a in torch.linspace(0, 1, 8)])
print(f"norms along the path: {[round(v, 1) for v in path.flatten(1).norm(dim=1).tolist()]}; "
      f"straight-line midpoint {(0.5 * (z0 + z1)).norm():.1f}")
images = dl.sample_loop(eps_fn, path.shape, schedule, "ddim", 20 if FAST else 50, x_T=path, clip_x0=True).clamp(-1, 1)
display(show_grid(images, "DDIM from noises along a great circle between two draws", ncols=8))

# %% [markdown]
# ## Summary
#
# - DDPM's ancestral step and DDIM's step share $\hat x_0$; DDIM with $\eta = 1$ on every step is DDPM.
# - DDIM can skip timesteps: section 2 measured the speed-up and the quality at each step count (the fast rows on your machine, the slow ones committed).
# - Deterministic DDIM is Euler's method on the probability-flow ODE; DPM-Solver++(2M) reuses the previous step's $\hat x_0$ to
#   extrapolate it to the middle of each step, a second-order step for the same network calls.
# - $\eta$ sets how much fresh noise each step adds; $\eta = 0$ makes sampling a deterministic map from noise to image,
#   which can be inverted (image to noise) and interpolated (slerp between noises).
#
# ## Exercises
#
# **Exercise 1 (implement).** Write the deterministic DDIM step `my_ddim_step(xt, eps, alpha_bar_t, alpha_bar_prev)`.

# %% tags=["solution", "exercise:ch05-ddim-step"]
def my_ddim_step(xt, eps, alpha_bar_t, alpha_bar_prev):
    x0_hat = (xt - (1 - alpha_bar_t).sqrt() * eps) / alpha_bar_t.sqrt()
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_ddim_step(my_ddim_step)

# %% [markdown]
# **Exercise 2 (predict, then check).** Section 4 turns a real image into noise with DDIM inversion
# (20, 50 and 200 steps in full mode). With 50 inversion steps, mapped back with DDIM-50: How many times does the network run for
# one image, there and back?

# %% tags=["solution", "exercise:ch05-round-trip-calls"]
round_trip_calls = 100

# %%
# NBVAL_CHECK_OUTPUT
exercises.check_round_trip_calls(round_trip_calls)

# %% [markdown] tags=["exercise:ch05-open-fresh-noise"]
# **Exercise 3 (open question).** Both samplers of section 1 aim at the same marginals, yet on this model the
# stochastic one, which adds fresh noise at every step, scored better than deterministic DDIM with many steps
# (section 2: DDPM-100 against DDIM-100 on 256 samples, and DDPM-1000 below the range of DDIM-50's three seeds on
# 1,000, from one set of its own). Why can fresh noise at
# every step make the samples *better*? Then set section 3's slider to 5 steps and move $\eta$ from 0 to 1: what do
# you expect to see, and why would the advantage turn around when the steps are few?

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** With the true noise predictor both samplers would draw from the same
# marginals; with a trained one, every step makes a small error. The deterministic sampler follows an ODE, which
# carries every error made early to the end: nothing pulls a sample back once it is off course. A stochastic step
# first denoises and then adds fresh noise; the noise partly erases where the sample came from, and the next
# denoising step pulls it towards what the network believes the data at that level looks like, so earlier errors
# are partly forgotten (the stochastic sampler contracts errors; Karras et al. 2022, Sec. 4, describe the added noise
# as correcting errors made by earlier steps). With few steps the picture reverses: each step must remove, in one
# long step, the noise the previous one injected, and the stochastic update's discretisation error is larger than
# the ODE's (its noise term grows like the square root of the step); the DDIM paper found $\eta = 0$ best at few steps.
# The chapter's tables measure the stochastic sampler only from 50 steps up, so the few-step half is read from the
# slider, by eye.
#
# **Rubric.** (1) Says both samplers share the marginals, so the difference comes from the network's errors or from
# discretisation; (2) explains error correction by fresh noise (earlier errors forgotten, the sample pulled back
# towards the learned marginal) against the ODE carrying errors to the end; (3) explains why few steps favour the
# deterministic sampler (large steps must remove injected noise; larger discretisation error); (4) cites the
# measured rows and what the slider shows, and notes that a gap of a few FID points on one set of samples is noisy.

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
