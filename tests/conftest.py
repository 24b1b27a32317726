"""Shared fixtures. Tests run on the CPU with fixed seeds; nothing touches the network."""

import os

# Set before torch loads OpenMP, and inherited by the notebook kernels and the browser test's server: idle OpenMP
# threads sleep instead of spinning, which keeps the suite from fighting itself (and other jobs) on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("DIFFUSION_COURSE_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def gaussian_tolerance(std: float, n: int, sigmas: float = 5.0) -> float:
    """A bound on |sample mean - true mean| that a correct sampler exceeds with negligible probability."""
    return sigmas * std / n**0.5
