"""benchmarks/RESULTS.md from the figures the sections of `benchmarks/run.py` wrote: one renderer per section."""

from __future__ import annotations

import json
import re
import shlex
import statistics
from pathlib import Path

from diffusion_lib.course.ch09 import seed_groups, training_seconds
from diffusion_lib.course.timing import (CODE_LINES_PER_MINUTE, EXERCISE_MINUTES, MINUTES_PER_WIDGET, WORDS_PER_MINUTE,
                                         learner_minutes)

REPO = Path(__file__).resolve().parent.parent


def _fmt(value, spec=".1f"):
    return "n/a" if value is None else format(value, spec)


def render(out: Path, sections) -> str:
    """RESULTS.md from every SECTION.json in `out`, in the order of `sections` (names)."""
    found = {name: json.loads((out / f"{name}.json").read_text()) for name in sections if (out / f"{name}.json").exists()}
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/run.py` from the figures in `diffusion_lib/course/measured/`; each section gives "
             "the command, date, machine and thread count it ran with. Targets are those of the course's evaluation "
             "issue, for a 2-core CPU. MNIST-FID: Frechet distance in the committed classifier's features against the "
             "MNIST test set; the real-digit floor is the FID of the same number of real training digits.", ""]
    lines += _render_targets({name: result["figures"] for name, result in found.items()})
    for name, result in found.items():
        lines += [f"## {name}", "", f"`{result['command']}`", "",
                  f"{result['date']}; {result['machine']['cpu']}, {result['machine']['cores']} cores, "
                  f"{result['threads']} torch thread(s), device {result['device']}, torch {result['machine']['torch']}"
                  + ("; **quick mode** (small figures)" if result["quick"] else ""), ""]
        study = found.get("study", {}).get("figures")  # the fashion section compares with the MNIST study's runs
        lines += (_render_fashion(result["figures"], study) if name == "fashion" else RENDERERS[name](result["figures"]))
        lines += [""]
    return "\n".join(lines)


def _render_targets(f: dict) -> list[str]:
    """One table of every target of the evaluation issue that the figures present can judge."""
    rows = []

    def add(what, target, value, met):
        rows.append(f"| {what} | {target} | {value} | {'yes' if met else '**no**'} |")

    if "training" in f:
        t = f["training"]
        add("training throughput, default U-Net, batch 128", "at least 60 images/s", f"{t['images_per_second']:.1f}",
            t["images_per_second"] >= 60)
        add("training step outside the network", "at most 10%", f"{100 * t['overhead_share']:.1f}%", t["overhead_share"] <= 0.10)
    if "sampling" in f:
        worst = max(r["overhead_share"] for r in f["sampling"]["rows"])
        add("sampler overhead (worst sampler)", "at most 5%", f"{100 * worst:.1f}%", worst <= 0.05)
    by = {(r["sampler"], r["steps"]): r for r in f.get("steps", {}).get("rows", [])}
    if ("ddpm", 1000) in by and ("ddim", 50) in by:
        ratio = by[("ddim", 50)]["mnist_fid"] / by[("ddpm", 1000)]["mnist_fid"]
        add("DDIM-50 MNIST-FID / DDPM-1000 MNIST-FID", "at most 1.5", f"{ratio:.2f}", ratio <= 1.5)
    speed = {(r["sampler"], r["steps"]): r for r in f.get("sampling", {}).get("rows", [])}
    if ("ddpm", 1000) in speed and ("ddim", 50) in speed:
        faster = speed[("ddpm", 1000)]["seconds_per_image"] / speed[("ddim", 50)]["seconds_per_image"]
        add("DDPM-1000 time / DDIM-50 time (sampling section)", "at least 19 (20 network calls to 1)", f"{faster:.1f}",
            faster >= 19)
    if "guidance" in f and 3.0 in f["guidance"]["w"]:
        accuracy = f["guidance"]["accuracy"][f["guidance"]["w"].index(3.0)]
        add("class accuracy at guidance 3 (DDIM-50)", "at least 0.97", f"{accuracy:.3f}", accuracy >= 0.97)
    solvers = {(r["sampler"], r["steps"]): r["mnist_fid"] for r in f.get("text", {}).get("solvers", [])}
    if ("ddim", 10) in solvers and ("dpm-solver++", 10) in solvers:
        add("mnist_text at 10 steps: DPM-Solver++ MNIST-FID vs DDIM's", "lower than DDIM's",
            f"{solvers[('dpm-solver++', 10)]:.1f} vs {solvers[('ddim', 10)]:.1f}",
            solvers[("dpm-solver++", 10)] < solvers[("ddim", 10)])
    for r in f.get("study", {}).get("runs", []):
        if r["wall_clock"] and r["minutes"] == 10 and r["recipe"] == "flow b16 bf16":  # the default recipe
            b = next(x for x in r["scores"] if x["guidance"] in (None, 1.0))  # sample's default guidance is 1
            what = f"default recipe, 10 min wall clock, {r['threads']} threads" + (", conditional, w = 1" if r["conditional"] else "")
            add(f"{what}: recognised" if not r["conditional"] else f"{what}: requested digit",
                "at least 90%" if not r["conditional"] else "at least 98%",
                f"{100 * b['accuracy' if r['conditional'] else 'recognised']:.1f}%",
                b["accuracy"] >= 0.98 if r["conditional"] else b["recognised"] >= 0.9)
            add(f"{what}: MNIST-FID / floor", "at most 2", f"{b['mnist_fid'] / r['real_baseline_fid']:.2f}",
                b["mnist_fid"] <= 2 * r["real_baseline_fid"])
    for name, m in f.get("committed", {}).get("models", {}).items():
        floor = m["real_baseline_fid"]
        if name.startswith("mnist_uncond"):
            r = m["scores"][0]
            name = name.replace("mnist_uncond", f"mnist_uncond ({m['sampler']}, n = {m['n']})", 1)
            add(f"{name}: recognised", "at least 97%", f"{100 * r['recognised']:.1f}%", r["recognised"] >= 0.97)
            add(f"{name}: MNIST-FID / floor", "at most 1.3", f"{r['mnist_fid'] / floor:.2f}", r["mnist_fid"] <= 1.3 * floor)
        if name == "mnist_cond":
            best = min(m["scores"], key=lambda r: r["mnist_fid"])
            add(f"mnist_cond ({m['sampler']}, n = {m['n']}): MNIST-FID / floor at its best w ({best['guidance']:g})",
                "at most 1.2", f"{best['mnist_fid'] / floor:.2f}", best["mnist_fid"] <= 1.2 * floor)
            at3 = next((r for r in m["scores"] if r["guidance"] == 3.0), None)
            if at3:
                add("mnist_cond: requested digit at w = 3", "at least 99%", f"{100 * at3['accuracy']:.1f}%",
                    at3["accuracy"] >= 0.99)
    if "latent" in f:
        models = f["latent"]["models"]
        pixel, latent_unet = models["pixel U-Net"], models["latent U-Net"]

        def mean_of(m, w, key):
            return statistics.mean(q[key] for q in m["quality"] if q["w"] == w)

        faster = mean_of(pixel, 1.0, "seconds_per_image") / mean_of(latent_unet, 1.0, "seconds_per_image")
        add("latent U-Net vs pixel U-Net: sampling time per image (Heun-10, w = 1, decoding included)",
            "at least 3x cheaper", f"{faster:.1f}x", faster >= 3)
        best = {label: min(mean_of(m, w, "mnist_fid") for w in {q["w"] for q in m["quality"]}) for label, m in models.items()}
        ratio = best["latent U-Net"] / best["pixel U-Net"]
        add("latent U-Net vs pixel U-Net at equal training time: best MNIST-FID (each at its best w)", "at most 1.25x",
            f"{ratio:.2f}x", ratio <= 1.25)
        if "text" in f:
            mine = next(h for h in latent_unet["held_out"] if h["w"] == 3.0)
            theirs = next(r for r in f["text"]["captions"] if r["captions"] == "held out" and r["w"] == 3.0)
            keys = ("digit_accuracy", "thickness", "slant")
            add("held-out captions at w = 3, latent U-Net vs mnist_text (digit, thickness, slant)", "as high as chapter 7's",
                " / ".join(f"{mine[k]:.3f}" for k in keys) + " vs " + " / ".join(f"{theirs[k]:.3f}" for k in keys),
                all(mine[k] >= theirs[k] for k in keys))
    if "memory" in f and f["memory"]["rows"][-1]["n"] >= 10000:
        peak = f["memory"]["rows"][-1]["peak_mib"]
        add("peak memory of sample --n 10000", "at most 1536 MiB", f"{peak:.0f} MiB", peak <= 1536)
    if "course" in f:
        c = f["course"]
        if "nbval_fast_seconds" in c:
            add("fast-mode nbval suite", "at most 600 s", f"{c['nbval_fast_seconds']:.0f} s", c["nbval_fast_seconds"] <= 600)
        slowest_fast = max(c["rows"], key=lambda r: r["fast_seconds"])
        add("slowest chapter in fast mode", "at most 60 s", f"{slowest_fast['fast_seconds']:.0f} s ({slowest_fast['chapter']})",
            slowest_fast["fast_seconds"] <= 60)
        slowest = max(c["rows"], key=lambda r: r["full_seconds"])
        machines = {r["machine"] for r in c["rows"]}
        add("slowest chapter in full mode", "at most 300 s", f"{slowest['full_seconds']:.0f} s ({slowest['chapter']}, "
            f"on {slowest['machine']}; its committed notebook's own run printed {_committed_seconds(slowest['chapter'])} s"
            + (f"; the chapters were timed on {len(machines)} machines: see 'course'" if len(machines) > 1 else "") + ")",
            slowest["full_seconds"] <= 300)
        totals = [(r["chapter"][:2], _learner_total(r)) for r in c["rows"]]  # each estimate once: it may read the chapter
        over = [(ch, m) for ch, m in totals if m > 100.5]
        add("learner time per chapter, core path (estimate)", "at most 100 min",
            "; ".join(f"chapter {int(ch)}: {m:.0f} min" for ch, m in over) or "every chapter within", not over)
        heaviest = max(c["rows"], key=lambda r: r["full_peak_mib"])
        add("largest chapter peak memory (Binder's limit)", "at most 2048 MiB",
            f"{heaviest['full_peak_mib']:.0f} MiB ({heaviest['chapter']})", heaviest["full_peak_mib"] <= 2048)
    if not rows:
        return []
    return ["## Targets", "", "| figure | target | measured | met |", "| --- | --- | ---: | --- |", *rows, ""]


def _render_training(f):
    lines = [f"- Default U-Net ({f['parameters']:,} parameters), batch {f['batch_size']}: "
             f"**{f['images_per_second']:.1f} images/s** (target: at least 60)",
             f"- Share of a training step outside the network's forward+backward (batch drawing, noising, AdamW, "
             f"gradient clipping, EMA): **{100 * f['overhead_share']:.1f}%** (target: at most 10%); "
             f"step {1000 * f['step_seconds']:.0f} ms, network {1000 * f['network_seconds']:.0f} ms",
             f"- Forward+backward: {f['flop_per_step'] / 1e9:.1f} GFLOP per step; achieved "
             f"{f['achieved_flops'] / 1e9:.1f} GFLOP/s"]
    if f["peak_flops"]:
        lines.append(f"- Theoretical fp32 peak {f['peak_flops'] / 1e9:.0f} GFLOP/s ({f['peak_assumption']}): "
                     f"the network runs at **{100 * f['achieved_flops'] / f['peak_flops']:.0f}%** of it")
    return lines


def _render_sampling(f):
    lines = [f"Batch of {f['batch']}, default U-Net, linear schedule; runs shorter than 10 s are repeated and the median "
             "repetition is reported.", "",
             "| sampler | steps | s per image | ms per step per image | time in network calls | "
             "sampler overhead (target at most 5%) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['sampler'].upper()} | {r['steps']} | {r['seconds_per_image']:.3f} | "
              f"{1000 * r['seconds_per_image'] / r['steps']:.2f} | {100 * r['network_share']:.1f}% "
              f"| {100 * r['overhead_share']:.1f}% |" for r in f["rows"]]
    return lines + ["", "Every step is one network call, so the time ratio between samplers should follow the ratio of "
                        "steps; where the cost per step differs between rows, that is the machine's run-to-run timing "
                        "noise (a shared virtual machine varies by tens of percent)."]


def _render_steps(f):
    rows = f["rows"]
    lines = [f"{f['model']}, {f['n']} samples per row (seed {f['seed']}); real-digit floor {f['real_baseline_fid']:.1f}. "
             "Times here come from the quality runs themselves; for speed, the sampling section (repeated runs) is the "
             "reference.",
             "", "| sampler | steps | s per image | MNIST-FID |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['sampler'].upper()} | {r['steps']} | {r['seconds_per_image']:.3f} | {r['mnist_fid']:.1f} |"
              for r in rows]
    by = {(r["sampler"], r["steps"]): r for r in rows}
    if ("ddim", 10) in by and ("dpm-solver++", 10) in by:
        lines += ["", f"At 10 steps: DPM-Solver++(2M) MNIST-FID **{by[('dpm-solver++', 10)]['mnist_fid']:.1f}** vs "
                      f"DDIM **{by[('ddim', 10)]['mnist_fid']:.1f}**"]
    if ("ddpm", 1000) in by and ("ddim", 50) in by:
        ddpm, ddim = by[("ddpm", 1000)], by[("ddim", 50)]
        lines += ["", f"DDIM-50 vs DDPM-1000: MNIST-FID ratio **{ddim['mnist_fid'] / ddpm['mnist_fid']:.2f}** "
                      f"(target at most 1.5) at **{ddpm['seconds_per_image'] / ddim['seconds_per_image']:.1f}x** less time "
                      "(target at least 19x)"]
    return lines


def _render_guidance(f):
    lines = [f"{f['model']}, {f['sampler']}, {f['n']} samples per scale (labels 0-9 in turn); real-digit floor "
             f"{f['real_baseline_fid']:.1f}.", "",
             "| w | class accuracy | MNIST-FID | diversity within a predicted class |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {w:g} | {a:.3f} | {fid:.1f} | {d:.2f} |"
              for w, a, fid, d in zip(f["w"], f["accuracy"], f["mnist_fid"], f["diversity"])]
    if 3.0 in f["w"]:
        lines += ["", f"Accuracy at w = 3: **{f['accuracy'][f['w'].index(3.0)]:.3f}** (target at least 0.97)"]
    return lines


def _render_pretrained(f):
    return [f"- mnist_classifier: test accuracy **{f['classifier_test_accuracy']:.4f}** (10,000 test digits)",
            f"- mnist_pixelcnn: test NLL **{f['pixelcnn_test_nll_nats_per_image']:.1f}** nats per binarised image "
            f"({f['pixelcnn_test_digits']} test digits)",
            f"- mnist_cond: DDIM-50 at w = 3 gives the requested digit **{f['cond_accuracy_w3_ddim50']:.3f}** of "
            f"{f['cond_samples']} times",
            f"- mnist_uncond: {100 * f['uncond_recognised_ddim50']:.0f}% of {f['cond_samples']} DDIM-50 samples "
            "recognised as a digit (classifier probability at least 0.9)",
            "- training steps: " + ", ".join(f"{k} {v}" for k, v in f["steps"].items())]


def _render_text(f):
    lines = [f"{f['model']}: {f['per_caption']} samples per caption (DPM-Solver++, 10 steps; each digit's held-out "
             "(thickness, slant) pair vs its three seen pairs). Agreement: the measured attribute lies on the asked "
             "side of the class median (chance 0.5).", "",
             "| captions | w | samples | digit accuracy | thickness agreement | slant agreement |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['captions']} | {r['w']:g} | {r['n']} | {r['digit_accuracy']:.3f} | {r['thickness']:.3f} | "
              f"{r['slant']:.3f} |" for r in f["captions"]]
    lines += ["", f"Solvers on mnist_text, {f['solver_samples']} samples, captions 'a zero' to 'a nine', w = 1; "
                  f"real-digit floor {f['real_baseline_fid']:.1f}: "
                  + ", ".join(f"{r['sampler']}-{r['steps']} MNIST-FID **{r['mnist_fid']:.1f}**" for r in f["solvers"])]
    return lines


def _render_inpainting(f):
    lines = [f"First {f['digits']} test digits, DDIM-{f['steps']}: mnist_uncond keeps the class; mnist_cond at w = 3 "
             "is asked for (label + 1) mod 10.", "",
             "| mask | RePaint tries per step | keeps its class | becomes the requested digit |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['mask']} | {r['resample']} | {r['keeps_class']:.3f} | {r['becomes_target']:.3f} |" for r in f["rows"]]
    return lines


def _render_budget(f):
    lines = [f"EMA model after each wall-clock budget, {f['sampler']}, {f['n']} samples; real-digit floor "
             f"{f['real_baseline_fid']:.1f}.", "",
             "| recipe | minutes | steps | images seen | MNIST-FID | recognised |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in f["recipes"].items():
        lines += [f"| {name} | {r['minutes']:g} | {r['steps']} | {r['images_seen']:,} | {r['mnist_fid']:.1f} | "
                  f"{100 * r['recognised']:.0f}% |" for r in rows]
    if f.get("commands"):
        lines += ["", "Each recipe's command:"] + [f"- {name}: `{cmd}`" for name, cmd in f["commands"].items()]
    return lines


def _render_gallery(f):
    lines = [f"Chapter 4's 'when samples go wrong': each training run is `TrainConfig()` for {f['steps']:,} steps "
             f"(seed 0) with one thing changed; {f['n']:,} samples each, MNIST-FID against the real-digit floor at the "
             "same n.", "",
             "| case | sampler | MNIST-FID (floor) | FID / floor | recognised |", "| --- | --- | ---: | ---: | ---: |"]
    for e in f["entries"]:
        if "diverged" in e:
            lines.append(f"| {e['case']} | {e['sampler']} | diverged: {e['diverged'][:80]} | | |")
            continue
        row = e["scores"][0]
        lines.append(f"| {e['case']} | {e['sampler']} | {row['mnist_fid']:.1f} ({e['real_baseline_fid']:.1f}) | "
                     f"{row['mnist_fid'] / e['real_baseline_fid']:.2f} | {100 * row['recognised']:.1f}% |")
    return lines


def _render_recipes(f):
    lines = [f"Batch {f['batch_size']}, {f['sampler']}, {f['n']} samples; real-digit floor {f['real_baseline_fid']:.1f}.",
             "", "| recipe | steps | train s | MNIST-FID | recognised |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['recipe']} | {r['steps']} | {r['train_seconds']:.0f} | {r['mnist_fid']:.1f} | "
              f"{100 * r['recognised']:.0f}% |" for r in f["rows"]]
    return lines


def _render_memory(f):
    lines = [f"Peak resident memory of a whole `sample` process (Python, PyTorch, the model, all samples), DDIM with 2 "
             f"steps (memory does not depend on the step count), the network run on {f['batch_size']} images at a time:",
             "", "| --n | peak MiB | s |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['n']:,} | {r['peak_mib']:.0f} | {r['seconds']:.0f} |" for r in f["rows"]]
    return lines + ["", f"Command: `{f['rows'][-1]['command']}` (each --n)"]


def _run_command(run: dict) -> str:
    stage = "wall" if run["wall_clock"] else "one"
    return (f"python benchmarks/recipes.py {stage} {shlex.quote(run['recipe'])} {run['minutes']:g} {run['seed']}"
            + (" cond" if run["conditional"] else "") + f" --threads {run['threads']}")


def _best(run: dict) -> dict:
    """The score row to report: the only one (unconditional) or the one at guidance 3 (conditional)."""
    return next((r for r in run["scores"] if r["guidance"] in (None, 3.0)), run["scores"][-1])


def _render_study(f):
    lines = []
    speed = f.get("speed")
    if speed:
        lines += [f"Training speed on this CPU ({speed['threads']} threads; forward, backward and AdamW, median of 9 "
                  f"steps; `python benchmarks/recipes.py speed --threads {speed['threads']}`, "
                  f"{speed['date']}, {speed['machine']['cpu']}), which sets how many steps a candidate gets per CPU-minute:", "",
                  "| network and batch | steps/s | steps in 10 min |", "| --- | ---: | ---: |"]
        lines += [f"| `{key}` | {rate:.2f} | {round(rate * 600):,} |" for key, rate in speed["rates"].items()]
        lines += ["", "Speed levers (steps/s without and with):", "", "| network and batch, lever | without | with |",
                  "| --- | ---: | ---: |"]
        lines += [f"| `{key}` | {v['plain']:.2f} | " + (f"{v['with']:.2f} |" if "with" in v else f"failed: {v['error'][:80]} |")
                  for key, v in speed["levers"].items()]
        emulated = f.get("without_bf16")
        if emulated:
            r = emulated["steps_per_second"]
            lines += ["", f"Without bfloat16 instructions (imitated on this CPU by holding oneDNN and ATen to AVX2: "
                          f"`python benchmarks/recipes.py without-bf16 --threads {emulated['threads']}`, "
                          f"{emulated['date']}), the default network `{json.dumps(emulated['network'])}` makes "
                          f"{r['fp32']:.2f} steps/s in float32 and {r['bf16']:.2f} under bf16 autocast; this is why "
                          "`precision=\"auto\"` uses bf16 only where the CPU has those instructions."]
        lines += ["", "The levers were timed in a second pass over the same networks, so a network's 'without' and its row "
                      "in the first table are two measurements of one thing; where they differ, that is this shared "
                      "machine's timing noise (bf16 with base 16 measured 9.11 steps/s in the first table and 6.90 as a "
                      "lever). A lever counts as kept only once a wall-clock run confirms it."]
    runs = sorted(f["runs"], key=lambda r: (r["conditional"], r["wall_clock"], r["minutes"], r["seed"],
                                           _best(r)["mnist_fid"] / r["real_baseline_fid"]))
    if runs:
        lines += ["", "Runs, each scored on 1,000 samples (MNIST-FID against the real-digit floor at n = 1,000; "
                      "recognised: classifier probability at least 0.9; conditional: at guidance 3, labels 0-9 in turn). "
                      "'CPU-min' runs were trained for the steps that 2 threads of this CPU make in that time (speed "
                      "table above), each run on 1 thread with two runs at once; 'wall' runs against the clock. The "
                      "last column is the time per step each run actually took (CPU-min runs: on 1 thread with another "
                      "run beside it; wall runs: on the threads in their command): where the CPU-min runs' times "
                      "disagree with the speed table's ratios, the step counts need a wall-clock check.", "",
                  "| recipe | CPU-min | seed | cond | steps | MNIST-FID (floor) | FID / floor | recognised | requested digit "
                  "| sampler | s per step, as run |",
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
        for r in runs:
            b = _best(r)
            lines.append(f"| {r['recipe']} | {r['minutes']:g}{' wall' if r['wall_clock'] else ''} | {r['seed']} | "
                         f"{'yes' if r['conditional'] else ''} | {r['steps']:,} | {b['mnist_fid']:.1f} "
                         f"({r['real_baseline_fid']:.1f}) | {b['mnist_fid'] / r['real_baseline_fid']:.2f} | "
                         f"{100 * b['recognised']:.1f}% | "
                         + (f"{100 * b['accuracy']:.1f}%" if "accuracy" in b else "")
                         + f" | {r['sampler']} | {r['train_seconds'] / r['steps']:.3f} |")
        lines += ["", "Each run's command: " + "; ".join(sorted({f"`{_run_command(r)}`" for r in runs}))]
        screen = [r for r in runs if r["minutes"] == 10 and not r["conditional"] and not r["wall_clock"]]
        for recipe in sorted({r["recipe"] for r in screen}):
            seeds = [r for r in screen if r["recipe"] == recipe]
            if len(seeds) > 1:
                fids = [_best(r)["mnist_fid"] for r in seeds]
                shares = [100 * _best(r)["recognised"] for r in seeds]
                lines += ["", f"Seed spread of *{recipe}* at 10 CPU-minutes ({len(seeds)} seeds): MNIST-FID mean "
                              f"{statistics.mean(fids):.1f} (from {min(fids):.1f} to {max(fids):.1f}, standard deviation "
                              f"{statistics.stdev(fids):.1f}); recognised {min(shares):.1f}% to {max(shares):.1f}%."]
        budgets = [r for r in runs if r["seed"] == 0 and not r["conditional"] and not r["wall_clock"]]
        finalists = sorted({r["recipe"] for r in budgets if r["minutes"] != 10})
        if finalists:
            lines += ["", "Finalists by budget (`python benchmarks/recipes.py one NAME MINUTES 0 --threads 1`; seed 0):", "",
                      "| recipe | CPU-min | steps | MNIST-FID | FID / floor | recognised |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
            for recipe in finalists:
                for r in sorted((r for r in budgets if r["recipe"] == recipe), key=lambda r: r["minutes"]):
                    b = _best(r)
                    lines.append(f"| {recipe} | {r['minutes']:g} | {r['steps']:,} | {b['mnist_fid']:.1f} | "
                                 f"{b['mnist_fid'] / r['real_baseline_fid']:.2f} | {100 * b['recognised']:.1f}% |")
        if screen:
            best = min(screen, key=lambda r: _best(r)["mnist_fid"])
            lines += ["", f"**Decision.** The best screened recipe, *{best['recipe']}* (MNIST-FID "
                          f"{_best(best)['mnist_fid']:.1f}, {100 * _best(best)['recognised']:.1f}% recognised), became "
                          "`TrainConfig()`'s default on 2026-11-26: objective flow, batch 64, lr 2e-3, warm-up 100, EMA "
                          "0.999, a U-Net of 16 base channels, and `precision=\"auto\"`, which is bf16 autocast for the "
                          "U-Net only where the CPU has bfloat16 instructions (AVX512-BF16 or AMX; this machine has "
                          "them) and float32 elsewhere (see the AVX2 measurement above). Runs stored before "
                          "then keep their meaning (`TrainConfig.from_stored`). The 10-minute targets are not met: see "
                          "the wall-clock rows and 'Where the 10 minutes go' below."]
    prof = f.get("profile")
    if prof:
        lines += ["", f"**Where the 10 minutes go.** One step of the default recipe ({prof['precision']}, "
                      f"{prof['threads']} threads, `python benchmarks/recipes.py profile --threads {prof['threads']}`, "
                      f"{prof['date']}): {1000 * prof['loop_step_seconds']:.0f} ms in the library's loop, of which the "
                      f"network's forward and backward with AdamW take {1000 * prof['network_and_adamw_seconds']:.0f} ms "
                      f"when timed alone; {100 * prof['outside_share']:.0f}% goes to drawing and noising the batch, "
                      "gradient clipping, the EMA and bookkeeping."]
        pair = {r["recipe"]: r for r in f["runs"] if r["minutes"] == 10 and r["seed"] == 0 and not r["conditional"]
                and not r["wall_clock"] and r["recipe"] in ("flow b16", "flow b16 bf16")}
        if len(pair) == 2:
            a, b = pair["flow b16"], pair["flow b16 bf16"]
            lines[-1] += (f" Quality at 10 minutes is still limited by the number of steps: the same flow recipe went "
                          f"from MNIST-FID {_best(a)['mnist_fid']:.1f} in float32 ({a['steps']:,} steps) to "
                          f"{_best(b)['mnist_fid']:.1f} in bf16 ({b['steps']:,} steps, {b['steps'] / a['steps']:.1f} times "
                          "as many), so a faster step is the lever, and a 2-core CPU has no more of it to give.")
    return lines


def _render_committed(f):
    lines = ["Each committed diffusion model with its default sampler (flow: Heun's method, EDM Algorithm 1); "
             "MNIST-FID against the real-digit floor at the same n; recognised: classifier probability at least 0.9; "
             "a conditional model at each guidance scale w, labels 0-9 in turn.", "",
             "| model | training steps | sampler | w | n | MNIST-FID (floor) | FID / floor | recognised | requested digit |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in f["models"].items():
        for r in m["scores"]:
            lines.append(f"| {name} | {m['step']:,} | {m['sampler']} | {_fmt(r['guidance'], 'g')} | {m['n']} | "
                         f"{r['mnist_fid']:.1f} ({m['real_baseline_fid']:.1f}) | {r['mnist_fid'] / m['real_baseline_fid']:.2f} | "
                         f"{100 * r['recognised']:.1f}% | " + (f"{100 * r['accuracy']:.1f}% |" if "accuracy" in r else "|"))
    uncond = {name: m["scores"][0] for name, m in f["models"].items() if name.startswith("mnist_uncond")}
    if len(uncond) > 1:
        best = min(uncond, key=lambda name: uncond[name]["mnist_fid"])
        most = max(uncond, key=lambda name: uncond[name]["recognised"])
        lines += ["", "**Where mnist_uncond's quality goes.** Its targets (97% recognised, MNIST-FID at most 1.3x the "
                      "floor) are missed by every way of sampling it measured here; the lowest FID is "
                      f"*{best}* ({uncond[best]['mnist_fid']:.1f}), the most recognised *{most}* "
                      f"({100 * uncond[most]['recognised']:.1f}%). Three levers moved it: training length (the same run "
                      "scored 36.5, 3.01x the floor, and 89.8% recognised at 7,500 steps, 2026-11-26, before it was resumed "
                      "to the step count above), a stochastic sampler (chapter 5's DDPM with 100 steps against the "
                      "deterministic Heun-18), and autoguidance (Karras et al. 2024) by its own early snapshot. The class-"
                      "conditional model, smaller and shorter-trained, reaches 1.07x at w = 1: most of the gap is probably that an "
                      "unconditional model must also choose the digit, and longer training is the lever still unused."]
    return lines


def _render_fashion(f, study=None):
    lines = [f"The committed `fashion_classifier` classifies {100 * f['classifier_test_accuracy']:.1f}% of the 10,000 "
             f"Fashion-MNIST test images correctly and is at least 90% sure of {100 * f['real_recognised']:.1f}% of them: "
             "that is what real clothes score on the 'recognised' share, a reference rather than a ceiling (guided "
             "samples can exceed it; MNIST's judge is as sure of "
             f"{100 * f['mnist_real_recognised']:.1f}% of real test digits). The default recipe, unchanged, trained with `python -m diffusion_lib train --data fashion-mnist` "
             "for as many steps as the MNIST study run beside it (10 minutes of this 2-core machine), and sampled with the "
             f"study's {f['sampler']}; n = {f['n']}; Fashion-MNIST-FID in the judge's features against the test set, "
             f"real floor {f['real_baseline_fid']:.2f}.", "",
             "| model | steps | w | Fashion-MNIST-FID / floor | recognised | requested class | MNIST, same steps: FID / floor, "
             "recognised |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    mnist = {(r["conditional"], r["steps"]): r for r in (study or {}).get("runs", [])
             if r["recipe"] == "flow b16 bf16" and r["seed"] == 0}
    for name, m in f["models"].items():
        conditional = m["train_config"]["conditional"]
        for r in m["scores"]:
            twin = mnist.get((conditional, m["step"]))
            row = next((s for s in twin["scores"] if s["guidance"] == r["guidance"]), None) if twin else None
            other = (f"{row['mnist_fid'] / twin['real_baseline_fid']:.2f}, {100 * row['recognised']:.1f}%"
                     + (f", {100 * row['accuracy']:.1f}% requested" if "accuracy" in row else "")) if row else "not run"
            lines.append(f"| {name} | {m['step']:,} | {_fmt(r['guidance'], 'g')} | {r['fid'] / f['real_baseline_fid']:.2f} | "
                         f"{100 * r['recognised']:.1f}% | " + (f"{100 * r['accuracy']:.1f}%" if "accuracy" in r else "")
                         + f" | {other} |")
    return lines


def _render_fewsteps(f):
    floor = f["real_baseline_fid"]
    lines = [f"Teacher {f['teacher']} and its distilled students, {f['n']:,} samples a row (seed 0), real-digit floor "
             f"{floor:.1f}; recognised: classifier probability at least 0.9; diversity: mean pixel distance between two "
             "samples of the same (predicted) class. The network runs under bf16 autocast unless the row says fp32; "
             "times are of the quality runs themselves (500 images per call, the threads above).", "",
             "| model | sampler | steps | network calls | s per image | MNIST-FID | FID / floor | recognised | diversity |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in f["rows"]:
        note = "" if r["precision"] == "bf16" else " (fp32)"
        lines.append(f"| {r['model']} | {r['sampler']}{note} | {r['steps']} | {r['calls']} | {r['seconds_per_image']:.4f} | "
                     f"{r['mnist_fid']:.1f} | {r['mnist_fid'] / floor:.2f} | {100 * r['recognised']:.1f}% | "
                     f"{r['diversity']:.2f} |")
    seeds = seed_groups(f)  # (model, sampler, steps) -> the bf16 rows of every seed measured
    teacher = seeds.get((f["teacher"], "ddim", 50))
    if teacher:
        ddim50 = _seed_mean(teacher, "mnist_fid")
        lines += ["", f"Targets against the teacher's DDIM-50 (MNIST-FID {ddim50:.1f}, mean of {len(teacher)} seed(s), "
                      f"{_seed_range(teacher, 'mnist_fid')}): a 4-step model within 1.5x, a 1-step model within 3x, both at "
                      "least 90% recognised. Each figure is the mean over the seeds measured (the range in brackets).", "",
                  "| model | steps | seeds | MNIST-FID | FID / teacher's DDIM-50 | recognised | met |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for (model, sampler, steps), rows in seeds.items():
            if model != f["teacher"] and model not in f.get("teacherless", []) and steps in (1, 4):
                lines.append(_target_row(f"{model} ({sampler})", steps, rows, ddim50, 1.5 if steps == 4 else 3.0, 0.9))
        lines += _teacherless_lines(f, seeds, ddim50)
    costs = {r["model"].split("/")[0]: r["distilled"] for r in f["rows"] if r.get("distilled")}
    if costs:
        lines += ["", "What each distillation cost (wall time of its command on this machine, reflow's pairs included; "
                      "the checkpoint READMEs give the commands):", ""]
        lines += [f"- {name}: {d['method']}, {d['seconds'] / 60:.1f} min" for name, d in costs.items() if "seconds" in d]
    st = f["straightness"]
    lines += ["", f"Straightness S of {f['straightness_paths']} Euler-64 paths from the same noise (0: straight lines at "
                  f"constant speed): teacher {st['teacher']['straightness']:.3f}, after reflow {st['reflow']['straightness']:.3f}."]
    return lines


def _seed_mean(rows, key):
    return statistics.mean(r[key] for r in rows)


def _seed_range(rows, key, scale=1):
    return f"{scale * min(r[key] for r in rows):.1f}-{scale * max(r[key] for r in rows):.1f}" if len(rows) > 1 else ""


def _target_row(label, steps, rows, ddim50, limit, share):
    """One row of a targets table: the mean over seeds (range in brackets) against `limit` x DDIM-50 and `share`."""
    ratio = _seed_mean(rows, "mnist_fid") / ddim50
    met = ratio <= limit and _seed_mean(rows, "recognised") >= share
    return (f"| {label} | {steps} | {len(rows)} | {_seed_mean(rows, 'mnist_fid'):.1f} ({_seed_range(rows, 'mnist_fid')}) | "
            f"{ratio:.2f} (target {limit:g}) | {100 * _seed_mean(rows, 'recognised'):.1f}% "
            f"({_seed_range(rows, 'recognised', 100)}) | {'yes' if met else 'no'} |")


def _teacherless_lines(f, seeds, ddim50):
    """Chapter 11's targets for the models trained without a teacher, and every 1- and 2-step model at the total
    training time that made it (a student: its teacher's training plus its distillation)."""
    teacherless = f.get("teacherless", [])
    if not any(model in teacherless for model, _, _ in seeds):
        return []
    lines = ["", "Targets for a model trained without a teacher (chapter 11): at 1 step within 3x of the teacher's DDIM-50 "
                 "and at least 85% recognised; at 2 steps within 2x and at least 90%.", "",
             "| model | steps | seeds | MNIST-FID | FID / teacher's DDIM-50 | recognised | met |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for (model, sampler, steps), rows in seeds.items():
        if model in teacherless and steps in (1, 2):
            limit, share = (3.0, 0.85) if steps == 1 else (2.0, 0.9)
            lines.append(_target_row(f"{model} ({sampler})", steps, rows, ddim50, limit, share))
    own = f.get("training_seconds", {})
    lines += ["", "The same models by what their training cost: wall time of the commands that made them, one thread on "
                  "the 2-core machines their READMEs name (a student: its teacher's training plus its distillation); "
                  "FID and recognised: means over the seeds measured.", "",
              "| model | steps | training min | seeds | MNIST-FID | recognised |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for (model, sampler, steps), rows in seeds.items():
        seconds = training_seconds(rows[0], own, f["teacher"])
        if steps not in (1, 2) or model == f["teacher"] or seconds is None:
            continue
        lines.append(f"| {model} ({sampler}) | {steps} | {seconds / 60:.0f} | {len(rows)} | "
                     f"{_seed_mean(rows, 'mnist_fid'):.1f} | {100 * _seed_mean(rows, 'recognised'):.1f}% |")
    student = seeds.get(("mnist_progressive/1", "euler", 1))
    if not student:
        return lines
    its_fid, its_share = _seed_mean(student, "mnist_fid"), _seed_mean(student, "recognised")
    its_seconds = training_seconds(student[0], own, f["teacher"])
    for (model, sampler, steps), rows in seeds.items():
        seconds = training_seconds(rows[0], own, f["teacher"])
        if model not in teacherless or steps != 1 or seconds is None or its_seconds is None:
            continue
        fid, share = _seed_mean(rows, "mnist_fid"), _seed_mean(rows, "recognised")
        met = fid < its_fid and share >= its_share and seconds <= its_seconds
        lines += ["", f"Target: better at 1 step than chapter 9's 1-step progressive student at no more training time. "
                      f"{model} ({sampler}): FID {fid:.1f}, {100 * share:.1f}% recognised, {seconds / 60:.0f} min; "
                      f"mnist_progressive/1: {its_fid:.1f}, {100 * its_share:.1f}%, {its_seconds / 60:.0f} min. "
                      f"Met: {'yes' if met else 'no'}."]
    return lines


def _render_latent(f):
    r = f["reconstruction"]
    floor = f["real_baseline_fid"]
    lines = [f"The autoencoder `mnist_vae` on the first {r['n']} test digits: pixel MSE {r['mse']:.4f} (in [-1, 1] units), "
             f"MNIST-FID of its reconstructions **{r['mnist_fid']:.1f}** against a real-digit floor of {floor:.1f} (the "
             f"reference for a latent model on this decoder), {100 * r['recognised']:.1f}% recognised, {100 * r['same_class']:.1f}% "
             f"the same class as the original. Decoding 64 latents: {1000 * f['decode_seconds_per_64']:.1f} ms.", "",
             "Three text models trained on the same captions for the same wall time (each folder's README), sampled with "
             "Heun-10 (19 network calls) for the captions 'a zero' to 'a nine', n = "
             f"{f['n']} per row; FID, shares and times per image are means over seeds (FID's range in brackets). A call "
             "of 64 is timed alone (noisy at this size); the time per image is the whole sampling run, calls of up to "
             "500 images (twice that with guidance) and the decoder included.", "",
             "| model | parameters | ms per training step (64) | training steps | ms per call (64) | w | ms per image | "
             "MNIST-FID | x floor | recognised | requested digit |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, m in f["models"].items():
        for w in sorted({q["w"] for q in m["quality"]}):
            rows = [q for q in m["quality"] if q["w"] == w]
            fids = [q["mnist_fid"] for q in rows]
            mean = statistics.mean(fids)
            lines.append(f"| {label} | {m['parameters']:,} | {1000 * m['seconds_per_train_step_64']:.1f} | "
                         f"{m['training_steps']:,} | {1000 * m['seconds_per_call_64']:.1f} | {w:g} | "
                         f"{1000 * statistics.mean(q['seconds_per_image'] for q in rows):.1f} | "
                         f"{mean:.1f} ({min(fids):.1f}-{max(fids):.1f}) | "
                         f"{mean / floor:.2f} | {100 * statistics.mean(q['recognised'] for q in rows):.1f}% | "
                         f"{100 * statistics.mean(q['requested_digit'] for q in rows):.1f}% |")
    lines += ["", "Held-out captions (each digit's unseen (thickness, slant) pair, DPM-Solver++-10; chapter 7's "
                  "measure, chance 0.5):", "", "| model | w | digit accuracy | thickness agreement | slant agreement |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {label} | {h['w']:g} | {h['digit_accuracy']:.3f} | {h['thickness']:.3f} | {h['slant']:.3f} |"
              for label, m in f["models"].items() for h in m["held_out"]]
    lines += ["", f"Image-to-image (SDEdit) with the {f['pipeline_model']} from real test digits, asked for (label + 1) "
                  "mod 10 at w = 3, Euler-10:", "", "| strength | follows the caption | still the source digit | RMS change |",
              "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['strength']:.1f} | {100 * r['follows']:.1f}% | {100 * r['keeps_source_digit']:.1f}% | "
              f"{r['rms_change']:.3f} |" for r in f["image_to_image"]]
    lines += ["", f"Negative prompts with the {f['pipeline_model']}: 'a seven' at w = 3 (Heun-10), the negative caption "
                  "in the empty caption's place:", "", "| negative prompt | samples | a seven | thicker than the median |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['negative'] or '(none)'} | {r['n']} | {100 * r['digit_accuracy']:.1f}% | {100 * r['above_median']['thickness']:.1f}% |"
              for r in f["negative"]]
    return lines


def _render_course(f):
    lines = ["Each chapter run top to bottom in a fresh kernel (`python -m diffusion_lib.course.runner`, kernel start "
             "included); peak memory is the kernel's largest resident set.", "",
             "| chapter | fast s | full s (target at most 300) | committed notebook's run s | fast peak MiB | "
             "full peak MiB (limit 2048) | learner min, core path (estimate) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['chapter']} | {r['fast_seconds']:.0f} | {r['full_seconds']:.0f} | {_committed_seconds(r['chapter'])} | "
              f"{r['fast_peak_mib']:.0f} | {r['full_peak_mib']:.0f} | {_learner(r)} |"
              + ("" if r["fast_ok"] and r["full_ok"] else " **failed**") for r in f["rows"]]
    lines += ["", "The committed notebook's run: the time the chapter printed at its end in the run that made its committed "
                  "outputs, on whatever machine and load that run had; the target is judged on the benchmark's column."]
    later = [r for r in f["rows"] if "command" in r]
    if later:
        lines += ["", "Measured later, by themselves: " + "; ".join(
            f"{r['chapter']} ({r['date']}, {r['machine']}, `{r['command']}`)" for r in later) + "."]
    if f["rows"]:
        lines += ["", f"Learner minutes: an estimate, not a measurement (`diffusion_lib/course/timing.py`): prose at "
                      f"{WORDS_PER_MINUTE} words/min, code at {CODE_LINES_PER_MINUTE} lines/min, {MINUTES_PER_WIDGET} min per "
                      f"widget, exercises at " + ", ".join(f"{m} min ({kind})" for kind, m in EXERCISE_MINUTES.items())
                      + ", plus the full-mode run; the parts are reading + code + widgets + exercises + running, "
                      "the chapter's core path. Exercises marked *going further* (not needed by later chapters) are "
                      "counted apart, after the semicolon. The estimate is computed from the chapters as they are when "
                      "this file is rendered, with the full-mode time measured above."]
    if "nbval_fast_seconds" in f:
        lines += ["", f"Fast-mode nbval suite (`python -m pytest chapters`): **{f['nbval_fast_seconds']:.0f} s** "
                      f"(target at most 600)" + ("" if f["nbval_fast_ok"] else " **failed**")]
    return lines


def _committed_seconds(chapter: str) -> str:
    """The full-mode time a committed chapter printed in its last cell ("chapter ran in 85.3 s (full mode)")."""
    notebook = REPO / "chapters" / f"{chapter}.ipynb"
    if not notebook.exists():
        return "n/a"
    last = json.loads(notebook.read_text())["cells"][-1]
    text = "".join("".join(o.get("text", "")) for o in last.get("outputs", []))
    found = re.search(r"chapter ran in ([0-9.]+) s \(full mode\)", text)
    return f"{float(found.group(1)):.0f}" if found else "n/a"


def _learner_parts(row) -> dict | None:
    """The learner-minutes estimate of a chapter, computed from the chapter as it is now (its text may have changed
    since the course section ran) and the full-mode time that section measured; None: the chapter is gone."""
    notebook = REPO / "chapters" / f"{row['chapter']}.ipynb"
    if not notebook.exists():
        return None
    return learner_minutes(notebook, row["full_seconds"])


def _learner_total(row) -> float:
    m = _learner_parts(row)
    return 0.0 if m is None else m["total"]


def _learner(row) -> str:
    m = _learner_parts(row)
    if m is None:
        return "n/a"
    further = f"; going further +{m['further']:.0f}" if m["further"] else ""
    return (f"{m['total']:.0f} ({m['reading']:.0f} + {m['code']:.0f} + {m['widgets']:.0f} + {m['exercises']:.0f} + "
            f"{m['running']:.0f}{further})")


def _render_couplings(f):
    floor = f["real_baseline_fid"]
    lines = [f"The default recipe (flow matching, batch {f['batch_size']}) trained from scratch twice with the same steps and "
             "seed: on independent pairs of image and noise (`flow`), and with each batch's noise re-paired by exact "
             "minibatch optimal transport (`flow-ot`, `objectives.ot_pairing`). Straightness S (chapter 8) over "
             f"{f['paths']} Euler-64 paths; quality on {f['n']:,} samples per row (seed 0, float32), real-digit floor "
             f"{floor:.1f}. The runs' wall times are in the JSON, not here: other work shared the machine during them, so "
             "they do not compare the two objectives' speed (chapter 8 times one step of each, alternated).", "",
             "| objective | steps | S | sampler | MNIST-FID | FID / floor | recognised |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in f["rows"]:
        for q in r["samples"]:
            lines.append(f"| {r['objective']} | {r['steps']} | {r['straightness']:.3f} | "
                         f"{q['sampler']}-{q['steps']} | {q['mnist_fid']:.1f} | {q['mnist_fid'] / floor:.2f} | "
                         f"{100 * q['recognised']:.1f}% |")
    return lines


RENDERERS = {"training": _render_training, "sampling": _render_sampling, "steps": _render_steps,
             "guidance": _render_guidance, "pretrained": _render_pretrained, "budget": _render_budget,
             "recipes": _render_recipes, "study": _render_study, "gallery": _render_gallery, "committed": _render_committed, "fashion": _render_fashion, "memory": _render_memory, "text": _render_text,
             "inpainting": _render_inpainting, "fewsteps": _render_fewsteps, "couplings": _render_couplings, "latent": _render_latent,
             "course": _render_course}
