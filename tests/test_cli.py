"""The command line as a person uses it: train, sample, help, and one-line errors for bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*args):
    env = {**os.environ, "DIFFUSION_COURSE_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "diffusion_lib", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mnist_runs(tmp_path_factory):
    """An unconditional, a class-conditional and a text MNIST run (the default flow objective) and an
    unconditional DDPM run, of a few steps each (fast, not good)."""
    root = tmp_path_factory.mktemp("runs")
    small = ["--batch-size", "16", "--quiet", "--model-config", '{"base_channels": 16}']
    for name, extra in (("uncond", []), ("cond", ["--conditional"]), ("text", ["--text"]), ("ddpm", ["--objective", "ddpm"])):
        result = run("train", "--data", "mnist", "--steps", "3", "--out", str(root / name), *small, *extra)
        assert result.returncode == 0, result.stderr
        assert "trained to step 3" in result.stdout
    return root


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_sample_writes_the_documented_npz(mnist_runs, tmp_path, sampler):
    out = tmp_path / "s.npz"
    result = run("sample", "--checkpoint", str(mnist_runs / "uncond" / "model.safetensors"), "--sampler", sampler,
                 "--steps", "10", "--n", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = np.load(out)
    assert set(data.files) == {"images", "data"} and str(data["data"]) == "mnist"
    images = data["images"]
    assert images.shape == (8, 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1


def test_same_seed_same_images_and_labels_cycle(mnist_runs, tmp_path):
    common = ["--checkpoint", str(mnist_runs / "cond"), "--sampler", "ddpm", "--steps", "5", "--n", "12",
              "--labels", "all", "--guidance", "3"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run("sample", *common, "--seed", seed, "--out", str(tmp_path / f"{name}.npz")).returncode == 0
    a, b, c = (np.load(tmp_path / f"{n}.npz") for n in "abc")
    assert a["labels"].dtype == np.int64 and a["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert np.array_equal(a["images"], b["images"]) and not np.array_equal(a["images"], c["images"])


def test_inpaint_keeps_the_known_pixels_and_writes_originals_and_mask(mnist_runs, tmp_path):
    out = tmp_path / "filled.npz"
    result = run("sample", "--checkpoint", str(mnist_runs / "cond"), "--sampler", "ddim", "--steps", "5", "--n", "4",
                 "--inpaint", "mnist-test", "--mask", "left", "--labels", "7", "--guidance", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = np.load(out)
    assert set(data.files) == {"images", "data", "originals", "mask", "labels"} and data["images"].shape == (4, 1, 28, 28)
    keep = data["mask"] == 1
    assert keep.mean() == 0.5 and np.array_equal(data["images"][keep], data["originals"][keep])
    assert not np.array_equal(data["images"][~keep], data["originals"][~keep])
    again = tmp_path / "again.npz"
    np.savez(tmp_path / "mine.npz", images=data["originals"], mask=np.ones((1, 1, 28, 28), np.float32))
    result = run("sample", "--checkpoint", str(mnist_runs / "uncond"), "--sampler", "ddim", "--steps", "3", "--n", "4",
                 "--inpaint", str(tmp_path / "mine.npz"), "--out", str(again))
    assert result.returncode == 0 and np.array_equal(np.load(again)["images"], data["originals"])  # all known


def test_prompts_for_a_text_model(mnist_runs, tmp_path):
    out = tmp_path / "text.npz"
    result = run("sample", "--checkpoint", str(mnist_runs / "text"), "--sampler", "dpm-solver++", "--steps", "4",
                 "--n", "3", "--prompt", "a thick seven", "--prompt", "one written slanted", "--guidance", "2",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = np.load(out)
    assert set(data.files) == {"images", "data", "prompts", "labels"} and data["images"].shape == (3, 1, 28, 28)
    assert data["prompts"].tolist() == ["a thick seven", "one written slanted", "a thick seven"]
    assert data["labels"].tolist() == [7, 1, 7]  # the digits asked for, so 'evaluate' checks them
    result = run("sample", "--checkpoint", str(mnist_runs / "text"), "--sampler", "ddim", "--steps", "3", "--n", "2",
                 "--prompt", "a thin digit", "--out", str(tmp_path / "nodigit.npz"))
    assert result.returncode == 0 and "labels" not in np.load(tmp_path / "nodigit.npz").files


def test_help_documents_every_option():
    for command, options in (("train", ["--data", "--steps", "--out", "--conditional", "--batch-size", "--lr",
                                        "--schedule", "--seed"]),
                             ("sample", ["--checkpoint", "--sampler", "--steps", "--eta", "--n", "--guidance",
                                         "--labels", "--seed", "--out"])):
        result = run(command, "--help")
        assert result.returncode == 0 and all(option in result.stdout for option in options)


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "mnist", "--steps", "0", "--out", "x"], "must be a positive integer"),
    (["train", "--data", "cifar", "--steps", "3", "--out", "x"], "unknown data 'cifar'"),
    (["train", "--data", "moons", "--steps", "3", "--out", "x", "--conditional"], "needs labelled images"),
    (["train", "--data", "moons", "--steps", "3", "--out", "x", "--schedule", "sigmoid"], "invalid choice: 'sigmoid'"),
    (["train", "--data", "moons", "--steps", "3", "--out", "x", "--wat"], "unrecognized arguments: --wat"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "lms", "--n", "2", "--out", "x.npz"], "invalid choice: 'lms'"),
    (["sample", "--checkpoint", "DDPM", "--sampler", "euler", "--n", "2", "--out", "x.npz"], "--objective edm or flow"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--n", "2", "--eta", "-1", "--out", "x.npz"], r"must be a number in \[0, 1\]"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--steps", "1001", "--n", "2", "--out", "x.npz"], "between 1 and T=1000"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--n", "2", "--labels", "3", "--out", "x.npz"], "unconditional"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--n", "2", "--guidance", "2", "--out", "x.npz"], "conditional checkpoint"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--n", "2", "--prompt", "a seven", "--out", "x.npz"], "needs a text model"),
    (["sample", "--checkpoint", "TEXT", "--sampler", "ddim", "--n", "2", "--labels", "3", "--out", "x.npz"], "is a text model"),
    (["sample", "--checkpoint", "TEXT", "--sampler", "ddim", "--n", "2", "--out", "x.npz"], "--prompt 'a thick seven'"),
    (["sample", "--checkpoint", "TEXT", "--sampler", "ddim", "--n", "2", "--prompt", "a purple seven", "--out", "x.npz"], r"unknown word\(s\) \['purple'\]"),
    (["train", "--data", "mnist", "--steps", "3", "--out", "x", "--text", "--conditional"], "not both"),
    (["train", "--data", "moons", "--steps", "3", "--out", "x", "--meanflow-power", "1"], "of objective meanflow"),
    (["sample", "--checkpoint", "COND", "--sampler", "ddim", "--n", "2", "--labels", "3,12", "--out", "x.npz"], r"labels must lie in 0\.\.9"),
    (["sample", "--checkpoint", "COND", "--sampler", "ddim", "--n", "2", "--labels", "three", "--out", "x.npz"], "comma-separated integers"),
    (["sample", "--checkpoint", "COND", "--sampler", "ddpm", "--eta", "0.5", "--n", "2", "--out", "x.npz"], "ddim only"),
    (["sample", "--checkpoint", "COND", "--sampler", "dpm-solver++", "--eta", "1", "--n", "2", "--out", "x.npz"], "ddim only"),
    (["train", "--data", "moons", "--steps", "3", "--out", "x", "--max-minutes", "0"], "--max-minutes: must be a positive number"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddpm", "--n", "2", "--inpaint", "mnist-test", "--out", "x.npz"], "--sampler ddim"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--n", "2", "--inpaint", "nothing.npz", "--out", "x.npz"], "not 'test' or an .npz"),
    (["sample", "--checkpoint", "CKPT", "--sampler", "ddim", "--n", "2", "--inpaint", "mnist-test", "--mask", "middle", "--out", "x.npz"], "invalid choice: 'middle'"),
    (["sample", "--checkpoint", "pyproject.toml", "--sampler", "ddim", "--n", "2", "--out", "x.npz"], "truncated or corrupt"),
])
def test_bad_input_exits_non_zero_with_one_line(mnist_runs, tmp_path, args, message):
    import re

    runs = {"CKPT": "uncond", "COND": "cond", "TEXT": "text", "DDPM": "ddpm"}
    args = [str(mnist_runs / runs[a]) if a in runs else a for a in args]
    args = [str(tmp_path / a) if a in ("x", "x.npz") else a for a in args]
    result = run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr


def test_autoguide_samples_with_a_weaker_checkpoint_and_refuses_a_scale_alone(mnist_runs, tmp_path):
    common = ["sample", "--checkpoint", str(mnist_runs / "uncond"), "--steps", "3", "--n", "4"]
    assert run(*common, "--out", str(tmp_path / "plain.npz")).returncode == 0
    guided = run(*common, "--autoguide", str(mnist_runs / "uncond"), "--autoguide-scale", "2", "--out",
                 str(tmp_path / "self.npz"))
    assert guided.returncode == 0, guided.stderr
    # guided by itself, the difference is zero at every step: the same samples as the model alone
    assert np.allclose(np.load(tmp_path / "plain.npz")["images"], np.load(tmp_path / "self.npz")["images"], atol=1e-5)
    refused = run(*common, "--autoguide-scale", "2", "--out", str(tmp_path / "x.npz"))
    assert refused.returncode == 1 and "needs --autoguide" in refused.stderr and not (tmp_path / "x.npz").exists()
    mismatched = run(*common, "--autoguide", str(mnist_runs / "ddpm"), "--out", str(tmp_path / "y.npz"))
    assert mismatched.returncode == 1 and "trained like the model" in mismatched.stderr
