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


@pytest.mark.slow
def test_quick_latent_section_measures_the_three_models_and_image_to_image(tmp_path):
    report = tmp_path / "RESULTS.md"
    result = subprocess.run([sys.executable, str(RUN), "--quick", "--only", "latent", "--out", str(tmp_path),
                             "--results", str(report), "--threads", "2"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "latent.json").read_text())["figures"]
    models = figures["models"]
    assert set(models) == {"pixel U-Net", "latent U-Net", "latent MMDiT"}
    assert all(m["seconds_per_call_64"] > 0 and m["training_steps"] > 0 for m in models.values())
    assert abs(models["latent U-Net"]["parameters"] / models["latent MMDiT"]["parameters"] - 1) < 0.05
    assert 0 < figures["reconstruction"]["mse"] < 0.05 and figures["reconstruction"]["n"] == 50
    by_strength = {r["strength"]: r for r in figures["image_to_image"]}
    # a light touch keeps the source's digit, full strength follows the caption (w = 3)
    assert by_strength[0.2]["keeps_source_digit"] > by_strength[1.0]["keeps_source_digit"]
    assert by_strength[1.0]["follows"] > by_strength[0.2]["follows"]
    assert by_strength[0.2]["rms_change"] < by_strength[1.0]["rms_change"]
    negatives = {r["negative"]: r for r in figures["negative"]}
    assert negatives["a thick seven"]["above_median"]["thickness"] < negatives["a thin seven"]["above_median"]["thickness"]
    assert "## latent" in report.read_text()
