"""One training loop for every model of the course: `train` and `distill` both run `fit`.

A step is the same whatever is trained (DDPM Algorithm 1; Salimans & Ho 2022, Alg. 2; Song et al. 2023, Alg. 2):

    loss = task.loss(run)           draw a batch from the run's generator, noise it, predict, the loss
    loss.backward()                 the gradient, clipped to norm `grad_clip`
    optimizer.step()                AdamW
    ema.update(model)               the moving average that samples

What differs between tasks (the loss; a learning-rate warm-up; a distillation's rounds and target network;
where checkpoints go; averaging over processes) is a `Task`'s methods, called at fixed points of the step. The
state of a run (weights, EMA, optimiser, generator, losses) is a `Run`, saved and restored whole, so that a
resumed run draws the same numbers as one that never stopped.

| code          | meaning                                                                              |
| ------------- | ------------------------------------------------------------------------------------ |
| `Run`         | what the loop changes: model, EMA, optimiser, the one generator, losses, step count |
| `Task`        | what the loop asks: `loss`, and the hooks `begin_step`, `ema_step`, `end_step`, `reported`, `agree`, `diverged`, `checkpoint` |
| `ema_decay`   | decay_k = min(ema_decay, (1 + k) / (10 + k)) at update k (the usual warm-up of the decay) |
| `bf16`        | forward and backward under bfloat16 autocast (`runtime.autocast`); weights, optimiser and EMA stay float32 |
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .runtime import autocast


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the weights are no longer usable."""


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay.

    decay_k = min(ema_decay, (1 + k) / (10 + k)) at update k, so early weights are forgotten quickly.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_p.dtype.is_floating_point:
                ema_p.lerp_(p, 1 - decay)
            else:
                ema_p.copy_(p)


@dataclass
class Run:
    """A run's state. `ema_model` holds the weights that sample; `generator` makes every random draw of the run."""

    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    bf16: bool = False
    grad_clip: float = 1.0
    losses: list[float] = field(default_factory=list)
    step: int = 0

    @property
    def ema_model(self) -> nn.Module:
        return self.ema.model


def new_run(model: nn.Module, lr: float, ema_decay: float, seed: int, device, bf16=False, grad_clip=1.0, cls=Run):
    """A run at step 0: AdamW (no weight decay) over `model`, its EMA, and a generator seeded by `seed`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    return cls(model, EMA(model, ema_decay), optimizer, generator, device, bf16, grad_clip)


class Task:
    """What `fit` asks of the thing being trained. Only `loss` must be written; the hooks default to a plain run."""

    desc = "training"

    def loss(self, run: Run) -> torch.Tensor:
        """The batch's loss: draw the batch (from `run.generator`), noise it, predict, compare."""
        raise NotImplementedError

    def begin_step(self, run: Run) -> None:
        """Before the step (a warm-up sets the learning rate; a distillation may start a round)."""

    def ema_step(self, run: Run) -> int:
        """The EMA's update count k, for its decay warm-up."""
        return run.step

    def end_step(self, run: Run) -> None:
        """After the EMA's update (a consistency target network follows the student here)."""

    def reported(self, loss: torch.Tensor) -> float:
        """The loss as recorded (averaged over processes when there are several)."""
        return float(loss.detach())

    def agree(self, flag: bool) -> bool:
        """True on every process when it is true on any (so that all stop at the same step)."""
        return flag

    def diverged(self, loss: float, run: Run) -> str:
        return f"the loss became {loss} at step {run.step + 1}: lower --lr"

    def checkpoint(self, run: Run, last: bool) -> None:
        """After each step: save what is due (`last`: the final step, or the time limit is reached)."""


def fit(run: Run, task: Task, total: int, max_seconds: float | None = None, progress: bool = True,
        callback=None) -> Run:
    """Train `run` until it has taken `total` optimiser steps (or `max_seconds` of wall time have passed).

    `callback(step, loss, run)` runs after every step (live plots). A loss that is not finite ends the run with
    `TrainingDiverged`, before anything is saved from the broken weights.
    """
    bar = progress_bar(total, run.step, progress, task.desc)
    start = time.perf_counter()
    while run.step < total:
        task.begin_step(run)
        run.model.train()
        with autocast(run.device, run.bf16):
            loss = task.loss(run)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.grad_clip)
        run.optimizer.step()
        run.ema.update(run.model, task.ema_step(run))
        task.end_step(run)
        value = task.reported(loss)
        if not math.isfinite(value):
            bar.close()
            raise TrainingDiverged(task.diverged(value, run))
        run.step += 1
        run.losses.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if callback is not None:
            callback(run.step, value, run)
        out_of_time = max_seconds is not None and task.agree(time.perf_counter() - start >= max_seconds)
        task.checkpoint(run, last=run.step == total or out_of_time)
        if out_of_time:
            break
    bar.close()
    return run


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "training"):
    """A tqdm bar over optimiser steps, starting at `initial` (a resumed run), or a silent one."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step")


def check_max_seconds(max_seconds: float | None) -> None:
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number, got {max_seconds}")


# --------------------------------------------------------------------------- saving and restoring a run


def run_tensors(run: Run) -> dict[str, torch.Tensor]:
    """A run's state as flat named tensors: `model.*`, `ema.*`, AdamW's `optim.*`, the generator, the losses."""
    tensors = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in run.ema.model.state_dict().items()})
    tensors.update(optimizer_tensors(run.optimizer))
    tensors["rng.generator"] = run.generator.get_state()
    tensors["history.loss"] = torch.tensor(run.losses, dtype=torch.float64)
    return tensors


def restore_run(run: Run, tensors: dict[str, torch.Tensor], step: int, optimizer: bool = True) -> None:
    """Put `run_tensors`' state back into `run` (AdamW's too, unless `optimizer` is False: a fresh optimiser)."""
    load_prefixed(run.model, tensors, "model.")
    load_prefixed(run.ema.model, tensors, "ema.")
    if optimizer:
        load_optimizer(run.optimizer, run.model, tensors)
    run.generator.set_state(tensors["rng.generator"])
    run.losses.extend(tensors["history.loss"].tolist())
    run.step = step


def load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def optimizer_tensors(optimizer) -> dict[str, torch.Tensor]:
    """AdamW's state as flat named tensors (`optim.I.step`, `.exp_avg`, `.exp_avg_sq`), for a safetensors file."""
    tensors = {}
    for i, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{i}.{k}": v.reshape(-1) if v.ndim == 0 else v for k, v in state.items()})
    return tensors


def optimizer_keys(model) -> list[str]:
    """The names `optimizer_tensors` writes once every parameter of `model` has taken a step."""
    return [f"optim.{i}.{k}" for i in range(len(list(model.parameters()))) for k in ("step", "exp_avg", "exp_avg_sq")]


def load_optimizer(optimizer, model, tensors: dict[str, torch.Tensor]) -> None:
    """Put the state written by `optimizer_tensors` back into `optimizer` (over `model`'s parameters)."""
    optim_state = optimizer.state_dict()
    for i, p in enumerate(model.parameters()):
        optim_state["state"][i] = {
            "step": tensors[f"optim.{i}.step"].reshape(()),
            "exp_avg": tensors[f"optim.{i}.exp_avg"].to(p.device),
            "exp_avg_sq": tensors[f"optim.{i}.exp_avg_sq"].to(p.device),
        }
    optimizer.load_state_dict(optim_state)
