"""Measured quality of the committed models in diffusion_lib/checkpoints/.

    python benchmarks/pretrained.py [--n 200]

Prints the classifier's MNIST test accuracy, the PixelCNN's test negative log-likelihood,
and, for the class-conditional U-Net, how often DDIM-50 samples at guidance 3 are classified
as the requested digit. Figures, not tests.
"""

from __future__ import annotations

import argparse

import torch

import diffusion_lib as dl
from diffusion_lib.pipeline import parse_labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="samples drawn from the U-Net (default %(default)s)")
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()
    images, labels = dl.load_mnist(train=False)
    classifier, info = dl.pretrained("mnist_classifier")
    predicted, _ = dl.classify(classifier, images)
    print(f"classifier: test accuracy {(predicted == labels).float().mean().item():.4f} "
          f"(10,000 MNIST test digits; trained {info['step']} steps)")

    pixelcnn, info = dl.pretrained("mnist_pixelcnn")
    with torch.no_grad():
        nll = sum(dl.pixelcnn_loss(pixelcnn, dl.binarize(images[i:i + 1000])).item() for i in range(0, 10000, 1000)) / 10
    print(f"PixelCNN: test NLL {nll:.4f} nats per pixel = {nll * 784:.1f} nats per binarised image "
          f"(trained {info['step']} steps)")

    unet, info = dl.pretrained("mnist_cond")
    wanted = parse_labels("all", args.n, unet.config.num_classes)
    samples, wanted = dl.generate(unet, info, args.n, "ddim", 50, guidance=args.guidance, labels=wanted, seed=0)
    predicted, _ = dl.classify(classifier, samples)
    print(f"conditional U-Net: DDIM-50 at guidance {args.guidance}: {(predicted == wanted).float().mean().item():.3f} "
          f"of {args.n} samples classified as the requested digit (trained {info['step']} steps)")


if __name__ == "__main__":
    main()
