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
# # Chapter 2: Forward noising — break it on purpose
#
# Chapter 1 ended with a plan: instead of writing an image one pixel at a time, **destroy** images
# with noise in many small steps, then learn to undo the steps. This chapter builds the destroying
# half, the *forward process*, and shows that it has a shortcut.
#
# **After this chapter you can**
# - write the one-step noising chain $q(x_t \mid x_{t-1})$ and its closed form $q(x_t \mid x_0)$, and show numerically that they agree;
# - read a noise schedule through $\bar\alpha_t$ and the signal-to-noise ratio, and compare the linear and cosine schedules;
# - predict what an image looks like at any timestep;
# - derive the posterior $q(x_{t-1} \mid x_t, x_0)$ by completing the square, and say why the reverse process can take Gaussian steps;
# - write any noisy image as $x = \alpha\,x_0 + \sigma\,\varepsilon$, and place the straight path $x_s = (1-s)\,x_0 + s\,\varepsilon$ among DDPM's schedules by its implied $\bar\alpha$;
# - write the velocity of a path, and check that DDPM's $v$ and the flow velocity $\varepsilon - x_0$ are the velocities of the family's two members, DDPM's circle and the straight line.
#
# **Assumes**: Gaussian random variables (mean, variance, adding independent Gaussians), PyTorch tensors.
#
# Code timestep `t` runs over 0..T-1 and stands for the paper's $t+1$ (see `diffusion_lib/schedules.py`).

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
from diffusion_lib.course import ch02, exercises
from diffusion_lib.course.plots import show_grid

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
images, labels = dl.load_mnist(train=False)
digit = images[:1]  # (1, 1, 28, 28) in [-1, 1]
photo = ch02.load_photo(128)  # (1, 1, 128, 128), Grace Hopper, shipped with matplotlib

# %% [markdown]
# ## 1. One small step at a time
#
# DDPM (Ho et al. 2020, Eq. 2) adds a little Gaussian noise at each of $T = 1000$ steps and
# shrinks the signal a little:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big), \qquad
# x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon_t .$$
#
# The squares of the two weights sum to 1, $(1-\beta_t) + \beta_t = 1$, so a pixel whose variance
# is 1 keeps variance $(1-\beta_t)\cdot 1 + \beta_t = 1$ (the noise is independent of it): the
# process is *variance preserving*. A pixel of another variance is pulled towards 1 step by step;
# section 3 measures this on MNIST, whose pixels do not have variance 1.
#
# The $\beta_t$ are the **schedule**: DDPM's rises linearly from $10^{-4}$ to $0.02$.
# Here is the chain written out by hand, next to the library's `q_step`, fed the same noise.

# %%
# NBVAL_CHECK_OUTPUT
schedule = dl.make_schedule("linear", 1000)
betas = schedule.betas.float()
x_by_hand, x_library = digit.clone(), digit.clone()
generator = torch.Generator().manual_seed(1)
for t in range(schedule.T):
    eps = torch.randn(digit.shape, generator=generator)
    x_by_hand = torch.sqrt(1 - betas[t]) * x_by_hand + torch.sqrt(betas[t]) * eps
    x_library = dl.q_step(x_library, torch.tensor([t]), schedule, noise=eps)
print(f"largest difference between the hand-written chain and dl.q_step after 1000 steps: "
      f"{(x_by_hand - x_library).abs().max().item():.2e}")

# %% [markdown]
# ## 2. The shortcut: jump straight to step t
#
# Each step scales the signal by $\sqrt{\alpha_t}$ with $\alpha_t = 1-\beta_t$ and adds independent
# Gaussian noise. Products of scalings and sums of independent Gaussians stay Gaussian, so
# (DDPM Eq. 4), with $\bar\alpha_t = \prod_{s \le t} \alpha_s$:
#
# $$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big), \qquad
# x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon .$$
#
# The variance follows the recursion $v_t = \alpha_t v_{t-1} + \beta_t$ with $v_0 = 0$, whose
# solution is $1-\bar\alpha_t$ (substitute: $\alpha_t(1-\bar\alpha_{t-1}) + 1 - \alpha_t = 1 - \bar\alpha_t$). Check it exactly, then check it with samples: run many copies of
# one pixel through chained steps (the first 200, to code $t = 199$, as printed), and compare with one jump.

# %%
# NBVAL_CHECK_OUTPUT
mean_coef, variance = 1.0, 0.0
for t in range(schedule.T):
    mean_coef, variance = mean_coef * schedule.alphas[t].sqrt().item(), schedule.alphas[t].item() * variance + schedule.betas[t].item()
print(f"after 1000 steps: mean coefficient {mean_coef:.6f} vs sqrt(alpha_bar) {schedule.alpha_bars[-1].sqrt().item():.6f}; "
      f"variance {variance:.6f} vs 1 - alpha_bar {1 - schedule.alpha_bars[-1].item():.6f}")

# %%
n, x0_value, t_check = (2000 if FAST else 20000), 0.8, 199  # a bright pixel, and t = 200 in the paper's counting
start = torch.full((n, 1), x0_value)
chained = start.clone()
for t in range(t_check + 1):
    chained = dl.q_step(chained, torch.full((n,), t), schedule)
jumped = dl.q_sample(start, torch.full((n,), t_check), schedule)
ab = schedule.alpha_bars[t_check].item()
print(f"{n} samples at t={t_check}: theory mean {np.sqrt(ab) * x0_value:.4f}, variance {1 - ab:.4f}")
print(f"  chained 200 steps: mean {chained.mean().item():.4f}, variance {chained.var().item():.4f}")
print(f"  one jump:          mean {jumped.mean().item():.4f}, variance {jumped.var().item():.4f}")
fig, ax = plt.subplots(figsize=(6, 3))
bins = np.linspace(-3, 3, 60)
ax.hist(chained.numpy().ravel(), bins, alpha=0.5, density=True, label="200 chained steps")
ax.hist(jumped.numpy().ravel(), bins, alpha=0.5, density=True, label="one jump with q(x_t | x_0)")
ax.set(xlabel="pixel value x_t", ylabel="density", title=f"x_0 = {x0_value}, t = {t_check}: the two agree")
ax.legend()
plt.show()

# %% [markdown]
# The jump costs one line instead of $t$ steps, which is what makes training cheap: pick a random
# $t$, noise an image to it directly, and ask the network to undo it (chapter 3).
#
# ## 3. Linear vs cosine schedules
#
# How fast $\bar\alpha_t$ falls decides how much of the chain is spent on nearly pure noise.
# Improved DDPM (Nichol & Dhariwal 2021, Eq. 17) chooses $\bar\alpha_t$ directly and derives the
# $\beta_t$ from it. With $t$ counted as in the paper ($t = 1, \dots, T$) and $s = 0.008$,
#
# $$\bar\alpha_t = \frac{f(t)}{f(0)}, \qquad f(t) = \cos^2\Big(\frac{t/T + s}{1 + s}\cdot\frac{\pi}{2}\Big), \qquad
# \beta_t = 1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}} \ \text{(clipped at 0.999)},$$
#
# the last because $\bar\alpha_t = \bar\alpha_{t-1}(1-\beta_t)$. Where it comes from: call the
# angle inside the cosine $u_t$; it grows at a constant rate from $u_0 \approx 0$ to $u_T = \pi/2$.
# Since $f(0)$ is almost 1, $\sqrt{\bar\alpha_t} \approx \cos u_t$ and $\sqrt{1-\bar\alpha_t} \approx \sin u_t$, so
# $x_t \approx \cos(u_t)\,x_0 + \sin(u_t)\,\varepsilon$: the image is *rotated* towards the noise at
# constant angular speed, and $\mathrm{SNR}_t \approx \cot^2 u_t$. $\cos^2$ is flat at both ends, so
# $\bar\alpha_t$ changes little over the first and the last steps and falls almost linearly in the middle (the last
# steps still replace most of what is left of the image: $\beta_t$ grows towards 1 there).
# The offset $s$ keeps the first step from being too small (without it $\beta_1 =
# 1 - \cos^2(\pi/2T)$ and $\sqrt{\beta_1}$ is four times smaller, as printed below); Nichol & Dhariwal chose it so that $\sqrt{\beta_1}$ is a little below one grey
# level of an image scaled to $[-1, 1]$, $2/255$. The clip matters at $t = T$ only, where $f(T) = 0$ would make
# $\beta_T = 1$. In code, index `t` is the paper's $t+1$, so `alpha_bars[t]` is $f(t+1)/f(0)$. The cell
# below builds the schedule from this formula and compares it with the library's:

# %%
T, s_offset = 1000, 0.008
paper_t = torch.arange(T + 1, dtype=torch.float64)  # 0, 1, ..., T
u = (paper_t / T + s_offset) / (1 + s_offset) * torch.pi / 2
f = torch.cos(u) ** 2
alpha_bars_by_hand = (f / f[0])[1:]  # paper t = 1..T, i.e. code t = 0..T-1
library = dl.make_schedule("cosine", T)
print(f"f(0) = {f[0].item():.5f}")
print(f"largest |alpha-bar by hand - library| for code t < T-1: {(alpha_bars_by_hand - library.alpha_bars)[:-1].abs().max().item():.1e}")
print(f"at code t = T-1: by hand {alpha_bars_by_hand[-1].item():.1e}, library {library.alpha_bars[-1].item():.1e} "
      f"(beta clipped to {library.betas[-1].item():.3f} instead of 1)")
print(f"largest |alpha-bar_t - cos^2(u_t)| = {(alpha_bars_by_hand - torch.cos(u[1:]) ** 2).abs().max().item():.1e}")
beta_1_no_offset = 1 - torch.cos(torch.tensor(torch.pi / (2 * T), dtype=torch.float64)) ** 2
print(f"sqrt(beta_1): {library.betas[0].sqrt().item():.4f} with s = 0.008, {beta_1_no_offset.sqrt().item():.4f} with s = 0; "
      f"one grey level is 2/255 = {2 / 255:.4f}")

# %% [markdown]
# The **signal-to-noise ratio** $\mathrm{SNR}_t = \bar\alpha_t / (1-\bar\alpha_t)$ is the cleanest way
# to compare the two schedules; we plot it on a log scale.

# %%
schedules = {name: dl.make_schedule(name, 1000) for name in ("linear", "cosine")}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for name, s in schedules.items():
    axes[0].plot(s.alpha_bars.numpy(), label=name)
    axes[1].plot(s.snr.numpy(), label=name)
axes[0].set(xlabel="t", ylabel="alpha-bar_t", title="signal kept: alpha-bar_t")
axes[1].set(xlabel="t", ylabel="SNR_t (log scale)", yscale="log", title="signal-to-noise ratio")
for ax in axes:
    ax.legend()
plt.show()
for name, s in schedules.items():
    quarter = (s.alpha_bars < 0.25).nonzero()[0].item()
    print(f"{name:>6}: alpha-bar falls below 0.25 at t={quarter}; at t=999 it is {s.alpha_bars[-1].item():.2e}")

# %%
shown_t = [0, 50, 100, 200, 300, 500, 700, 999]
noise = torch.randn(digit.shape, generator=torch.Generator().manual_seed(2))
rows = [dl.q_sample(digit.expand(len(shown_t), -1, -1, -1), torch.tensor(shown_t), s, noise.expand(len(shown_t), -1, -1, -1))
        for s in schedules.values()]
display(show_grid(torch.cat(rows), "the same digit and noise; top: linear, bottom: cosine",
                  ncols=len(shown_t), captions=[f"t={t}" for t in shown_t] * 2))

# %% [markdown]
# Under the linear schedule the digit fades early (compare where $\bar\alpha_t$ falls below 0.25,
# printed above): many of the remaining steps work on near-pure static. The cosine schedule keeps a
# trace of the digit much longer, so more of its steps carry information.
#
# Whatever the schedule, by $t = T-1$ every image looks the same: the pixel histogram approaches
# $\mathcal N(0, 1)$, the distribution we will sample from to start generating.
#
# On the way there the variance is *not* 1, and section 1's "variance preserving" needs care.
# Pool all pixels of many digits and call their mean and variance $m_0$ and $v_0$. The noise is
# independent of the image, so the pooled $x_t$ has mean $\sqrt{\bar\alpha_t}\,m_0$ and variance
# $\bar\alpha_t v_0 + (1-\bar\alpha_t)$. What is exactly 1 is the sum of the two weights,
# $\bar\alpha_t + (1-\bar\alpha_t)$; the variance equals 1 only if $v_0 = 1$. MNIST digits are mostly
# black background at $-1$, so $m_0$ is far below 0 and $v_0$ well below 1, and the variance climbs from
# $v_0$ to 1 as $\bar\alpha_t$ falls. The histograms and the printed table measure both formulas:

# %%
batch = images[: (256 if FAST else 2048)]
m0, v0 = batch.mean().item(), batch.var().item()
fig, axes = plt.subplots(1, 4, figsize=(13, 2.8), sharey=True)
grid = np.linspace(-4, 4, 200)
print(f"{len(batch)} test digits, all pixels pooled: m_0 = {m0:.3f}, v_0 = {v0:.3f}")
print(f"{'t':>4} {'alpha-bar':>10} {'mean':>7} {'predicted':>10} {'variance':>9} {'predicted':>10}")
for ax, t in zip(axes, [0, 100, 300, 999]):
    xt = dl.q_sample(batch, torch.full((len(batch),), t), schedule, torch.randn(batch.shape, generator=torch.Generator().manual_seed(t)))
    ab = schedule.alpha_bars[t].item()
    print(f"{t:>4} {ab:>10.4f} {xt.mean().item():>7.3f} {np.sqrt(ab) * m0:>10.3f} {xt.var().item():>9.3f} {ab * v0 + 1 - ab:>10.3f}")
    ax.hist(xt.numpy().ravel(), bins=80, range=(-4, 4), density=True, alpha=0.7)
    ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    ax.set(title=f"t={t}: mean {xt.mean().item():.2f}, std {xt.std().item():.2f}", xlabel="pixel value")
axes[0].set_ylabel("density")
axes[-1].legend(loc="upper right")
plt.show()

# %% [markdown]
# The table bears out both formulas: the pooled mean shrinks with $\sqrt{\bar\alpha_t}$, and the
# variance climbs from the data's $v_0 = 0.351$ (the std 0.59 in the first histogram's title) through
# 0.419 and 0.746 to 0.998 at $t = 999$, each within a few thousandths of $\bar\alpha_t v_0 + 1 - \bar\alpha_t$.
# Only at the end, when almost none of the image is left, is the variance 1.

# %% [markdown]
# ## 4. Drag the timestep
#
# Move `t` and switch the schedule: the MNIST digit and the photograph are noised with the same fixed noise at every
# position, so you watch one trajectory. The dots mark $\bar\alpha_t$ and the SNR on their curves. The photograph,
# with 128x128 pixels of strong correlated structure, stays recognisable at noise levels where the 28x28 digit can
# hardly be made out. One picture of each cannot separate size from content and contrast, but it suggests that the
# same SNR destroys less of a larger image (exercise 3 asks why), one reason large-image models shift their schedules
# towards more noise.

# %%
fixed_noises = [torch.randn(digit.shape, generator=torch.Generator().manual_seed(3)),
                torch.randn(photo.shape, generator=torch.Generator().manual_seed(4))]


def show_noising(t=350, schedule_name="linear"):
    return ch02.noising_view(t, schedule_name, [digit, photo], fixed_noises)


widgets.interact(show_noising, t=widgets.IntSlider(value=350, min=0, max=999, step=1, continuous_update=False),
                 schedule_name=widgets.Dropdown(options=["linear", "cosine"], value="linear", description="schedule"));

# %% [markdown]
# (The slider needs a running kernel. Here is the same view at one setting, for readers of the static page.)

# %%
display(show_noising(350, "linear"))

# %% [markdown]
# At $t = 350$ ($\bar\alpha_t = 0.283$, SNR 0.395) the 28x28 digit is barely visible in the
# noise in this view, while the photograph still shows the lighter shape of a head and shoulders
# against its darker background.

# %% [markdown]
# ## 5. One step back, when the clean image is known
#
# Generating means walking the chain backwards, from $x_t$ to $x_{t-1}$. If we also knew the clean
# image $x_0$, that step would be known exactly. The chain is Markov ($x_t$ depends on the past only
# through $x_{t-1}$), so $q(x_t \mid x_{t-1}, x_0) = q(x_t \mid x_{t-1})$, and Bayes' rule gives
#
# $$q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\; q(x_{t-1} \mid x_0).$$
#
# Every pixel is handled alike, so work with one. Both factors are Gaussians of $x_{t-1}$: the first
# is section 1's step, the second section 2's jump. Their product is $\exp(-\tfrac12 Q)$ with
#
# $$Q = \frac{(x_t - \sqrt{\alpha_t}\,x_{t-1})^2}{\beta_t} + \frac{(x_{t-1} - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{1-\bar\alpha_{t-1}}
#     = A\,x_{t-1}^2 - 2B\,x_{t-1} + \text{(terms without } x_{t-1}),$$
#
# $$A = \frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}} = \frac{\alpha_t(1-\bar\alpha_{t-1}) + \beta_t}{\beta_t(1-\bar\alpha_{t-1})}
#     = \frac{1-\bar\alpha_t}{\beta_t(1-\bar\alpha_{t-1})}, \qquad
#   B = \frac{\sqrt{\alpha_t}\,x_t}{\beta_t} + \frac{\sqrt{\bar\alpha_{t-1}}\,x_0}{1-\bar\alpha_{t-1}},$$
#
# where the numerator of $A$ simplified because $\alpha_t + \beta_t = 1$ and $\alpha_t\bar\alpha_{t-1} = \bar\alpha_t$.
# Completing the square, $A x^2 - 2Bx = A\,(x - B/A)^2 - B^2/A$: a Gaussian of variance $1/A$ and mean
# $B/A$. So the posterior (DDPM Eqs. 6 and 7) is $\mathcal N(\tilde\mu_t, \tilde\beta_t)$ with
#
# $$\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t, \qquad
# \tilde\mu_t = \underbrace{\frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}}_{\text{posterior\_coef\_x0}}\,x_0
#  + \underbrace{\frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}}_{\text{posterior\_coef\_xt}}\,x_t .$$
#
# $\tilde\beta_t$ is smaller than $\beta_t$: knowing where the chain started makes the step back
# more certain than the step forward was noisy. At code `t = 0` (the paper's $t = 1$),
# $\bar\alpha_{t-1} = 1$, so $\tilde\beta = 0$ and $\tilde\mu = x_0$: one step from the data, the step
# back *is* the data. The library stores these as schedule attributes; compare them with the
# formulas, and with a second, independent route: given $x_0$, the pair $(x_{t-1}, x_t)$ is jointly
# Gaussian with variances $1-\bar\alpha_{t-1}$ and $1-\bar\alpha_t$ and covariance
# $\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})$ (from $x_t = \sqrt{\alpha_t}x_{t-1} + \dots$), and the textbook
# rule for conditioning one Gaussian on another gives slope $\mathrm{cov}/\mathrm{var}(x_t)$ and
# variance $\mathrm{var}(x_{t-1}) - \mathrm{cov}^2/\mathrm{var}(x_t)$.

# %%
# NBVAL_CHECK_OUTPUT
for name in ("linear", "cosine"):
    sch = dl.make_schedule(name, 1000)
    b, a, ab, ab_prev = sch.betas, sch.alphas, sch.alpha_bars, sch.alpha_bars_prev
    coef_x0 = ab_prev.sqrt() * b / (1 - ab)  # completing the square
    coef_xt = a.sqrt() * (1 - ab_prev) / (1 - ab)
    beta_tilde = (1 - ab_prev) / (1 - ab) * b
    cov, var_t, var_prev = a.sqrt() * (1 - ab_prev), 1 - ab, 1 - ab_prev  # Gaussian conditioning
    slope, cond_var = cov / var_t, var_prev - cov**2 / var_t
    x0_weight = ab_prev.sqrt() - slope * ab.sqrt()  # E[x_{t-1} | x_t, x_0] = sqrt(ab_prev) x0 + slope (x_t - sqrt(ab) x0)
    vs_library = max((coef_x0 - sch.posterior_coef_x0).abs().max(), (coef_xt - sch.posterior_coef_xt).abs().max(),
                     (beta_tilde - sch.posterior_variance).abs().max()).item()
    vs_conditioning = max((coef_x0 - x0_weight).abs().max(), (coef_xt - slope).abs().max(),
                          (beta_tilde - cond_var).abs().max()).item()
    print(f"{name:>6}: formulas vs library attributes {'agree' if vs_library < 1e-12 else 'DIFFER'}, "
          f"vs Gaussian conditioning {'agree' if vs_conditioning < 1e-12 else 'DIFFER'} (to 1e-12); "
          f"beta-tilde < beta for every t > 0: {bool((beta_tilde[1:] < b[1:]).all())}")

# %% [markdown]
# And by sampling: fix one pixel's $x_0$, run the forward chain to $x_{t-1}$ and one more step to
# $x_t$, many times. For jointly Gaussian variables the best straight line predicting $x_{t-1}$ from
# $x_t$ *is* the conditional mean, so a least-squares fit should find slope `posterior_coef_xt`,
# intercept `posterior_coef_x0` $\cdot\, x_0$, and a scatter around the line of variance $\tilde\beta_t$:

# %%
n_mc, x0_value = (20000 if FAST else 400000), 0.8
generator = torch.Generator().manual_seed(6)
print(f"{n_mc} samples, x_0 = {x0_value}, linear schedule")
print(f"{'t':>4} {'':>9} {'slope':>8} {'intercept':>10} {'variance':>10}")
for t in (1, 50, 300, 900):
    x_prev = dl.q_sample(torch.full((n_mc, 1), x0_value), torch.full((n_mc,), t - 1), schedule,
                         torch.randn(n_mc, 1, generator=generator))
    x_t = dl.q_step(x_prev, torch.full((n_mc,), t), schedule, noise=torch.randn(n_mc, 1, generator=generator))
    fit_slope = ((x_t - x_t.mean()) * (x_prev - x_prev.mean())).mean() / x_t.var()
    fit_intercept = x_prev.mean() - fit_slope * x_t.mean()
    scatter = (x_prev - fit_intercept - fit_slope * x_t).var()
    print(f"{t:>4} {'fitted':>9} {fit_slope.item():>8.4f} {fit_intercept.item():>10.4f} {scatter.item():>10.2e}")
    print(f"{'':>4} {'posterior':>9} {schedule.posterior_coef_xt[t].item():>8.4f} "
          f"{schedule.posterior_coef_x0[t].item() * x0_value:>10.4f} {schedule.posterior_variance[t].item():>10.2e}")

# %% [markdown]
# At every $t$ the fitted slope, intercept and scatter agree with `posterior_coef_xt`,
# `posterior_coef_x0` $\cdot\, x_0$ and `posterior_variance` to within the sampling error (the
# third or fourth decimal). Note how small $\tilde\beta_t$ is at $t = 1$: one step from the data,
# $x_0$ pins $x_{t-1}$ down almost exactly.
#
# ### The reverse process
#
# Generation has no $x_0$: that is what it is trying to make. So a diffusion model learns a
# **reverse process** $p_\theta(x_{t-1} \mid x_t) = \mathcal N\big(\mu_\theta(x_t, t),\ \sigma_t^2 I\big)$:
# a Gaussian step whose mean a network computes from $x_t$ alone, with a fixed variance $\sigma_t^2$
# (DDPM uses $\beta_t$ or $\tilde\beta_t$). It generates by drawing $x_{T}$ from $\mathcal N(0, I)$ and
# taking $T$ such steps. The step it must imitate is the true reverse conditional
# $q(x_{t-1} \mid x_t)$, which averages the posterior above over every $x_0$ that could have led to
# $x_t$: a mixture of Gaussians, not one. Why should a single Gaussian do? Bayes once more:
# $q(x_{t-1} \mid x_t) \propto q(x_t \mid x_{t-1})\,q(x_{t-1})$. As a function of $x_{t-1}$ the first
# factor is a narrow bump, about $\sqrt{\beta_t}$ wide; over so short a range the logarithm of the
# smooth density $q(x_{t-1})$ is nearly a straight line, and a Gaussian times the exponential of a
# straight line is again a Gaussian. Small steps make the reverse step nearly Gaussian; large jumps do
# not. Check it where the answer is known: pixels that are $-1$ or $+1$ with equal probability, for
# which `ch02.two_point_reverse_density` computes $q(x_s \mid x_t)$ exactly on a grid, for a jump back
# from $t$ to any earlier $s$. We measure how far it is from the Gaussian with the same mean and
# variance (total variation distance: 0 for identical distributions, 1 for disjoint ones), averaged
# over $x_t$ drawn from $q(x_t)$:

# %%
ab_lin = schedule.alpha_bars.numpy()
x_grid = np.linspace(-4, 4, 8001)
t_back, n_xt = 300, (50 if FAST else 400)
rng = np.random.default_rng(7)
xt_draws = np.sqrt(ab_lin[t_back]) * rng.choice([-1.0, 1.0], n_xt) + np.sqrt(1 - ab_lin[t_back]) * rng.standard_normal(n_xt)
for jump in (1, 10, 100, 250):
    s_back = t_back - jump
    distances = [ch02.distance_to_gaussian(x_grid, ch02.two_point_reverse_density(x_grid, x, ab_lin[s_back], ab_lin[t_back]))
                 for x in xt_draws]
    print(f"t = {t_back} back to s = {s_back:>3} ({jump:>3} steps): mean distance to a Gaussian {np.mean(distances):.1e}, "
          f"largest {np.max(distances):.1e} over {n_xt} draws of x_t")
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), layout="constrained")
for ax, s_back in zip(axes, (t_back - 1, t_back - 250)):
    density = ch02.two_point_reverse_density(x_grid, 0.0, ab_lin[s_back], ab_lin[t_back])
    mean = np.trapezoid(x_grid * density, x_grid)
    std = np.sqrt(np.trapezoid((x_grid - mean) ** 2 * density, x_grid))
    ax.plot(x_grid, density, label="exact q(x_s | x_t = 0)")
    ax.plot(x_grid, np.exp(-((x_grid - mean) / std) ** 2 / 2) / (std * np.sqrt(2 * np.pi)), "--", label="Gaussian, same mean and variance")
    ax.set(xlim=(mean - 5 * std, mean + 5 * std), xlabel="x_s", ylabel="density")
    ax.set_title(f"back from t = {t_back} to s = {s_back} ({t_back - s_back} step{'s' if t_back - s_back > 1 else ''})\n"
                 f"distance to the Gaussian {ch02.distance_to_gaussian(x_grid, density):.1e}", fontsize=10)
axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8)
plt.show()

# %% [markdown]
# One step back (left) the exact reverse density and its Gaussian lie on top of each other, and the
# printed distances stay tiny for 1 and 10 steps. A jump of 250 steps (right) is another matter:
# from $x_t = 0$ the way back leads to either data point, and the exact density has two peaks that
# no Gaussian can fit; its distance is large, and averaged over $x_t$ it grows with the size of the
# jump. That is why the forward process takes many small steps: each step backwards is then close to
# a Gaussian, and learning the reverse process comes down to learning its mean, which in the
# posterior above needed the unknown $x_0$. Estimating that from $x_t$ is what the network will do.

# %% [markdown]
# ## 6. One family of paths
#
# Section 2's jump writes every noisy image as a scaled image plus scaled noise,
#
# $$x = \alpha\,x_0 + \sigma\,\varepsilon, \qquad \text{here with } \alpha_t = \sqrt{\bar\alpha_t},\ \ \sigma_t = \sqrt{1-\bar\alpha_t} .$$
#
# (A warning about letters: from here on, plain $\alpha$ and $\sigma$ are the path's two weights. They are not
# section 2's per-step $\alpha_t = 1-\beta_t$, nor section 5's reverse-step $\sigma_t$; and the $s$ of the
# straight path below is not the cosine schedule's small offset.)
#
# A schedule is one way of walking from the data ($\alpha = 1$, $\sigma = 0$) to the noise ($\alpha \approx 0$),
# and DDPM's way keeps $\alpha^2 + \sigma^2 = 1$. Any other pair of weights gives a **Gaussian path** too. What
# a noisy image can tell us about $x_0$ depends only on the ratio of the two weights: multiplying $x$ by a
# number $c$ gives $c\alpha\,x_0 + c\sigma\,\varepsilon$, the same picture at another contrast, with the same
# $\mathrm{SNR} = \alpha^2/\sigma^2$. So every level of every such path *is* a level of DDPM's family, rescaled:
# divide $x$ by $\sqrt{\alpha^2 + \sigma^2}$ and it reads $\sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon$ with
#
# $$\bar\alpha = \frac{\alpha^2}{\alpha^2 + \sigma^2} = \frac{\mathrm{SNR}}{1 + \mathrm{SNR}} .$$
#
# The path the course's image models train on from chapter 4 on is the simplest one, the **straight line**
# from the image to its noise:
#
# $$x_s = (1-s)\,x_0 + s\,\varepsilon, \qquad s \in [0, 1], \qquad \alpha = 1-s,\ \ \sigma = s,$$
#
# the path of rectified flow (Liu et al. 2022), of flow matching with straight paths (Lipman et al. 2023) and
# of Stable Diffusion 3 (Esser et al. 2024). Two differences of notation when you read those papers: several
# of them run time the other way, from noise at $t = 0$ to data at $t = 1$, and Lipman et al. end at a small
# $\sigma_\text{min} > 0$ instead of exactly at the data. It is not variance preserving: at $s = 1/2$ the squares of its
# weights sum to $1/2$. Its implied $\bar\alpha(s) = (1-s)^2 / \big((1-s)^2 + s^2\big)$. Check the rescaling on a
# digit, with one noise draw for both paths:

# %%
# NBVAL_CHECK_OUTPUT
x0_64 = digit.double()
noise_64 = torch.randn(digit.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
for s in (0.1, 0.3, 0.5, 0.7, 0.9):
    x_straight = (1 - s) * x0_64 + s * noise_64
    scale = np.sqrt((1 - s) ** 2 + s**2)
    implied_ab = (1 - s) ** 2 / scale**2
    x_ddpm = np.sqrt(implied_ab) * x0_64 + np.sqrt(1 - implied_ab) * noise_64
    print(f"s = {s}: implied alpha-bar {implied_ab:.4f}; largest |x_s / {scale:.4f} - the DDPM image at that alpha-bar| "
          f"= {(x_straight / scale - x_ddpm).abs().max().item():.1e}")

# %% [markdown]
# Which DDPM levels does the straight path walk through, and how fast? Place DDPM's step $t$ at
# $s = (t+1)/T$ (code index $t$ is the paper's $t+1$), so that both run from the data to pure noise over the
# same interval, and plot the straight path's implied $\bar\alpha$ and SNR beside section 3's two schedules:

# %%
path_s = (torch.arange(T, dtype=torch.float64) + 1) / T  # where DDPM's code step t sits on [0, 1]
straight_ab = (1 - path_s) ** 2 / ((1 - path_s) ** 2 + path_s**2)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for name, sch in schedules.items():
    axes[0].plot(path_s, sch.alpha_bars, label=name)
    axes[1].plot(path_s, sch.snr, label=name)
axes[0].plot(path_s, straight_ab, "k--", label="straight path (implied)")
axes[1].plot(path_s[:-1], (straight_ab / (1 - straight_ab))[:-1], "k--", label="straight path")  # SNR is 0 at s = 1
axes[0].set(xlabel="s = (t + 1) / T", ylabel="alpha-bar", title="implied alpha-bar")
axes[1].set(xlabel="s = (t + 1) / T", ylabel="SNR (log scale)", yscale="log", title="signal-to-noise ratio")
for ax in axes:
    ax.legend()
plt.show()
for name, sch in schedules.items():
    gap = (straight_ab - sch.alpha_bars).abs()
    print(f"largest |implied alpha-bar of the straight path - {name}'s| = {gap.max().item():.3f}, at s = {path_s[gap.argmax()].item():.3f}")
cosine = schedules["cosine"]
for t in (0, 99, 499, 899, 989, 998):  # near the data, in the middle, near the noise
    s = path_s[t].item()
    print(f"s = {s:.3f}: angle on the circle: straight {np.arctan2(s, 1 - s):.3f}, cosine {np.arccos(cosine.alpha_bars[t].sqrt().item()):.3f}; "
          f"log-SNR: straight {2 * np.log((1 - s) / s):+.2f}, cosine {np.log(cosine.snr[t].item()):+.2f}")

# %% [markdown]
# The straight line, walked at constant speed in $s$, passes through the levels much as the cosine schedule
# does: its implied $\bar\alpha$ never differs from the cosine schedule's by more than the largest gap printed
# above, while the linear schedule's is far from both. The reason is section 3's picture of the cosine
# schedule as a rotation: there $\sqrt{\bar\alpha} \approx \cos u$ and $\sqrt{1-\bar\alpha} \approx \sin u$ with
# $u \approx s\pi/2$, and the straight path's $(1-s, s)$, divided by its length $\sqrt{(1-s)^2 + s^2}$, is also a
# point on the quarter circle from $(1, 0)$ to $(0, 1)$, at the angle $\arctan\big(s/(1-s)\big)$. The printed angles
# start at 0, nearly meet at $\pi/4 \approx 0.785$ in the middle and end near $\pi/2$; in between, the two paths
# move along the circle at different speeds (the straight path's angle changes at the rate
# $1/\big((1-s)^2 + s^2\big)$, from 1 at the ends to 2 in the middle, the cosine's at a nearly constant $\pi/2$).
#
# Close in $\bar\alpha$ is not close in SNR everywhere. Near either end $\bar\alpha$ is nearly 0 or 1 and hardly
# moves, while the SNR still changes by large factors: the printed log-SNRs differ by less than 0.1 in the middle
# but by 0.7 to 0.9 near the noise (for $s \to 1$ the SNR ratio tends to $\pi^2/4$: the cosine's
# $\sqrt{\mathrm{SNR}} = \cot u \approx \pi/2 - u \approx (\pi/2)(1-s)$ against the straight path's $(1-s)/s \approx 1-s$) and
# by several units at the first step, where the cosine schedule's small offset (section 3) leaves it noisier.
# For what a network sees, the SNR is the measure that counts; chapter 3 weighs the levels by it.
#
# So DDPM's forward process and the straight path are two members of one family, and what differs is
# bookkeeping: which $(\alpha, \sigma)$ is reached when. A network trained on one path can be asked about a
# level of another: rescale the input as above, find the level with the same SNR, and convert what the network
# predicts into what the other path's formulas expect (chapter 3 writes what a network predicts on each path,
# and those conversions). That is how chapters 4 to 10 run one set of samplers on models of both kinds;
# chapter 4 trains on the straight path.

# %% [markdown]
# **The velocity of a path.** Walk along a path and $x$ moves with the velocity
# $dx/d\tau = \alpha'(\tau)\,x_0 + \sigma'(\tau)\,\varepsilon$, whatever parameter $\tau$ measures the way. Two velocities
# matter in this course:
#
# - DDPM's family as a rotation: since $\alpha^2 + \sigma^2 = 1$, every level of every variance-preserving
#   schedule is exactly $\alpha = \cos\phi$, $\sigma = \sin\phi$ with $\phi = \arccos\sqrt{\bar\alpha}$ (section 3's
#   angle $u_t$ of the cosine schedule approximates it). The velocity in the angle,
#   $dx/d\phi = -\sin\phi\,x_0 + \cos\phi\,\varepsilon = \sqrt{\bar\alpha}\,\varepsilon - \sqrt{1-\bar\alpha}\,x_0$, is called $v$
#   (Salimans & Ho 2022, who proposed it as a network's target; chapter 3). It is the velocity in $\phi$ specifically
#   (in $t$ it would be scaled by $d\phi/dt$, which differs by schedule).
# - The straight path $x_s = (1-s)\,x_0 + s\,\varepsilon$: its velocity is $dx_s/ds = \varepsilon - x_0$, the
#   **flow velocity** that chapter 4's models predict (from chapter 4 on, $v$ means this velocity). From $x_s$ and it
#   both ends follow: $x_s - s\,(\varepsilon - x_0) = (1-s)\,x_0 + s\,\varepsilon - s\,\varepsilon + s\,x_0 = x_0$, and in the same
#   way $x_s + (1-s)\,(\varepsilon - x_0) = \varepsilon$.
#
# Both velocities by central finite differences along their paths, on the digit and noise above (DDPM's path at four
# steps of the linear schedule, the straight path at four values of $s$), and the straight path's two ends:

# %%
# NBVAL_CHECK_OUTPUT
h_step = 1e-6  # for central finite differences


def on_circle(angle):  # DDPM's path at the angle phi: cos(phi) x0 + sin(phi) eps
    return torch.cos(angle) * x0_64 + torch.sin(angle) * noise_64


def on_line(level):  # the straight path at s
    return (1 - level) * x0_64 + level * noise_64


phi = torch.arccos(schedules["linear"].alpha_bars[[10, 250, 600, 950]].sqrt()).reshape(-1, 1, 1, 1)
v_ddpm = torch.cos(phi) * noise_64 - torch.sin(phi) * x0_64  # sqrt(alpha-bar) eps - sqrt(1 - alpha-bar) x0
print(f"DDPM's path at t = 10, 250, 600, 950: |dx/dphi by finite differences - v| = "
      f"{((on_circle(phi + h_step) - on_circle(phi - h_step)) / (2 * h_step) - v_ddpm).abs().max().item():.1e}")
s_line = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64).reshape(-1, 1, 1, 1)
flow_v, x_s = noise_64 - x0_64, on_line(s_line)
print(f"straight path at s = 0.05, 0.3, 0.6, 0.95: |dx/ds by finite differences - (eps - x0)| = "
      f"{((on_line(s_line + h_step) - on_line(s_line - h_step)) / (2 * h_step) - flow_v).abs().max().item():.1e}; "
      f"|x_s - s v - x0| = {(x_s - s_line * flow_v - x0_64).abs().max().item():.1e}; "
      f"|x_s + (1 - s) v - eps| = {(x_s + (1 - s_line) * flow_v - noise_64).abs().max().item():.1e}")

# %% [markdown]
# ## Summary
#
# - The forward process adds Gaussian noise in small steps, $x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon$.
# - It has a closed form, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$: one jump, same distribution as the chain, as measured above.
# - $\bar\alpha_t$ and the SNR describe a schedule; the cosine schedule spends fewer steps on pure noise than the linear one.
# - At $t = T-1$ every image is (almost exactly) $\mathcal N(0, I)$, which is where generation will start.
# - Given $x_0$, the step back is Gaussian: $q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t)$, derived by completing the square and checked against the library, Gaussian conditioning and samples.
# - Without $x_0$ the true step back is a mixture, but for small $\beta_t$ it is close to a Gaussian (measured on two-point data), so the reverse process $p_\theta(x_{t-1} \mid x_t)$ is a chain of Gaussian steps whose means a network must learn.
# - Every noisy image of this chapter is $x = \alpha\,x_0 + \sigma\,\varepsilon$, a point of a Gaussian path; only the ratio $\alpha/\sigma$ matters, so any path is DDPM's family rescaled. The straight path $x_s = (1-s)\,x_0 + s\,\varepsilon$, which chapter 4 trains on, implies a $\bar\alpha$ close to the cosine schedule's (its SNR differs near the ends).
# - A path's velocity is $dx/d\tau = \alpha' x_0 + \sigma' \varepsilon$: on DDPM's circle, in the angle, it is $v = \sqrt{\bar\alpha}\,\varepsilon - \sqrt{1-\bar\alpha}\,x_0$; on the straight path it is the flow velocity $\varepsilon - x_0$.
#
# ## Exercises
#
# **Exercise 1 (implement).** Write `my_q_sample(x0, t, noise, alpha_bars)` returning $x_t$ for a
# batch `x0` of shape (B, 1, H, W), timesteps `t` of shape (B,) and the tensor `alpha_bars` of shape (T,).
# Then run the check.

# %% tags=["solution", "exercise:ch02-q-sample"]
def my_q_sample(x0, t, noise, alpha_bars):
    ab = alpha_bars[t].reshape(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1): one alpha-bar per image
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_q_sample(my_q_sample)

# %% [markdown]
# **Exercise 2 (predict, then check).** Under the linear schedule, at which timestep does
# $\bar\alpha_t$ first drop below 0.5, the point where signal and noise carry equal variance?
# Write your guess *before* computing anything, then compute it and check.

# %% tags=["solution", "exercise:ch02-half-signal-step"]
half_signal_step = int((dl.make_schedule("linear", 1000).alpha_bars < 0.5).nonzero()[0])

# %%
# NBVAL_CHECK_OUTPUT
exercises.check_half_signal_step(half_signal_step)

# %% [markdown] tags=["exercise:ch02-open-large-images"]
# **Exercise 3 (open question).** The slider showed the 128x128 photograph surviving noise that
# erases the 28x28 digit at the same $t$. Why? What would you change in the schedule for 256x256
# images so that the model still spends its steps where the image is being decided? (Hint: think of
# what averaging neighbouring pixels does to the noise and to the signal.)

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** The noise is independent from pixel to pixel; the
# image is not. Averaging a k x k patch divides the noise's variance by k^2 and leaves a smooth
# signal almost unchanged, so at the scale of the photograph's objects (tens of pixels across)
# the signal-to-noise ratio is hundreds of times higher than the per-pixel $\bar\alpha_t/(1-\bar\alpha_t)$
# that the schedule sets. A 28x28 digit's strokes are two or three pixels wide, so little
# averaging is possible and the digit is gone at a $t$ where the photograph's layout still shows.
# For 256x256 images a schedule tuned on small images therefore spends most of its steps at noise
# levels where the layout is already visible, and too few where it is decided. The fix is to
# shift the schedule to more noise at each $t$: divide the signal-to-noise ratio by the factor
# that averaging gains, the ratio of pixel counts, about $(256/28)^2 \approx 84$ from these digits to
# 256x256 images; that is, lower $\log \mathrm{SNR}(t)$ by $2 \ln(256/28) \approx 4.4$ at every $t$
# (Hoogeboom et al. 2023, "simple diffusion", shift by $2 \ln$ of the resolution ratio to their
# 64x64 reference; Stable Diffusion 3 shifts its flow-matching times by the same reasoning). Adding noise at
# several resolutions, or diffusing in a smaller latent space (chapter 10), are other answers.
#
# **Rubric.** (1) Explains that averaging n pixels divides independent noise's variance by n but
# keeps a smooth signal, so a larger image has a higher SNR at the scale of its structure;
# (2) concludes that the same $t$ destroys less of a large image's layout; (3) proposes a schedule
# with less signal at each $t$ for larger images, with a size for the shift (a factor growing with
# the pixel count); (4) optionally cites the shifted schedules of simple diffusion or SD3. Points
# (1) and (3) are the core; a schedule change without the reason earns half.

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
