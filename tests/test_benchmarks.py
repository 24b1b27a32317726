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


def test_teacherless_rows_get_their_own_targets_and_every_model_its_total_training_time():
    """With mnist_meanflow rows in the fewsteps figures: its targets (1 step: 3x the teacher's DDIM-50 and 85%; 2 steps:
    2x and 90%) judged on the mean over seeds, and a student's cost is its teacher's training plus its distillation."""
    spec = importlib.util.spec_from_file_location("benchmarks_report", REPO / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    figures = json.loads(json.dumps(load_measured("fewsteps")["figures"]))
    for key in ("rows", "seed_rows"):  # the measured mnist_meanflow rows make way for made-up ones
        figures[key] = [r for r in figures[key] if r["model"] != "mnist_meanflow"]
    ddim50 = [r["mnist_fid"] for r in figures["rows"] + figures["seed_rows"]
              if (r["model"], r["sampler"], r["steps"], r["precision"]) == ("mnist_uncond", "ddim", 50, "bf16")]
    teacher_fid = sum(ddim50) / len(ddim50)
    base = {"sampler": "meanflow", "precision": "bf16", "calls": 1, "seconds_per_image": 0.002, "diversity": 17.0}
    made = [(1, 0, 2.9 * teacher_fid, 0.86), (1, 1, 3.0 * teacher_fid, 0.86), (1, 2, 3.05 * teacher_fid, 0.86),
            (2, 0, 1.5 * teacher_fid, 0.95), (2, 1, 1.5 * teacher_fid, 0.80), (2, 2, 1.5 * teacher_fid, 0.90)]
    for steps, seed, fid, share in made:
        row = {**base, "model": "mnist_meanflow", "steps": steps, "seed": seed, "mnist_fid": fid, "recognised": share}
        (figures["rows"] if seed == 0 else figures["seed_rows"]).append(row)
    figures["teacherless"] = ["mnist_meanflow"]
    figures["training_seconds"] = {"mnist_uncond": 6000.0, "mnist_meanflow": 4500.0}
    lines = report._render_fewsteps(figures)
    one = next(line for line in lines if line.startswith("| mnist_meanflow (meanflow) | 1 | 3 |"))
    two = next(line for line in lines if line.startswith("| mnist_meanflow (meanflow) | 2 | 3 |"))
    assert "| 2.98 (target 3) |" in one and one.endswith("| yes |")  # mean 2.98x, 86%
    assert "| 1.50 (target 2) |" in two and two.endswith("| no |")  # 88.3% recognised: below 90%
    costs = {line.split(" | ")[0][2:]: line for line in lines if line.count("|") == 7 and " min" not in line}
    progressive = next(r for r in figures["rows"] if r["model"] == "mnist_progressive/1")
    assert costs["mnist_meanflow (meanflow)"].split(" | ")[2] == "75"
    assert costs["mnist_progressive/1 (euler)"].split(" | ")[2] == f"{(6000 + progressive['distilled']['seconds']) / 60:.0f}"
    better = next(line for line in lines if line.startswith("Target: better at 1 step"))
    assert "mnist_meanflow (meanflow): FID" in better and better.endswith("Met: yes.")  # FID 69 < 75, 86% > 83%, 75 min
    figures["training_seconds"]["mnist_meanflow"] = 6000.0 + progressive["distilled"]["seconds"] + 60
    assert next(line for line in report._render_fewsteps(figures)
                if line.startswith("Target: better at 1 step")).endswith("Met: no.")  # a minute more than the student
