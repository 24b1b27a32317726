"""Figures measured by `python benchmarks/run.py`, committed so that chapters can show what is too slow to redo live.

Each benchmark section writes `measured/SECTION.json`: the figures, the command that made them, the
date, the machine and the thread count. `benchmarks/RESULTS.md` is rendered from the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

MEASURED_DIR = Path(__file__).resolve().parent / "measured"


def load_measured(section: str) -> dict:
    """The committed results of one benchmark section (e.g. "steps", "guidance")."""
    path = MEASURED_DIR / f"{section}.json"
    if not path.exists():
        known = sorted(p.stem for p in MEASURED_DIR.glob("*.json"))
        raise FileNotFoundError(f"no measured results {path.name}; run 'python benchmarks/run.py --only {section}' "
                                f"from the repository root (committed sections: {', '.join(known) or 'none'})")
    return json.loads(path.read_text())
