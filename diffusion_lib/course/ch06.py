"""Chapter 6 helpers: the guidance slider's view and the measured accuracy-diversity trade-off."""

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
