"""Command line: `python -m diffusion_lib {train,distill,sample,evaluate} ...`; `--help` on each lists every option."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, check_sampler_info, load_model
from .classifier import Classifier
from .distill import METHODS, DistillConfig, distill
from .data import DATASETS, is_image_data, load_images
from .forward import PREDICTIONS
from .inpainting import INPAINT_SAMPLERS, MASKS, named_mask
from .models import arch_of
from .objectives import OBJECTIVES
from .outputs import OutputError, check_writable
from .pipeline import (ALL_SAMPLERS, AUTOGUIDE_SCALE, DEFAULT_BATCH, DEFAULT_SAMPLER, ODE_SAMPLERS, autoguided,
                       check_images, default_sampler, generate, image_shape, inpaint_images, parse_labels)
from .samplers import check_eta
from .runtime import pick_device
from .schedules import SCHEDULES
from .text import parse_caption
from .training import (DDPM_PREDICTION, DENOISERS, LOSS_WEIGHTS, MODEL_FILE, PRECISIONS, RECIPE_NETWORKS, TrainConfig,
                       train, uses_bf16)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: what is wrong, then where to look."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(cast, low=None, high=None, what="a number", open_low=False, open_high=False):
    """An argparse type: `cast` (int or float) of the text, finite and within [low, high] (or open ends)."""

    def parse(text):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        too_low = low is not None and (value <= low if open_low else value < low)
        too_high = high is not None and (value >= high if open_high else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_positive_int = _number(int, 1, what="a positive integer")
_non_negative_int = _number(int, 0, what="an integer >= 0")
_non_negative_float = _number(float, 0, what="a number >= 0")
_positive_float = _number(float, 0, what="a positive number", open_low=True)
_fraction = _number(float, 0, 1, what="a number in [0, 1)", open_high=True)
_eta = _number(float, 0, 1, what="a number in [0, 1] (0 deterministic DDIM, 1 DDPM-like)")
_seed = _number(int, 0, 2**63 - 1, what="an integer from 0 to 2^63 - 1")


def _step_list(text):
    try:
        steps = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated step numbers like 100,500,2000, got {text!r}") from None
    if any(v < 1 for v in steps):
        raise argparse.ArgumentTypeError(f"steps must be positive, got {text!r}")
    return steps


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"is not valid JSON ({error.msg} at character {error.pos}); write it as "
                                         "'{\"base_channels\": 24}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"base_channels\": 24}'")
    return value


_json_object.__name__ = "JSON object"


def build_parser() -> Parser:
    parser = Parser(prog="python -m diffusion_lib", description="Train diffusion models and sample from them.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _recipe_options(_train_parser(commands), TrainConfig())
    _distill_parser(commands)
    _sample_parser(commands)
    _evaluate_parser(commands)
    return parser


def _train_parser(commands):
    """`train`: what to train on, where, and for how long."""
    tr = commands.add_parser("train", help="train a denoiser; resumes when --out already holds a run",
                             description="Train a denoiser: by default flow matching (the recipe study's winner), or DDPM "
                                         "(Algorithm 1) with --objective ddpm, or EDM. Resumes when OUT holds a run. "
                                         "Runs unchanged under 'torchrun --nproc_per_node N'.")
    tr.add_argument("--data", required=True,
                    help=f"training data: {', '.join(DATASETS)}, or folder:PATH, a folder of PNG or JPEG images "
                         "(class subfolders make it labelled, for --conditional)")
    tr.add_argument("--image-size", type=_positive_int, default=None,
                    help="resize (shorter side) and centre-crop images to this square size (default: 28 for MNIST and "
                         "Fashion-MNIST, 32 for a folder; a multiple of 4 for the default U-Net)")
    tr.add_argument("--channels", type=int, choices=(1, 3), default=None,
                    help="1 grayscale or 3 RGB (default: 1 for MNIST and Fashion-MNIST, 3 for a folder)")
    tr.add_argument("--steps", required=True, type=_positive_int, help="total optimiser steps (a resumed run continues to this)")
    tr.add_argument("--out", required=True, type=Path, help="folder for model.safetensors and train_state.safetensors")
    tr.add_argument("--max-minutes", type=_positive_float, default=None,
                    help="stop early (with a checkpoint) after this many minutes of training; run again to resume")
    tr.add_argument("--conditional", action="store_true", help="class-conditional U-Net with label dropout (labelled image data)")
    tr.add_argument("--text", action="store_true",
                    help="caption-conditional U-Net (text encoder + cross-attention) on captions made from MNIST (mnist only)")
    return tr


def _recipe_options(tr, defaults: TrainConfig) -> None:
    """`train`: the recipe (optimiser, objective, network) and the run's plumbing."""
    tr.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="global batch size (default %(default)s)")
    tr.add_argument("--lr", type=_positive_float, default=defaults.lr, help="AdamW learning rate (default %(default)s)")
    tr.add_argument("--warmup", type=_non_negative_int, default=defaults.warmup, help="linear learning-rate warm-up steps (default %(default)s)")
    tr.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule, help="noise schedule (default %(default)s)")
    tr.add_argument("--T", type=_positive_int, default=defaults.T, help="number of diffusion steps (default %(default)s)")
    tr.add_argument("--prediction", choices=PREDICTIONS, default=None,
                    help=f"network target with --objective ddpm (default {DDPM_PREDICTION})")
    tr.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective,
                    help="ddpm (discrete steps, --schedule, --prediction), edm (Karras et al. 2022), flow "
                         "(rectified flow with logit-normal times, as Stable Diffusion 3), flow-ot (flow with each batch "
                         "paired by optimal transport), ct (consistency training) or meanflow (average velocities, "
                         "sampled in 1 to 4 steps) (default %(default)s)")
    tr.add_argument("--loss-weight", choices=LOSS_WEIGHTS, default=defaults.loss_weight,
                    help="per-example loss weight with --objective ddpm: none or min-snr (gamma 5) (default %(default)s)")
    tr.add_argument("--meanflow-power", type=float, default=None, metavar="P",
                    help="with --objective meanflow: each example's squared error e weighted by 1 / (e + 0.001)^P "
                         "(default 1 on images, 0 on 2-D points)")
    tr.add_argument("--meanflow-share", type=float, default=None, metavar="F",
                    help="with --objective meanflow: the share of examples with r < s, the rest flow matching's; "
                         "a resumed run may change it (0 first, then more: flow matching before MeanFlow) (default 0.25)")
    tr.add_argument("--ct-grid", type=_positive_int, nargs=2, default=None, metavar=("START", "END"),
                    help="with --objective ct: the grid's N at the start and at the end of training, doubling at equal "
                         "stages of --steps in between (default 4 128)")
    tr.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                    help="bf16: bfloat16 autocast, faster on CPUs with bfloat16 instructions (AVX512-BF16, AMX), "
                         "slower on others; auto: bf16 where it is fast; see benchmarks/RESULTS.md (default %(default)s)")
    tr.add_argument("--ema-decay", type=_fraction, default=defaults.ema_decay, help="EMA decay (default %(default)s)")
    tr.add_argument("--label-dropout", type=_fraction, default=defaults.label_dropout,
                    help="chance of replacing a label by the null class, for guidance (default %(default)s)")
    tr.add_argument("--grad-clip", type=_non_negative_float, default=defaults.grad_clip, help="gradient norm clip, 0 = off (default %(default)s)")
    tr.add_argument("--seed", type=_seed, default=defaults.seed, help="seed of weights, batches and noise (default %(default)s)")
    tr.add_argument("--save-every", type=_positive_int, default=defaults.save_every, help="checkpoint interval in steps (default %(default)s)")
    tr.add_argument("--snapshots", type=_step_list, default=(),
                    help="comma-separated steps at which to keep the EMA model in OUT/snapshots/, e.g. 100,500,2000")
    tr.add_argument("--arch", choices=("unet", "mlp", "dit", "pixelcnn", "classifier", "vae"), default=None,
                    help="model to train (default: unet for images, mlp for 2-D data); dit a diffusion transformer "
                         "(MMDiT with --text); pixelcnn uses mnist; classifier any "
                         "labelled images (it is what 'evaluate' judges samples with); vae the autoencoder of latent diffusion")
    tr.add_argument("--latent", default=None, metavar="AUTOENCODER",
                    help="train on the latents of this autoencoder (a committed name such as mnist_vae, or the folder of "
                         "a 'train --arch vae' run); sampling decodes them back to images")
    tr.add_argument("--model-config", type=_json_object, default=None,
                    help="JSON overriding fields of the network, e.g. '{\"base_channels\": 24}' (the U-Net's default "
                         f"is the recipe's {json.dumps(RECIPE_NETWORKS['unet'])} over UNetConfig)")
    tr.add_argument("--device", default=None, help="cpu, cuda or mps (default: $DIFFUSION_COURSE_DEVICE, else the best available)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--overwrite", action="store_true",
                    help="start afresh even where OUT holds a finished model without a training state (it is replaced)")


def _distill_parser(commands) -> None:
    di = commands.add_parser("distill", help="teach a student to sample a flow model in fewer steps; resumes like train",
                             description="Distil a flow-trained unconditional model (a checkpoint, or a committed name such "
                                         "as mnist_uncond) into a student of the same network that needs fewer steps: "
                                         "reflow (Liu et al. 2022), progressive distillation (Salimans & Ho 2022) or "
                                         "consistency distillation (Song et al. 2023). Resumes when OUT holds a run.")
    ddefaults = DistillConfig("reflow")
    di.add_argument("--method", required=True, choices=METHODS, help="reflow, progressive or consistency")
    di.add_argument("--teacher", default=ddefaults.teacher, help="checkpoint path or committed model (default %(default)s)")
    di.add_argument("--steps", required=True, type=_positive_int,
                    help="optimiser steps (progressive: per halving round); a resumed reflow or consistency run "
                         "continues to this")
    di.add_argument("--out", required=True, type=Path, help="folder for model.safetensors and the distillation state")
    di.add_argument("--teacher-steps", type=_positive_int, default=ddefaults.teacher_steps,
                    help="progressive: the first teacher's Euler steps; consistency: the time grid's N (default %(default)s)")
    di.add_argument("--student-steps", type=_positive_int, default=ddefaults.student_steps,
                    help="progressive: the last student's steps; rounds halve teacher-steps down to it (default %(default)s)")
    di.add_argument("--pairs", type=_positive_int, default=ddefaults.pairs,
                    help="reflow: (noise, image) pairs drawn from the teacher (default %(default)s)")
    di.add_argument("--pair-steps", type=_positive_int, default=ddefaults.pair_steps,
                    help="reflow: Heun steps of the teacher per pair (default %(default)s)")
    di.add_argument("--target-decay", type=_fraction, default=ddefaults.target_decay,
                    help="consistency: EMA decay of the target network (default %(default)s)")
    di.add_argument("--batch-size", type=_positive_int, default=ddefaults.batch_size, help="batch size (default %(default)s)")
    di.add_argument("--lr", type=_positive_float, default=ddefaults.lr, help="AdamW learning rate (default %(default)s)")
    di.add_argument("--ema-decay", type=_fraction, default=ddefaults.ema_decay, help="EMA decay (default %(default)s)")
    di.add_argument("--precision", choices=PRECISIONS, default=ddefaults.precision,
                    help="bf16, fp32, or auto: bf16 where the CPU runs it natively (default %(default)s)")
    di.add_argument("--seed", type=_seed, default=ddefaults.seed, help="seed of pairs, batches and noise (default %(default)s)")
    di.add_argument("--save-every", type=_positive_int, default=ddefaults.save_every, help="checkpoint interval (default %(default)s)")
    di.add_argument("--max-minutes", type=_positive_float, default=None,
                    help="stop early (with a checkpoint) after this many minutes; run again to resume")
    di.add_argument("--device", default=None, help="cpu, cuda or mps (default: $DIFFUSION_COURSE_DEVICE, else the best available)")
    di.add_argument("--quiet", action="store_true", help="no progress bar")
    di.add_argument("--overwrite", action="store_true", help="start afresh where OUT holds a finished model without a state")


def _sample_parser(commands) -> None:
    sa = commands.add_parser("sample", help="sample from a checkpoint into an .npz",
                             description="Sample from a trained checkpoint. Images are saved as float32 (N, C, H, W) "
                                         "(the model's shape; MNIST's is (N, 1, 28, 28)) in [-1, 1] under 'images' and "
                                         "the data's name under 'data' (2-D data: (N, 2) under 'points'); a conditional "
                                         "model's labels as int64 (N,) under 'labels'; a text model's captions "
                                         "under 'prompts' (and, when each names a digit, those digits under 'labels').")
    sa.add_argument("--checkpoint", required=True, type=Path,
                    help="a model.safetensors file, a training --out folder, or a committed model such as mnist_cond")
    sa.add_argument("--sampler", default=None, choices=ALL_SAMPLERS,
                    help="ddpm (ancestral), ddim, dpm-solver++ (second order, good at 10-20 steps), or for edm and "
                         "flow models heun (2 calls a step) and euler, for flow models consistency (one jump to "
                         "the data per step), for meanflow models meanflow (one jump over each step); default: a "
                         "distilled student's own sampler and steps, else the one that "
                         "suits the checkpoint's objective ("
                         + ", ".join(f"{k}: {v[0]}-{v[1]}" for k, v in DEFAULT_SAMPLER.items()) + ")")
    sa.add_argument("--steps", type=_positive_int, default=None,
                    help="sampling steps (1..T for ddpm, ddim, dpm-solver++; default: the sampler's own, "
                         "T for ddpm, 50 for ddim, 20 for dpm-solver++; ddpm with fewer steps is respaced)")
    sa.add_argument("--eta", type=_eta, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like (ddim only)")
    sa.add_argument("--n", required=True, type=_positive_int, help="number of samples")
    sa.add_argument("--guidance", type=_non_negative_float, default=None,
                    help="classifier-free guidance scale w: 0 unconditional, 1 conditional (default), >1 stronger")
    sa.add_argument("--autoguide", type=Path, default=None,
                    help="a weaker checkpoint trained the same way, such as an early snapshot of the same run, to guide "
                         "the model away from (autoguidance, Karras et al. 2024; works without labels)")
    sa.add_argument("--autoguide-scale", type=_non_negative_float, default=None,
                    help=f"with --autoguide: weak + w (model - weak); 1 = the model alone (default {AUTOGUIDE_SCALE})")
    sa.add_argument("--labels", default=None, help="'0,3,7' (repeated to N) or 'all' (cycles through the model's classes); default: random")
    sa.add_argument("--prompt", action="append", default=None,
                    help="for a text model (trained with --text): a caption such as 'a thick seven'; give it several "
                         "times for several captions, used in turn for the N samples")
    sa.add_argument("--negative-prompt", default=None,
                    help="for a text model: a caption to steer away from, in place of the empty one in guidance (so it "
                         "needs --guidance other than 1), e.g. --prompt 'a seven' --negative-prompt 'a thick seven'")
    sa.add_argument("--seed", type=_seed, default=0, help="the same seed gives the same samples (default %(default)s)")
    sa.add_argument("--inpaint", default=None,
                    help="fill in images instead of sampling from noise: an .npz with 'images' (N, C, H, W) of the model's "
                         "shape in [-1, 1] (and optionally 'mask'), or 'test' for the first N test images of the "
                         "model's data ('mnist-test' also works for MNIST models) (ddim only)")
    sa.add_argument("--mask", default="top", choices=MASKS,
                    help="with --inpaint: the region to fill in, unless the .npz has a 'mask' (default %(default)s)")
    sa.add_argument("--resample", type=_positive_int, default=1, help="with --inpaint: RePaint tries per step (default 1)")
    sa.add_argument("--out", required=True, type=Path, help="output file, ending in .npz (an existing one is kept "
                                                             "unless --overwrite)")
    sa.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    sa.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH,
                    help="images per network call: memory stays flat in --n; the samples do not depend on it "
                         "(default %(default)s)")
    sa.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: the network under bfloat16 autocast, about 2x faster on CPUs with AMX (default %(default)s)")
    sa.add_argument("--device", default=None, help="cpu, cuda or mps (default: $DIFFUSION_COURSE_DEVICE, else the best available)")


def _evaluate_parser(commands) -> None:
    ev = commands.add_parser("evaluate", help="measure samples: FID over its real floor, share recognised, class "
                                              "accuracy, histogram, diversity (JSON)",
                             description="Print JSON (evaluation.score): the FID in a classifier's features against the "
                                         "data's test set (MNIST-FID for MNIST) with the real-vs-real baseline at the same "
                                         "sample count and their ratio, the share recognised (the classifier's top "
                                         "probability >= 0.9), the class histogram, the within-class diversity, and, when "
                                         "the file has 'labels', the fraction classified as the requested class.")
    ev.add_argument("samples", type=Path, help="an .npz from 'sample': 'images' (N, C, H, W) in [-1, 1], optionally "
                                               "'labels' (N,) and 'data'")
    ev.add_argument("--classifier", type=Path, default=None,
                    help="classifier checkpoint or committed name such as fashion_classifier (default: the committed one for the samples' data, MNIST or Fashion-MNIST)")


def run_evaluate(args) -> None:
    from .evaluation import score

    if not args.samples.is_file():
        raise FileNotFoundError(f"no samples file at {args.samples}: make one with 'python -m diffusion_lib sample'")
    try:
        data = np.load(args.samples, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("it holds a single array (.npy), not named arrays")
        images, labels = data["images"], data["labels"] if "labels" in data.files else None
        data_name = str(data["data"]) if "data" in data.files else None
    except (KeyError, ValueError, OSError, EOFError) as error:
        reason = "not an .npz file" if "pickle" in str(error) else str(error)
        raise ValueError(f"{args.samples} is not an .npz with an 'images' array ({reason}): make one with "
                         "'python -m diffusion_lib sample'") from None
    if images.dtype.kind != "f":
        raise ValueError(f"{args.samples}: 'images' must hold floats in [-1, 1], got dtype {images.dtype}")
    if labels is not None and labels.dtype.kind not in "iu":
        raise ValueError(f"{args.samples}: 'labels' must hold whole class numbers such as the digits 0-9, got dtype {labels.dtype}")
    classifier = load_model(args.classifier)[0] if args.classifier else None
    if classifier is not None and not isinstance(classifier, Classifier):
        raise ValueError(f"--classifier {args.classifier} holds a {type(classifier).__name__}, not a classifier: "
                         "leave --classifier out to use the committed one for the samples' data")
    # the samples' data, if the file names it, must be what the classifier judges (evaluation.judged_data);
    # a file written before 'data' was saved is read as the given classifier's data, else as MNIST
    result = score(torch.from_numpy(images).float(), None if labels is None else torch.from_numpy(labels).long(),
                   classifier, data_name)
    print(json.dumps(result, indent=2, allow_nan=False))


def run_distill(args) -> None:
    config = DistillConfig(args.method, args.teacher, args.steps, args.batch_size, args.lr, ema_decay=args.ema_decay,
                           seed=args.seed, save_every=args.save_every, precision=args.precision, pairs=args.pairs,
                           pair_steps=args.pair_steps, teacher_steps=args.teacher_steps,
                           student_steps=args.student_steps, target_decay=args.target_decay)
    start = time.perf_counter()
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    result = distill(config, args.out, device=args.device, progress=not args.quiet, max_seconds=max_seconds,
                     overwrite=args.overwrite)
    last = result.losses[-1] if result.losses else float("nan")
    print(f"distilled ({config.method}) to step {result.step} of {config.total_steps()} in "
          f"{time.perf_counter() - start:.1f} s; last loss {last:.4f}; model in {args.out / MODEL_FILE}")


def run_train(args) -> None:
    config = TrainConfig(data=args.data, image_size=args.image_size, channels=args.channels, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                         grad_clip=args.grad_clip, ema_decay=args.ema_decay, schedule=args.schedule, T=args.T,
                         prediction=args.prediction, objective=args.objective, loss_weight=args.loss_weight,
                         meanflow_power=args.meanflow_power, meanflow_share=args.meanflow_share,
                         ct_grid=args.ct_grid, precision=args.precision,
                         conditional=args.conditional, text=args.text, label_dropout=args.label_dropout,
                         seed=args.seed, save_every=args.save_every, snapshots=args.snapshots,
                         arch=args.arch, latent=args.latent)
    if args.model_config is not None:  # over the recipe's network, so '{"attention_levels": []}' keeps its width
        config = dataclasses.replace(config, model={**RECIPE_NETWORKS.get(config.model_arch, {}), **args.model_config})
    start = time.perf_counter()
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    result = train(config, args.out, device=args.device, progress=not args.quiet, max_seconds=max_seconds,
                   overwrite=args.overwrite)
    last = result.losses[-1] if result.losses else float("nan")
    if int(os.environ.get("RANK", "0")):
        return  # under torchrun, rank 0 reports (and writes) for all
    precision = "bf16 autocast" if uses_bf16(config, pick_device(args.device)) else "float32"
    what = config.objective if config.model_arch in DENOISERS else config.model_arch
    print(f"trained to step {result.step} in {time.perf_counter() - start:.1f} s ({what}, {precision}); "
          f"last loss {last:.4f}; model in {args.out / MODEL_FILE}")


def _inpaint_source(source: str, mask_name: str, n: int, info: dict, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, C, H, W), mask) for --inpaint: the first n test images of the model's data, or an .npz of images."""
    if source in ("test", "mnist-test"):
        if source == "mnist-test" and info["data"] != "mnist":
            raise ValueError(f"--inpaint mnist-test is for MNIST models; this one was trained on {info['data']}: "
                             "use --inpaint test for its own test images")
        images = load_images(info["data"], False, shape[0], shape[1])[0]
        if n > len(images):
            raise ValueError(f"--inpaint {source} has {len(images)} test images, fewer than --n {n}: lower --n")
        return images[:n], named_mask(mask_name, images[:n].shape)
    try:
        data = np.load(source)
        images = torch.from_numpy(data["images"])
        mask = torch.from_numpy(data["mask"]).float() if "mask" in data.files else None
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(f"--inpaint {source}: not 'test' or an .npz with an 'images' array: {error}") from error
    if len(images) != n:
        raise ValueError(f"--inpaint {source} holds {len(images)} images but --n is {n}: make them equal")
    check_images(images.float() if images.dtype == torch.float64 else images, shape, f"--inpaint {source}: images")
    images = images.float()
    return images, (named_mask(mask_name, images.shape) if mask is None else mask)


def _check_npz_out(path: Path, overwrite: bool) -> None:
    """Before any work: the output must be a writable path ending in .npz (numpy would add the suffix silently),
    and not a file that exists already, unless `overwrite`."""
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder: give a file name such as {path / 'samples.npz'}")
    if path.suffix != ".npz":
        raise OutputError(f"--out {path} must end in .npz, e.g. {path.with_suffix('.npz')}")
    if path.exists() and not overwrite:
        raise OutputError(f"--out {path} exists already: choose another name, or add --overwrite to replace it")
    check_writable(path.parent)


def run_sample(args) -> None:
    _check_npz_out(args.out, args.overwrite)
    model, info = _sample_model(args)
    labels, prompts = _conditions(args, model, info)
    arrays = {}
    if args.inpaint is not None:
        if "latent" in info:  # before reading test images at the latents' shape, which would fail obscurely
            raise ValueError(f"--inpaint replaces pixels, and {args.checkpoint} makes latents (trained with --latent): "
                             "inpaint with a pixel model, or edit images with pipeline.image_to_image in Python")
        if args.sampler not in INPAINT_SAMPLERS:
            raise ValueError(f"--inpaint works with --sampler {' or '.join(INPAINT_SAMPLERS)} (add --eta 1 for DDPM-like steps)")
        images, mask = _inpaint_source(args.inpaint, args.mask, args.n, info, image_shape(model))
        samples, labels = inpaint_images(model, info, images, mask, args.steps or 50, args.eta, args.guidance, labels,
                                         args.seed, args.resample, prompts, batch_size=args.batch_size)
        arrays.update(originals=images.numpy().astype(np.float32), mask=mask.expand_as(images).numpy().astype(np.float32))
    else:
        samples, labels = generate(model, info, args.n, args.sampler, args.steps, args.eta, args.guidance, labels,
                                   args.seed, prompts=prompts, batch_size=args.batch_size, precision=args.precision,
                                   negative_prompt=args.negative_prompt)
    np.savez(args.out, **arrays, **_sample_arrays(samples, labels, prompts, info))
    print(f"wrote {args.n} samples to {args.out}")


def _sample_model(args):
    """The checkpoint's denoiser (autoguided by --autoguide) and info; args.sampler and args.steps resolved."""
    model, info = load_model(args.checkpoint, pick_device(args.device))
    if arch_of(model) not in DENOISERS:
        hint = ("; sample a PixelCNN with diffusion_lib.pixelcnn_sample in Python" if type(model).__name__ == "PixelCNN"
                else "; give a checkpoint made by 'python -m diffusion_lib train' without --arch (a denoiser)")
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, not a diffusion model{hint}")
    check_sampler_info(info, args.checkpoint)
    if args.autoguide is not None:
        weak, weak_info = load_model(args.autoguide, pick_device(args.device))
        scale = AUTOGUIDE_SCALE if args.autoguide_scale is None else args.autoguide_scale
        model = autoguided(model, info, weak, weak_info, scale)
    elif args.autoguide_scale is not None:
        raise ValueError("--autoguide-scale needs --autoguide WEAK_CHECKPOINT (the model to guide away from)")
    if args.sampler is not None or args.inpaint is not None or args.eta:  # with no --steps, the sampler's default
        args.sampler = args.sampler or "ddim"
    else:  # the checkpoint's own; a distilled student's with its steps
        args.sampler, default_steps = default_sampler(info)
        args.steps = default_steps if args.steps is None and "distilled" in info else args.steps
    check_eta(args.sampler, args.eta)
    if args.steps is not None and args.sampler not in ODE_SAMPLERS and args.steps > info["T"]:
        raise ValueError(f"--steps must be between 1 and T={info['T']}, got {args.steps}")
    return model, info


def _conditions(args, model, info) -> tuple[torch.Tensor | None, list[str] | None]:
    """(labels, prompts) from --labels, --prompt and --negative-prompt, checked against what the model reads."""
    is_text = bool(getattr(model.config, "text_dim", None))
    if (args.prompt is not None or args.negative_prompt is not None) and not is_text:
        raise ValueError(f"--prompt (and --negative-prompt) needs a text model (trained with --text); {args.checkpoint} "
                         "is not one")
    if args.negative_prompt is not None and (args.guidance is None or args.guidance == 1):
        raise ValueError("--negative-prompt acts through guidance: add --guidance, e.g. 3 (at 1 it changes nothing)")
    if is_text and (args.prompt is None or args.labels is not None):
        raise ValueError(f"{args.checkpoint} is a text model: describe the digits with --prompt 'a thick seven' "
                         "(not --labels); --prompt '' asks for no caption")
    labels = None if is_text else parse_labels(args.labels, args.n, model.config.num_classes)
    prompts = [args.prompt[i % len(args.prompt)] for i in range(args.n)] if is_text else None
    if args.guidance is not None and not (model.config.num_classes or is_text):
        raise ValueError("--guidance needs a conditional checkpoint (trained with --conditional or --text)")
    return labels, prompts


def _sample_arrays(samples, labels, prompts, info) -> dict:
    """What the .npz holds (see `sample --help`): images or points, the data's name, labels, prompts."""
    arrays = {}
    if is_image_data(info["data"]):
        arrays.update(images=samples.cpu().numpy().astype(np.float32), data=np.array(info["data"]))
    else:
        arrays["points"] = samples.cpu().numpy().astype(np.float32)
    if prompts is not None:
        arrays["prompts"] = np.array(prompts)
        digits = [parse_caption(p)[0] for p in prompts]
        labels = None if None in digits else torch.tensor(digits)  # 'evaluate' then checks the digits asked for
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    return arrays


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        {"train": run_train, "distill": run_distill, "sample": run_sample, "evaluate": run_evaluate}[args.command](args)
    except (ValueError, CheckpointError, FileNotFoundError) as error:
        print(f"python -m diffusion_lib {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, leave without the interpreter's teardown: the process group is already destroyed and
        # every file written, but gloo's worker threads can still abort the process while Python shuts down
        # ("terminate called without an active exception": about one run in six on this 2-core machine).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
