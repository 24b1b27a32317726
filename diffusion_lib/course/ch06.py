"""Chapter 6 helpers: the U-Net's shapes, the guidance slider's view and the measured accuracy-diversity trade-off."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..classifier import classify
from ..evaluation import diversity, mnist_fid
from ..pipeline import generate
from .plots import show_grid


def guidance_view(w: float, digit: int, model, info: dict, n: int = 8, steps: int = 20, seed: int = 0) -> Figure:
    """n samples of `digit` at guidance scale w (DDIM, fixed seed: moving w changes only the guidance)."""
    if not 0 <= digit < model.config.num_classes:
        raise ValueError(f"digit must lie in 0..{model.config.num_classes - 1}, got {digit}")
    labels = torch.full((n,), digit, dtype=torch.long)
    samples, _ = generate(model, info, n, "ddim", steps, guidance=w, labels=labels, seed=seed)
    return show_grid(samples, f"digit {digit}, guidance scale w = {w:g} (DDIM-{steps})", ncols=n)


def guidance_sweep(model, info: dict, classifier, scales, n: int, steps: int, seed: int = 0,
                   fid: bool = False) -> dict[str, list[float]]:
    """For each w: the fraction classified as the requested digit, the diversity within a class (and MNIST-FID).

    Diversity is the mean pixel distance between two samples that the classifier puts in the same
    class (`evaluation.diversity` grouped by *predicted* class): grouped by the requested label
    instead, it would count a w = 0 sample of a 7 asked to be a 3 as variety among 3s.
    The same n labels (cycling 0..9) and the same starting noise are used at every w.
    """
    labels = torch.arange(n) % model.config.num_classes
    results = {"w": [], "accuracy": [], "diversity": []} | ({"mnist_fid": []} if fid else {})
    for w in scales:
        samples, _ = generate(model, info, n, "ddim", steps, guidance=w, labels=labels, seed=seed)
        predicted, _ = classify(classifier, samples)
        results["w"].append(float(w))
        results["accuracy"].append((predicted == labels).float().mean().item())
        results["diversity"].append(diversity(samples, predicted))
        if fid:
            results["mnist_fid"].append(mnist_fid(samples, classifier))
    return results


def _part_names(model) -> list[tuple[str, torch.nn.Module]]:
    """The U-Net's parts in the order a batch meets them: embeddings, stem, each down layer, middle, each up layer, head."""
    parts = [(name, getattr(model, name)) for name in ("time_mlp", "label_emb", "text_encoder", "text_emb", "stem")
             if getattr(model, name, None) is not None]
    parts += [(f"down[{i}]", layer) for i, layer in enumerate(model.down)]
    parts += [(name, getattr(model, name)) for name in ("mid1", "mid_attn", "mid_cross", "mid2")
              if getattr(model, name, None) is not None]
    parts += [(f"up[{i}]", layer) for i, layer in enumerate(model.up)]
    return parts + [("head", model.head)]


def _describe(layer) -> str:
    """A short name for what a U-Net part is: the kinds of module it holds, in order."""
    if isinstance(layer, torch.nn.ModuleList):
        return " + ".join(type(m).__name__ for m in layer)
    if isinstance(layer, torch.nn.Sequential):
        return ", ".join(type(m).__name__ for m in layer)
    return type(layer).__name__


def _recorder(row: dict, key: str):
    """A forward hook that stores its module's input or output shape in `row` (returning None leaves the output alone)."""
    def hook(module, inputs, output):
        row[key] = tuple((inputs[0] if key == "input" else output).shape)
    return hook


@torch.no_grad()
def trace_shapes(model, x: torch.Tensor, t: torch.Tensor, labels=None) -> list[dict]:
    """Each part of a U-Net as a batch flows through: its name, what it is, its input and output shapes, its parameters.

    Forward hooks record the output of every part during one real forward pass, so the shapes are
    the ones the network computes, not ones worked out on paper. A block's input on the way up
    already holds the skip connection concatenated to it; the embeddings' inputs are t and the labels.
    """
    rows, hooks = [], []
    for name, layer in _part_names(model):
        row = {"part": name, "kind": _describe(layer), "parameters": sum(p.numel() for p in layer.parameters())}
        rows.append(row)
        first, last = (layer[0], layer[-1]) if isinstance(layer, torch.nn.ModuleList) else (layer, layer)
        hooks += [first.register_forward_hook(_recorder(row, "input")), last.register_forward_hook(_recorder(row, "output"))]
    try:
        model(x, t, labels)
    finally:
        for hook in hooks:
            hook.remove()
    return rows
