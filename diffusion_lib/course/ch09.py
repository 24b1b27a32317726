"""Chapter 9 helpers: the few-step models side by side, and the scores of the complete steps table."""

from __future__ import annotations

import time

from matplotlib.figure import Figure

from ..checkpoint import load_model, pretrained
from ..distill import student_files
from ..evaluation import score
from ..pipeline import generate
from ..samplers import network_calls
from .plots import to_numpy_image

TEACHER = "mnist_uncond"
# Every row of the complete steps table: (model, sampler, steps). Students: the committed distillations of TEACHER.
TEACHER_ROWS = [("ddpm", 1000), ("ddim", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("ddim", 5),
                ("dpm-solver++", 20), ("dpm-solver++", 10), ("dpm-solver++", 5), ("heun", 18),
                ("euler", 8), ("euler", 4), ("euler", 2), ("euler", 1)]
STUDENT_ROWS = [("mnist_reflow", "heun", 18), ("mnist_reflow", "euler", 8), ("mnist_reflow", "euler", 4), ("mnist_reflow", "euler", 2),
                ("mnist_reflow", "euler", 1), ("mnist_progressive/8", "euler", 8), ("mnist_progressive/4", "euler", 4),
                ("mnist_progressive/2", "euler", 2), ("mnist_progressive/1", "euler", 1),
                ("mnist_consistency", "consistency", 1), ("mnist_consistency", "consistency", 2),
                ("mnist_consistency", "consistency", 4)]
# Chapter 11's models trained from scratch, with no teacher, sampled in 1, 2 and 4 network calls.
TEACHERLESS_ROWS = [("mnist_meanflow", "meanflow", 1), ("mnist_meanflow", "meanflow", 2), ("mnist_meanflow", "meanflow", 4),
                    ("mnist_ct", "consistency", 1), ("mnist_ct", "consistency", 2), ("mnist_ct", "consistency", 4)]
# Wall seconds of the training commands that made a model from nothing, as its README records them (one thread on
# the 2-core machine the READMEs name); a distilled student's own cost is in its checkpoint (info["distilled"]).
TRAINING_SECONDS = {"mnist_uncond": 2900 + 4502, "mnist_meanflow": 6602.6 + 1202.3 + 1257.6,
                    "mnist_ct": 6002.1 + 2589.4}


def seed_groups(figures: dict) -> dict:
    """The fewsteps section's bf16 rows grouped by (model, sampler, steps): seed 0's row and any other seeds'."""
    groups = {}
    for row in figures["rows"] + figures.get("seed_rows", []):
        if row["precision"] == "bf16":
            groups.setdefault((row["model"], row["sampler"], row["steps"]), []).append(row)
    return groups


def training_seconds(row: dict, recorded: dict, teacher: str = TEACHER) -> float | None:
    """All the training a fewsteps row's model needed, in wall seconds: its own (`recorded`, as TRAINING_SECONDS) or,
    for a distilled student, its teacher's training plus its distillation; None where either is not recorded."""
    if row["model"] in recorded:
        return recorded[row["model"]]
    distilled = row.get("distilled") or {}
    if "seconds" in distilled and teacher in recorded:
        return recorded[teacher] + distilled["seconds"]
    return None


def load_row_model(name: str, device="cpu"):
    """(model, info) of a table row's model: a committed name, or 'mnist_progressive/N' for its N-step student."""
    if "/" in name:
        folder, steps = name.split("/")
        return load_model(student_files(folder)[int(steps)], device)
    return pretrained(name, device)


def score_row(model, info, sampler: str, steps: int, classifier, n: int, seed: int = 0,
              precision: str = "bf16") -> dict:
    """Seconds per image, MNIST-FID, share recognised (p >= 0.9) and within-class diversity of n samples."""
    start = time.perf_counter()
    samples, _ = generate(model, info, n, sampler, steps, seed=seed, precision=precision)
    seconds = (time.perf_counter() - start) / n
    measured = score(samples, classifier=classifier, floor=False)
    return {"sampler": sampler, "steps": steps, "calls": network_calls(sampler, steps), "n": n, "seed": seed,
            "precision": precision, "seconds_per_image": seconds, "mnist_fid": measured["mnist_fid"],
            "recognised": measured["recognised"], "diversity": measured["diversity"],
            "class_shares": [count / n for count in measured["class_histogram"]]}, samples


def side_by_side(steps: int, models: dict, n: int = 6, seed: int = 0) -> Figure:
    """Each model's samples at `steps` from the same noise (one row per model), with its time.

    `models`: label -> (model, info, sampler); a progressive student exists for some step counts only, so its
    entry may be a dict steps -> (model, info, sampler), and a row is left out where it has no student.
    """
    rows = []
    for label, entry in models.items():
        if isinstance(entry, dict):
            if steps not in entry:
                continue
            entry = entry[steps]
        model, info, sampler = entry
        start = time.perf_counter()
        samples, _ = generate(model, info, n, sampler, steps, seed=seed)
        rows.append((label, samples, time.perf_counter() - start))
    fig = Figure(figsize=(1.1 * n + 2.6, 1.1 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, samples, seconds) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(to_numpy_image(samples[c]), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(f"{label}\n{seconds:.2f} s", rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{steps} step{'s' if steps > 1 else ''}, the same noise in every row")
    return fig
