"""MNIST-FID and friends behave as a quality measure must: near the baseline for real digits, far for bad ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffusion_lib as dl
from diffusion_lib import evaluation

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def classifier():
    return dl.pretrained("mnist_classifier")[0]


@pytest.fixture(scope="module")
def real_digits():
    images, labels = dl.load_mnist(train=True)
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(123))[:1000]
    return images[index], labels[index]


def test_frechet_distance_of_gaussians():
    mu, cov = torch.zeros(3, dtype=torch.float64), torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert evaluation.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D closed form: (m1 - m2)^2 + (s1 - s2)^2
    one = torch.ones(1, 1, dtype=torch.float64)
    assert evaluation.frechet_distance(torch.zeros(1, dtype=torch.float64), one, torch.full((1,), 2.0, dtype=torch.float64),
                                       4 * one) == pytest.approx(4 + 1)


def test_fid_ranks_real_blurred_and_noise(classifier, real_digits):
    images, _ = real_digits
    real = evaluation.mnist_fid(images, classifier)
    baseline = evaluation.real_baseline_fid(len(images), classifier)
    blurred = evaluation.mnist_fid(torch.nn.functional.avg_pool2d(images, 3, 1, 1), classifier)
    noise = evaluation.mnist_fid(torch.rand_like(images) * 2 - 1, classifier)
    assert real < 1.5 * baseline, (real, baseline)  # another random real set sits at the baseline
    assert blurred > 3 * real and noise > 2 * blurred, (real, blurred, noise)


def test_accuracy_histogram_and_diversity(classifier):
    images, labels = dl.load_mnist(train=False)
    result = evaluation.evaluate(images[:1000], labels[:1000], classifier)
    assert result["accuracy"] > 0.98 and sum(result["class_histogram"]) == 1000
    assert min(result["class_histogram"]) > 50  # every digit occurs in the test set
    copies = images[:1].expand(10, -1, -1, -1)
    assert evaluation.diversity(copies, torch.zeros(10, dtype=torch.long)) == 0  # ten copies: no diversity
    assert result["diversity"] > 5


def test_score_is_what_the_chapters_measure(classifier):
    """`score`'s recognised share is chapter 1's (the judge's top probability >= 0.9), its figures those of `fid`,
    `real_baseline_fid` and `classify`: one place measures for the command, the chapters and the benchmarks."""
    images, labels = dl.load_mnist(train=False)
    blurred = torch.nn.functional.avg_pool2d(images[:300], 5, 1, 2)  # some digits the judge is unsure of
    result = evaluation.score(blurred, labels[:300], classifier)
    predicted, confidence = dl.classify(classifier, blurred)
    assert result["recognised"] == pytest.approx(float((confidence >= 0.9).float().mean()))
    assert 0.05 < result["recognised"] < 0.95  # the threshold matters here: neither all nor none
    assert result["accuracy"] == pytest.approx(float((predicted == labels[:300]).float().mean()))
    assert result["fid"] == pytest.approx(evaluation.mnist_fid(blurred, classifier))
    assert result["fid_ratio"] == pytest.approx(result["fid"] / evaluation.real_baseline_fid(300, classifier))
    quick = evaluation.score(blurred, classifier=classifier, floor=False)
    assert "real_baseline_fid" not in quick and "accuracy" not in quick and quick["fid"] == result["fid"]


def test_evaluate_rejects_bad_input(classifier):
    with pytest.raises(ValueError, match=r"judges images of shape \(N, 1, 28, 28\), got \(4, 28, 28\)"):
        evaluation.evaluate(torch.zeros(4, 28, 28), classifier=classifier)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        evaluation.evaluate(torch.full((4, 1, 28, 28), 255.0), classifier=classifier)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        evaluation.evaluate(torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long), classifier)


def test_evaluate_command_prints_json(tmp_path):
    images, labels = dl.load_mnist(train=False)
    np.savez(tmp_path / "real.npz", images=images[:200].numpy(), labels=labels[:200].numpy())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "diffusion_lib", "evaluate", str(tmp_path / "real.npz")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result) == {"n", "data", "fid", "mnist_fid", "real_baseline_fid", "fid_ratio", "recognised",
                           "class_histogram", "diversity", "accuracy"}
    assert result["data"] == "mnist" and result["fid"] == result["mnist_fid"]
    assert result["n"] == 200 and result["accuracy"] > 0.95
    assert result["fid_ratio"] == pytest.approx(result["fid"] / result["real_baseline_fid"])
    assert result["recognised"] > 0.9  # real test digits: the judge is sure of nearly all
    missing = subprocess.run([sys.executable, "-m", "diffusion_lib", "evaluate", str(tmp_path / "nope.npz")],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no samples file" in missing.stderr


def test_energy_distance_by_hand_and_on_samples():
    """{0, 2} against {1, 3} on a line: 2 E|X - Y| = 2 (1 + 3 + 1 + 1) / 4 = 3, each within-set mean |X - X'| = 2
    (self-pairs left out): 3 - 2 - 2 = -1. On samples it is about 0 for one distribution and grows with a shift."""
    from diffusion_lib.evaluation import energy_distance

    assert energy_distance(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]])) == pytest.approx(-1.0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    same, shifted = energy_distance(a, b), energy_distance(a, b + torch.tensor([0.5, 0.0]))
    assert abs(same) < 0.01 and shifted > 0.1 and energy_distance(a, b + torch.tensor([1.0, 0.0])) > shifted
