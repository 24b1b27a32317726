"""Checks for the chapters' exercises: each prints a clear pass or a hint, and returns True or False.

A check compares the learner's answer with the library's own implementation (or with a
number the library computes), on inputs it draws itself, so no answer is stored here.
"""

from __future__ import annotations

import math

import torch

from ..forward import q_sample, x0_from_eps
from ..guidance import guided_eps_fn
from ..ideal import ideal_x0
from ..inpainting import q_jump
from ..pixelcnn import MaskedConv2d
from ..samplers import ddim_invert, ddim_step, sample_loop
from ..continuous import flow_loss
from ..models import build_model
from ..training import TrainConfig, diffusion_loss, load_training_data, train
from ..schedules import make_schedule
from ..text import attend
from ..unet import timestep_embedding


def _report(ok: bool, success: str, hint: str) -> bool:
    print(f"PASS: {success}" if ok else f"NOT YET: {hint}")
    return ok


NO_ANSWER = "no answer yet: replace None in the cell above with your answer, run it, then run this check"


def _call(fn, *args):
    """Run the learner's function; turn its exception into a hint instead of a traceback."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, "the function still raises NotImplementedError: replace the stub with your code"
    except Exception as error:  # noqa: BLE001 - any error in the learner's code becomes a hint
        return None, f"your function raised {type(error).__name__}: {error}"


def _compare(fn, args, expected, atol, shape_hint, success, hint, near_misses=()) -> bool:
    """Run `fn(*args)` and compare with `expected`; `near_misses` are (wrong result, its specific hint) pairs."""
    got, error = _call(fn, *args)
    if error:
        return _report(False, "", error)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return _report(False, "", shape_hint)
    if torch.allclose(got.to(expected.dtype), expected, atol=atol):
        return _report(True, success, "")
    for wrong, specific_hint in near_misses:
        if torch.allclose(got.to(expected.dtype), wrong, atol=atol):
            return _report(False, "", specific_hint)
    return _report(False, "", hint)


def _whole_number(answer) -> int | None:
    """`answer` as a Python int when it is a whole number in any form (an int, a one-element integer tensor or numpy
    integer, a float such as 279.0), else None."""
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if hasattr(answer, "item") and not isinstance(answer, (int, float)):  # numpy scalars
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return None
    return int(answer) if float(answer).is_integer() else None


# Chapter 1 -----------------------------------------------------------------------------

def check_raster_mask(make_mask) -> bool:
    """`make_mask(kernel_size, mask_type)` -> (k, k) tensor of 0s and 1s, as MaskedConv2d's mask."""
    for k in (3, 5, 7):
        for mask_type in ("A", "B"):
            mask, error = _call(make_mask, k, mask_type)
            if error:
                return _report(False, "", error)
            expected = MaskedConv2d(mask_type, 1, 1, k).mask[0, 0]
            if not isinstance(mask, torch.Tensor) or mask.shape != (k, k):
                return _report(False, "", f"make_mask({k}, {mask_type!r}) must return a ({k}, {k}) tensor")
            if torch.equal(mask.float(), expected):
                continue
            centre = k // 2
            if mask[centre + 1:].abs().sum() > 0:
                hint = "rows below the centre come later in raster order: they must be 0"
            elif mask_type == "A" and mask[centre, centre] != 0:
                hint = "mask 'A' (the first layer) must hide the centre pixel itself: it is the one being predicted"
            elif mask_type == "B" and mask[centre, centre] != 1:
                hint = "mask 'B' keeps the centre: in later layers that position holds only information from before it"
            else:
                hint = f"for kernel {k}, type {mask_type!r}: within the centre row, pixels right of the centre come later"
            return _report(False, "", hint)
    return _report(True, "your masks equal MaskedConv2d's for kernels 3, 5, 7 and types A and B", "")


def check_pixelcnn_calls(answer) -> bool:
    """Calls needed to sample one 64x64 RGB image when each colour value of each pixel is one step."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    expected = 64 * 64 * 3
    if answer == 64 * 64:
        return _report(False, "", "that counts pixels; a colour pixel holds more than one value, and each is its own step")
    return _report(answer == expected, f"{expected} calls: one per colour value, and it grows with the pixel count",
                   "count the values generated one after another: every number stored in the image is one call")


# Chapter 2 -----------------------------------------------------------------------------

def check_q_sample(my_q_sample) -> bool:
    """`my_q_sample(x0, t, noise, alpha_bars)` -> x_t, as `diffusion_lib.q_sample` (DDPM Eq. 4)."""
    schedule = make_schedule("linear", 1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 6, 6, generator=generator) * 2 - 1
    noise = torch.randn(4, 1, 6, 6, generator=generator)
    t = torch.tensor([0, 100, 500, 999])
    ab = schedule.alpha_bars.float()[t].reshape(-1, 1, 1, 1)
    return _compare(my_q_sample, (x0, t, noise, schedule.alpha_bars.float()), q_sample(x0, t, schedule, noise), 1e-5,
                    f"return a tensor of x0's shape {tuple(x0.shape)}; gather alpha_bars[t] and reshape it to "
                    "(B, 1, 1, 1) so it broadcasts over each image",
                    "your q_sample matches the library's for t = 0, 100, 500 and 999",
                    "x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise, with alpha_bar_t taken at each image's own t",
                    [(ab * x0 + (1 - ab) * noise, "the coefficients are square roots: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps")])


def check_half_signal_step(answer) -> bool:
    """The first t at which the linear schedule's alpha-bar drops below 0.5 (signal and noise variance equal)."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    alpha_bars = make_schedule("linear", 1000).alpha_bars
    expected = int((alpha_bars < 0.5).nonzero()[0])
    answer = _whole_number(answer)
    if answer == 500:
        return _report(False, "", "the betas grow with t, so alpha-bar falls faster than linearly: it is not halfway")
    close = answer is not None and abs(answer - expected) <= 2
    return _report(close, f"t = {expected}: alpha-bar_t = {alpha_bars[expected]:.3f}, so {expected / len(alpha_bars):.0%} "
                          "of the way into the chain the noise already carries half the variance",
                   "after your guess, compute it from the linear schedule's alpha_bars: the first index below 0.5")


# Chapter 3 -----------------------------------------------------------------------------

def check_x0_from_eps(my_x0_from_eps) -> bool:
    """`my_x0_from_eps(xt, t, eps, alpha_bars)` -> x0_hat, as `diffusion_lib.x0_from_eps` (DDPM Eq. 15)."""
    schedule = make_schedule("cosine", 1000)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 5, 5, generator=generator) * 2 - 1
    eps = torch.randn(4, 1, 5, 5, generator=generator)
    t = torch.tensor([0, 200, 600, 990])
    xt = q_sample(x0, t, schedule, eps)
    return _compare(my_x0_from_eps, (xt, t, eps, schedule.alpha_bars.float()), x0_from_eps(xt, t, eps, schedule), 1e-4,
                    f"return a tensor of xt's shape {tuple(xt.shape)}",
                    "with the true noise, your x0_hat recovers x0 exactly at every t",
                    "solve x_t = sqrt(ab) x0 + sqrt(1 - ab) eps for x0: subtract the noise term, then divide by sqrt(ab)")


def check_ideal_x0(my_ideal_x0) -> bool:
    """`my_ideal_x0(xt, t, data, alpha_bars)` -> E[x0 | xt] for x0 uniform over `data` (N, D)."""
    schedule = make_schedule("linear", 1000)
    generator = torch.Generator().manual_seed(2)
    data = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    xt = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([5, 100, 300, 600, 999])
    return _compare(my_ideal_x0, (xt, t, data, schedule.alpha_bars), ideal_x0(xt, t, data, schedule), 1e-6,
                    f"return one average point per row of xt: shape {tuple(xt.shape)}",
                    "your posterior mean matches the library's from t = 5 to t = 999",
                    "weights are softmax over i of -||x_t - sqrt(ab) x_i||^2 / (2 (1 - ab)); note the sqrt(ab) in "
                    "front of each data point, and normalise over the data points")


def check_zero_predictor_loss(answer) -> bool:
    """The MSE loss of a network that always predicts eps = 0, at any t (measured here)."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(3))
    measured = noise.pow(2).mean().item()
    ok = isinstance(answer, (int, float)) and abs(answer - measured) < 0.02
    return _report(ok, f"the loss is E[eps^2] = 1 (measured {measured:.3f}): a trained model must beat 1.0 to have learned anything",
                   "what distribution is the target eps drawn from, and what is the average square of such a number?")


# Chapter 6 -----------------------------------------------------------------------------

def check_timestep_embedding(my_timestep_embedding) -> bool:
    """`my_timestep_embedding(t, dim)` -> (B, dim), as the U-Net's `timestep_embedding` (cosines, then sines)."""
    t = torch.tensor([0.0, 1.0, 17.0, 250.5, 999.0])  # float noise labels too: the flow models' 1000 s
    half = 8
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    args = t[:, None] * freqs[None, :]
    wrong_freqs = t[:, None] * torch.exp(-math.log(10000.0) * torch.arange(half) / (2 * half))[None, :]
    near_misses = [(torch.cat([args.sin(), args.cos()], 1), "cosines first, then sines: e(t) = [cos(t w), sin(t w)]"),
                   (torch.stack([args.cos(), args.sin()], 2).flatten(1),
                    "put all the cosines first and all the sines after, not cos and sin interleaved"),
                   (torch.cat([wrong_freqs.cos(), wrong_freqs.sin()], 1),
                    "the exponent runs over i / (dim / 2), not i / dim: the slowest frequency is 10000^-(1 - 2/dim)"),
                   (torch.cat([(t[:, None] / freqs[None, :]).cos(), (t[:, None] / freqs[None, :]).sin()], 1),
                    "the frequencies w_i = 10000^(-i / (dim/2)) shrink with i: multiply t by them, do not divide")]
    return _compare(my_timestep_embedding, (t, 2 * half), timestep_embedding(t, 2 * half), 1e-4,
                    f"return one row of dim = {2 * half} numbers per timestep: shape ({len(t)}, {2 * half})",
                    "your embedding matches the U-Net's for integer and fractional timesteps",
                    "e(t)_i = cos(t w_i) for i < dim/2 and sin(t w_(i - dim/2)) after, with w_i = 10000^(-i / (dim/2))",
                    near_misses)


def check_guided_eps(my_guided_eps) -> bool:
    """`my_guided_eps(eps_cond, eps_uncond, w)` -> classifier-free guided eps, as `diffusion_lib.guided_eps_fn`."""
    generator = torch.Generator().manual_seed(4)
    eps_cond, eps_uncond = torch.randn(3, 1, 4, 4, generator=generator), torch.randn(3, 1, 4, 4, generator=generator)
    labels, null = torch.zeros(3, dtype=torch.long), 10
    # a stand-in model whose conditional and unconditional outputs are the two tensors (the batch may be doubled)
    model = lambda x, t, labels: torch.where(labels[:, None, None, None] == null,  # noqa: E731
                                             eps_uncond.repeat(len(x) // 3, 1, 1, 1), eps_cond.repeat(len(x) // 3, 1, 1, 1))
    for w in (0.0, 1.0, 3.0):
        expected = guided_eps_fn(model, labels, w, null)(eps_cond, labels)
        got, error = _call(my_guided_eps, eps_cond, eps_uncond, w)
        if error:
            return _report(False, "", error)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return _report(False, "", "return a tensor shaped like eps_cond")
        if not torch.allclose(got, expected, atol=1e-6):
            if torch.allclose(got, eps_cond + w * (eps_cond - eps_uncond), atol=1e-6):
                return _report(False, "", "the base point is eps_uncond, not eps_cond: w = 0 must give the unconditional model")
            return _report(False, "", f"at w = {w:g} your result differs: start from eps_uncond and move w times "
                                      "the difference (eps_cond - eps_uncond)")
    return _report(True, "w = 0 gives the unconditional model, w = 1 the conditional one, w = 3 extrapolates past it", "")


def check_unguided_accuracy(answer, measured: float | None = None) -> bool:
    """Predict the accuracy at w = 0 (labels ignored); `measured` is the chapter's own measurement, if made."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return _report(False, "", "give the fraction as a number between 0 and 1")
    ok = abs(answer - 0.1) <= 0.05  # chance: one digit in ten; the measurement itself wanders around it
    hint = ("0 would mean the model avoids the digit you asked for; but at w = 0 it never sees the label"
            if answer < 0.05 else "at w = 0 the model never sees the label: how often would a random digit match the one you asked for?")
    return _report(ok, f"at w = 0 the label is ignored, so a sample matches its requested digit by chance: "
                       "about 1 in 10" + ("" if measured is None else f" (measured {measured:.2f})"), hint)


# Chapter 5 -----------------------------------------------------------------------------

def check_ddim_step(my_ddim_step) -> bool:
    """`my_ddim_step(xt, eps, alpha_bar_t, alpha_bar_prev)` -> x_prev for eta = 0 (DDIM Eq. 12)."""
    schedule = make_schedule("linear", 1000)
    generator = torch.Generator().manual_seed(5)
    xt, eps = torch.randn(3, 1, 4, 4, generator=generator), torch.randn(3, 1, 4, 4, generator=generator)
    t, t_prev = torch.full((3,), 600), torch.full((3,), 400)
    expected, _ = ddim_step(eps, xt, t, t_prev, schedule, eta=0.0)
    ab, ab_prev = schedule.alpha_bars[600].float(), schedule.alpha_bars[400].float()
    x0_hat = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
    return _compare(my_ddim_step, (xt, eps, ab, ab_prev), expected, 1e-5, "return a tensor shaped like xt",
                    "your deterministic DDIM step matches the library's ddim_step from t = 600 to t = 400",
                    "x_prev = sqrt(ab_prev) * x0_hat + sqrt(1 - ab_prev) * eps, with x0_hat from x_t and eps",
                    [(ab_prev.sqrt() * x0_hat, "you dropped the direction term sqrt(1 - ab_prev) * eps: "
                                               "without it the sample loses its noise level too early")])


def check_round_trip_calls(answer) -> bool:
    """Network calls of DDIM-50 inversion followed by DDIM-50 sampling for one image, counted on the library's own code."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    calls = []

    def eps_fn(x, t):
        calls.append(len(x))
        return torch.zeros_like(x)

    schedule = make_schedule("cosine", 1000)
    image = torch.zeros(1, 1, 4, 4)
    noise = ddim_invert(eps_fn, image, schedule, 50)
    inverting = len(calls)
    sample_loop(eps_fn, image.shape, schedule, "ddim", 50, x_T=noise)
    expected = len(calls)
    return _report(answer == expected, f"{expected}: {inverting} network calls to invert (one per step) and "
                                       f"{expected - inverting} to sample back",
                   "count the network calls of the inversion and of the sampling separately, then add them")


# Chapter 4 -----------------------------------------------------------------------------

def check_training_loss(my_loss) -> bool:
    """`my_loss(model, x0, t, noise, alpha_bars)` -> the simple DDPM loss, as `diffusion_lib.diffusion_loss`."""
    schedule = make_schedule("linear", 1000)
    generator = torch.Generator().manual_seed(6)
    x0, noise = torch.rand(8, 2, generator=generator) * 2 - 1, torch.randn(8, 2, generator=generator)
    t = torch.randint(0, 1000, (8,), generator=generator)
    weights = torch.randn(3, 2, generator=generator)

    def model(xt, t, labels=None):  # a fixed stand-in network: a linear map of (x_t, t / T)
        return torch.cat([xt, t[:, None] / 1000.0], 1) @ weights

    expected = diffusion_loss(model, x0, t, noise, schedule)
    ab = schedule.alpha_bars.float()[t][:, None]
    wrong_target = (model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t) - x0).pow(2).mean()
    args = (model, x0, t, noise, schedule.alpha_bars.float())
    summed, error = _call(my_loss, *args)  # the squared norm the text writes, summed over the D coordinates
    if error is None and isinstance(summed, torch.Tensor) and summed.shape == () and \
            torch.allclose(summed, expected * x0.shape[1], atol=1e-5):
        return _report(True, f"your loss is the squared norm ||eps - eps_theta||^2 summed over the {x0.shape[1]} "
                             "coordinates; the library averages over them instead (.mean()): the same minimiser, "
                             f"{x0.shape[1]} times smaller", "")
    return _compare(my_loss, args, expected, 1e-5,
                    "return the loss as a scalar tensor (use .mean())",
                    "your loss equals the library's L_simple for a fixed network and fixed randomness",
                    "noise x0 to x_t = sqrt(ab) x0 + sqrt(1 - ab) noise, call model(x_t, t), and average the squared "
                    "difference from the noise",
                    [(wrong_target, "the target is the noise, not x0")])


def check_flow_loss(my_flow_loss) -> bool:
    """`my_flow_loss(model, x0, z, noise)` -> the flow-matching loss the default recipe trains with, as
    `continuous.flow_loss`: s = sigmoid(z), x_s = (1 - s) x0 + s noise, the network (called at 1000 s) regresses
    the velocity noise - x0."""
    generator = torch.Generator().manual_seed(11)
    x0, noise = torch.rand(8, 2, generator=generator) * 2 - 1, torch.randn(8, 2, generator=generator)
    z, weights = torch.randn(8, generator=generator), torch.randn(3, 2, generator=generator)

    def model(x, t, labels=None):  # a fixed stand-in network: a linear map of (x_s, t / 1000)
        return torch.cat([x, t[:, None] / 1000.0], 1) @ weights

    def variant(s, target, scale=1000.0):
        x = (1 - s[:, None]) * x0 + s[:, None] * noise
        return (model(x, scale * s) - target).pow(2).mean()

    s = torch.sigmoid(z)
    return _compare(my_flow_loss, (model, x0, z, noise), flow_loss(model, x0, z, noise), 1e-5,
                    "return the loss as a scalar tensor (use .mean())",
                    "your loss equals the library's flow-matching loss for a fixed network and fixed randomness",
                    "s = sigmoid(z); x_s = (1 - s) x0 + s noise (s reshaped to a column); the target is noise - x0; "
                    "call model(x_s, 1000 * s) and average the squared difference",
                    [(variant(z, noise - x0), "z is a normal draw: the time is s = sigmoid(z), in (0, 1)"),
                     (variant(s, x0 - noise), "the velocity points from the data to the noise: noise - x0"),
                     (variant(s, noise - x0, 1.0), "the network reads its time as 1000 s (like DDPM's steps "
                                                   "0..999): call model(x_s, 1000 * s)")])


def check_training_loop(my_train_loop) -> bool:
    """`my_train_loop(model, data, steps, batch_size, lr, seed, loss_fn)` -> (losses, ema_model): the library's loop
    (`loop.fit` as `train` runs it, with no warm-up and no clipping), the same losses for the same seed. `loss_fn`
    is the library's flow loss (`continuous.flow_loss`), so a slip in exercise 2 does not fail this one."""
    config = TrainConfig(data="moons", steps=12, batch_size=32, lr=3e-3, seed=3, warmup=0, grad_clip=0.0,
                         save_every=10**6, model={"hidden": 16, "layers": 1})
    reference = train(config, device="cpu", progress=False)  # on the CPU, where the learner's loop runs
    torch.manual_seed(config.seed)  # the same initial weights as the library's run
    model = build_model("mlp", config.model_config())
    data = load_training_data(config)[0]
    got, error = _call(my_train_loop, model, data, config.steps, config.batch_size, config.lr, config.seed, flow_loss)
    if error:
        return _report(False, "", error)
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], torch.nn.Module)):
        return _report(False, "", "return (losses, ema_model): the list of each step's loss and the averaged network")
    losses, ema_model = list(map(float, got[0])), got[1]
    if len(losses) != config.steps:
        return _report(False, "", f"return one loss per step: {config.steps} steps, got {len(losses)} losses")
    if not math.isclose(losses[0], reference.losses[0], rel_tol=1e-5):
        return _report(False, "", "the first loss already differs: draw from one torch.Generator(seed) in the "
                                  "library's order (batch indices, then z, then the noise), and call loss_fn")
    if not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(losses, reference.losses)):
        return _report(False, "", "the first loss matches, later ones do not: each step zero the gradients, "
                                  "backward, then AdamW's step (weight_decay=0)")
    same_ema = all(torch.allclose(a, b, atol=1e-6)
                   for a, b in zip(ema_model.state_dict().values(), reference.ema_model.state_dict().values()))
    return _report(same_ema, f"your {config.steps} losses and EMA weights equal dl.train's for the same seed",
                   "the losses match, the EMA does not: after each step k = 0, 1, ..., blend each weight with decay "
                   "min(0.999, (1 + k) / (10 + k)): ema = decay * ema + (1 - decay) * weight")


def check_ema_horizon(answer) -> bool:
    """About how many recent steps an EMA with decay 0.999 averages over."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    expected = 1 / (1 - 0.999)
    ok = isinstance(answer, (int, float)) and abs(answer - expected) / expected < 0.1
    return _report(ok, f"about {expected:.0f} steps: weight (1 - d) d^k on a step k steps ago sums to 1 with mean age d / (1 - d)",
                   "each update keeps a fraction d of the average: how many steps until d^k has fallen to about 1/e?")


# Chapter 7 -----------------------------------------------------------------------------

def check_attention(my_attention) -> bool:
    """`my_attention(q, k, v, keep)` -> softmax(q k^T / sqrt(d)) v over the kept tokens, as `text.attend`."""
    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, n, 4, generator=generator) for n in (6, 5, 5))
    keep = torch.tensor([[True, True, True, False, False], [True] * 5])
    expected, _ = attend(q, k, v, keep)
    unmasked, _ = attend(q, k, v, torch.ones_like(keep))
    unscaled, _ = attend(q * 2, k, v, keep)  # sqrt(d) = 2 here: forgetting it doubles the scores
    return _compare(my_attention, (q, k, v, keep), expected, 1e-5,
                    "return (B, N, d): one mixture of the value vectors per query",
                    "your attention equals the library's, padding ignored",
                    "scores = q @ k.transpose(-2, -1) / sqrt(d); set padded scores to -inf; softmax over the tokens; @ v",
                    [(unmasked, "padding must get no weight: fill the scores of tokens where keep is False with -inf "
                                "before the softmax"),
                     (unscaled, "divide the scores by sqrt(d), d = q.shape[-1], before the softmax")])


def check_q_jump(my_q_jump) -> bool:
    """`my_q_jump(x_prev, alpha_bar_prev, alpha_bar, noise)` -> a sample of q(x_t | x_t'), as `inpainting.q_jump`."""
    schedule = make_schedule("cosine", 1000)
    generator = torch.Generator().manual_seed(9)
    x_prev, noise = torch.randn(3, 1, 4, 4, generator=generator), torch.randn(3, 1, 4, 4, generator=generator)
    t_prev, t = torch.tensor([10, 300, 700]), torch.tensor([40, 340, 760])
    ab_prev, ab = (schedule.alpha_bars.float()[i].reshape(-1, 1, 1, 1) for i in (t_prev, t))
    return _compare(my_q_jump, (x_prev, ab_prev, ab, noise), q_jump(x_prev, t_prev, t, schedule, noise), 1e-5,
                    f"return a tensor of x_prev's shape {tuple(x_prev.shape)}",
                    "your jump equals the library's: x_t' noised forward to t",
                    "the steps from t' to t multiply the signal by sqrt(ab_t / ab_t') and add noise of variance 1 - ab_t / ab_t'",
                    [(ab.sqrt() * x_prev + (1 - ab).sqrt() * noise,
                      "that noises a clean image to t; x_t' is already noisy, so use the ratio ab_t / ab_t'")])


# Chapter 8 -----------------------------------------------------------------------------

def check_flow_pair(my_flow_pair) -> bool:
    """`my_flow_pair(x0, eps, s)` -> (x_s, v): the point of the straight path at times s (B,) and its velocity."""
    generator = torch.Generator().manual_seed(10)
    x0, eps = torch.randn(4, 1, 3, 3, generator=generator), torch.randn(4, 1, 3, 3, generator=generator)
    s = torch.tensor([0.0, 0.25, 0.6, 1.0])
    got, error = _call(my_flow_pair, x0, eps, s)
    if error:
        return _report(False, "", error)
    if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(g, torch.Tensor) for g in got)):
        return _report(False, "", "return the pair (x_s, v), two tensors shaped like x0")
    column = s.reshape(-1, 1, 1, 1)
    x_s, v = (1 - column) * x0 + column * eps, eps - x0
    if got[0].shape != x0.shape or not torch.allclose(got[0], x_s, atol=1e-6):
        swapped = column * x0 + (1 - column) * eps
        return _report(False, "", "s = 0 must give the data and s = 1 the noise" if got[0].shape == x0.shape
                       and torch.allclose(got[0], swapped, atol=1e-6) else
                       "x_s = (1 - s) x0 + s eps, with s reshaped to (B, 1, 1, 1) to broadcast")
    if torch.allclose(got[1], -v, atol=1e-6):
        return _report(False, "", "the velocity is d x_s / ds: which way does x_s move as s grows from 0 to 1?")
    return _report(torch.allclose(got[1], v, atol=1e-6), "x_s and v = eps - x0 are the flow's training pair",
                   "differentiate x_s = (1 - s) x0 + s eps with respect to s")


def check_eps_from_velocity(my_eps_x0) -> bool:
    """`my_eps_x0(x_s, v, s)` -> (eps_hat, x0_hat) from a velocity, as `continuous.as_eps_model` uses them."""
    generator = torch.Generator().manual_seed(11)
    x0, eps = torch.randn(3, 5, generator=generator, dtype=torch.float64), torch.randn(3, 5, generator=generator,
                                                                                        dtype=torch.float64)
    s = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)[:, None]
    x_s, v = (1 - s) * x0 + s * eps, eps - x0  # an exact velocity: the answer must recover eps and x0
    got, error = _call(my_eps_x0, x_s, v, s)
    if error:
        return _report(False, "", error)
    if not (isinstance(got, tuple) and len(got) == 2):
        return _report(False, "", "return the pair (eps_hat, x0_hat)")
    ok = torch.allclose(got[0], eps, atol=1e-9) and torch.allclose(got[1], x0, atol=1e-9)
    return _report(ok, "eps = x_s + (1 - s) v and x0 = x_s - s v recover the pair that made x_s",
                   "two equations, x_s = (1 - s) x0 + s eps and v = eps - x0, in two unknowns: substitute x0 = eps - v")


def check_reflow_calls(answer) -> bool:
    """Network calls to draw the committed reflow's pairs with Heun's method, counted on the library's own code."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    from ..samplers import network_calls

    expected = 6000 * network_calls("heun", 18)
    return _report(answer == expected, f"{expected:,}: 6,000 pairs x 35 calls (Heun makes two per step but none to "
                                       "correct its last step)",
                   "count Heun's calls per image at 18 steps (section 2: does every step make a correction?), "
                   "then multiply by the pairs")


# Chapter 9 -----------------------------------------------------------------------------

def check_progressive_target(my_target) -> bool:
    """`my_target(v, x, s, s_next)` -> the velocity of one step that lands where two half-steps of Euler on v land."""
    from ..distill import progressive_target

    generator = torch.Generator().manual_seed(12)
    weights = torch.randn(3, 3, generator=generator, dtype=torch.float64)

    class Teacher(torch.nn.Module):  # a curved stand-in flow: v(x, s) = tanh(x W) (1 + s)
        def forward(self, x, label, labels=None):
            return torch.tanh(x @ weights) * (1 + label[:, None] / 1000)

    teacher = Teacher()
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    s, s_next = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.25, dtype=torch.float64)
    v = lambda x, s: teacher(x, 1000 * s)  # noqa: E731 - the learner's view of the teacher
    expected = progressive_target(teacher, x, s, s_next)
    one_step = v(x, s)
    return _compare(my_target, (v, x, s, s_next), expected, 1e-9, "return a velocity shaped like x",
                    "your target equals the library's progressive_target: two teacher Euler steps, as one",
                    "take x to the midpoint (s + s_next) / 2 with v(x, s), then on to s_next with v at the midpoint; "
                    "the target is (x_end - x) / (s_next - s)",
                    [(one_step, "that is the teacher's own velocity at the start: the target must follow two steps")])


def check_distillation_calls(answer) -> bool:
    """Teacher network calls of the committed progressive distillation from 32 steps to 1, counted on the library's loss."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    from ..distill import DistillConfig, progressive_loss

    config = DistillConfig("progressive", teacher_steps=32, student_steps=1, steps=600, batch_size=64)
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x, label, labels=None):
            calls.append(len(x))
            return torch.zeros_like(x)

    x0 = torch.zeros(config.batch_size, 2)
    progressive_loss(Counting(), Counting(), x0, x0, torch.ones(config.batch_size), 16)
    per_step = sum(calls) - config.batch_size  # the student's own call is not the teacher's
    expected = per_step * config.total_steps()
    batched = expected // config.batch_size  # the same work counted as calls on whole batches of 64
    if _whole_number(answer) == batched:
        return _report(True, f"{batched:,} calls on batches of {config.batch_size} (2 per optimiser step x "
                             f"{config.total_steps():,} steps): {expected:,} images through the teacher in all", "")
    return _report(_whole_number(answer) == expected,
                   f"{expected:,}: {per_step} teacher calls per optimiser step (2 per image) x "
                   f"{config.total_steps():,} steps ({config.rounds()} rounds of 600)",
                   "how many teacher calls does one image of a batch cost, and how many halvings take 32 steps to 1?")


def check_consistency_sampler(my_sample) -> bool:
    """`my_sample(f, noise, times, fresh)` -> multistep consistency sampling, as `distill.consistency_sample`."""
    from ..distill import consistency_sample

    generator = torch.Generator().manual_seed(13)
    weights = torch.randn(3, 3, generator=generator)
    velocity = lambda x, s: torch.tanh(x @ weights) + s[:, None]  # noqa: E731 - a stand-in network
    f = lambda x, s: x - s * velocity(x, torch.full((len(x),), s))  # noqa: E731
    noise = torch.randn(4, 3, generator=generator)
    draws = torch.Generator().manual_seed(99)
    fresh = [torch.randn(4, 3, generator=draws) for _ in range(2)]  # the noise the library draws, in its order
    times = [1.0, 2 / 3, 1 / 3]
    replay = torch.Generator().manual_seed(99)
    expected = consistency_sample(velocity, noise, 3, replay)
    return _compare(my_sample, (f, noise, times, fresh), expected, 1e-5, "return a tensor shaped like noise",
                    "your sampler equals the library's consistency_sample for 3 steps",
                    "x = f(noise, 1); then for each later time s and its fresh noise z: x = f((1 - s) x + s z, s)",
                    [(f(noise, 1.0), "one jump is one step: re-noise the result to each later time and jump again")])


# Chapter 10 ----------------------------------------------------------------------------

def check_kl(my_kl) -> bool:
    """`my_kl(mu, logvar)` -> KL(N(mu, exp(logvar)) || N(0, 1)) per latent number, averaged (`kl_to_standard_normal`)."""
    from ..autoencoder import kl_to_standard_normal

    generator = torch.Generator().manual_seed(14)
    mu, logvar = torch.randn(3, 4, 2, 2, generator=generator), torch.randn(3, 4, 2, 2, generator=generator)
    expected = kl_to_standard_normal(mu, logvar)
    sigma = (0.5 * logvar).exp()
    def as_tensor(mu, logvar):  # a Python number is a fine answer too
        got = my_kl(mu, logvar)
        return torch.as_tensor(got, dtype=expected.dtype) if isinstance(got, (int, float)) else got

    return _compare(as_tensor, (mu, logvar), expected, 1e-5, "return one number: a tensor of shape () (or a float)",
                    "your KL equals the library's kl_to_standard_normal",
                    "KL = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2) for each number, then the mean; log sigma^2 is logvar",
                    [(2 * expected, "that is twice the KL: the Gaussian KL has a factor 1/2 in front"),
                     (0.5 * (mu ** 2 + sigma - 1 - logvar).mean(), "sigma^2 is exp(logvar), not exp(logvar / 2)")])


def check_patchify(my_patchify) -> bool:
    """`my_patchify(x, p)` -> (B, N, C p p): the DiT's tokens, as `dit.patchify`."""
    from ..dit import patchify

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(15))
    expected = patchify(x, 2)
    channel_last = x.reshape(2, 4, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 16)
    return _compare(my_patchify, (x, 2), expected, 0, "return (B, N, C p p): here (2, 16, 16)",
                    "your patches equal the library's: row by row, each patch flattened channel first",
                    "split H and W into (H/p, p) and (W/p, p), bring the two patch indices forward, then flatten "
                    "(C, p, p) for each patch",
                    [(channel_last, "right patches, but each flattened channel last: flatten (C, p, p), channel first")])


def check_pipeline_calls(answer) -> bool:
    """Images through the denoiser for 8 samples of the chapter's pipeline with Heun-10 at w = 3: counted on a real call."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    from ..checkpoint import pretrained
    from ..pipeline import generate

    from .ch10 import MODELS, PIPELINE

    model, info = pretrained(MODELS[PIPELINE])
    seen = []
    hook = model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    try:
        generate(model, info, 8, "heun", 10, guidance=3.0, prompts=["a seven"] * 8, seed=0)
    finally:
        hook.remove()
    expected = sum(seen)
    return _report(answer == expected, f"{expected}: {len(seen)} calls (Heun-10 is 2 x 10 - 1) on batches of "
                                       f"{seen[0]} (guidance runs both captions in one batch of 2 x 8)",
                   "count Heun's network calls at 10 steps (does the last step correct?), and the batch each call "
                   "sees: guidance needs a second prediction for every image")


# Chapter 11 ----------------------------------------------------------------------------

class _Smooth(torch.nn.Module):
    """A stand-in MeanFlow network u(x, (s, s - r)), nonlinear in x, s and the interval, so that its derivative along
    a path has all three parts."""

    config = type("Config", (), {"interval": True})()

    def __init__(self, seed: int):
        super().__init__()
        self.weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def forward(self, x, times, labels=None):
        s, gap = times[:, :1], times[:, 1:]
        return torch.tanh(x @ self.weights + s) * (1 + gap) + x * s


def check_meanflow_target(my_target) -> bool:
    """`my_target(u, x, s, d, v)` -> v - (s - r) du/ds for a network asked as u(x, s, d) with d = s - r: du/ds along
    the path (x moving with v, r fixed, so d moves with s), as `objectives.meanflow_target`."""
    from ..denoisers import meanflow_times
    from ..objectives import meanflow_target

    net = _Smooth(16)
    by_length = lambda x, s, d: net(x, torch.stack([s, d], dim=1))  # noqa: E731 - the learner's network
    by_ends = lambda x, r, s: net(x, meanflow_times(s, r))  # noqa: E731 - the same network, asked with r
    generator = torch.Generator().manual_seed(17)
    x, v = (torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    r = torch.rand(5, generator=generator, dtype=torch.float64) / 2
    s = r + torch.rand(5, generator=generator, dtype=torch.float64) / 2
    d = s - r
    expected = meanflow_target(by_ends, x, r, s, v)[1]

    def along(tangent):  # the target with another tangent (dx, ds, dd)
        _, derivative = torch.func.jvp(by_length, (x, s, d), tangent)
        return v - d[:, None] * derivative

    def detached(*args):
        got = my_target(*args)
        return got.detach() if isinstance(got, torch.Tensor) else got

    zero, one = torch.zeros_like(s), torch.ones_like(s)
    return _compare(detached, (by_length, x, s, d, v), expected, 1e-9, "return a tensor shaped like x",
                    "your target equals the library's meanflow_target: v - (s - r) du/ds by one JVP",
                    "du/ds is torch.func.jvp(u, (x, s, d), (tangent of x, of s, of d))[1]; the target is "
                    "v - d du/ds, with d reshaped to (B, 1)",
                    [(along((v, one, zero)), "that tangent holds d still, so r moves with s: r is the interval's "
                                             "fixed end, and d = s - r grows as s does (tangent 1)"),
                     (along((torch.zeros_like(x), one, one)), "that derivative holds x still: along the path x moves "
                                                              "with velocity v, so the tangent for x is v"),
                     (v.clone(), "that is flow matching's target v: the interval's term -(s - r) du/ds is missing"),
                     (2 * v - expected, "check the sign: u = v - (s - r) du/ds, since u + (s - r) du/ds = v")])


def check_meanflow_sampler(my_sample) -> bool:
    """`my_sample(u, noise, times)` -> MeanFlow sampling along the decreasing `times`, as `samplers.sample_meanflow`."""
    from ..denoisers import Denoiser, meanflow_times
    from ..samplers import flow_levels, sample_meanflow

    net = _Smooth(18)
    u = lambda x, r, s: net(x, meanflow_times(torch.full((len(x),), float(s), dtype=x.dtype),  # noqa: E731
                                              torch.full((len(x),), float(r), dtype=x.dtype)))
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    times = [1.0, 2 / 3, 1 / 3, 0.0]
    expected = sample_meanflow(Denoiser(net, "flow"), noise, flow_levels(3))

    def euler(x):
        for s, r in zip(times[:-1], times[1:]):
            x = x - (s - r) * u(x, s, s)
        return x

    return _compare(my_sample, (u, noise, times), expected, 1e-9, "return a tensor shaped like noise",
                    "your sampler equals the library's sample_meanflow in 3 steps",
                    "for each step from s to the next time r: x = x - (s - r) u(x, r, s)",
                    [(euler(noise), "that asks for the velocity at s alone, u(x, s, s): Euler's step. Ask for the "
                                    "average over the whole step, u(x, r, s)"),
                     (noise - u(noise, 0.0, 1.0), "that is one jump over [0, 1]: take one per interval of times")])


def gaussian_average_velocity(x: float, r: float, s: float, sigma_data: float, steps: int = 10_000) -> float:
    """The average velocity over [r, s] at x for 1-D data N(0, sigma_data^2) on the straight path, by following the
    ODE from s to r in `steps` Heun steps: x_s has sd g(s) = sqrt((1 - s)^2 sigma_data^2 + s^2), and the flow moves
    each point with v = x g'(s) / g(s)."""
    g = lambda s: math.sqrt((1 - s) ** 2 * sigma_data**2 + s**2)  # noqa: E731
    v = lambda x, s: x * ((s - (1 - s) * sigma_data**2) / g(s) ** 2)  # noqa: E731
    y, h = x, (r - s) / steps
    for k in range(steps):
        t = s + k * h
        d = v(y, t)
        y = y + h * (d + v(y + h * d, t + h)) / 2
    return (x - y) / (s - r)


def check_gaussian_average_velocity(answer) -> bool:
    """u(1, 0, 1) for 1-D Gaussian data of standard deviation one half: (x_1 - x_0) / 1, computed by following the
    ODE (`gaussian_average_velocity`)."""
    if answer is None:
        return _report(False, "", NO_ANSWER)
    expected = gaussian_average_velocity(1.0, 0.0, 1.0, 0.5)
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return _report(False, "", "answer with one number")
    if abs(value - expected) < 0.01:
        return _report(True, f"{expected:.4f}: the flow keeps each point's place in the distribution, so x_1 = 1 ends at "
                             f"x_0 = 1 x sd(0) / sd(1) = 0.5, and u = (1 - 0.5) / (1 - 0)", "")
    instant = gaussian_average_velocity(1.0, 1.0 - 1e-4, 1.0, 0.5)
    if abs(value - instant) < 0.01:
        return _report(False, "", f"{value:g} is the velocity at s = 1 alone; the flow slows down on the way to the "
                                  "data. Where does x_1 = 1 end up? (the flow keeps each point's place: x / sd)")
    return _report(False, "", "the flow keeps each point's place in the distribution: x_s / sd(s) stays the same. "
                              "Find x_0, then u = (x_1 - x_0) / (1 - 0)")


# The checks by exercise id ------------------------------------------------------------
# Each exercise's id is the `exercise:ID` tag of its cell in the chapters (the solution cell of an implement
# or predict exercise, the question of an open one); the student edition, the grader and the nbgrader export
# use the same ids.

CHECKS = {
    "ch01-make-mask": check_raster_mask, "ch01-colour-calls": check_pixelcnn_calls,
    "ch02-q-sample": check_q_sample, "ch02-half-signal-step": check_half_signal_step,
    "ch03-x0-from-eps": check_x0_from_eps, "ch03-ideal-x0": check_ideal_x0,
    "ch03-zero-predictor-loss": check_zero_predictor_loss,
    "ch04-loss": check_training_loss, "ch04-ema-horizon": check_ema_horizon, "ch04-flow-loss": check_flow_loss,
    "ch04-training-loop": check_training_loop,
    "ch05-ddim-step": check_ddim_step, "ch05-round-trip-calls": check_round_trip_calls,
    "ch06-timestep-embedding": check_timestep_embedding, "ch06-guided-eps": check_guided_eps,
    "ch06-unguided-accuracy-guess": check_unguided_accuracy,
    "ch07-attention": check_attention, "ch07-q-jump": check_q_jump,
    "ch08-flow-pair": check_flow_pair, "ch08-eps-x0": check_eps_from_velocity, "ch08-reflow-pair-calls": check_reflow_calls,
    "ch09-target": check_progressive_target, "ch09-teacher-calls": check_distillation_calls,
    "ch09-sample": check_consistency_sampler,
    "ch10-kl": check_kl, "ch10-patchify": check_patchify, "ch10-images-through-denoiser": check_pipeline_calls,
    "ch11-meanflow-target": check_meanflow_target, "ch11-meanflow-sample": check_meanflow_sampler,
    "ch11-gaussian-average": check_gaussian_average_velocity,
}
