"""Shared fixtures. Tests run on the CPU with fixed seeds; nothing touches the network."""

import os

import pytest
import torch

os.environ.setdefault("DIFFUSION_COURSE_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def gaussian_tolerance(std: float, n: int, sigmas: float = 5.0) -> float:
    """A bound on |sample mean - true mean| that a correct sampler exceeds with negligible probability."""
    return sigmas * std / n**0.5
