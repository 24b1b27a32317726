"""Fewer sampling steps from a trained flow model: reflow, progressive distillation, consistency distillation.

All three start from a teacher trained with the flow objective (`continuous`: x_s = (1 - s) x_0 + s eps,
the network predicts the velocity v = eps - x_0) and train a student of the same architecture,
initialised from the teacher's weights, that still outputs a velocity:

| method        | paper                          | what the student learns                                             |
| ------------- | ------------------------------ | ------------------------------------------------------------------- |
| `reflow`      | Liu et al. 2022, "rectified flow", Sec. 2.2 | flow matching on the straight lines between the teacher's own (noise, image) pairs: the new paths are straighter, so Euler needs fewer steps |
| `progressive` | Salimans & Ho 2022, Alg. 2     | one Euler step of size 2h lands where two teacher Euler steps of size h land; the student becomes the next round's teacher, halving the steps each round |
| `consistency` | Song et al. 2023, Alg. 2       | f(x_s, s) = x_s - s v(x_s, s) gives the same clean image from every point of one ODE trajectory |

| code             | symbol / meaning                                                            |
| ---------------- | --------------------------------------------------------------------------- |
| `s`, `s_next`    | flow times (1 = noise, 0 = data); `s_next` < `s`                            |
| `teacher_steps`  | progressive: the first teacher's Euler steps (2N for a student of N); consistency: the N of the grid s_n = n / N |
| `f`              | the consistency function f(x, s) = x - s v(x, s); f(x, 0) = x holds for any network (the boundary condition) |
| `target`         | theta^-, consistency's target network: an EMA (decay mu, `target_decay`) of the student |
| `straightness`   | S = E ||v_k - (x_1 - x_0)||^2 / E ||x_1 - x_0||^2 along a path (Liu et al. 2022's straightness, normalised); 0 for a straight line at constant speed |

A flow's Euler step is DDIM's step (chapter 8 derives it), so "two teacher DDIM steps in one"
(Salimans & Ho) is "two teacher Euler steps in one" here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (FORMAT, PRETRAINED_DIR, CheckpointError, load_model, read_tensors, resolve, save_model,
                         save_tensors, weights_digest)
from .continuous import _column, flow_velocity
from .denoisers import Denoiser, bound, flow_estimates
from .samplers import flow_levels, sample_consistency, sample_heun
from .outputs import RunLock, check_new_run, check_writable, clean_temporary
from .runtime import pick_device
from .models import arch_of
from .objectives import is_flow
from .loop import (EMA, Run, Task, check_max_seconds, fit, load_prefixed, new_run, optimizer_keys, restore_run,
                   run_tensors)
from .runtime import autocast, bf16_wanted
from .training import DENOISERS, MODEL_FILE, TrainConfig, load_training_data

METHODS = ("reflow", "progressive", "consistency")
STATE_FILE, PAIRS_FILE, STUDENTS = "distill_state.safetensors", "pairs.safetensors", "students"
RESUMABLE_CHANGES = ("save_every",)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run. `teacher`: a committed model's name (`pretrained`) or a checkpoint path."""

    method: str
    teacher: str = "mnist_uncond"
    steps: int = 1000  # optimiser steps; progressive: per halving round
    batch_size: int = 64
    lr: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    seed: int = 0
    save_every: int = 250
    precision: str = "auto"  # "bf16", "fp32", or "auto": bf16 for a U-Net on hardware that runs it natively
    pairs: int = 5000  # reflow: (noise, image) pairs drawn from the teacher
    pair_steps: int = 18  # reflow: the teacher's Heun steps per pair
    teacher_steps: int = 32  # progressive: the first teacher's Euler steps; consistency: the grid's N
    student_steps: int = 1  # progressive: the last round's student takes this many steps
    target_decay: float = 0.95  # consistency: mu of the target network (Song et al. 2023, CIFAR-10)

    def __post_init__(self):
        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}"),
            (self.steps >= 1 and self.batch_size >= 1 and self.save_every >= 1, "steps, batch_size and save_every must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
            (0 <= self.ema_decay < 1 and 0 <= self.target_decay < 1, "ema_decay and target_decay must lie in [0, 1)"),
            (self.precision in ("auto", "fp32", "bf16"), f"unknown precision {self.precision!r}: auto, fp32 or bf16"),
            (self.pairs >= self.batch_size or self.method != "reflow",
             f"reflow needs at least one batch of pairs: pairs {self.pairs} < batch_size {self.batch_size}"),
            (self.pair_steps >= 1 and self.teacher_steps >= 2 and self.student_steps >= 1,
             "pair_steps and student_steps must be >= 1, teacher_steps >= 2"),
            (self.method != "progressive" or self.rounds() >= 1,
             f"progressive distillation halves the steps each round: teacher_steps ({self.teacher_steps}) must be "
             f"student_steps ({self.student_steps}) times a power of 2, such as 32 and 1 or 24 and 3"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def rounds(self) -> int:
        """Progressive distillation's halving rounds (teacher_steps / student_steps = 2^rounds); 1 for the others."""
        if self.method != "progressive":
            return 1
        ratio = self.teacher_steps // self.student_steps
        exact = ratio * self.student_steps == self.teacher_steps and ratio >= 2 and ratio & (ratio - 1) == 0
        return ratio.bit_length() - 1 if exact else 0

    def total_steps(self) -> int:
        return self.steps * self.rounds()

    def round_students(self) -> list[int]:
        """The sampling steps of each round's student: teacher_steps / 2, / 4, ... down to student_steps."""
        return [self.teacher_steps >> (r + 1) for r in range(self.rounds())] if self.method == "progressive" else []


def load_teacher(name: str, device="cpu"):
    """(model, info) of a flow-trained unconditional denoiser: a committed model's name or a checkpoint path."""
    try:
        path = resolve(name)
    except CheckpointError:
        raise FileNotFoundError(f"no teacher {name!r}: give a checkpoint path or a committed model such as "
                                "mnist_uncond") from None
    model, info = load_model(path, device)
    if arch_of(model) not in DENOISERS:
        raise ValueError(f"the teacher {name} holds a {type(model).__name__}, not a diffusion model: give a flow model "
                         "trained by 'python -m diffusion_lib train', such as mnist_uncond")
    if not is_flow(info) or "train_config" not in info:
        raise ValueError(f"the teacher {name} must be a flow model trained by 'python -m diffusion_lib train' "
                         f"(objective flow, the default); this one is {info.get('objective', 'ddpm')!r}")
    if getattr(model.config, "num_classes", None) or getattr(model.config, "text_dim", None):
        raise ValueError(f"the teacher {name} is conditional; distillation here takes an unconditional model "
                         "such as mnist_uncond")
    return model.requires_grad_(False), info


def teacher_digest(config: DistillConfig) -> str:
    """The digest of the teacher's weights (`checkpoint.weights_digest`): a run resumes only with the same teacher."""
    return weights_digest(resolve(config.teacher))


def student_files(folder: str | Path) -> dict[int, Path]:
    """A progressive run's students by sampling steps ({4: .../students/steps_004.safetensors, ...}): from a
    `distill --out` folder or a committed model's name; the folder's model.safetensors counts as its own student."""
    folder = Path(folder) if Path(folder).exists() else PRETRAINED_DIR / str(folder)
    found = {int(p.stem.split("_")[1]): p for p in (folder / STUDENTS).glob("steps_*.safetensors")}
    if (folder / MODEL_FILE).exists():  # the last round's student (a committed run keeps it only here)
        distilled = json.loads(read_tensors(folder / MODEL_FILE)[1].get("info", "{}")).get("distilled") or {}
        if distilled.get("method") == "progressive":
            found.setdefault(distilled["steps"], folder / MODEL_FILE)
    if not found:
        raise FileNotFoundError(f"{folder / STUDENTS} holds no students: it is not a progressive distillation's folder")
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------------- the losses


def _flow_point(x0, noise, s):
    """x_s = (1 - s) x_0 + s eps for times s (B,)."""
    return _column(1 - s, x0) * x0 + _column(s, x0) * noise


def reflow_loss(student, noise, x1, s):
    """Flow matching on the straight line from a pair's noise to the teacher's image x1 (Liu et al. 2022, Eq. 1)."""
    x = _flow_point(x1, noise, s)
    return ((flow_velocity(student, x, s) - (noise - x1)) ** 2).mean()


def progressive_target(teacher, x, s, s_next):
    """The velocity that takes x from s to s_next in one Euler step as two teacher Euler steps do (via the midpoint)."""
    mid = (s + s_next) / 2
    x_mid = x + _column(mid - s, x) * flow_velocity(teacher, x, s)
    x_end = x_mid + _column(s_next - mid, x) * flow_velocity(teacher, x_mid, mid)
    return (x_end - x) / _column(s_next - s, x)


def progressive_loss(student, teacher, x0, noise, k, n_student):
    """Salimans & Ho 2022, Alg. 2 in flow terms: k (B,) in 1..n_student picks s = k / n_student on the student's grid."""
    s, s_next = k / n_student, (k - 1) / n_student
    x = _flow_point(x0, noise, s)
    with torch.no_grad():
        target = progressive_target(teacher, x, s, s_next)
    return ((flow_velocity(student, x, s) - target) ** 2).mean()


def consistency_fn(net, x, s):
    """f(x, s) = x - s v(x, s): the flow's estimate of x_0, exactly x at s = 0 (the consistency boundary condition)."""
    return x - _column(s, x) * flow_velocity(net, x, s)


def consistency_loss(student, target, teacher, x0, noise, n, N):
    """Consistency distillation (Song et al. 2023, Alg. 2, squared L2): n (B,) in 1..N.

    x at s_n = n / N; the teacher's Heun step (Euler on the last step, to s = 0) gives x-hat at s_{n-1};
    the loss is ||f_theta(x, s_n) - f_target(x-hat, s_{n-1})||^2.
    """
    s, s_prev = n / N, (n - 1) / N
    x = _flow_point(x0, noise, s)
    with torch.no_grad():
        v = flow_velocity(teacher, x, s)
        x_hat = x + _column(s_prev - s, x) * v
        heun = _column((s_prev > 0).to(x.dtype), x)  # Heun where s_prev > 0, Euler to the data
        v_next = flow_velocity(teacher, x_hat, s_prev)
        x_hat = x + _column(s_prev - s, x) * (v + heun * (v_next - v) / 2)
        goal = consistency_fn(target, x_hat, s_prev)
    return ((consistency_fn(student, x, s) - goal) ** 2).mean()


# ----------------------------------------------------------------------------------- sampling


def consistency_sample(velocity, noise: torch.Tensor, steps: int, generator=None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) at times 1, (steps - 1) / steps, ..., 1 / steps.

    x = f(noise, 1); then at each later time s, noise x again to x_s = (1 - s) x + s z with fresh z and
    take x = f(x_s, s). `velocity(x, s)` is the network as a flow (s a (B,) tensor). One step is one call.
    This is `samplers.sample_consistency` on the straight path's levels.
    """
    return sample_consistency(lambda x, level: flow_estimates(velocity, x, level), noise, flow_levels(steps), generator)


def teacher_pairs(teacher, n: int, steps: int, seed: int, shape, batch_size: int = 500, bf16: bool = False):
    """(noise, x1): n draws of noise and the images the teacher's Heun ODE (`steps` steps) takes them to, unclipped."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *shape), generator=generator)
    device = next(teacher.parameters()).device
    denoiser = bound(Denoiser(teacher, "flow"))
    out = []
    with autocast(device, bf16):
        for i in range(0, n, batch_size):
            out.append(sample_heun(denoiser, noise[i:i + batch_size].to(device), flow_levels(steps)).float().cpu())
    return noise, torch.cat(out)


def segment_strays(xs: list[torch.Tensor], times: list[float]) -> tuple[list[float], list[float]]:
    """Where along the paths the velocity strays: for each segment k of the paths visited at `times` (xs[k] (B, ...)
    at times[k]), its middle time and E ||v_k - c||^2 / E ||c||^2, with v_k = (x_{k+1} - x_k) / (tau_{k+1} - tau_k)
    the segment's velocity, c = (x_end - x_0) / (tau_end - tau_0) the straight line's, E the mean over paths."""
    if len(xs) != len(times) or len(xs) < 3:
        raise ValueError("straightness needs at least 3 points of a path and one time for each")
    chord = (xs[-1] - xs[0]).flatten(1).double() / (times[-1] - times[0])  # (B, D)
    scale = (chord**2).sum(1).mean()
    middles, values = [], []
    for k in range(len(xs) - 1):
        v = (xs[k + 1] - xs[k]).flatten(1).double() / (times[k + 1] - times[k])
        middles.append((times[k] + times[k + 1]) / 2)
        values.append(float(((v - chord) ** 2).sum(1).mean() / scale))
    return middles, values


def straightness(xs: list[torch.Tensor], times: list[float]) -> float:
    """Liu et al. 2022's straightness of the paths visited at `times`, normalised: the `segment_strays` averaged
    over time, S = sum_k |dt_k| stray_k / |tau_end - tau_0| = E sum_k |dt_k| ||v_k - c||^2 / (|tau_end - tau_0| E ||c||^2).

    0 when every segment moves along its chord at the chord's speed, so that one Euler step would land exactly;
    1 when the velocity strays from the chord by as much as the chord's own length, on average.
    """
    _, strays = segment_strays(xs, times)
    return sum(abs(b - a) * v for a, b, v in zip(times, times[1:], strays)) / abs(times[-1] - times[0])


# ----------------------------------------------------------------------------------- the loop


@dataclass
class DistillResult(Run):
    """A distillation's run (`model` the student, `ema_model` its EMA weights, for sampling), and what it made."""

    students: dict[int, torch.nn.Module] = dataclasses.field(default_factory=dict)  # progressive: steps -> EMA student
    seconds: float = 0.0  # wall time of the whole run so far, resumed parts and reflow's pairs included


def student_info(config: DistillConfig, teacher_info: dict, step: int, sampling_steps: int | None,
                 seconds: float) -> dict:
    """The checkpoint info of a student: the teacher's, with what was distilled, how long it took (wall seconds,
    reflow's pairs included) and how it samples by default."""
    sampler = {"reflow": ["euler", 4], "progressive": ["euler", sampling_steps], "consistency": ["consistency", 1]}
    distilled = {"method": config.method, "teacher": config.teacher, "steps": sampling_steps,
                 "sampler": sampler[config.method], "seconds": round(seconds, 1), "config": dataclasses.asdict(config)}
    return {k: v for k, v in teacher_info.items() if k != "step"} | {"distilled": distilled, "step": step}


def distill(config: DistillConfig, out_dir=None, device=None, progress: bool = True, max_seconds: float | None = None,
            callback=None, overwrite: bool = False) -> DistillResult:
    """Distil `config.teacher` into a student (or resume, when `out_dir` holds a distillation state).

    Writes `out_dir/model.safetensors` (the student's EMA weights) and `distill_state.safetensors` (all that is
    needed to resume, the same way `train` resumes) every `save_every` steps and at the end; progressive
    distillation also keeps each round's student in `out_dir/students/steps_NNN.safetensors`. Reflow first
    draws its pairs from the teacher into `out_dir/pairs.safetensors`. `max_seconds` stops early, with a
    checkpoint; `callback(step, loss, result)` runs every step. Nothing earlier is lost (`outputs`).
    """
    check_max_seconds(max_seconds)
    if out_dir is None:
        return _distill(config, None, device, progress, max_seconds, callback)
    out_dir = check_writable(out_dir)
    with RunLock(out_dir):
        clean_temporary(out_dir)
        check_new_run(out_dir, MODEL_FILE, STATE_FILE, overwrite)
        return _distill(config, out_dir, device, progress, max_seconds, callback)


def _distill(config, out_dir, device, progress, max_seconds, callback) -> DistillResult:
    device = pick_device(device)
    clock = time.perf_counter()
    teacher, teacher_info = load_teacher(config.teacher, device)
    student = copy.deepcopy(teacher).requires_grad_(True)
    bf16 = bf16_wanted(config.precision, arch_of(teacher), device)
    # the training draws come from seed + 1; reflow's pairs use `seed` itself
    run = new_run(student, config.lr, config.ema_decay, config.seed + 1, device, bf16, config.grad_clip, DistillResult)
    target = copy.deepcopy(teacher)
    if out_dir is not None and (out_dir / STATE_FILE).exists():
        _load_state(out_dir / STATE_FILE, config, run, target, teacher)
    data = _training_data(config, teacher, teacher_info, out_dir, device, bf16, progress)
    task = DistillTask(config, teacher, teacher_info, target, data, out_dir, clock)
    return fit(run, task, config.total_steps(), max_seconds, progress, callback)


class DistillTask(Task):
    """`fit`'s task for `distill`: the method's loss; progressive distillation's rounds (the last student becomes
    the teacher, with a fresh EMA and optimiser); consistency's target network; students and state in `out_dir`."""

    desc = "distilling"

    def __init__(self, config: DistillConfig, teacher, teacher_info: dict, target, data, out_dir, clock: float):
        self.config, self.teacher, self.teacher_info, self.target = config, teacher, teacher_info, target
        self.data, self.out_dir, self.clock = data, out_dir, clock

    def begin_step(self, run: DistillResult) -> None:
        round_, step_in_round = divmod(run.step, self.config.steps)
        if self.config.method == "progressive" and step_in_round == 0 and round_ > 0:  # the last student teaches now
            self.teacher.load_state_dict(run.ema_model.state_dict())
            run.model.load_state_dict(run.ema_model.state_dict())
            run.ema = EMA(run.model, self.config.ema_decay)
            run.optimizer = torch.optim.AdamW(run.model.parameters(), lr=self.config.lr, weight_decay=0.0)

    def loss(self, run: DistillResult) -> torch.Tensor:
        """The method's loss on a batch drawn from `run.generator` (reflow: of pairs; the others: of data)."""
        config, (first, second), generator, device = self.config, self.data, run.generator, run.device
        B = config.batch_size
        idx = torch.randint(0, len(first), (B,), generator=generator)
        if config.method == "reflow":  # first: the pairs' noise, second: the teacher's images
            s = torch.rand(B, generator=generator).to(device)
            return reflow_loss(run.model, first[idx], second[idx], s)
        noise = torch.randn((B, *first.shape[1:]), generator=generator).to(device)
        if config.method == "progressive":
            n_student = config.round_students()[run.step // config.steps]
            k = torch.randint(1, n_student + 1, (B,), generator=generator).to(device)
            return progressive_loss(run.model, self.teacher, first[idx], noise, k.float(), n_student)
        N = config.teacher_steps
        n = torch.randint(1, N + 1, (B,), generator=generator).to(device)
        return consistency_loss(run.model, self.target, self.teacher, first[idx], noise, n.float(), N)

    def ema_step(self, run: DistillResult) -> int:
        return run.step % self.config.steps if self.config.method == "progressive" else run.step

    def end_step(self, run: DistillResult) -> None:
        if self.config.method == "consistency":  # theta^- <- mu theta^- + (1 - mu) theta
            with torch.no_grad():
                for t_p, p in zip(self.target.parameters(), run.model.parameters()):
                    t_p.lerp_(p, 1 - self.config.target_decay)

    def checkpoint(self, run: DistillResult, last: bool) -> None:
        config, out_dir = self.config, self.out_dir
        run.seconds, self.clock = run.seconds + time.perf_counter() - self.clock, time.perf_counter()
        round_end = run.step % config.steps == 0
        if config.method == "progressive" and round_end:
            n = config.round_students()[run.step // config.steps - 1]
            run.students[n] = copy.deepcopy(run.ema_model)
            if out_dir is not None:
                save_model(out_dir / STUDENTS / f"steps_{n:03d}.safetensors", run.ema_model,
                           student_info(config, self.teacher_info, run.step, n, run.seconds))
        if out_dir is not None and (run.step % config.save_every == 0 or last or round_end):
            _save_state(out_dir, config, self.teacher_info, run, self.target, self.teacher)


def _training_data(config, teacher, teacher_info, out_dir, device, bf16, progress):
    """Reflow: (noise, teacher images) pairs, made once and kept in OUT; the others: (real data, None)."""
    stored = TrainConfig.from_stored(teacher_info["train_config"])
    if config.method != "reflow":
        return load_training_data(stored)[0].to(device), None
    path = None if out_dir is None else out_dir / PAIRS_FILE
    if path is not None and path.exists():
        tensors, metadata = read_tensors(path)
        made_by, recipe = json.loads(metadata.get("made_by", "{}")), _pair_recipe(config)
        if "teacher_sha256" not in made_by:  # pairs drawn before the teacher's digest was recorded
            recipe.pop("teacher_sha256")
        if made_by != recipe:
            raise CheckpointError(f"{path} holds pairs made another way ({metadata.get('made_by')}): "
                                  "distil into a new --out folder")
        return tensors["noise"].to(device), tensors["images"].to(device)
    if progress:
        print(f"drawing {config.pairs} (noise, image) pairs from the teacher (Heun, {config.pair_steps} steps)")
    image = stored.image_shape()  # (channels, size), or None for 2-D points
    shape = (image[0], image[1], image[1]) if image else (teacher.config.data_dim,)
    noise, images = teacher_pairs(teacher, config.pairs, config.pair_steps, config.seed, shape, bf16=bf16)
    if path is not None:
        save_tensors(path, {"noise": noise, "images": images},
                     {"format": FORMAT, "kind": "reflow_pairs", "made_by": json.dumps(_pair_recipe(config))})
    return noise.to(device), images.to(device)


def _pair_recipe(config: DistillConfig) -> dict:
    return {"teacher": config.teacher, "pairs": config.pairs, "pair_steps": config.pair_steps, "seed": config.seed,
            "precision": config.precision, "teacher_sha256": teacher_digest(config)}


def _save_state(out_dir, config, teacher_info, run: DistillResult, target, teacher) -> None:
    """The student's EMA weights for sampling, then everything needed to resume."""
    n = None
    if config.method == "progressive":
        n = config.round_students()[min((run.step - 1) // config.steps, config.rounds() - 1)]
    save_model(out_dir / MODEL_FILE, run.ema_model, student_info(config, teacher_info, run.step, n, run.seconds))
    tensors = run_tensors(run)
    tensors.update({f"target.{k}": v for k, v in target.state_dict().items()})
    tensors.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})  # progressive: this round's teacher
    save_tensors(out_dir / STATE_FILE, tensors, {"format": FORMAT, "kind": "distill_state",
                                                  "step": str(run.step),
                                                  "seconds": f"{run.seconds:.3f}",
                                                  "distill_config": json.dumps(dataclasses.asdict(config)),
                                                  "teacher_sha256": teacher_digest(config)})


def _load_state(path, config, run: DistillResult, target, teacher) -> None:
    tensors, metadata = read_tensors(path)
    if metadata.get("kind") != "distill_state":
        raise CheckpointError(f"{path} is not a distillation state")
    stored, current = json.loads(metadata["distill_config"]), dataclasses.asdict(config)
    free = RESUMABLE_CHANGES + (("steps",) if config.method != "progressive" else ())  # rounds depend on steps
    changed = {k: (stored.get(k), v) for k, v in current.items() if stored.get(k) != v and k not in free}
    if changed:
        raise CheckpointError(f"{path.parent} holds a distillation with other settings, (stored, now): {changed}. "
                              "Resume with the same settings (reflow and consistency may change only --steps) or "
                              "choose another --out folder")
    pinned = metadata.get("teacher_sha256")
    if pinned is not None and pinned != teacher_digest(config):
        raise CheckpointError(f"{path.parent} holds a distillation of the teacher {config.teacher} as it was ({pinned}); "
                              f"its weights are now {teacher_digest(config)}: restore that teacher, or distil into a "
                              "new --out folder")
    step = int(metadata["step"])
    at_round_start = config.method == "progressive" and step % config.steps == 0
    restore_run(run, tensors, step, optimizer=not at_round_start and all(k in tensors for k in optimizer_keys(run.model)))
    load_prefixed(target, tensors, "target.")
    load_prefixed(teacher, tensors, "teacher.")
    run.seconds = float(metadata.get("seconds", 0.0))
