"""Every benchmark of the course, from one command: speed, sample quality, quality per CPU-minute, course run time.

    python benchmarks/run.py                     # everything (several hours on a 2-core CPU)
    python benchmarks/run.py --only steps,guidance
    python benchmarks/run.py --quick --out /tmp/bench   # a few minutes, small figures, for trying it out

Each section writes OUT/SECTION.json (figures, the exact command, date, machine, threads), and
benchmarks/RESULTS.md is rendered from all the sections found in OUT (`report.py`: one renderer per section). The default OUT is
diffusion_lib/course/measured/, which the chapters read (chapter 5's steps-vs-quality rows that are
too slow to redo live). Figures, not tests: nothing here fails on a slow machine.

Sections:
  training   images/s of the default U-Net at batch 128; share of a step inside the network; FLOP/s vs peak
  sampling   seconds per image for DDPM-1000 and DDIM-100/50/20/10; share of time in network calls
  steps      MNIST-FID vs sampler and steps (mnist_uncond; chapter 5's table)
  guidance   class accuracy, MNIST-FID and diversity vs guidance scale (mnist_cond; chapter 6)
  pretrained accuracy of mnist_classifier, NLL of mnist_pixelcnn, class accuracy of mnist_cond at w = 3
  budget     MNIST-FID after 5, 10 and 20 minutes of training (quality per CPU-minute)
  recipes    MNIST-FID of short training recipes (model size, schedule, target) at a fixed step count
  study      the recipe study's runs (made by benchmarks/recipes.py, one file each): quality per CPU-minute
  gallery    chapter 4's failures: common training and sampling mistakes, each run and measured
  fashion    Fashion-MNIST: its classifier, and the default recipe trained as long as MNIST's study runs
  memory     peak memory of 'sample' against --n (sampling is batched, so memory stays flat)
  text       chapter 7: held-out vs seen captions (digit accuracy, attribute agreement), inpainting; and 10-step solvers on its model
  fewsteps   chapters 8-9: the complete steps table on one teacher (mnist_uncond) and its distilled students,
             1,000 samples a row; straightness before and after reflow; what distillation costs
  latent     chapter 10: the autoencoder's ceiling, pixel vs latent step costs, quality and caption agreement at
             equal training time (pixel U-Net, latent U-Net, latent MMDiT), image-to-image, negative prompts
  course     wall time of the fast-mode test suite and of each chapter in full mode, with peak memory
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import diffusion_lib as dl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py beside this file, however this file is run
import report  # noqa: E402

from diffusion_lib.course.ch05 import quality_table
from diffusion_lib.course.ch06 import guidance_sweep
from diffusion_lib.course.ch07 import caption_scores, caption_sets, inpainting_rates
from diffusion_lib.course.measured import MEASURED_DIR, encode_images, machine
from diffusion_lib.evaluation import mnist_fid, real_baseline_fid, recognised, score
from diffusion_lib.objectives import objective_of
from diffusion_lib.pipeline import parse_labels
from diffusion_lib.training import PREVIOUS_DEFAULTS

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((REPO / "chapters").glob("[0-9][0-9]_*.ipynb"))
FP32_FLOP_PER_CYCLE = 32  # two 256-bit FMA pipes: 2 x 8 lanes x 2 (AMD Zen 2-4, most Intel cores without AVX-512)


# ---------------------------------------------------------------------------------------------- helpers



def fid_and_recognised(samples, net) -> dict:
    """MNIST-FID and the share recognised of a sample set (`evaluation.score`, without its floor)."""
    measured = score(samples, classifier=net, floor=False)
    return {"mnist_fid": measured["mnist_fid"], "recognised": measured["recognised"]}

def classifier():
    return dl.pretrained("mnist_classifier")[0]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int) -> float:
    """Median seconds per call of fn, after one warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# ---------------------------------------------------------------------------------------------- sections


def training(args, device) -> dict:
    """Images/s of the library's own training loop, and how much of a step the network takes."""
    batch, steps = 128, 3 if args.quick else 20
    config = dl.TrainConfig(data="mnist", steps=steps + 2, seed=0, save_every=10**9,  # the course's 0.8M U-Net, float32
                            **{**PREVIOUS_DEFAULTS, "batch_size": batch})
    stamps = []
    dl.train(config, device=device, progress=False, callback=lambda step, loss, result: stamps.append(time.perf_counter()))
    step_seconds = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))  # steps 3 on: no warm-up

    torch.manual_seed(0)
    model = dl.UNet().to(device).train()
    x = torch.randn(batch, 1, 28, 28, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)

    def network_only():
        model.zero_grad(set_to_none=True)
        model(x, t).pow(2).mean().backward()

    network_seconds = _timed(network_only, device, steps)
    with FlopCounterMode(display=False) as counter:
        network_only()
    flops = counter.get_total_flops()
    info = machine()
    threads = torch.get_num_threads()
    peak = info["mhz"] * 1e6 * threads * FP32_FLOP_PER_CYCLE if info["mhz"] and device.type == "cpu" else None
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": batch,
        "images_per_second": batch / step_seconds,
        "step_seconds": step_seconds,
        "network_seconds": network_seconds,
        "overhead_share": 1 - network_seconds / step_seconds,
        "flop_per_step": flops,
        "achieved_flops": flops / network_seconds,
        "peak_flops": peak,
        "peak_assumption": f"{threads} threads x {info['mhz']:.0f} MHz x {FP32_FLOP_PER_CYCLE} fp32 FLOP/cycle"
                           if peak else None,
    }


def sampling(args, device) -> dict:
    """Seconds per image of each sampler on the default U-Net, and the share spent inside network calls."""
    torch.manual_seed(0)
    model = dl.UNet().to(device).eval()
    schedule = dl.make_schedule("linear", 1000)
    inner = dl.as_eps_fn(model, schedule)
    batch = 16
    rows = []
    settings = [("ddpm", 100), ("ddim", 50)] if args.quick else [("ddpm", 1000), ("ddim", 100), ("ddim", 50),
                                                                  ("ddim", 20), ("ddim", 10)]
    for sampler, steps in settings:
        in_network = [0.0]

        def eps_fn(x, t):
            _sync(device)
            start = time.perf_counter()
            out = inner(x, t)
            _sync(device)
            in_network[0] += time.perf_counter() - start
            return out

        dl.sample_loop(inner, (batch, 1, 28, 28), schedule, "ddim", 2, device=device)  # warm-up
        runs = []  # (total seconds, seconds in the network) per repetition; short runs repeat to >= 10 s
        while not runs or (sum(r[0] for r in runs) < (2 if args.quick else 10) and len(runs) < 50):
            in_network[0] = 0.0
            _sync(device)
            start = time.perf_counter()
            dl.sample_loop(eps_fn, (batch, 1, 28, 28), schedule, sampler, steps, device=device, clip_x0=True)
            _sync(device)
            runs.append((time.perf_counter() - start, in_network[0]))
        total, network = sorted(runs)[len(runs) // 2]  # the median repetition
        rows.append({"sampler": sampler, "steps": steps, "seconds_per_image": total / batch, "repetitions": len(runs),
                     "network_share": network / total, "overhead_share": 1 - network / total})
    return {"batch": batch, "rows": rows}


def steps(args, device) -> dict:
    """Chapter 5's steps-vs-quality table for the committed unconditional model."""
    model, info = dl.pretrained("mnist_uncond", device)
    net = classifier()
    n = 32 if args.quick else 256
    settings = ([("ddim", 10), ("ddim", 5)] if args.quick else
                [("ddpm", 1000), ("ddpm", 250), ("ddpm", 100), ("ddpm", 50),
                 ("ddim", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("ddim", 5),
                 ("dpm-solver++", 20), ("dpm-solver++", 10), ("dpm-solver++", 5)])
    rows = quality_table(model, info, net, settings, n=n, seed=5)
    return {"model": "mnist_uncond", "n": n, "seed": 5, "real_baseline_fid": real_baseline_fid(n, net), "rows": rows}


def guidance(args, device) -> dict:
    """Class accuracy and diversity against the guidance scale, and MNIST-FID, for mnist_cond with DDIM-50."""
    model, info = dl.pretrained("mnist_cond", device)
    net = classifier()
    n, sampler_steps = (40, 10) if args.quick else (200, 50)
    scales = [0.0, 3.0] if args.quick else [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0]
    sweep = guidance_sweep(model, info, net, scales, n=n, steps=sampler_steps, seed=0, fid=True)
    return {"model": "mnist_cond", "n": n, "sampler": f"DDIM-{sampler_steps}", **sweep,
            "real_baseline_fid": real_baseline_fid(n, net)}


def pretrained(args, device) -> dict:
    """The committed models' own figures."""
    images, labels = dl.load_mnist(train=False)
    net, net_info = dl.pretrained("mnist_classifier")
    predicted, _ = dl.classify(net, images)
    pixelcnn, pixel_info = dl.pretrained("mnist_pixelcnn")
    count = 1000 if args.quick else 10000
    with torch.no_grad():
        nll = sum(dl.pixelcnn_loss(pixelcnn, dl.binarize(images[i:i + 1000])).item() for i in range(0, count, 1000))
    nll /= count // 1000
    unet, info = dl.pretrained("mnist_cond", device)
    n = 40 if args.quick else 200
    wanted = parse_labels("all", n, unet.config.num_classes)
    samples, wanted = dl.generate(unet, info, n, "ddim", 50, guidance=3.0, labels=wanted, seed=0)
    got, _ = dl.classify(net, samples)
    uncond, uncond_info = dl.pretrained("mnist_uncond", device)
    uncond_samples, _ = dl.generate(uncond, uncond_info, n, "ddim", 50, seed=0)
    return {
        "classifier_test_accuracy": (predicted == labels).float().mean().item(),
        "pixelcnn_test_nll_nats_per_image": nll * 784, "pixelcnn_test_digits": count,
        "cond_accuracy_w3_ddim50": (got == wanted).float().mean().item(), "cond_samples": n,
        "uncond_recognised_ddim50": recognised(net, uncond_samples)[0],
        "steps": {"mnist_classifier": net_info["step"], "mnist_pixelcnn": pixel_info["step"],
                  "mnist_cond": info["step"], "mnist_uncond": uncond_info["step"]},
    }


RECIPES = {
    "previous default (base 32, linear, eps, batch 128, lr 1e-3)": PREVIOUS_DEFAULTS,  # TrainConfig() until 2026-11-26
    "chapter 4 (base 16, cosine, v, batch 32, lr 5e-3)": dict(PREVIOUS_DEFAULTS, batch_size=32, lr=5e-3, warmup=50, ema_decay=0.995,
                                                              schedule="cosine", prediction="v",
                                                              model={"base_channels": 16}),
}


def budget(args, device) -> dict:
    """MNIST-FID of the EMA model after fixed wall-clock budgets of training (one run per recipe, copies at each mark)."""
    minutes = [0.25, 0.5] if args.quick else [5.0, 10.0, 20.0]
    net = classifier()
    n = 32 if args.quick else 256
    results = {"minutes": minutes, "n": n, "sampler": "DDIM-50", "real_baseline_fid": real_baseline_fid(n, net),
               "recipes": {}}
    for name, recipe in RECIPES.items():
        if args.recipe and args.recipe not in name:
            continue
        config = dl.TrainConfig(data="mnist", steps=10**9, seed=0, save_every=10**9, **recipe)
        marks = {}

        def keep(step, loss, result):
            elapsed = time.perf_counter() - start  # counted from before train(): data loading is part of the budget
            for m in minutes:
                if m not in marks and elapsed >= 60 * m:
                    marks[m] = (step, copy.deepcopy(result.ema_model))

        start = time.perf_counter()
        dl.train(config, device=device, progress=False, callback=keep, max_seconds=60 * minutes[-1] + 30)
        rows = []
        for m in minutes:
            step, model = marks.get(m, (None, None))
            if model is None:
                continue
            samples, _ = dl.generate(model, config.info(), n, "ddim", 50, seed=0)
            rows.append({"minutes": m, "steps": step, "images_seen": step * config.batch_size,
                         **fid_and_recognised(samples, net)})
        results["recipes"][name] = rows
    return results


GALLERY_STEPS = 2000


def gallery(args, device) -> dict:
    """Chapter 4's 'when samples go wrong': common mistakes, each trained or sampled for real and measured.

    Every training run is the default recipe (`TrainConfig()`) for the same number of steps, with one
    thing changed; the sampling mistakes reuse the reference run's model. The data-range mistake swaps
    the training loop's data loader for one that returns MNIST in [0, 1] (an experiment on the loop,
    not a library option). Each entry keeps 16 samples (seed 0, `encode_images`) and scores n samples
    as the recipe study does.
    """
    from unittest import mock

    from recipes import score

    steps, n = (30, 50) if args.quick else (GALLERY_STEPS, 1000)
    unscaled = (dl.load_mnist(train=True)[0] + 1) / 2

    def run(**fields):
        config = dl.TrainConfig(data="mnist", steps=steps, seed=0, save_every=10**9, **fields)
        try:
            return dl.train(config, device=device, progress=False), config
        except dl.training.TrainingDiverged as error:
            return error, config

    reference, config = run()
    with mock.patch.object(dl.training, "load_training_data", lambda c: (unscaled, None)):
        unscaled_run = run()
    raw = copy.deepcopy(reference)
    raw.ema_model = reference.model
    cases = [("the default recipe (the reference)", (reference, config), "heun", 18),
             ("no EMA: the same run's raw weights", (raw, config), "heun", 18),
             ("learning rate 2e-2, ten times the default", run(lr=2e-2), "heun", 18),
             ("data left in [0, 1] instead of [-1, 1]", unscaled_run, "heun", 18),
             ("two sampling steps (Euler) on the reference model", (reference, config), "euler", 2),
             ("DDPM with eps-prediction, DDIM-5", eps_run := run(objective="ddpm", prediction="eps"), "ddim", 5),
             ("the same eps model, DDIM-50", eps_run, "ddim", 50)]
    entries, default = [], dataclasses.asdict(dl.TrainConfig())
    for name, (result, cfg), sampler, sampler_steps in cases:
        changed = {k: v for k, v in dataclasses.asdict(cfg).items()
                   if v != default[k] and k not in ("data", "steps", "save_every")}
        entry = {"case": name, "sampler": f"{sampler}-{sampler_steps}", "changed": changed}
        if isinstance(result, Exception):
            entries.append({**entry, "diverged": str(result)})
            continue
        samples, _ = dl.generate(result.ema_model, cfg.info(), 16, sampler, sampler_steps, seed=0)
        entries.append({**entry, "grid": encode_images(samples), **score(result.ema_model, cfg.info(), sampler, sampler_steps, n=n)})
        print(name, entry["sampler"], flush=True)
    return {"steps": steps, "n": n, "entries": entries}


QUICK_RECIPES = {
    "base16, linear, eps": dict(schedule="linear", prediction="eps", model={"base_channels": 16}),
    "base16, cosine, eps": dict(schedule="cosine", prediction="eps", model={"base_channels": 16}),
    "base16, linear, v": dict(schedule="linear", prediction="v", model={"base_channels": 16}),
    "base16, cosine, x0": dict(schedule="cosine", prediction="x0", model={"base_channels": 16}),
    "base16, cosine, v": dict(schedule="cosine", prediction="v", model={"base_channels": 16}),
    "base32, cosine, v": dict(schedule="cosine", prediction="v", model={"base_channels": 32}),
}


def recipes(args, device) -> dict:
    """Short recipes at equal steps (batch 32): what model size, schedule and target do for a brief run."""
    net = classifier()
    n, train_steps = (32, 30) if args.quick else (256, 800)
    rows = []
    for name, recipe in QUICK_RECIPES.items():
        config = dl.TrainConfig(data="mnist", steps=train_steps, seed=0, save_every=10**9,
                                **{**PREVIOUS_DEFAULTS, "batch_size": 32, "lr": 5e-3, "warmup": 50, "ema_decay": 0.995, **recipe})
        start = time.perf_counter()
        result = dl.train(config, device=device, progress=False)
        seconds = time.perf_counter() - start
        samples, _ = dl.generate(result.ema_model, config.info(), n, "ddim", 20, seed=0)
        rows.append({"recipe": name, "steps": train_steps, "train_seconds": seconds,
                     **fid_and_recognised(samples, net)})
    return {"n": n, "sampler": "DDIM-20", "batch_size": 32, "real_baseline_fid": real_baseline_fid(n, net), "rows": rows}


PEAK_OF = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # KiB, of that one child


def memory(args, device) -> dict:
    """Peak resident memory of `python -m diffusion_lib sample` against --n (the network runs on --batch-size images)."""
    rows = []
    for n in ([20, 200] if args.quick else [200, 2000, 10000]):
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"diffusion_course_memory_{n}.npz"
        command = ["-m", "diffusion_lib", "sample", "--checkpoint", "diffusion_lib/checkpoints/mnist_uncond",
                   "--sampler", "ddim", "--steps", "2", "--n", str(n), "--out", str(out)]
        start = time.perf_counter()
        peak = subprocess.run([sys.executable, "-c", PEAK_OF, sys.executable, *command], cwd=REPO, check=True,
                              capture_output=True, text=True, env={**os.environ, "DIFFUSION_COURSE_DEVICE": "cpu"})
        out.unlink(missing_ok=True)
        rows.append({"n": n, "peak_mib": int(peak.stdout) / 1024, "seconds": time.perf_counter() - start,
                     "command": "python " + " ".join(command).replace(str(out), "OUT.npz")})
    return {"batch_size": 500, "rows": rows}


def study(args, device) -> dict:
    """The recipe study's runs (benchmarks/recipes.py writes one file per run; this collects them, training nothing)."""
    folder = MEASURED_DIR / "recipes"
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
            if p.name not in ("speed.json", "profile.json", "without_bf16.json")]
    extra = {name: json.loads((folder / f"{name}.json").read_text()) if (folder / f"{name}.json").exists() else None
             for name in ("speed", "profile", "without_bf16")}
    return {"runs": runs, **extra}


UNCOND_STOCHASTIC = (("ddpm", 100),)  # mnist_uncond with DDPM's ancestral sampler on a respaced chain
AUTOGUIDED = ((1000, 1.5),)  # (snapshot step of the weak model, autoguidance scale w) for mnist_uncond


def committed(args, device) -> dict:
    """The committed diffusion models on 1,000 samples each (quick: 50) with their default sampler."""
    from recipes import score  # the recipe study's scoring, so the committed models and the study compare

    n = 50 if args.quick else 1000
    models, loaded = {}, {}
    for name, scales in (("mnist_uncond", ()), ("mnist_cond", (0.5, 1.0, 2.0, 3.0))):
        model, info = loaded[name] = dl.pretrained(name, device)
        sampler, sampler_steps = objective_of(info).sampler
        models[name] = {"sampler": f"{sampler}-{sampler_steps}", "step": info["step"],
                        "train_config": info["train_config"],
                        **score(model, info, sampler, sampler_steps, scales or (1.0,), n=n)}
    model, info = loaded["mnist_uncond"]
    for sampler, sampler_steps in UNCOND_STOCHASTIC:  # chapter 5's stochastic sampler, beside the default ODE solver
        models[f"mnist_uncond, {sampler.upper()}-{sampler_steps}"] = {
            "sampler": f"{sampler}-{sampler_steps}", "step": info["step"],
            **score(model, info, sampler, sampler_steps, (1.0,), n=n)}
    snapshots = {int(p.stem.split("_")[1]): p for p in dl.pretrained_snapshots("mnist_uncond") if p.stem.startswith("step_")}
    sampler, sampler_steps = objective_of(info).sampler
    for weak_step, w in AUTOGUIDED:
        weak, weak_info = dl.load_model(snapshots[weak_step], device)
        models[f"mnist_uncond, autoguided by its step-{weak_step:,} snapshot, w = {w:g}"] = {
            "sampler": f"{sampler}-{sampler_steps}", "step": info["step"], "weak_step": weak_step, "autoguidance": w,
            **score(dl.autoguided(model, info, weak, weak_info, w), info, sampler, sampler_steps, (1.0,), n=n)}
    return {"models": models}


FASHION_MODELS = {"fashion_uncond": (None,), "fashion_cond": (1.0, 2.0, 3.0)}  # and the guidance scales scored
FASHION_SAMPLER = ("heun", 25)  # the recipe study's sampler, so the rows compare with its MNIST runs


def fashion(args, device) -> dict:
    """Fashion-MNIST: its committed judge on the test set, and the committed models (the default recipe trained for
    as many steps as the MNIST study runs they are compared with) on 1,000 samples each (quick: 50)."""
    n = 50 if args.quick else 1000
    net, net_info = dl.pretrained("fashion_classifier", device)
    images, labels = dl.load_fashion_mnist(train=False)
    predicted, confidence = dl.classify(net, images)
    digits = dl.classify(classifier(), dl.load_mnist(train=False)[0])[1]  # the digit judge's share, to compare
    models = {}
    for name, scales in FASHION_MODELS.items():
        model, info = dl.pretrained(name, device)
        rows = []
        for w in scales:
            wanted = None if w is None else torch.arange(n) % 10
            samples, _ = dl.generate(model, info, n, *FASHION_SAMPLER, guidance=w, labels=wanted, seed=0)
            got, sure = dl.classify(net, samples)
            rows.append({"guidance": w, "fid": dl.fid(samples, net, "fashion-mnist"),
                         "recognised": float((sure >= 0.9).float().mean()),
                         **({} if w is None else {"accuracy": float((got.cpu() == wanted).float().mean())})})
        models[name] = {"step": info["step"], "train_config": info["train_config"], "scores": rows}
    return {"n": n, "sampler": "-".join(map(str, FASHION_SAMPLER)),
            "real_baseline_fid": real_baseline_fid(n, net, data="fashion-mnist"),
            "classifier_test_accuracy": float((predicted == labels).float().mean()),
            "real_recognised": float((confidence >= 0.9).float().mean()), "classifier_step": net_info["step"],
            "mnist_real_recognised": float((digits >= 0.9).float().mean()),
            "models": models}


def text(args, device) -> dict:
    """Chapter 7's figures on more samples (captions held out vs seen, inpainting), and 10-step solvers on mnist_text."""
    model, info = dl.pretrained("mnist_text", device)
    net = classifier()
    per_caption, n_fid = (2, 50) if args.quick else (50, 1000)
    sets = caption_sets()
    captions = [{"captions": name, "w": w, **caption_scores(model, info, net, sets[name], per_caption, w, steps=10, seed=5)}
                for w in (0.0, 1.0, 3.0) for name in ("held out", "seen")]
    prompts = [f"a {dl.text.DIGIT_WORDS[i % 10]}" for i in range(n_fid)]
    solvers = []
    for sampler, sampler_steps in (("ddim", 10), ("dpm-solver++", 10), ("ddim", 50)):
        samples, _ = dl.generate(model, info, n_fid, sampler, sampler_steps, guidance=1.0, prompts=prompts, seed=8)
        solvers.append({"sampler": sampler, "steps": sampler_steps, "mnist_fid": mnist_fid(samples, net)})
    return {"model": "mnist_text", "per_caption": per_caption, "captions": captions, "solver_samples": n_fid,
            "solvers": solvers, "real_baseline_fid": real_baseline_fid(n_fid, net)}


def inpainting(args, device) -> dict:
    """Chapter 7's inpainting on more digits: mnist_uncond keeps the class, mnist_cond is asked for another digit."""
    net = classifier()
    n = 10 if args.quick else 100
    images, labels = dl.load_mnist(train=False)
    uncond, cond = dl.pretrained("mnist_uncond", device), dl.pretrained("mnist_cond", device)
    rows = [{"resample": r, **row} for r in (1, 3) for row in inpainting_rates(
        images[:n], labels[:n], ("top", "left", "centre"), uncond, cond, net, steps=25, seed=6, resample=r)]
    return {"digits": n, "steps": 25, "rows": rows}


FEWSTEPS_PRECISION_CHECK = [("heun", 18), ("ddim", 50)]  # rows also measured in float32, to show what bf16 changes
# rows also measured from seeds 1 and 2 (the table's rows are seed 0): the targets are judged on the mean of three
FEWSTEPS_SEED_CHECK = [("mnist_uncond", "ddim", 50), ("mnist_reflow", "euler", 4), ("mnist_reflow", "euler", 1),
                       ("mnist_progressive/4", "euler", 4), ("mnist_progressive/1", "euler", 1),
                       ("mnist_consistency", "consistency", 4), ("mnist_consistency", "consistency", 1),
                       ("mnist_meanflow", "meanflow", 1), ("mnist_meanflow", "meanflow", 2),
                       ("mnist_ct", "consistency", 1), ("mnist_ct", "consistency", 2)]


def fewsteps(args, device) -> dict:
    """The complete steps-vs-quality table (chapter 9) on mnist_uncond and its students; rows already measured are
    kept in OUT/fewsteps.cache/ (not committed), keyed by the weights, so an interrupted run resumes. Sampling under
    bf16 autocast (2x faster here)."""
    from diffusion_lib.course.ch08 import mnist_straightness
    from diffusion_lib.course.ch09 import (STUDENT_ROWS, TEACHER, TEACHER_ROWS, TEACHERLESS_ROWS, TRAINING_SECONDS,
                                           load_row_model, score_row)

    n = 50 if args.quick else 1000
    net = classifier()
    partial = args.out / "fewsteps.cache" / "rows.json"  # not a section: rows measured so far, to resume a run
    partial.parent.mkdir(exist_ok=True)
    done = json.loads(partial.read_text()) if partial.exists() else {}
    jobs = [(TEACHER, s, k, "bf16", 0) for s, k in TEACHER_ROWS] + [(m, s, k, "bf16", 0) for m, s, k in STUDENT_ROWS]
    jobs += [(m, s, k, "bf16", 0) for m, s, k in TEACHERLESS_ROWS]
    jobs += [(TEACHER, s, k, "fp32", 0) for s, k in FEWSTEPS_PRECISION_CHECK]
    jobs += [(m, s, k, "bf16", seed) for seed in (1, 2) for m, s, k in FEWSTEPS_SEED_CHECK]
    jobs = jobs[:3] if args.quick else jobs
    models, fingerprints = {}, {}  # each model loaded once; its weights' hash, so a retrained model is measured again
    for name in dict.fromkeys(job[0] for job in jobs):
        try:
            models[name] = load_row_model(name, device)
        except (dl.CheckpointError, FileNotFoundError) as error:  # a student not made yet: its rows are skipped
            print(f"{name}: skipped ({error})", flush=True)
            fingerprints[name] = "missing"
            continue
        weights = models[name][0].state_dict().values()
        fingerprints[name] = hashlib.sha1(b"".join(w.cpu().numpy().tobytes() for w in weights)).hexdigest()[:12]
    keys = [f"{name}|{sampler}|{steps}|{precision}|{n}" + (f"|seed {seed}" if seed else "") + f"|{fingerprints[name]}"
            for name, sampler, steps, precision, seed in jobs]
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][1:3] == ("ddpm", 1000))  # the slowest row last
    for i in order:
        key, (name, sampler, steps, precision, seed) = keys[i], jobs[i]
        if key in done or name not in models:
            continue
        model, info = models[name]
        row, samples = score_row(model, info, sampler, steps, net, n, seed=seed, precision=precision)
        done[key] = {"model": name, **row, "grid": encode_images(samples[:16]),
                     "distilled": {k: v for k, v in info.get("distilled", {}).items() if k != "config"},
                     "distill_config": info.get("distilled", {}).get("config")}
        partial.write_text(json.dumps(done, indent=1) + "\n")
        print(f"{key}: FID {row['mnist_fid']:.1f}, recognised {100 * row['recognised']:.1f}%", flush=True)
    paths = 64 if args.quick else 256
    for name in (TEACHER, "mnist_reflow"):
        if name not in models:  # quick mode measures fewer rows
            models[name] = load_row_model(name, device)
    straight = {label: mnist_straightness(models[name][0], paths, steps=64)
                for label, name in (("teacher", TEACHER), ("reflow", "mnist_reflow"))}
    return {"teacher": TEACHER, "n": n, "real_baseline_fid": real_baseline_fid(n, net),
            "rows": [done[k] for k, job in zip(keys, jobs) if k in done and job[4] == 0],
            "seed_rows": [done[k] for k, job in zip(keys, jobs) if k in done and job[4] != 0],
            "straightness": straight, "straightness_paths": paths, "training_seconds": TRAINING_SECONDS,
            "teacherless": sorted({m for m, _, _ in TEACHERLESS_ROWS})}


def couplings(args, device) -> dict:
    """Chapter 8's minibatch optimal transport on MNIST: the default recipe trained twice from scratch with the same
    steps and seed, once on independent pairs (`flow`) and once with each batch's noise re-paired by exact minibatch
    OT (`flow-ot`); training time, the straightness of the paths and few-step quality on the same noise."""
    from diffusion_lib.course.ch08 import mnist_straightness
    from diffusion_lib.course.ch09 import score_row

    steps, n, paths = (40, 50, 16) if args.quick else (2500, 1000, 256)
    net = classifier()
    rows = []
    for objective in ("flow", "flow-ot"):
        config = dl.TrainConfig(data="mnist", objective=objective, steps=steps, seed=0)
        start = time.perf_counter()
        result = dl.train(config, device=device, progress=False)
        seconds = time.perf_counter() - start
        model, info = result.ema_model.eval(), {**config.info(), "step": result.step}
        row = {"objective": objective, "steps": result.step, "train_seconds": seconds,
               "straightness": mnist_straightness(model, paths, steps=64)["straightness"], "samples": []}
        for sampler, k in (("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("heun", 18)):
            scored, samples = score_row(model, info, sampler, k, net, n, precision="fp32")
            row["samples"].append({**scored, "grid": encode_images(samples[:16])})
            print(f"{objective} {sampler}-{k}: FID {scored['mnist_fid']:.1f}, recognised {100 * scored['recognised']:.1f}%",
                  flush=True)
        rows.append(row)
    return {"n": n, "batch_size": dl.TrainConfig().batch_size, "paths": paths, "real_baseline_fid": real_baseline_fid(n, net),
            "rows": rows}


def latent(args, device) -> dict:
    """Chapter 10's figures: the autoencoder, and the three text models trained for the same wall time."""
    from diffusion_lib.course import ch10

    net = classifier()
    n = 50 if args.quick else 1000
    images, labels = dl.load_mnist(train=False)
    vae = dl.pretrained(ch10.AUTOENCODER)[0]
    figures = {"n": n, "real_baseline_fid": real_baseline_fid(n, net),
               "reconstruction": ch10.reconstruction_scores(vae, images[:n], net),
               "decode_seconds_per_64": ch10.seconds_to_decode(64), "models": {}}
    seeds = (0,) if args.quick else (0, 1, 2)
    per_caption = 2 if args.quick else 50
    held_out = caption_sets()["held out"]
    for label, name in ch10.MODELS.items():
        model, info = dl.pretrained(name, device)
        row = {"name": name, "parameters": sum(p.numel() for p in model.parameters()),
               "seconds_per_call_64": ch10.seconds_per_call(model, 64), "training_steps": info.get("step"),
               "seconds_per_train_step_64": ch10.seconds_per_train_step(model, 64),
               "quality": [ch10.quality(model, info, net, n, w, seed)[0] for w in (1.0, 1.5, 3.0) for seed in seeds],
               "held_out": [{"w": w, **caption_scores(model, info, net, held_out, per_caption, w, steps=10, seed=5)}
                            for w in (1.0, 3.0)]}
        figures["models"][label] = row
        print(label, json.dumps({k: v for k, v in row.items() if k in ("parameters", "seconds_per_call_64")}), flush=True)
    best = dl.pretrained(ch10.MODELS[ch10.PIPELINE], device)
    figures["pipeline_model"] = ch10.PIPELINE
    m = 20 if args.quick else 200
    figures["image_to_image"] = [ch10.image_to_image_scores(*best, net, images[:m], labels[:m], strength)
                                 for strength in (0.2, 0.4, 0.6, 0.8, 1.0)]
    figures["negative"] = [ch10.negative_prompt_scores(*best, net, "a seven", negative, m)
                           for negative in (None, "a thick seven", "a thin seven")]
    return figures


def _run_chapter(notebook: Path, fast: bool) -> dict:
    """Wall seconds and the kernel's peak resident memory (MiB) of one chapter run top to bottom in a fresh kernel."""
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.course.runner", str(notebook)] + (["--fast"] if fast else []),
                            cwd=REPO, capture_output=True, text=True)
    fields = result.stdout.split()
    return {"seconds": float(fields[1]), "peak_mib": float(fields[3]), "ok": result.returncode == 0}


def course(args, device) -> dict:
    """Wall time and peak memory of each chapter in fast and full mode, and the time of the fast-mode nbval suite."""
    rows = []
    chosen = [c for c in CHAPTERS if not args.chapters or c.stem.split("_")[0] in args.chapters.split(",")]
    for notebook in CHAPTERS[:1] if args.quick else chosen:
        row = {"chapter": notebook.stem, "machine": machine()["cpu"]}  # rows of several runs may share the file
        for mode in ("fast", "full"):
            row.update({f"{mode}_{k}": v for k, v in _run_chapter(notebook, fast=mode == "fast").items()})
        rows.append(row)
    suite = {}
    if not args.quick:  # every chapter, also when only some were timed above
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "chapters"], cwd=REPO,
                              env={**os.environ, "DIFFUSION_COURSE_FAST": "1"}, capture_output=True).returncode
        suite = {"nbval_fast_seconds": time.perf_counter() - start, "nbval_fast_ok": code == 0}
    return {"rows": rows, **suite}


SECTIONS = {f.__name__: f for f in (training, sampling, steps, guidance, pretrained, committed, budget, recipes, study,
                                    gallery, fashion, text, inpainting, memory, fewsteps, couplings, latent, course)}


def render(out: Path) -> str:
    """benchmarks/RESULTS.md from the sections' figures in `out` (`report.render`)."""
    return report.render(out, list(SECTIONS))


# ---------------------------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections (default: all)")
    parser.add_argument("--quick", action="store_true", help="small versions of every section (minutes, not hours)")
    parser.add_argument("--out", type=Path, default=MEASURED_DIR, help="folder for SECTION.json (default %(default)s)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md",
                        help="the Markdown report to write (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--recipe", default=None, help="budget section: only recipes whose name contains this")
    parser.add_argument("--chapters", default=None,
                        help="course section: time only these chapters, e.g. 08,09 (the other chapters' rows are kept)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.quick and args.out == MEASURED_DIR:
        parser.error("--quick figures are not the course's measurements: give --out DIR (and --results FILE)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = dl.pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    for name in chosen:
        start = time.perf_counter()
        figures = SECTIONS[name](args, device)
        path = args.out / f"{name}.json"
        if name == "budget":  # recipes may be run one at a time: keep the others' rows, and each one's command
            figures["commands"] = {recipe: command.strip() for recipe in figures["recipes"]}
            if args.recipe and path.exists():
                old = json.loads(path.read_text())["figures"]
                figures["recipes"] = {**old["recipes"], **figures["recipes"]}
                figures["commands"] = {**old.get("commands", {}), **figures["commands"]}
        if name == "course" and args.chapters and path.exists():  # some chapters re-measured: keep the others' rows
            old = json.loads(path.read_text())
            measured_now = {r["chapter"] for r in figures["rows"]}
            figures["rows"] = sorted([r for r in old["figures"]["rows"] if r["chapter"] not in measured_now]
                                     + [{**r, "command": command.strip(), "date": datetime.date.today().isoformat()}
                                        for r in figures["rows"]], key=lambda r: r["chapter"])
            figures = {**old["figures"], **figures, "rows": figures["rows"]}
        record = {"section": name, "command": command.strip(), "date": datetime.date.today().isoformat(),
                  "machine": machine(), "threads": torch.get_num_threads(), "device": str(device), "quick": args.quick,
                  "seconds": time.perf_counter() - start, "figures": figures}
        path.write_text(json.dumps(record, indent=1) + "\n")
        print("\n".join(report.RENDERERS[name](figures)), flush=True)
        print(f"[{name}: {record['seconds']:.0f} s, written to {path}]", flush=True)
    args.results.write_text(render(args.out) + "\n")
    print(f"report: {args.results}")


if __name__ == "__main__":
    main()
