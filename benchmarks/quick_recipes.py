"""Quality per CPU-minute of short training recipes: what a learner's few minutes of training buy.

    python benchmarks/quick_recipes.py [--threads 1] [--samples 256]

Trains each recipe from scratch on MNIST (fixed seed), samples with DDIM-20, and prints the
training wall time, MNIST-FID (committed classifier's features, against the MNIST test set) and
the fraction of samples the classifier recognises with probability >= 0.9. Figures, not tests:
one seed and a few hundred samples, so treat differences of a few percent as noise.
"""

from __future__ import annotations

import argparse
import time

import torch

import diffusion_lib as dl
from diffusion_lib.evaluation import mnist_fid

COMMON = dict(data="mnist", batch_size=32, lr=5e-3, warmup=50, ema_decay=0.995, seed=0)
RECIPES = {
    "base16, linear, eps, 800 steps": dict(steps=800, schedule="linear", prediction="eps", model={"base_channels": 16}),
    "base16, cosine, eps, 800 steps": dict(steps=800, schedule="cosine", prediction="eps", model={"base_channels": 16}),
    "base16, linear, v, 800 steps": dict(steps=800, schedule="linear", prediction="v", model={"base_channels": 16}),
    "base16, cosine, x0, 800 steps": dict(steps=800, schedule="cosine", prediction="x0", model={"base_channels": 16}),
    "base16, cosine, v, 800 steps": dict(steps=800, schedule="cosine", prediction="v", model={"base_channels": 16}),
    "base16, cosine, v, 1600 steps": dict(steps=1600, schedule="cosine", prediction="v", model={"base_channels": 16}),
    "base32, cosine, v, 800 steps": dict(steps=800, schedule="cosine", prediction="v", model={"base_channels": 32}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--only", default=None, help="run only recipes whose name contains this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classifier, _ = dl.pretrained("mnist_classifier")
    baseline = dl.evaluation.real_baseline_fid(args.samples, classifier)
    print(f"{args.threads} thread(s); {args.samples} DDIM-20 samples per recipe; real-digit MNIST-FID floor {baseline:.1f}")
    for name, recipe in RECIPES.items():
        if args.only and args.only not in name:
            continue
        config = dl.TrainConfig(**COMMON, **recipe)
        start = time.perf_counter()
        result = dl.train(config, progress=False)
        seconds = time.perf_counter() - start
        samples, _ = dl.generate(result.ema_model, config.info(), args.samples, "ddim", 20, seed=0)
        _, confidence = dl.classify(classifier, samples)
        print(f"{name:<34} train {seconds:5.0f} s   MNIST-FID {mnist_fid(samples, classifier):6.1f}   "
              f"recognised {(confidence >= 0.9).float().mean().item():.2f}", flush=True)


if __name__ == "__main__":
    main()
