"""Chapter 7 helpers: the caption and inpainting views, attention maps, and the chapter's measurements."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..classifier import classify
from ..inpainting import named_mask
from ..pipeline import generate, inpaint_images
from ..text import ATTRIBUTE_WORDS, DIGIT_WORDS, HELD_OUT, CrossAttention, attribute_agreement, parse_caption
from .plots import show_grid, to_numpy_image


def caption_view(text: str, w: float, model, info: dict, n: int = 8, steps: int = 10, seed: int = 0) -> Figure:
    """n samples for one caption at guidance w (DPM-Solver++, fixed seed); a caption it cannot read says why."""
    try:
        samples, _ = generate(model, info, n, "dpm-solver++", steps, guidance=w, prompts=[text] * n, seed=seed)
    except ValueError as error:
        fig = Figure(figsize=(8, 1.2))
        fig.text(0.01, 0.5, f"cannot draw {text!r}:\n{error}", fontsize=9, va="center", wrap=True)
        return fig
    return show_grid(samples, f'"{text}", guidance w = {w:g} (DPM-Solver++, {steps} steps)', ncols=n)


def caption_sets(phrasing: str = "a {thickness} {slant} {digit}") -> dict[str, list[str]]:
    """Captions naming a thickness and a slant: the held-out pair of each digit, and its three seen pairs."""
    sets = {"held out": [], "seen": []}
    for digit in range(10):
        for thickness in ATTRIBUTE_WORDS["thickness"]:
            for slant in ATTRIBUTE_WORDS["slant"]:
                text = phrasing.format(thickness=thickness, slant=slant, digit=DIGIT_WORDS[digit])
                sets["held out" if (thickness, slant) == HELD_OUT[digit] else "seen"].append(text)
    return sets


def caption_scores(model, info: dict, classifier, captions: list[str], per_caption: int, w: float,
                   steps: int = 10, seed: int = 0) -> dict[str, float]:
    """Digit accuracy and per-attribute agreement of `per_caption` samples for each caption.

    Agreement: the sample's measured thickness (or slant) lies on the asked word's side of the
    median of real training digits of that class; 0.5 is chance.
    """
    prompts = [text for text in captions for _ in range(per_caption)]
    samples, _ = generate(model, info, len(prompts), "dpm-solver++", steps, guidance=w, prompts=prompts, seed=seed)
    digits, asked = zip(*(parse_caption(text) for text in prompts))
    digits = torch.tensor(digits)
    predicted, _ = classify(classifier, samples)
    scores = {"n": len(prompts), "digit_accuracy": (predicted == digits).float().mean().item()}
    scores.update(attribute_agreement(samples, digits, list(asked), info["text"]["thresholds"]))
    return scores


def attention_maps(model, info: dict, text: str, w: float = 3.0, steps: int = 10, seed: int = 0):
    """Sample one image for `text` and record where its image positions attended.

    Returns (image (1, 28, 28), words (the caption's tokens, <start> first), maps {resolution:
    (L, H, W)}): each map averaged over heads, over the cross-attention layers of that resolution
    and over the sampling steps, for the conditional branch only.
    """
    words = ["<start>", *text.lower().split()]
    records: dict[int, list[torch.Tensor]] = {}

    def record(module, inputs, output):
        h, tokens, keep = inputs
        weights, _ = module.weights(h[:1], tokens[:1], keep[:1])  # (1, heads, HW, L): the conditional branch
        side = h.shape[-1]
        records.setdefault(side, []).append(weights[0].mean(0)[:, : len(words)].T.reshape(len(words), side, side))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, CrossAttention)]
    try:
        image, _ = generate(model, info, 1, "dpm-solver++", steps, guidance=w, prompts=[text], seed=seed)
    finally:
        for hook in hooks:
            hook.remove()
    return image[0], words, {side: torch.stack(maps).mean(0) for side, maps in sorted(records.items(), reverse=True)}


def attention_figure(image: torch.Tensor, words: list[str], maps: torch.Tensor, title: str) -> Figure:
    """The image beside one attention map per token (brighter = more attention from that position)."""
    fig = Figure(figsize=(1.5 * (len(words) + 1), 2.0), layout="constrained")
    axes = fig.subplots(1, len(words) + 1)
    axes[0].imshow(to_numpy_image(image), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("sample", fontsize=9)
    for ax, word, weights in zip(axes[1:], words, maps):
        ax.imshow(weights.numpy(), cmap="magma", vmin=0, vmax=float(maps.max()))
        ax.set_title(f"{word}\n(mean {weights.mean().item():.2f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def inpaint_view(mask_name: str, index: int, target: int | None, images: torch.Tensor, uncond, cond,
                 steps: int = 25, n: int = 4, w: float = 3.0) -> Figure:
    """Test digit `index` with the `mask_name` region hidden, and n completions: by the unconditional
    model (target None) or by the class-conditional one asked for digit `target`."""
    if not 0 <= index < len(images):
        raise ValueError(f"index must lie in 0..{len(images) - 1}, got {index}")
    original = images[index: index + 1].expand(n, -1, -1, -1)
    mask = named_mask(mask_name, original.shape)
    if target is None:
        filled, _ = inpaint_images(*uncond, original, mask, steps, seed=index)
        how = "unconditional model"
    else:
        labels = torch.full((n,), target, dtype=torch.long)
        filled, _ = inpaint_images(*cond, original, mask, steps, guidance=w, labels=labels, seed=index)
        how = f"conditional model asked for a {target} (w = {w:g})"
    shown = torch.cat([original[:1], torch.where(mask.bool(), original[:1], torch.zeros_like(original[:1])), filled])
    captions = ["original", f"{mask_name} hidden"] + [f"completion {i + 1}" for i in range(n)]
    return show_grid(shown, f"inpainting, {how}, DDIM-{steps}", ncols=n + 2, captions=captions)


def inpainting_rates(images: torch.Tensor, labels: torch.Tensor, masks, uncond, cond, classifier, steps: int,
                     w: float = 3.0, resample: int = 1, seed: int = 0) -> list[dict]:
    """Per mask: how often the unconditional completion keeps the true class, and how often the
    conditional model, asked for (label + 1) mod 10, makes the classifier see that class."""
    rows = []
    targets = (labels + 1) % 10
    for name in masks:
        mask = named_mask(name, images.shape)
        kept, _ = inpaint_images(*uncond, images, mask, steps, seed=seed, resample=resample)
        changed, _ = inpaint_images(*cond, images, mask, steps, guidance=w, labels=targets, seed=seed,
                                    resample=resample)
        rows.append({"mask": name, "keeps_class": (classify(classifier, kept)[0] == labels).float().mean().item(),
                     "becomes_target": (classify(classifier, changed)[0] == targets).float().mean().item()})
    return rows
