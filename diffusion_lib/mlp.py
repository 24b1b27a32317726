"""A small MLP denoising network for 2-D point data (two moons, Swiss roll, ...).

F(x, noise label): (B, D), (B,) -> (B, D). What it outputs (eps, x0 or v on DDPM's steps, EDM's F, or the
flow's velocity) is its checkpoint's `prediction`; `denoisers` turns it into x0_hat and eps_hat. The label enters through the same sinusoidal
embedding as the U-Net's (Vaswani et al. 2017, Sec. 3.5), concatenated to the input
(as in tiny-diffusion). Code timestep `t` in 0..T-1 is the paper's t+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .unet import check_time_input, timestep_embedding


@dataclass(frozen=True)
class MLPConfig:
    """Everything needed to rebuild an MLP denoiser; stored in checkpoints."""

    data_dim: int = 2
    hidden: int = 128
    layers: int = 3
    time_dim: int = 32
    num_classes: int | None = None  # accepted for a uniform interface; the toy sets have no labels
    interval: bool = False  # told an interval of times, not one noise label (MeanFlow): `denoisers.meanflow_times`


class MLPDenoiser(nn.Module):
    """Residual MLP: [x, emb(t)] -> Linear -> (SiLU, Linear) x layers -> Linear -> eps."""

    def __init__(self, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config = c = config
        if c.num_classes:
            raise ValueError("the MLP denoiser is unconditional: use num_classes=None")
        self.inp = nn.Linear(c.data_dim + c.time_dim, c.hidden)
        self.hidden = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.hidden)) for _ in range(c.layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.data_dim))
        self.interval_mlp = nn.Sequential(nn.Linear(c.time_dim, c.hidden), nn.SiLU(),
                                          nn.Linear(c.hidden, c.hidden)) if c.interval else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.data_dim:
            raise ValueError(f"expected points of shape (B, {self.config.data_dim}), got {tuple(x.shape)}")
        check_time_input(t, x.shape[0], self.config.interval, "point")
        if labels is not None:
            raise ValueError("the MLP denoiser is unconditional: pass labels=None")
        time = t[:, 0] if self.config.interval else t
        h = self.inp(torch.cat([x, timestep_embedding(time, self.config.time_dim)], dim=1))  # (B, hidden)
        if self.config.interval:  # (s, s - r): the interval's length enters as in the U-Net
            h = h + self.interval_mlp(timestep_embedding(t[:, 1], self.config.time_dim))
        for layer in self.hidden:
            h = h + layer(h)
        return self.out(h)
