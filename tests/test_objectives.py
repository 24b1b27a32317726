"""The objectives table, and the objective added through it alone: consistency training without a teacher ("ct")."""

import dataclasses
import json

import pytest
import torch

import diffusion_lib as dl
from diffusion_lib.__main__ import build_parser
from diffusion_lib.objectives import (CT_GRID, CT_GROWTH, OBJECTIVES, consistency_training_loss, ct_grid, is_flow,
                                      objective_of, ot_pairing)


def test_ct_loss_compares_neighbouring_times_on_the_same_noise():
    """With v = 0, f(x, s) = x, so the loss is ||x_s - x_r||^2 = (s - r)^2 ||eps - x_0||^2 with s - r = 1 / N exactly:
    one grid step. A pair two steps apart, or on different noise, gives another number."""
    torch.manual_seed(0)
    x0, noise = torch.randn(64, 2), torch.randn(64, 2)
    n = torch.randint(1, CT_GRID + 1, (64,)).float()
    still = lambda x, t, labels=None: torch.zeros_like(x)
    want = ((noise - x0) ** 2).mean() / CT_GRID**2
    assert consistency_training_loss(still, x0, n, noise) == pytest.approx(float(want), rel=1e-5)


def test_ct_loss_vanishes_for_the_exact_consistency_function():
    """For one-point data x*, v(x, s) = (x - x*) / s is the exact velocity and f(x, s) = x* at every s: every pair
    agrees (at n = 1 the target is f(x_0, 0) = x_0 = x*). A network one grid step wrong does not: its loss is small
    (neighbours still nearly agree) but five orders of magnitude above round-off."""
    x_star = torch.tensor([[0.5, -1.0]])
    exact = lambda x, t, labels=None: (x - x_star) / (t / 1000).clamp(min=1e-12)[:, None]
    x0, noise = x_star.expand(16, 2), torch.randn(16, 2)
    n = torch.arange(1, 17).float()
    assert consistency_training_loss(exact, x0, n, noise) < 1e-10
    shifted = lambda x, t, labels=None: exact(x, t + 1000 / CT_GRID)  # answers as if one step noisier
    assert consistency_training_loss(shifted, x0, n, noise) > 1e-6


def test_ct_models_sample_in_one_call_closer_to_the_data_than_a_flow_models_one_euler_step():
    """Trained for the same steps on two moons, the teacherless consistency model's one network call lands nearer
    the data (mean distance to the nearest of 2,000 points) than the flow model's one Euler step, which lands on
    the blurred mean of the data (chapter 8) -- and both nearer than the noise they start from."""
    data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(1))
    distance = lambda x: torch.cdist(x, data).min(1).values.mean().item()
    one_call = {}
    for objective in ("ct", "flow"):
        config = dl.TrainConfig(data="moons", objective=objective, steps=300, batch_size=256, lr=3e-3, seed=0,
                                save_every=10**6, model={"hidden": 64, "layers": 2})
        result = dl.train(config, progress=False)
        info = config.info()
        samples, _ = dl.generate(result.ema_model, info, 2000, None if objective == "ct" else "euler", 1, seed=0)
        one_call[objective] = distance(samples)
    assert info["prediction"] == "flow" and is_flow(info)  # the network outputs a velocity on the straight path
    assert one_call["ct"] < 0.8 * one_call["flow"], one_call
    assert one_call["ct"] < 0.9 * distance(torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))), one_call


def test_ct_is_an_objective_everywhere_an_objective_is_named():
    config = dl.TrainConfig(data="moons", objective="ct", steps=1)
    assert config.info()["objective"] == "ct" and objective_of(config.info()) is OBJECTIVES["ct"]
    assert dl.pipeline.default_sampler(config.info()) == ("consistency", 1)
    args = build_parser().parse_args(["train", "--data", "moons", "--objective", "ct", "--steps", "1", "--out", "x"])
    assert args.objective == "ct"
    with pytest.raises(ValueError, match="prediction 'eps' is a target of objective ddpm"):
        dl.TrainConfig(data="moons", objective="ct", prediction="eps")



def test_ct_grid_doubles_at_equal_stages_of_training():
    """4 to 128 is six grids (4, 8, ..., 128); over 600 steps each holds for 100 steps, the first from step 0, the
    last to the end and beyond (a run resumed past --steps keeps the finest)."""
    grids = [ct_grid(step, 600, (4, 128)) for step in range(600)]
    assert grids[0] == 4 and grids[99] == 4 and grids[100] == 8 and grids[499] == 64 and grids[500] == 128
    assert [grids.count(n) for n in (4, 8, 16, 32, 64, 128)] == [100] * 6
    assert ct_grid(900, 600, (4, 128)) == 128 and ct_grid(0, 600, (32, 32)) == ct_grid(599, 600, (32, 32)) == 32
    assert [ct_grid(step, 300, (4, 100)) for step in (0, 59, 60, 299)] == [4, 4, 8, 64]  # 4..64, then 100 is not reached


def test_ct_draw_takes_n_on_the_grid_of_its_step_and_the_loss_reads_that_grid():
    """Early in a run the draw's n lie in 1..4, late in 1..128; the loss with v = 0 is (1 / N)^2 ||eps - x_0||^2 per
    example, so a batch on grid 4 and one on grid 128 differ by 32^2 on the same pairs."""
    config = dl.TrainConfig(data="moons", objective="ct", steps=600)
    assert config.ct_grid == CT_GROWTH == (4, 128)
    generator = torch.Generator().manual_seed(0)
    early, late = (OBJECTIVES["ct"].draw(4096, generator, config, step) for step in (0, 599))
    assert set(early[:, 1].tolist()) == {4.0} and set(late[:, 1].tolist()) == {128.0}
    assert early[:, 0].min() == 1 and early[:, 0].max() == 4 and late[:, 0].max() == 128
    x0, noise = torch.randn(64, 2), torch.randn(64, 2)
    still = lambda x, t, labels=None: torch.zeros_like(x)
    n = torch.ones(64)
    coarse, fine = (OBJECTIVES["ct"].loss(still, x0, torch.stack([n, torch.full((64,), N)], 1), noise, None, config,
                                          None) for N in (4.0, 128.0))
    assert float(coarse / fine) == pytest.approx(32**2, rel=1e-5)
    assert float(fine) == pytest.approx(float(((noise - x0) ** 2).mean()) / 128**2, rel=1e-5)


def test_ct_grid_is_checked_stored_runs_before_it_read_as_the_fixed_grid_and_the_cli_sets_it():
    with pytest.raises(ValueError, match="1 <= start <= end"):
        dl.TrainConfig(data="moons", objective="ct", ct_grid=(64, 8))
    with pytest.raises(ValueError, match="for objective flow"):
        dl.TrainConfig(data="moons", objective="flow", ct_grid=(4, 128))
    assert dl.TrainConfig(data="moons", objective="flow").ct_grid is None
    with pytest.raises(ValueError, match="two whole numbers"):
        dl.TrainConfig(data="moons", objective="ct", ct_grid=32)
    assert dl.TrainConfig(data="moons", objective="ct", ct_grid=[8, 64]).ct_grid == (8, 64)  # a list, as JSON gives
    old = {k: v for k, v in dataclasses.asdict(dl.TrainConfig(data="moons", objective="ct")).items() if k != "ct_grid"}
    assert dl.TrainConfig.from_stored(old).ct_grid == (CT_GRID, CT_GRID)
    stored = json.loads(json.dumps(dataclasses.asdict(dl.TrainConfig(data="moons", objective="ct", ct_grid=(2, 64)))))
    assert dl.TrainConfig.from_stored(stored).ct_grid == (2, 64)  # a JSON list read back as the tuple
    args = build_parser().parse_args(["train", "--data", "moons", "--objective", "ct", "--ct-grid", "2", "64", "--steps", "1",
                                      "--out", "x"])
    assert args.ct_grid == [2, 64]


# ------------------------------------------------------------------ minibatch optimal transport ("flow-ot")


def test_ot_pairing_is_the_cheapest_of_all_pairings_and_a_permutation():
    """For a batch of 6, the pairing's total squared distance equals the least over all 720 permutations (brute force),
    every noise row is used once, and the identity pairing it replaces costs more."""
    import itertools

    torch.manual_seed(0)
    x0, noise = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    paired = ot_pairing(x0, noise)
    cost = lambda n: ((x0 - n) ** 2).sum().item()
    best = min(cost(noise[list(p)]) for p in itertools.permutations(range(6)))
    assert cost(paired) == pytest.approx(best, rel=1e-6) and cost(noise) > best
    assert sorted(map(tuple, paired.flatten(1).tolist())) == sorted(map(tuple, noise.flatten(1).tolist()))


def test_ot_lines_that_pass_close_move_alike_where_independent_lines_need_not():
    """Chapter 8's lemma: swapping the noise of lines i and j, a distance delta apart at time s, changes the total
    squared length by -2 s (1 - s) ||d_i - d_j||^2 + 2 ||delta||^2 + 2 (2 s - 1) delta . (d_i - d_j) (d = x0 - eps),
    so in an optimal pairing s (1 - s) ||d_i - d_j||^2 <= ||delta||^2 + |2 s - 1| ||delta|| ||d_i - d_j|| for every
    two lines at every s. Checked: the swap identity on two lines; the inequality for all pairs of 64 OT lines on two
    moons over 99 times; and its failure for the same points paired independently."""
    x0 = dl.make_toy("moons", 64, torch.Generator().manual_seed(0)).double()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s, d_i, d_j = 0.3, x0[0] - noise[0], x0[1] - noise[1]
    delta = (0.7 * x0[0] + 0.3 * noise[0]) - (0.7 * x0[1] + 0.3 * noise[1])
    swapped = ((x0[0] - noise[1]) ** 2).sum() + ((x0[1] - noise[0]) ** 2).sum()
    change = -2 * s * (1 - s) * ((d_i - d_j) ** 2).sum() + 2 * (delta**2).sum() + 2 * (2 * s - 1) * delta @ (d_i - d_j)
    assert (swapped - (d_i**2).sum() - (d_j**2).sum()).item() == pytest.approx(change.item(), rel=1e-9)

    def worst_violation(eps):  # the largest left side minus right side of the inequality, over pairs and times
        spread = torch.cdist(x0 - eps, x0 - eps)  # ||d_i - d_j|| for every pair: the same at every s
        worst = -float("inf")
        for s in torch.linspace(0, 1, 101, dtype=torch.float64)[1:-1]:
            m = (1 - s) * x0 + s * eps
            gap = torch.cdist(m, m)  # ||delta|| for every pair at this s
            lhs, rhs = s * (1 - s) * spread**2, gap**2 + abs(2 * s - 1) * gap * spread
            worst = max(worst, (lhs - rhs).max().item())
        return worst

    assert worst_violation(ot_pairing(x0, noise)) <= 1e-9
    assert worst_violation(noise) > 0.1


def test_flow_ot_trains_straighter_paths_on_two_moons_than_flow():
    """The same steps and seed on two moons: the OT-paired flow's Euler-64 paths are much straighter (S, chapter 8)."""
    from diffusion_lib.course.ch08 import flow_paths, train_moons
    from diffusion_lib.distill import straightness

    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(3))
    S = {name: straightness(*flow_paths(train_moons(name, 400)[0], noise, 64)) for name in ("flow", "flow-ot")}
    assert S["flow-ot"] < S["flow"] / 3, S


def test_flow_ot_is_an_objective_everywhere_an_objective_is_named():
    config = dl.TrainConfig(data="moons", objective="flow-ot", steps=1)
    assert config.info()["objective"] == "flow-ot" and is_flow(config.info())
    assert dl.pipeline.default_sampler(config.info()) == ("heun", 18)
    args = build_parser().parse_args(["train", "--data", "moons", "--objective", "flow-ot", "--steps", "1", "--out", "x"])
    assert args.objective == "flow-ot"


# ------------------------------------------------------------------ MeanFlow ("meanflow")


class _Bumpy(torch.nn.Module):
    """A smooth network of (x, (t, t - r)) that is nonlinear in all three, so its derivative along the path is not
    trivial; `config.interval` marks it as an interval network for `denoisers.Denoiser`."""

    config = type("Config", (), {"interval": True})()

    def forward(self, x, times, labels=None):
        t, gap = times[:, :1], times[:, 1:]
        return torch.sin(2 * x + 3 * t) * (1 + gap) + x**2 * t


def test_meanflow_target_is_v_minus_the_interval_times_the_derivative_along_the_path():
    """The loss equals mean (u - (v - (t - r) du/dt))^2 with du/dt by central differences of u(x + h v, r, t + h):
    the JVP's tangent is (v, 0, 1). A tangent that also moved r, or a derivative one step of t off, gives another."""
    from diffusion_lib.objectives import MEANFLOW_SHARE, meanflow_loss
    from diffusion_lib.continuous import LOGIT_MEAN, LOGIT_STD

    torch.manual_seed(0)
    x0, noise = torch.randn(256, 2, dtype=torch.float64), torch.randn(256, 2, dtype=torch.float64)
    draw = torch.cat([torch.randn(256, 2), torch.rand(256, 1)], dim=1).double()
    net = _Bumpy()
    ends = torch.sigmoid(LOGIT_MEAN + LOGIT_STD * draw[:, :2])
    jump = draw[:, 2] < MEANFLOW_SHARE  # an interval's ends are the two draws; r = t is the first draw alone
    t = torch.where(jump, ends.max(1).values, ends[:, 0])
    r = torch.where(jump, ends.min(1).values, ends[:, 0])
    assert 0 < (r < t).double().mean() < 1  # both kinds of example are in the batch
    x, v = (1 - t)[:, None] * x0 + t[:, None] * noise, noise - x0

    def expected(dr):  # dr: how fast r moves along the tangent (0 is right)
        u = lambda h: net(x + h * v, dl.denoisers.meanflow_times(t + h, r + dr * h))
        du_dt = (u(1e-6) - u(-1e-6)) / 2e-6
        return ((u(0.0) - (v - (t - r)[:, None] * du_dt)) ** 2).mean().item()

    got = meanflow_loss(net, x0, draw, noise).item()
    assert got == pytest.approx(expected(0.0), rel=1e-7)
    assert abs(got - expected(1.0)) > 1e-3 * got


def test_meanflow_adaptive_weight_divides_each_examples_error_by_its_own_held_fixed():
    """With power p the loss is mean_i e_i / (e_i + c)^p over examples i (e_i: that example's mean squared error),
    and the weight is held fixed: the gradient is mean_i grad(e_i) / (e_i + c)^p, not the gradient of the ratio."""
    from diffusion_lib.objectives import MEANFLOW_C, meanflow_loss

    class Scaled(_Bumpy):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x, times, labels=None):
            return self.a * super().forward(x, times, labels)

    torch.manual_seed(1)
    x0, noise = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    draw = torch.cat([torch.randn(64, 2), torch.rand(64, 1)], dim=1).double()
    net = Scaled()
    plain = meanflow_loss(net, x0, draw, noise)
    per_example = []  # each example's error alone, through the same loss (a batch of one)
    for i in range(64):
        net.zero_grad()
        e = meanflow_loss(net, x0[i:i + 1], draw[i:i + 1], noise[i:i + 1])
        e.backward()
        per_example.append((e.item(), net.a.grad.item()))
    e, grad = torch.tensor(per_example, dtype=torch.float64).T
    assert plain.item() == pytest.approx(e.mean().item(), rel=1e-9)
    for p in (0.5, 1.0):
        net.zero_grad()
        weighted = meanflow_loss(net, x0, draw, noise, power=p)
        weighted.backward()
        assert weighted.item() == pytest.approx((e / (e + MEANFLOW_C) ** p).mean().item(), rel=1e-9)
        assert net.a.grad.item() == pytest.approx((grad / (e + MEANFLOW_C) ** p).mean().item(), rel=1e-9)
        assert abs(net.a.grad.item() - (grad * ((1 - p) * e + MEANFLOW_C) / (e + MEANFLOW_C) ** (p + 1)).mean().item()
                   ) > 1e-3 * abs(net.a.grad.item())  # what the gradient of the ratio itself would be


def test_meanflow_share_sets_how_many_examples_take_the_jvp_and_a_resumed_run_may_change_it(tmp_path):
    """share 0 is flow matching exactly (the same loss as `flow_loss` on the same draws); a run trained with share 0
    resumes with another share (a curriculum), while another change of settings is still refused."""
    from diffusion_lib.continuous import flow_loss
    from diffusion_lib.objectives import meanflow_loss

    net = _Bumpy()
    torch.manual_seed(2)
    x0, noise = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    draw = torch.cat([torch.randn(64, 2), torch.rand(64, 1)], dim=1).double()
    flow = flow_loss(lambda x, s, labels=None: net(x, torch.stack([s / 1000, 0 * s], 1)), x0, draw[:, 0], noise)
    assert meanflow_loss(net, x0, draw, noise, share=0.0).item() == pytest.approx(flow.item(), rel=1e-9)
    assert meanflow_loss(net, x0, draw, noise, share=1.0).item() != pytest.approx(flow.item(), rel=1e-3)
    first = dl.TrainConfig(data="moons", objective="meanflow", steps=3, batch_size=8, meanflow_share=0.0)
    dl.train(first, out_dir=tmp_path, progress=False)
    resumed = dl.train(dataclasses.replace(first, steps=5, meanflow_share=0.5), out_dir=tmp_path, progress=False)
    assert resumed.step == 5
    with pytest.raises(dl.CheckpointError, match="other settings"):
        dl.train(dataclasses.replace(first, steps=7, lr=1e-4), out_dir=tmp_path, progress=False)


def test_meanflow_power_is_one_on_images_none_on_points_and_zero_for_runs_stored_before_it():
    assert dl.TrainConfig(data="mnist", objective="meanflow").meanflow_power == 1.0
    assert dl.TrainConfig(data="moons", objective="meanflow").meanflow_power == 0.0
    assert dl.TrainConfig(data="mnist", objective="flow").meanflow_power is None
    assert dl.TrainConfig(data="mnist", objective="meanflow").meanflow_share == 0.25
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        dl.TrainConfig(data="mnist", objective="meanflow", meanflow_share=1.5)
    old = {k: v for k, v in dataclasses.asdict(dl.TrainConfig(objective="meanflow")).items() if k != "meanflow_power"}
    assert dl.TrainConfig.from_stored(old).meanflow_power == 0.0
    with pytest.raises(ValueError, match="objective meanflow"):
        dl.TrainConfig(data="mnist", objective="flow", meanflow_power=1.0)


def test_meanflow_loss_runs_under_bf16_autocast_as_training_does_on_bf16_hardware():
    """Training wraps the loss in bfloat16 autocast where the CPU has bf16 (`training.uses_bf16`); forward-mode AD
    has no autocast rules, so the JVP must run in float32 inside it (it raised a dtype error before)."""
    from diffusion_lib.objectives import meanflow_loss

    net = dl.UNet(dl.UNetConfig(base_channels=8, groups=4, interval=True, image_size=8))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    draw = torch.cat([torch.randn(8, 2, generator=g), torch.linspace(0, 1, 8)[:, None]], dim=1)  # 2 of 8 jump
    plain = meanflow_loss(net, x0, draw, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = meanflow_loss(net, x0, draw, noise)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(plain.item(), rel=0.05)


def test_meanflow_sampling_of_the_exact_average_velocity_returns_the_point_in_any_number_of_steps():
    """For one-point data x*, every path is straight, so the average velocity over any [r, t] is (x - x*) / t: one
    jump or four land on x*. A flow model's one Euler step from the same network is the same jump; the sampler asks
    with each step's end (`Level.to`), which an answer of the wrong interval would miss."""
    x_star = torch.tensor([[0.5, -1.0]], dtype=torch.float64)

    class Exact(torch.nn.Module):
        config = type("Config", (), {"interval": True})()

        def forward(self, x, times, labels=None):
            return (x - x_star) / times[:, :1]

    class HalfWrong(Exact):  # right only for intervals of length 0
        def forward(self, x, times, labels=None):
            return super().forward(x, times) * (1 + times[:, 1:])

    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (1, 4):
        levels = dl.samplers.flow_levels(steps)
        out = dl.samplers.sample_meanflow(dl.denoisers.Denoiser(Exact(), "flow"), noise, levels)
        assert torch.allclose(out, x_star.expand(8, 2), atol=1e-12), steps
        wrong = dl.samplers.sample_meanflow(dl.denoisers.Denoiser(HalfWrong(), "flow"), noise, levels)
        assert not torch.allclose(wrong, x_star.expand(8, 2), atol=1e-3), steps


def test_only_an_interval_network_jumps_and_it_takes_an_interval():
    flow = dl.TrainConfig(data="moons", objective="flow", steps=1)
    model = dl.train(flow, progress=False).ema_model
    with pytest.raises(ValueError, match="only a MeanFlow network"):
        dl.generate(model, flow.info(), 4, "meanflow", 2)
    config = dl.TrainConfig(data="moons", objective="meanflow", steps=1)
    net = dl.train(config, progress=False).ema_model
    assert net.config.interval
    with pytest.raises(ValueError, match=r"t must have shape \(4, 2\), a time and an interval length"):
        net(torch.randn(4, 2), torch.rand(4))
    image = dl.UNet(dl.UNetConfig(base_channels=8, groups=4, interval=True))
    with pytest.raises(ValueError, match=r"t must have shape \(2, 2\)"):
        image(torch.randn(2, 1, 8, 8), torch.rand(2))
    assert image(torch.randn(2, 1, 8, 8), torch.rand(2, 2)).shape == (2, 1, 8, 8)


def test_meanflow_models_sample_in_one_call_closer_to_the_data_than_a_flow_models_one_euler_step():
    """Trained for the same steps on two moons, the MeanFlow model's one call lands nearer the data (mean distance
    to the nearest of 2,000 points) than the flow model's one Euler step, which lands near the data's mean; its
    instantaneous velocity (intervals of length 0) still samples with Euler."""
    data = dl.make_toy("moons", 2000, torch.Generator().manual_seed(1))
    distance = lambda x: torch.cdist(x, data).min(1).values.mean().item()
    found = {}
    for objective, sampler in (("meanflow", "meanflow"), ("flow", "euler")):
        config = dl.TrainConfig(data="moons", objective=objective, steps=300, batch_size=256, lr=2e-3, seed=0,
                                save_every=10**6)
        model = dl.train(config, progress=False).ema_model
        found[objective] = distance(dl.generate(model, config.info(), 2000, sampler, 1, seed=0)[0])
        if objective == "meanflow":
            found["meanflow, euler 16"] = distance(dl.generate(model, config.info(), 2000, "euler", 16, seed=0)[0])
    assert found["meanflow"] < 0.6 * found["flow"], found
    assert found["meanflow, euler 16"] < 0.6 * found["flow"], found


def test_meanflow_is_an_objective_everywhere_an_objective_is_named():
    config = dl.TrainConfig(data="moons", objective="meanflow", steps=1)
    assert config.info()["objective"] == "meanflow" and is_flow(config.info())
    assert config.model_config()["interval"] is True
    assert dl.pipeline.default_sampler(config.info()) == ("meanflow", 1)
    args = build_parser().parse_args(["train", "--data", "moons", "--objective", "meanflow", "--steps", "1",
                                      "--out", "x"])
    assert args.objective == "meanflow"
    args = build_parser().parse_args(["sample", "--checkpoint", "x", "--n", "4", "--out", "y", "--sampler", "meanflow"])
    assert args.sampler == "meanflow"
    with pytest.raises(ValueError, match="objective meanflow trains a network told an interval of times"):
        dl.TrainConfig(data="mnist", objective="meanflow", arch="dit")
