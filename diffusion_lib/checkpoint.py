"""Checkpoints: weights plus the config that rebuilds the model, in safetensors.

safetensors holds only tensors and a string-to-string header, so loading a checkpoint can
never run code (unlike pickle). The header carries:

| key       | value                                                        |
| --------- | ------------------------------------------------------------ |
| `format`  | `diffusion_course/1`                                         |
| `arch`    | `unet`, `mlp`, `dit`, `pixelcnn`, `classifier` or `vae` (see `models.ARCHITECTURES`) |
| `config`  | the model config as JSON                                     |
| `info`    | JSON of whatever else a sampler needs (schedule, T, prediction, data, step, ...) |

Files are written atomically: to a temporary file in the same folder, then renamed over
the target, so an interrupted write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .continuous import SIGMA_DATA
from .models import arch_of, build_model, config_from_dict, config_to_dict

FORMAT = "diffusion_course/1"
PRETRAINED_DIR = Path(__file__).resolve().parent / "checkpoints"
MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for what was asked."""


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if broken:
        raise CheckpointError(f"refusing to save {path}: {', '.join(broken[:3])} hold NaN or infinite values "
                              "(training diverged; lower the learning rate)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def committed_names() -> list[str]:
    """The names of the models committed with the course (`pretrained`)."""
    return sorted(p.parent.name for p in PRETRAINED_DIR.glob("*/model.safetensors"))


def resolve(path: str | Path) -> Path:
    """The file a checkpoint reference names: a file, a training --out folder, or a committed model's name.

    A path that exists wins over a committed name, so a local folder called `mnist_cond` is what it says.
    """
    path = Path(path)
    if not path.exists() and str(path) in committed_names():
        path = PRETRAINED_DIR / str(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: give a model.safetensors file, a training --out folder, or "
                              f"a committed model ({', '.join(committed_names())}); train one with "
                              "'python -m diffusion_lib train --out DIR'")
    return path


def weights_digest(path: str | Path) -> str:
    """A short SHA-256 of a checkpoint's weights (names, dtypes, shapes, values; not its header).

    A model trained on another model's outputs (a latent model on an autoencoder, a student on its teacher)
    stores this to notice when the file at the same path later holds other weights.
    """
    tensors, _ = read_tensors(path)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and its header, turning every failure into a CheckpointError."""
    path = resolve(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {error}. "
            "Re-download it or retrain it."
        ) from error
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a diffusion_course checkpoint (no '{FORMAT}' header)")
    return tensors, metadata


def save_model(path: str | Path, model: nn.Module, info: dict | None = None) -> None:
    """Save a model's weights, its architecture and config, and `info` (JSON-able) to `path`."""
    metadata = {"format": FORMAT, "arch": arch_of(model), "config": json.dumps(config_to_dict(model.config)),
                "info": json.dumps(info or {})}
    save_tensors(path, {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}, metadata)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model stored at `path` (a file, or a folder holding model.safetensors).

    Nothing in the header is trusted before it is checked: the model is first built on PyTorch's
    "meta" device (shapes only, no memory), its tensor shapes must match the file's, and a
    denoiser's info must name a known schedule, T, target and data set.
    Returns (model in eval mode on `device`, info dict).
    """
    tensors, metadata = read_tensors(path)
    if "arch" not in metadata:
        if metadata.get("kind") == "train_state":
            raise CheckpointError(f"{path} is a training state (for resuming a run), not a model: load the "
                                  f"model.safetensors beside it")
        raise CheckpointError(f"{path} has no 'arch' header: it was not written by save_model")
    try:
        config = config_from_dict(metadata["arch"], json.loads(metadata["config"]))
        with torch.device("meta"):  # shapes only: a header asking for billions of weights allocates nothing
            skeleton = build_model(metadata["arch"], config)
    except Exception as error:  # a header can be wrong in any way; whatever breaks, say which file and why
        raise CheckpointError(f"{path}: its architecture header cannot be rebuilt: {error!r}") from error
    _check_shapes(skeleton.state_dict(), tensors, path)
    info = _read_info(metadata, path, denoiser=metadata["arch"] in ("unet", "mlp", "dit"))
    model = build_model(metadata["arch"], config)
    _load_state(model, tensors, path)
    if metadata["arch"] == "classifier":  # what it judges (`evaluation.judged_data`); MNIST before this was stored
        model.trained_on = info.get("data", "mnist")
    return model.to(device).eval(), info


def _read_info(metadata: dict, path, denoiser: bool) -> dict:
    """The checkpoint's info; for a denoiser, the fields a sampler reads are checked where present."""
    try:
        info = json.loads(metadata.get("info", "{}"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its info header is not JSON ({error.msg})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: its info header must be a JSON object")
    if denoiser:
        check_sampler_info(info, path, required=False)
    return info


def check_sampler_info(info: dict, where, required: bool = True) -> None:
    """Raise a CheckpointError unless `info` names a valid schedule, T, prediction and data (and objective, if given).

    `required=False` checks only the fields present (a model saved by hand may carry less).
    """
    from .data import DATASETS, FOLDER
    from .denoisers import Denoiser
    from .objectives import OBJECTIVES
    from .schedules import SCHEDULES

    checks = {"schedule": lambda v: v in SCHEDULES, "T": lambda v: type(v) is int and 1 <= v <= 100_000,
              "prediction": lambda v: v in Denoiser.PREDICTIONS, "data": lambda v: v in DATASETS or (isinstance(v, str) and v.startswith(FOLDER)),
              "objective": lambda v: v in OBJECTIVES}
    for key, ok in checks.items():
        if key not in info and (key == "objective" or not required):
            continue  # no objective: written before there were others, so ddpm
        if key not in info or not ok(info[key]):
            raise CheckpointError(f"{where}: its info has {key}={info.get(key)!r}, which is missing or not valid; "
                                  "sample from a checkpoint written by 'python -m diffusion_lib train'")
    if "latent" in info:
        _check_latent_info(info["latent"], where)


@dataclass(frozen=True)
class ModelInfo:
    """What a denoiser's checkpoint says about its network, typed, and checked once when read (`ModelInfo.read`).

    The back-compatibility of stored infos lives here: a checkpoint without `objective` was written before there were
    others, so DDPM's; one without `sigma_data` is MNIST's 0.962, the value every EDM run used before it was measured
    per data set (`training.TrainConfig.sigma_data`). `latent`: see `latent.latent_info`; `sampler`: a distilled
    student's own (sampler, steps), None for a model that samples with its objective's.
    """

    schedule: str
    T: int
    prediction: str
    objective: str = "ddpm"
    data: str = "mnist"
    sigma_data: float = SIGMA_DATA
    latent: dict | None = None
    sampler: tuple[str, int] | None = None

    @classmethod
    def read(cls, info: "dict | ModelInfo", where="the checkpoint") -> "ModelInfo":
        if isinstance(info, ModelInfo):
            return info
        check_sampler_info(info, where)
        distilled = info.get("distilled") or {}
        return cls(info["schedule"], info["T"], info["prediction"], info.get("objective", cls.objective),
                   info["data"], info.get("sigma_data", cls.sigma_data), info.get("latent"),
                   tuple(distilled["sampler"]) if "sampler" in distilled else None)


def stored_objective(info: dict) -> str:
    """The objective a stored info names; DDPM's for one written before there were others (`ModelInfo`)."""
    return info.objective if isinstance(info, ModelInfo) else info.get("objective", ModelInfo.objective)


def _check_latent_info(latent, where) -> None:
    """A latent model's `info["latent"]`: its autoencoder's reference and a finite positive scale (`latent`)."""
    ok = (isinstance(latent, dict) and isinstance(latent.get("autoencoder"), str) and latent["autoencoder"]
          and type(latent.get("scale")) in (int, float) and math.isfinite(latent["scale"]) and latent["scale"] > 0)
    if not ok:
        raise CheckpointError(f"{where}: its info's 'latent' must name an autoencoder and a positive scale, got "
                              f"{str(latent)[:80]!r}; sample from a checkpoint written by 'train --latent'")


def _check_shapes(expected: dict, tensors: dict[str, torch.Tensor], path) -> None:
    """The file's tensors must be the model's: the same names and shapes, and floats where the model has floats."""
    state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    kinds = [k for k in expected if state[k].is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        raise CheckpointError(f"{path} stores {', '.join(kinds[:3])} as {state[kinds[0]].dtype}, where the model holds "
                              f"{expected[kinds[0]].dtype}: it was not written by save_model; retrain or restore it")


def _check_values(tensors: dict[str, torch.Tensor], path) -> None:
    """Refuse weights that hold NaN or infinity (every sample would be NaN)."""
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if broken:
        raise CheckpointError(f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}): the file is damaged "
                              "or its training diverged; restore it or retrain it")


def pretrained(name: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a model committed with the course (`diffusion_lib/checkpoints/NAME/model.safetensors`).

    Each folder's README.md records the exact `python -m diffusion_lib train` command that made it.
    """
    available = committed_names()
    if name not in available:
        raise CheckpointError(f"no pretrained model {name!r}; available: {', '.join(available) or 'none'}. "
                              f"Its folder {PRETRAINED_DIR / name} should hold model.safetensors")
    return load_model(PRETRAINED_DIR / name / "model.safetensors", device)


def pretrained_snapshots(name: str) -> list[Path]:
    """The files of a committed run's training snapshots, in step order, ending with its final model.

    Snapshots are the EMA weights kept at the steps given to `train --snapshots`; load each with `load_model`.
    """
    final = PRETRAINED_DIR / name / "model.safetensors"
    if not final.exists():
        pretrained(name)  # raises the error that lists what is available
    snapshots = sorted((PRETRAINED_DIR / name / "snapshots").glob("step_*.safetensors"))
    if not snapshots:
        raise CheckpointError(f"{name!r} was trained without --snapshots: {PRETRAINED_DIR / name / 'snapshots'} is empty")
    return [*snapshots, final]


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load the weights at `path` into an existing `model`, checking it has the same architecture and config."""
    tensors, metadata = read_tensors(path)
    arch, config = arch_of(model), config_to_dict(model.config)
    if metadata.get("arch") != arch:
        raise CheckpointError(f"{path} holds a {metadata.get('arch')!r} model, but the model given is a {arch!r}")
    try:
        stored = config_to_dict(config_from_dict(arch, json.loads(metadata.get("config", "{}"))))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: its config header cannot be read: {error}") from error
    if stored != config:
        diff = {k: (stored.get(k), v) for k, v in config.items() if stored.get(k) != v}
        raise CheckpointError(f"{path} was saved from a model with another config; (stored, given) per field: {diff}")
    _load_state(model, tensors, path)
    return json.loads(metadata.get("info", "{}"))


def _load_state(model: nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    _check_shapes(model.state_dict(), tensors, path)
    _check_values(tensors, path)
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)})
