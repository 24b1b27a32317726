"""benchmarks/run.py: its sections write figures and the report renders them (quick mode; timings are not asserted)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lib.course.measured import MEASURED_DIR, load_measured

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"


def _module():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_sections_write_json_and_the_report(tmp_path):
    report = tmp_path / "RESULTS.md"
    result = subprocess.run([sys.executable, str(RUN), "--quick", "--only", "training,sampling", "--out", str(tmp_path),
                             "--results", str(report), "--threads", "2"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    training = json.loads((tmp_path / "training.json").read_text())
    assert training["quick"] and training["threads"] == 2 and "--only training,sampling" in training["command"]
    figures = training["figures"]
    assert figures["parameters"] == 810_817 and figures["images_per_second"] > 0 and figures["flop_per_step"] > 1e9
    rows = json.loads((tmp_path / "sampling.json").read_text())["figures"]["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 100), ("ddim", 50)]
    assert all(0 < r["network_share"] <= 1 for r in rows)
    text = report.read_text()
    assert "## training" in text and "## sampling" in text and "quick mode" in text and "images/s" in text


def test_the_committed_figures_render(tmp_path):
    module = _module()
    text = module.render(MEASURED_DIR)
    committed = sorted(p.stem for p in MEASURED_DIR.glob("*.json"))
    assert {"steps", "budget", "recipes"} <= set(committed), "chapters 4 and 5 read these: run benchmarks/run.py"
    for name in committed:
        assert f"## {name}" in text and not load_measured(name)["quick"]


def test_bad_arguments_are_refused_with_a_reason():
    for args, message in ((["--only", "nonsense"], "unknown section"), (["--quick"], "--out DIR")):
        result = subprocess.run([sys.executable, str(RUN), *args], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 2 and message in result.stderr
    with pytest.raises(FileNotFoundError, match="benchmarks/run.py --only nosuch"):
        load_measured("nosuch")
