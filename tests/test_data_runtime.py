"""MNIST from the committed files, the toy data sets, device choice and fast mode."""

import pytest
import torch

from diffusion_lib import fast_mode, load_mnist, make_toy, pick_device
from diffusion_lib.data import TOY_DATASETS


def test_mnist_loads_offline_in_minus_one_to_one():
    images, labels = load_mnist(train=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert labels.shape == (10000,) and set(labels.unique().tolist()) == set(range(10))
    train_images, _ = load_mnist(train=True)
    assert train_images.shape == (60000, 1, 28, 28)


def test_missing_mnist_says_where_to_put_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Put the four original files .* in .*MNIST/raw"):
        load_mnist(root=tmp_path, download=False)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_data_sets(name):
    a = make_toy(name, 5000, torch.Generator().manual_seed(0))
    b = make_toy(name, 5000, torch.Generator().manual_seed(0))
    assert a.shape == (5000, 2) and torch.isfinite(a).all() and torch.equal(a, b)
    assert a.mean(0).abs().max() < 0.3 and 0.3 < a.std(0).min() and a.std(0).max() < 1.6


def test_unknown_toy_data_set():
    with pytest.raises(ValueError, match="unknown toy data set 'spiral'"):
        make_toy("spiral", 10)


def test_device_choice(monkeypatch):
    monkeypatch.delenv("DIFFUSION_COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device().type == expected
    monkeypatch.setenv("DIFFUSION_COURSE_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            pick_device("cuda")


def test_fast_mode(monkeypatch):
    monkeypatch.setenv("DIFFUSION_COURSE_FAST", "1")
    assert fast_mode()
    monkeypatch.setenv("DIFFUSION_COURSE_FAST", "0")
    assert not fast_mode()
    monkeypatch.delenv("DIFFUSION_COURSE_FAST")
    assert not fast_mode()
