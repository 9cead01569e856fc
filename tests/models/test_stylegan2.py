"""StyleGAN2-ADA (memscan.models.stylegan2) and its augmentation pipeline (memscan.models.augment), on CPU."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from model_helpers import smooth_batch

from memscan.errors import InputError
from memscan.models.augment import adjust_augment_p, augment, mirror_axis
from memscan.models.base import DataInfo
from memscan.models.stylegan2 import (
    PRESETS,
    ModulatedConv,
    StyleGAN2Model,
    build,
    ema_beta,
    minibatch_stddev,
    update_ema,
)

CHANNELS = ("t1", "t2", "t1ce", "flair", "seg")


def _data(shape: tuple[int, ...], n_channels: int = 1) -> DataInfo:
    return DataInfo(CHANNELS[:n_channels], shape)


def _tiny(data: DataInfo, **overrides: object) -> StyleGAN2Model:
    torch.manual_seed(0)
    return build(dict(overrides), data, preset="tiny")


# --- shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "n_channels"),
    [
        ((16, 16), 1),
        ((16, 16), 3),
        ((16, 16), 5),
        ((16, 32), 2),
        ((8, 8, 8), 1),
        ((8, 8, 8), 5),
        ((4, 8, 8), 3),
    ],
)
def test_generator_and_discriminator_shapes(shape: tuple[int, ...], n_channels: int) -> None:
    model = _tiny(_data(shape, n_channels))
    z = torch.randn(3, model.config.z_dim)
    img = model.G(z)
    assert img.shape == (3, n_channels, *shape)
    assert model.D(img).shape == (3,)
    out = model.sample(2, torch.Generator().manual_seed(0))
    assert out.shape == (2, n_channels, *shape)
    assert out.min() >= -1 and out.max() <= 1


def test_minibatch_stddev_appends_maps_for_anysmooth_batch() -> None:
    x = torch.randn(6, 8, 4, 4)  # 6 is not divisible by the group size 4: groups of 3
    y = minibatch_stddev(x, group_size=4, n_channels=2)
    assert y.shape == (6, 10, 4, 4)
    assert torch.equal(y[:, :8], x)
    assert torch.all(y[:, 8:] > 0)


# --- modulated convolution ------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_demodulation_gives_unit_variance(spatial_dims: int) -> None:
    torch.manual_seed(0)
    conv = ModulatedConv(64, 32, 3, w_dim=16, spatial_dims=spatial_dims)
    with torch.no_grad():
        conv.affine.weight.mul_(3.0)  # styles far from 1: without demodulation the scale would drift
    size = (24, 24) if spatial_dims == 2 else (10, 10, 10)
    x = torch.randn(4, 64, *size)
    w = torch.randn(4, 16)
    with torch.no_grad():
        out = conv(x, w)
    inner = out[(slice(None), slice(None), *[slice(1, -1)] * spatial_dims)]  # away from the zero padding
    std = inner.transpose(0, 1).reshape(32 * 4, -1).std(dim=1)  # per sample and output channel
    assert std.mean().item() == pytest.approx(1.0, abs=0.05)
    assert std.min().item() > 0.8 and std.max().item() < 1.2
    conv.demodulate = False
    with torch.no_grad():
        raw = conv(x, w)[(slice(None), slice(None), *[slice(1, -1)] * spatial_dims)]
    assert abs(raw.std().item() - 1.0) > 0.3  # the property comes from demodulation, not from luck


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_per_sample_kernels(spatial_dims: int, demodulate: bool) -> None:
    """The scaled-activation form equals Eq. 1–3 with per-sample kernels (a float64 grouped convolution)."""
    torch.manual_seed(1)
    conv = ModulatedConv(6, 5, 3, w_dim=8, spatial_dims=spatial_dims, demodulate=demodulate).double()
    with torch.no_grad():
        conv.affine.weight.mul_(2.0)
    size = (9, 7) if spatial_dims == 2 else (5, 6, 4)
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    w = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        out = conv(x, w)
        styles = conv.affine(w)
        kernels = conv.weight[None] * conv.weight_gain * styles.view(3, 1, 6, *[1] * spatial_dims)
        if demodulate:
            dims = tuple(range(2, kernels.ndim))
            kernels = kernels / torch.sqrt(kernels.square().sum(dim=dims, keepdim=True) + 1e-8)
        fn = torch.nn.functional.conv2d if spatial_dims == 2 else torch.nn.functional.conv3d
        ref = fn(x.reshape(1, 18, *size), kernels.reshape(15, 6, *kernels.shape[3:]), padding=1, groups=3)
    torch.testing.assert_close(out, ref.reshape(3, 5, *size), rtol=1e-12, atol=1e-12)


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(240, 240), (2, 2), (8, 8, 6), (16,)])
def test_image_size_must_be_power_of_two(shape: tuple[int, ...]) -> None:
    text = "×".join(map(str, shape))
    with pytest.raises(InputError, match=text):
        build(None, _data(shape), preset="tiny")


def test_preset_typo_suggests_the_nearest() -> None:
    with pytest.raises(InputError, match="did you mean 'tiny'"):
        build(None, _data((16, 16)), preset="tine")


def test_option_typo_suggests_the_nearest() -> None:
    with pytest.raises(InputError, match="did you mean 'r1_gamma'"):
        build({"r1_gama": 1.0}, _data((16, 16)), preset="tiny")


@pytest.mark.parametrize(
    "bad",
    [{"r1_interval": 0}, {"augment_p": 1.0}, {"lr_g": -1.0}, {"mirror": "yes"}, {"augment_ops": ["xflop"]}],
)
def test_bad_values_are_input_errors(bad: dict[str, object]) -> None:
    with pytest.raises(InputError, match=next(iter(bad)).split("_")[0]):
        build(bad, _data((16, 16)), preset="tiny")


def test_presets_and_config_round_trip_through_json() -> None:
    assert {"study", "quick", "quick3d", "tiny"} <= set(PRESETS)
    model = build(None, _data((8, 8), 5), preset="study")
    cfg = model.config
    assert (cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.lr_g, cfg.batch_size) == (512, 512, 8, 0.0025, 32)
    assert cfg.mirror and cfg.ada
    assert cfg.r1_gamma == pytest.approx(0.0002 * 8 * 8 / 32)  # ADA's heuristic, resolved
    again = build(json.loads(json.dumps(model.config_dict())), _data((8, 8), 5), preset="tiny")
    assert again.config == cfg


# --- training -------------------------------------------------------------------------------------------


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_train_steps_are_finite_and_change_the_weights() -> None:
    data = _data((16, 16), 2)
    model = _tiny(data)
    batch = smooth_batch(data)
    before = {k: _params(m) for k, m in model.modules().items()}
    for step in range(3):
        out = model.train_step(batch, step)
        for key in ("loss_g", "loss_d", "d_real", "d_fake", "r_t", "aug_p"):
            assert math.isfinite(float(out[key])), key
    for key, module in model.modules().items():
        changed = [not torch.equal(a, b) for a, b in zip(before[key], _params(module), strict=True)]
        assert sum(changed) > len(changed) // 2, key


def test_train_step_in_3d() -> None:
    data = _data((8, 8, 8), 3)
    model = _tiny(data)
    out = model.train_step(smooth_batch(data, n=2), 0)
    assert all(math.isfinite(float(v)) for v in out.values())


def test_r1_is_applied_on_the_lazy_interval() -> None:
    data = _data((16, 16))
    model = _tiny(data, r1_interval=2, r1_gamma=1.0)
    batch = smooth_batch(data, n=2)
    with_r1 = [step for step in range(5) if "r1" in model.train_step(batch, step)]
    assert with_r1 == [0, 2, 4]
    assert _tiny(data, r1_gamma=0.0).train_step(batch, 0).keys().isdisjoint({"r1"})  # R1 off


def test_r1_penalty_is_the_squared_gradient_norm() -> None:
    data = _data((16, 16))
    model = _tiny(data, mirror=False, ada=False, augment_p=0.0, r1_gamma=1.0)
    batch = smooth_batch(data)
    x = batch.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.D(x).sum(), x)
    expected = grad.square().sum(dim=(1, 2, 3)).mean()
    out = model.train_step(batch, 0)  # D's R1 is computed before its update: same weights
    assert float(out["r1"]) == pytest.approx(expected.item(), rel=1e-5)


# --- ADA ------------------------------------------------------------------------------------------------


def test_ada_p_moves_up_when_d_overfits_and_down_otherwise() -> None:
    kw = {"target": 0.6, "batch_size": 32, "interval": 4, "ada_kimg": 500}
    step = 32 * 4 / 500_000
    assert adjust_augment_p(0.2, 0.9, **kw) == pytest.approx(0.2 + step)
    assert adjust_augment_p(0.2, 0.1, **kw) == pytest.approx(0.2 - step)
    assert adjust_augment_p(0.2, 0.6, **kw) == 0.2
    assert adjust_augment_p(0.0, -1.0, **kw) == 0.0  # clamped at 0
    assert adjust_augment_p(0.99999, 1.0, **{**kw, "ada_kimg": 0.001}) < 1.0  # stays below 1


def test_ada_in_training_follows_r_t() -> None:
    data = _data((16, 16))
    model = _tiny(data, ada_interval=2, ada_kimg=1.0)
    batch = smooth_batch(data)
    signs = []
    for step in range(2):
        out = model.train_step(batch, step)
        signs.append(float(out["r_t"]))
    r_t = sum(signs) / 2
    expected = adjust_augment_p(0.0, r_t, target=0.6, batch_size=4, interval=2, ada_kimg=1.0)
    assert out["aug_p"] == pytest.approx(expected)
    assert model.extra_state()["ada_steps"] == 0


def test_augment_identity_flip_rotation_translation_and_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 8, generator=g)
    assert augment(x, 0.0, g) is x
    flipped = augment(x, 1.0 - 1e-9, g, ops=("xflip",))
    torch.testing.assert_close(flipped, x.flip(3), atol=1e-5, rtol=0)
    rotated = augment(x, 1.0 - 1e-9, g, ops=("rot90",))
    for i in range(3):
        assert any(torch.allclose(rotated[i], torch.rot90(x[i], k, dims=(1, 2)), atol=1e-5) for k in range(4))
    vol = torch.randn(2, 1, 8, 8, 4, generator=g)  # [B, C, X, Y, Z]: 3D rotation in the (X, Y) plane
    rot3 = augment(vol, 1.0 - 1e-9, g, ops=("rot90",))
    for i in range(2):
        assert any(torch.allclose(rot3[i], torch.rot90(vol[i], k, dims=(1, 2)), atol=1e-5) for k in range(4))
    torch.testing.assert_close(augment(vol, 1.0 - 1e-9, g, ops=("xflip",)), vol.flip(2), atol=1e-5, rtol=0)
    shifted = augment(x, 1.0 - 1e-9, g, ops=("translate",))  # integer shifts move values, never blend them
    dist = (shifted.reshape(-1, 1) - x.reshape(1, -1)).abs().min(dim=1).values
    assert dist.max() < 1e-5
    xg = x.clone().requires_grad_(True)
    augment(xg, 0.9, g).square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_mirror_axis_is_left_right() -> None:
    assert mirror_axis(2) == 3  # W of [B, C, H, W]
    assert mirror_axis(3) == 2  # X of [B, C, X, Y, Z] (NIfTI order, as memscan.search.variants.flip_lr)


# --- EMA ------------------------------------------------------------------------------------------------


def test_ema_half_life_and_update_math() -> None:
    assert ema_beta(32, 10.0) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, 10.0, nimg=1000, rampup=0.05) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(10, 0.01) == pytest.approx(0.5)  # one half-life per step
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.25 * e + 0.75 * m for e, m in zip(_params(ema), _params(model), strict=True)]
    update_ema(ema, model, 0.25)
    for got, want in zip(_params(ema), expected, strict=True):
        torch.testing.assert_close(got, want)


# --- sampling -------------------------------------------------------------------------------------------


def test_sampling_is_deterministic_and_ignores_global_rng() -> None:
    data = _data((16, 16), 2)
    model = _tiny(data)
    model.train_step(smooth_batch(data), 0)  # noise strengths and EMA away from their initial values
    torch.manual_seed(1)
    a = model.sample(4, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    torch.rand(100)
    b = model.sample(4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(4, torch.Generator().manual_seed(8)))
    # One generator per item: an item does not depend on the batch it is in.
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    whole = model.sample(4, gens)
    part = model.sample(2, [torch.Generator().manual_seed(102 + i) for i in range(2)])
    torch.testing.assert_close(whole[2:], part, atol=1e-5, rtol=1e-5)
    assert model.sample(1, torch.Generator().manual_seed(0), truncation=0.0).shape == (1, 2, 16, 16)
    with pytest.raises(InputError, match="sampler"):
        model.sample(1, torch.Generator(), sampler="ddim")


# --- checkpoint round trip ------------------------------------------------------------------------------


def test_state_round_trip_gives_the_identical_next_step() -> None:
    data = _data((16, 16), 2)
    batch = smooth_batch(data)
    model = _tiny(data, ada_interval=2)
    for step in range(3):  # an R1 step (0), an ADA adjustment (1), and a partial ADA window (2)
        model.train_step(batch, step)
    modules = {k: copy.deepcopy(m.state_dict()) for k, m in model.modules().items()}
    optims = {k: copy.deepcopy(o.state_dict()) for k, o in model.optimizers().items()}
    extra = json.loads(json.dumps(model.extra_state()))
    config = json.loads(json.dumps(model.config_dict()))

    torch.manual_seed(123)  # a different initialisation and global RNG state: everything must come from state
    resumed = build(config, data, preset="quick")
    for k, m in resumed.modules().items():
        m.load_state_dict(modules[k])
    for k, o in resumed.optimizers().items():
        o.load_state_dict(optims[k])
    resumed.load_extra_state(extra)

    for step in (3,):  # completes the ADA window that straddles the checkpoint
        want, got = model.train_step(batch, step), resumed.train_step(batch, step)
        assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}
    for a, b in zip(model.G_ema.parameters(), resumed.G_ema.parameters(), strict=True):
        assert torch.equal(a, b)
