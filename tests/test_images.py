"""Images beyond MNIST: Fashion-MNIST offline, a folder of one's own images, any size and 1 or 3 channels."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import diffusion_lib as dl
from diffusion_lib.checkpoint import PRETRAINED_DIR, load_model
from diffusion_lib.data import image_classes, load_fashion_mnist, load_folder, load_images
from diffusion_lib.training import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
SMALL_UNET = {"base_channels": 8}


def run(*args):
    env = {**os.environ, "DIFFUSION_COURSE_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "diffusion_lib", *map(str, args)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def make_folder(root: Path, classes=("circles", "squares"), per_class=4) -> Path:
    """Class subfolders of small drawings of several sizes and aspect ratios, PNG and JPEG, RGB and gray."""
    sizes = [(40, 30), (24, 24), (50, 64), (33, 20)]
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            image = Image.new("RGB" if i % 2 == 0 else "L", (w, h), "black" if i % 2 else (20, 40, 200))
            draw = ImageDraw.Draw(image)
            box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
            (draw.ellipse if k == 0 else draw.rectangle)(box, fill="white")
            image.save(root / name / f"{i}.{'png' if i % 3 else 'jpg'}")
    return root


def test_fashion_mnist_is_shipped_offline_with_its_ten_classes():
    images, labels = load_fashion_mnist(train=False)
    assert images.shape == (10000, 1, 28, 28) and images.min() == -1 and images.max() == 1
    assert torch.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    assert not torch.equal(images[:100], dl.load_mnist(train=False)[0][:100])
    assert image_classes("fashion-mnist")[9] == "Ankle boot" and image_classes("mnist")[3] == "3"
    rgb = load_images("fashion-mnist", train=False, channels=3, size=32)[0]
    assert rgb.shape == (10000, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])  # gray repeated into RGB


def test_a_folder_is_resized_and_centre_cropped(tmp_path):
    """A wide image whose middle half is white and a tall one whose middle half is white: the square centre crop
    keeps only the white (an off-centre crop would take in black)."""
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, 16:48] = 255
    tall = np.zeros((60, 30), np.uint8)
    tall[15:45] = 255
    Image.fromarray(wide).save(tmp_path / "a_wide.png")
    Image.fromarray(tall).save(tmp_path / "b_tall.png")
    images, labels = load_folder(tmp_path, channels=3, size=16)
    assert images.shape == (2, 3, 16, 16) and labels is None
    assert images.min() > 0.95  # all white
    gray = load_folder(tmp_path, channels=1, size=8)[0]
    assert gray.shape == (2, 1, 8, 8) and gray.min() > 0.95
    shifted = np.zeros((32, 64), np.uint8)
    shifted[:, :32] = 255  # the white half on the left: the centre crop is half black
    Image.fromarray(shifted).save(tmp_path / "c_left.png")
    third = load_folder(tmp_path, channels=1, size=16)[0][2]
    assert abs(float(third.mean())) < 0.1 and third[:, :, :6].min() > 0.9 and third[:, :, 10:].max() < -0.9


def test_class_subfolders_are_the_labels(tmp_path):
    root = make_folder(tmp_path / "shapes", per_class=3)
    images, labels = load_folder(root, channels=3, size=32)
    assert images.shape == (6, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and image_classes(f"folder:{root}") == ("circles", "squares")
    assert TrainConfig(data=f"folder:{root}", conditional=True).model_config()["num_classes"] == 2


def test_folders_it_cannot_read_get_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder at"):
        TrainConfig(data=f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no PNG or JPEG images"):
        load_folder(tmp_path / "empty")
    mixed = make_folder(tmp_path / "mixed", per_class=1)
    Image.new("L", (8, 8)).save(mixed / "loose.png")
    with pytest.raises(ValueError, match="put every image in a class subfolder, or none"):
        load_folder(mixed)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("L", (8, 8)).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png cannot be read as an image"):
        load_folder(broken)
    strip = tmp_path / "strip"
    strip.mkdir()
    Image.new("L", (400, 20)).save(strip / "strip.png")
    with pytest.raises(ValueError, match="400x20: a square centre crop would keep less than a quarter"):
        load_folder(strip)
    (strip / "photo.HEIC").write_bytes(b"not readable here")
    with pytest.raises(ValueError, match="photo.HEIC is a HEIC image, which cannot be read here: convert it"):
        load_folder(strip)
    (strip / "photo.HEIC").unlink()
    with pytest.raises(ValueError, match="has no class subfolders"):
        TrainConfig(data=f"folder:{strip}", conditional=True)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        dl.UNetConfig(image_size=30)
    with pytest.raises(ValueError, match="--image-size and --channels are for image data"):
        TrainConfig(data="moons", image_size=32)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 64)])
def test_the_unet_trains_and_samples_at_any_size_and_channel_count(tmp_path, channels, size):
    data = "mnist" if size == 28 else f"folder:{make_folder(tmp_path / 'shapes', per_class=2)}"
    config = TrainConfig(data=data, image_size=size, channels=channels, steps=2, batch_size=4, model=SMALL_UNET)
    train(config, tmp_path / "run", progress=False)
    model, info = load_model(tmp_path / "run")
    assert (model.config.image_channels, model.config.image_size) == (channels, size)
    samples, _ = dl.generate(model, info, 2, "euler", 2)
    assert samples.shape == (2, channels, size, size) and samples.min() >= -1 and samples.max() <= 1
    filled, _ = dl.inpaint_images(model, info, samples, dl.named_mask("centre", samples.shape), steps=2)
    keep = dl.named_mask("centre", samples.shape).expand_as(samples) == 1
    assert filled.shape == samples.shape and torch.equal(filled[keep], samples[keep])


def test_a_labelled_folder_through_the_command_line(tmp_path):
    """Train a conditional model and a classifier on a folder, sample each class, inpaint, and evaluate."""
    root = make_folder(tmp_path / "shapes")
    common = ["--data", f"folder:{root}", "--steps", "3", "--batch-size", "8", "--quiet"]
    result = run("train", *common, "--conditional", "--model-config", json.dumps(SMALL_UNET), "--out", tmp_path / "gen")
    assert result.returncode == 0, result.stderr
    assert run("train", *common, "--arch", "classifier", "--out", tmp_path / "judge").returncode == 0
    result = run("sample", "--checkpoint", tmp_path / "gen", "--steps", "2", "--n", "4", "--labels", "0,1",
                 "--out", tmp_path / "s.npz")
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "s.npz")
    assert samples["images"].shape == (4, 3, 32, 32) and samples["labels"].tolist() == [0, 1, 0, 1]
    assert str(samples["data"]) == f"folder:{root.resolve()}" and np.abs(samples["images"]).max() <= 1
    result = run("evaluate", tmp_path / "s.npz", "--classifier", tmp_path / "judge")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["data"] == f"folder:{root.resolve()}" and len(scores["class_histogram"]) == 2 and "mnist_fid" not in scores
    assert scores["fid"] >= 0 and 0 <= scores["accuracy"] <= 1
    result = run("evaluate", tmp_path / "s.npz")
    assert result.returncode == 1 and "no committed classifier judges" in result.stderr
    result = run("sample", "--checkpoint", tmp_path / "gen", "--sampler", "ddim", "--steps", "2", "--n", "2",
                 "--inpaint", "test", "--mask", "centre", "--out", tmp_path / "filled.npz")
    assert result.returncode == 0, result.stderr
    filled = np.load(tmp_path / "filled.npz")
    keep = filled["mask"] == 1
    assert np.array_equal(filled["images"][keep], filled["originals"][keep])


def test_fashion_mnist_through_the_command_line(tmp_path):
    result = run("train", "--data", "fashion-mnist", "--conditional", "--steps", "2", "--batch-size", "8", "--quiet",
                 "--model-config", json.dumps(SMALL_UNET), "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    result = run("sample", "--checkpoint", tmp_path / "run", "--steps", "2", "--n", "20", "--labels", "all",
                 "--out", tmp_path / "s.npz")
    assert result.returncode == 0, result.stderr
    result = run("evaluate", tmp_path / "s.npz")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["data"] == "fashion-mnist" and "mnist_fid" not in scores and len(scores["class_histogram"]) == 10
    result = run("evaluate", tmp_path / "s.npz", "--classifier", PRETRAINED_DIR / "mnist_classifier")
    assert result.returncode == 1 and "trained on mnist" in result.stderr
    result = run("sample", "--checkpoint", tmp_path / "run", "--sampler", "ddim", "--n", "2", "--inpaint", "mnist-test",
                 "--out", tmp_path / "x.npz")
    assert result.returncode == 1 and "use --inpaint test" in result.stderr
    with pytest.raises(ValueError, match="trained on mnist, so it cannot judge fashion-mnist"):  # in Python too
        dl.evaluate(torch.zeros(4, 1, 28, 28), classifier=dl.pretrained("mnist_classifier")[0], data="fashion-mnist")


def test_image_size_and_channels_through_the_command_line(tmp_path):
    """MNIST resized to 32x32 and repeated into RGB: the checkpoint records the shape and sample draws it."""
    result = run("train", "--data", "mnist", "--image-size", "32", "--channels", "3", "--steps", "1", "--batch-size", "4",
                 "--quiet", "--model-config", json.dumps(SMALL_UNET), "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    model, _ = load_model(tmp_path / "run")
    assert (model.config.image_channels, model.config.image_size) == (3, 32)
    assert run("sample", "--checkpoint", tmp_path / "run", "--steps", "1", "--n", "2",
               "--out", tmp_path / "s.npz").returncode == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 3, 32, 32)
    result = run("train", "--data", "mnist", "--image-size", "30", "--steps", "1", "--out", tmp_path / "bad")
    assert result.returncode == 1 and "not a multiple of 4" in result.stderr


def test_configs_stored_before_the_shape_fields_still_load():
    """A U-Net config without image_size (written before it existed) samples 28x28 and keeps any depth."""
    config = dl.models.config_from_dict("unet", {"image_channels": 1, "base_channels": 8, "channel_mults": [1, 1, 2, 2],
                                                  "attention_levels": [3]})
    assert config.image_size is None and dl.pipeline.image_shape(dl.UNet(config)) == (1, 28, 28)
    classifier = dl.models.config_from_dict("classifier", {"channels": 8, "feature_dim": 16, "num_classes": 10})
    assert (classifier.image_channels, classifier.image_size) == (1, 28)


def test_folder_reads_notice_edits_and_odd_files(tmp_path):
    """An image changed on disk is read again; macOS's hidden ._ files are skipped; a 16-bit PNG is scaled, not
    clipped to white; transparency is laid on white."""
    Image.new("L", (8, 8), 0).save(tmp_path / "a.png")
    assert load_folder(tmp_path, 1, 8)[0].max() == -1
    Image.new("L", (8, 8), 255).save(tmp_path / "a.png")
    assert load_folder(tmp_path, 1, 8)[0].min() == 1
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "b.png")  # mid-grey in 16 bits
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.png")  # fully transparent
    images, _ = load_folder(tmp_path, 1, 8)
    assert len(images) == 3 and abs(float(images[1].mean())) < 0.02 and images[2].min() == 1


def test_the_committed_fashion_classifier_judges_clothes():
    """It recognises Fashion-MNIST test images, and in its features real clothes are close to the test set while
    MNIST digits (not clothes) are far from it."""
    classifier = dl.pretrained("fashion_classifier")[0]
    images, labels = load_fashion_mnist(train=False)
    predicted, _ = dl.classify(classifier, images[:2000])
    assert float((predicted == labels[:2000]).float().mean()) > 0.85
    floor = dl.evaluation.real_baseline_fid(500, classifier, data="fashion-mnist")
    digits = dl.evaluation.fid(dl.load_mnist(train=False)[0][:500], classifier, "fashion-mnist")
    assert digits > 10 * floor
