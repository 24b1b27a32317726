"""The loss, EMA, checkpoints (round trip, corruption, mismatch), resuming, and 2-process DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion_lib import (EMA, CheckpointError, MLPDenoiser, PixelCNN, TrainConfig, UNet, UNetConfig, diffusion_loss,
                           load_model, load_weights, make_schedule, save_model, train)
from diffusion_lib.training import MODEL_FILE, STATE_FILE

REPO = Path(__file__).resolve().parent.parent
TINY_MLP = {"hidden": 16, "layers": 1}


def _same_weights(a, b, atol=0.0):
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_loss_is_mse_to_the_noise():
    s = make_schedule("linear", 100)
    model = lambda x, t, labels=None: torch.zeros_like(x)
    x0, noise, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 10, 50, 99])
    assert torch.allclose(diffusion_loss(model, x0, t, noise, s), noise.pow(2).mean())
    assert torch.allclose(diffusion_loss(model, x0, t, noise, s, "x0", reduction="none"), x0.pow(2).mean(1))
    perfect = lambda x, t, labels=None: noise
    assert diffusion_loss(perfect, x0, t, noise, s).item() == 0


def test_ema_is_a_moving_average():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1000)  # past the warm-up, the decay is 0.9
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * model.weight)
    assert not ema.model.weight.requires_grad


def test_checkpoint_round_trip(tmp_path):
    model = UNet(UNetConfig(base_channels=16, num_classes=10))
    save_model(tmp_path / "m.safetensors", model, {"schedule": "cosine", "T": 10})
    loaded, info = load_model(tmp_path / "m.safetensors")
    assert info == {"schedule": "cosine", "T": 10} and loaded.config == model.config and _same_weights(loaded, model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    assert torch.equal(loaded(x, t), model.eval()(x, t))
    fresh = UNet(UNetConfig(base_channels=16, num_classes=10))
    load_weights(fresh, tmp_path / "m.safetensors")
    assert _same_weights(fresh, model)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file may be left behind"


def test_bad_checkpoints_raise_errors_that_name_the_problem(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, UNet(UNetConfig(base_channels=16)), {})
    with pytest.raises(CheckpointError, match="holds a 'unet' model, but the model given is a 'mlp'"):
        load_weights(MLPDenoiser(), path)
    with pytest.raises(CheckpointError, match="another config.*base_channels"):
        load_weights(UNet(UNetConfig(base_channels=32)), path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(truncated)
    garbage = tmp_path / "notes.safetensors"
    garbage.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a diffusion_course checkpoint"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "missing.safetensors")


def test_resumed_training_equals_uninterrupted(tmp_path):
    config = TrainConfig(data="moons", steps=12, batch_size=32, T=50, seed=3, save_every=100, model=TINY_MLP)
    whole = train(config, tmp_path / "whole", progress=False)
    train(TrainConfig(**{**config.__dict__, "steps": 5}), tmp_path / "split", progress=False)
    resumed = train(config, tmp_path / "split", progress=False)
    assert resumed.step == 12 and len(resumed.losses) == 12
    assert _same_weights(whole.model, resumed.model) and _same_weights(whole.ema_model, resumed.ema_model)
    assert whole.losses == resumed.losses
    fresh = train(TrainConfig(**{**config.__dict__, "seed": 4}), tmp_path / "other", progress=False)
    assert not _same_weights(whole.model, fresh.model)  # the comparison can tell runs apart


def test_resume_refuses_other_settings(tmp_path):
    config = TrainConfig(data="moons", steps=3, batch_size=8, T=50, model=TINY_MLP)
    train(config, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="other settings.*lr"):
        train(TrainConfig(**{**config.__dict__, "steps": 6, "lr": 0.1}), tmp_path, progress=False)


def test_a_run_saved_before_a_config_field_existed_still_resumes(tmp_path):
    import json

    from diffusion_lib.checkpoint import read_tensors, save_tensors

    config = TrainConfig(data="moons", steps=3, batch_size=8, T=50, model=TINY_MLP)
    train(config, tmp_path, progress=False)
    tensors, metadata = read_tensors(tmp_path / STATE_FILE)
    old = json.loads(metadata["train_config"])
    del old["text"]  # as written before captions existed
    save_tensors(tmp_path / STATE_FILE, tensors, {**metadata, "train_config": json.dumps(old)})
    assert train(TrainConfig(**{**config.__dict__, "steps": 5}), tmp_path, progress=False).step == 5
    with pytest.raises(CheckpointError, match="other settings.*text"):
        train(TrainConfig(**{**config.__dict__, "steps": 6, "data": "mnist", "text": True,
                             "model": {"base_channels": 8, "groups": 4, "text_dim": 8}}), tmp_path, progress=False)


def test_the_defaults_are_the_study_winner_and_stored_runs_keep_their_meaning():
    """TrainConfig() is flow matching on a 16-channel U-Net; a run stored before a field existed reads its old value."""
    new = TrainConfig()
    assert (new.objective, new.batch_size, new.lr, new.prediction, new.model_config()) == \
        ("flow", 64, 2e-3, None, {"base_channels": 16, "image_channels": 1, "image_size": 28})
    assert TrainConfig(objective="ddpm").info()["prediction"] == "v"
    assert TrainConfig(data="moons").model_config() == {}  # the recipe's network is the U-Net's
    # as mnist_cond stored its config in session 1: no objective, loss_weight or precision yet
    stored = {"data": "mnist", "steps": 4000, "batch_size": 128, "lr": 0.002, "warmup": 100, "grad_clip": 1.0,
              "ema_decay": 0.999, "schedule": "linear", "T": 1000, "prediction": "eps", "conditional": True,
              "label_dropout": 0.1, "seed": 0, "save_every": 250, "model": {}}
    old = TrainConfig.from_stored(stored)
    assert (old.objective, old.precision, old.loss_weight, old.prediction, old.model_config()) == \
        ("ddpm", "fp32", "none", "eps", {"num_classes": 10, "image_channels": 1, "image_size": 28})
    with pytest.raises(ValueError, match="target of objective ddpm"):  # read naively, it is refused, not misread
        TrainConfig(**stored)
    # a flow run stored while prediction was still recorded for every objective
    assert TrainConfig.from_stored({**stored, "objective": "flow", "conditional": False}).prediction is None
    with pytest.raises(ValueError, match="prediction 'eps' is a target of objective ddpm, not flow"):
        TrainConfig(prediction="eps")


def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch):
    from diffusion_lib import runtime
    from diffusion_lib.training import uses_bf16

    cpu = torch.device("cpu")
    for flags, fast in (({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True), (set(), False)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        assert uses_bf16(TrainConfig(), cpu) is fast
        assert not uses_bf16(TrainConfig(data="moons"), cpu)  # a 2-D MLP stays in float32
        assert uses_bf16(TrainConfig(precision="bf16"), cpu) and not uses_bf16(TrainConfig(precision="fp32"), cpu)


def test_cli_model_config_overrides_the_recipes_network(tmp_path):
    from diffusion_lib.checkpoint import read_tensors

    result = _cli("diffusion_lib", "train", "--data", "mnist", "--steps", "1", "--batch-size", "2", "--quiet",
                  "--model-config", '{"attention_levels": []}', "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    config = json.loads(read_tensors(tmp_path / MODEL_FILE)[1]["config"])
    assert config["base_channels"] == 16 and config["attention_levels"] == []


def _cli(*args, **kwargs):
    env = {**os.environ, "DIFFUSION_COURSE_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs)


def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL a CLI training run after its first checkpoint, resume it, and compare with an unbroken run."""
    args = ["--data", "moons", "--steps", "4000", "--batch-size", "16", "--T", "50", "--save-every", "100",
            "--model-config", '{"hidden": 16, "layers": 1}', "--quiet"]
    env = {**os.environ, "DIFFUSION_COURSE_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_lib", "train", *args, "--out", str(tmp_path / "killed")],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / STATE_FILE).exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_model(tmp_path / "killed" / MODEL_FILE)[1]["step"]
    assert stopped_at < 4000, "the run finished before it could be killed; raise --steps"
    assert _cli("diffusion_lib", "train", *args, "--out", str(tmp_path / "killed")).returncode == 0
    assert _cli("diffusion_lib", "train", *args, "--out", str(tmp_path / "whole")).returncode == 0
    killed, whole = load_model(tmp_path / "killed"), load_model(tmp_path / "whole")
    assert killed[1]["step"] == whole[1]["step"] == 4000 and _same_weights(killed[0], whole[0])


def test_two_process_ddp_equals_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo), each on half of the global batch, matches one process.

    In float32: under bf16 autocast (the default on CPUs with bf16 instructions) two half-batch sums round
    differently from one whole-batch sum, far above the 1e-5 that this test holds float32 to.
    """
    args = ["--data", "moons", "--steps", "20", "--batch-size", "64", "--T", "50", "--quiet", "--precision", "fp32",
            "--model-config", '{"hidden": 32, "layers": 2}']
    single = _cli("diffusion_lib", "train", *args, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = _cli("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "diffusion_lib", "train", *args,
               "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = load_model(tmp_path / "single")[0], load_model(tmp_path / "ddp")[0]
    assert _same_weights(a, b, atol=1e-5)
    assert _cli("diffusion_lib", "train", *args, "--seed", "1", "--out", str(tmp_path / "seed1")).returncode == 0
    assert not _same_weights(a, load_model(tmp_path / "seed1")[0], atol=1e-5)  # the comparison has teeth


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown data 'cifar'"):
        TrainConfig(data="cifar")
    with pytest.raises(ValueError, match="--conditional or --text needs labelled images"):
        TrainConfig(data="moons", conditional=True)
    with pytest.raises(ValueError, match="--conditional or --text needs labelled images"):
        TrainConfig(data="moons", text=True)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(conditional=True, text=True)
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="sigmoid")


def test_pixelcnn_checkpoints_too(tmp_path):
    model = PixelCNN()
    save_model(tmp_path / "p.safetensors", model, {"data": "mnist"})
    loaded, _ = load_model(tmp_path / "p.safetensors")
    assert isinstance(loaded, PixelCNN) and _same_weights(loaded, model)


@pytest.mark.parametrize("arch", ["pixelcnn", "classifier"])
def test_the_train_command_trains_the_other_mnist_models(arch):
    """A few steps lower the loss of the PixelCNN's likelihood and the classifier's cross-entropy."""
    config = TrainConfig(data="mnist", arch=arch, steps=40, batch_size=32, lr=3e-3, warmup=1, seed=0,
                         model={"channels": 8} if arch == "pixelcnn" else {"channels": 8, "feature_dim": 32})
    result = train(config, progress=False)
    assert sum(result.losses[-5:]) / 5 < 0.7 * sum(result.losses[:5]) / 5, (result.losses[:5], result.losses[-5:])
    with pytest.raises(ValueError, match="MNIST digits at 28x28" if arch == "pixelcnn" else "needs labelled images"):
        TrainConfig(data="moons", arch=arch)
    with pytest.raises(ValueError, match=f"arch '{arch}' takes no --conditional"):
        TrainConfig(data="mnist", arch=arch, conditional=True)
    with pytest.raises(ValueError, match="unknown arch 'gan'"):
        TrainConfig(arch="gan")


def test_pretrained_names_what_is_available():
    from diffusion_lib import pretrained

    with pytest.raises(CheckpointError, match="no pretrained model 'mnist_gan'; available: .*mnist_classifier"):
        pretrained("mnist_gan")


def test_snapshots_keep_the_ema_model_at_the_listed_steps(tmp_path):
    config = TrainConfig(data="moons", steps=8, batch_size=8, T=50, save_every=100, snapshots=(2, 5), model=TINY_MLP)
    result = train(config, tmp_path, progress=False)
    files = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert files == ["step_000002.safetensors", "step_000005.safetensors"]
    early, info = load_model(tmp_path / "snapshots" / files[0])
    assert info["step"] == 2 and not _same_weights(early, result.ema_model)


def test_a_time_limit_stops_with_a_checkpoint_that_resumes(tmp_path):
    config = TrainConfig(data="moons", steps=100_000, batch_size=8, T=50, seed=1, save_every=100_000, model=TINY_MLP)
    stopped = train(config, tmp_path, progress=False, max_seconds=0.2)
    assert 0 < stopped.step < config.steps
    assert load_model(tmp_path / MODEL_FILE)[1]["step"] == stopped.step  # checkpointed at the stop
    target = stopped.step + 3
    resumed = train(TrainConfig(**{**config.__dict__, "steps": target}), tmp_path, progress=False)
    whole = train(TrainConfig(**{**config.__dict__, "steps": target}), progress=False)
    assert resumed.step == target and _same_weights(whole.model, resumed.model)
    with pytest.raises(ValueError, match="max_seconds"):
        train(config, progress=False, max_seconds=0)


def test_pretrained_snapshots_are_the_committed_run_in_step_order():
    from diffusion_lib import CheckpointError, pretrained_snapshots

    files = pretrained_snapshots("mnist_uncond")
    steps = [load_model(path)[1]["step"] for path in files]
    assert steps == sorted(steps) and len(steps) >= 4 and files[-1].name == MODEL_FILE
    assert load_model(files[-1])[1]["train_config"]["snapshots"] == steps[:-1]
    with pytest.raises(CheckpointError, match="without --snapshots"):
        pretrained_snapshots("mnist_cond")
    with pytest.raises(CheckpointError, match="available"):
        pretrained_snapshots("nonsense")
