"""Adaptive discriminator augmentation (ADA) for 2D and 3D multi-channel images.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (arXiv 2006.06676):
every image the discriminator sees — real *and* generated — passes through the same random, differentiable
augmentation pipeline, each transform applied with probability ``p``. Because the generator's gradients
flow through the augmentation, the generator still learns the clean distribution as long as the
transforms do not "leak" (roughly ``p < 0.8`` for the transforms kept here, the paper's Sec. 2.3 and
Fig. 4). ``p`` is tuned on the fly by the overfitting heuristic ``r_t = E[sign(D(x_real))]``
(target 0.6, the paper's Sec. 3): see :func:`adjust_augment_p`.

Kept transforms (a subset of the paper's "bgc" pipeline, all shown there to be non-leaking):

* ``xflip`` — mirror the left-right axis (:func:`mirror_axis`: W of ``[B, C, H, W]`` images, X of
  ``[B, C, X, Y, Z]`` volumes stored in NIfTI order, as in ``memscan.search.variants.flip_lr``);
* ``rot90`` — rotation by a random multiple of 90° in the plane of the first two spatial axes: the image
  plane (H, W) in 2D, the axial plane (X, Y) in 3D; only used when that plane is square, since a quarter
  turn of a non-square plane would change the shape;
* ``translate`` — integer translation by up to 1/8 of the size along every spatial axis;
* ``scale`` — isotropic scaling by ``2 ** N(0, 0.2)``;
* ``brightness`` — add ``N(0, 0.2)`` to all channels;
* ``contrast`` — scale around the per-image mean by ``2 ** N(0, 0.5)``.

The four geometric transforms are composed into one affine matrix per image and applied by a single
``grid_sample`` (bilinear, reflection padding); with ``align_corners=False`` flips, quarter turns and
integer shifts land on pixel centres, so they move pixels without blurring them.

Shapes: ``x`` is ``[B, C, H, W]`` (2D) or ``[B, C, X, Y, Z]`` (3D, NIfTI axis order), any C.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_OPS: tuple[str, ...] = ("xflip", "rot90", "translate", "scale", "brightness", "contrast")
"""Names of the available transforms, in the order they are applied."""

_P_MAX = 1.0 - 1e-6  # p stays in [0, 1)


def mirror_axis(spatial_dims: int) -> int:
    """The tensor dimension that runs left-right: W (3) of ``[B, C, H, W]``, X (2) of ``[B, C, X, Y, Z]``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return 3 if spatial_dims == 2 else 2


def adjust_augment_p(
    p: float, r_t: float, *, target: float, batch_size: int, interval: int, ada_kimg: float
) -> float:
    """One step of ADA's controller: move ``p`` towards the value that keeps ``r_t`` at ``target``.

    ``r_t = E[sign(D(x_real))]`` over the last ``interval`` steps; ``r_t > target`` means the
    discriminator is (over)confident on the training images, so augment more. The step size lets ``p``
    go from 0 to 1 in ``ada_kimg`` thousand images (ADA, Sec. 3: 500k images).

    Args:
        p: current augmentation probability.
        r_t: overfitting heuristic measured since the last adjustment, in ``[-1, 1]``.
        target: the value of ``r_t`` to hold (0.6 in the paper).
        batch_size: images per step.
        interval: steps between adjustments.
        ada_kimg: thousands of images for ``p`` to go from 0 to 1.

    Returns:
        ``clamp(p + sign(r_t - target) * batch_size * interval / (ada_kimg * 1000), 0, 1)``, below 1.
    """
    step = batch_size * interval / (ada_kimg * 1000.0)
    sign = (r_t > target) - (r_t < target)
    return float(min(max(p + sign * step, 0.0), _P_MAX))


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def augment(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    ops: tuple[str, ...] = AUGMENT_OPS,
) -> torch.Tensor:
    """Apply each transform in ``ops`` to each image independently with probability ``p``.

    Differentiable with respect to ``x`` (the generator is trained through it). Random numbers are drawn
    from ``generator`` (on its own device, then moved to ``x``'s) so that a run is reproducible.

    Args:
        x: images ``[B, C, H, W]`` or ``[B, C, X, Y, Z]``.
        p: probability of each transform, in ``[0, 1]``; ``p == 0`` returns ``x`` itself.
        generator: source of randomness (``None``: the global RNG of ``x``'s device).
        ops: names from :data:`AUGMENT_OPS`.

    Returns:
        Augmented images, same shape and dtype as ``x``.
    """
    unknown = [op for op in ops if op not in AUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; expected some of {AUGMENT_OPS}")
    if p <= 0 or not ops:
        return x
    spatial_dims = x.ndim - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"expected [B, C, H, W] or [B, C, X, Y, Z] images, got shape {tuple(x.shape)}")
    batch, device = x.shape[0], x.device
    dtype = torch.float32
    # affine_grid's coordinate i runs along tensor dimension x.ndim - 1 - i (coordinate 0 is the last axis).
    sizes = list(x.shape[2:])[::-1]
    n = spatial_dims
    flip_coord = x.ndim - 1 - mirror_axis(spatial_dims)
    plane = (n - 1, n - 2)  # coordinates of tensor dims 2 and 3 (first two spatial axes)

    def chosen() -> torch.Tensor:  # [B] bool: apply this transform to this image?
        return _uniform((batch,), generator, device) < p

    # Geometric transforms compose into one matrix per image acting on normalized output coordinates:
    # grid_sample reads input(theta @ [coord; 1]).
    theta = torch.eye(n + 1, device=device, dtype=dtype).repeat(batch, 1, 1)  # [B, n+1, n+1]
    geometric = False
    if "xflip" in ops:
        flip = chosen()
        m = torch.eye(n + 1, device=device, dtype=dtype).repeat(batch, 1, 1)
        m[:, flip_coord, flip_coord] = torch.where(flip, -1.0, 1.0)
        theta, geometric = theta @ m, True
    if "rot90" in ops and x.shape[2] == x.shape[3]:
        k = torch.floor(_uniform((batch,), generator, device) * 4).clamp(max=3)
        angle = torch.where(chosen(), k, torch.zeros_like(k)) * (math.pi / 2)
        cos, sin = torch.cos(angle).round(), torch.sin(angle).round()  # exact quarter turns
        m = torch.eye(n + 1, device=device, dtype=dtype).repeat(batch, 1, 1)
        a, b = plane
        m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = cos, -sin, sin, cos
        theta, geometric = theta @ m, True
    if "translate" in ops:
        apply = chosen().to(dtype)
        m = torch.eye(n + 1, device=device, dtype=dtype).repeat(batch, 1, 1)
        for axis, size in enumerate(sizes):
            shift_px = torch.round((_uniform((batch,), generator, device) * 2 - 1) * 0.125 * size)
            m[:, axis, n] = 2.0 * shift_px / size * apply  # pixels → normalized coordinates
        theta, geometric = theta @ m, True
    if "scale" in ops:
        factor = torch.exp2(_normal((batch,), generator, device) * 0.2)
        factor = torch.where(chosen(), factor, torch.ones_like(factor))
        m = torch.eye(n + 1, device=device, dtype=dtype).repeat(batch, 1, 1)
        for axis in range(n):
            m[:, axis, axis] = 1.0 / factor  # reading at coord / s enlarges the content by s
        theta, geometric = theta @ m, True
    out = x
    if geometric:
        grid = F.affine_grid(theta[:, :n, :], list(x.shape), align_corners=False)
        out = F.grid_sample(
            x.to(dtype), grid, mode="bilinear", padding_mode="reflection", align_corners=False
        ).to(x.dtype)
    if "brightness" in ops:
        shift = _normal((batch,), generator, device) * 0.2
        shift = torch.where(chosen(), shift, torch.zeros_like(shift))
        out = out + shift.view(batch, *[1] * (x.ndim - 1)).to(out.dtype)
    if "contrast" in ops:
        factor = torch.exp2(_normal((batch,), generator, device) * 0.5)
        factor = torch.where(chosen(), factor, torch.ones_like(factor)).view(batch, *[1] * (x.ndim - 1))
        mean = out.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        out = (out - mean) * factor.to(out.dtype) + mean
    return out
