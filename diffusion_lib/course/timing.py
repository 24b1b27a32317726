"""How long a learner needs for a chapter: an estimate from what the chapter contains, with its rates stated.

Nobody has timed learners on this course yet, so this is an estimate, not a measurement. It adds
up what a learner does with a chapter, each at a stated rate:

- reading the prose and equations at `WORDS_PER_MINUTE` (about half of a typical silent-reading
  speed for plain prose, because the text is dense and has equations to follow);
- reading the code cells at `CODE_LINES_PER_MINUTE`;
- `MINUTES_PER_WIDGET` with each interactive widget;
- each exercise by its kind (`EXERCISE_MINUTES`: writing a function, predicting a number, arguing
  an open question);
- waiting for the chapter to run (its measured full-mode Run-All time, given by the caller).

An exercise whose header says "going further" (`**Exercise 6 (open question, going further).**`) is
not needed by the chapters that follow; its minutes (its kind's, and the reading and code from its header
to the next exercise's) are counted apart, as `further`, and left out of `total`, the time of the chapter's
core path. `with_further` is the time with every exercise done.

The instructor edition's model answers (markdown cells tagged `solution`) and reference solutions
are not counted: a learner does not read them.
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext

WORDS_PER_MINUTE = 120
CODE_LINES_PER_MINUTE = 15
MINUTES_PER_WIDGET = 3
EXERCISE_MINUTES = {"implement": 20, "predict": 5, "open": 15}
EXERCISE = re.compile(r"\*\*Exercise \d+ \((implement|predict|open)([^)]*)\)")
FURTHER = "going further"


def learner_minutes(notebook: str | Path, run_seconds: float = 0.0) -> dict[str, float]:
    """The estimated minutes a learner spends on a chapter, by part, and their total.

    Everything from a going-further exercise's header to the next exercise's header (its text, its code cells)
    is counted in `further`; the chapter's run time stays in `total`, since Run All runs every cell."""
    cells = [c for c in jupytext.read(Path(notebook)).cells if "solution" not in c.metadata.get("tags", [])]
    words = {"core": 0, "further": 0}
    lines = {"core": 0, "further": 0}
    widgets = {"core": 0, "further": 0}
    exercises = {"core": [], "further": []}
    part = "core"
    for cell in cells:
        if cell.cell_type == "markdown":
            start = 0
            for header in EXERCISE.finditer(cell.source):  # text before a header belongs to the part before it
                words[part] += len(cell.source[start:header.start()].split())
                part = "further" if FURTHER in header.group(2) else "core"
                exercises[part].append(header.group(1))
                start = header.start()
            words[part] += len(cell.source[start:].split())
        elif cell.cell_type == "code":
            lines[part] += sum(1 for line in cell.source.splitlines()
                               if line.strip() and not line.lstrip().startswith("#"))
            widgets[part] += cell.source.count("widgets.interact(")

    def minutes(which):
        return {"reading": words[which] / WORDS_PER_MINUTE, "code": lines[which] / CODE_LINES_PER_MINUTE,
                "widgets": MINUTES_PER_WIDGET * widgets[which],
                "exercises": sum(EXERCISE_MINUTES[kind] for kind in exercises[which])}

    parts = {**minutes("core"), "running": run_seconds / 60}
    total = sum(parts.values())
    further = sum(minutes("further").values())
    return {**parts, "total": total, "further": further, "with_further": total + further,
            "exercise_count": len(exercises["core"]) + len(exercises["further"]), "further_count": len(exercises["further"])}
