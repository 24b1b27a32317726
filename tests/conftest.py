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


def overfit_losses(model, x, t, target, steps: int) -> list[float]:
    """Each step's loss when Adam (lr 3e-3) fits the model's output at (x, t) to a fixed target: a network that can
    learn at all drives it far down on one batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = (model(x, t) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
