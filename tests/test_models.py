"""The networks: shapes, capacity, the PixelCNN's causality, and clear errors on bad input."""

import pytest
import torch

from conftest import overfit_losses
from diffusion_lib import (MLPConfig, MLPDenoiser, PixelCNN, PixelCNNConfig, TrainConfig, UNet, UNetConfig, binarize,
                           build_model, generate, make_toy, pixelcnn_loss, pixelcnn_sample, train)


def test_default_unet_is_cpu_sized():
    n = sum(p.numel() for p in UNet().parameters())
    assert 300_000 <= n <= 1_000_000, n


@pytest.mark.parametrize("config,size", [
    (UNetConfig(), 28), (UNetConfig(), 32), (UNetConfig(), 16),
    (UNetConfig(image_channels=3, channel_mults=(1, 2), attention_levels=(1,)), 14),
    (UNetConfig(num_classes=10, num_res_blocks=2), 28),
])
def test_unet_keeps_shapes(config, size):
    model = UNet(config)
    x = torch.randn(3, config.image_channels, size, size)
    labels = torch.tensor([0, 5, 10]) if config.num_classes else None
    assert model(x, torch.tensor([0, 500, 999]), labels).shape == x.shape


def test_unet_overfits_one_batch():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,)))
    x, t, target = torch.randn(8, 1, 16, 16), torch.randint(0, 1000, (8,)), torch.randn(8, 1, 16, 16)
    losses = overfit_losses(model, x, t, target, steps=200)
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_unet_rejects_bad_input_with_clear_messages():
    model, cond = UNet(), UNet(UNetConfig(num_classes=10))
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        model(torch.randn(2, 3, 28, 28), t)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(2, 1, 27, 27), t)
    with pytest.raises(ValueError, match="one timestep per image"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(2, 1, 28, 28), t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"values in 0\.\.9"):
        cond(torch.randn(2, 1, 28, 28), t, torch.tensor([1, 11]))


def test_build_model_by_name_and_unknown_fields():
    assert isinstance(build_model("mlp", {"hidden": 32}), MLPDenoiser)
    assert build_model("unet", {"channel_mults": [1, 2]}).config.channel_mults == (1, 2)
    with pytest.raises(ValueError, match="has no field"):
        build_model("unet", {"channels": 3})
    with pytest.raises(ValueError, match="unknown architecture 'vit'"):
        build_model("vit")


def test_mlp_shapes_and_errors():
    model = MLPDenoiser(MLPConfig(hidden=32))
    assert model(torch.randn(5, 2), torch.arange(5)).shape == (5, 2)
    with pytest.raises(ValueError, match=r"expected points of shape \(B, 2\)"):
        model(torch.randn(5, 3), torch.arange(5))


def test_pixelcnn_output_at_pixel_i_depends_only_on_earlier_pixels():
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig(channels=8, num_blocks=3))
    H = W = 8
    for i in (0, 1, 9, 27, 63):
        x = torch.rand(1, 1, H, W).round().requires_grad_(True)
        model(x)[0, 0].flatten()[i].backward()
        grad = x.grad.flatten().abs()
        assert grad[i:].sum() == 0, f"pixel {i} sees pixels at or after itself"
        assert i == 0 or grad[:i].sum() > 0, f"pixel {i} sees none of the pixels before it"


def test_pixelcnn_logits_of_a_row_ignore_the_rows_below():
    """What lets the sampler crop the image below the current row."""
    model = PixelCNN(PixelCNNConfig(channels=8, num_blocks=2))
    x = torch.rand(2, 1, 10, 10).round()
    with torch.no_grad():
        full = model(x)
        for row in (0, 4, 9):
            assert torch.allclose(model(x[:, :, :row + 1])[:, :, row], full[:, :, row], atol=1e-6)


def test_pixelcnn_samples_one_call_per_pixel_and_learns():
    torch.manual_seed(0)
    model = PixelCNN(PixelCNNConfig(channels=8, num_blocks=1))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    images, snapshots = pixelcnn_sample(model, 2, 6, 5, snapshot_every=10)
    assert len(calls) == 30 and images.shape == (2, 1, 6, 5) and len(snapshots) == 3
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    data = binarize(torch.where(torch.arange(36).reshape(1, 1, 6, 6) % 2 == 0, 1.0, -1.0).expand(16, 1, 6, 6))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = pixelcnn_loss(model, data).item()
    for _ in range(300):
        loss = pixelcnn_loss(model, data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first  # the stripes are predictable from the pixels before


def test_mlp_learns_two_moons_in_seconds():
    """Samples of a briefly trained MLP must match the data's 2-D histogram far better than noise does."""
    config = TrainConfig(data="moons", steps=3000, batch_size=256, lr=3e-3, T=100, ema_decay=0.99, seed=0,
                         objective="ddpm", schedule="linear", prediction="eps", precision="fp32")
    result = train(config, progress=False)
    info = {"schedule": "linear", "T": 100, "prediction": "eps", "data": "moons"}
    samples, _ = generate(result.ema_model, info, 4000, "ddpm", seed=1)
    data = make_toy("moons", 4000, torch.Generator().manual_seed(2))

    def histogram(points):
        return torch.histogramdd(points.float(), bins=[12, 12], range=[-3.0, 3.0, -3.0, 3.0]).hist / len(points)

    distance = (histogram(samples) - histogram(data)).abs().sum().item() / 2  # total variation
    noise_distance = (histogram(torch.randn(4000, 2)) - histogram(data)).abs().sum().item() / 2
    reference = (histogram(make_toy("moons", 4000, torch.Generator().manual_seed(3))) - histogram(data)).abs().sum().item() / 2
    assert distance < 0.15 and distance < noise_distance / 3, (distance, noise_distance, reference)
