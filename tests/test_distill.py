"""Fewer steps (`distill`): the three students' losses against closed forms, straightness, resuming, the CLI."""

import dataclasses

import pytest
import torch
from torch import nn

import diffusion_lib as dl
from diffusion_lib.__main__ import main
from diffusion_lib.course.ch08 import ddim_against_euler, flow_paths
from diffusion_lib.distill import (DistillConfig, consistency_fn, consistency_loss, consistency_sample, distill,
                                   progressive_target, straightness, student_files)
from diffusion_lib.pipeline import default_sampler


class Linear(nn.Module):
    """v(x, s) = a x: the flow ODE dx/ds = a x, whose Euler steps are known in closed form."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, label, labels=None):
        return self.a * x


class OnePoint(nn.Module):
    """The exact velocity E[eps - x_0 | x_s] = (x_s - x_0) / s when every data point is `point`: straight paths."""

    def __init__(self, point):
        super().__init__()
        self.point = point

    def forward(self, x, label, labels=None):
        s = (label / 1000).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - self.point) / s


def test_progressive_target_is_two_half_steps_of_euler():
    """Two Euler steps of h/2 on dx/ds = a x multiply x by (1 + a h / 2)^2; the target velocity makes one step do it."""
    a, x = 0.7, torch.randn(5, 3, dtype=torch.float64)
    s, s_next = torch.full((5,), 0.75, dtype=torch.float64), torch.full((5,), 0.5, dtype=torch.float64)
    h = -0.25
    expected = (x * (1 + a * h / 2) ** 2 - x) / h
    assert torch.allclose(progressive_target(Linear(a), x, s, s_next), expected, atol=1e-12)


def test_progressive_target_of_straight_paths_is_the_teacher_itself():
    point = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x, s = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    teacher = OnePoint(point)
    target = progressive_target(teacher, x, s, s - 0.25)
    assert torch.allclose(target, dl.continuous.flow_velocity(teacher, x, s), atol=1e-12)


def test_consistency_function_meets_the_boundary_condition_for_any_network():
    net = dl.MLPDenoiser(dl.MLPConfig())
    x = torch.randn(6, 2)
    assert torch.equal(consistency_fn(net, x, torch.zeros(6)), x)
    assert not torch.allclose(consistency_fn(net, x, torch.full((6,), 0.5)), x)


def test_consistency_loss_compares_the_heun_step_with_the_target_network():
    """With v = a x everywhere, f(x, s) = (1 - a s) x and one Heun step of h multiplies x by 1 + a h + (a h)^2 / 2."""
    a, N = 0.4, 8
    x0, noise = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    n = torch.tensor([8.0, 5.0, 1.0], dtype=torch.float64)
    s, s_prev = n / N, (n - 1) / N
    x = (1 - s)[:, None] * x0 + s[:, None] * noise
    h = (s_prev - s)[:, None]
    step = torch.where(s_prev[:, None] > 0, 1 + a * h + (a * h) ** 2 / 2, 1 + a * h)  # Euler on the last step
    goal = (1 - a * s_prev)[:, None] * step * x
    expected = (((1 - a * s)[:, None] * x - goal) ** 2).mean()
    net = Linear(a)
    assert consistency_loss(net, net, net, x0, noise, n, N).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_consistency_sampling_of_the_exact_one_point_flow_returns_the_point(steps):
    point = torch.tensor([[0.5, -2.0]])
    net = OnePoint(point)
    out = consistency_sample(lambda x, s: dl.continuous.flow_velocity(net, x, s), torch.randn(4, 2), steps,
                             torch.Generator().manual_seed(0))
    assert torch.allclose(out, point.expand(4, 2), atol=1e-5)


def test_straightness_of_a_line_and_of_a_parabola():
    times = torch.linspace(0, 1, 1001).tolist()
    line = [torch.tensor([[2 * t, -t]]) for t in times]
    assert straightness(line, times) == pytest.approx(0, abs=1e-12)
    # x(t) = (t, t^2): c = (1, 1), the velocity (1, 2t) strays by (0, 2t - 1); S = (1/3) / 2
    parabola = [torch.tensor([[t, t * t]], dtype=torch.float64) for t in times]
    assert straightness(parabola, times) == pytest.approx(1 / 6, rel=1e-4)
    with pytest.raises(ValueError, match="at least 3"):
        straightness(line[:2], times[:2])


@pytest.fixture(scope="module")
def moons_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    dl.train(dl.TrainConfig(data="moons", steps=800, batch_size=256, seed=0), folder, progress=False)
    return str(folder / "model.safetensors")


def test_ddim_on_a_flow_model_is_euler_at_the_same_noise_levels(moons_teacher):
    model, info = dl.load_model(moons_teacher)
    result = ddim_against_euler(model, info, steps=10)
    assert result["max_difference"] < 1e-4 * result["sample_scale"]


def test_reflow_straightens_the_teachers_paths(moons_teacher):
    teacher, _ = dl.load_model(moons_teacher)
    config = DistillConfig("reflow", moons_teacher, steps=600, batch_size=256, lr=1e-3, pairs=4000, pair_steps=32)
    student = distill(config, progress=False).ema_model
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(7))
    before, after = (straightness(*flow_paths(m, noise, 64)) for m in (teacher, student))
    assert after < 0.5 * before, (before, after)


def test_progressive_rounds_halve_the_steps_and_a_resumed_run_matches_one_that_was_not_stopped(moons_teacher, tmp_path):
    config = DistillConfig("progressive", moons_teacher, steps=6, teacher_steps=8, student_steps=2, save_every=4)
    whole = distill(config, tmp_path / "whole", progress=False)
    assert sorted(whole.students) == [2, 4] and whole.step == 12

    def stop(step, loss, result):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(config, tmp_path / "parts", progress=False, callback=stop)
    resumed = distill(config, tmp_path / "parts", progress=False)
    for a, b in zip(whole.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    files = student_files(tmp_path / "parts")
    assert sorted(files) == [2, 4]
    _, info = dl.load_model(files[4])
    assert default_sampler(info) == ("euler", 4) and info["distilled"]["method"] == "progressive"
    with pytest.raises(dl.CheckpointError, match="other settings"):
        distill(dataclasses.replace(config, lr=1e-3), tmp_path / "parts", progress=False)


def test_a_consistency_run_resumes_to_more_steps_like_one_that_ran_them_at_once(moons_teacher, tmp_path):
    config = DistillConfig("consistency", moons_teacher, steps=8, teacher_steps=8, save_every=4)
    whole = distill(dataclasses.replace(config, steps=12), tmp_path / "whole", progress=False)
    distill(config, tmp_path / "parts", progress=False)
    resumed = distill(dataclasses.replace(config, steps=12), tmp_path / "parts", progress=False)
    assert resumed.step == 12 and len(resumed.losses) == 12
    for a, b in zip(whole.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(dl.CheckpointError, match="other settings"):
        distill(dataclasses.replace(config, steps=16, target_decay=0.9), tmp_path / "parts", progress=False)


def test_distill_config_refuses_what_cannot_be_halved():
    with pytest.raises(ValueError, match="power of 2"):
        DistillConfig("progressive", teacher_steps=12, student_steps=1)
    with pytest.raises(ValueError, match="unknown method"):
        DistillConfig("shortcut")


def test_distill_cli_trains_a_student_that_samples_with_its_own_steps(moons_teacher, tmp_path, capsys):
    out = tmp_path / "cons"
    assert main(["distill", "--method", "consistency", "--teacher", moons_teacher, "--steps", "20",
                 "--teacher-steps", "8", "--out", str(out), "--quiet"]) == 0
    model, info = dl.load_model(out)
    assert default_sampler(info) == ("consistency", 1)
    assert main(["sample", "--checkpoint", str(out), "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    samples, _ = dl.generate(model, info, 5)  # the consistency sampler, one call
    net = lambda x, s: dl.continuous.flow_velocity(model, x, s)  # noqa: E731
    noise = torch.randn((5, 2), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(samples, noise - net(noise, torch.ones(5)), atol=1e-6)


def test_distill_cli_refuses_a_teacher_that_is_not_an_unconditional_flow_model(tmp_path, capsys):
    ddpm = tmp_path / "ddpm"
    dl.train(dl.TrainConfig(data="moons", steps=5, objective="ddpm"), ddpm, progress=False)
    assert main(["distill", "--method", "reflow", "--teacher", str(ddpm), "--steps", "5", "--out",
                 str(tmp_path / "x")]) == 1
    assert "must be a flow model" in capsys.readouterr().err
    assert main(["distill", "--method", "reflow", "--teacher", "mnist_cond", "--steps", "5", "--out",
                 str(tmp_path / "y")]) == 1
    assert "conditional" in capsys.readouterr().err
    assert main(["distill", "--method", "reflow", "--teacher", "no_such_model", "--steps", "5", "--out",
                 str(tmp_path / "z")]) == 1
    assert "no teacher" in capsys.readouterr().err


def test_bf16_sampling_is_close_to_float32_and_checked(moons_teacher):
    model, info = dl.load_model(moons_teacher)
    fp32, _ = dl.generate(model, info, 200, "euler", 8)
    bf16, _ = dl.generate(model, info, 200, "euler", 8, precision="bf16")
    assert bf16.dtype == torch.float32 and 0 < (fp32 - bf16).abs().max() < 0.2
    with pytest.raises(ValueError, match="fp32 or bf16"):
        dl.generate(model, info, 2, precision="fp16")
