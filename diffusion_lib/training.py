"""Training a denoiser (or the course's other models): a run's config, its batches, its loss; `loop.fit` trains it.

DDPM Algorithm 1: repeat { x_0 ~ data, t ~ Uniform, eps ~ N(0, I);
gradient step on ||eps - eps_theta(sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, t)||^2 } (Eq. 14, "L_simple").
The target can instead be x_0 or v (`forward.training_target`), and the loss of each example
can be weighted by min-SNR-gamma (`objective="ddpm"`). `objective="edm"` or `"flow"` trains the same
networks with EDM's or rectified flow's loss on continuous noise levels instead (`continuous`); `objectives`
holds each objective's draw of noise levels and its loss.
TrainConfig's defaults are the recipe study's winner: flow, batch 64, lr 2e-3, a 16-channel U-Net.

| code            | symbol / meaning                                              |
| --------------- | ------------------------------------------------------------- |
| `t`             | t ~ Uniform{0..T-1} (the paper's 1..T); for edm/flow a N(0, 1) draw z that sets sigma or s |
| `loss_weight`   | "min-snr": weight min(SNR_t, gamma) / SNR_t in eps units, gamma = 5 (Hang et al. 2023, arXiv 2303.09556) |
| `meanflow_power`| p of MeanFlow's adaptive weight 1 / (e + c)^p on each example's error e (`objectives.meanflow_loss`) |
| `meanflow_share`| MeanFlow's share of examples with r < s; may change when a run resumes (flow matching first, then MeanFlow) |
| `ct_grid`       | ct's grid N at the first and last stage of training, doubling in between (`objectives.ct_grid`); it follows `steps` |
| `label_dropout` | p_uncond, the chance a label (or caption) is replaced by the null one (Ho & Salimans 2022, Alg. 1) |
| `text`          | condition on captions made from each digit's label and measured attributes (`text`) |
| `ema_decay`     | the exponential moving average of the weights used for sampling (`loop.EMA`) |
| `precision`     | "bf16": forward and backward under bfloat16 autocast (weights, optimiser and EMA stay float32); "auto": bf16 where the hardware runs it natively (`runtime.bf16_wanted`) |

`train` builds the network and a `loop.Run`, and hands `loop.fit` a `ModelTask`: a batch drawn by `draw_batch`,
its loss by `batch_loss`, a linear warm-up of the learning rate, and the checkpoints. The step itself (backward,
clipping, AdamW, EMA) is `fit`'s, the same for `distill`.

The same loop trains the course's other MNIST models (`arch="pixelcnn"`: the negative
log-likelihood of binarised digits; `arch="classifier"`: cross-entropy of the labels; `arch="vae"`: the
autoencoder of latent diffusion, `autoencoder.vae_loss`), so every
committed model comes from the one `python -m diffusion_lib train` command.

All randomness of a run (batches, t, eps, label dropout) comes from one `torch.Generator`
seeded by `TrainConfig.seed` and saved in the training state, so a run that is interrupted
and resumed gives the same weights as one that is not. Under `torchrun` every process draws
the same global batch and keeps its own slice, so N processes compute the same update as
one process with the whole batch (DistributedDataParallel averages the gradients).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .autoencoder import vae_loss
from .classifier import classifier_loss
from .continuous import SIGMA_DATA
from .checkpoint import FORMAT, CheckpointError, read_tensors, save_model, save_tensors, weights_digest
from .data import FOLDER, TOY_DATASETS, check_data_name, default_shape, image_classes, load_images, make_toy
from .forward import PREDICTIONS
from .latent import autoencoder_path, autoencoder_ref, latent_info, load_autoencoder, training_latents
from .models import DENOISERS, build_model, config_from_dict
from .outputs import RunLock, check_new_run, check_writable, clean_temporary
from .objectives import CT_GRID, CT_GROWTH, MEANFLOW_POWER, MEANFLOW_SHARE, MIN_SNR_GAMMA, OBJECTIVES, diffusion_loss, min_snr_weight  # noqa: F401 (re-exported)
from .pixelcnn import binarize, pixelcnn_loss
from .loop import EMA, TrainingDiverged  # noqa: F401 (re-exported: the names a learner meets with `train`)
from .loop import Run, Task, check_max_seconds, fit, new_run, optimizer_keys, restore_run, run_tensors
from .runtime import PRECISIONS, bf16_wanted, pick_device
from .schedules import SCHEDULES, make_schedule
from .text import HELD_OUT, mnist_caption_data, tokenize, training_captions

MODEL_FILE, STATE_FILE = "model.safetensors", "train_state.safetensors"
TOY_POINTS, TOY_SEED = 20000, 1234
# Fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("steps", "save_every", "snapshots", "meanflow_share")  # the share: flow matching first, then MeanFlow
IMAGE_MODELS = ("pixelcnn", "classifier", "vae")
LOSS_WEIGHTS = ("none", "min-snr")
# The defaults are the recipe that won the measured study (benchmarks/recipes.py; RESULTS.md, "Recipe
# study"): flow matching, batch 64, lr 2e-3, a U-Net of 16 base channels, bf16 where the hardware has it.
RECIPE_NETWORKS = {"unet": {"base_channels": 16}}
DDPM_PREDICTION = "v"  # the best DDPM target in the study
# The defaults before the study (until 2026-11-26). A stored run that lacks a field was written before
# the field existed, when the run used this value; `TrainConfig.from_stored` reads it so.
PREVIOUS_DEFAULTS = {"batch_size": 128, "lr": 1e-3, "schedule": "linear", "prediction": "eps", "objective": "ddpm",
                     "loss_weight": "none", "precision": "fp32", "model": {}}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `model`: None for the recipe's network, or fields over the architecture's config defaults."""

    data: str = "mnist"  # or fashion-mnist, folder:PATH, or a 2-D set (data.DATASETS)
    image_size: int | None = None  # None: the data's own (28 for MNIST and Fashion-MNIST, 32 for a folder)
    channels: int | None = None  # None: the data's own (1 for MNIST and Fashion-MNIST, 3 for a folder)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    schedule: str = "cosine"  # ddpm's noise schedule; edm and flow use it only to sample with DDPM samplers
    T: int = 1000
    prediction: str | None = None  # ddpm's network target: eps, x0 or v (None: v); edm and flow have their own
    objective: str = "flow"  # or "ddpm" (discrete steps), "edm": see `objectives`
    sigma_data: float | None = None  # edm: sqrt(E[x_0^2]) of the training data (None: measured from it)
    loss_weight: str = "none"  # or "min-snr" (ddpm only)
    meanflow_power: float | None = None  # meanflow's adaptive-weight power p (None: 1 on images, 0 on 2-D points)
    meanflow_share: float | None = None  # meanflow's share of examples with r < s (None: MEANFLOW_SHARE)
    ct_grid: tuple[int, int] | None = None  # ct's N at the start and at the end of training (None: CT_GROWTH)
    precision: str = "auto"  # "bf16": forward and backward under bfloat16 autocast; "auto": see `uses_bf16`
    conditional: bool = False
    text: bool = False  # caption-conditional (text encoder + cross-attention); the empty caption is the null
    label_dropout: float = 0.1
    seed: int = 0
    save_every: int = 500
    snapshots: tuple[int, ...] = ()  # steps at which to keep a copy of the EMA model in OUT/snapshots/
    model: dict | None = None  # None: the recipe's network (RECIPE_NETWORKS); a dict: fields over the arch's defaults
    arch: str | None = None  # None: the data's denoiser (unet for mnist, mlp for 2-D); or dit, pixelcnn, classifier, vae
    latent: str | None = None  # an autoencoder (committed name or run folder): train on its latents (`latent`)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.prediction is None and OBJECTIVES[self.objective].discrete:
            object.__setattr__(self, "prediction", DDPM_PREDICTION)
        check_data_name(self.data)
        if self.latent is not None:  # a committed name as it is, any other autoencoder by its absolute path
            object.__setattr__(self, "latent", autoencoder_ref(self.latent))
        if self.data.startswith(FOLDER):  # stored absolute, so that samples and checkpoints name it from anywhere
            object.__setattr__(self, "data", FOLDER + str(Path(self.data[len(FOLDER):]).expanduser().resolve()))
        if isinstance(self.ct_grid, list):  # as JSON and argparse give it
            object.__setattr__(self, "ct_grid", tuple(self.ct_grid))
        for ok, message in self._rules():
            if not ok:
                raise ValueError(message)
        if self.latent is not None and load_autoencoder(self.latent)[1].get("data") != self.data:
            raise ValueError(f"the autoencoder {self.latent} was trained on {load_autoencoder(self.latent)[1].get('data')!r}, "
                             f"not on --data {self.data!r}: train one on that data with --arch vae")
        classes = self.classes()  # also checks that a folder exists and holds images
        if (self.conditional or self.arch == "classifier") and classes is None:
            raise ValueError(f"{self.data[len(FOLDER):]} has no class subfolders, so --conditional and the classifier "
                             "have no labels to learn: put each class's images in a subfolder of its own")
        if self.sigma_data is None and OBJECTIVES[self.objective].sigma_data:
            object.__setattr__(self, "sigma_data", measured_sigma_data(self))
        if self.meanflow_power is None and self.objective == "meanflow":
            object.__setattr__(self, "meanflow_power", 0.0 if self.data in TOY_DATASETS else MEANFLOW_POWER)
        if self.meanflow_share is None and self.objective == "meanflow":
            object.__setattr__(self, "meanflow_share", MEANFLOW_SHARE)
        if self.ct_grid is None and self.objective == "ct":
            object.__setattr__(self, "ct_grid", CT_GROWTH)

    def _rules(self) -> list[tuple[bool, str]]:
        """(holds, what to do if not) for every rule a run's settings must follow."""
        image_data, mnist = self.data not in TOY_DATASETS, self.data == "mnist"
        discrete = OBJECTIVES[self.objective].discrete
        return [
            (image_data or (self.image_size is None and self.channels is None),
             f"--image-size and --channels are for image data, not the 2-D set {self.data!r}"),
            (self.channels in (None, 1, 3), f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}"),
            (self.image_size is None or self.image_size >= 4, f"image_size must be at least 4, got {self.image_size}"),
            (not set(self.model or {}) & {"image_channels", "image_size", "num_classes"},
             "set the image shape with --image-size and --channels, and classes through the data, not --model-config"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}"),
            (self.prediction in PREDICTIONS + (None,),
             f"unknown prediction {self.prediction!r}: choose one of {', '.join(PREDICTIONS)}"),
            (self.prediction is None or discrete,
             f"prediction {self.prediction!r} is a target of objective ddpm, not {self.objective}: "
             f"leave it out, or also set objective ddpm"),
            (self.loss_weight in LOSS_WEIGHTS, f"unknown loss_weight {self.loss_weight!r}: choose one of {', '.join(LOSS_WEIGHTS)}"),
            (self.loss_weight == "none" or discrete,
             f"loss_weight {self.loss_weight!r} is for objective ddpm; edm and flow have their own weighting"),
            (self.meanflow_power is None or (self.objective == "meanflow" and math.isfinite(self.meanflow_power)
                                             and self.meanflow_power >= 0),
             f"meanflow_power is the adaptive weight's power p >= 0 of objective meanflow; got {self.meanflow_power} "
             f"for objective {self.objective}"),
            (self.meanflow_share is None or (self.objective == "meanflow" and 0 <= self.meanflow_share <= 1),
             f"meanflow_share is objective meanflow's share of examples with r < s, in [0, 1]; got "
             f"{self.meanflow_share} for objective {self.objective}"),
            (self.ct_grid is None or (self.objective == "ct" and isinstance(self.ct_grid, tuple) and len(self.ct_grid) == 2
                                      and all(isinstance(n, int) for n in self.ct_grid)
                                      and 1 <= self.ct_grid[0] <= self.ct_grid[1]),
             f"ct_grid is objective ct's grid N at the start and at the end of training, two whole numbers with "
             f"1 <= start <= end; got {self.ct_grid} for objective {self.objective}"),
            (self.sigma_data is None or (OBJECTIVES[self.objective].sigma_data and math.isfinite(self.sigma_data)
                                         and self.sigma_data > 0),
             f"sigma_data is EDM's measure of the data, a positive number; got {self.sigma_data} for objective "
             f"{self.objective}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"),
            (self.steps >= 1 and self.batch_size >= 1 and self.T >= 1, "steps, batch_size and T must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
            (0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}"),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (all(1 <= s <= self.steps for s in self.snapshots),
             f"snapshots must be steps between 1 and steps={self.steps}, got {list(self.snapshots)}"),
            (0 <= self.label_dropout < 1, "label_dropout must lie in [0, 1)"),
            (not ((self.conditional or self.text) and not image_data),
             f"--conditional or --text needs labelled images, not the 2-D set {self.data!r}"),
            (not self.text or mnist, f"--text trains on captions of MNIST digits: use --data mnist, not {self.data!r}"),
            (not (self.conditional and self.text), "choose --conditional (labels) or --text (captions), not both"),
            (self.arch in (None,) + DENOISERS + IMAGE_MODELS, f"unknown arch {self.arch!r}: choose one of {', '.join(DENOISERS + IMAGE_MODELS)}"),
            (self.arch != "pixelcnn" or (mnist and self.image_size in (None, 28) and self.channels in (None, 1)),
             "arch pixelcnn models binarised MNIST digits at 28x28: use --data mnist without --image-size or --channels"),
            (self.arch not in IMAGE_MODELS or not (self.conditional or self.text),
             f"arch {self.arch!r} takes no --conditional or --text"),
            (self.arch != "classifier" or image_data, "arch classifier needs labelled images"),
            (self.arch != "vae" or image_data, f"arch vae encodes images, not the 2-D set {self.data!r}"),
            (not OBJECTIVES[self.objective].model_fields or self.model_arch in ("unet", "mlp"),
             f"objective {self.objective} trains a network told an interval of times, a unet or an mlp: "
             f"drop --arch {self.arch}"),
            (self.latent is None or (image_data and self.model_arch in ("unet", "dit")),
             "--latent trains a unet or dit denoiser on an autoencoder's latents of image data"),
            (self.latent is None or self.image_size is None and self.channels is None,
             "--latent takes the latents' shape from the autoencoder: drop --image-size and --channels"),
        ]

    @property
    def model_arch(self) -> str:
        if self.arch is not None:
            return self.arch
        return "mlp" if self.data in TOY_DATASETS else "unet"

    def image_shape(self) -> tuple[int, int] | None:
        """(channels, size) of the images the run trains on, or None for 2-D data."""
        if self.data in TOY_DATASETS:
            return None
        if self.latent is not None:
            vae = load_autoencoder(self.latent)[0].config
            return vae.latent_channels, vae.latent_size
        channels, size = default_shape(self.data)
        return self.channels or channels, self.image_size or size

    def model_config(self) -> dict:
        """The network's config fields: the data's shape and classes, the objective's needs, then the recipe's network
        or `model`."""
        shape, classes = self.image_shape(), self.classes()
        fields = {}
        if shape and self.model_arch in ("unet", "dit", "classifier", "vae"):
            fields = {"image_channels": shape[0], "image_size": shape[1]}
        if self.conditional or self.model_arch == "classifier":
            fields["num_classes"] = len(classes)
        if self.text:
            fields["text_dim"] = 64
        fields.update(OBJECTIVES[self.objective].model_fields)  # e.g. meanflow's second time input
        return {**fields, **(RECIPE_NETWORKS.get(self.model_arch, {}) if self.model is None else self.model)}

    def classes(self) -> tuple[str, ...] | None:
        """The class names of the training data (for a folder, its class subfolders), or None."""
        return None if self.data in TOY_DATASETS else image_classes(self.data)

    @classmethod
    def from_stored(cls, stored: dict) -> "TrainConfig":
        """The config of a stored run (a checkpoint's `info["train_config"]`), read as it was meant.

        A field missing from it did not exist yet and had its earlier default (`PREVIOUS_DEFAULTS`);
        runs stored before 2026-11-26 also recorded a DDPM `prediction` for edm and flow, which ignored it.
        """
        stored = {**PREVIOUS_DEFAULTS, **stored}
        if stored["objective"] != "ddpm":
            stored["prediction"] = None
        if stored["objective"] == "meanflow" and "meanflow_power" not in stored:  # before the weight existed
            stored["meanflow_power"] = 0.0
        if stored["objective"] == "edm" and stored.get("sigma_data") is None:  # EDM runs before it was measured
            stored["sigma_data"] = SIGMA_DATA  # used MNIST's value on any data
        if stored["objective"] == "ct" and "ct_grid" not in stored:  # before the grid grew: a fixed N
            stored["ct_grid"] = (CT_GRID, CT_GRID)
        if isinstance(stored.get("snapshots"), list):
            stored["snapshots"] = tuple(stored["snapshots"])
        return cls(**stored)

    def info(self) -> dict:
        """What a sampler needs to know about the model, stored in the checkpoint.

        A text model also keeps the attribute thresholds its captions came from and the held-out
        word pairs, so that samples can be checked against what their captions asked for.
        """
        objective = OBJECTIVES[self.objective]
        prediction = self.prediction if objective.discrete else objective.output  # what the network outputs (`denoisers`)
        info = {"schedule": self.schedule, "T": self.T, "prediction": prediction, "objective": self.objective,
                "data": self.data, "train_config": dataclasses.asdict(self)}
        if self.sigma_data is not None:
            info["sigma_data"] = self.sigma_data
        if self.conditional or self.model_arch == "classifier":
            info["classes"] = list(self.classes())
        if self.latent is not None:
            info["latent"] = latent_info(self.latent)
        if self.text:
            info["text"] = {"thresholds": mnist_caption_data()[1],
                            "held_out": [[d, *pair] for d, pair in HELD_OUT.items()]}
        return info


TrainResult = Run  # what `train` returns and its callback receives: model, ema_model, losses, step


def measured_sigma_data(config: TrainConfig) -> float:
    """sqrt(E[x_0^2]) over the run's training data (EDM's sigma_data, App. B.6), to 4 decimals: 0.962 for MNIST."""
    data = load_training_data(config)[0]
    return round(float(data.double().pow(2).mean().sqrt()), 4)


def load_training_data(config: TrainConfig):
    """(x (N, ...) float32, labels (N,) or None) for the configured data set."""
    if config.latent is not None:  # the autoencoder's scaled latents of the same images, in the same order
        vae = load_autoencoder(config.latent)[0].config
        images, labels = load_images(config.data, True, vae.image_channels, vae.image_size)
        return training_latents(config.latent, len(images))[0], labels
    if config.data not in TOY_DATASETS:
        return load_images(config.data, True, *config.image_shape())
    return make_toy(config.data, TOY_POINTS, torch.Generator().manual_seed(TOY_SEED)), None


def draw_batch(data, labels, config: TrainConfig, generator: torch.Generator, null_label: int | None = None,
               step: int = 0):
    """The global batch of training step `step`: (x0, t, noise, labels or None), all drawn from `generator`.

    `null_label`: the conditional model's null class, its number of classes (None: read from the data, which for
    a folder lists its class subfolders; the training loop passes the model's own, read once).

    Labels are returned for a conditional model (with label dropout applied) and for the classifier;
    a text model gets caption token ids (B, L) instead (`text.training_captions`, the empty caption
    with chance `label_dropout`).
    """
    B = config.batch_size
    idx = torch.randint(0, len(data), (B,), generator=generator)
    t = OBJECTIVES[config.objective].draw(B, generator, config, step)  # a step, a N(0, 1) draw the loss maps to sigma or s, ...
    noise = torch.randn((B, *noise_shape(config, data.shape[1:])), generator=generator)
    batch_labels = None
    if config.conditional:
        drop = torch.rand(B, generator=generator) < config.label_dropout
        null_label = config.model_config()["num_classes"] if null_label is None else null_label
        batch_labels = torch.where(drop, torch.full((B,), null_label), labels[idx])
    elif config.text:
        captions = training_captions(labels[idx], mnist_caption_data()[0][idx], generator)
        drop = torch.rand(B, generator=generator) < config.label_dropout
        batch_labels = tokenize([("" if d else c) for c, d in zip(captions, drop.tolist())])[0]
    elif config.model_arch == "classifier":
        batch_labels = labels[idx]
    return data[idx], t, noise, batch_labels


def noise_shape(config: TrainConfig, item_shape) -> tuple[int, ...]:
    """The shape of one example's noise: the data's own, or for the autoencoder its latent's (reparameterisation)."""
    if config.model_arch != "vae":
        return tuple(item_shape)
    vae_config = config_from_dict("vae", config.model_config())
    return vae_config.latent_channels, vae_config.latent_size, vae_config.latent_size


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def train(config: TrainConfig, out_dir: str | Path | None = None, device=None, progress: bool = True,
          callback=None, max_seconds: float | None = None, overwrite: bool = False) -> Run:
    """Train (or resume, when `out_dir` holds a training state) and return the run: model, EMA model and losses.

    `callback(step, loss, run)` runs every step on rank 0 (for live plots). Checkpoints go to
    `out_dir/model.safetensors` (EMA weights, for sampling) and `out_dir/train_state.safetensors`
    (everything needed to resume) every `save_every` steps and at the end; the EMA model at each
    step listed in `snapshots` is kept in `out_dir/snapshots/step_NNNNNN.safetensors`, for showing
    how samples improve during training.

    `max_seconds` stops the run early, with a checkpoint, once that much wall time has passed since
    the loop started (for "what do 5 minutes of training buy?"); a later call resumes it.

    Nothing earlier is lost (`outputs`): `out_dir` is checked for writing before any work, locked
    for the run, and a finished model without a training state is not overwritten unless
    `overwrite`. A loss that stops being finite ends the run with a `TrainingDiverged` error,
    leaving the last checkpoint saved before it as it was.
    """
    check_max_seconds(max_seconds)
    rank, world = _distributed()
    if out_dir is None or rank != 0:
        return _train(config, out_dir, device, progress, callback, max_seconds, rank, world)
    out_dir = check_writable(out_dir)
    with RunLock(out_dir):
        clean_temporary(out_dir)
        check_new_run(out_dir, MODEL_FILE, STATE_FILE, overwrite)
        return _train(config, out_dir, device, progress, callback, max_seconds, rank, world)


def _train(config: TrainConfig, out_dir, device, progress, callback, max_seconds, rank, world) -> Run:
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    device = pick_device(f"cuda:{rank}" if world > 1 and torch.cuda.is_available() else device)
    torch.manual_seed(config.seed)  # initial weights
    model = build_model(config.model_arch, config.model_config()).to(device)
    run = new_run(model, config.lr, config.ema_decay, config.seed, device, uses_bf16(config, device), config.grad_clip)
    if out_dir is not None and (Path(out_dir) / STATE_FILE).exists():
        _load_state(Path(out_dir) / STATE_FILE, config, run)
    task = ModelTask(config, run, out_dir, rank, world)
    fit(run, task, config.steps, max_seconds, progress and rank == 0, callback if rank == 0 else None)
    if world > 1:  # let rank 0 finish writing, then leave the group together (a lone exit can abort gloo)
        dist.barrier()
        dist.destroy_process_group()
    return run


class ModelTask(Task):
    """`fit`'s task for `train`: the configured loss on batches of the training data, a linear warm-up of the
    learning rate, checkpoints and snapshots in `out_dir`, and under torchrun a slice of each global batch."""

    def __init__(self, config: TrainConfig, run: Run, out_dir, rank: int, world: int):
        self.config, self.out_dir, self.rank, self.world = config, out_dir, rank, world
        self.schedule = make_schedule(config.schedule, config.T)
        data, self.labels = load_training_data(config)
        self.data = data.to(run.device)
        self.net = nn.parallel.DistributedDataParallel(run.model) if world > 1 else run.model
        self.null_label = getattr(run.model.config, "num_classes", None)  # read once, not from a folder each step
        self.last_saved = run.step or None  # the step of the checkpoint on disk, for the message if training diverges

    def begin_step(self, run: Run) -> None:
        for group in run.optimizer.param_groups:
            group["lr"] = self.config.lr * min(1.0, (run.step + 1) / max(self.config.warmup, 1))

    def loss(self, run: Run) -> torch.Tensor:
        x0, t, noise, labels = draw_batch(self.data, self.labels, self.config, run.generator, self.null_label, run.step)
        shard = slice(self.rank * len(t) // self.world, (self.rank + 1) * len(t) // self.world)
        device = run.device
        labels = None if labels is None else labels[shard].to(device)
        return batch_loss(self.net, self.config, x0[shard], t[shard].to(device), noise[shard].to(device), labels,
                          self.schedule)

    def reported(self, loss: torch.Tensor) -> float:
        loss = loss.detach()
        if self.world > 1:
            dist.all_reduce(loss)
            loss = loss / self.world
        return float(loss)

    def agree(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.data.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def diverged(self, loss: float, run: Run) -> str:
        kept = f"; {self.out_dir} keeps the checkpoint of step {self.last_saved}" if self.last_saved else "; nothing was saved"
        return (f"the loss became {loss} at step {run.step + 1}, so training stopped{kept}. "
                "Lower --lr, keep --grad-clip on (1 is the default), or check the data")

    def checkpoint(self, run: Run, last: bool) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        if run.step % self.config.save_every == 0 or last:
            save_training(self.out_dir, self.config, run)
            self.last_saved = run.step
        if run.step in self.config.snapshots:
            save_model(Path(self.out_dir) / "snapshots" / f"step_{run.step:06d}.safetensors", run.ema_model,
                       {**self.config.info(), "step": run.step})


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether a training step runs under bfloat16 autocast: "bf16"; or "auto", for the U-Net (where the study
    measured the gain) on hardware with native bf16 (`runtime.bf16_wanted`). Small MLPs and other models stay in float32."""
    return bf16_wanted(config.precision, config.model_arch, device)


def batch_loss(net, config: TrainConfig, x0, t, noise, labels, schedule) -> torch.Tensor:
    """The loss of one batch for the configured architecture."""
    if config.model_arch == "pixelcnn":
        return pixelcnn_loss(net, binarize(x0))
    if config.model_arch == "classifier":
        return classifier_loss(net, x0, labels)
    if config.model_arch == "vae":
        return vae_loss(net, x0, noise)
    return OBJECTIVES[config.objective].loss(net, x0, t, noise, labels, config, schedule)


def save_training(out_dir, config: TrainConfig, run: Run) -> None:
    """Write the EMA model for sampling, then the full training state for resuming."""
    out_dir = Path(out_dir)
    save_model(out_dir / MODEL_FILE, run.ema_model, {**config.info(), "step": run.step})
    metadata = {"format": FORMAT, "kind": "train_state", "step": str(run.step),
                "train_config": json.dumps(dataclasses.asdict(config)), "classes": json.dumps(config.classes())}
    if config.latent is not None:  # the autoencoder whose latents the run learns (`_check_same_autoencoder`)
        metadata["autoencoder_sha256"] = weights_digest(autoencoder_path(config.latent))
    save_tensors(out_dir / STATE_FILE, run_tensors(run), metadata)


def _load_state(path, config: TrainConfig, run: Run) -> None:
    tensors, metadata = read_tensors(path)
    if metadata.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state")
    _check_complete(path, metadata, tensors, ["rng.generator", "history.loss"])
    stored = dataclasses.asdict(TrainConfig.from_stored(json.loads(metadata["train_config"])))
    current = dataclasses.asdict(config)
    changed = {k: (stored.get(k), v) for k, v in current.items() if stored.get(k) != v and k not in RESUMABLE_CHANGES}
    if changed:
        raise CheckpointError(
            f"{path.parent} holds a run with other settings, (stored, now): {changed}. "
            "Resume with the same settings (only --steps, --save-every, --snapshots and --meanflow-share may change) "
            "or choose another --out folder."
        )
    classes = config.classes()
    if "classes" in metadata and json.loads(metadata["classes"]) != (None if classes is None else list(classes)):
        raise CheckpointError(f"{path.parent} holds a run on the classes {json.loads(metadata['classes'])}, but the "
                              f"data now has {list(classes or [])}: restore the class subfolders, or train into a new "
                              "--out folder")
    _check_same_autoencoder(path, metadata, config)
    _check_complete(path, metadata, tensors, optimizer_keys(run.model))
    restore_run(run, tensors, int(metadata["step"]))


def _check_same_autoencoder(path, metadata: dict, config: TrainConfig) -> None:
    """A latent run resumes only on the latents of the autoencoder it started on, not one retrained at its path."""
    pinned = metadata.get("autoencoder_sha256")
    if config.latent is None or pinned is None:
        return
    digest = weights_digest(autoencoder_path(config.latent))
    if digest != pinned:
        raise CheckpointError(f"{path.parent} holds a run on the latents of the autoencoder {config.latent} as it was "
                              f"({pinned}); its weights are now {digest}: restore that autoencoder, or train into a "
                              "new --out folder")


def _check_complete(path, metadata: dict, tensors: dict, needed: list[str]) -> None:
    missing = [k for k in needed if k not in tensors] if "train_config" in metadata else ["train_config"]
    if missing:
        raise CheckpointError(f"{path} is an incomplete training state (missing {missing[:3]}): it cannot be resumed; "
                              "train into a new --out folder")
