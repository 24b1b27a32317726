"""Latent diffusion: the autoencoder's KL and scale, the diffusion transformer (DiT / MMDiT), negative prompts,
image-to-image (SDEdit), and a latent run end to end on a small folder of images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import diffusion_lib as dl
from conftest import overfit_losses
from diffusion_lib import latent
from diffusion_lib.__main__ import main
from diffusion_lib.autoencoder import (VAE, VAEConfig, decode_latents, encode_images, kl_to_standard_normal,
                                       latent_scale, vae_loss)
from diffusion_lib.checkpoint import load_model, save_model
from diffusion_lib.continuous import flow_velocity
from diffusion_lib.dit import DiT, DiTConfig
from diffusion_lib.pipeline import generate, image_to_image, inpaint_images
from diffusion_lib.text import tokenize

REPO = Path(__file__).resolve().parent.parent
FLOW_INFO = {"objective": "flow", "prediction": "flow", "schedule": "cosine", "T": 1000, "data": "mnist"}
TINY_DIT = {"width": 16, "depth": 1, "heads": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: a second thread only adds synchronisation, which on a busy CPU costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args):
    env = {**os.environ, "DIFFUSION_COURSE_DEVICE": "cpu", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffusion_lib", *map(str, args)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def perturbed(model, std=0.2, seed=0):
    """`model` with every weight redrawn from N(0, std^2): the zero-initialised adaLN layers then act."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def make_gray_folder(root: Path, n=16) -> Path:
    """`n` gray 28x28 drawings (circles and squares of several sizes), no class subfolders."""
    root.mkdir(parents=True)
    for i in range(n):
        image = Image.new("L", (28, 28), "black")
        r = 4 + i % 8
        box = (14 - r, 14 - r, 14 + r, 14 + r)
        (ImageDraw.Draw(image).ellipse if i % 2 else ImageDraw.Draw(image).rectangle)(box, fill="white")
        image.save(root / f"{i:02d}.png")
    return root


# ------------------------------------------------------------------------------------------- the autoencoder


def test_kl_is_the_closed_form_of_the_kl_divergence_to_a_standard_normal():
    mu, logvar = torch.randn(3, 4, 8, 8), 2 * torch.randn(3, 4, 8, 8)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).mean()
    assert torch.allclose(kl_to_standard_normal(mu, logvar), expected, rtol=1e-5)
    assert kl_to_standard_normal(torch.zeros(5), torch.zeros(5)) == 0  # q = p


def test_vae_shapes_mean_latent_and_loss():
    vae = VAE(VAEConfig(base_channels=8)).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, 4, 8, 8) and vae.config.latent_size == 8 and vae.config.padded_size == 32
    assert vae.decode(mu).shape == (3, 1, 28, 28)
    recon, mu2, logvar2 = vae(x)  # noise=None: z = mu exactly
    assert torch.equal(mu2, mu) and torch.equal(recon, vae.decode(mu))
    noise = torch.randn_like(mu)
    recon_noisy, _, _ = vae(x, noise=noise)  # the reparameterisation z = mu + sigma eps
    assert torch.allclose(recon_noisy, vae.decode(mu + (0.5 * logvar).exp() * noise), atol=1e-6)
    expected = ((recon_noisy - x) ** 2).mean() + 0.01 * kl_to_standard_normal(mu, logvar)
    assert torch.allclose(vae_loss(vae, x, noise, kl_weight=0.01), expected, atol=1e-6)
    # batched helpers: the batch size does not change the result; decoding clips to [-1, 1]
    assert torch.allclose(encode_images(vae, x, batch_size=2), mu, atol=1e-6)
    assert torch.allclose(decode_latents(vae, mu, batch_size=1), vae.decode(mu).clamp(-1, 1), atol=1e-5)
    rgb = VAE(VAEConfig(image_channels=3, image_size=20, base_channels=8)).eval()  # 20 -> padded 24 -> 6x6
    assert rgb.encode(torch.zeros(1, 3, 20, 20))[0].shape == (1, 4, 6, 6)
    assert rgb.decode(torch.zeros(2, 4, 6, 6)).shape == (2, 3, 20, 20)


def test_vae_rejects_wrong_shapes_with_the_shape_it_takes():
    vae = VAE(VAEConfig(base_channels=8))
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        vae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 4, 8, 8\), got \(2, 1, 28, 28\)"):
        vae.decode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="1 or 3 image channels"):
        VAEConfig(image_channels=2)


def test_latent_scale_gives_unit_variance():
    assert latent_scale(3 * torch.randn(10000)) == pytest.approx(1 / 3, rel=0.03)
    mu = 0.2 + 5 * torch.rand(50, 4, 8, 8)
    assert float((latent_scale(mu) * mu).std()) == pytest.approx(1.0, rel=1e-5)


def test_the_committed_autoencoder_reconstructs_digits():
    vae, info = latent.load_autoencoder("mnist_vae")
    assert info["data"] == "mnist" and (vae.config.latent_channels, vae.config.latent_size) == (4, 8)
    assert latent.autoencoder_ref("mnist_vae") == "mnist_vae"
    x = dl.load_mnist(train=False)[0][:64]
    mu = encode_images(vae, x)
    recon = decode_latents(vae, mu)
    # far better than the best constant guess (the mean image), whose squared error is the pixel variance
    assert float(((recon - x) ** 2).mean()) < 0.1 * float(((x - x.mean(0)) ** 2).mean())
    # latent.encode / decode are scale * mu and D(z / scale)
    fake = {"latent": {"autoencoder": "mnist_vae", "scale": 0.5, "data": "mnist"}}
    assert torch.allclose(latent.encode(fake, x[:4]), 0.5 * mu[:4], atol=1e-5)
    assert torch.allclose(latent.decode(fake, 0.5 * mu[:4]), recon[:4], atol=1e-5)
    assert latent.pixel_shape(fake) == (1, 28, 28)


def test_autoencoder_ref_names_a_missing_folder():
    with pytest.raises(FileNotFoundError, match="train --arch vae"):
        latent.autoencoder_ref("/no/such/autoencoder")


def test_training_latents_are_scaled_and_cached_except_for_folders(tmp_path, monkeypatch):
    """The latents have unit std; MNIST's are kept on disk and read back, a folder's never are."""
    vae = VAE(VAEConfig(base_channels=8))
    path = tmp_path / "vae.safetensors"
    save_model(path, vae, {"data": "mnist"})
    images = torch.rand(20, 1, 28, 28) * 2 - 1
    monkeypatch.setattr(dl.data, "load_images", lambda *args: (images, None))  # no 60,000 digits to encode
    monkeypatch.setattr(latent, "CACHE_DATA", tmp_path / "cache")
    latent._training_latents.cache_clear()
    try:
        z, scale = latent.training_latents(str(path))
        assert z.shape == (20, 4, 8, 8) and float(z.std()) == pytest.approx(1.0, rel=1e-4)
        assert torch.allclose(z, scale * encode_images(latent.load_autoencoder(str(path))[0], images), atol=1e-5)
        assert len(list((tmp_path / "cache" / "latents").glob("*.safetensors"))) == 1
        latent._training_latents.cache_clear()
        monkeypatch.setattr(dl.data, "load_images", lambda *args: pytest.fail("the cached latents were not used"))
        z2, scale2 = latent.training_latents(str(path))
        assert torch.equal(z2, z) and scale2 == scale

        folder = tmp_path / "folder_vae.safetensors"
        save_model(folder, vae, {"data": f"folder:{tmp_path}"})
        monkeypatch.setattr(dl.data, "load_images", lambda *args: (images, None))
        latent.training_latents(str(folder))
        assert len(list((tmp_path / "cache" / "latents").glob("*"))) == 1  # nothing new
    finally:
        latent._training_latents.cache_clear()


# --------------------------------------------------------------------------------------- the transformer


CONFIGS = {"unconditional": DiTConfig(image_channels=4, image_size=8, **TINY_DIT),
           "class": DiTConfig(image_channels=4, image_size=8, num_classes=10, **TINY_DIT),
           "text": DiTConfig(image_channels=1, image_size=8, text_dim=16, text_layers=1, text_heads=2, **TINY_DIT)}


@pytest.mark.parametrize("kind", CONFIGS)
def test_dit_keeps_shapes_and_starts_at_zero(kind):
    config = CONFIGS[kind]
    model = DiT(config)
    x = torch.randn(3, config.image_channels, 8, 8)
    t = torch.tensor([0.0, 500.0, 999.0])
    labels = {"unconditional": None, "class": torch.tensor([0, 9, 10]),
              "text": tokenize(["a thick seven", "", "one"])[0]}[kind]
    out = model(x, t, labels)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))  # adaLN-Zero: the network starts at 0
    out = perturbed(model)(x, t, labels)
    assert out.shape == x.shape and out.abs().min() > 0


def test_dit_rejects_bad_input():
    model = DiT(CONFIGS["class"])
    with pytest.raises(ValueError, match=r"inputs of shape \(B, 4, 8, 8\)"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one timestep per input"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"0\.\.10"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="token ids"):
        DiT(CONFIGS["text"])(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([3, 7]))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DiTConfig(image_size=7)
    with pytest.raises(ValueError, match="not both"):
        DiTConfig(num_classes=10, text_dim=16)


def test_mmdit_ignores_padding_and_reads_the_caption():
    model = perturbed(DiT(CONFIGS["text"]))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([100.0, 400.0, 900.0])
    captions = ["a thick seven", "one", ""]
    with torch.no_grad():
        long = model(x, t, tokenize(captions, 8)[0])  # 4, 6 and 7 padding tokens
        short = model(x, t, tokenize(captions, 4)[0])  # 0, 2 and 3
        assert torch.allclose(long, short, atol=1e-5), (long - short).abs().max()
        assert torch.allclose(model(x, t), model(x, t, tokenize([""] * 3)[0]), atol=1e-5)  # None is the empty caption
        other = model(x, t, tokenize(["a thin seven", "two", "a wide nine"])[0])
        assert ((other - long).flatten(1).abs().amax(1) > 1e-3).all()  # each row reads its own caption


def test_dit_overfits_one_batch():
    model = DiT(DiTConfig(image_channels=4, image_size=8, width=32, depth=1, heads=2))
    x, t, target = torch.randn(4, 4, 8, 8), torch.tensor([10.0, 300.0, 600.0, 900.0]), torch.randn(4, 4, 8, 8)
    losses = overfit_losses(model, x, t, target, steps=100)
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_dit_checkpoint_round_trip(tmp_path):
    model = perturbed(DiT(CONFIGS["text"]))
    save_model(tmp_path / "dit.safetensors", model, FLOW_INFO)
    loaded, info = load_model(tmp_path / "dit.safetensors")
    x, t, ids = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 500.0]), tokenize(["a wide two", ""])[0]
    with torch.no_grad():
        assert loaded.config == model.config and info == FLOW_INFO and torch.equal(loaded(x, t, ids), model(x, t, ids))


# ------------------------------------------------------------------- negative prompts and image-to-image


@pytest.fixture
def text_dit():
    return perturbed(DiT(CONFIGS["text"]))


def test_a_negative_prompt_replaces_the_empty_caption_in_guidance(text_dit):
    """One Euler step of the flow from s = 1 to 0: x_0 = eps - v_guided(eps, 1),
    v_guided = v_neg + w (v_pos - v_neg)."""
    prompts, negative, w = ["a thick seven", "one"], "a thin seven", 3.0
    samples, ids = generate(text_dit, FLOW_INFO, n=2, sampler="euler", steps=1, guidance=w, prompts=prompts,
                            negative_prompt=negative, seed=7)
    eps = torch.randn(2, 1, 8, 8, generator=torch.Generator("cpu").manual_seed(7))
    s = torch.ones(2)
    with torch.no_grad():
        v_pos = flow_velocity(text_dit, eps, s, tokenize(prompts)[0])
        v_neg = flow_velocity(text_dit, eps, s, tokenize([negative] * 2)[0])
        v_empty = flow_velocity(text_dit, eps, s, tokenize([""] * 2)[0])
    assert torch.equal(ids, tokenize(prompts)[0])
    expected = eps - (v_neg + w * (v_pos - v_neg))
    assert torch.allclose(samples, expected.clamp(-1, 1), atol=1e-5)
    inside = expected.abs() < 0.99  # where clipping does not hide the comparison
    assert inside.float().mean() > 0.2
    without = eps - (v_empty + w * (v_pos - v_empty))  # the empty caption, what guidance uses with no negative prompt
    assert (expected - without)[inside].abs().max() > 1e-3
    plain, _ = generate(text_dit, FLOW_INFO, n=2, sampler="euler", steps=1, guidance=w, prompts=prompts, seed=7)
    assert torch.allclose(plain, without.clamp(-1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="need a text model"):
        generate(DiT(CONFIGS["unconditional"]), FLOW_INFO, n=2, sampler="euler", steps=1, negative_prompt="one")


def test_image_to_image_interpolates_between_the_image_and_a_sample(text_dit):
    images = torch.randn(2, 1, 8, 8).clamp(-1, 1)  # images are in [-1, 1] (others are refused: test_faults_3)
    prompts, kwargs = ["a thick seven", "one"], dict(guidance=2.0, negative_prompt="a thin seven", seed=3)
    kept = image_to_image(text_dit, FLOW_INFO, images, prompts, strength=0.0, steps=4, **kwargs)
    assert torch.equal(kept, images)  # strength 0: the image unchanged
    full = image_to_image(text_dit, FLOW_INFO, images, prompts, strength=1.0, steps=3, **kwargs)
    sample, _ = generate(text_dit, FLOW_INFO, n=2, sampler="euler", steps=3, prompts=prompts, **kwargs)
    assert torch.allclose(full, sample, atol=1e-5)  # strength 1: an ordinary sample from the same noise
    # strength 0.4 in one Euler step: x_s = 0.6 x_0 + 0.4 eps, then x_s - 0.4 v_guided(x_s, 0.4)
    half = image_to_image(text_dit, FLOW_INFO, images, prompts, strength=0.4, steps=1, **kwargs)
    eps = torch.randn(2, 1, 8, 8, generator=torch.Generator("cpu").manual_seed(3))
    x_s, s = 0.6 * images + 0.4 * eps, torch.full((2,), 0.4)
    with torch.no_grad():
        v_pos = flow_velocity(text_dit, x_s, s, tokenize(prompts)[0])
        v_neg = flow_velocity(text_dit, x_s, s, tokenize(["a thin seven"] * 2)[0])
    assert torch.allclose(half, (x_s - 0.4 * (v_neg + 2.0 * (v_pos - v_neg))).clamp(-1, 1), atol=1e-5)
    # the same start solved by any ODE sampler of the family: heun's Euler step is corrected, consistency jumps
    full_heun = image_to_image(text_dit, FLOW_INFO, images, prompts, strength=1.0, steps=3, sampler="heun", **kwargs)
    heun_sample, _ = generate(text_dit, FLOW_INFO, n=2, sampler="heun", steps=3, prompts=prompts, **kwargs)
    assert torch.allclose(full_heun, heun_sample, atol=1e-5) and not torch.allclose(full_heun, full, atol=1e-3)
    one_jump = image_to_image(text_dit, FLOW_INFO, images, prompts, strength=0.4, steps=1, sampler="consistency", **kwargs)
    assert torch.allclose(one_jump, half, atol=1e-5)  # one step to s = 0: Euler's step is the jump to x0_hat


def test_image_to_image_refuses_what_it_cannot_do(text_dit):
    images = torch.zeros(2, 1, 8, 8)
    for strength in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
            image_to_image(text_dit, FLOW_INFO, images, ["one", "two"], strength=strength)
    ddpm = {**FLOW_INFO, "objective": "ddpm", "prediction": "v"}
    with pytest.raises(ValueError, match="flow model"):
        image_to_image(text_dit, ddpm, images, ["one", "two"])
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 8, 8\)"):
        image_to_image(text_dit, FLOW_INFO, torch.zeros(2, 1, 28, 28), ["one", "two"])
    with pytest.raises(ValueError, match="choose sampler heun, euler, consistency"):
        image_to_image(text_dit, FLOW_INFO, images, ["one", "two"], sampler="ddim")


def test_image_to_image_of_a_latent_model_works_on_the_autoencoders_latents():
    """Strength 0 through a latent model is the autoencoder's reconstruction D(mu(x)) (the scale cancels)."""
    model = DiT(DiTConfig(image_channels=4, image_size=8, **TINY_DIT))
    info = {**FLOW_INFO, "latent": {"autoencoder": "mnist_vae", "scale": 0.7, "data": "mnist"}}
    vae, _ = latent.load_autoencoder("mnist_vae")
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    out = image_to_image(model, info, x, None, strength=0.0)
    assert out.shape == (2, 1, 28, 28)
    assert torch.allclose(out, decode_latents(vae, encode_images(vae, x)), atol=1e-4)
    # the model itself predicts v = 0 at initialisation, so generate's one Euler step leaves the noise: D(eps / scale)
    samples, _ = generate(model, info, n=2, sampler="euler", steps=1, seed=5)
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(5))
    assert samples.shape == (2, 1, 28, 28) and torch.allclose(samples, decode_latents(vae, eps / 0.7), atol=1e-4)
    with pytest.raises(ValueError, match="latents"):
        inpaint_images(model, info, torch.zeros(2, 4, 8, 8), torch.ones(2, 1, 8, 8))


# ----------------------------------------------------------------------------- end to end, on a folder


@pytest.fixture(scope="module")
def latent_runs(tmp_path_factory):
    """An autoencoder and a latent DiT trained for 2 steps each on 16 gray 28x28 images (fast, not good)."""
    root = tmp_path_factory.mktemp("latent")
    folder = make_gray_folder(root / "shapes")
    common = ["--data", f"folder:{folder}", "--steps", "2", "--batch-size", "4", "--quiet"]
    result = run("train", *common, "--arch", "vae", "--image-size", "28", "--channels", "1",
                 "--model-config", '{"base_channels": 8}', "--out", root / "vae")
    assert result.returncode == 0, result.stderr
    result = run("train", *common, "--latent", root / "vae", "--arch", "dit", "--model-config", json.dumps(TINY_DIT),
                 "--out", root / "dit")
    assert result.returncode == 0, result.stderr
    return root, folder


def test_a_latent_run_records_its_autoencoder_and_samples_pixels(latent_runs):
    root, folder = latent_runs
    model, info = load_model(root / "dit")
    assert isinstance(model, DiT) and (model.config.image_channels, model.config.image_size) == (4, 8)
    assert info["latent"]["autoencoder"] == str((root / "vae").resolve()) and info["latent"]["scale"] > 0
    # the scale makes the training latents unit-variance: 1 / std of the autoencoder's means over the folder
    vae, vae_info = latent.load_autoencoder(info["latent"]["autoencoder"])
    assert vae_info["data"] == info["data"] == info["latent"]["data"] == f"folder:{folder.resolve()}"
    mu = encode_images(vae, dl.load_images(info["data"], True, 1, 28)[0])
    assert info["latent"]["scale"] == pytest.approx(latent_scale(mu), rel=1e-4)
    result = run("sample", "--checkpoint", root / "dit", "--n", "3", "--steps", "2", "--out", root / "s.npz")
    assert result.returncode == 0, result.stderr
    images = np.load(root / "s.npz")["images"]
    assert images.shape == (3, 1, 28, 28) and np.abs(images).max() <= 1  # decoded pixels, not latents
    with pytest.raises(ValueError, match="image_to_image"):
        inpaint_images(model, info, torch.zeros(2, 4, 8, 8), torch.ones(2, 1, 8, 8))


def test_latent_errors_are_one_line(latent_runs, tmp_path, capsys):
    root, folder = latent_runs
    result = run("train", "--data", f"folder:{folder}", "--latent", tmp_path / "nope", "--arch", "dit",
                 "--steps", "1", "--out", tmp_path / "run")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no autoencoder" in result.stderr
    assert main(["train", "--data", "mnist", "--latent", str(root / "vae"), "--steps", "1",
                 "--out", str(tmp_path / "run")]) == 1
    assert "train one on that data with --arch vae" in capsys.readouterr().err
    assert main(["train", "--data", f"folder:{folder}", "--latent", str(root / "vae"), "--image-size", "28",
                 "--steps", "1", "--out", str(tmp_path / "run")]) == 1
    assert "drop --image-size" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["sample", "--checkpoint", str(root / "dit"), "--n", "2", "--inpaint", "test",
                 "--out", str(tmp_path / "i.npz")]) == 1
    assert "makes latents" in capsys.readouterr().err


def test_negative_prompt_needs_guidance_on_the_command_line(text_dit, tmp_path, capsys):
    save_model(tmp_path / "text.safetensors", text_dit, FLOW_INFO)
    common = ["sample", "--checkpoint", str(tmp_path / "text.safetensors"), "--n", "2", "--sampler", "euler",
              "--steps", "1", "--prompt", "a thick seven", "--negative-prompt", "a thin seven"]
    assert main([*common, "--out", str(tmp_path / "a.npz")]) == 1
    assert "add --guidance" in capsys.readouterr().err and not (tmp_path / "a.npz").exists()
    assert main([*common, "--guidance", "1", "--out", str(tmp_path / "a.npz")]) == 1  # w = 1 ignores the negative
    assert "add --guidance" in capsys.readouterr().err
    assert main([*common, "--guidance", "3", "--out", str(tmp_path / "b.npz")]) == 0
    expected, _ = generate(text_dit, FLOW_INFO, n=2, sampler="euler", steps=1, guidance=3.0,
                           prompts=["a thick seven"] * 2, negative_prompt="a thin seven")
    assert np.allclose(np.load(tmp_path / "b.npz")["images"], expected.numpy(), atol=1e-5)
    unconditional = tmp_path / "uncond.safetensors"
    save_model(unconditional, DiT(CONFIGS["unconditional"]), FLOW_INFO)
    assert main(["sample", "--checkpoint", str(unconditional), "--n", "2", "--negative-prompt", "one",
                 "--guidance", "3", "--out", str(tmp_path / "c.npz")]) == 1
    assert "needs a text model" in capsys.readouterr().err
