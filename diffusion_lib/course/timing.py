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
not needed by the chapters that follow; its minutes are counted apart, as `further`, and left out of
`total`, the time of the chapter's core path. `with_further` is the time with every exercise done.

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
    """The estimated minutes a learner spends on a chapter, by part, and their total."""
    cells = [c for c in jupytext.read(Path(notebook)).cells if "solution" not in c.metadata.get("tags", [])]
    markdown = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    code_lines = sum(1 for c in cells if c.cell_type == "code" for line in c.source.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))
    headers = EXERCISE.findall(markdown)
    core = [kind for kind, rest in headers if FURTHER not in rest]
    further = [kind for kind, rest in headers if FURTHER in rest]
    parts = {
        "reading": len(markdown.split()) / WORDS_PER_MINUTE,
        "code": code_lines / CODE_LINES_PER_MINUTE,
        "widgets": MINUTES_PER_WIDGET * sum(c.source.count("widgets.interact(") for c in cells if c.cell_type == "code"),
        "exercises": sum(EXERCISE_MINUTES[kind] for kind in core),
        "running": run_seconds / 60,
    }
    total = sum(parts.values())
    further_minutes = sum(EXERCISE_MINUTES[kind] for kind in further)
    return {**parts, "total": total, "further": further_minutes, "with_further": total + further_minutes,
            "exercise_count": len(headers), "further_count": len(further)}
