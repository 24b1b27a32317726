"""Reference training runs: the losses and weights of short runs of every objective and distillation method.

`tests/reference/training.json` was written by this file's `write_references()` from the library as it was
before the shared training loop (commit 16d3f23), and is never rewritten by the tests. Each case trains again
with today's library and must give the same loss at every step and the same weights to round-off: a loop that
drew one number in another order, stepped the EMA at another count or changed a loss would move them far more.
The weights are compared through a fingerprint (their sum, the sum of their magnitudes, and their dot product
with fixed random numbers), for the trained model and its EMA.
"""

import json
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import pytest
import torch

import diffusion_lib as dl
from diffusion_lib import latent
from diffusion_lib.distill import DistillConfig, distill

REFERENCE = Path(__file__).parent / "reference" / "training.json"
TINY_MLP = {"hidden": 16, "layers": 1}
SMALL_UNET = {"base_channels": 8}
MOONS = dict(data="moons", steps=6, batch_size=16, save_every=100, model=TINY_MLP)
# The references were made in float32; precision "auto" would train the U-Net cases in bfloat16 on CPUs with AMX.
DIGITS = dict(data="mnist", steps=3, batch_size=4, save_every=100, precision="fp32")

TRAIN_CASES = {
    "moons-flow": dict(MOONS),
    "moons-edm": dict(MOONS, objective="edm", sigma_data=0.962),  # the value every EDM run used before it was measured
    "moons-ddpm-eps-minsnr": dict(MOONS, objective="ddpm", prediction="eps", loss_weight="min-snr", schedule="linear",
                                  T=50),
    "moons-ddpm-v-warmup": dict(MOONS, objective="ddpm", warmup=2, grad_clip=0.0),
    "mnist-flow-conditional": dict(DIGITS, conditional=True, model=SMALL_UNET),
    "mnist-ddpm-x0": dict(DIGITS, objective="ddpm", prediction="x0", model=SMALL_UNET),
    "mnist-text": dict(DIGITS, text=True, model={"base_channels": 8}),
    "mnist-pixelcnn": dict(DIGITS, arch="pixelcnn", model={"channels": 8, "num_blocks": 1}),
    "mnist-classifier": dict(DIGITS, arch="classifier", model={"channels": 8, "feature_dim": 16}),
    "mnist-vae": dict(DIGITS, arch="vae", model={"base_channels": 8, "groups": 4}),
    "latent-dit": dict(DIGITS, latent="mnist_vae", arch="dit", model={"width": 16, "depth": 1, "heads": 2}),
}
DISTILL_CASES = {
    "reflow": dict(method="reflow", steps=4, batch_size=8, pairs=16, pair_steps=2),
    "progressive": dict(method="progressive", steps=2, batch_size=8, teacher_steps=4, student_steps=1),
    "consistency": dict(method="consistency", steps=4, batch_size=8, teacher_steps=4),
}


def fingerprint(model: torch.nn.Module) -> list[float]:
    """Three numbers that move when any weight moves: sum, sum of magnitudes, dot product with fixed noise."""
    weights = torch.cat([p.detach().double().flatten() for p in model.state_dict().values() if p.is_floating_point()])
    probe = torch.randn(len(weights), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return [float(weights.sum()), float(weights.abs().sum()), float(weights @ probe)]


def moons_teacher(folder: Path) -> Path:
    dl.train(dl.TrainConfig(**MOONS), folder, progress=False)
    return folder


@contextmanager
def few_latent_images(folder: Path):
    """20 fixed random 'MNIST' images and a cache in `folder`, so that the latent case encodes 20, not 60,000."""
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(20, 1, 28, 28, generator=generator) * 2 - 1, torch.arange(20) % 10
    modules = [m for m in (dl.data, dl.training) if hasattr(m, "load_images")]
    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "load_images", lambda *args: (images, labels)))
        stack.enter_context(mock.patch.object(latent, "CACHE_DATA", folder / "cache"))
        latent._training_latents.cache_clear()
        yield
    latent._training_latents.cache_clear()


def run_train(case: str, folder: Path) -> dict:
    config = TRAIN_CASES[case]
    with few_latent_images(folder) if "latent" in config else nullcontext():
        result = dl.train(dl.TrainConfig(**config), folder / case, device="cpu", progress=False)
    return {"losses": result.losses, "model": fingerprint(result.model), "ema": fingerprint(result.ema_model)}


def run_distill(case: str, folder: Path) -> dict:
    teacher = folder / "teacher"
    if not teacher.exists():
        moons_teacher(teacher)
    config = DistillConfig(teacher=str(teacher), **DISTILL_CASES[case])
    result = distill(config, folder / case, device="cpu", progress=False)
    return {"losses": result.losses, "model": fingerprint(result.model), "ema": fingerprint(result.ema_model)}


def write_references(folder: Path) -> None:
    """Run once, before a refactor of the loops: python -c 'from tests.test_reference_training import *; ...'."""
    runs = {f"train/{c}": run_train(c, folder) for c in TRAIN_CASES}
    runs.update({f"distill/{c}": run_distill(c, folder) for c in DISTILL_CASES})
    REFERENCE.write_text(json.dumps(runs, indent=1) + "\n")


def _same(now: dict, then: dict) -> None:
    assert len(now["losses"]) == len(then["losses"])
    assert now["losses"] == pytest.approx(then["losses"], rel=1e-5, abs=1e-7)
    for part in ("model", "ema"):  # rel 1e-4: float32 on another CPU's instructions moved one by 1.1e-5 (Intel vs AMD)
        assert now[part] == pytest.approx(then[part], rel=1e-4, abs=1e-6), part


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_runs_match_the_reference(case, tmp_path):
    _same(run_train(case, tmp_path), json.loads(REFERENCE.read_text())[f"train/{case}"])


@pytest.mark.parametrize("case", list(DISTILL_CASES))
def test_distillation_runs_match_the_reference(case, tmp_path):
    _same(run_distill(case, tmp_path), json.loads(REFERENCE.read_text())[f"distill/{case}"])
