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
# # Chapter 3: Noise prediction — learning to undo the damage
#
# Chapter 2 destroyed images on purpose: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$.
# To generate, we must run that backwards, and for that a network only has to answer one question
# at each step: **which noise was added?**
#
# **After this chapter you can**
# - recover an estimate $\hat x_0$ from $x_t$ and a noise estimate, and convert between the $\varepsilon$, $x_0$, $v$ and flow-velocity parametrisations;
# - write the loss on each of those targets as a weighted noise-prediction loss, and compare objectives by the weight they put on each log-SNR;
# - compute the *ideal* denoiser $\mathbb E[x_0 \mid x_t]$ of a finite data set, and explain why it can only reproduce its training images;
# - derive the noise-prediction loss from the variational bound on the log-likelihood, and say what dropping its weights changes;
# - read the ideal denoiser as Tweedie's formula: a noise predictor is a scaled score $\nabla_{x_t} \log p_t(x_t)$;
# - compare a trained noise predictor with the ideal one across timesteps, and read a loss-by-timestep curve;
#
# **Assumes**: chapter 2 (the closed form $q(x_t \mid x_0)$), the softmax, mean squared error, the
# Kullback-Leibler divergence and a gradient taken by autograd (for the theory at the ends of sections 1 and 2).

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
from diffusion_lib.course import ch03, exercises
from diffusion_lib.course.plots import show_grid
from diffusion_lib.training import load_training_data

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
schedule = dl.make_schedule("linear", 1000)
test_images, _ = dl.load_mnist(train=False)
train_images, _ = dl.load_mnist(train=True)

# %% [markdown]
# ## 1. Why predict the noise?
#
# Given $x_t$ and the noise $\varepsilon$ that made it, the clean image follows by rearranging the
# closed form (DDPM Eq. 15):
#
# $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon}{\sqrt{\bar\alpha_t}} .$$
#
# So a network $\varepsilon_\theta(x_t, t)$ that predicts the noise gives us $\hat x_0$ for free.
# Predicting $\varepsilon$ is a well-scaled regression at every $t$: the target always has unit
# variance, while $x_0$ is nearly invisible at large $t$. Two other targets are common: $x_0$ itself,
# and the "velocity" $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ (Salimans & Ho 2022).
# All three carry the same information given $x_t$. First by hand, then with the library:

# %%
# NBVAL_CHECK_OUTPUT
x0 = test_images[:4]
t = torch.tensor([10, 250, 600, 950])
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
xt = dl.q_sample(x0, t, schedule, eps)
ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)  # float64: form the square roots there, then round to float32
sqrt_ab, sqrt_one_minus_ab = ab.sqrt().float(), (1 - ab).sqrt().float()
x0_by_hand = (xt - sqrt_one_minus_ab * eps) / sqrt_ab
v = sqrt_ab * eps - sqrt_one_minus_ab * x0
print(f"x0 recovered by hand, largest error:         {(x0_by_hand - x0).abs().max().item():.1e}")
print(f"library x0_from_eps vs by hand:              {(dl.x0_from_eps(xt, t, eps, schedule) - x0_by_hand).abs().max().item():.1e}")
print(f"library v target vs by hand:                 {(dl.v_from_eps_x0(eps, x0, t, schedule) - v).abs().max().item():.1e}")
print(f"eps recovered from v, largest error:         {(dl.eps_from_v(xt, t, v, schedule) - eps).abs().max().item():.1e}")
print(f"x0 recovered from v, largest error:          {(dl.x0_from_v(xt, t, v, schedule) - x0).abs().max().item():.1e}")
print("sqrt(alpha-bar_t) at t = " + ", ".join(f"{int(step)}: {value:.4f}" for step, value in zip(t, sqrt_ab.flatten())))

# %% [markdown]
# (The errors are float32 rounding. The largest, $\hat x_0$ by hand, divides by $\sqrt{\bar\alpha_t}$, which is
# 0.0103 at $t = 950$, so the rounding of $x_t$ grows nearly a hundredfold; the $v$ conversions only multiply
# and add, and their errors stay near float32's resolution.)
#
# **The velocity of a path.** Chapter 2 (section 6) defined a path's velocity, $dx/d\tau = \alpha'(\tau)\,x_0 + \sigma'(\tau)\,\varepsilon$:
# Salimans & Ho's $v$ above is the velocity of DDPM's path in the angle $\phi = \arccos\sqrt{\bar\alpha}$ (where
# $\alpha = \cos\phi$, $\sigma = \sin\phi$), and the **flow velocity** $\varepsilon - x_0$ is the straight path's, the target of
# chapter 4's models; from $x_s$ and the flow velocity, $x_0 = x_s - s\,v$ and $\varepsilon = x_s + (1-s)\,v$. Given $x$
# and the path, $\varepsilon$ gives $x_0$ where $\alpha \neq 0$, $x_0$ gives $\varepsilon$ where $\sigma \neq 0$, and the velocity gives both
# everywhere (solve $x = \alpha x_0 + \sigma\varepsilon$ and $dx/d\tau = \alpha' x_0 + \sigma'\varepsilon$ for $x_0$ and $\varepsilon$: their determinant $\alpha\sigma' - \alpha'\sigma$ is
# $\cos^2\phi + \sin^2\phi = 1$ on the circle and $(1-s) + s = 1$ on the line), so a network may be trained to output any
# of them. (Here $\alpha$ and $\sigma$ are the path's weights, as in chapter 2's section 6; the per-step
# $\alpha_t = 1-\beta_t$ and reverse-step $\sigma_t$ of the bound below, chapter 2's sections 2 and 5, are other letters.)
#
# An error in one target is a scaled error in another. A noise estimate $\hat\varepsilon$ implies the clean
# image $\hat x_0 = (x - \sigma\,\hat\varepsilon)/\alpha$, so $\hat x_0 - x_0 = -(\sigma/\alpha)\,(\hat\varepsilon - \varepsilon)$, and with
# $\mathrm{SNR} = \alpha^2/\sigma^2$:
#
# | target | its error | its squared error, as a multiple of $\lVert\hat\varepsilon - \varepsilon\rVert^2$ |
# | --- | --- | --- |
# | $x_0$ | $-\frac{\sigma}{\alpha}\,(\hat\varepsilon - \varepsilon)$ | $1/\mathrm{SNR}$ |
# | $v$ on DDPM's path | $\alpha(\hat\varepsilon - \varepsilon) + \frac{\sigma^2}{\alpha}(\hat\varepsilon - \varepsilon) = \frac{1}{\sqrt{\bar\alpha}}(\hat\varepsilon - \varepsilon)$ | $1/\bar\alpha = 1 + 1/\mathrm{SNR}$ |
# | flow velocity, straight path | $(\hat\varepsilon - \varepsilon) + \frac{s}{1-s}(\hat\varepsilon - \varepsilon) = \frac{1}{1-s}(\hat\varepsilon - \varepsilon)$ | $1/(1-s)^2$ |
#
# On DDPM's path the velocity estimate is $\hat v = \alpha\hat\varepsilon - \sigma\hat x_0$, and the middle row uses
# $\alpha^2 + \sigma^2 = 1$; on the straight path ($\alpha = 1-s$, $\sigma = s$) it is $\hat\varepsilon - \hat x_0$ with
# $\hat x_0 = (x_s - s\,\hat\varepsilon)/(1-s)$, whose error is $-\frac{s}{1-s}(\hat\varepsilon - \varepsilon)$. So training on any of these targets is training on
# $\varepsilon$ with a weight that depends on the noise level. The cell checks the three weights for an arbitrary
# (random) $\hat\varepsilon$:

# %%
# NBVAL_CHECK_OUTPUT
x0_64, eps_64 = x0.double(), eps.double()
eps_guess = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # any estimate


def squared(error):  # (B,) squared norm per image
    return error.pow(2).flatten(1).sum(1)


# DDPM's path at the four t above, as a rotation (chapter 2): x_t = cos(phi) x0 + sin(phi) eps, cos(phi) = sqrt(alpha-bar_t)
phi = torch.arccos(schedule.alpha_bars[t].sqrt()).reshape(-1, 1, 1, 1)
x_t, v_64 = torch.cos(phi) * x0_64 + torch.sin(phi) * eps_64, torch.cos(phi) * eps_64 - torch.sin(phi) * x0_64
# The straight path at four levels s, and its velocity
s_line = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64).reshape(-1, 1, 1, 1)
flow_v, x_s = eps_64 - x0_64, (1 - s_line) * x0_64 + s_line * eps_64

# The weights: each target's squared error divided by the noise estimate's
ab_64 = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
snr = ab_64 / (1 - ab_64)
x0_guess = (x_t - (1 - ab_64).sqrt() * eps_guess) / ab_64.sqrt()
v_guess = ab_64.sqrt() * eps_guess - (1 - ab_64).sqrt() * x0_guess
eps_error = squared(eps_guess - eps_64)
flow_x0_guess = (x_s - s_line * eps_guess) / (1 - s_line)
flow_v_guess = eps_guess - flow_x0_guess
print(f"{'level':>12} {'x0: ratio':>10} {'1/SNR':>10} {'v: ratio':>10} {'1/ab':>10}")
for k in range(len(t)):
    print(f"{'t = ' + str(int(t[k])):>12} {(squared(x0_guess - x0_64) / eps_error)[k].item():>10.4g} {1 / snr.flatten()[k].item():>10.4g} "
          f"{(squared(v_guess - v_64) / eps_error)[k].item():>10.4g} {1 / ab_64.flatten()[k].item():>10.4g}")
print(f"{'level':>12} {'flow: ratio':>11} {'1/(1-s)^2':>10}")
for k in range(len(s_line)):
    print(f"{'s = ' + str(s_line.flatten()[k].item()):>12} {(squared(flow_v_guess - flow_v) / eps_error)[k].item():>11.4g} "
          f"{1 / (1 - s_line.flatten()[k].item()) ** 2:>10.4g}")

# %% [markdown]
# **Why a squared error on $\varepsilon$? The variational bound.** A diffusion model is a latent-variable
# model: $p_\theta(x_0) = \int p(x_T) \prod_{t=1}^{T} p_\theta(x_{t-1} \mid x_t)\, dx_{1:T}$, with $p(x_T) = \mathcal N(0, I)$.
# This integral cannot be computed, but Jensen's inequality with the forward chain $q(x_{1:T} \mid x_0)$ as
# the distribution of the latents bounds it, and the bound regroups into one term per step
# (Ho et al. 2020, "DDPM", Eq. 5):
#
# $$-\log p_\theta(x_0) \le \mathbb E_q\Big[\underbrace{\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t=2}^{T} \underbrace{\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
# \ \underbrace{-\log p_\theta(x_0 \mid x_1)}_{L_0}\Big] .$$
#
# $L_T$ holds no parameters. Each $L_{t-1}$ compares the model's reverse step with the *posterior* of the
# forward process, which is Gaussian because, by Bayes' rule, $q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)$
# is a product of two Gaussians in $x_{t-1}$ (chapter 2, section 5 derives it; DDPM Eqs. 6-7; `dl.q_posterior`):
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(\tilde\mu_t, \tilde\beta_t I\big), \qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t, \qquad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# Give the model's step the same variance, $p_\theta(x_{t-1} \mid x_t) = \mathcal N(\mu_\theta, \sigma_t^2 I)$ with $\sigma_t^2 = \tilde\beta_t$. Three steps:
#
# 1. **KL of two Gaussians with one variance.** For $x \sim \mathcal N(m_1, s^2 I)$ in $D$ dimensions,
#    $\log \mathcal N(x; m_1, s^2 I) - \log \mathcal N(x; m_2, s^2 I) = \big(\lVert x - m_2\rVert^2 - \lVert x - m_1\rVert^2\big)/(2s^2)$;
#    its expectation uses $\mathbb E\lVert x - m_1\rVert^2 = Ds^2$ and $\mathbb E\lVert x - m_2\rVert^2 = \lVert m_1 - m_2\rVert^2 + Ds^2$, so
#    $\mathrm{KL} = \lVert m_1 - m_2\rVert^2 / (2s^2)$: a scaled squared distance of the means.
# 2. **The posterior mean through $\varepsilon$.** Put $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}$ into $\tilde\mu_t$ and use
#    $\bar\alpha_t = \alpha_t \bar\alpha_{t-1}$: the coefficients of $x_t$ add up to $\frac{\beta_t + \alpha_t(1-\bar\alpha_{t-1})}{\sqrt{\alpha_t}\,(1-\bar\alpha_t)} = \frac{1}{\sqrt{\alpha_t}}$, so
#    $\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon\big)$ (DDPM Eq. 10).
# 3. **The model's mean through $\varepsilon_\theta$.** Parametrise $\mu_\theta$ the same way, with the network's $\varepsilon_\theta(x_t, t)$
#    in place of the unknown $\varepsilon$ (DDPM Eq. 11; the same as putting its $\hat x_0$ into $\tilde\mu_t$). The means then differ by
#    $\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}(\varepsilon - \varepsilon_\theta)$, and
#
# $$L_{t-1} = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}\,\big\lVert \varepsilon - \varepsilon_\theta(x_t, t)\big\rVert^2 = w_t\,\big\lVert \varepsilon - \varepsilon_\theta(x_t, t)\big\rVert^2 \qquad \text{(DDPM Eq. 12)}.$$
#
# The bound is a *weighted* noise-prediction error. DDPM's loss $L_\text{simple} = \mathbb E_{t, x_0, \varepsilon}\lVert \varepsilon - \varepsilon_\theta\rVert^2$
# drops $w_t$ (Ho et al. 2020, Sec. 3.4, who found it trains better and gives better samples). Check the last
# equation on numbers: a test digit, its noise, a timestep and an arbitrary $\hat\varepsilon$ (here random); the
# two Gaussians' means come from the library's posterior, the KL from `torch.distributions`; first the
# posterior itself against Bayes' rule on a grid, for one pixel.

# %%
# NBVAL_CHECK_OUTPUT
step = torch.tensor([300])  # code index; the library's t is the paper's t + 1 (see diffusion_lib/schedules.py)
generator = torch.Generator().manual_seed(4)
x0_64 = test_images[:1].double()
eps_64, eps_hat = torch.randn(2, *x0_64.shape, generator=generator, dtype=torch.float64)
xt_64 = dl.q_sample(x0_64, step, schedule, eps_64)

# Bayes' rule on a grid of x_{t-1} for pixel 400: q(x_t | x_{t-1}) q(x_{t-1} | x_0), normalised
pixel, grid = 400, torch.linspace(-6, 6, 200_001, dtype=torch.float64)
beta, ab_prev = schedule.betas[step], schedule.alpha_bars_prev[step]
log_joint = (-(xt_64.flatten()[pixel] - (1 - beta).sqrt() * grid) ** 2 / (2 * beta)
             - (grid - ab_prev.sqrt() * x0_64.flatten()[pixel]) ** 2 / (2 * (1 - ab_prev)))
density = (log_joint - log_joint.max()).exp()
density = density / density.sum()
grid_mean = (density * grid).sum()
grid_var = (density * (grid - grid_mean) ** 2).sum()
post_mean, post_var = dl.q_posterior(x0_64, xt_64, step, schedule)
print(f"posterior of one pixel: Bayes on a grid mean {grid_mean:.6f}, variance {grid_var:.4e}; "
      f"dl.q_posterior {post_mean.flatten()[pixel]:.6f}, {post_var.item():.4e}")

# The bound's term: KL between the posterior and the model's step with the same variance
model_mean, _ = dl.q_posterior(dl.x0_from_eps(xt_64, step, eps_hat, schedule), xt_64, step, schedule)
std = post_var.sqrt().expand_as(post_mean)
kl = torch.distributions.kl_divergence(torch.distributions.Normal(post_mean, std),
                                       torch.distributions.Normal(model_mean, std)).sum()
weights = ch03.bound_weight(schedule)  # (T,) w_t for sigma_t^2 = beta-tilde_t
alpha_t = schedule.alphas[step]
eq10_mean = (xt_64 - beta / (1 - schedule.alpha_bars[step]).sqrt() * eps_hat) / alpha_t.sqrt()
print(f"model mean: posterior at x0_hat vs Eq. 10 with eps_hat, largest difference {(model_mean - eq10_mean).abs().max():.1e}")
print(f"KL from the two Gaussians: {kl:.6f}; w_t ||eps - eps_hat||^2: {weights[step].item() * (eps_64 - eps_hat).pow(2).sum():.6f} "
      f"(with the next step's weight instead: {weights[step + 1].item() * (eps_64 - eps_hat).pow(2).sum():.6f})")

# %% [markdown]
# Bayes' rule on a grid and the library's posterior agree, the model's mean is Eq. 10 with $\hat\varepsilon$ in
# place of $\varepsilon$, and the KL and $w_t \lVert \varepsilon - \hat\varepsilon\rVert^2$ agree to every printed digit,
# while the weight of the next step already differs from the second decimal on. What does
# $L_\text{simple}$ change by setting every $w_t$ to 1? Plot $w_t$ for this chapter's linear schedule:

# %%
steps_all = np.arange(1, schedule.T)  # code t = 0 is the decoder term L_0, where beta-tilde = 0 and w is infinite
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.plot(steps_all, weights[1:].numpy())
ax.set(xlabel="t", ylabel="w_t (log scale)", yscale="log", title="the bound's weight on ||eps - eps_theta||^2; L_simple uses 1")
plt.show()
lowest = int(weights[1:].argmin()) + 1
print("w_t at t = " + ", ".join(f"{k}: {weights[k].item():.4f}" for k in (1, 10, 100, lowest, 999)) + f" (the smallest is at t = {lowest})")
print(f"relative to t = 1, L_simple gives t = 100 {(weights[1] / weights[100]).item():.0f}x, t = {lowest} "
      f"{(weights[1] / weights[lowest]).item():.0f}x and t = 999 {(weights[1] / weights[999]).item():.0f}x more weight than the bound")

# %% [markdown]
# The bound weighs the least noisy steps most: $w_1$ is 59 times $w_{100}$. Past $t = 100$ the weight is nearly
# flat on this log scale: it bottoms out at $t = 349$, half its value at $t = 100$, and climbs back to the same
# 0.0102 at $t = 999$. $L_\text{simple}$ weighs every step alike, so relative to the bound it takes weight away
# from the first few dozen steps, where the network only has to remove a trace of noise, and gives it to all
# the others: most to the middle ($t = 349$ gains 120 times on $t = 1$), and as much to $t = 100$ as to
# $t = 999$ (59 times each); not to the largest $t$ in particular. Ho et al. (Sec. 3.4) argue that this lets the network spend its
# capacity on the harder denoising at larger $t$ (harder to recover $x_0$; the noise itself is easiest to name
# there, as section 3 measures), and measured better samples with it. The price: a model
# trained on $L_\text{simple}$ is not trained for the best likelihood (Nichol & Dhariwal 2021 learn $\sigma_t$ and
# add the bound back as a small extra term to get both).
#
# **Every objective is a weighting of the noise levels.** The table above turned each target's loss into
# a weighted $\varepsilon$-loss; how often each noise level is drawn is a second weight. Put both on one axis that
# fits every path, the log signal-to-noise ratio $\lambda = \log \mathrm{SNR}$ (levels of two paths with the same
# SNR hold the same information, chapter 2, section 6), and ask how much of each objective's total weight
# falls on each unit of $\lambda$:
#
# - the bound: step $t$ covers the interval $\Delta\lambda_t = \lambda_{t-1} - \lambda_t$, so its weight per unit of $\lambda$ is $w_t / \Delta\lambda_t$;
# - $L_\text{simple}$: each of the $T$ steps is drawn with probability $1/T$ and weighted 1, so $1/(T\,\Delta\lambda_t)$, on the linear or the cosine schedule;
# - the flow loss as chapter 4 trains it: $s = \mathrm{sigmoid}(z)$ with $z \sim \mathcal N(0, 1)$ (Esser et al. 2024). On the
#   straight path $\lambda = 2\log\big((1-s)/s\big) = -2z$, so $\lambda \sim \mathcal N(0, 4)$, and each example's weight on
#   the $\varepsilon$-loss is $1/(1-s)^2 = (1 + e^{-\lambda/2})^2$ (the table).
#
# Each curve is scaled to total 1, so the plot compares where the objectives spend their weight (code
# $t = 0$, the decoder term $L_0$, is left out: its $\tilde\beta_0 = 0$ makes its weight infinite). For the bound
# there is an exact expression: with $\sigma_t^2 = \tilde\beta_t$, the weight simplifies to
# $w_t = \beta_t / \big(2\alpha_t(1-\bar\alpha_{t-1})\big)$, and the ratio of consecutive SNRs is
# $e^{\Delta\lambda_t} = \mathrm{SNR}_{t-1}/\mathrm{SNR}_t = (1-\bar\alpha_t)/\big(\alpha_t(1-\bar\alpha_{t-1})\big)$, so
# $e^{\Delta\lambda_t} - 1 = (1 - \bar\alpha_t - \alpha_t + \bar\alpha_t)/\big(\alpha_t(1-\bar\alpha_{t-1})\big) = \beta_t/\big(\alpha_t(1-\bar\alpha_{t-1})\big)$ and
#
# $$w_t = \tfrac12\big(e^{\Delta\lambda_t} - 1\big), \qquad \frac{w_t}{\Delta\lambda_t} = \frac{e^{\Delta\lambda_t} - 1}{2\,\Delta\lambda_t} \to \frac12 \quad \text{as } \Delta\lambda_t \to 0 ,$$
#
# always above $\tfrac12$: barely where a step spans little log-SNR, more where it spans more (the first steps, as
# printed below). The cell checks the identity too:

# %%
def per_unit_lambda(sch, step_weights):
    """(lambda_t, weight per unit of lambda) at code t = 1..T-1, for weights (T,) on the steps, scaled to total 1."""
    lam = sch.snr.log()
    gap = lam[:-1] - lam[1:]  # Delta lambda_t = lambda_{t-1} - lambda_t
    return lam[1:], step_weights[1:] / gap / step_weights[1:].sum()


lam_grid = torch.linspace(-20, 20, 4001, dtype=torch.float64)
flow_density = torch.exp(-lam_grid**2 / 8) / (8 * torch.pi) ** 0.5 * (1 + torch.exp(-lam_grid / 2)) ** 2
flow_density = flow_density / torch.trapezoid(flow_density, lam_grid)
curves = {"the bound (linear schedule)": per_unit_lambda(schedule, weights),
          "L_simple, linear schedule": per_unit_lambda(schedule, torch.ones(schedule.T, dtype=torch.float64)),
          "L_simple, cosine schedule": per_unit_lambda(dl.make_schedule("cosine", 1000), torch.ones(1000, dtype=torch.float64)),
          "flow matching (chapter 4)": (lam_grid, flow_density)}
fig, ax = plt.subplots(figsize=(7, 3.4))
for name, (lam, density) in curves.items():
    ax.plot(lam, density, label=name)
ax.set(xlabel="log SNR (noisier to the left)", ylabel="weight per unit of log SNR", xlim=(-12, 12),
       title="where each objective puts its weight on ||eps - eps_theta||^2")
ax.legend(fontsize=8)
plt.show()
ratio = weights[1:] / (schedule.snr.log()[:-1] - schedule.snr.log()[1:])
print("the bound's w_t / Delta lambda_t at t = " + ", ".join(f"{k}: {ratio[k - 1].item():.4f}" for k in (1, 2, 10, 100, 500, 999))
      + f"; largest from t = 100 on: {ratio[99:].max().item():.4f}")
gaps = schedule.snr.log()[:-1] - schedule.snr.log()[1:]
print(f"largest |w_t - (exp(Delta lambda_t) - 1) / 2| over t = 1..999: {(weights[1:] - gaps.expm1() / 2).abs().max().item():.1e}")
print(f"the cosine schedule's log SNR runs from {curves['L_simple, cosine schedule'][0].max().item():.1f} at t = 1 "
      f"to {curves['L_simple, cosine schedule'][0].min().item():.1f} at t = 999")
for name, (lam, density) in curves.items():
    order = lam.argsort()  # the trapezoid rule on increasing lambda
    lam, density = lam[order], density[order]
    noisy = torch.trapezoid(density * (lam < 0), lam) / torch.trapezoid(density, lam)
    print(f"{name:<28} share of its weight on levels with SNR < 1: {100 * noisy.item():.0f}%")
peak = lam_grid[flow_density.argmax()]
print(f"flow matching's weight peaks at log SNR {peak.item():.2f}, that is s = {torch.sigmoid(-peak / 2).item():.3f}")

# %% [markdown]
# The identity holds to rounding, and in $\lambda$ the bound is nearly flat: $w_t/\Delta\lambda_t$ falls from 0.7609 at
# $t = 1$ to 0.5385 at $t = 10$, and from $t = 100$ on it is never above the largest value printed, within about one
# percent of $1/2$; the first steps span too much log-SNR for the limit. (These are the unscaled ratios; in the
# plot, scaled to total 1, the same flat stretch sits at a lower height.)
# This is the discrete form of a result of Kingma et al. (2021, "variational diffusion models"): in continuous
# time the bound is $\tfrac12 \int \lVert \varepsilon - \hat\varepsilon_\lambda \rVert^2 d\lambda$, every log-SNR weighted alike.
# The steep curve of $w_t$ above was the linear schedule's uneven spacing of $\lambda$, not a preference of the bound.
# $L_\text{simple}$ inherits the spacing of its schedule: on the linear schedule 74% of its weight falls on the
# noisy side of SNR = 1; the cosine schedule centres it on SNR = 1, with 51% on the noisy side (its range, printed
# above, is cut off by the plot). Flow matching puts 90% of its weight on levels
# where the noise dominates, with its peak at $\log \mathrm{SNR} = -3.38$, that is $s = 0.844$: its draw of $s$ is
# symmetric about $\lambda = 0$, and the factor $1/(1-s)^2$ grows without bound towards pure noise. None of
# them is the bound; each is a choice of which noise levels to learn best, and chapter 4 measures the loss a
# trained model reaches at each level.


# %% [markdown]
# ## 2. The ideal denoiser, and why it is not what we want
#
# Suppose the training set has $N$ points $x^{(1)}, \dots, x^{(N)}$. Seeing $x_t$, which one was it?
# Bayes' rule with the Gaussian likelihood $q(x_t \mid x^{(i)})$ gives softmax weights, and the
# best possible (minimum squared error) estimate is their weighted average:
#
# $$p(i \mid x_t) = \operatorname{softmax}_i\!\Big(-\frac{\lVert x_t - \sqrt{\bar\alpha_t}\,x^{(i)}\rVert^2}{2(1-\bar\alpha_t)}\Big),
# \qquad \mathbb E[x_0 \mid x_t] = \sum_i p(i \mid x_t)\, x^{(i)} .$$
#
# A network trained to perfection on these $N$ points would output exactly the $\varepsilon$ this
# implies. Let us build it for eight 2-D points by hand, compare with `dl.ideal_x0`, and watch where it sends noisy points.

# %%
points = dl.make_toy("moons", 8, torch.Generator().manual_seed(0)).double()
xt_2d = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), sharex=True, sharey=True, layout="constrained")
summary = []
for ax, t_value in zip(axes, [900, 300, 30]):
    steps = torch.full((500,), t_value)
    ab_t = schedule.alpha_bars[t_value]
    logits = -((xt_2d[:, None, :] - ab_t.sqrt() * points[None]) ** 2).sum(-1) / (2 * (1 - ab_t))  # (500, 8)
    by_hand = torch.softmax(logits, dim=1) @ points
    assert torch.allclose(by_hand, dl.ideal_x0(xt_2d, steps, points, schedule))
    ax.scatter(*by_hand.T, s=8, alpha=0.5, label="E[x0 | x_t] of 500 noisy points")
    ax.scatter(*points.T, marker="x", color="k", s=60, label="the 8 training points")
    ax.set(title=f"t = {t_value}, alpha-bar = {ab_t.item():.3f}", xlabel="x1")
    to_mean = (by_hand - points.mean(0)).norm(dim=1).max().item()
    near_a_point = (torch.cdist(by_hand, points).min(1).values < 0.05).double().mean().item()
    summary.append(f"t = {t_value}: farthest estimate from the points' mean {to_mean:.2f}; within 0.05 of a training point {near_a_point:.0%}")
axes[0].set_ylabel("x2")
fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=9)
plt.show()
print("\n".join(summary))

# %% [markdown]
# At high noise ($t = 900$) every estimate is the average of all points, give or take 0.07; as $t$ falls it
# snaps onto the single nearest training point (at $t = 30$, 92% of the estimates lie within 0.05 of one; the
# rest lie between neighbouring training points, where $x_t$ is about equally near to two of them). Sampling with it (DDIM from chapter 5, here only as a black box) therefore
# can only return training images. Try it on MNIST with a small training set:

# %%
memory = train_images[: (64 if FAST else 512)].double()
ideal_eps = dl.ideal_eps_fn(memory, schedule)
samples = dl.sample_loop(ideal_eps, (16, 1, 28, 28), schedule, "ddim", steps=(20 if FAST else 50),
                         generator=torch.Generator().manual_seed(3), x_T=torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
nearest = torch.cdist(samples.flatten(1), memory.flatten(1)).min(1).values
print(f"{len(samples)} samples from the ideal denoiser of {len(memory)} training images: "
      f"distance to the nearest training image: max {nearest.max().item():.2e} (pixels span 2.0)")
display(show_grid(samples, "samples from the ideal denoiser: every one is a training image", ncols=8))

# %% [markdown]
# That is **memorisation**. A generative model should produce *new* digits, so we do not want the
# minimiser of the training loss over all functions; we want a smooth network whose limited
# capacity and inductive biases make it *generalise*: close to the ideal denoiser where data are
# dense (high noise), and interpolating between training images where they are not (low noise).
#
# **The same denoiser, seen as a score.** The *score* of the noisy data is $\nabla_{x_t} \log p_t(x_t)$, the
# direction in which the density of $x_t$ grows fastest. Write $p_t(x_t) = \int q(x_t \mid x_0)\, p(x_0)\, dx_0$ with
# $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$, whose gradient in $x_t$ is
# $-q(x_t \mid x_0)\,(x_t - \sqrt{\bar\alpha_t}\,x_0)/(1-\bar\alpha_t)$. Differentiate under the integral, divide by $p_t(x_t)$,
# and recognise $q(x_t \mid x_0)\,p(x_0)/p_t(x_t) = p(x_0 \mid x_t)$ (Bayes' rule):
#
# $$\nabla_{x_t} \log p_t(x_t) = -\frac{\mathbb E_{p(x_0 \mid x_t)}\big[x_t - \sqrt{\bar\alpha_t}\,x_0\big]}{1-\bar\alpha_t}
# = -\frac{x_t - \sqrt{\bar\alpha_t}\,\mathbb E[x_0 \mid x_t]}{1-\bar\alpha_t} .$$
#
# Solved for the posterior mean, this is **Tweedie's formula** (Robbins 1956; Efron 2011):
#
# $$\mathbb E[x_0 \mid x_t] = \frac{x_t + (1-\bar\alpha_t)\,\nabla_{x_t} \log p_t(x_t)}{\sqrt{\bar\alpha_t}} ,$$
#
# and putting it into $\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0)/\sqrt{1-\bar\alpha_t}$ gives the best noise prediction
#
# $$\varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\;\nabla_{x_t} \log p_t(x_t) .$$
#
# So a noise predictor is a score estimator, scaled by $-\sqrt{1-\bar\alpha_t}$: the bridge to score-based models
# (Song et al. 2021). Nothing here assumed a finite data set. For one, $p_t$ is a mixture of $N$ Gaussians
# centred at $\sqrt{\bar\alpha_t}\,x^{(i)}$,
#
# $$\log p_t(x_t) = \operatorname{logsumexp}_i\Big(-\frac{\lVert x_t - \sqrt{\bar\alpha_t}\,x^{(i)}\rVert^2}{2(1-\bar\alpha_t)}\Big) - \log N - \frac D2 \log\big(2\pi(1-\bar\alpha_t)\big),$$
#
# and the gradient of a logsumexp is a softmax: Tweedie's formula for this mixture is the softmax-weighted
# average above. The ideal denoiser *is* Tweedie's formula. Check with autograd: `ch03.mixture_log_density`
# builds this log-density, `torch.autograd.grad` differentiates it, and the results are compared with the
# library's ideal denoiser for the same training digits as the samples above, at three noise levels:

# %%
for t_value in (50, 300, 700):
    steps = torch.full((8,), t_value)
    ab_t = schedule.alpha_bars[t_value]
    noisy = dl.q_sample(test_images[:8].double(), steps, schedule,
                        torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(t_value), dtype=torch.float64))
    noisy.requires_grad_(True)
    log_density = ch03.mixture_log_density(noisy, steps, memory, schedule)  # (8,)
    score, = torch.autograd.grad(log_density.sum(), noisy)  # each image's log-density depends on that image only
    tweedie_x0 = (noisy + (1 - ab_t) * score) / ab_t.sqrt()
    noisy = noisy.detach()
    assert torch.allclose(tweedie_x0, dl.ideal_x0(noisy, steps, memory, schedule), atol=1e-9)
    print(f"t = {t_value:3d}: largest |score| {score.abs().max():7.2f}; Tweedie's x0 vs dl.ideal_x0: "
          f"{(tweedie_x0 - dl.ideal_x0(noisy, steps, memory, schedule)).abs().max():.1e}; "
          f"-sqrt(1 - ab) score vs dl.ideal_eps_fn: {(-(1 - ab_t).sqrt() * score - ideal_eps(noisy, steps)).abs().max():.1e}")

# %% [markdown]
# ## 3. A learned noise predictor next to the ideal one
#
# **2-D first.** Train the library's MLP on two moons with the loss of DDPM
# (Algorithm 1, $L_\text{simple}$): $\lVert \varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon, t)\rVert^2$.
# Then measure, at each $t$, the noise-prediction error on **held-out** points, for the network and
# for the ideal denoiser of 2,000 of its training points (the function a network trained on those
# 2,000 would become if it memorised them perfectly; all of them would make the ideal denoiser slower to evaluate).

# %%
moons_config = dl.TrainConfig(data="moons", steps=(300 if FAST else 3000), batch_size=256, lr=3e-3, T=1000, ema_decay=0.99, seed=0,
                              objective="ddpm", schedule="linear", prediction="eps")  # this chapter's DDPM
train_start = time.perf_counter()
moons = dl.train(moons_config, progress=False)
train_seconds = time.perf_counter() - train_start
moons_train, _ = load_training_data(moons_config)  # the exact points it trained on
held_out = dl.make_toy("moons", 2000, torch.Generator().manual_seed(7))
timesteps = np.linspace(0, 999, 12 if FAST else 25).astype(int)
learned_2d = dl.as_eps_fn(moons.ema_model, schedule)
ideal_2d = dl.ideal_eps_fn(moons_train[:2000], schedule)
errors_2d = {name: ch03.eps_error_by_timestep(fn, held_out, schedule, timesteps, torch.Generator().manual_seed(8))
             for name, fn in (("learned MLP", learned_2d), ("ideal for 2,000 training points", ideal_2d))}
ch03.plot_error_by_timestep(timesteps, errors_2d, "noise-prediction MSE on held-out points", "two moons: error by timestep")
print(f"trained {moons_config.steps} steps on {len(moons_train):,} points in {train_seconds:.0f} s")
for i in (1, len(timesteps) // 2, len(timesteps) - 1):
    print(f"at t = {timesteps[i]}: learned {errors_2d['learned MLP'][i]:.3g}, "
          f"ideal for 2,000 training points {errors_2d['ideal for 2,000 training points'][i]:.3g}")

# %% [markdown]
# The memorising ideal denoiser does badly on new points at low noise (at $t = 41$ its error is 9.42, the network's
# 0.635): it pulls them onto the nearest *training* point. The network, which trained on all the points, does far
# better there: it answers with a smooth function of $x_t$, not a pull towards the nearest stored point, though this
# comparison cannot say how much of the gap comes from the ten times as many points it saw. In the middle the network
# is still ahead, by less ($t = 499$: 0.077 against the ideal's 0.119). At the highest noise the ideal denoiser is the
# better one ($t = 999$: 5.96e-05 against 0.000495): there $x_t$ is almost pure noise, the right answer is almost
# $x_t$ itself, and the small network gets it only approximately.
#
# **MNIST.** Now the committed U-Net (its architecture: chapter 6, section 1; trained by `python -m diffusion_lib train`, its command in
# `diffusion_lib/checkpoints/mnist_cond/README.md`; we call it without a label). It was trained with
# flow matching on the straight path (chapter 4 trains such models) and outputs the flow velocity, from
# which the noise it implies follows exactly, $\hat\varepsilon = x_s + (1-s)\,\hat v$ (section 1); `dl.as_eps_fn`
# does this change of variables: it rescales $x_t$ by $\sqrt{(1-s)^2 + s^2}$ to the straight path's $x_s$ at the $s$ whose SNR
# matches the step's (chapter 2, section 6). Its noise-prediction error by timestep on test
# digits, next to the ideal denoiser of a training subset:

# %%
unet, info = dl.pretrained("mnist_cond")
print(f"U-Net: {sum(p.numel() for p in unet.parameters()):,} parameters, trained {info['step']} steps")
learned = dl.as_eps_fn(unet, schedule, info["prediction"])
subset = train_images[: (500 if FAST else 5000)]
ideal = dl.ideal_eps_fn(subset, schedule)
probe = test_images[: (32 if FAST else 256)]
timesteps = np.linspace(0, 999, 8 if FAST else 20).astype(int)
errors = {name: ch03.eps_error_by_timestep(fn, probe, schedule, timesteps, torch.Generator().manual_seed(9))
          for name, fn in (("learned U-Net", learned), (f"ideal for {len(subset):,} training digits", ideal))}
ch03.plot_error_by_timestep(timesteps, errors, "noise-prediction MSE on test digits", "MNIST: noise-prediction error by timestep")

# %% [markdown]
# The shape of the learned curve is the typical loss-by-timestep of a diffusion model: the noise
# is hard to tell apart from fine detail at small $t$ (the image is almost clean and the noise tiny),
# easy to estimate at large $t$ (where $x_t$ is almost all noise). A DDPM trained on $L_\text{simple}$ (chapter 4,
# section 1) draws $t$ uniformly, so it averages exactly these errors into its one loss number; the flow-trained U-Net
# here weighs them instead as section 1's flow curve does.
#
# ## 4. Drag the timestep
#
# For one test digit: $x_t$, the true noise, each denoiser's predicted noise (with its error), the
# $\hat x_0$ it implies (with its error against the clean digit), and the clean digit $x_0$ itself.
# Lower $t$ from 400 and watch the ideal denoiser's $\hat x_0$ jump to a training digit.

# %%
digit = test_images[7:8]
digit_noise = torch.randn(digit.shape, generator=torch.Generator().manual_seed(10))
denoisers = {"learned U-Net": learned, "ideal (memorising)": ideal}


def show_denoising(t=400):
    return ch03.denoise_view(t, digit, digit_noise, denoisers, schedule)


widgets.interact(show_denoising, t=widgets.IntSlider(value=400, min=0, max=999, step=1, continuous_update=False));

# %% [markdown]
# (The slider needs a running kernel; for readers of the static page, the same view at $t = 400$ and
# $t = 200$, and what the slider shows at other $t$, measured:)

# %%
display(show_denoising(400))
display(show_denoising(200))
print(f"{'t':>4} {'ideal x0_hat: MSE to x0':>24} {'to nearest training digit':>26} {'learned x0_hat: MSE to x0':>26}")
for t_value in (600, 400, 300, 200, 100, 10):
    steps = torch.full((1,), t_value)
    noisy = dl.q_sample(digit, steps, schedule, digit_noise)
    with torch.no_grad():
        x0_hats = {name: dl.x0_from_eps(noisy, steps, fn(noisy, steps), schedule).clamp(-1, 1) for name, fn in denoisers.items()}
    to_training = (subset - x0_hats["ideal (memorising)"]).pow(2).mean((1, 2, 3)).min()
    print(f"{t_value:>4} {(x0_hats['ideal (memorising)'] - digit).pow(2).mean():>24.3f} {to_training:>26.4f} "
          f"{(x0_hats['learned U-Net'] - digit).pow(2).mean():>26.3f}")

# %% [markdown]
# At $t = 400$ the ideal denoiser still blends training digits (its $\hat x_0$ is 0.0273 from the nearest
# one). From $t = 300$ down, its $\hat x_0$ *is* a training digit (0.0000 from the nearest), a 9 written
# differently from the test digit (the $t = 200$ view): its error against the clean $x_0$ stays between 0.19
# and 0.20 all the way to $t = 10$.
# The learned U-Net's $\hat x_0$ instead closes in on the clean digit: 0.052 at $t = 300$, 0.008 at $t = 100$,
# 0.000 at $t = 10$.

# %% [markdown]
# ## Summary
#
# - Predicting $\varepsilon$ is enough: $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$; $x_0$, $v$ and flow-velocity prediction are reparametrisations of it; each loss is an $\varepsilon$-loss weighted by noise level, and objectives differ in the weight they put on each log-SNR.
# - The ideal denoiser of a finite set is a softmax-weighted average of its points; sampling with it only reproduces training images.
# - A trained network is useful precisely because it is *not* that function: on held-out data it beats the memorising
#   ideal of a subset of its training data at low noise.
# - The variational bound on $-\log p_\theta(x_0)$ is a sum of KL terms between Gaussians; with the model's mean written
#   through $\varepsilon_\theta$ each is $w_t \lVert \varepsilon - \varepsilon_\theta\rVert^2$ with $w_t = \beta_t^2 / (2\sigma_t^2 \alpha_t (1-\bar\alpha_t))$.
#   $L_\text{simple}$ sets $w_t = 1$, which shifts weight from the least noisy steps to all the others.
# - A noise predictor estimates a scaled score: $\varepsilon^* = -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t} \log p_t(x_t)$, and Tweedie's formula
#   $\mathbb E[x_0 \mid x_t] = (x_t + (1-\bar\alpha_t)\nabla \log p_t)/\sqrt{\bar\alpha_t}$ applied to a finite set's mixture is the ideal denoiser.
# - The loss depends strongly on $t$; DDPM's training loss is its average over uniformly drawn $t$.
#
# ## Exercises
#
# Exercises marked *going further* are not needed by the chapters that follow: they suit a lab, homework or a
# second reading.
#
# **Exercise 1 (implement).** Write `my_x0_from_eps(xt, t, eps, alpha_bars)` returning $\hat x_0$.

# %% tags=["solution", "exercise:ch03-x0-from-eps"]
def my_x0_from_eps(xt, t, eps, alpha_bars):
    # YOUR CODE HERE
    raise NotImplementedError("write my_x0_from_eps, then run the check below")



# %%
# NBVAL_CHECK_OUTPUT
exercises.check_x0_from_eps(my_x0_from_eps)

# %% [markdown]
# **Exercise 2 (implement).** Write `my_ideal_x0(xt, t, data, alpha_bars)`: $\mathbb E[x_0 \mid x_t]$
# for `xt` of shape (B, D), `data` of shape (N, D). Use `torch.softmax` for numerical safety.

# %% tags=["solution", "exercise:ch03-ideal-x0"]
def my_ideal_x0(xt, t, data, alpha_bars):
    # YOUR CODE HERE
    raise NotImplementedError("write my_ideal_x0, then run the check below")



# %%
# NBVAL_CHECK_OUTPUT
exercises.check_ideal_x0(my_ideal_x0)

# %% [markdown]
# **Exercise 3 (predict, then check).** A lazy network always outputs $\varepsilon_\theta = 0$, whatever it is
# shown. What is its loss (the mean squared error against the true noise) at a given $t$, and how does it
# change with $t$? Work it out from how $\varepsilon$ is drawn, write down the number, then check. Afterwards, draw it
# as a horizontal line on section 3's two plots: at which $t$ does the ideal denoiser do worse than this lazy network?

# %% tags=["solution", "exercise:ch03-zero-predictor-loss"]
zero_predictor_loss = None  # YOUR CODE HERE: your answer


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_zero_predictor_loss(zero_predictor_loss)

# %% [markdown] tags=["exercise:ch03-open-memorise"]
# **Exercise 4 (open question, going further).** The ideal denoiser memorises; the network generalises. What
# would you expect to happen to the learned curve in section 3 if you trained a much larger network
# for much longer on only 500 MNIST digits? How could you detect it from samples alone?

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
