"""Speed of the default U-Net on this machine: training images/s and sampling time per image.

    python benchmarks/speed.py [--quick] [--device cpu]

Prints one line per figure. Figures, not tests: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from diffusion_lib import TrainConfig, UNet, as_eps_fn, diffusion_loss, make_schedule, pick_device, sample_loop
from diffusion_lib.training import EMA


def training_throughput(device, batch_size=128, steps=10, warmup=2) -> float:
    """Images per second of full training steps (noising, forward, backward, AdamW, EMA) at `batch_size`."""
    torch.manual_seed(0)
    model = UNet().to(device)
    ema, optimizer = EMA(model, 0.999), torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = make_schedule("linear", 1000)
    x0 = torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        t = torch.randint(0, 1000, (batch_size,), device=device)
        loss = diffusion_loss(model, x0, t, torch.randn_like(x0), schedule)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model, i)
    _sync(device)
    return batch_size * steps / (time.perf_counter() - start)


def sampling_seconds_per_image(device, sampler, steps, batch=16) -> float:
    model = UNet().to(device).eval()
    schedule = make_schedule("linear", 1000)
    eps_fn = as_eps_fn(model, schedule)
    sample_loop(eps_fn, (batch, 1, 28, 28), schedule, "ddim", 2, device=device)  # warm-up
    _sync(device)
    start = time.perf_counter()
    sample_loop(eps_fn, (batch, 1, 28, 28), schedule, sampler, steps, device=device, clip_x0=True)
    _sync(device)
    return (time.perf_counter() - start) / batch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and DDPM with 100 steps only")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    params = sum(p.numel() for p in UNet().parameters())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {device}, torch {torch.__version__}")
    print(f"default U-Net parameters: {params:,}")
    print(f"training throughput at batch 128: {training_throughput(device, steps=3 if args.quick else 10):.1f} images/s")
    ddpm_steps = 100 if args.quick else TrainConfig().T
    ddpm = sampling_seconds_per_image(device, "ddpm", ddpm_steps)
    print(f"DDPM-{ddpm_steps} sampling: {ddpm:.3f} s per image (batch of 16)")
    for steps in (50,) if args.quick else (100, 50, 20, 10):
        print(f"DDIM-{steps} sampling: {sampling_seconds_per_image(device, 'ddim', steps):.3f} s per image (batch of 16)")


if __name__ == "__main__":
    main()
