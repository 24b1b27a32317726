"""Figures measured by `python benchmarks/run.py`, committed so that chapters can show what is too slow to redo live.

Each benchmark section writes `measured/SECTION.json`: the figures, the command that made them, the
date, the machine and the thread count. `benchmarks/RESULTS.md` is rendered from the same files.
"""

from __future__ import annotations

import base64
import json
import os
import platform
from pathlib import Path

import torch

MEASURED_DIR = Path(__file__).resolve().parent / "measured"


def load_measured(section: str) -> dict:
    """The committed results of one benchmark section (e.g. "steps", "guidance")."""
    path = MEASURED_DIR / f"{section}.json"
    if not path.exists():
        known = sorted(p.stem for p in MEASURED_DIR.glob("*.json"))
        raise FileNotFoundError(f"no measured results {path.name}; run 'python benchmarks/run.py --only {section}' "
                                f"from the repository root (committed sections: {', '.join(known) or 'none'})")
    return json.loads(path.read_text())


def machine() -> dict:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    mhz = next((float(line.split(":", 1)[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")), None)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(), "mhz": mhz, "memory_gib": round(memory, 1) if memory else None,
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(), "system": platform.system()}


def encode_images(images: torch.Tensor) -> str:
    """Images (N, 1, H, W) in [-1, 1] as base64 of uint8 pixels (0 black .. 255 white), to keep pictures in a JSON file."""
    pixels = ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return base64.b64encode(pixels.numpy().tobytes()).decode()


def decode_images(text: str, size: int = 28) -> torch.Tensor:
    """The images (N, 1, size, size) in [-1, 1] that `encode_images` stored (to within one grey level)."""
    pixels = torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
    return (pixels.float() / 127.5 - 1).reshape(-1, 1, size, size)
