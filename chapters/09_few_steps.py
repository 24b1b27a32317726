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
# # Chapter 9: One to four steps — distillation
#
# The course's samplers reach good digits in 10 to 50 network calls (chapters 5 and 7), and chapter 8
# straightened the paths. Systems that generate an image in one to four steps (SDXL Turbo, Latent
# Consistency Models, FLUX.1 schnell) go further: they train a **student** network to do in one step
# what the original model, the **teacher**, does in many. This chapter builds the two classic ways,
# measures them against every sampler of the course on one teacher, and counts what they cost.
#
# **After this chapter you can**
# - derive progressive distillation's target (Salimans & Ho 2022) and run it, halving the steps each round;
# - derive consistency distillation (Song et al. 2023), the idea behind Latent Consistency Models, and its multistep sampler;
# - read the complete steps-vs-quality table, 1 to 1,000 steps, and say what few-step models give up and what they cost to train.
#
# **Assumes**: chapter 5 (DDIM, the steps table), chapter 7 (DPM-Solver++), chapter 8 (the flow ODE,
# Euler = DDIM, reflow).

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
from diffusion_lib.continuous import flow_velocity
from diffusion_lib.course import ch08, ch09, exercises
from diffusion_lib.course.ch01 import recognised
from diffusion_lib.course.measured import decode_images, load_measured
from diffusion_lib.course.plots import show_grid
from diffusion_lib.distill import DistillConfig, consistency_fn, distill, progressive_target, student_files

chapter_start = time.perf_counter()
FAST = dl.fast_mode()
print("fast mode" if FAST else "full mode")
torch.manual_seed(0)
teacher, teacher_info = dl.pretrained("mnist_uncond")
classifier, _ = dl.pretrained("mnist_classifier")
students = {n: dl.load_model(path) for n, path in student_files("mnist_progressive").items()}
consistency, consistency_info = dl.pretrained("mnist_consistency")
reflowed, reflow_info = dl.pretrained("mnist_reflow")
measured = load_measured("fewsteps")["figures"]

# %% [markdown]
# ## 1. The whole table, 1 to 1,000 steps
#
# Every row below is the same teacher, `mnist_uncond`, or a student distilled from it, scored on
# 1,000 samples: MNIST-FID (lower is better; the real-digit floor is the FID of 1,000 real digits, what a
# perfect model would score), the share the classifier recognises with probability at least 0.9, and
# time per image on this 2-core CPU (from `python benchmarks/run.py --only fewsteps`, which wrote these
# figures; the network ran under bfloat16 autocast, about twice as fast here, and two rows were also
# measured in float32 to show what that changes). The last column places each row in the qualitative
# table of the course's seeds.

# %%
floor = measured["real_baseline_fid"]
seeds = {1000: "1000+ steps", 100: "", 50: "", 20: "", 18: "", 10: "4-10: real-time potential",
         8: "4-10: real-time potential", 5: "4-10: real-time potential", 4: "4-10: real-time potential",
         2: "1-3: distilled models", 1: "1-3: distilled models"}
print(f"n = {measured['n']:,} per row; real-digit floor {floor:.1f}\n")
print(f"{'model':<22}{'sampler':<16}{'steps':>5}{'calls':>6}{'ms/image':>9}{'FID':>7}{'x floor':>8}{'recog.':>8}   seeds' table")
for r in measured["rows"]:
    label = r["sampler"] + (" (fp32)" if r["precision"] == "fp32" else "")
    print(f"{r['model']:<22}{label:<16}{r['steps']:>5}{r['calls']:>6}{1000 * r['seconds_per_image']:>9.1f}"
          f"{r['mnist_fid']:>7.1f}{r['mnist_fid'] / floor:>8.2f}{100 * r['recognised']:>7.1f}%   {seeds.get(r['steps'], '')}")

# %% [markdown]
# TABLE-READING-PLACEHOLDER
#
# The same rows as pictures (16 of each row's 1,000 samples, stored by the benchmark):

# %%
picked = [("mnist_uncond", "ddpm", 1000), ("mnist_uncond", "ddim", 50), ("mnist_uncond", "euler", 4),
          ("mnist_uncond", "euler", 1), ("mnist_reflow", "euler", 1), ("mnist_progressive/4", "euler", 4),
          ("mnist_progressive/1", "euler", 1), ("mnist_consistency", "consistency", 1)]
by_key = {(r["model"], r["sampler"], r["steps"]): r for r in measured["rows"] if r["precision"] == "bf16"}
fig, axes = plt.subplots(len(picked), 1, figsize=(8, 1.15 * len(picked)))
for ax, key in zip(axes, picked):
    images = decode_images(by_key[key]["grid"])
    ax.imshow(torch.cat(list(((images[:, 0] + 1) / 2).clamp(0, 1)), dim=1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(f"{key[0]}\n{key[1]}-{key[2]}", rotation=0, ha="right", va="center", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Progressive distillation: two steps become one
#
# Salimans & Ho (2022) start from a teacher sampler with $2N$ deterministic steps (DDIM; on a flow
# model, chapter 8 showed, that is Euler). A student with the teacher's weights is trained to cover, in
# **one** step, the distance the teacher covers in **two**. On the flow's grid $s_k = k/N$, from a point
# $x$ at $s = s_k$, the teacher's two half steps of size $h/2$, $h = s_{k-1} - s_k$, are
#
# $$x_{\frac12} = x + \tfrac h2\,v_T(x, s), \qquad x_1 = x_{\frac12} + \tfrac h2\,v_T\big(x_{\frac12}, s + \tfrac h2\big),$$
#
# and the student's single Euler step $x + h\,v_S(x, s)$ lands on $x_1$ exactly when
#
# $$v_S(x, s) = \frac{x_1 - x}{h} .$$
#
# That is the regression target; the loss is $\lVert v_S(x, s) - (x_1 - x)/h\rVert^2$ with $x$ drawn from the
# forward path of a real image, $x = (1-s)\,x_0 + s\,\varepsilon$, at the student's grid times. When the
# student has learnt it, it becomes the teacher, and a new student learns to halve again: 32, 16, 8, 4, 2,
# 1. The cell checks `dl.distill.progressive_target` against the two half steps written out:

# %%
x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
s, s_next = torch.full((4,), 0.5), torch.full((4,), 0.25)
with torch.no_grad():
    h = -0.25
    x_half = x + h / 2 * flow_velocity(teacher, x, s)
    x_one = x_half + h / 2 * flow_velocity(teacher, x_half, s + h / 2)
    by_hand = (x_one - x) / h
    print(f"by hand vs progressive_target: {(by_hand - progressive_target(teacher, x, s, s_next)).abs().max():.1e}")

# %% [markdown]
# The student can only match the teacher's 2N-step sampler, never the exact ODE: each round inherits the
# previous round's error and adds its own. That is why the first teacher should be a good sampler (the
# committed run starts from Euler with 32 steps) and why the later rounds, which compress the most,
# matter most.
#
# On two moons the whole procedure, from an 8-step teacher to a 1-step student, takes seconds:

# %%
moons_teacher, moons_info = ch08.train_moons("flow", 600 if FAST else 3000)
moons_dir = Path(tempfile.mkdtemp())  # distillation reads its teacher from a file
dl.save_model(moons_dir / "teacher.safetensors", moons_teacher, moons_info)
moons_data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(0))
start = time.perf_counter()
moons_students = distill(DistillConfig("progressive", str(moons_dir / "teacher.safetensors"), steps=150 if FAST else 600,
                                       batch_size=256, lr=1e-3, teacher_steps=8, student_steps=1),
                         progress=False).students
print(f"progressive distillation on two moons, 3 rounds: {time.perf_counter() - start:.1f} s")
noise2d = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4))
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
shown = [("teacher, Euler-8", moons_teacher, 8), ("teacher, Euler-1", moons_teacher, 1),
         ("student, 2 steps", moons_students[2], 2), ("student, 1 step", moons_students[1], 1)]
for ax, (title, net, steps) in zip(axes, shown):
    xs, _ = ch08.flow_paths(net, noise2d, steps)
    ax.scatter(moons_data[:, 0], moons_data[:, 1], s=2, c="0.8")
    ax.scatter(xs[-1][:, 0], xs[-1][:, 1], s=3, c="tab:blue")
    ax.set(title=title, xlim=(-2.5, 3), ylim=(-2, 2.5), xticks=[], yticks=[])
plt.tight_layout()
plt.show()

# %% [markdown]
# MOONS-PROGRESSIVE-PLACEHOLDER
#
# The committed MNIST students were made by one command (5 rounds, 600 optimiser steps each; the
# README of `mnist_progressive` gives the seed and time):
#
# ```bash
# python -m diffusion_lib distill --method progressive --teacher mnist_uncond --teacher-steps 32 --student-steps 1 --steps 600 --lr 2e-4 --out ../runs/mnist_progressive
# ```
#
# Each student samples with Euler at its own number of steps; the cell draws 16 digits from each, and
# scores a few hundred live (the table above has the 1,000-sample figures):

# %%
n_live = 64 if FAST else 400
for n_steps, (student, student_info) in sorted(students.items(), reverse=True):
    samples, _ = dl.generate(student, student_info, n_live, "euler", n_steps, seed=1)
    share, _, _ = recognised(classifier, samples)
    print(f"{n_steps}-step student: recognised {100 * share:.1f}% of {n_live}, "
          f"MNIST-FID {dl.mnist_fid(samples, classifier):.1f} (n = {n_live}: compare rows at the same n only)")
display(show_grid(torch.cat([dl.generate(st, si, 8, "euler", k, seed=1)[0] for k, (st, si) in sorted(students.items())]),
                  "progressive students, " + ", ".join(f"{k}" for k in sorted(students)) + " steps (one row each)",
                  ncols=8))

# %% [markdown]
# ## 3. Consistency distillation: jump to the end from anywhere
#
# A deterministic sampler maps every point of one ODE path to the same final image. Song et al. (2023)
# train a network $f_\theta(x, s)$ to output that image directly, from *any* point $(x, s)$ of the path: a
# **consistency function**. Two conditions define it:
#
# - **boundary**: $f(x, 0) = x$ (at $s = 0$ the point is the image);
# - **consistency**: $f(x_s, s) = f(x_{s'}, s')$ for any two points of one path.
#
# On a flow the boundary condition comes free. Write $f_\theta(x, s) = x - s\,v_\theta(x, s)$: the flow's own
# $\hat x_0$ (chapter 8, exercise 2). At $s = 0$ it is $x$ whatever the network says. Initialised from the
# teacher, $f$ starts as the teacher's $\hat x_0$, a blurred average of the digits the point might become;
# the training makes it consistent along paths:
#
# $$\mathcal L = \big\lVert f_\theta(x_{s_n}, s_n) - f_{\theta^-}(\hat x_{s_{n-1}}, s_{n-1})\big\rVert^2,$$
#
# where $x_{s_n} = (1-s_n)\,x_0 + s_n\,\varepsilon$ is a point on the forward path of a real image at one of $N$ grid
# times, $\hat x_{s_{n-1}}$ is one teacher step (Heun) from it towards the data, so the two points lie on
# (nearly) one ODE path, and $\theta^-$ is a slowly moving average of the student's weights (the *target*
# network, decay 0.95 per step, which keeps the regression target from chasing itself). Where the grid reaches
# $s_0 = 0$, the target is the boundary condition itself, so consistency spreads from the data end up the
# path.
#
# **Sampling.** One step: $x = f_\theta(\varepsilon, 1)$. More steps: noise the result again to a smaller $s$,
# $x_s = (1-s)\,x + s\,z$ with fresh $z$, and jump again, $x = f_\theta(x_s, s)$; each step costs one call.
# The cell checks the boundary condition on the committed student, then the loss by hand against the library
# for one batch:

# %%
x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
with torch.no_grad():
    print(f"f(x, 0) - x: {(consistency_fn(consistency, x, torch.zeros(3)) - x).abs().max():.1e}")
    f_teacher = consistency_fn(teacher, x, torch.ones(3))
    f_student = consistency_fn(consistency, x, torch.ones(3))
display(show_grid(torch.cat([f_teacher, f_student]).clamp(-1, 1), "f(noise, 1): the teacher's x0-hat (top), "
                  "the consistency student's (bottom)", ncols=3))

# %% [markdown]
# CONSISTENCY-PLACEHOLDER

# %%
for steps in (1, 2, 4):
    samples, _ = dl.generate(consistency, consistency_info, n_live, "consistency", steps, seed=1)
    share, _, _ = recognised(classifier, samples)
    print(f"consistency, {steps} step(s): recognised {100 * share:.1f}% of {n_live}, "
          f"MNIST-FID {dl.mnist_fid(samples, classifier):.1f}")

# %% [markdown]
# ## 4. Side by side
#
# **Drag the slider**: the teacher with DDIM and with DPM-Solver++ (chapter 7), the reflowed model with
# Euler (chapter 8), the progressive student that takes exactly that many steps (it exists for 1, 2, 4
# and 8 steps), and the consistency student, all from the same noise. Each row gives the time it took.

# %%
side_models = {"teacher DDIM": (teacher, teacher_info, "ddim"),
               "teacher DPM-Solver++": (teacher, teacher_info, "dpm-solver++"),
               "reflow, Euler": (reflowed, reflow_info, "euler"),
               "progressive": {k: (st, si, "euler") for k, (st, si) in students.items()},
               "consistency": (consistency, consistency_info, "consistency")}


def show_side_by_side(steps):
    display(ch09.side_by_side(steps, side_models, n=6))


widgets.interact(show_side_by_side, steps=widgets.IntSlider(value=2, min=1, max=8, step=1, continuous_update=False));

# %% [markdown]
# ## 5. What it costs, and where few steps lose
#
# **Training time against sampling time.** A distilled student is paid for once, in training, and saves
# time on every image after. The cell reads each student's training time (stored in its checkpoint) and
# the measured time per image, and computes how many images the student must make before it has paid
# for itself against the teacher's Heun-18 (the library's default sampler for it):

# %%
heun = by_key[("mnist_uncond", "heun", 18)]
for name, key in (("mnist_reflow", ("mnist_reflow", "euler", 4)), ("mnist_progressive", ("mnist_progressive/4", "euler", 4)),
                  ("mnist_consistency", ("mnist_consistency", "consistency", 1))):
    row = by_key[key]
    train_seconds = row["distilled"]["seconds"]
    saved = heun["seconds_per_image"] - row["seconds_per_image"]
    print(f"{name}: {train_seconds / 60:.0f} min to distil; {key[1]}-{key[2]} saves {1000 * saved:.1f} ms per image "
          f"against Heun-18, so it pays for itself after {train_seconds / saved:,.0f} images")

# %% [markdown]
# COST-PLACEHOLDER
#
# **Diversity.** A one-step model maps each noise to an image with a single network call, and a
# squared-error loss rewards hedging. The benchmark measured, for each row, the mean pixel distance between
# two samples the classifier puts in the same class (larger: more varied) and how the samples spread over
# the ten digits:

# %%
print(f"{'row':<36}{'diversity':>10}{'rarest digit':>14}{'commonest':>11}")
for key in picked:
    r = by_key[key]
    shares = r["class_shares"]
    print(f"{key[0] + ' ' + key[1] + '-' + str(key[2]):<36}{r['diversity']:>10.2f}"
          f"{min(shares):>13.1%}{max(shares):>10.1%}")

# %% [markdown]
# DIVERSITY-PLACEHOLDER
#
# ## Exercises
#
# **Exercise 1 (implement).** Write `my_target(v, x, s, s_next)`: the velocity a progressive student is
# trained to output at $(x, s)$, given the teacher as a function `v(x, s)` (s of shape (B,)).

# %% tags=["solution"]
def my_target(v, x, s, s_next):
    mid = (s + s_next) / 2
    column = lambda a: a.reshape(-1, *([1] * (x.ndim - 1)))  # noqa: E731
    x_mid = x + column(mid - s) * v(x, s)
    x_end = x_mid + column(s_next - mid) * v(x_mid, mid)
    return (x_end - x) / column(s_next - s)


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_progressive_target(my_target)

# %% [markdown]
# **Exercise 2 (predict, then check).** The committed progressive run went from 32 steps to 1, with 600
# optimiser steps per round and batches of 64 images. How many times did it call a teacher network in all?

# %% tags=["solution"]
teacher_calls = 5 * 600 * 64 * 2


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_distillation_calls(teacher_calls)

# %% [markdown]
# **Exercise 3 (implement).** Write multistep consistency sampling, `my_sample(f, noise, times, fresh)`: `f(x, s)`
# is the consistency function (s a float), `times` the decreasing times starting at 1, and `fresh` the noise
# tensors to use at the second and later times, in order.

# %% tags=["solution"]
def my_sample(f, noise, times, fresh):
    x = f(noise, times[0])
    for s, z in zip(times[1:], fresh):
        x = f((1 - s) * x + s * z, s)
    return x


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_consistency_sampler(my_sample)

# %% [markdown]
# **Exercise 4 (open question).** The consistency student's second step *adds new noise* before jumping
# again, while the progressive student's steps are deterministic. Using the table, say what the extra steps
# buy each kind of student, and explain why re-noising can help a model whose first jump is blurred.

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** A progressive student at N steps is trained for exactly that
# grid: its steps are the teacher's ODE compressed, so it has no use for more steps than it was trained
# for (an N-step student asked for more steps meets times it never learnt). A consistency student has one
# function for all times: from any noisy point it predicts the end of the path. Its one-step output is
# its best guess from pure noise, and where the guess is uncertain it averages, which blurs. Re-noising
# to a smaller s keeps the large-scale structure of that guess (the noise at s is weaker than the image)
# and asks the network again from a point where the answer is more certain, so the second jump can put
# back detail. The fresh noise also restores some randomness that the averaging removed. The cost is
# one more call per step, and the gain fades: each later step starts closer to the data, and errors of
# the consistency function itself (trained for a few thousand steps here) do not shrink with more steps.
#
# **Rubric.** (1) Progressive steps follow a fixed grid and are deterministic; (2) a consistency function
# is defined at every time, so steps can be added at sampling time; (3) re-noising trades a little of the
# first guess for a second, better-informed prediction; (4) reads the measured 1- and 2-step rows.

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
