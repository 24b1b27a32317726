"""The chapters as files: pairs in sync, kernelspec, stored outputs, widget callbacks and exercise checks.

nbval runs the notebooks themselves (see pyproject.toml); this file checks what nbval cannot.
"""

import copy
import functools
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import diffusion_lib as dl
from diffusion_lib.course import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, exercises

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
NOTEBOOKS = sorted(CHAPTERS.glob("*.ipynb"))


def test_chapters_are_numbered_and_the_first_three_are_present():
    numbers = [int(p.stem[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers)) and {1, 2, 3} <= set(numbers)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_is_in_sync_with_kernelspec_and_outputs(notebook):
    paired = notebook.with_suffix(".py")
    assert paired.exists(), f"{notebook.name} has no paired .py: run 'jupytext --sync {notebook}'"
    nb, py = jupytext.read(notebook), jupytext.read(paired)
    assert [c.source.strip() for c in nb.cells] == [c.source.strip() for c in py.cells], \
        f"{notebook.name} and {paired.name} differ: run 'jupytext --sync {notebook}'"
    assert [c.metadata.get("tags", []) for c in nb.cells] == [c.metadata.get("tags", []) for c in py.cells]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2, "commit the notebook executed in full mode"
    assert not any("Traceback" in str(c.get("outputs")) for c in code), "a stored output holds an error"
    assert sum("tags" in c.metadata and "solution" in c.metadata["tags"] for c in nb.cells) >= 2
    printed = [o.get("text", "") for c in code for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    assert any(t.startswith("full mode") for t in printed) and not any(t.startswith("fast mode") for t in printed), \
        "the stored outputs must come from a full-mode run"


def _loop_without_ema_warmup(model, data, steps, batch_size, lr, seed, loss_fn):
    """Chapter 4's training loop with the EMA's decay fixed at 0.999 from the first step (no warm-up)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        z = torch.randn(batch_size, generator=generator)
        noise = torch.randn((batch_size, *data.shape[1:]), generator=generator)
        loss = loss_fn(model, data[idx], z, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for average, weight in zip(ema_model.parameters(), model.parameters()):
                average.mul_(0.999).add_(0.001 * weight)
        losses.append(loss.item())
    return losses, ema_model


def solutions(notebook_stem: str) -> dict:
    """Execute a chapter's cells tagged `solution` (each is self-contained) and return what they define."""
    namespace = {"dl": dl, "torch": torch, "np": np}
    for cell in jupytext.read(CHAPTERS / f"{notebook_stem}.py").cells:
        if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            exec(cell.source, namespace)
    return namespace


def _image_of(fig: Figure, axis: int = 0) -> np.ndarray:
    return np.asarray(fig.axes[axis].images[0].get_array())


def test_noising_view_changes_with_t_and_schedule():
    digit, photo = dl.load_mnist(train=False)[0][:1], ch02.load_photo(32)
    noises = [torch.randn_like(digit), torch.randn_like(photo)]
    views = {(t, s): ch02.noising_view(t, s, [digit, photo], noises) for t in (0, 300, 999) for s in ("linear", "cosine")}
    assert all(isinstance(v, Figure) for v in views.values())
    assert not np.allclose(_image_of(views[0, "linear"]), _image_of(views[300, "linear"]))
    assert not np.allclose(_image_of(views[300, "linear"]), _image_of(views[300, "cosine"]))
    assert np.allclose(_image_of(views[0, "linear"]), (digit[0, 0].numpy() + 1) / 2, atol=0.05)  # t=0: barely noised
    with pytest.raises(ValueError, match="t must lie in 0..999"):
        ch02.noising_view(1000, "linear", [digit], noises[:1])


def test_raster_view_shows_the_canvas_filling_in():
    model = dl.PixelCNN(dl.PixelCNNConfig(channels=8, num_blocks=1))
    _, snapshots = dl.pixelcnn_sample(model, 2, 8, 8, generator=torch.Generator().manual_seed(0), snapshot_every=8)
    first, last = ch01.raster_view(snapshots, 0, 8), ch01.raster_view(snapshots, 7, 8)
    assert "after 8 of 64 pixels" in first._suptitle.get_text() and "after 64 of 64" in last._suptitle.get_text()
    assert (_image_of(first)[1:] == 0).all()  # (in [0, 1] display units) rows after the first are still blank
    with pytest.raises(ValueError, match="index must lie in 0..7"):
        ch01.raster_view(snapshots, 8, 8)


def test_denoise_view_and_error_by_timestep():
    schedule = dl.make_schedule("linear", 1000)
    data = dl.load_mnist(train=False)[0][:20].double()
    x0, noise = data[:1], torch.randn(1, 1, 28, 28, dtype=torch.float64)
    denoisers = {"ideal": dl.ideal_eps_fn(data, schedule), "zero": lambda x, t: torch.zeros_like(x)}
    early, late = ch03.denoise_view(5, x0, noise, denoisers, schedule), ch03.denoise_view(900, x0, noise, denoisers, schedule)
    assert len(early.axes) == 10 and not np.allclose(_image_of(early), _image_of(late))
    assert np.allclose(_image_of(early, 3), (x0[0, 0].numpy() + 1) / 2, atol=1e-3)  # the ideal x0_hat is the digit
    errors = ch03.eps_error_by_timestep(denoisers["zero"], data, schedule, [0, 500, 999], torch.Generator().manual_seed(0))
    assert all(0.8 < e < 1.2 for e in errors)  # predicting 0 costs E[eps^2] = 1
    ideal_errors = ch03.eps_error_by_timestep(denoisers["ideal"], data, schedule, [10, 999], torch.Generator().manual_seed(0))
    assert ideal_errors[0] < 0.01  # on its own data the ideal denoiser is exact at low noise


def test_guidance_view_changes_with_w_and_rejects_unknown_digits():
    model, info = dl.pretrained("mnist_cond")
    views = [ch06.guidance_view(w, 4, model, info, n=2, steps=5) for w in (0.0, 3.0)]
    assert all(isinstance(v, Figure) for v in views) and "w = 3" in views[1]._suptitle.get_text()
    assert not np.allclose(_image_of(views[0]), _image_of(views[1]))
    with pytest.raises(ValueError, match="digit must lie in 0..9"):
        ch06.guidance_view(1.0, 10, model, info)


def test_trace_shapes_follows_a_real_call_through_every_part():
    model, _ = dl.pretrained("mnist_cond")
    rows = ch06.trace_shapes(model, torch.zeros(3, 1, 28, 28), torch.full((3,), 500.0), torch.arange(3))
    assert sum(row["parameters"] for row in rows) == sum(p.numel() for p in model.parameters())
    by_part = {row["part"]: row for row in rows}
    assert by_part["stem"]["input"] == (3, 1, 28, 28) and by_part["head"]["output"] == (3, 1, 28, 28)
    assert by_part["label_emb"]["input"] == (3,)
    # on the way up each block receives its predecessor's output widened by the saved skip features
    up = [row for row in rows if row["part"].startswith("up[")]
    assert up[0]["input"][1] == by_part["mid2"]["output"][1] + by_part["down[4]"]["output"][1]
    assert not any(module._forward_hooks for module in model.modules())  # no hook is left behind


def test_training_snapshots_view_and_loss_by_timestep(tmp_path):
    config = dl.TrainConfig(data="mnist", steps=4, batch_size=4, seed=0, save_every=100, snapshots=(2, 4),
                            model={"base_channels": 8, "groups": 4})
    result = dl.train(config, tmp_path, progress=False, callback=ch04.LiveLossPlot(every=2))  # no notebook: no plot
    samples = ch04.snapshot_samples(sorted((tmp_path / "snapshots").glob("*.safetensors")), n=2, steps=3)
    assert sorted(samples) == [2, 4] and samples[2].shape == (2, 1, 28, 28)
    assert not np.allclose(_image_of(ch04.snapshot_view(samples, 2)), _image_of(ch04.snapshot_view(samples, 4)))
    with pytest.raises(ValueError, match=r"no snapshot at step 3; snapshots exist at \[2, 4\]"):
        ch04.snapshot_view(samples, 3)
    losses = ch04.loss_by_timestep_range(result.ema_model, config.info(), dl.load_mnist(train=False)[0][:8], bins=4)
    assert len(losses) == 4 and all(loss > 0 for loss in losses)


def test_loss_by_noise_level_of_a_flow_model_bins_s():
    """A 'network' whose velocity is s itself, on x0 = 0: the loss is E(s - eps)^2 = 1 + E s^2 over each bin of s."""
    class SayS(torch.nn.Module):
        config = dl.UNetConfig()

        def forward(self, x, t, labels=None):
            return (t / 1000).reshape(-1, 1, 1, 1).expand_as(x)

    losses = ch04.loss_by_timestep_range(SayS(), {"objective": "flow"}, torch.zeros(64, 1, 28, 28), bins=4)
    expected = [1 + ((k + 1) ** 3 - k**3) / 48 for k in range(4)]  # 1 + mean of s^2 over [k/4, (k+1)/4]
    assert np.allclose(losses, expected, atol=0.04), (losses, expected)  # neighbouring bins differ by >= 0.12


def test_sampler_and_trajectory_views():
    model, info = dl.pretrained("mnist_cond")
    few, deterministic = ch05.sampler_view(3, 0.0, model, info, n=2), ch05.sampler_view(3, 0.0, model, info, n=2)
    noisy = ch05.sampler_view(3, 1.0, model, info, n=2)
    assert isinstance(few[0], Figure) and few[1] > 0 and "3 steps, eta = 1" in noisy[0]._suptitle.get_text()
    assert np.allclose(_image_of(few[0]), _image_of(deterministic[0]))  # a fixed seed redraws the same images
    assert not np.allclose(_image_of(few[0]), _image_of(noisy[0]))  # eta changes them
    schedule = dl.make_schedule("linear", 1000)
    _, trajectory = dl.sample_loop(lambda x, t: torch.zeros_like(x), (1, 1, 8, 8), schedule, "ddim", 4,
                                   return_trajectory=True)
    first, last = ch05.trajectory_view(trajectory, 0), ch05.trajectory_view(trajectory, 3)
    assert "t = 999" in first.axes[0].get_title() and "t = 0" in last.axes[0].get_title()
    with pytest.raises(ValueError, match="index must lie in 0..3"):
        ch05.trajectory_view(trajectory, 4)


@pytest.fixture(scope="module")
def text_model():
    return dl.pretrained("mnist_text")


def test_caption_view_follows_the_text_and_explains_unknown_words(text_model):
    views = [ch07.caption_view(text, 3.0, *text_model, n=2, steps=4) for text in ("a thick seven", "a thin one")]
    assert '"a thick seven"' in views[0]._suptitle.get_text()
    assert not np.allclose(_image_of(views[0]), _image_of(views[1]))
    message = ch07.caption_view("a purple seven", 3.0, *text_model, n=2, steps=4)
    assert not message.axes and "unknown word(s) ['purple']" in message.texts[0].get_text()


def test_attention_maps_are_weights_over_the_caption(text_model):
    image, words, maps = ch07.attention_maps(*text_model, "a thick slanted seven", steps=3)
    assert image.shape == (1, 28, 28) and words == ["<start>", "a", "thick", "slanted", "seven"]
    assert sorted(maps) == [7, 14] and maps[14].shape == (5, 14, 14)
    assert torch.allclose(maps[14].sum(0), torch.ones(14, 14), atol=1e-4)  # the caption has no padding to share
    assert len(ch07.attention_figure(image, words, maps[7], "x").axes) == 6


def test_caption_sets_hold_each_digit_out_once_and_scores_are_fractions(text_model):
    sets = ch07.caption_sets()
    assert len(sets["held out"]) == 10 and len(sets["seen"]) == 30
    assert "a thin upright zero" in sets["held out"] and "a thick upright zero" in sets["seen"]
    classifier, _ = dl.pretrained("mnist_classifier")
    scores = ch07.caption_scores(*text_model, classifier, sets["held out"][:2], 2, 3.0, steps=3)
    assert scores["n"] == 4 and all(0 <= scores[k] <= 1 for k in ("digit_accuracy", "thickness", "slant"))


def test_inpaint_view_keeps_the_known_half():
    images = dl.load_mnist(train=False)[0][:3]
    uncond, cond = dl.pretrained("mnist_uncond"), dl.pretrained("mnist_cond")
    view = ch07.inpaint_view("left", 1, None, images, uncond, cond, steps=3, n=2)
    grid = _image_of(view, 2)  # the first completion
    original = (images[1, 0].numpy() + 1) / 2
    assert np.allclose(grid[:, 14:], original[:, 14:], atol=1e-6) and not np.allclose(grid, original)
    assert "asked for a 4" in ch07.inpaint_view("top", 0, 4, images, uncond, cond, steps=3, n=1)._suptitle.get_text()
    with pytest.raises(ValueError, match="index must lie in 0..2"):
        ch07.inpaint_view("top", 3, None, images, uncond, cond)


def _shifted_mask(k, mask_type):
    mask = torch.ones(k, k)
    mask[k // 2 + 1:] = 0
    mask[k // 2, k // 2 + 1:] = 0  # keeps the centre for "A" too
    return mask


CHECKS = {
    "01_autoregressive_vs_diffusion": [
        ("make_mask", exercises.check_raster_mask, _shifted_mask),
        ("colour_calls", exercises.check_pixelcnn_calls, 64 * 64),
    ],
    "02_forward_noising": [
        ("my_q_sample", exercises.check_q_sample,
         lambda x0, t, noise, ab: ab[t].reshape(-1, 1, 1, 1) * x0 + (1 - ab[t].reshape(-1, 1, 1, 1)) * noise),
        ("half_signal_step", exercises.check_half_signal_step, 500),
    ],
    "03_noise_prediction": [
        ("my_x0_from_eps", exercises.check_x0_from_eps,
         lambda xt, t, eps, ab: (xt - (1 - ab[t].reshape(-1, 1, 1, 1)) * eps) / ab[t].reshape(-1, 1, 1, 1)),
        ("my_ideal_x0", exercises.check_ideal_x0,
         lambda xt, t, data, ab: torch.softmax(-torch.cdist(xt, data) ** 2 / (2 * (1 - ab[t][:, None])), 1) @ data),
        ("zero_predictor_loss", exercises.check_zero_predictor_loss, 0.0),
    ],
    "04_training": [
        ("my_loss", exercises.check_training_loss, lambda model, x0, t, noise, ab: (model(
            ab[t][:, None].sqrt() * x0 + (1 - ab[t][:, None]).sqrt() * noise, t) - x0).pow(2).mean()),
        ("ema_horizon", exercises.check_ema_horizon, 1 - 0.999),
        ("my_flow_loss", exercises.check_flow_loss,  # the time used as it is drawn, not through the sigmoid
         lambda model, x0, z, noise: (model((1 - z[:, None]) * x0 + z[:, None] * noise, 1000 * z) - (noise - x0)).pow(2).mean()),
        ("my_train_loop", exercises.check_training_loop, _loop_without_ema_warmup),
    ],
    "05_ddim": [
        ("my_ddim_step", exercises.check_ddim_step,
         lambda xt, eps, ab, ab_prev: ab_prev.sqrt() * (xt - (1 - ab).sqrt() * eps) / ab.sqrt()),
        ("round_trip_calls", exercises.check_round_trip_calls, 50),
    ],
    "06_guidance": [
        ("my_timestep_embedding", exercises.check_timestep_embedding,  # sines before cosines
         lambda t, dim: torch.cat([(t[:, None] * 10000.0 ** (-torch.arange(dim // 2) / (dim // 2))).sin(),
                                   (t[:, None] * 10000.0 ** (-torch.arange(dim // 2) / (dim // 2))).cos()], 1)),
        ("my_guided_eps", exercises.check_guided_eps, lambda cond, uncond, w: cond + w * (cond - uncond)),
        # the chapter passes its own measured accuracy at w = 0; chance level stands in for it here
        ("unguided_accuracy_guess", functools.partial(exercises.check_unguided_accuracy, measured=0.1), 1.0),
        ("unguided_accuracy_guess", functools.partial(exercises.check_unguided_accuracy, measured=0.09), 0.0),
    ],
    "07_text_inpainting_solvers": [
        ("my_attention", exercises.check_attention, lambda q, k, v, keep: (q @ k.transpose(-2, -1)).softmax(-1) @ v),
        ("my_q_jump", exercises.check_q_jump, lambda x, ab_prev, ab, noise: ab.sqrt() * x + (1 - ab).sqrt() * noise),
    ],
    "08_flow_matching": [
        ("my_flow_pair", exercises.check_flow_pair,  # s not reshaped: wrong broadcasting, and the velocity reversed
         lambda x0, eps, s: ((1 - s.reshape(-1, 1, 1, 1)) * x0 + s.reshape(-1, 1, 1, 1) * eps, x0 - eps)),
        ("my_eps_x0", exercises.check_eps_from_velocity, lambda x_s, v, s: (x_s + s * v, x_s - (1 - s) * v)),
        ("reflow_pair_calls", exercises.check_reflow_calls, 6000 * 36),  # 2N calls: the last step's correction counted
    ],
    "09_few_steps": [
        ("my_target", exercises.check_progressive_target, lambda v, x, s, s_next: v(x, s)),
        ("teacher_calls", exercises.check_distillation_calls, 5 * 600 * 64),  # one teacher call per image
        ("my_sample", exercises.check_consistency_sampler,  # re-noised without scaling the image down
         lambda f, noise, times, fresh: f(f(noise, 1.0) + times[1] * fresh[0], times[1])),
    ],
    "10_latent_diffusion": [
        ("my_kl", exercises.check_kl, lambda mu, logvar: (mu ** 2 + logvar.exp() - 1 - logvar).mean()),  # no 1/2
        ("my_patchify", exercises.check_patchify,  # patches in column order
         lambda x, p: x.reshape(2, 4, 4, p, 4, p).permute(0, 4, 2, 1, 3, 5).reshape(2, 16, 16)),
        ("images_through_denoiser", exercises.check_pipeline_calls, 19 * 8),  # guidance's second branch forgotten
    ],
    "11_one_step_from_scratch": [
        ("my_target", exercises.check_meanflow_target,  # d held still: r moves with s
         lambda u, x, s, d, v: v - d[:, None] * torch.func.jvp(u, (x, s, d), (v, torch.ones_like(s),
                                                                            torch.zeros_like(d)))[1]),
        ("my_sample", exercises.check_meanflow_sampler,  # r and s swapped: the interval's length comes out negative
         lambda u, noise, times: _euler_with(lambda x, s, r: u(x, s, r), noise, times)),
        ("gaussian_average", exercises.check_gaussian_average_velocity, 1.0),  # the velocity at s = 1 alone
    ],
}


def _euler_with(ask, x, times):
    """Jumps x - (s - r) ask(x, s, r) along the times."""
    for s, r in zip(times[:-1], times[1:]):
        x = x - (s - r) * ask(x, s, r)
    return x


@pytest.mark.parametrize("stem,name,check,wrong", [(stem, *row) for stem, rows in CHECKS.items() for row in rows],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_exercise_checks_pass_reference_and_fail_wrong_answers(stem, name, check, wrong, capsys):
    reference = solutions(stem)[name]
    assert check(reference) is True, f"the reference solution of {name} fails its own check"
    assert "PASS" in capsys.readouterr().out
    assert check(wrong) is False
    assert "NOT YET" in capsys.readouterr().out


def test_checks_turn_a_stub_into_a_hint(capsys):
    def stub(*args):
        raise NotImplementedError

    assert exercises.check_q_sample(stub) is False
    assert "replace the stub" in capsys.readouterr().out


def test_chapter_8_steps_view_draws_paths_and_samples_at_the_chosen_steps():
    flow, _ = ch08.train_moons("flow", steps=50)
    mnist = {"uncond": dl.pretrained("mnist_uncond")}
    data = dl.make_toy("moons", 100)
    one, two = (ch08.steps_view(k, {"flow": flow}, mnist, data, n_paths=5, n_images=2) for k in (1, 2))
    lines = [ax for ax in one.axes if ax.lines]
    assert len(lines) == 1 and all(len(line.get_xdata()) == 2 for line in lines[0].lines)  # one step: start, end
    assert all(len(line.get_xdata()) == 3 for line in [ax for ax in two.axes if ax.lines][0].lines)
    images = [ax.images[0].get_array() for ax in one.axes if ax.images]
    assert len(images) == 2 and not np.allclose(images[0], images[1])


def test_chapter_9_side_by_side_puts_each_model_in_a_row_and_skips_missing_students():
    teacher, info = dl.pretrained("mnist_uncond")
    models = {"ddim": (teacher, info, "ddim"), "students": {4: (teacher, info, "euler")}}
    fig = ch09.side_by_side(2, models, n=3)
    assert len([ax for ax in fig.axes if ax.images]) == 3  # the students have no 2-step model: one row
    fig = ch09.side_by_side(4, models, n=3)
    assert len([ax for ax in fig.axes if ax.images]) == 6
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels[0].startswith("ddim") and labels[1].startswith("students")


def test_chapter_10_pipeline_view_draws_eight_samples_and_image_to_image_starts_from_the_sources():
    model, info = dl.pretrained("mnist_latent_mmdit")
    sources = dl.load_mnist(train=False)[0][:2]
    fig, seconds = ch10.pipeline_view(model, info, "a seven", 3.0, n=2, steps=2)
    assert len([ax for ax in fig.axes if ax.images]) == 2 and seconds > 0 and "'a seven'" in fig._suptitle.get_text()
    near, _ = ch10.pipeline_view(model, info, "a seven", 3.0, source=sources, strength=0.1, n=2, steps=2)
    far, _ = ch10.pipeline_view(model, info, "a seven", 3.0, source=sources, strength=0.9, n=2, steps=2)
    original = (sources[0, 0].numpy() + 1) / 2
    near_gap, far_gap = (np.abs(_image_of(f) - original).mean() for f in (near, far))
    assert near_gap < far_gap and "strength 0.10" in near._suptitle.get_text()
    negative, _ = ch10.pipeline_view(model, info, "a seven", 3.0, negative="a thick seven", n=2, steps=2)
    assert "not 'a thick seven'" in negative._suptitle.get_text()
    assert not np.allclose(_image_of(negative), _image_of(fig))


def test_chapter_10_interpolation_ends_at_the_two_digits():
    vae, _ = dl.pretrained("mnist_vae")
    a, b = dl.load_mnist(train=False)[0][:2]
    pixels, latents = ch10.interpolation(vae, 1.3, a, b, steps=5)
    assert torch.allclose(pixels[0], a) and torch.allclose(pixels[-1], b) and torch.allclose(pixels[2], (a + b) / 2)
    ends = dl.autoencoder.decode_latents(vae, dl.autoencoder.encode_images(vae, torch.stack([a, b])))
    assert torch.allclose(latents[[0, -1]], ends, atol=1e-5)
    assert not torch.allclose(latents[2], pixels[2], atol=0.1)  # the latent middle is not the double exposure


def test_chapter_11_jumps_move_each_point_by_the_interval_times_its_average_velocity():
    meanflow, _ = ch08.train_moons("meanflow", steps=20)
    g = torch.Generator().manual_seed(0)
    x0, noise = dl.make_toy("moons", 50, g), torch.randn(50, 2, generator=g)
    x_s, landed = ch11.jumps(meanflow, x0, noise, 0.25, 0.75)
    with torch.no_grad():  # the network is told (s, s - r) = (0.75, 0.5)
        u = meanflow(x_s, torch.tensor([[0.75, 0.5]]).expand(50, 2))
    assert torch.allclose(x_s, 0.25 * x0 + 0.75 * noise) and torch.allclose(landed, x_s - 0.5 * u)
    with pytest.raises(ValueError, match="choose r below s"):
        ch11.jumps(meanflow, x0, noise, 0.5, 0.5)
    fig = ch11.field_view(meanflow, x0, noise, 0.25, 0.75, arrows=7)
    assert len(fig.axes[1].texts) == 7 and "r = 0.25" in fig.axes[1].get_title()


def test_chapter_11_steps_view_samples_every_model_at_the_chosen_steps():
    meanflow, info = ch08.train_moons("meanflow", steps=20)
    data = dl.make_toy("moons", 100)
    fig = ch11.steps_view(3, {"a": (meanflow, info, "meanflow"), "b": (meanflow, info, "euler")}, data, n=40)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 2 and "meanflow-3" in titles[0] and "euler-3" in titles[1]
    one = ch11.steps_view(1, {"a": (meanflow, info, "meanflow")}, data, n=40)
    points = lambda f: f.axes[0].collections[1].get_offsets()  # noqa: E731 - the samples, drawn over the data
    assert points(one).shape == (40, 2) and not np.allclose(points(one), points(fig))


def test_checks_accept_an_answer_in_another_correct_form(capsys):
    """A right answer written another way passes: the half-signal step as the tensor or numpy integer the chapter's
    own hint computes, the teacher's calls counted on whole batches, the loss as the squared norm the text writes
    (summed over coordinates, not averaged)."""
    index = (dl.make_schedule("linear", 1000).alpha_bars < 0.5).nonzero()[0]
    assert exercises.check_half_signal_step(index) and exercises.check_half_signal_step(np.int64(int(index)))
    assert not exercises.check_half_signal_step(index.float() + 0.5)
    assert exercises.check_distillation_calls(6000) and not exercises.check_distillation_calls(3000)
    summed = lambda model, x0, t, noise, ab: (model(  # noqa: E731
        ab[t][:, None].sqrt() * x0 + (1 - ab[t][:, None]).sqrt() * noise, t) - noise).pow(2).sum(1).mean()
    assert exercises.check_training_loss(summed)
    assert "summed over the 2 coordinates" in capsys.readouterr().out
