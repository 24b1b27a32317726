"""Reference samples: what every committed model and every sampler gives for a fixed seed, kept from before a refactor.

`tests/reference/samples.safetensors` was written by this file's `write_references()` from the library as it
was before the "One language" refactor (commit 6e44b1b), and is never rewritten by the tests. Each case
below samples again with today's library and must give the same numbers to round-off: a refactor of the
samplers, the denoiser wrapping, guidance or decoding that changed a single step would move them far more.

Cases cover each sampler a model supports (DDPM ancestral, DDIM with eta 0 and 1, DPM-Solver++(2M), Heun,
Euler, the consistency sampler), classifier-free guidance, captions and negative prompts, inpainting,
autoguidance, distilled students with their own samplers, latent models (decoded), image-to-image, and
untrained networks of the parametrisations no committed model uses (DDPM eps and x0 on the linear schedule, EDM).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import diffusion_lib as dl
from diffusion_lib.checkpoint import PRETRAINED_DIR

REFERENCE = Path(__file__).parent / "reference" / "samples.safetensors"
N, SEED = 2, 0
# Round-off only: the same arithmetic in another order moves float32 samples by ~1e-6; one step done differently
# (an off-by-one time, a missing guidance term) moves them by ~1e-2 or more.
ATOL = 2e-4
# DDPM's ancestral steps (eta = 1) were formed in float32 before the refactor, where sqrt(1 - ab_prev - sigma^2)
# cancels: on the cosine schedule's step 999 -> 666 it came out 0.0 against 7.49e-5 in float64, and sigma at
# 333 -> 0 was 0.0064266 against 0.0064249. The family forms its coefficients in float64, so the cases with eta = 1
# move by up to 8.4e-4 (measured: 8.4e-4, 8.4e-4 and 1.8e-4); a wrong step would still move them by ~1e-2 or more.
FLOAT32_COEFFICIENTS = {"mnist_uncond/ddim-eta1": 2e-3, "mnist_uncond/ddpm": 2e-3, "mnist_text/ddpm-negative": 2e-3}


def untrained(objective: str, prediction: str | None = None, schedule: str = "cosine"):
    """A small U-Net with fixed random weights, and the info a checkpoint of that parametrisation would carry."""
    torch.manual_seed(0)
    model = dl.build_model("unet", {"base_channels": 8, "image_size": 28}).eval()
    info = {"schedule": schedule, "T": 1000, "prediction": prediction or objective, "objective": objective,
            "data": "mnist"}
    return model, info


def sample(name_or_model, n=N, **kwargs):
    model, info = dl.pretrained(name_or_model) if isinstance(name_or_model, str) else name_or_model
    return dl.generate(model, info, n, seed=SEED, **kwargs)[0]


def autoguided():
    model, info = dl.pretrained("mnist_uncond")
    weak, weak_info = dl.load_model(PRETRAINED_DIR / "mnist_uncond" / "snapshots" / "step_001000.safetensors")
    return dl.generate(dl.autoguided(model, info, weak, weak_info, 1.5), info, N, "heun", 3, seed=SEED)[0]


def inpainted():
    model, info = dl.pretrained("mnist_cond")
    images = dl.load_mnist(train=False)[0][:N]
    return dl.inpaint_images(model, info, images, dl.named_mask("top", images.shape), 4, guidance=2.0,
                             labels=torch.tensor([3, 7]), seed=SEED)[0]


def image_to_image():
    model, info = dl.pretrained("mnist_latent_unet")
    images = dl.load_mnist(train=False)[0][:N]
    return dl.image_to_image(model, info, images, ["a four", "a thick eight"], strength=0.6, steps=3, guidance=3.0,
                             seed=SEED)


PROMPTS = ["a thick seven", "one written slanted"]
CASES = {
    **{f"mnist_uncond/{s}{'-eta1' if eta else ''}": (lambda s=s, eta=eta: sample("mnist_uncond", sampler=s, steps=4,
                                                                                 eta=eta))
       for s, eta in (("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpm-solver++", 0.0), ("euler", 0.0))},
    "mnist_uncond/heun": lambda: sample("mnist_uncond", sampler="heun", steps=3),
    "mnist_uncond/consistency": lambda: sample("mnist_uncond", sampler="consistency", steps=2),
    "mnist_uncond/default": lambda: sample("mnist_uncond", steps=2),
    "mnist_cond/ddim-guided": lambda: sample("mnist_cond", sampler="ddim", steps=4, guidance=3.0,
                                             labels=torch.tensor([3, 7])),
    "mnist_cond/heun-guided": lambda: sample("mnist_cond", sampler="heun", steps=3, guidance=2.0,
                                             labels=torch.tensor([0, 9])),
    "mnist_cond/drawn-labels": lambda: sample("mnist_cond", sampler="euler", steps=3),
    "fashion_cond/ddim-guided": lambda: sample("fashion_cond", sampler="ddim", steps=4, guidance=2.0,
                                               labels=torch.tensor([1, 8])),
    "mnist_text/dpm-solver++": lambda: sample("mnist_text", sampler="dpm-solver++", steps=4, guidance=3.0,
                                              prompts=PROMPTS),
    "mnist_text/ddpm-negative": lambda: sample("mnist_text", sampler="ddpm", steps=4, guidance=3.0, prompts=PROMPTS,
                                               negative_prompt="a thin seven"),
    "mnist_text_pixel/heun": lambda: sample("mnist_text_pixel", sampler="heun", steps=3, guidance=3.0, prompts=PROMPTS),
    "mnist_latent_unet/heun": lambda: sample("mnist_latent_unet", sampler="heun", steps=3, guidance=3.0,
                                             prompts=PROMPTS),
    "mnist_latent_unet/latents": lambda: sample("mnist_latent_unet", sampler="euler", steps=3, prompts=PROMPTS,
                                                decode=False),
    "mnist_latent_mmdit/euler-negative": lambda: sample("mnist_latent_mmdit", sampler="euler", steps=3, guidance=3.0,
                                                        prompts=PROMPTS, negative_prompt="a thin seven"),
    "mnist_progressive/own": lambda: sample("mnist_progressive"),
    "mnist_consistency/own": lambda: sample("mnist_consistency"),
    "mnist_consistency/two-steps": lambda: sample("mnist_consistency", sampler="consistency", steps=2),
    "mnist_reflow/own": lambda: sample("mnist_reflow"),
    "mnist_uncond/autoguided": autoguided,
    "mnist_cond/inpainted": inpainted,
    "mnist_latent_unet/image-to-image": image_to_image,
    "untrained-ddpm-eps-linear/ddim": lambda: sample(untrained("ddpm", "eps", "linear"), sampler="ddim", steps=4),
    "untrained-ddpm-eps-linear/ddpm": lambda: sample(untrained("ddpm", "eps", "linear"), sampler="ddpm", steps=4),
    "untrained-ddpm-x0/dpm-solver++": lambda: sample(untrained("ddpm", "x0"), sampler="dpm-solver++", steps=4),
    "untrained-edm/heun": lambda: sample(untrained("edm"), sampler="heun", steps=3),
    "untrained-edm/ddim": lambda: sample(untrained("edm"), sampler="ddim", steps=4),
}


def write_references() -> None:
    """Write the reference file once, from the library as it is now. It refuses to replace an existing one."""
    if REFERENCE.exists():
        raise SystemExit(f"{REFERENCE} exists: the references are made once, before a refactor; delete it by hand "
                         "only if the samples are meant to change")
    REFERENCE.parent.mkdir(exist_ok=True)
    with torch.no_grad():
        save_file({name: make().float().contiguous() for name, make in CASES.items()}, str(REFERENCE))


@pytest.fixture(scope="module")
def references():
    return load_file(str(REFERENCE))


def test_every_case_has_a_reference(references):
    assert sorted(references) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_samples_equal_the_references(references, name):
    with torch.no_grad():
        got = CASES[name]().float()
    expected = references[name]
    assert got.shape == expected.shape and bool(expected.isfinite().all())
    assert float(expected.std()) > 0.05  # a real sample, not a constant that any code would reproduce
    assert torch.allclose(got, expected, atol=FLOAT32_COEFFICIENTS.get(name, ATOL)), f"{name}: max difference {float((got - expected).abs().max()):.2e}"


if __name__ == "__main__":
    write_references()
