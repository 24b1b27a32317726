"""Bad input and faults: nothing a user made is lost, nothing is silently wrong, every refusal is one clear line.

The numbers in the test names are those of the issue "Nothing lost, nothing silently wrong".
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusion_lib as dl
from diffusion_lib.__main__ import main
from diffusion_lib.checkpoint import PRETRAINED_DIR, CheckpointError
from diffusion_lib.outputs import LOCK_FILE, OutputError, RunLock
from diffusion_lib.training import MODEL_FILE, STATE_FILE, TrainingDiverged

MOONS = ["train", "--data", "moons", "--quiet", "--batch-size", "16", "--model-config", '{"hidden": 16}']


def cli(capsys, *args):
    """(exit code, stdout, stderr) of `python -m diffusion_lib ARGS`, run in this process."""
    try:
        code = main(list(map(str, args)))
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    """A 2-step MNIST model: enough to exercise the commands."""
    out = tmp_path_factory.mktemp("uncond")
    config = dl.TrainConfig(data="mnist", steps=2, batch_size=4, model={"base_channels": 16})
    dl.train(config, out, progress=False)
    return out


# ----------------------------------------------------------------------------------------- 1-3: data loss


def test_1_a_finished_model_without_state_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "committed"
    out.mkdir()
    shutil.copy(PRETRAINED_DIR / "mnist_uncond" / MODEL_FILE, out / MODEL_FILE)
    before = (out / MODEL_FILE).read_bytes()
    code, _, err = cli(capsys, *MOONS, "--steps", "2", "--out", out)
    assert code == 1 and "--overwrite" in err and "new --out folder" in err and len(err.splitlines()) == 1
    assert (out / MODEL_FILE).read_bytes() == before
    code, _, err = cli(capsys, *MOONS, "--steps", "2", "--out", out, "--overwrite")
    assert code == 0, err
    assert (out / MODEL_FILE).read_bytes() != before


def test_2_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        code, _, err = cli(capsys, *MOONS, "--steps", "2", "--out", out)
        assert code == 1 and f"process {sleeper.pid}" in err and "another training run" in err
        assert not (out / STATE_FILE).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    code, _, err = cli(capsys, *MOONS, "--steps", "2", "--out", out)  # its process is gone: the lock is stale
    assert code == 0, err
    assert not (out / LOCK_FILE).exists()  # released on exit
    with RunLock(out):
        with pytest.raises(OutputError, match="another training run"):
            RunLock(out).__enter__()


def test_3_unwritable_outputs_are_found_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, *MOONS, "--steps", "100000", "--out", blocker)  # would train for minutes
    assert code == 1 and "is a file, not a folder" in err
    code, _, err = cli(capsys, "sample", "--checkpoint", "nowhere", "--n", "1", "--out", blocker / "x.npz")
    assert code == 1 and "is a file, not a folder" in err  # before the checkpoint is even read


def test_stale_temporary_files_are_removed_when_a_run_starts(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "snapshots").mkdir(parents=True)
    for name in ("model.safetensorsabc.tmp", "snapshots/step_000001.safetensorsxyz.tmp"):
        (out / name).write_bytes(b"")
    code, _, err = cli(capsys, *MOONS, "--steps", "1", "--out", out)
    assert code == 0, err
    assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------------------------ 4-8: silently wrong


def test_4_divergence_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    config = dl.TrainConfig(data="moons", steps=50, batch_size=16, lr=1e30, grad_clip=0.0, save_every=1, warmup=0)
    with pytest.raises(TrainingDiverged, match="the loss became .* at step .* keeps the checkpoint of step"):
        dl.train(config, tmp_path / "run", progress=False)
    model, _ = dl.load_model(tmp_path / "run")
    assert all(p.isfinite().all() for p in model.parameters())


def test_4_non_finite_weights_are_never_saved(tmp_path):
    model = dl.MLPDenoiser()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to save"):
        dl.save_model(tmp_path / "m.safetensors", model)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--grad-clip", "nan"),
                                           ("--ema-decay", "1"), ("--label-dropout", "-0.1"), ("--max-minutes", "nan"),
                                           ("--warmup", "-1"), ("--seed", "1e23"), ("--seed", "-1")])
def test_4_8_numeric_options_are_validated(tmp_path, capsys, option, value):
    code, _, err = cli(capsys, *MOONS, "--steps", "2", "--out", tmp_path / "run", option, value)
    assert code == 2 and option in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_4_evaluate_rejects_non_finite_images_and_prints_strict_json(tmp_path, capsys):
    images = np.zeros((4, 1, 28, 28), np.float32)
    images[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", images=images)
    code, _, err = cli(capsys, "evaluate", tmp_path / "nan.npz")
    assert code == 1 and "NaN" in err
    real = dl.load_mnist(train=False)[0][:20].numpy()
    np.savez(tmp_path / "ok.npz", images=real)
    code, out, err = cli(capsys, "evaluate", tmp_path / "ok.npz")
    assert code == 0, err
    json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_5_labels_outside_the_digits_are_refused(tmp_path, capsys, uncond):
    images = dl.load_mnist(train=False)[0][:4].numpy()
    for labels in (np.array([1, 2, 3, 10]), np.array([1.0, 2.0, 3.7, 4.0])):
        np.savez(tmp_path / "s.npz", images=images, labels=labels)
        code, _, err = cli(capsys, "evaluate", tmp_path / "s.npz")
        assert code == 1 and "labels" in err and "0-9" in err
    model, info = dl.pretrained("mnist_cond")
    with pytest.raises(ValueError, match="labels must be integers in 0..9"):
        dl.generate(model, info, 2, "ddim", 2, labels=torch.tensor([10, 10]))


def test_6_inpainting_input_is_checked(tmp_path, capsys, uncond):
    images = np.zeros((2, 1, 28, 28), np.float32)
    images[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "in.npz", images=images)
    for source, n, message in ((tmp_path / "in.npz", 2, "finite and lie in [-1, 1]"),
                               ("mnist-test", 100000, "fewer than --n 100000")):
        code, _, err = cli(capsys, "sample", "--checkpoint", uncond, "--n", n, "--inpaint", source, "--sampler", "ddim",
                           "--steps", "2", "--out", tmp_path / "out.npz")
        assert code == 1 and message in err, err
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("name, message", [("folder", "is a folder"), ("noext", "must end in .npz")])
def test_7_sample_writes_exactly_where_it_says(tmp_path, capsys, uncond, name, message):
    out = tmp_path / name
    if name == "folder":
        out.mkdir()
    code, _, err = cli(capsys, "sample", "--checkpoint", uncond, "--n", "1", "--steps", "2", "--out", out)
    assert code == 1 and message in err
    code, stdout, err = cli(capsys, "sample", "--checkpoint", uncond, "--n", "1", "--steps", "2",
                            "--out", tmp_path / "s.npz")
    assert code == 0 and str(tmp_path / "s.npz") in stdout and (tmp_path / "s.npz").is_file()


def test_8_eta_snapshots_and_timesteps_out_of_range(tmp_path, capsys, uncond):
    code, _, err = cli(capsys, "sample", "--checkpoint", uncond, "--n", "1", "--eta", "1.5", "--out", tmp_path / "s.npz")
    assert code == 2 and "--eta" in err
    schedule = dl.make_schedule("linear", 10)
    x, t = torch.zeros(1, 2), torch.tensor([5])
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        dl.ddim_step(torch.zeros(1, 2), x, t, torch.tensor([2]), schedule, eta=1.5)
    with pytest.raises(ValueError, match="snapshots must be steps between 1 and steps=10"):
        dl.TrainConfig(steps=10, snapshots=(5, 20))
    net = dl.UNet(dl.UNetConfig(base_channels=16))
    for bad in (torch.tensor([10**6]), torch.tensor([float("nan")]), torch.tensor([-5000.0])):
        with pytest.raises(ValueError, match="timestep"):
            net(torch.zeros(1, 1, 28, 28), bad)


# ---------------------------------------------------------------------------------- 9-10: memory, headers


def test_9_batched_sampling_gives_the_same_samples_whatever_the_batch_size():
    """The same to round-off: a network call differs by ~1e-7 between batch sizes (CPU kernels), and an eps model's
    first step divides that by sqrt(alpha-bar) ~ 0.006; a chunk given another row's label would differ by ~1."""
    model, info = dl.pretrained("mnist_cond")
    labels = torch.arange(7) % 10
    for sampler, eta in (("ddim", 0.0), ("ddim", 1.0), ("dpm-solver++", 0.0)):
        whole, _ = dl.generate(model, info, 7, sampler, 4, eta=eta, guidance=3.0, labels=labels, seed=2, batch_size=500)
        pieces, _ = dl.generate(model, info, 7, sampler, 4, eta=eta, guidance=3.0, labels=labels, seed=2, batch_size=3)
        assert torch.allclose(whole, pieces, atol=2e-3), sampler


def _edited_copy(tmp_path, change):
    source = PRETRAINED_DIR / "mnist_uncond" / MODEL_FILE
    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata())
    change(metadata)
    path = tmp_path / "edited.safetensors"
    save_file(load_file(str(source)), str(path), metadata=metadata)
    return path


def _with(key, **fields):
    return lambda m: m.update({key: json.dumps({**json.loads(m[key]), **fields})})


@pytest.mark.parametrize("change, message", [
    (_with("config", base_channels=20000), "wrong shapes"),
    (_with("info", T=10**12), "T=1000000000000"),
    (_with("config", groups=0), "cannot be rebuilt"),
    (_with("info", data="cifar"), "data='cifar'"),
    (lambda m: m.pop("arch"), "no 'arch' header"),
])
def test_10_checkpoint_headers_are_checked_before_anything_is_built(tmp_path, change, message):
    path = _edited_copy(tmp_path, change)
    with pytest.raises(CheckpointError, match=message):
        dl.load_model(path)


def _without_data(metadata):
    metadata["info"] = json.dumps({k: v for k, v in json.loads(metadata["info"]).items() if k != "data"})


@pytest.mark.parametrize("change", [lambda m: m.pop("info"), _without_data])
def test_10_a_checkpoint_without_sampler_info_loads_but_is_not_sampled(tmp_path, capsys, change):
    path = _edited_copy(tmp_path, change)
    dl.load_model(path)  # a model saved by hand may carry less info; sampling needs it
    code, _, err = cli(capsys, "sample", "--checkpoint", path, "--n", "1", "--out", tmp_path / "s.npz")
    assert code == 1 and "missing or not valid" in err and "Traceback" not in err


# ------------------------------------------------------------------------------- one clear line each


def test_messages_for_bad_files_and_options(tmp_path, capsys, uncond):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 1, 28, 28), np.float32))
    np.savez(tmp_path / "strings.npz", images=np.array([["a"]]))
    np.savez(tmp_path / "strlabels.npz", images=np.zeros((2, 1, 28, 28), np.float32), labels=np.array(["1", "2"]))
    np.save(tmp_path / "plain.npy", np.zeros((2, 1, 28, 28), np.float32))
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 1, 28, 28), np.float32))
    (tmp_path / "text.npz").write_text("hello")
    state_only = tmp_path / "state_only"
    state_only.mkdir()
    tensors = load_file(str(uncond / STATE_FILE))
    del tensors["rng.generator"]
    with safe_open(str(uncond / STATE_FILE), "pt") as f:
        save_file(tensors, str(state_only / STATE_FILE), metadata=f.metadata())
    classifier = PRETRAINED_DIR / "mnist_classifier" / MODEL_FILE
    npz = tmp_path / "s.npz"
    cases = [
        (["evaluate", tmp_path / "empty.npz"], "at least 2 images"),
        (["evaluate", tmp_path / "strings.npz"], "must hold floats"),
        (["evaluate", tmp_path / "strlabels.npz"], "whole class numbers such as the digits 0-9"),
        (["evaluate", tmp_path / "plain.npy"], "not an .npz"),
        (["evaluate", tmp_path / "text.npz"], "not an .npz"),
        (["evaluate", tmp_path / "ok.npz", "--classifier", uncond], "not a classifier"),
        (["sample", "--checkpoint", classifier, "--n", "1", "--out", npz], "holds a Classifier, not a diffusion model;"
                                                                           " give a checkpoint made by"),
        (["sample", "--checkpoint", uncond / STATE_FILE, "--n", "1", "--out", npz], "is a training state"),
        ([*MOONS, "--steps", "2", "--out", state_only], "incomplete training state"),
        ([*MOONS, "--steps", "2", "--out", tmp_path / "r", "--model-config", "{bad"], "is not valid JSON"),
        (["sample", "--checkpoint", PRETRAINED_DIR / "mnist_text", "--n", "1", "--out", npz,
          "--prompt", " ".join(["seven"] * 1000)], "(5999 characters)"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, *args)
        assert code in (1, 2) and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "allow_pickle" not in err, err
        assert "_json_object" not in err and len(err) < 600, err


def test_a_corrupt_mnist_file_is_named_with_its_expected_md5(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(dl.data.REPO_DATA / "MNIST" / "raw", raw)
    with open(raw / "t10k-labels-idx1-ubyte.gz", "ab") as f:
        f.write(b"x")
    with pytest.raises(FileNotFoundError, match="is corrupt or not the original file .* expected ec29112dd5afa0611ce80d1b7f02629c"):
        dl.load_mnist(train=False, root=tmp_path)
