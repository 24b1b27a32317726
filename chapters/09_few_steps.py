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
# The course's samplers reach good digits in 10 to 50 network calls (chapters 4 and 5), and chapter 8
# straightened the paths. Systems that generate an image in one to four steps (Latent Consistency
# Models, SDXL Turbo, FLUX.1 schnell) train a **student** network to do in one step what the original model, the
# **teacher**, does in many. This chapter builds the two classic ways, progressive and consistency distillation
# (SDXL Turbo and FLUX.1 schnell add an adversarial loss, not covered here), measures them against every sampler of
# the course on one teacher, and counts what they cost.
#
# **After this chapter you can**
# - derive progressive distillation's target (Salimans & Ho 2022) and run it, halving the steps each round;
# - derive consistency distillation (Song et al. 2023), the idea behind Latent Consistency Models, and its multistep sampler;
# - read the complete steps-vs-quality table, 1 to 1,000 steps, and say what few-step models give up and what they cost to train.
#
# **Assumes**: chapter 5 (DDIM, DPM-Solver++, the steps table), chapter 8 (the flow ODE,
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
from diffusion_lib.course.plots import show_grid, show_rows
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
teacherless = {model for model, _, _ in ch09.TEACHERLESS_ROWS}  # chapter 11's models, measured in the same run
for key in ("rows", "seed_rows"):
    measured[key] = [r for r in measured[key] if r["model"] not in teacherless]

# %% [markdown]
# ## 1. What the teacher does with fewer steps
#
# The teacher is `mnist_uncond`, chapter 4's flow model. Each row below is one of its samplers at one number of
# steps, scored on 1,000 samples: MNIST-FID (lower is better), also as a ratio to the real-digit floor, the FID of
# 1,000 real digits, which is what a perfect model would score; the share the classifier recognises with
# probability at least `dl.evaluation.RECOGNISED` (printed); and time per image on the benchmark's machine, one
# thread of a 2-core CPU. `python benchmarks/run.py --only fewsteps` wrote these figures, with the network under bfloat16
# autocast (about twice as fast there; section 4 shows two rows also measured in float32). Every row starts from
# the same 1,000 noise draws (seed 0).

# %%
floor = measured["real_baseline_fid"]
print(f"n = {measured['n']:,} per row; real-digit floor {floor:.1f}; recognised means p >= {dl.evaluation.RECOGNISED}\n")


def print_rows(rows):
    print(f"{'model':<22}{'sampler':<16}{'steps':>5}{'calls':>6}{'ms/image':>9}{'FID':>8}{'x floor':>8}{'recog.':>8}")
    for r in rows:
        label = r["sampler"] + (" (fp32)" if r["precision"] == "fp32" else "")
        print(f"{r['model']:<22}{label:<16}{r['steps']:>5}{r['calls']:>6}{1000 * r['seconds_per_image']:>9.1f}"
              f"{r['mnist_fid']:>8.1f}{r['mnist_fid'] / floor:>8.2f}{100 * r['recognised']:>7.1f}%")


print_rows([r for r in measured["rows"] if r["model"] == "mnist_uncond" and r["precision"] == "bf16"])

# %% [markdown]
# The teacher's best rows take many calls: the deterministic samplers level off near 27 to 28, from about 20
# calls for DPM-Solver++ (27.5) and 35 for Heun-18 (26.7), about 50 for DDIM (DDIM-20 is still 31.0; DDIM-50
# 28.1, DDIM-100 27.5); DDPM with 1,000 stochastic steps scores 19.8. At five calls and fewer they fall apart: with five
# calls the best is DPM-Solver++-5 (52.1), DDIM-5 scores 87.7, Euler-4 86.0, Euler-2 395.0, and a single Euler
# step 1798.1, not digits at all. (DDIM-5 and Euler-4 take the same kind of step, chapter 8, on different grids:
# DDIM evenly in DDPM's step $t$, Euler evenly in the flow's time $s$, from $s = 1$, noise, to $s = 0$, data.) That is
# the bar: a student drawing in one to four calls must beat the teacher's Euler-4 (86.0) and DPM-Solver++-5 (52.1).

# %% [markdown]
# ## 2. Progressive distillation: two steps become one
#
# Salimans & Ho (2022) start from a teacher sampler with $2N$ deterministic steps (DDIM; on a flow
# model, chapter 8 showed, that is Euler). A student with the teacher's weights is trained to cover, in
# **one** step, the distance the teacher covers in **two**. (They regress a $v$-prediction network's
# $\hat x_0$ with an SNR weighting; here, in flow terms, the student's velocity is regressed directly. It is the
# same target: on a flow a step is fixed by $v$, and $\hat x_0 = x - s\,v$, so an error in $v$ is an error $s$ times
# as large in $\hat x_0$, and the velocity loss is an $\hat x_0$ loss weighted by $1/s^2$.) On the flow's grid $s_k = k/N$, from a point
# $x$ at $s = s_k$, the teacher's two half steps of size $h/2$, $h = s_{k-1} - s_k$, are
#
# $$x_{\text{mid}} = x + \tfrac h2\,v_T(x, s), \qquad x_{\text{end}} = x_{\text{mid}} + \tfrac h2\,v_T\big(x_{\text{mid}}, s + \tfrac h2\big),$$
#
# with $h = -1/N$ (negative: the steps go towards the data), and the student's single Euler step
# $x + h\,v_S(x, s)$ lands on $x_{\text{end}}$ exactly when
#
# $$v_S(x, s) = \frac{x_{\text{end}} - x}{h} .$$
#
# That is the regression target; the loss is $\lVert v_S(x, s) - (x_{\text{end}} - x)/h\rVert^2$ with $x = (1-s)\,x_0 + s\,\varepsilon$
# on a real image's forward path at the student's grid times. The trained student becomes the next teacher: 32, 16,
# 8, 4, 2, 1. The cell checks `dl.distill.progressive_target` against the two half steps written out:

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
# The student can only match the teacher's 2N-step sampler, never the exact ODE: each round inherits the previous
# round's error and adds its own. So the first teacher should be a good sampler (the committed run starts from Euler
# with 32 steps), and the last rounds should be the hardest: every round halves the steps, but the last ones do it
# with the longest steps, where the path bends most within one step, so two teacher steps differ most from one.
# (Section 4's rows fit this: each halving, from 8 steps down to 1, adds more FID than the one before, though each
# increment also carries what the earlier rounds left.)
#
# On two moons the whole procedure, from an 8-step teacher to a 1-step student, takes seconds:

# %%
moons_teacher, moons_info = ch08.train_moons("flow", 600 if FAST else 3000)
moons_dir = Path(tempfile.mkdtemp())  # distillation reads its teacher from a file
dl.save_model(moons_dir / "teacher.safetensors", moons_teacher, moons_info)
moons_data = dl.make_toy("moons", 5000, torch.Generator().manual_seed(0))
start = time.perf_counter()
moons_students = distill(DistillConfig("progressive", str(moons_dir / "teacher.safetensors"), steps=150 if FAST else 600,
                                       batch_size=256, lr=1e-3, teacher_steps=8, student_steps=1),
                         progress=False).students
print(f"progressive distillation on two moons, 3 rounds: {time.perf_counter() - start:.1f} s")
noise2d = torch.randn(1000, 2, generator=torch.Generator().manual_seed(4))
shown = [("teacher, Euler-64", moons_teacher, 64), ("teacher, Euler-8", moons_teacher, 8),
         ("teacher, Euler-1", moons_teacher, 1), ("student, 2 steps", moons_students[2], 2),
         ("student, 1 step", moons_students[1], 1)]
fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3))
for ax, (title, net, steps) in zip(axes, shown):
    end = ch08.flow_paths(net, noise2d, steps)[0][-1]
    off = torch.cdist(end, moons_data).min(1).values.mean()  # how far samples land from the data
    ax.scatter(moons_data[:, 0], moons_data[:, 1], s=2, c="0.8")
    ax.scatter(end[:, 0], end[:, 1], s=3, c="tab:blue")
    ax.set(title=f"{title}\noff the data by {off:.3f}", xlim=(-2.5, 3), ylim=(-2, 2.5), xticks=[], yticks=[])
    print(f"{title:<18} mean distance from a sample to the nearest data point: {off:.3f}")
plt.tight_layout()
plt.show()

# %% [markdown]
# The one-step student puts its samples about as close to the moons as the 8-step sampler it was distilled
# from (the cell prints the mean distance from each sample to the nearest data point), where the teacher's own
# single step sends every point near the data's mean. Like its teacher at 8 steps, the student still leaves
# some points between the moons: it copies its teacher, blemishes included.
#
# The committed MNIST students were made by one command (5 rounds, 600 optimiser steps each; the
# README of `mnist_progressive` gives the time and machine):
#
# ```bash
# OMP_NUM_THREADS=1 python -m diffusion_lib distill --method progressive --teacher mnist_uncond --teacher-steps 32 --student-steps 1 --steps 600 --lr 2e-4 --seed 0 --max-minutes 45 --quiet --out ../runs/distill/mnist_progressive
# ```
#
# Each student samples with Euler at its own number of steps; the cell scores 400 live (seed 1, in float32)
# and draws 8 digits from each:

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
# These 400 are the first 400 of the benchmark's seed-1 draws (section 4 scores 1,000 of seed 0, and some rows on three
# seeds). A share near 90% on 400 samples has a standard error of about 1.5 points, yet the 1-, 2- and 4-step students
# are recognised here several points more often than in section 4, the 8-step one slightly more: these draws happen to
# be easier. Compare students on the same draws, not these figures with the table's.
#
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
# where $\theta^-$ is a moving average of the student's weights $\theta$ (below), $x_{s_n} = (1-s_n)\,x_0 + s_n\,\varepsilon$ is a point on the forward path of a real image at one of the
# grid times $s_n = n/M$ ($M = 16$ here, $n$ drawn uniformly from 1 to $M$), and $\hat x_{s_{n-1}}$ is one teacher
# step from it towards the data, so that the two points lie on (nearly) one ODE path. The step is Heun's,
# $\hat x_{s_{n-1}} = x + (s_{n-1} - s_n)\,\tfrac12\big[v_T(x, s_n) + v_T(\tilde x, s_{n-1})\big]$ with $\tilde x$ the Euler step's end,
# except on the last step to $s_0 = 0$, which is Euler's, as in the library's Heun sampler (chapter 4). The *target*
# network $\theta^-$ is a moving average of the student's weights (decay `target_decay` per step, printed below), starting
# as the teacher: it keeps each step's target from shifting while the step below it is still being learned. The
# weights used for sampling are a separate, slower average (decay `ema_decay`). Song et al. measure the
# difference between images with LPIPS, a learned perceptual distance; the course uses the squared pixel
# distance, which needs no second network. Where the grid reaches $s_0 = 0$ ($n = 1$), the target is
# $f(\hat x_{s_0}, 0) = \hat x_{s_0}$, the end of the teacher's Euler step from $s = 1/16$ to the data, $x - s_1 v_T(x, s_1)$,
# which is the teacher's own $\hat x_0$ at that point: the boundary condition anchors the function there. Why a zero loss
# gives the end of the path, once training has converged and the target network has caught up ($\theta^- = \theta$): at
# $n = 1$ the target is that end itself, so $f$ is exact at $s_1$; if $f$ is exact at $s_{n-1}$, a zero loss at $s_n$ makes
# $f(x_{s_n}, s_n)$ equal to $f$ at a point of the same path one step nearer the data, so $f$ is exact at $s_n$ too.
# "Exact" here means the end of the teacher's 16-step path, which differs from the true ODE's end by that solver's
# error. Consistency spreads from the data end up the grid, one step at a time. The committed student was made in two runs of at most 28 minutes, the second
# resuming the first:
#
# ```bash
# OMP_NUM_THREADS=1 python -m diffusion_lib distill --method consistency --teacher mnist_uncond --teacher-steps 16 --steps 2000 --lr 2e-4 --seed 0 --max-minutes 28 --quiet --out ../runs/distill/mnist_consistency
# OMP_NUM_THREADS=1 python -m diffusion_lib distill --method consistency --teacher mnist_uncond --teacher-steps 16 --steps 4000 --lr 2e-4 --seed 0 --max-minutes 28 --quiet --out ../runs/distill/mnist_consistency
# ```
#
# **Sampling.** One step: $x = f_\theta(\varepsilon, 1)$. More steps: noise the result again to a smaller $s$,
# $x_s = (1-s)\,x + s\,z$ with fresh $z$, and jump again, $x = f_\theta(x_s, s)$; each step costs one call. The
# library's times for $k$ steps are $1, (k-1)/k, \dots, 1/k$ (for 4 steps: 1, 3/4, 1/2, 1/4). The re-noised point is
# not on the first jump's ODE path, and the fresh noise makes the sampler stochastic. The cell checks the boundary condition on the
# committed student, then shows $f(\varepsilon, 1)$ for the teacher and the student from the same noise:

# %%
cd_config = consistency_info["distilled"]["config"]
print(f"committed student: {consistency_info['step']:,} optimiser steps, grid M = {cd_config['teacher_steps']}, "
      f"target_decay {cd_config['target_decay']}, ema_decay {cd_config['ema_decay']}")
x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
with torch.no_grad():
    print(f"f(x, 0) - x: {(consistency_fn(consistency, x, torch.zeros(3)) - x).abs().max():.1e}")
    f_teacher = consistency_fn(teacher, x, torch.ones(3))
    f_student = consistency_fn(consistency, x, torch.ones(3))
display(show_grid(torch.cat([f_teacher, f_student]).clamp(-1, 1), "f(noise, 1): the teacher's x0-hat (top), "
                  "the consistency student's (bottom)", ncols=3))

# %% [markdown]
# From pure noise the teacher's $\hat x_0$ is a grey blur close to the mean digit (one Euler step, chapter 8, lands
# there). The consistency student's jump from the same noise is a digit: training has moved $f$ from the average
# of everything the noise might become to the end of the teacher's path through it. Scored live (the same 400
# starting draws as for the progressive students, seed 1, float32):

# %%
for steps in (1, 2, 4):
    samples, _ = dl.generate(consistency, consistency_info, n_live, "consistency", steps, seed=1)
    share, _, _ = recognised(classifier, samples)
    print(f"consistency, {steps} step(s): recognised {100 * share:.1f}% of {n_live}, "
          f"MNIST-FID {dl.mnist_fid(samples, classifier):.1f}")

# %% [markdown]
# The same caution about 400 samples holds here; section 4 has the 1,000-sample rows. On both measures four jumps
# beat one, and the FID falls at each added step.

# %% [markdown]
# ## 4. The whole table
#
# Now every row: the teacher's samplers from section 1, chapter 8's reflowed model (`mnist_reflow`, trained on
# pairs drawn from this teacher) with Euler, the progressive students of section 2 and the consistency student
# of section 3, all from the same 1,000 noise draws of seed 0, and two teacher rows repeated in float32. The
# last line is the share of 1,000 real test digits the classifier recognises, the ceiling for that column:

# %%
print_rows(measured["rows"])
real_share, _, _ = recognised(classifier, dl.load_mnist(train=False)[0][:1000])
print(f"\nreal test digits: {100 * real_share:.1f}% recognised")

# %% [markdown]
# The students rewrite the bottom of the table. With **four** calls the consistency student scores 28.3 and 92.2%
# recognised, the teacher's DDIM-50 level from the same noise (28.1, 91.8%) at a twelfth of the calls; the progressive student scores 39.1 (87.0%) and reflow with Euler 50.1 (85.4%). All
# three beat the teacher's best sampler with five calls, DPM-Solver++-5 (52.1, 85.1%), with a call fewer, though
# reflow only just, on one seed: reflow straightens the paths (chapter 8) but still needs a solver's steps to follow them.
# With **one** call: consistency 69.4 (84.8%), progressive 80.0 (81.7%), reflow 99.1 (80.5%), against the
# teacher's 1798.1. On seed 0 the 4-step consistency student comes within 1.6 FID of Heun-18 and matches its
# recognition; Heun-18 was measured on one seed only, so the two cannot be ranked. Below four calls the share
# recognised falls with the calls, well short of real digits' (the last line). The two float32 rows agree with their
# bfloat16 twins to within 0.2 FID.
#
# **One noise draw, many rows.** A deterministic sampler takes each draw to much the same digit whatever its step
# count (the pictures below, with a few exceptions), so the deterministic rows differ only in how well they draw
# the same digits: their differences are meaningful, their common level depends on the draws. The benchmark repeated some rows from two more seeds; the cell lists them, each FID also as a ratio
# to the teacher's DDIM-50 on the same seeds:

# %%
seed_rows = measured["rows"] + measured["seed_rows"]
by_seed = {}
for r in seed_rows:
    if r["precision"] == "bf16":
        by_seed.setdefault((r["model"], r["sampler"], r["steps"]), []).append(r)
teacher_fid = sum(r["mnist_fid"] for r in by_seed[("mnist_uncond", "ddim", 50)]) / 3
print(f"teacher DDIM-50, mean of 3 seeds: MNIST-FID {teacher_fid:.1f}")
print(f"{'model':<28}{'steps':>5}{'FID seeds 0, 1, 2':>21}{'mean':>7}{'x teacher':>10}"
      f"{'recognised seeds 0, 1, 2':>27}{'mean':>7}")
for key, rows in by_seed.items():
    if len(rows) == 3:
        fids, shares = [r["mnist_fid"] for r in rows], [100 * r["recognised"] for r in rows]
        print(f"{key[0] + ' ' + key[1]:<28}{key[2]:>5}{'  '.join(f'{f:5.1f}' for f in fids):>21}{sum(fids) / 3:>7.1f}"
              f"{sum(fids) / 3 / teacher_fid:>10.2f}{'  '.join(f'{v:5.1f}%' for v in shares):>27}{sum(shares) / 3:>6.1f}%")
print("\ntraining budgets:")
for model in ("mnist_reflow", "mnist_progressive/1", "mnist_consistency"):
    row = next(r for r in measured["rows"] if r["model"] == model)
    print(f"  {model.split('/')[0]:<18} {row['distill_config']['steps']:>5,} optimiser steps"
          f"{' per round' if model.startswith('mnist_progressive') else '':<10} {row['distilled']['seconds'] / 60:4.0f} min")

# %% [markdown]
# The teacher's DDIM-50 scored 28.1, 20.2 and 20.9 on the three seeds, and every row measured on three seeds had
# its worst FID on seed 0. DDPM-1000, measured on one seed, leads DDIM-50's three-seed mean (23.1) by about 3, not 8:
# likely ahead (chapter 5 found it ahead on 256 samples too), but one seed cannot settle a gap this size.
#
# Over three seeds the ranking of the students holds: at 4 steps consistency is 1.11 times the teacher's DDIM-50 FID
# (92.0% recognised), progressive 1.51 times (88.1%), reflow's Euler 2.06 times. At 1 step the best, consistency, is
# 2.88 times the teacher's FID (86.3%). The budgets differed (the last lines):
# consistency distillation trained longest, so the table compares three runs, not three methods at equal cost
# (section 6).
#
# The same rows as pictures (16 of each row's 1,000 samples, stored by the benchmark), the 4-step students
# included:

# %%
picked = [("mnist_uncond", "ddpm", 1000), ("mnist_uncond", "ddim", 50), ("mnist_uncond", "euler", 4),
          ("mnist_uncond", "euler", 1), ("mnist_reflow", "euler", 1), ("mnist_progressive/4", "euler", 4),
          ("mnist_progressive/1", "euler", 1), ("mnist_consistency", "consistency", 4),
          ("mnist_consistency", "consistency", 1)]
by_key = {(r["model"], r["sampler"], r["steps"]): r for r in measured["rows"] if r["precision"] == "bf16"}
display(show_rows({f"{key[0]}\n{key[1]}-{key[2]}": decode_images(by_key[key]["grid"]) for key in picked}))

# %% [markdown]
# ## 5. Side by side
#
# **Drag the slider**: the teacher with DDIM and with DPM-Solver++ (chapter 5), the reflowed model with
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
# ## 6. What it costs, and where few steps lose
#
# **Training time against sampling time.** A distilled student is paid for once, in training, and saves time on every
# image after. The cell reads each 4-step student's training time (stored in its checkpoint) and the measured time per
# image, and computes how many images it must make before it has paid for itself: against the teacher's Heun-18 (the
# library's default sampler for it, with a lower FID than every student on seed 0), and against the cheapest teacher
# sampler in the table whose MNIST-FID is at least as good as the student's on seed 0 (a fair price for the same
# quality, by that measure; the share recognised can still differ by a point):

# %%
heun = by_key[("mnist_uncond", "heun", 18)]
teacher_rows = [r for key, r in by_key.items() if key[0] == "mnist_uncond"]
for name, key in (("mnist_reflow", ("mnist_reflow", "euler", 4)), ("mnist_progressive", ("mnist_progressive/4", "euler", 4)),
                  ("mnist_consistency", ("mnist_consistency", "consistency", 4))):
    row = by_key[key]
    train_seconds = row["distilled"]["seconds"]
    line = f"{name} ({key[1]}-{key[2]}, FID {row['mnist_fid']:.1f}): {train_seconds / 60:.0f} min to distil; "
    saved = heun["seconds_per_image"] - row["seconds_per_image"]
    line += f"against Heun-18 it saves {1000 * saved:.1f} ms an image and pays after {train_seconds / saved:,.0f} images"
    matches = [r for r in teacher_rows if r["mnist_fid"] <= row["mnist_fid"]]
    match = min(matches, key=lambda r: r["seconds_per_image"])
    saved = match["seconds_per_image"] - row["seconds_per_image"]
    print(line + f"; against {match['sampler']}-{match['steps']} (FID {match['mnist_fid']:.1f}) it saves "
          f"{1000 * saved:.1f} ms and pays after {train_seconds / saved:,.0f} images")

# %% [markdown]
# The break-even is where the time saved equals the training time: against Heun-18, after 15,813 to 37,855 images,
# about 20 to 45 minutes of sampling with Heun-18 on the benchmark's machine. (The progressive 4-step student was ready
# after three of its five rounds; reflow's time includes about ten minutes of drawing pairs.) Priced at equal quality the break-even moves out to between 83,332 and
# 137,989 images: for each student the table holds a teacher sampler with 10 or 20 calls whose MNIST-FID is at least
# as good on seed 0 (DDIM-10, DPM-Solver++ with 10 and with 20 steps), and against those the students save only 8.8 to
# 27.9 ms an image. A system that serves millions of images repays the training many times over; a learner drawing
# a few hundred digits does not.
#
# **Diversity.** A one-step model maps each noise to an image with a single network call, and a
# squared-error loss rewards hedging. The benchmark measured, for each row, the mean distance between two samples
# the classifier puts in the same class (the L2 distance over the 784 pixels in [-1, 1]; larger: more varied) and
# how the samples spread over the ten digits:

# %%
print(f"{'row':<36}{'diversity':>10}{'rarest digit':>14}{'commonest':>11}")
for key in picked:
    r = by_key[key]
    shares = r["class_shares"]
    print(f"{key[0] + ' ' + key[1] + '-' + str(key[2]):<36}{r['diversity']:>10.2f}"
          f"{min(shares):>13.1%}{max(shares):>10.1%}")

# %% [markdown]
# By these measures the students lose little variety. Their within-class distances (17.08 to 18.12) lie close to
# the teacher's with DDPM-1000 and DDIM-50 (17.80 and 18.16), and every digit keeps between about 6% and 12% of
# the samples. The collapse is the teacher's own single Euler step: every sample near the mean digit (distance
# 4.1) and one class taking 31%. The deterministic students keep their teacher's map from noise to digit: in the
# grid of section 4 the same noise gives the same digit in almost every row, one-step consistency included. The
# two exceptions add fresh noise, DDPM at every step and the 4-step consistency sampler at each step after its
# first: DDPM gives other digits in nearly every column, the 4-step consistency sampler in several. Few steps cost
# sharpness and recognisability here (the table), not variety, though a pixel distance also counts blotches and
# broken strokes as variety, which can flatter a noisy model.
#
# ## Exercises
#
# **Exercise 1 (implement).** Write `my_target(v, x, s, s_next)`: the velocity a progressive student is
# trained to output at $(x, s)$, given the teacher as a function `v(x, s)`. `s` and `s_next` have shape (B,): reshape
# them to (B, 1, ...) before multiplying them with `x`.

# %% tags=["solution", "exercise:ch09-target"]
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
# optimiser steps per round and batches of 64 images. How many times did it run a teacher network on one image,
# in all? (Counting calls on whole batches of 64 instead is accepted too; say which you counted.)

# %% tags=["solution", "exercise:ch09-teacher-calls"]
teacher_calls = 5 * 600 * 64 * 2


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_distillation_calls(teacher_calls)

# %% [markdown]
# **Exercise 3 (implement).** Write multistep consistency sampling, `my_sample(f, noise, times, fresh)`: `f(x, s)`
# is the consistency function (s a float), `times` the decreasing times starting at 1, and `fresh` the noise
# tensors to use at the second and later times, in order.

# %% tags=["solution", "exercise:ch09-sample"]
def my_sample(f, noise, times, fresh):
    x = f(noise, times[0])
    for s, z in zip(times[1:], fresh):
        x = f((1 - s) * x + s * z, s)
    return x


# %%
# NBVAL_CHECK_OUTPUT
exercises.check_consistency_sampler(my_sample)

# %% [markdown] tags=["exercise:ch09-open-fresh-noise"]
# **Exercise 4 (open question).** The consistency student's second step *adds new noise* before jumping
# again, while the progressive students' steps are deterministic, and each progressive student is a separate
# network for its own number of steps. Using the table (progressive students with 1, 2, 4 and 8 steps;
# consistency with 1, 2 and 4), say what extra steps buy each kind, and explain why re-noising can help a model
# whose first jump is imperfect (FID 69.4 against 28.3 with four jumps).

# %% [markdown] tags=["solution"]
# **Model answer (instructor edition).** A progressive student at N steps is trained for exactly that grid: its steps
# are the teacher's ODE compressed, so it has no use for more steps than it was trained for (an N-step student asked
# for more steps meets times it never learnt). A consistency student has one function of the time: from a noisy point
# it predicts the end of the path, so a sampler may re-noise and ask again (at the grid's times $n/16$ it was trained
# on; other times are as new to it as to a progressive student). Its one-step output is its best guess from pure
# noise, and where the guess is uncertain it averages, which blurs or breaks strokes. Re-noising to a smaller s keeps
# the coarse structure of that guess, which survives even fairly strong noise (at s = 3/4 the noise's weight is three
# times the image's, yet the digit's rough shape still shapes where the next jump goes), and asks the network again
# from a point where the answer is more certain, so the next jump can put back detail. The fresh noise also restores
# some randomness that the averaging removed. The cost is one more call per step, and the gain fades: each later step
# starts closer to the data, and errors of the consistency function itself (trained for a few thousand steps here) do
# not shrink with more steps.
#
# **Rubric.** (1) Progressive steps follow a fixed grid and are deterministic; (2) a consistency function
# maps any noisy point to the path's end, so re-noising and jumping again fits what it was trained for; (3) re-noising trades a little of the
# first guess for a second, better-informed prediction; (4) reads the measured 1-, 2- and 4-step rows.

# %%
print(f"chapter ran in {time.perf_counter() - chapter_start:.1f} s ({'fast' if FAST else 'full'} mode)")
