"""The recipe study: which training recipe gives the best digits per CPU-minute (the `recipes` and `budget` sections).

    python benchmarks/recipes.py speed                      # steps/s of each network and batch on this CPU
    python benchmarks/recipes.py screen --device cuda --jobs 8
    python benchmarks/recipes.py finalists --names 'flow b16' 'edm b16' --device cuda --jobs 8
    python benchmarks/recipes.py wall --names 'flow b16' --minutes 10 --threads 2   # a real CPU run

A "CPU-minute" is what this 2-core machine does in a minute on 2 threads. `speed` measures the
training steps per second of every network and batch size the candidates use (and the CPU speed
levers: channels_last, bfloat16 autocast, torch.compile). `screen` and `finalists` then train
each candidate for the number of steps that the CPU makes in the given minutes, on any device
(a lent GPU makes the study take minutes instead of hours; the steps and so the result are the
same recipe), and `wall` trains on this CPU against the clock, as a learner's run does. Every run
is scored on 1,000 samples: MNIST-FID against the real floor at n = 1,000, the share recognised
as a digit, and for a conditional model the share that is the requested digit.

Each run writes one JSON file in OUT (default diffusion_lib/course/measured/recipes/), named by
recipe, minutes, seed and condition; a run whose file exists is skipped, so the study resumes
where it stopped. `python benchmarks/run.py --only recipes` renders them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import diffusion_lib as dl  # noqa: E402
from diffusion_lib.course.measured import MEASURED_DIR, machine  # noqa: E402
from diffusion_lib import evaluation  # noqa: E402
from diffusion_lib.evaluation import real_baseline_fid  # noqa: E402
from diffusion_lib.training import PREVIOUS_DEFAULTS  # noqa: E402

OUT = MEASURED_DIR / "recipes"
N_SAMPLES = 1000
B16, B24, B32 = {"base_channels": 16}, {"base_channels": 24}, {"base_channels": 32}
OLD_DEFAULT = dict(PREVIOUS_DEFAULTS, warmup=100, ema_decay=0.999, model=B32)
# Each candidate names what it changes over the defaults the study started from (`PREVIOUS_DEFAULTS`, those
# until 2026-11-26), so a row keeps its meaning now that the winner has become TrainConfig's default.
START = {k: v for k, v in PREVIOUS_DEFAULTS.items() if k != "prediction"}
DDPM = dict(START, batch_size=64, lr=2e-3, warmup=100, ema_decay=0.999, schedule="cosine", model=B16)
EDM = dict(DDPM, objective="edm")
FLOW = dict(DDPM, objective="flow")

# name -> (TrainConfig fields, sampler, sampler steps). DDPM-family models sample with DDIM-50, EDM and
# flow models with Heun-25: 49 network calls, so every row spends about the same sampling time.
CANDIDATES = {
    "old default (base 32, linear, eps, batch 128, lr 1e-3)": (OLD_DEFAULT, "ddim", 50),
    "chapter 4 (base 16, cosine, v, batch 32, lr 5e-3, EMA 0.995)": (
        dict(START, batch_size=32, lr=5e-3, warmup=50, ema_decay=0.995, schedule="cosine", prediction="v", model=B16), "ddim", 50),
    "ddpm b16 cosine eps": (dict(DDPM, prediction="eps"), "ddim", 50),
    "ddpm b16 cosine x0": (dict(DDPM, prediction="x0"), "ddim", 50),
    "ddpm b16 cosine v": (dict(DDPM, prediction="v"), "ddim", 50),
    "ddpm b16 linear v": (dict(DDPM, prediction="v", schedule="linear"), "ddim", 50),
    "ddpm b16 cosine eps min-snr": (dict(DDPM, prediction="eps", loss_weight="min-snr"), "ddim", 50),
    "ddpm b16 cosine v min-snr": (dict(DDPM, prediction="v", loss_weight="min-snr"), "ddim", 50),
    "edm b16": (EDM, "heun", 25),
    "flow b16": (FLOW, "heun", 25),
    "edm b16 lr 4e-3": (dict(EDM, lr=4e-3), "heun", 25),
    "flow b16 lr 4e-3": (dict(FLOW, lr=4e-3), "heun", 25),
    "edm b16 lr 1e-3": (dict(EDM, lr=1e-3), "heun", 25),
    "flow b16 lr 1e-3": (dict(FLOW, lr=1e-3), "heun", 25),
    "edm b16 batch 32": (dict(EDM, batch_size=32), "heun", 25),
    "flow b16 batch 32": (dict(FLOW, batch_size=32), "heun", 25),
    "edm b16 batch 128": (dict(EDM, batch_size=128, lr=3e-3), "heun", 25),
    "flow b16 batch 128": (dict(FLOW, batch_size=128, lr=3e-3), "heun", 25),
    "edm b16 EMA 0.995": (dict(EDM, ema_decay=0.995), "heun", 25),
    "flow b16 EMA 0.995": (dict(FLOW, ema_decay=0.995), "heun", 25),
    "edm b16 EMA 0.9995": (dict(EDM, ema_decay=0.9995), "heun", 25),
    "edm b24": (dict(EDM, model=B24), "heun", 25),
    "flow b24": (dict(FLOW, model=B24), "heun", 25),
    "edm b32": (dict(EDM, model=B32), "heun", 25),
    "edm b16 bf16": (dict(EDM, precision="bf16"), "heun", 25),
    "flow b16 bf16": (dict(FLOW, precision="bf16"), "heun", 25),
    "edm b32 bf16": (dict(EDM, model=B32, precision="bf16"), "heun", 25),
    "edm b16 two blocks": (dict(EDM, model={**B16, "num_res_blocks": 2}), "heun", 25),
    "edm b16 no attention": (dict(EDM, model={**B16, "attention_levels": []}), "heun", 25),
    "edm b32 mults 1,2,2": (dict(EDM, model={**B32, "channel_mults": [1, 2, 2]}), "heun", 25),
}


def network_key(fields: dict) -> str:
    """The speed table's key of a recipe: its network config and batch size."""
    return json.dumps({"model": fields.get("model", {}), "batch_size": fields.get("batch_size", 128),
                       "precision": fields.get("precision", "fp32")}, sort_keys=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


# ------------------------------------------------------------------------------------------ speed


def steps_per_second(fields: dict, lever: str | None = None, repeats: int = 12) -> float:
    """Median training steps per second of a recipe's network and batch on this machine (forward, backward, AdamW)."""
    from diffusion_lib.schedules import make_schedule
    from diffusion_lib.training import batch_loss, draw_batch

    config = dl.TrainConfig(**{**fields, "objective": "flow", "loss_weight": "none", "prediction": None})
    lever = "bf16" if config.precision == "bf16" else lever
    data, labels = dl.load_mnist(train=True)
    torch.manual_seed(0)
    net = dl.build_model("unet", config.model_config())
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    generator, schedule, fn = torch.Generator().manual_seed(0), make_schedule("cosine"), net
    if lever == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    if lever == "compile":
        fn = torch.compile(net)
    times = []
    for _ in range(repeats):
        x0, t, noise, batch_labels = draw_batch(data, labels, config, generator)
        if lever == "channels_last":
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever == "bf16"):
            loss = batch_loss(fn, config, x0, t, noise, batch_labels, schedule)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1 / sorted(times[3:])[len(times[3:]) // 2]


def speed(args) -> None:
    """OUT/speed.json: steps/s of every network+batch the candidates use, and of the CPU levers."""
    torch.set_num_threads(args.threads)
    rates, levers = {}, {}
    for fields, _, _ in CANDIDATES.values():
        key = network_key(fields)
        if key not in rates:
            rates[key] = steps_per_second(fields)
            print(f"{key}: {rates[key]:.2f} steps/s", flush=True)
    for lever in ("channels_last", "bf16", "compile"):
        for fields in (DDPM, dict(DDPM, model=B32)):
            key = network_key(fields)
            try:
                levers[f"{key} {lever}"] = {"plain": rates[key], "with": steps_per_second(fields, lever)}
            except Exception as error:  # torch.compile needs a working C++ toolchain
                levers[f"{key} {lever}"] = {"plain": rates[key], "error": repr(error)[:300]}
            print(lever, key, levers[f"{key} {lever}"], flush=True)
    _write(args.out / "speed.json", {"threads": args.threads, "machine": machine(), "rates": rates, "levers": levers})


def profile(args) -> None:
    """OUT/profile.json: where a step of the default recipe goes: the whole loop's step against the network and
    AdamW alone (the rest is batch drawing, noising, clipping, EMA and bookkeeping), at `--threads`."""
    torch.set_num_threads(args.threads)
    config = dl.TrainConfig(data="mnist", steps=60, save_every=10**9)
    stamps = []
    dl.train(config, progress=False, callback=lambda step, loss, result: stamps.append(time.perf_counter()))
    gaps = sorted(b - a for a, b in zip(stamps[5:], stamps[6:]))  # after warm-up
    loop = gaps[len(gaps) // 2]
    fields = {"batch_size": config.batch_size, "model": config.model_config(),
              "precision": "bf16" if dl.training.uses_bf16(config, torch.device("cpu")) else "fp32"}
    network = 1 / steps_per_second(fields, repeats=30)
    _write(args.out / "profile.json", {"threads": args.threads, "recipe": "TrainConfig() (the default)",
                                       "precision": fields["precision"], "loop_step_seconds": loop,
                                       "network_and_adamw_seconds": network, "outside_share": 1 - network / loop})
    print(f"loop step {1000 * loop:.1f} ms, network + AdamW {1000 * network:.1f} ms "
          f"({100 * (1 - network / loop):.0f}% outside)", flush=True)


def without_bf16(args) -> None:
    """OUT/without_bf16.json: the default network's steps/s in float32 and under bf16 autocast on a CPU that lacks
    bfloat16 instructions, imitated on this one by running with oneDNN and ATen held to AVX2 (this stage re-runs
    itself with ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2)."""
    import os

    avx2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    if os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        env = {**os.environ, **avx2}
        subprocess.run([sys.executable, __file__, "without-bf16", "--threads", str(args.threads), "--out", str(args.out)],
                       env=env, check=True)
        return
    torch.set_num_threads(args.threads)
    config = dl.TrainConfig()
    fields = {"batch_size": config.batch_size, "model": config.model_config()}
    rates = {precision: steps_per_second({**fields, "precision": precision}, repeats=20) for precision in ("fp32", "bf16")}
    _write(args.out / "without_bf16.json", {"threads": args.threads, "network": fields, "steps_per_second": rates,
                                            "capability": torch.backends.cpu.get_cpu_capability(),
                                            "env": avx2})
    print(rates, torch.backends.cpu.get_cpu_capability(), flush=True)


# -------------------------------------------------------------------------------------- one run


def run_one(name: str, minutes: float, seed: int, conditional: bool, device, out: Path, wall: bool) -> dict:
    """Train one candidate for `minutes` CPU-minutes (steps from speed.json, or the clock with `wall`) and score it."""
    fields, sampler, sampler_steps = CANDIDATES[name]
    path = out / f"{slug(name)}_{minutes:g}m_s{seed}{'_cond' if conditional else ''}{'_wall' if wall else ''}.json"
    if path.exists():
        return json.loads(path.read_text())
    rate = json.loads((out / "speed.json").read_text())["rates"][network_key(fields)]
    steps = 10**9 if wall else max(1, round(rate * 60 * minutes))
    config = dl.TrainConfig(data="mnist", steps=steps, seed=seed, save_every=10**9, conditional=conditional, **fields)
    start = time.perf_counter()
    result = dl.train(config, device=device, progress=False, max_seconds=60 * minutes if wall else None)
    train_seconds = time.perf_counter() - start
    row = {"recipe": name, "minutes": minutes, "seed": seed, "conditional": conditional, "wall_clock": wall,
           "steps": result.step, "images_seen": result.step * config.batch_size, "train_seconds": train_seconds,
           "device": str(device), "threads": torch.get_num_threads(), "sampler": f"{sampler}-{sampler_steps}",
           "config": {k: v for k, v in fields.items()}, **score(result.ema_model, config.info(), sampler, sampler_steps)}
    _write(path, row)
    return row


def score(model, info: dict, sampler: str, steps: int, guidance_scales=(1.0, 2.0, 3.0), n: int = N_SAMPLES) -> dict:
    """MNIST-FID (and its floor), share recognised, and for a conditional model accuracy, at each guidance scale."""
    net = dl.pretrained("mnist_classifier")[0].to(next(model.parameters()).device)
    floor = real_baseline_fid(n, net)
    conditional = bool(model.config.num_classes)
    rows = []
    for w in guidance_scales if conditional else (None,):
        labels = torch.arange(n) % 10 if conditional else None
        start = time.perf_counter()
        samples, _ = dl.generate(model, info, n, sampler, steps, guidance=w, labels=labels, seed=0)
        seconds = time.perf_counter() - start
        measured = evaluation.score(samples, labels, net, floor=False)
        row = {"guidance": w, "mnist_fid": measured["mnist_fid"], "recognised": measured["recognised"],
               "sample_seconds": seconds}
        if conditional:
            row["accuracy"] = measured["accuracy"]
        rows.append(row)
    return {"n": n, "real_baseline_fid": floor, "scores": rows}


# ------------------------------------------------------------------------------------------ stages


def _jobs(args) -> list[list[str]]:
    """(name, minutes, seed, conditional) of every run a stage asks for, as argument lists for `one`."""
    if args.stage == "screen":  # every candidate, or those named, in the order named
        return [[name, "10", "0", ""] for name in (args.names or CANDIDATES)]
    if args.stage == "wall":
        return [[name, str(m), "0", cond] for name in args.names for m in args.minutes for cond in ("", "cond")]
    runs = []
    for name in args.names:
        runs += [[name, str(m), "0", ""] for m in args.minutes]
        runs += [[name, "10", str(s), ""] for s in (1, 2)]
        runs += [[name, "10", "0", "cond"]]
    return runs


def launch(args) -> None:
    """Run a stage's jobs, `--jobs` at a time, each in its own process (resumable: finished runs are skipped)."""
    jobs = [["wall", name, minutes, seed, cond] for name, minutes, seed, cond in _jobs(args)] if args.stage == "wall" \
        else [["one", *job] for job in _jobs(args)]
    running = []
    for job in jobs:
        while len(running) >= args.jobs:
            running = [p for p in running if p.poll() is None]
            time.sleep(1)
        command = [sys.executable, __file__, *job, "--device", args.device, "--threads", str(args.threads),
                   "--out", str(args.out)]
        running.append(subprocess.Popen(command))
    for p in running:
        p.wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("speed", "profile", "without-bf16", "screen", "finalists", "one", "wall"))
    parser.add_argument("rest", nargs="*", help="for 'one' and 'wall': NAME MINUTES SEED [cond]")
    parser.add_argument("--names", nargs="*", default=[],
                        help="screen: only these recipes, in this order; finalists, wall: the recipes to study further")
    parser.add_argument("--minutes", nargs="*", type=float, default=[5, 10, 20], help="finalists: budgets")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in CANDIDATES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; the candidates are {list(CANDIDATES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "speed":
        return speed(args)
    if args.stage == "profile":
        return profile(args)
    if args.stage == "without-bf16":
        return without_bf16(args)
    if args.stage in ("one", "wall") and args.rest:
        torch.set_num_threads(args.threads)
        name, minutes, seed, *cond = args.rest
        row = run_one(name, float(minutes), int(seed), bool(cond and cond[0]), dl.pick_device(args.device), args.out,
                      wall=args.stage == "wall")
        print(json.dumps({k: row[k] for k in ("recipe", "minutes", "seed", "steps", "scores")}), flush=True)
        return None
    return launch(args)


def _write(path: Path, record: dict) -> None:
    record = {**record, "date": time.strftime("%Y-%m-%d"), "machine": machine()}
    path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
