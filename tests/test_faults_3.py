"""Bad input and faults, round 3: the newer commands (latent models, distillation), the Python API, hostile files.

The numbers in the test names are the items of the issue "Nothing lost, nothing silently wrong, round 3".
Items 1 and the course commands of 10 are in test_student_edition.py and test_course_tools.py, 12 in
test_wheel.py, 13 in test_browser.py.
"""

import dataclasses
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import diffusion_lib as dl
from diffusion_lib import latent
from diffusion_lib.__main__ import main
from diffusion_lib.autoencoder import VAE, VAEConfig
from diffusion_lib.checkpoint import PRETRAINED_DIR, CheckpointError, save_model, weights_digest
from diffusion_lib.distill import DistillConfig, distill
from diffusion_lib.outputs import OutputError
from diffusion_lib.pipeline import check_finite
from diffusion_lib.training import MODEL_FILE

MOONS = dict(data="moons", batch_size=16, model={"hidden": 16})


def cli(capsys, *args):
    """(exit code, stdout, stderr) of `python -m diffusion_lib ARGS`, run in this process."""
    try:
        code = main(list(map(str, args)))
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def edited(tmp_path, name: str, change, file=MODEL_FILE):
    """A copy of a committed checkpoint with its header changed by `change(metadata)`; the weights as they are."""
    source = PRETRAINED_DIR / name / file
    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata())
    change(metadata)
    path = tmp_path / f"{name}_edited_{len(list(tmp_path.glob(f'{name}_edited_*')))}.safetensors"
    save_file(load_file(str(source)), str(path), metadata=metadata)
    return path


def with_info(**fields):
    return lambda m: m.update(info=json.dumps({**json.loads(m["info"]), **fields}))


def with_latent(**fields):
    return lambda m: m.update(info=json.dumps({**json.loads(m["info"]),
                                               "latent": {**json.loads(m["info"])["latent"], **fields}}))


def with_weights(tmp_path, name: str, change):
    """A copy of a committed checkpoint whose tensors were changed by `change(tensors)` (written without checks)."""
    source = PRETRAINED_DIR / name / MODEL_FILE
    tensors = load_file(str(source))
    change(tensors)
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
    path = tmp_path / f"{name}_weights.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def few_images(monkeypatch):
    """20 random 'MNIST' images, so that a latent model trains without encoding 60,000 digits."""
    images = torch.rand(20, 1, 28, 28) * 2 - 1
    labels = torch.arange(20) % 10
    monkeypatch.setattr(dl.data, "load_images", lambda *args: (images, labels))
    monkeypatch.setattr(dl.training, "load_images", lambda *args: (images, labels))
    latent._training_latents.cache_clear()
    yield images
    latent._training_latents.cache_clear()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setattr(latent, "CACHE_DATA", folder)
    return folder / "latents"


def tiny_vae(path, seed: int):
    torch.manual_seed(seed)
    save_model(path, VAE(VAEConfig(base_channels=8)), {"data": "mnist"})
    return path


# ------------------------------------------------------------------------------------------ 2: pinned by a digest


def test_2_a_latent_model_refuses_an_autoencoder_retrained_at_its_path(tmp_path, capsys, few_images, cache):
    vae = tiny_vae(tmp_path / "vae" / MODEL_FILE, seed=0)
    config = dl.TrainConfig(data="mnist", latent=str(vae.parent), steps=2, batch_size=4,
                            model={"base_channels": 8, "attention_levels": [], "channel_mults": [1, 2]})
    dl.train(config, tmp_path / "run", progress=False)
    model, info = dl.load_model(tmp_path / "run")
    assert info["latent"]["autoencoder_sha256"] == weights_digest(vae)
    assert dl.generate(model, info, 2, "euler", 2)[0].shape == (2, 1, 28, 28)

    tiny_vae(vae, seed=1)  # the autoencoder trained on at the same path: other weights
    with pytest.raises(CheckpointError, match="other weights .* than the one this latent model was trained with"):
        dl.generate(model, info, 2, "euler", 2)
    with pytest.raises(CheckpointError, match="restore that autoencoder, or train into a new --out folder"):
        dl.train(dataclasses.replace(config, steps=4), tmp_path / "run", progress=False)
    code, _, err = cli(capsys, "sample", "--checkpoint", tmp_path / "run", "--n", "2", "--sampler", "euler",
                       "--steps", "2", "--out", tmp_path / "s.npz")
    assert code == 1 and one_line(err) and "other weights" in err and not (tmp_path / "s.npz").exists()

    vae.unlink()  # 10: the autoencoder moved away: the message names the file that is missing
    with pytest.raises(CheckpointError, match=f"autoencoder {vae}, which is not there"):
        dl.generate(model, info, 2, "euler", 2)


def test_2_a_resumed_distillation_refuses_a_changed_teacher(tmp_path):
    for seed, folder in ((0, "teacher"), (1, "other")):
        dl.train(dl.TrainConfig(**MOONS, steps=2, seed=seed), tmp_path / folder, progress=False)
    teacher = tmp_path / "teacher" / MODEL_FILE
    config = DistillConfig("consistency", str(teacher), steps=2, batch_size=8, teacher_steps=4)
    distill(config, tmp_path / "student", progress=False)
    distill(dataclasses.replace(config, steps=3), tmp_path / "student", progress=False)  # same teacher: resumes
    shutil.copy(tmp_path / "other" / MODEL_FILE, teacher)
    with pytest.raises(CheckpointError, match="restore that teacher, or distil into a new --out folder"):
        distill(dataclasses.replace(config, steps=4), tmp_path / "student", progress=False)


def test_2_reflow_pairs_drawn_from_another_teacher_are_refused(tmp_path):
    for seed, folder in ((0, "teacher"), (1, "other")):
        dl.train(dl.TrainConfig(**MOONS, steps=2, seed=seed), tmp_path / folder, progress=False)
    teacher = tmp_path / "teacher" / MODEL_FILE
    config = DistillConfig("reflow", str(teacher), steps=1, batch_size=8, pairs=16, pair_steps=2)
    distill(config, tmp_path / "student", progress=False)
    (tmp_path / "student" / "distill_state.safetensors").unlink()  # killed after drawing its pairs, before a state
    (tmp_path / "student" / MODEL_FILE).unlink()
    shutil.copy(tmp_path / "other" / MODEL_FILE, teacher)
    with pytest.raises(CheckpointError, match="holds pairs made another way"):
        distill(config, tmp_path / "student", progress=False)


# --------------------------------------------------------------------------------------------- 3: no NaN saved


def test_3_a_checkpoint_with_one_nan_weight_is_refused_on_load(tmp_path, capsys):
    def poison(tensors):
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name].view(-1)[0] = float("nan")

    path = with_weights(tmp_path, "mnist_uncond", poison)
    with pytest.raises(CheckpointError, match="NaN or infinite weights"):
        dl.load_model(path)
    code, _, err = cli(capsys, "sample", "--checkpoint", path, "--n", "2", "--out", tmp_path / "s.npz")
    assert code == 1 and one_line(err) and "NaN" in err and not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("scale", [0, -1.0, "abc", None, float("inf")])
def test_3_9_a_latent_checkpoint_with_a_bad_scale_is_refused(tmp_path, scale):
    path = edited(tmp_path, "mnist_latent_unet", with_latent(scale=scale))
    with pytest.raises(CheckpointError, match="positive scale"):
        dl.load_model(path)


def test_3_samples_that_are_not_finite_are_never_returned():
    assert torch.equal(check_finite(torch.zeros(2, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN or infinite values"):
        check_finite(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN or infinite values"):
        check_finite(torch.tensor([float("inf")]))


# ----------------------------------------------------------------------------------- 4: the latent cache checked


def _bad_caches(path, good_latents, digest):
    """(name, write) for each way a cache file can be wrong."""

    def tensors(latents=good_latents, scale=1.0, metadata={"autoencoder": digest}, drop=None):
        stored = {"latents": latents.contiguous(), "scale": torch.tensor(scale, dtype=torch.float64)}
        stored.pop(drop, None)
        return lambda: save_file(stored, path, metadata=metadata)

    def truncated():
        tensors()()
        path.write_bytes(path.read_bytes()[:200])

    return [
        ("wrong latent shape", tensors(latents=good_latents.reshape(20, 16, 4, 4))),
        ("scale 0", tensors(scale=0.0)),
        ("scale not the latents'", tensors(scale=3.0, latents=good_latents * 2)),
        ("not finite", tensors(latents=good_latents.clone().index_fill_(0, torch.tensor([0]), float("nan")))),
        ("another autoencoder's", tensors(metadata={"autoencoder": "0" * 16})),
        ("missing key", tensors(drop="scale")),
        ("truncated", truncated),
        ("a folder in its place", lambda: path.mkdir()),
    ]


def test_4_a_bad_latent_cache_is_rebuilt_never_trusted(tmp_path, few_images, cache, capsys):
    vae = tiny_vae(tmp_path / "vae.safetensors", seed=0)
    good, scale = latent.training_latents(str(vae))
    (path,) = cache.glob("*.safetensors")
    for name, write in _bad_caches(path, good, weights_digest(vae)):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        write()
        latent._training_latents.cache_clear()
        z, s = latent.training_latents(str(vae))
        assert torch.allclose(z, good) and s == pytest.approx(scale), name
        if path.is_dir():  # never removed: a folder is the user's; the latents are simply not kept
            assert "not kept" in capsys.readouterr().err, name
        else:
            assert latent._valid_cache(path, latent.load_autoencoder(str(vae))[0], weights_digest(vae), 20), name


def test_4_a_cache_with_too_few_rows_is_rebuilt(tmp_path, few_images, cache):
    vae = tiny_vae(tmp_path / "vae.safetensors", seed=0)
    good, _ = latent.training_latents(str(vae))
    (path,) = cache.glob("*.safetensors")
    save_file({"latents": good[:10].contiguous(), "scale": torch.tensor(1.0, dtype=torch.float64)}, path,
              metadata={"autoencoder": weights_digest(vae)})
    latent._training_latents.cache_clear()
    assert len(latent.training_latents(str(vae), count=20)[0]) == 20


def test_4_an_unwritable_cache_folder_is_found_before_encoding(tmp_path, few_images, cache, monkeypatch, capsys):
    vae = tiny_vae(tmp_path / "vae.safetensors", seed=0)
    order = []

    def unwritable(folder):
        order.append("checked")
        raise OutputError(f"cannot write into {folder}")

    encode = latent.encode_images
    monkeypatch.setattr(latent, "check_writable", unwritable)
    monkeypatch.setattr(latent, "encode_images", lambda *a: order.append("encoded") or encode(*a))
    z, _ = latent.training_latents(str(vae))
    assert order == ["checked", "encoded"] and z.shape == (20, 4, 8, 8)
    assert "not kept for the next run" in capsys.readouterr().err and not cache.exists()


# ---------------------------------------------------------------------------- 5: the API checks what the CLI does


@pytest.fixture(scope="module")
def flow_model():
    return dl.pretrained("mnist_uncond")


@pytest.fixture(scope="module")
def cond_model():
    return dl.pretrained("mnist_cond")


GOOD = torch.zeros(2, 1, 28, 28)
MASK = dl.named_mask("top", GOOD.shape)


@pytest.mark.parametrize("call, message", [
    (lambda m, i: dl.generate(m, i, 2, guidance=float("nan"), labels=torch.tensor([1, 2])), "guidance must be"),
    (lambda m, i: dl.generate(m, i, 2, guidance=-1.0, labels=torch.tensor([1, 2])), "guidance must be"),
    (lambda m, i: dl.generate(m, i, 2, "ddim", 2, eta=float("nan")), "eta must be"),
    (lambda m, i: dl.inpaint_images(m, i, GOOD + 200, MASK, 2), r"lie in \[-1, 1\]"),
    (lambda m, i: dl.inpaint_images(m, i, GOOD.to(torch.uint8), MASK, 2), "must be a float tensor"),
    (lambda m, i: dl.inpaint_images(m, i, GOOD.numpy(), MASK, 2), "must be a float tensor"),
    (lambda m, i: dl.inpaint_images(m, i, GOOD.clone().fill_(float("nan")), MASK, 2), "NaN or infinity"),
    (lambda m, i: dl.inpaint_images(m, i, GOOD, MASK * 0.5, 2), "mask must be a tensor of 0s"),
    (lambda m, i: dl.inpaint_images(m, i, GOOD, MASK, 2, guidance=float("inf"), labels=torch.tensor([1, 2])),
     "guidance must be"),
])
def test_5_the_api_refuses_what_the_cli_refuses_conditional(cond_model, call, message):
    with pytest.raises(ValueError, match=message):
        call(*cond_model)


@pytest.mark.parametrize("images, strength, message", [
    (GOOD + 200, 0.5, r"lie in \[-1, 1\]"),
    (GOOD.to(torch.uint8), 0.5, "must be a float tensor"),
    (GOOD.clone().fill_(float("nan")), 0.5, "NaN or infinity"),
    (GOOD, 1.5, "strength"),
    (GOOD, -0.1, "strength"),
    (GOOD, float("nan"), "strength"),
    (GOOD, "0.5", "strength"),
])
def test_5_image_to_image_checks_its_images_and_strength(flow_model, images, strength, message):
    with pytest.raises(ValueError, match=message):
        dl.image_to_image(*flow_model, images, None, strength=strength, steps=2)


def test_5_the_cli_and_the_api_give_the_same_message_for_0_255_images(tmp_path, capsys, flow_model):
    np.savez(tmp_path / "bytes.npz", images=np.full((2, 1, 28, 28), 200, np.uint8))
    np.savez(tmp_path / "big.npz", images=np.full((2, 1, 28, 28), 200, np.float32))
    for name, api_images in (("bytes", GOOD.to(torch.uint8) + 200), ("big", GOOD + 200)):
        code, _, err = cli(capsys, "sample", "--checkpoint", "mnist_uncond", "--n", "2", "--inpaint",
                           tmp_path / f"{name}.npz", "--out", tmp_path / "s.npz")
        with pytest.raises(ValueError) as api:
            dl.inpaint_images(*flow_model, api_images, MASK, 2)
        assert code == 1 and one_line(err) and str(api.value).split(":", 1)[-1].strip() in err, (err, api.value)


# --------------------------------------------------------------------------- 6: autoguidance and older checkpoints


def test_6_a_committed_model_stored_without_image_size_takes_a_weak_model_trained_today(tmp_path, flow_model):
    dl.train(dl.TrainConfig(data="mnist", steps=1, batch_size=2, model={"base_channels": 8}), tmp_path / "weak",
             progress=False)
    weak, weak_info = dl.load_model(tmp_path / "weak")
    assert flow_model[0].config.image_size is None and weak.config.image_size == 28
    guided = dl.autoguided(*flow_model, weak, weak_info, 1.5)
    samples, _ = dl.generate(guided, flow_model[1], 2, "euler", 2)
    assert samples.shape == (2, 1, 28, 28)
    dl.train(dl.TrainConfig(data="mnist", image_size=8, steps=1, batch_size=2, model={"base_channels": 8}),
             tmp_path / "small", progress=False)
    with pytest.raises(ValueError, match="image_size is 8 there, 28 here"):  # a real difference is still refused
        dl.autoguided(*flow_model, *dl.load_model(tmp_path / "small"), 1.5)


# --------------------------------------------------------------------------- 7-11: one clear line each


def oversized_png(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_7_to_11_every_refusal_is_one_clear_line(tmp_path, capsys):
    npz = tmp_path / "s.npz"
    vae = PRETRAINED_DIR / "mnist_vae"
    oversized_png(tmp_path / "bomb" / "a.png", 40000, 40000)
    oversized_png(tmp_path / "huge" / "a.png", 10000, 10000)
    bools = with_weights(tmp_path, "mnist_uncond", lambda t: t.update({k: (v > 0) for k, v in t.items()
                                                                        if k.endswith("bias")}))
    existing = tmp_path / "existing.npz"
    np.savez(existing, images=np.zeros((1, 1, 28, 28), np.float32))
    cases = [
        # 7: models that are not diffusion models, named for what they are
        (["distill", "--method", "reflow", "--teacher", "mnist_vae", "--steps", "1", "--out", tmp_path / "d"],
         "holds a VAE, not a diffusion model"),
        (["distill", "--method", "reflow", "--teacher", "mnist_classifier", "--steps", "1", "--out", tmp_path / "d"],
         "holds a Classifier, not a diffusion model"),
        (["distill", "--method", "reflow", "--teacher", "mnist_pixelcnn", "--steps", "1", "--out", tmp_path / "d"],
         "holds a PixelCNN, not a diffusion model"),
        (["sample", "--checkpoint", "mnist_uncond", "--autoguide", vae, "--n", "1", "--out", npz],
         "the weak model is a VAE, not a diffusion model"),
        # 8: oversized images, by name, before decoding
        (["train", "--data", f"folder:{tmp_path / 'bomb'}", "--steps", "1", "--out", tmp_path / "t"],
         f"{tmp_path / 'bomb' / 'a.png'} declares over"),
        (["train", "--data", f"folder:{tmp_path / 'huge'}", "--steps", "1", "--out", tmp_path / "t"],
         "is 10000x10000 (100 megapixels), more than the 40 megapixels read here"),
        # 9: headers that would build something huge, or nothing
        (["sample", "--checkpoint", edited(tmp_path, "mnist_latent_mmdit", lambda m: m.update(
            config=json.dumps({**json.loads(m["config"]), "depth": 10**6}))), "--n", "1", "--out", npz],
         "depth must be a whole number from 1 to 256, got 1000000"),
        (["sample", "--checkpoint", edited(tmp_path, "mnist_text", lambda m: m.update(
            config=json.dumps({**json.loads(m["config"]), "text_layers": 10**6}))), "--n", "1", "--out", npz],
         "text_layers must be a whole number from 0 to 64"),
        (["sample", "--checkpoint", edited(tmp_path, "mnist_latent_mmdit", lambda m: m.update(
            config=json.dumps({**json.loads(m["config"]), "patch_size": 0}))), "--n", "1", "--out", npz],
         "patch_size must be a whole number from 1 to 64, got 0"),
        (["sample", "--checkpoint", edited(tmp_path, "mnist_latent_mmdit", lambda m: m.update(
            config=json.dumps({**json.loads(m["config"]), "heads": 0}))), "--n", "1", "--out", npz],
         "heads must be a whole number from 1 to 256, got 0"),
        (["sample", "--checkpoint", edited(tmp_path, "mnist_latent_unet", with_info(latent="mnist_vae")),
          "--n", "1", "--out", npz], "must name an autoencoder and a positive scale"),
        (["sample", "--checkpoint", edited(tmp_path, "mnist_latent_unet", lambda m: m.update(info=json.dumps({
            **json.loads(m["info"]), "latent": {"scale": 1.0, "data": "mnist"}}))), "--n", "1", "--out", npz],
         "must name an autoencoder and a positive scale"),
        # 10: an existing output is kept; integer or boolean weights are refused
        (["sample", "--checkpoint", "mnist_uncond", "--n", "1", "--out", existing],
         "exists already: choose another name, or add --overwrite"),
        (["sample", "--checkpoint", bools, "--n", "1", "--out", npz], "as torch.bool, where the model holds torch.float32"),
        # 11: a missing checkpoint lists the committed names it could have been
        (["sample", "--checkpoint", "mnist_cnd", "--n", "1", "--out", npz], "or a committed model (fashion_classifier"),
        (["evaluate", existing, "--classifier", "no_such_classifier"], "no checkpoint at no_such_classifier"),
    ]
    for args, message in cases:
        code, _, err = cli(capsys, *args)
        assert code in (1, 2) and message in err, (args, err)
        assert one_line(err) and len(err) < 700, err
    assert np.load(existing)["images"].shape == (1, 1, 28, 28)  # untouched
    assert not npz.exists()


def test_10_sample_overwrites_an_existing_file_only_when_asked(tmp_path, capsys):
    out = tmp_path / "s.npz"
    np.savez(out, images=np.zeros((1, 1, 28, 28), np.float32))
    code, _, err = cli(capsys, "sample", "--checkpoint", "mnist_uncond", "--n", "2", "--sampler", "euler",
                       "--steps", "2", "--out", out, "--overwrite")
    assert code == 0, err
    assert np.load(out)["images"].shape == (2, 1, 28, 28)


def test_11_committed_names_work_wherever_a_checkpoint_is_asked_for(tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, _, err = cli(capsys, "sample", "--checkpoint", "mnist_cond", "--n", "2", "--sampler", "euler",
                       "--steps", "2", "--labels", "3", "--out", out)
    assert code == 0, err
    code, _, err = cli(capsys, "sample", "--checkpoint", "mnist_uncond", "--autoguide", "mnist_reflow", "--n", "2",
                       "--sampler", "euler", "--steps", "2", "--out", tmp_path / "a.npz")
    assert code == 0, err
    code, printed, err = cli(capsys, "evaluate", out, "--classifier", "mnist_classifier")
    assert code == 0 and "fid" in printed, err


def test_11_a_local_folder_of_a_committed_name_is_what_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist_cond").mkdir()  # here, "mnist_cond" names this empty folder, not the committed model
    with pytest.raises(CheckpointError, match="no checkpoint at mnist_cond/model.safetensors"):
        dl.load_model("mnist_cond")
