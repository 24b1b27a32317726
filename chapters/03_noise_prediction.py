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
# - recover an estimate $\hat x_0$ from $x_t$ and a noise estimate, and convert between the $\varepsilon$, $x_0$ and $v$ parametrisations;
# - compute the *ideal* denoiser $\mathbb E[x_0 \mid x_t]$ of a finite data set, and explain why it can only reproduce its training images;
# - compare a trained noise predictor with the ideal one across timesteps, and read a loss-by-timestep curve.
# - read the U-Net that predicts the noise: its timestep embedding, residual blocks, skip connections and attention, and follow a batch's shapes through it.
#
# **Assumes**: chapter 2 (the closed form $q(x_t \mid x_0)$), the softmax, mean squared error.

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

# %% [markdown]
# (The tiny non-zero errors are float32 rounding, amplified by dividing by $\sqrt{\bar\alpha_t}$, which is small at large $t$.)
#
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
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharex=True, sharey=True)
for ax, t_value in zip(axes, [900, 300, 30]):
    steps = torch.full((500,), t_value)
    ab_t = schedule.alpha_bars[t_value]
    logits = -((xt_2d[:, None, :] - ab_t.sqrt() * points[None]) ** 2).sum(-1) / (2 * (1 - ab_t))  # (500, 8)
    by_hand = torch.softmax(logits, dim=1) @ points
    assert torch.allclose(by_hand, dl.ideal_x0(xt_2d, steps, points, schedule))
    ax.scatter(*by_hand.T, s=8, alpha=0.5, label="E[x0 | x_t] of 500 noisy points")
    ax.scatter(*points.T, marker="x", color="k", s=60, label="the 8 training points")
    ax.set(title=f"t = {t_value}, alpha-bar = {ab_t.item():.3f}", xlabel="x1")
axes[0].set_ylabel("x2")
axes[0].legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# At high noise the estimate is the average of all points; as $t$ falls it snaps onto the single
# nearest training point. Sampling with it (DDIM from chapter 5, here only as a black box) therefore
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
# ## 3. A learned noise predictor next to the ideal one
#
# **2-D first.** Train the library's MLP on two moons for a few seconds with the loss of DDPM
# (Algorithm 1): $\lVert \varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon, t)\rVert^2$.
# Then measure, at each $t$, the noise-prediction error on **held-out** points, for the network and
# for the ideal denoiser of the training set (the function the network would become if it memorised perfectly).

# %%
moons_config = dl.TrainConfig(data="moons", steps=(300 if FAST else 3000), batch_size=256, lr=3e-3, T=1000, ema_decay=0.99, seed=0,
                              objective="ddpm", schedule="linear", prediction="eps")  # this chapter's DDPM
moons = dl.train(moons_config, progress=False)
moons_train, _ = load_training_data(moons_config)  # the exact points it trained on
held_out = dl.make_toy("moons", 2000, torch.Generator().manual_seed(7))
timesteps = np.linspace(0, 999, 12 if FAST else 25).astype(int)
learned_2d = dl.as_eps_fn(moons.ema_model, schedule)
ideal_2d = dl.ideal_eps_fn(moons_train[:2000], schedule)
errors_2d = {name: ch03.eps_error_by_timestep(fn, held_out, schedule, timesteps, torch.Generator().manual_seed(8))
             for name, fn in (("learned MLP", learned_2d), ("ideal for 2,000 training points", ideal_2d))}
ch03.plot_error_by_timestep(timesteps, errors_2d, "noise-prediction MSE on held-out points", "two moons: error by timestep")
print(f"at t={timesteps[1]}: learned {errors_2d['learned MLP'][1]:.3f}, ideal-for-training-set "
      f"{errors_2d['ideal for 2,000 training points'][1]:.3f}")

# %% [markdown]
# The memorising ideal denoiser does badly on new points at low noise: it pulls them onto the
# nearest *training* point. The network, too small and trained too briefly to memorise its
# training set, does better there. At high noise both approach the same curve.
#
# **MNIST.** Now the committed U-Net (trained by `python -m diffusion_lib train`, its command in
# `diffusion_lib/checkpoints/mnist_cond/README.md`; we call it without a label). It was trained with
# flow matching (chapter 4) and outputs a velocity, from which the noise it implies follows exactly
# (`dl.as_eps_fn` does the change of variables). Its noise-prediction error by timestep on test
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
# easy to estimate at large $t$ (where $x_t$ is almost all noise). A DDPM trained with chapter 4's
# loss draws $t$ uniformly, so it averages exactly these errors into its one loss number.
#
# ## 4. Drag the timestep
#
# For one test digit: $x_t$, the true noise, each denoiser's predicted noise (with its error), and
# the $\hat x_0$ it implies. Watch the ideal denoiser's $\hat x_0$ jump to a training digit.

# %%
digit = test_images[7:8]
digit_noise = torch.randn(digit.shape, generator=torch.Generator().manual_seed(10))
denoisers = {"learned U-Net": learned, "ideal (memorising)": ideal}


def show_denoising(t=400):
    return ch03.denoise_view(t, digit, digit_noise, denoisers, schedule)


widgets.interact(show_denoising, t=widgets.IntSlider(value=400, min=0, max=999, step=1, continuous_update=False));

# %% [markdown]
# (The slider needs a running kernel; the same view at $t = 400$ for readers of the static page:)

# %%
display(show_denoising(400))

# %% [markdown]
# ## 5. Inside the noise predictor: the U-Net
#
# Sections 3 and 4 used the U-Net as a black box: a noisy image and its noise level in, an
# image-shaped prediction out. Chapter 4 trains one, so here it is opened, piece by piece, on the
# same committed `mnist_cond` (the code is `diffusion_lib/unet.py`).
#
# **How the network is told the noise level.** One number is a poor input for a stack of
# convolutions. Instead the noise label $t$ (a step 0..999 for DDPM; $1000\,s$ for this
# flow-matching model, chapter 4) becomes a vector of $d$ numbers, cosines and sines at
# geometrically spaced frequencies (the transformer's position code, Vaswani et al. 2017, Sec. 3.5):
#
# $$e(t) = \big[\cos(\omega_0 t), \dots, \cos(\omega_{d/2-1} t),\ \sin(\omega_0 t), \dots, \sin(\omega_{d/2-1} t)\big],
# \qquad \omega_i = 10000^{-i/(d/2)} .$$
#
# With this U-Net's $d = 16$ the periods $2\pi/\omega_i$ run from 6.3 steps ($\omega_0 = 1$) to
# about 20,000. A small MLP (Linear, SiLU, Linear) then widens $e(t)$ to the 64 numbers every
# block reads. Exercise 5 asks you to write $e(t)$; here is the library's:

# %%
levels = torch.arange(1000)
codes = dl.unet.timestep_embedding(levels, 16)  # (1000, 16)
slow = [4, 5, 6, 7, 12, 13, 14, 15]  # the cosines and sines of the four slowest frequencies (periods >= 628 steps)
similarity_all = torch.nn.functional.cosine_similarity(codes, codes[500:501], dim=1)
similarity_slow = torch.nn.functional.cosine_similarity(codes[:, slow], codes[500:501, slow], dim=1)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
ax1.imshow(codes.T, aspect="auto", cmap="RdBu", interpolation="nearest", extent=(0, 1000, 15.5, -0.5))
ax1.set(xlabel="noise label t", ylabel="dimension of e(t)", title="e(t), d = 16: cosines (0-7), sines (8-15)")
ax2.plot(levels, similarity_all, label="all 16 dimensions")
ax2.plot(levels, similarity_slow, label="the 8 slow dimensions")
ax2.set(xlabel="noise label t", ylabel="cosine similarity to e(500)", title="how alike e(t) and e(500) are")
ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
plt.show()
print("similarity to e(500) at t = 490, 499, 501, 510: all dimensions "
      + ", ".join(f"{similarity_all[t]:.2f}" for t in (490, 499, 501, 510))
      + "; slow ones " + ", ".join(f"{similarity_slow[t]:.3f}" for t in (490, 499, 501, 510)))

# %% [markdown]
# The fast dimensions (rows 0-3 and 8-11 of the left panel) change completely within a few steps, so the
# whole vector tells $t = 499$ from $t = 490$ (similarity 0.94 against 0.46); the slow dimensions
# change smoothly over the whole range (similarity above 0.99 ten steps away), so nearby noise
# levels also share most of their code. The MLP sees both.
#
# **A residual block**, the piece this U-Net repeats eleven times. With $c$ the conditioning vector
# (the MLP's output plus, for this class-conditional model, a learned vector for the label; chapter
# 6), GroupNorm $\mathrm{GN}$ (normalise each group of channels over its channels and positions, then
# scale and shift per channel), $\mathrm{SiLU}(z) = z\,\sigma(z)$ and $3\times3$ convolutions $W_1, W_2$:
#
# $$h = W_1 \star \mathrm{SiLU}(\mathrm{GN}(x)) + A\,\mathrm{SiLU}(c), \qquad
# \mathrm{out} = S x + W_2 \star \mathrm{SiLU}(\mathrm{GN}(h)) .$$
#
# $A\,\mathrm{SiLU}(c)$ is one number per channel, added at every position: the same filters, shifted
# by how noisy the input is and which digit is asked for. $S$ is the identity, or a $1\times1$
# convolution where the channel count changes, so the block computes a correction to its input.
# By hand (GroupNorm too) for the block that widens 16 channels to 32, against the library:

# %%
block = unet.down[4][0]
x_in = torch.randn(2, 16, 7, 7, generator=torch.Generator().manual_seed(11))
with torch.no_grad():
    c = unet.time_mlp(dl.unet.timestep_embedding(torch.tensor([500.0, 500.0]), 16)) + unet.label_emb(torch.tensor([3, 3]))
    groups = x_in.reshape(2, 8, -1)  # 8 groups of 2 channels, each over its 2 x 49 numbers
    normed = ((groups - groups.mean(-1, keepdim=True)) / (groups.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt())
    normed = normed.reshape(x_in.shape) * block.norm1.weight[:, None, None] + block.norm1.bias[:, None, None]
    h = block.conv1(torch.nn.functional.silu(normed)) + block.emb(torch.nn.functional.silu(c))[:, :, None, None]
    by_hand = block.skip(x_in) + block.conv2(torch.nn.functional.silu(block.norm2(h)))
    library = block(x_in, c)
print(f"conditioning vector c: {tuple(c.shape)}; block output {tuple(library.shape)}; "
      f"by hand vs the library's ResBlock: largest difference {(by_hand - library).abs().max():.1e}")

# %% [markdown]
# **The U shape.** Follow a batch of four digits through the whole network (forward hooks record
# what each part receives and returns during one real call):

# %%
parts = ch03.trace_shapes(unet, test_images[:4], torch.full((4,), 500.0), torch.arange(4))
print(f"{'part':<10} {'what it is':<24} {'input':>16} {'output':>16} {'parameters':>10}")
for row in parts:
    print(f"{row['part']:<10} {row['kind']:<24} {str(row['input']):>16} {str(row['output']):>16} {row['parameters']:>10,}")
at_7x7 = sum(row["parameters"] for row in parts if row["output"][-1] == 7 and row["input"][-1] == 7)
total = sum(row["parameters"] for row in parts)
print(f"parts add up to {total:,} parameters, the model's {sum(p.numel() for p in unet.parameters()):,}; "
      f"{at_7x7:,} ({at_7x7 / total:.0%}) work at 7x7")

# %% [markdown]
# Read the table top to bottom. The two embeddings make $c$; the stem, a $3\times3$ convolution, turns
# the one grey channel into 16. On the way down, strided $3\times3$
# convolutions halve the resolution twice (28, 14, 7) and the channels grow from 16 to 32. At
# 7x7, where the channels are widest, sit most of the parameters and the self-attention layers.
# On the way up, every block's input is wider than the previous part's output: the features saved
# at the same resolution on the way down are concatenated to it (`up[0]` receives 32 + 32 = 64
# channels). These **skip connections** are why the shape is a U and not an hourglass: the
# prediction must be right at every one of the 784 pixels, and the skips hand the up path the
# full-resolution features that 7x7 cannot hold. Nearest-neighbour upsampling and a convolution
# double the resolution; the head maps 16 channels back to one: the predicted velocity (for a
# DDPM model, the noise).
#
# **Self-attention at 7x7.** A $3\times3$ convolution mixes each position with its neighbours only.
# An attention layer lets every one of the 49 positions read every other in one step. With one
# $C$-vector per position (rows of $H$), after GroupNorm,
#
# $$Q = \mathrm{GN}(H) W_Q,\quad K = \mathrm{GN}(H) W_K,\quad V = \mathrm{GN}(H) W_V, \qquad
# \mathrm{Attn}(H) = H + \mathrm{softmax}\!\Big(\frac{Q K^\top}{\sqrt C}\Big) V\, W_O .$$
#
# Row $p$ of the softmax is where position $p$ looks: 49 weights that sum to 1. Chapter 7 reuses this
# formula with keys and values from a caption's words (cross-attention). By hand, against the
# middle attention layer:

# %%
attention = unet.mid_attn
H = torch.randn(2, 32, 7, 7, generator=torch.Generator().manual_seed(12))
with torch.no_grad():
    q, k, v = attention.qkv(attention.norm(H)).reshape(2, 3, 32, 49).transpose(2, 3).unbind(1)  # (B, 49, C) each
    weights = (q @ k.transpose(1, 2) / 32**0.5).softmax(dim=-1)  # (B, 49, 49)
    by_hand = H + attention.out((weights @ v).transpose(1, 2).reshape(H.shape))
    library = attention(H)
print(f"attention weights {tuple(weights.shape)}: each of 49 positions over 49 positions; "
      f"by hand vs the library's layer: largest difference {(by_hand - library).abs().max():.1e}")

# %% [markdown]
# ## Summary
#
# - Predicting $\varepsilon$ is enough: $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon_\theta)/\sqrt{\bar\alpha_t}$; $x_0$- and $v$-prediction are equivalent reparametrisations.
# - The ideal denoiser of a finite set is a softmax-weighted average of its points; sampling with it only reproduces training images.
# - A trained network is useful precisely because it is *not* that function: on held-out data it beats the memorising ideal at low noise.
# - The loss depends strongly on $t$; DDPM's training loss is its average over uniformly drawn $t$.
# - The U-Net reads the noise level as sines and cosines $e(t)$, adds it to every residual block as a per-channel shift,
#   halves the resolution on the way down and restores it on the way up with skip connections, and lets
#   every position read every other through self-attention at 7x7.
#
# ## Exercises
#
# **Exercise 1 (implement).** Write `my_x0_from_eps(xt, t, eps, alpha_bars)` returning $\hat x_0$.

# %% tags=["solution"]
def my_x0_from_eps(xt, t, eps, alpha_bars):
    ab = alpha_bars[t].reshape(-1, *([1] * (xt.ndim - 1)))
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_x0_from_eps(my_x0_from_eps)

# %% [markdown]
# **Exercise 2 (implement).** Write `my_ideal_x0(xt, t, data, alpha_bars)`: $\mathbb E[x_0 \mid x_t]$
# for `xt` of shape (B, D), `data` of shape (N, D). Use `torch.softmax` for numerical safety.

# %% tags=["solution"]
def my_ideal_x0(xt, t, data, alpha_bars):
    import torch

    ab = alpha_bars[t][:, None, None]  # (B, 1, 1)
    sq_dist = ((xt[:, None, :] - ab.sqrt() * data[None]) ** 2).sum(-1)  # (B, N)
    weights = torch.softmax(-sq_dist / (2 * (1 - ab[:, :, 0])), dim=1)
    return weights @ data


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_ideal_x0(my_ideal_x0)

# %% [markdown]
# **Exercise 3 (predict, then check).** A lazy network always outputs $\varepsilon_\theta = 0$.
# What is its loss (the mean squared error against the true noise), at any $t$? Predict the number, then check.

# %% tags=["solution"]
zero_predictor_loss = 1.0

# %%
# NBVAL_CHECK_OUTPUT
exercises.check_zero_predictor_loss(zero_predictor_loss)

# %% [markdown]
# **Exercise 4 (open question).** The ideal denoiser memorises; the network generalises. What
# would you expect to happen to the learned curve in section 3 if you trained a much larger network
# for much longer on only 500 MNIST digits? How could you detect it from samples alone?

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** The ideal denoiser of section 2 is the exact minimiser of
# the training loss for those 500 digits, so a network with enough capacity, trained long enough,
# moves towards it. On the *training* digits its error would fall towards the ideal denoiser's;
# on held-out digits its curve in section 3 would rise at low and middle $t$ towards the
# memorising curve, the way the ideal denoiser does on new points in the two-moons plot: it pulls
# noisy images onto the nearest training digit. At high $t$ the curves meet, as they do now.
# From samples alone: for each sample, find its nearest neighbour among the 500 training digits
# (pixel distance, or better the classifier's features) and compare these distances with those
# of real held-out digits to the same 500. A memorising model gives many samples far closer to a
# training digit than any held-out digit is; near-duplicates in a grid, and samples that fall into
# only 500 distinct shapes, are the visible signs.
#
# **Rubric.** (1) Predicts memorisation: the learned curve approaches the ideal denoiser's,
# better on training digits, worse on held-out ones at low to middle noise; (2) says why: the
# ideal denoiser minimises the training loss of a finite set; (3) proposes a detection that uses
# a baseline (nearest-neighbour distances of samples vs of held-out real digits), not only "the
# samples look like training images"; (4) mentions a symptom such as near-duplicates or low diversity.

# %% [markdown]
# **Exercise 5 (implement).** Write `my_timestep_embedding(t, dim)`: the sinusoidal code $e(t)$ of
# section 5 for a (B,) tensor of noise labels (integers or not), returning (B, dim), cosines first.

# %% tags=["solution"]
def my_timestep_embedding(t, dim):
    import torch

    half = dim // 2
    frequencies = 10000.0 ** (-torch.arange(half) / half)
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_timestep_embedding(my_timestep_embedding)

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
