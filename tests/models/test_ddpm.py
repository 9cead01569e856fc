"""DDPM family: schedule math against golden values, shapes in 2D/3D, config validation, sampling."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from memscan.errors import InputError
from memscan.models.base import DataInfo
from memscan.models.ddpm import (
    EMA,
    PRESETS,
    attention_levels,
    build,
    item_generators,
    resolve_config,
)
from memscan.models.registry import build_model, family_module


def _info(channels: int, shape: tuple[int, ...]) -> DataInfo:
    return DataInfo(tuple(f"c{i}" for i in range(channels)), shape)


# --- schedule golden values (Ho et al. 2020: β_t linear, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s) ---------------
@pytest.mark.parametrize(
    "T, beta_start, beta_end, golden",
    [
        # ᾱ_t at t = 0, 1, 10, 99, 500, T−1, computed in float64 from the closed form by hand
        (
            1000,
            1e-4,
            2e-2,
            [0.9999, 9.99780092e-01, 9.97806573e-01, 8.97018146e-01, 7.77966584e-02, 4.03582977e-05],
        ),
        # the study's T = 4000 with the linear schedule rescaled by 1000/T (Nichol & Dhariwal 2021)
        (
            4000,
            2.5e-5,
            5e-3,
            [0.999975, 9.99948757e-01, 9.99656630e-01, 9.91378836e-01, 8.45032622e-01, 4.24665228e-05],
        ),
    ],
)
def test_linear_schedule_matches_golden_values(T, beta_start, beta_end, golden):
    from monai.networks.schedulers import DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=T, schedule="linear_beta", beta_start=beta_start, beta_end=beta_end
    )
    ts = [0, 1, 10, 99, 500, T - 1]
    # β_t = β_1 + t (β_T − β_1) / (T − 1)
    for t in (0, 1, T // 2, T - 1):
        assert sched.betas[t].item() == pytest.approx(
            beta_start + t * (beta_end - beta_start) / (T - 1), rel=1e-6
        )
    for t, g in zip(ts, golden, strict=True):
        by_hand = math.prod(1.0 - (beta_start + s * (beta_end - beta_start) / (T - 1)) for s in range(t + 1))
        assert by_hand == pytest.approx(g, rel=1e-7)
        assert sched.alphas_cumprod[t].item() == pytest.approx(g, rel=2e-4)  # float32 cumprod


def test_study_preset_uses_the_rescaled_schedule():
    cfg = resolve_config(None, "study")
    assert cfg.num_train_timesteps == 4000 and cfg.beta_start == pytest.approx(2.5e-5)
    assert cfg.beta_end == pytest.approx(5e-3) and cfg.lr == 1e-4 and cfg.ema_decay == 0.9999
    assert cfg.channels[0] == 64 and cfg.num_res_blocks == 3 and cfg.prediction_type == "epsilon"


def test_forward_noising_q_xt_given_x0():
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020 eq. 4)."""
    from monai.networks.schedulers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.full((4, 1, 8, 8), 0.5)
    eps = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 99, 500, 999])
    xt = sched.add_noise(x0, eps, t)
    ab = torch.tensor([0.9999, 8.97018146e-01, 7.77966584e-02, 4.03582977e-05]).view(4, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-4, atol=1e-5)
    # statistics over many draws
    eps = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    xt = sched.add_noise(torch.full((20000,), 0.5), eps, torch.full((20000,), 500))
    assert xt.mean().item() == pytest.approx(0.5 * math.sqrt(7.77966584e-02), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - 7.77966584e-02, abs=0.03)


# --- networks -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, shape", [(1, (16, 16)), (3, (16, 16)), (5, (16, 16)), (2, (8, 8, 8))])
def test_train_step_and_sample_shapes(channels, shape):
    torch.manual_seed(0)
    model = build(None, _info(channels, shape), preset="tiny")
    model.configure(torch.device("cpu"))
    x = torch.rand(2, channels, *shape) * 2 - 1
    losses = model.train_step(x, 1)
    assert set(losses) == {"loss"} and math.isfinite(float(losses["loss"]))
    y = model.sample(3, torch.Generator().manual_seed(0), sampling_steps=2)
    assert y.shape == (3, channels, *shape) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1
    assert set(model.modules()) == {"unet", "ema"} and set(model.optimizers()) == {"adamw"}


def test_attention_resolutions_map_to_levels():
    study = resolve_config(None, "study")
    assert attention_levels(study, (256, 256)) == (False, False, False, True, True, False)
    assert attention_levels(study, (64, 64)) == (False, True, True, False, False, False)
    quick = resolve_config(None, "quick")
    assert attention_levels(quick, (64, 64)) == (False, False, True)
    assert attention_levels(quick, (32, 32, 32)) == (False, True, False)


def test_image_size_must_fit_the_unet():
    with pytest.raises(InputError, match="multiple of 4"):
        build(None, _info(1, (18, 18)), preset="quick")


@pytest.mark.parametrize(
    "preset, config, match",
    [
        ("quik", None, "did you mean 'quick'"),
        ("tiny", {"ema_decy": 0.9}, "did you mean 'ema_decay'"),
        ("tiny", {"sampler": "ddin"}, "did you mean 'ddim'"),
        ("tiny", {"channels": [8, 10]}, "multiple of norm_num_groups"),
        ("tiny", {"channels": [8, 12]}, "num_head_channels"),
        ("tiny", {"hflip": 1}, "true or false"),
        ("tiny", {"sampling_steps": 1000}, "sampling_steps"),
        ("tiny", {"beta_start": 0.1, "beta_end": 0.01}, "beta_start < beta_end"),
        ("tiny", {"ema_decay": 1.0}, "ema_decay"),
        ("tiny", {"lr": "fast"}, "lr"),
    ],
)
def test_bad_config_is_an_input_error(preset, config, match):
    with pytest.raises(InputError, match=match):
        build(config, _info(1, (16, 16)), preset=preset)


def test_presets_are_valid():
    for name in PRESETS:
        resolve_config(None, name)


def test_ema_warmup_and_update():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.999, warmup=True)
    assert ema.current_decay(0) == pytest.approx(0.1) and ema.current_decay(90) == pytest.approx(0.91)
    assert ema.current_decay(10**7) == 0.999
    with torch.no_grad():
        net.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(net, 0)  # d = 0.1: ema ← 0.1 ema + 0.9 θ
    torch.testing.assert_close(ema.module.weight, 0.1 * before + 0.9 * net.weight)


# --- sampling ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_tiny():
    torch.manual_seed(0)
    model = build({"num_train_timesteps": 12, "sampling_steps": 4}, _info(1, (16, 16)), preset="tiny")
    model.configure(torch.device("cpu"))
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    for s in range(2):
        model.train_step(x, s)
    return model


@pytest.mark.parametrize("sampler, steps", [("ddim", None), ("ddpm", None), ("ddpm", 12)])
def test_sampling_is_deterministic_for_a_seed(trained_tiny, sampler, steps):
    opts = {"sampler": sampler, "sampling_steps": steps}
    a = trained_tiny.sample(2, torch.Generator().manual_seed(3), **opts)
    b = trained_tiny.sample(2, torch.Generator().manual_seed(3), **opts)
    c = trained_tiny.sample(2, torch.Generator().manual_seed(4), **opts)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_item_generators_do_not_depend_on_the_batch(trained_tiny):
    whole = trained_tiny.sample(3, item_generators(7, 0, 3), sampler="ddpm")
    parts = torch.cat(
        [
            trained_tiny.sample(1, item_generators(7, 0, 1), sampler="ddpm"),
            trained_tiny.sample(2, item_generators(7, 1, 2), sampler="ddpm"),
        ]
    )
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-5)


def test_ddim_timesteps_are_evenly_strided(trained_tiny, monkeypatch):
    seen: list[int] = []
    net = trained_tiny.ema.module
    original = net.forward

    def spy(x, timesteps, **kw):
        seen.append(int(timesteps[0]))
        return original(x, timesteps, **kw)

    monkeypatch.setattr(net, "forward", spy)
    trained_tiny.sample(1, torch.Generator().manual_seed(0), sampler="ddim", sampling_steps=4)
    assert seen == [9, 6, 3, 0]  # T = 12, stride 3 (Song et al. 2021, uniform sub-sequence)


class _Oracle(torch.nn.Module):
    """The exact ε-predictor for a data set of one image ``x0``: ε(x_t, t) = (x_t − √ᾱ_t x0) / √(1 − ᾱ_t)."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the sampler reads the device from a parameter
        self.x0, self.ab = x0, alphas_cumprod.double()

    def forward(self, x, timesteps):
        a = self.ab[timesteps].view(-1, *[1] * (x.ndim - 1))
        return ((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).float()


@pytest.mark.parametrize(
    "opts",
    [
        {"sampler": "ddpm", "sampling_steps": 200},  # Ho et al. Algorithm 2, every step
        {"sampler": "ddpm", "sampling_steps": 20},  # the strided chain
        {"sampler": "ddim", "sampling_steps": 20},
        {"sampler": "ddim", "sampling_steps": 20, "eta": 0.5},
    ],
)
def test_an_exact_denoiser_returns_its_one_training_image(opts):
    model = build({"num_train_timesteps": 200}, _info(1, (8, 8)), preset="tiny")
    x0 = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8).double()
    model.ema.module = _Oracle(x0, model.scheduler.alphas_cumprod)
    x = model.sample(3, torch.Generator().manual_seed(1), **opts)
    torch.testing.assert_close(x.double(), x0.expand(3, -1, -1, -1), rtol=0, atol=1e-3)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_keeps_the_forward_marginals(eta):
    """With the exact ε, x_t ~ q(x_t | x0) steps to x_prev ~ q(x_prev | x0) = N(√ᾱ_prev x0, 1 − ᾱ_prev):
    the σ_t(η) noise must replace part of the direction term, not add to it (Song et al. 2021 eq. 12)."""
    from monai.networks.schedulers import DDIMScheduler

    from memscan.models.ddpm.sampler import ddim_step

    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    sched.set_timesteps(10)
    t, prev = 500, 400
    ab_t, ab_prev = sched.alphas_cumprod[t].double(), sched.alphas_cumprod[prev].double()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 64, 64, generator=gen).double() * 2 - 1
    eps = torch.randn(64, 1, 64, 64, generator=gen).double()
    x_t = (ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps).float()
    out = ddim_step(sched, eps.float(), t, x_t, eta, torch.Generator().manual_seed(2))
    resid = out.double() - ab_prev.sqrt() * x0
    assert abs(resid.mean().item()) < 0.01
    assert resid.var().item() == pytest.approx((1 - ab_prev).item(), rel=0.02)


def test_strided_ddpm_is_ddim_with_eta_one(trained_tiny):
    a = trained_tiny.sample(2, torch.Generator().manual_seed(5), sampler="ddpm", sampling_steps=4)
    b = trained_tiny.sample(2, torch.Generator().manual_seed(5), sampler="ddim", sampling_steps=4, eta=1.0)
    assert torch.equal(a, b)


def test_unknown_family_and_missing_stylegan2():
    with pytest.raises(InputError, match="did you mean 'ddpm'"):
        family_module("ddmp")
    if importlib.util.find_spec("memscan.models.stylegan2") is None:
        with pytest.raises(InputError, match="not available"):
            build_model("stylegan2", None, _info(1, (16, 16)))


def test_scaling_round_trip_uint8():
    from memscan.models.scaling import from_model_range, to_model_range

    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model_range(values, {"lo": 0.0, "hi": 255.0})
    assert x.min() == -1 and x.max() == 1
    back = from_model_range(x, {"lo": 0.0, "hi": 255.0}, "uint8")
    np.testing.assert_array_equal(back, values.numpy())
    f = from_model_range(torch.tensor([-1.0, 0.0, 1.0]), {"lo": -3.0, "hi": 5.0}, "float32")
    np.testing.assert_allclose(f, [-3.0, 1.0, 5.0])
