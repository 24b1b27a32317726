"""Where code runs and how much of it: the device, and the course's fast mode.

- `pick_device()`: an explicit argument, else the environment variable
  `DIFFUSION_COURSE_DEVICE`, else cuda, then mps, then cpu.
- `fast_mode()`: true when `DIFFUSION_COURSE_FAST=1`; chapters and tests use it to shrink
  step counts and sample sizes so the whole course executes in minutes.
- `fast_bf16(device)`: whether bfloat16 arithmetic runs natively there (training's
  `precision="auto"` uses it: bf16 autocast speeds a step up only where the hardware has it).
- `bf16_wanted(precision, arch, device)` and `autocast(device, bf16)`: the one precision rule of training,
  distillation and the teacher's samples ("auto", "fp32" or "bf16").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: `device` if given, else $DIFFUSION_COURSE_DEVICE, else cuda > mps > cpu."""
    choice = device if device is not None else os.environ.get("DIFFUSION_COURSE_DEVICE") or None
    if choice is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        choice = torch.device(choice)
    except RuntimeError as error:
        raise ValueError(f"unknown device {choice!r}: use 'cpu', 'cuda', 'cuda:0' or 'mps'") from error
    if choice.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available: use 'cpu'")
    if choice.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but Apple's MPS is not available: use 'cpu'")
    return choice


def fast_bf16(device: torch.device) -> bool:
    """True where bfloat16 autocast is fast: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX.

    On CPUs without them (most laptops) PyTorch emulates bfloat16: held to AVX2, the default U-Net's training step
    ran about 6 times slower under bf16 than in float32 (`benchmarks/recipes.py without-bf16`).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("auto", "fp32", "bf16")


def bf16_wanted(precision: str, arch: str, device: torch.device) -> bool:
    """Whether a run's steps go under bfloat16 autocast: precision "bf16"; or "auto" for a U-Net (where the recipe
    study measured the gain) on hardware with native bf16. Small MLPs and the other models stay in float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and arch == "unet" and fast_bf16(device))


def autocast(device: torch.device, bf16: bool):
    """The context a forward (and backward) pass runs in: bfloat16 autocast when `bf16`, else plain float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux, so no cheap way to tell)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def fast_mode() -> bool:
    """True when the environment variable DIFFUSION_COURSE_FAST is set to 1 (or true/yes)."""
    return os.environ.get("DIFFUSION_COURSE_FAST", "").strip().lower() in ("1", "true", "yes")

