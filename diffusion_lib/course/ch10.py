"""Chapter 10 helpers: a tiny Stable Diffusion, measured. The autoencoder's ceiling, step costs in pixels and
latents, quality and caption agreement, image-to-image and negative prompts."""

from __future__ import annotations

import time

import torch
from matplotlib.figure import Figure

from ..autoencoder import decode_latents, encode_images
from ..checkpoint import pretrained
from ..classifier import classify
from ..evaluation import score
from ..pipeline import generate, image_shape, image_to_image
from ..text import ATTRIBUTE_WORDS, attribute_agreement, caption, parse_caption
from .ch01 import median_seconds
from .ch01 import seconds_per_call as timed_call
from .plots import show_grid, to_numpy_image

AUTOENCODER = "mnist_vae"
# label -> committed model: the pixel text U-Net and the two latent denoisers, all of about 225,000-255,000
# parameters, trained on the same captions for the same wall time (their READMEs)
MODELS = {"pixel U-Net": "mnist_text_pixel", "latent U-Net": "mnist_latent_unet", "latent MMDiT": "mnist_latent_mmdit"}
SAMPLER = ("heun", 10)  # 19 network calls
# the denoiser of the pipeline, image-to-image and negative-prompt measurements and the widget: the latent model
# with the better MNIST-FID at equal training time (`benchmarks/RESULTS.md`, section latent)
PIPELINE = "latent U-Net"


def digit_prompts(n: int) -> list[str]:
    """"a zero", "a one", ..., "an eight", "a nine" (as the training captions say them), in turn for n samples."""
    return [caption(i % 10, {}) for i in range(n)]


def reconstruction_scores(vae, images: torch.Tensor, classifier) -> dict:
    """How well the autoencoder gives images back: pixel MSE and MNIST-FID of D(mu(x)), and the share recognised."""
    recon = decode_latents(vae, encode_images(vae, images))
    real_predicted, _ = classify(classifier, images)
    measured = score(recon, real_predicted, classifier, floor=False)  # accuracy: the class of the original
    return {"n": len(images), "mse": float(((recon - images) ** 2).mean()), "mnist_fid": measured["mnist_fid"],
            "recognised": measured["recognised"], "same_class": measured["accuracy"]}


def seconds_per_call(model, batch: int = 64, repeats: int = 5) -> float:
    """Median seconds of one network call on `batch` inputs of the model's shape (text models get a caption)."""
    from ..text import tokenize

    x = torch.randn(batch, *image_shape(model))
    t = torch.full((batch,), 500.0)
    ids = tokenize(["a thick seven"] * batch)[0] if getattr(model.config, "text_dim", None) else None
    return timed_call(lambda: model(x, t, ids), repeats)


def seconds_per_train_step(model, batch: int = 64, repeats: int = 5) -> float:
    """Median seconds of one training step (flow loss, backward, AdamW) on `batch` random inputs of the model's shape,
    under bfloat16 autocast as the committed runs trained; the model's weights are left as they were."""
    import copy

    from ..continuous import flow_loss
    from ..text import tokenize

    net = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0, z, noise = torch.randn(batch, *image_shape(net)), torch.randn(batch), torch.randn(batch, *image_shape(net))
    ids = tokenize(["a thick seven"] * batch)[0] if getattr(net.config, "text_dim", None) else None

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = flow_loss(net, x0, z, noise, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats)


def seconds_to_decode(batch: int = 64, repeats: int = 5) -> float:
    """Median seconds to decode `batch` latents to pixels with the committed autoencoder (once per sample)."""
    vae = pretrained(AUTOENCODER)[0]
    c = vae.config
    z = torch.randn(batch, c.latent_channels, c.latent_size, c.latent_size)
    return timed_call(lambda: vae.decode(z), repeats)


def quality(model, info, classifier, n: int, w: float = 1.0, seed: int = 0, sampler=SAMPLER) -> tuple[dict, torch.Tensor]:
    """MNIST-FID, share recognised and requested-digit accuracy of n samples for "a zero" ... "a nine" at scale w."""
    prompts = digit_prompts(n)
    start = time.perf_counter()
    samples, _ = generate(model, info, n, *sampler, guidance=w, prompts=prompts, seed=seed)
    seconds = (time.perf_counter() - start) / n
    measured = score(samples, torch.tensor([i % 10 for i in range(n)]), classifier, floor=False)
    return {"n": n, "w": w, "sampler": list(sampler), "seed": seed, "seconds_per_image": seconds,
            "mnist_fid": measured["mnist_fid"], "recognised": measured["recognised"],
            "requested_digit": measured["accuracy"]}, samples


def image_to_image_scores(model, info, classifier, images: torch.Tensor, labels: torch.Tensor, strength: float,
                          w: float = 3.0, steps: int = 10, seed: int = 0) -> dict:
    """SDEdit from real digits towards another digit ((label + 1) mod 10, "a seven" for a six): how often the result
    is the asked digit, how often it is still the source's, and how far it moved (RMS pixel difference)."""
    target = (labels + 1) % 10
    prompts = [caption(int(d), {}) for d in target]
    out = image_to_image(model, info, images, prompts, strength, steps, guidance=w, seed=seed)
    predicted, _ = classify(classifier, out)
    return {"strength": strength, "n": len(images), "w": w, "follows": float((predicted == target).float().mean()),
            "keeps_source_digit": float((predicted == labels).float().mean()),
            "rms_change": float(((out - images) ** 2).flatten(1).mean(1).sqrt().mean())}


def negative_prompt_scores(model, info, classifier, prompt: str, negative: str | None, n: int, w: float = 3.0,
                           seed: int = 0, sampler=SAMPLER) -> dict:
    """n samples of `prompt` with `negative` in the empty caption's place: digit accuracy, and per attribute the share
    of samples above their digit's median (thicker, more slanted, wider than half the training digits)."""
    samples, _ = generate(model, info, n, *sampler, guidance=w, prompts=[prompt] * n, seed=seed,
                          negative_prompt=negative)
    digit, _ = parse_caption(prompt)
    predicted, _ = classify(classifier, samples)
    upper = {name: pair[1] for name, pair in ATTRIBUTE_WORDS.items()}  # agreeing with the second word = above
    above = attribute_agreement(samples, torch.full((n,), digit), [upper] * n, info["text"]["thresholds"])
    return {"prompt": prompt, "negative": negative, "n": n, "w": w,
            "digit_accuracy": float((predicted == digit).float().mean()), "above_median": above}


def interpolation(vae, scale: float, a: torch.Tensor, b: torch.Tensor, steps: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows (steps, C, H, W): the pixel average (1 - l) a + l b, and D of the latent average of scale * mu."""
    lam = torch.linspace(0, 1, steps)[:, None, None, None]
    pixels = (1 - lam) * a + lam * b
    za, zb = scale * encode_images(vae, torch.stack([a, b]))
    latents = decode_latents(vae, ((1 - lam) * za + lam * zb) / scale)
    return pixels, latents


def interpolation_figure(pixels: torch.Tensor, latents: torch.Tensor) -> Figure:
    """The two interpolation rows, one above the other."""
    n = len(pixels)
    fig = Figure(figsize=(1.1 * n, 2.6), layout="constrained")
    axes = fig.subplots(2, n)
    for row, (images, name) in enumerate(((pixels, "pixels"), (latents, "latents"))):
        for i in range(n):
            axes[row, i].imshow(to_numpy_image(images[i]), cmap="gray", vmin=0, vmax=1)
            axes[row, i].axis("off")
        axes[row, 0].set_title(f"average in {name}", fontsize=8, loc="left")
    return fig


def pipeline_view(model, info, prompt: str, w: float, negative: str = "", source: torch.Tensor | None = None,
                  strength: float = 1.0, n: int = 8, steps: int = 10, seed: int = 0) -> tuple[Figure, float]:
    """The whole pipeline on one caption: text -> latent denoiser with guidance -> decoder; with `source` images
    (n, 1, 28, 28) and strength < 1, image-to-image instead. Returns (the figure, seconds it took)."""
    start = time.perf_counter()
    negative = negative or None
    if source is not None and strength < 1:
        images = image_to_image(model, info, source, [prompt] * n, strength, steps, guidance=w, negative_prompt=negative,
                                seed=seed)
    else:
        images, _ = generate(model, info, n, "euler", steps, guidance=w, prompts=[prompt] * n, seed=seed,
                             negative_prompt=negative if w != 1 else None)
    seconds = time.perf_counter() - start
    title = f"'{prompt}'" + (f", not '{negative}'" if negative and w != 1 else "") + f", w = {w:g}" + \
        (f", strength {strength:.2f}" if source is not None and strength < 1 else "") + f" ({seconds:.2f} s)"
    return show_grid(images, title, ncols=n), seconds
