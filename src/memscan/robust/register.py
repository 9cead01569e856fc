"""Registered correlation: the best similarity transform and gamma map between two images, batched.

For a pair (training item ``t``, synthetic item ``s``), the registered correlation is

    r*(s, t) = max over θ = (angle, scale, shift, γ) of  corr_w( s , (W_θ t)^γ ),

the Pearson correlation, over all channels of the pixels where the warped training item is defined
(weights ``w``: inside its field of view), between the synthetic item and the training item rotated by
``angle``, scaled by ``scale`` (isotropic; > 1 is a crop), shifted by ``shift`` pixels and passed
through the monotone map ``x ↦ x^γ`` (items scaled to [0, 1] per channel; Pearson correlation itself
removes any remaining affine intensity change). A pair whose overlap covers less than ``min_overlap`` of
the synthetic item's area scores ``-inf``: a tiny overlap cannot produce a high correlation by chance.

Search, coarse to fine (the objective is multi-modal in the angle, smooth near the optimum):

1. **grid** at ``coarse_size`` pixels, channel mean, γ = 1, no shift: every angle of ``angles`` ×
   every scale of ``scales``; the best grid point starts
2. **a short polish** (``polish_steps`` Adam steps at ``coarse_size`` on all channels): its value ranks
   a query's candidates, so that the refinement goes to the right ones (the grid alone ranked a
   rescaled copy's true source 2nd-6th among its neighbouring slices);
3. **a local optimiser** (Adam on the five parameters, rescaled to comparable units, with box bounds) at
   ``fine_size`` on all channels, optionally (``warp_grid``) a smooth bounded warp with it, then a few
   steps at ``score_size``, where the value is evaluated (optionally the best of a few matched blurs,
   ``blur_sigmas``). Each grid point's shift makes the intensity centroids meet (moment matching), so
   crops with an off-centre window start near their translation.

Adam is element-wise and the pairs' objectives are summed, so each pair's optimisation is independent of
the batch it is in. Everything is float32 on the CPU (or the GPU) with a fixed number of steps: the result
is deterministic on one machine. The value is an optimum *found*, not a proven global maximum: the score
is calibrated empirically (held-out items go through the identical search), not exact.

Why by hand: no maintained registration library among our dependencies optimises thousands of small
2D pairs as one batch (SimpleITK/ANTs register one pair at a time; MONAI's registration networks are
learned models). ``affine_grid``/``grid_sample`` do the warping.

Shapes: ``synthetic``, ``train`` ``[B, C, H, W]`` float32 in [0, 1] (see
:func:`memscan.embed.train.scale_items`); results ``[B]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from memscan.core.validate import check_float, check_int
from memscan.embed.augment import gaussian_blur, similarity_theta
from memscan.errors import InputError

# parameter units of the optimiser: angle 10°, log-scale 0.1, shift 1/16 of the size, log-gamma 0.8
_UNITS = (10.0, 0.1, 1.0 / 16.0, 1.0 / 16.0, 0.8)


@dataclass(frozen=True)
class RegisterConfig:
    """Search space and effort of the registration.

    Attributes:
        max_rotation: largest |angle| in degrees (grid and bounds).
        angle_step: grid spacing of the angle in degrees.
        scale_range: (low, high) scale bounds; the grid holds ``n_scales`` log-spaced values.
        max_shift: largest |shift| as a fraction of the size.
        gamma_range: (low, high) bounds of γ.
        min_overlap: least fraction of the synthetic item covered by the warped training item.
        coarse_size, fine_size: image sizes of the grid and of the local optimisation.
        score_size: image size of the last optimisation steps and of the score (None: full size).
            Scoring at a reduced size averages out pixel noise and small local warps, which a copy and
            a held-out item share alike (the null goes through the same search).
        fine_steps, final_steps: Adam steps at ``fine_size`` and at ``score_size``.
        polish_steps: Adam steps at ``coarse_size`` (all channels) from every candidate's best grid point
            before the candidates are ranked for the refinement (0: rank by the grid score alone). The
            grid's spacing (5°, scale steps of ~8 %) leaves a copy's true source and its neighbouring
            slices within a few thousandths of each other; a short local optimisation separates them.
        warp_grid: control points per side of an optional smooth displacement field optimised after
            the similarity transform (0: none). The field is bicubically interpolated from the control
            points, so its smoothness is set by their spacing.
        warp_max: largest displacement of a control point, as a fraction of the size (a box bound;
            0.035 is 4.5 pixels at 128²).
        warp_steps: Adam steps of the warp at ``fine_size`` (the similarity parameters move too).
        blur_sigmas: Gaussian blurs (σ in pixels at full size) of the transformed training item tried at
            the score, besides none; the score is the best of them (a matched filter: a copy that was
            blurred correlates best with the training item blurred alike; the null takes the same
            maximum). Empty: no blur.
        lr: Adam step size in the rescaled units.
    """

    max_rotation: float = 20.0
    angle_step: float = 5.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    n_scales: int = 7
    max_shift: float = 0.15
    gamma_range: tuple[float, float] = (0.4, 2.5)
    min_overlap: float = 0.5
    coarse_size: int = 32
    fine_size: int = 48
    score_size: int | None = 64
    fine_steps: int = 40
    final_steps: int = 8
    polish_steps: int = 15
    warp_grid: int = 0
    warp_max: float = 0.035
    warp_steps: int = 20
    blur_sigmas: tuple[float, ...] = (0.75, 1.5)
    lr: float = 0.05

    def __post_init__(self) -> None:
        check_float(self.max_rotation, "max_rotation", low=0.0, high=90.0)
        check_float(self.angle_step, "angle_step", low=0.0, open_low=True)
        lo, hi = self.scale_range
        check_float(lo, "scale_range[0]", low=0.0, open_low=True)
        check_float(hi, "scale_range[1]", low=lo)
        object.__setattr__(self, "scale_range", (float(lo), float(hi)))
        glo, ghi = self.gamma_range
        check_float(glo, "gamma_range[0]", low=0.0, open_low=True)
        check_float(ghi, "gamma_range[1]", low=glo)
        object.__setattr__(self, "gamma_range", (float(glo), float(ghi)))
        check_int(self.n_scales, "n_scales", minimum=1)
        check_float(self.max_shift, "max_shift", low=0.0, high=0.5)
        check_float(self.min_overlap, "min_overlap", low=0.0, high=1.0, open_low=True)
        check_int(self.coarse_size, "coarse_size", minimum=8)
        check_int(self.fine_size, "fine_size", minimum=8)
        check_int(self.fine_steps, "fine_steps", minimum=0)
        check_int(self.final_steps, "final_steps", minimum=0)
        check_int(self.polish_steps, "polish_steps", minimum=0)
        check_int(self.warp_grid, "warp_grid", minimum=0)
        if self.warp_grid == 1:
            raise InputError("warp_grid must be 0 (no warp) or at least 2 control points per side")
        check_float(self.warp_max, "warp_max", low=0.0, high=0.25)
        check_int(self.warp_steps, "warp_steps", minimum=0)
        sig = tuple(float(v) for v in self.blur_sigmas)
        for i, v in enumerate(sig):
            check_float(v, f"blur_sigmas[{i}]", low=0.0, high=8.0, open_low=True)
        object.__setattr__(self, "blur_sigmas", sig)
        if self.score_size is not None:
            check_int(self.score_size, "score_size", minimum=8)
        check_float(self.lr, "lr", low=0.0, open_low=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The coarse grid: ``(angles [G], scales [G])`` with 0° and scale 1 always included."""
        n = int(math.floor(self.max_rotation / self.angle_step + 1e-9))
        angles = np.arange(-n, n + 1) * self.angle_step
        lo, hi = self.scale_range
        scales = np.exp(np.linspace(math.log(lo), math.log(hi), self.n_scales))
        if lo <= 1.0 <= hi and not np.any(np.isclose(scales, 1.0)):
            scales = np.sort(np.append(scales, 1.0))
        a, s = np.meshgrid(angles, scales, indexing="ij")
        return a.ravel(), s.ravel()


@dataclass
class Registration:
    """Registration results of ``B`` pairs.

    Attributes:
        score: float64 ``[B]`` registered correlation (``-inf`` where the overlap is too small or an image
            is constant on it).
        angle, scale, gamma, overlap: float64 ``[B]``.
        shift: float64 ``[B, 2]`` (dy, dx) in pixels at full size.
        warp: float64 ``[B]`` largest control-point displacement of the smooth warp, pixels at full
            size (0 without a warp).
        blur: float64 ``[B]`` Gaussian σ (pixels at full size) of the training item at the score (0: none).
    """

    score: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    gamma: np.ndarray
    overlap: np.ndarray
    warp: np.ndarray
    blur: np.ndarray

    def labels(self) -> list[str]:
        return [
            transform_label(a, s, sh, g, wp, bl)
            for a, s, sh, g, wp, bl in zip(
                self.angle, self.scale, self.shift, self.gamma, self.warp, self.blur, strict=True
            )
        ]


def transform_label(
    angle: float, scale: float, shift: np.ndarray, gamma: float, warp: float = 0.0, blur: float = 0.0
) -> str:
    """``rot(-8.0)+scale(0.91)+shift(+2,-1)`` (+ ``+gamma(0.55)`` when γ differs from 1 by over 5 %,
    + ``+warp(3.2px)`` when a smooth warp moved some control point by half a pixel or more,
    + ``+blur(1.5)`` when the training item blurred by σ = 1.5 pixels matched best).

    The transform turns the training item into the synthetic one: rotated ``angle`` degrees
    counter-clockwise as displayed, enlarged ``scale`` times, then moved ``(dy, dx)`` pixels (down, right).
    """
    dy, dx = (int(round(float(v))) for v in shift)
    label = f"rot({float(angle):+.1f})+scale({float(scale):.2f})+shift({dy:+d},{dx:+d})"
    if abs(math.log(max(float(gamma), 1e-12))) > math.log(1.05):
        label += f"+gamma({float(gamma):.2f})"
    if float(warp) >= 0.5:
        label += f"+warp({float(warp):.1f}px)"
    if float(blur) > 0:
        label += f"+blur({float(blur):.1f})"
    return label


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C, size, size']`` keeping the aspect ratio (antialiased bilinear)."""
    h, w = x.shape[-2:]
    if max(h, w) <= size:
        return x
    f = size / max(h, w)
    shape = (max(1, round(h * f)), max(1, round(w * f)))
    return F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)


def registered_correlation(
    synthetic: torch.Tensor,
    train: torch.Tensor,
    angle: torch.Tensor,
    log_scale: torch.Tensor,
    shift_frac: torch.Tensor,
    log_gamma: torch.Tensor,
    min_overlap: float,
    field: torch.Tensor | None = None,
    blur: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Pearson correlation of ``synthetic`` and the transformed ``train`` (differentiable).

    Args:
        synthetic, train: ``[B, C, H, W]`` float in [0, 1].
        angle: ``[B]`` degrees; log_scale: ``[B]``; shift_frac: ``[B, 2]`` (dy, dx) as fractions of (H, W);
            log_gamma: ``[B]``.
        min_overlap: pairs with a smaller overlap fraction get ``-inf``.
        field: optional ``[B, 2, G, G]`` control-point displacements (x, y) in ``affine_grid``'s
            normalised units, added to the sampling grid after bicubic interpolation (see
            :func:`warp_field`).
        blur: optional ``[B]`` Gaussian σ in pixels (of these images) applied to the transformed training
            item before the gamma map (0: none).

    Returns:
        ``(corr [B], overlap [B])``.
    """
    b, c, h, w = train.shape
    shift = shift_frac * torch.tensor([h, w], dtype=shift_frac.dtype, device=shift_frac.device)
    theta = similarity_theta(angle, torch.exp(log_scale), shift, h, w)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    if field is not None:
        grid = grid + warp_field(field, h, w)
    warped = F.grid_sample(train, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(
        torch.ones(b, 1, h, w, dtype=train.dtype, device=train.device),
        grid.detach(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    wgt = (inside > 0.999).to(train.dtype)  # [B, 1, H, W]: where the warped item is fully defined
    overlap = wgt.mean(dim=(1, 2, 3))
    if blur is not None:
        warped = gaussian_blur(warped, blur)
    t = (warped.clamp_min(0.0) + 1e-6) ** torch.exp(log_gamma)[:, None, None, None]
    n = wgt.sum(dim=(1, 2, 3)) * c
    mean_s = (synthetic * wgt).sum(dim=(1, 2, 3)) / n.clamp_min(1)
    mean_t = (t * wgt).sum(dim=(1, 2, 3)) / n.clamp_min(1)
    ds = (synthetic - mean_s[:, None, None, None]) * wgt
    dt = (t - mean_t[:, None, None, None]) * wgt
    cov = (ds * dt).sum(dim=(1, 2, 3))
    var = (ds * ds).sum(dim=(1, 2, 3)) * (dt * dt).sum(dim=(1, 2, 3))
    corr = cov / var.clamp_min(1e-20).sqrt()
    bad = (overlap < min_overlap) | (var <= 1e-20)
    return torch.where(bad, torch.full_like(corr, -math.inf), corr), overlap


def warp_field(field: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Control points ``[B, 2, G, G]`` → dense displacement ``[B, H, W, 2]`` (bicubic, corners on corners).

    A cubic interpolant of a coarse grid is smooth (continuous first and second derivatives inside
    each cell); with few control points the field can bend anatomy gently but cannot rearrange it
    (the free-form deformation of Rueckert et al. 1999, IEEE TMI 18:712, on a coarse grid).
    """
    return F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def centroids(x: torch.Tensor) -> torch.Tensor:
    """Intensity centroids ``[B, 2]`` (x, y) of the channel mean of ``x [B, C, H, W]``, in pixels from the
    image centre (y down); the centre for an all-zero image."""
    m = x.mean(dim=1)  # [B, H, W]
    h, w = m.shape[-2:]
    ys = torch.arange(h, dtype=m.dtype, device=m.device) + 0.5 - h / 2.0
    xs = torch.arange(w, dtype=m.dtype, device=m.device) + 0.5 - w / 2.0
    total = m.sum(dim=(1, 2)).clamp_min(1e-12)
    cx = (m.sum(dim=1) * xs).sum(dim=1) / total
    cy = (m.sum(dim=2) * ys).sum(dim=1) / total
    return torch.stack([cx, cy], dim=1)


def centroid_shift(
    c_syn: torch.Tensor,
    c_train: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    h: int,
    w: int,
    max_shift: float,
) -> torch.Tensor:
    """The shift that maps the training item's centroid onto the synthetic item's under (angle, scale).

    ``T p = scale · R p + t`` with ``T c_train = c_syn`` gives ``t = c_syn - scale · R c_train`` (moment
    matching, the classic initialisation of image registration). Returns ``[B, 2]`` (dy, dx) as fractions
    of (H, W), clamped to ``±max_shift``.
    """
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a), torch.sin(a)
    x, y = c_train[:, 0], c_train[:, 1]
    # R (counter-clockwise on screen, y down): (x, y) -> (x cos + y sin, -x sin + y cos)
    tx = c_syn[:, 0] - scale * (x * cos + y * sin)
    ty = c_syn[:, 1] - scale * (-x * sin + y * cos)
    return torch.stack([ty / h, tx / w], dim=1).clamp(-max_shift, max_shift)


@torch.no_grad()
def coarse_search(
    synthetic: torch.Tensor, train: torch.Tensor, cfg: RegisterConfig, *, batch_elems: int = 2**24
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid search at ``coarse_size`` on the channel mean, each grid point shifted so the centroids meet.

    Returns:
        ``(best score [B], angle [B], scale [B], shift [B, 2])`` (shift as fractions of (H, W)). Ties go
        to the first grid point (grid order), so the result is deterministic.
    """
    h, w = synthetic.shape[-2:]
    c_syn, c_train = centroids(synthetic), centroids(train)
    s = resize(synthetic.mean(dim=1, keepdim=True), cfg.coarse_size)
    t = resize(train.mean(dim=1, keepdim=True), cfg.coarse_size)
    angles, scales = (torch.as_tensor(v, dtype=torch.float32, device=s.device) for v in cfg.grid())
    g = angles.numel()
    b = s.shape[0]
    best = torch.full((b,), -math.inf, device=s.device)
    best_a = torch.zeros(b, device=s.device)
    best_s = torch.ones(b, device=s.device)
    best_t = torch.zeros(b, 2, device=s.device)
    per = max(1, batch_elems // (g * s[0].numel()))
    for sl in _chunks(b, per):
        m = sl.stop - sl.start
        a = angles.repeat(m)
        sc = scales.repeat(m)
        shift = centroid_shift(
            c_syn[sl].repeat_interleave(g, 0), c_train[sl].repeat_interleave(g, 0), a, sc, h, w, cfg.max_shift
        )
        corr, _ = registered_correlation(
            s[sl].repeat_interleave(g, 0),
            t[sl].repeat_interleave(g, 0),
            a,
            torch.log(sc),
            shift,
            torch.zeros(m * g, device=s.device),
            cfg.min_overlap,
        )
        corr = torch.nan_to_num(corr, nan=-math.inf).view(m, g)
        v, i = corr.max(dim=1)  # first maximum: deterministic ties
        best[sl], best_a[sl], best_s[sl] = v, angles[i], scales[i]
        best_t[sl] = shift.view(m, g, 2)[torch.arange(m, device=s.device), i]
    return best, best_a, best_s, best_t


def _bounds(cfg: RegisterConfig, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = torch.tensor(
        [
            -cfg.max_rotation,
            math.log(cfg.scale_range[0]),
            -cfg.max_shift,
            -cfg.max_shift,
            math.log(cfg.gamma_range[0]),
        ]
    )
    hi = torch.tensor(
        [
            cfg.max_rotation,
            math.log(cfg.scale_range[1]),
            cfg.max_shift,
            cfg.max_shift,
            math.log(cfg.gamma_range[1]),
        ]
    )
    units = torch.tensor(_UNITS)
    return (lo / units).to(size.device), (hi / units).to(size.device)


def _optimise(
    s: torch.Tensor,
    t: torch.Tensor,
    u: torch.Tensor,
    cfg: RegisterConfig,
    steps: int,
    v: torch.Tensor | None = None,
    *,
    move_warp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adam on the rescaled parameters ``u [B, 5]`` (maximising the correlation), clamped to the bounds.

    ``v [B, 2, G, G]``: warp control points in units of ``warp_max`` (clamped to ±1); optimised too when
    ``move_warp``, else held fixed. Returns ``(u, v)``.
    """
    units = torch.tensor(_UNITS, device=u.device)
    lo, hi = _bounds(cfg, u)
    # warp units: warp_max (a fraction of the size) in affine_grid's normalised coordinates (span 2)
    wu = 2.0 * cfg.warp_max
    u = u.clone().requires_grad_(True)
    params = [u]
    if v is not None and move_warp:
        v = v.clone().requires_grad_(True)
        params.append(v)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for i in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max(1, steps))))
        p = u * units
        field = None if v is None else v * wu
        corr, _ = registered_correlation(s, t, p[:, 0], p[:, 1], p[:, 2:4], p[:, 4], cfg.min_overlap, field)
        loss = -torch.where(torch.isfinite(corr), corr, torch.zeros_like(corr)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            u.copy_(torch.maximum(torch.minimum(u, hi), lo))
            if v is not None and move_warp:
                v.clamp_(-1.0, 1.0)
    return u.detach(), (None if v is None else v.detach())


def _initial_u(
    angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, gamma: torch.Tensor | None
) -> torch.Tensor:
    units = torch.tensor(_UNITS, device=angle.device)
    u = torch.zeros(angle.shape[0], 5, device=angle.device)
    u[:, 0] = angle / units[0]
    u[:, 1] = torch.log(scale) / units[1]
    u[:, 2:4] = shift / units[2:4]
    if gamma is not None:
        u[:, 4] = torch.log(gamma) / units[4]
    return u


def polish(
    synthetic: torch.Tensor,
    train: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    cfg: RegisterConfig,
    *,
    batch: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``polish_steps`` Adam steps at ``coarse_size`` on all channels from each pair's grid point.

    The polished correlation ranks a query's candidates for :func:`refine` (cheap: ~1/16 of the pixels
    of a refinement step at 128²).

    Returns:
        ``(score [B], angle [B], scale [B], shift [B, 2], gamma [B])`` (shift as fractions of (H, W)).
    """
    b = synthetic.shape[0]
    units = torch.tensor(_UNITS, device=synthetic.device)
    score = torch.empty(b, device=synthetic.device)
    out = torch.empty(b, 5, device=synthetic.device)
    for sl in _chunks(b, batch):
        s = resize(synthetic[sl], cfg.coarse_size)
        t = resize(train[sl], cfg.coarse_size)
        u, _ = _optimise(s, t, _initial_u(angle[sl], scale[sl], shift[sl], None), cfg, cfg.polish_steps)
        with torch.no_grad():
            p = u * units
            corr, _ = registered_correlation(s, t, p[:, 0], p[:, 1], p[:, 2:4], p[:, 4], cfg.min_overlap)
        score[sl] = torch.nan_to_num(corr, nan=-math.inf)
        out[sl] = p
    return score, out[:, 0], torch.exp(out[:, 1]), out[:, 2:4], torch.exp(out[:, 4])


def refine(
    synthetic: torch.Tensor,
    train: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    cfg: RegisterConfig,
    *,
    gamma: torch.Tensor | None = None,
    batch: int = 256,
) -> Registration:
    """Local optimisation from ``(angle, scale, shift, gamma)`` (γ 1 when not given): the similarity
    transform at ``fine_size``, then (``warp_grid`` > 0) the smooth warp with it, then the last steps and
    the value at ``score_size``."""
    b = synthetic.shape[0]
    res = {k: np.empty(b) for k in ("score", "angle", "scale", "gamma", "overlap", "warp", "blur")}
    res["shift"] = np.empty((b, 2))
    units = torch.tensor(_UNITS, device=synthetic.device)
    h, w = synthetic.shape[-2:]
    for sl in _chunks(b, batch):
        m = sl.stop - sl.start
        u = _initial_u(angle[sl], scale[sl], shift[sl], None if gamma is None else gamma[sl])
        v = None
        s_fine, t_fine = resize(synthetic[sl], cfg.fine_size), resize(train[sl], cfg.fine_size)
        if cfg.fine_steps:
            u, _ = _optimise(s_fine, t_fine, u, cfg, cfg.fine_steps)
        if cfg.warp_grid:
            v = torch.zeros(m, 2, cfg.warp_grid, cfg.warp_grid, device=synthetic.device)
            if cfg.warp_steps and cfg.warp_max > 0:
                u, v = _optimise(s_fine, t_fine, u, cfg, cfg.warp_steps, v, move_warp=True)
        s_final = synthetic[sl] if cfg.score_size is None else resize(synthetic[sl], cfg.score_size)
        t_final = train[sl] if cfg.score_size is None else resize(train[sl], cfg.score_size)
        if cfg.final_steps:
            u, v = _optimise(s_final, t_final, u, cfg, cfg.final_steps, v, move_warp=v is not None)
        with torch.no_grad():
            p = u * units
            field = None if v is None else v * (2.0 * cfg.warp_max)
            corr, overlap = registered_correlation(
                s_final, t_final, p[:, 0], p[:, 1], p[:, 2:4], p[:, 4], cfg.min_overlap, field
            )
            corr = torch.nan_to_num(corr, nan=-math.inf)
            sigma = torch.zeros(m, device=synthetic.device)
            f = s_final.shape[-1] / w  # σ at full size -> σ at the score's size
            for sg in cfg.blur_sigmas:
                bs = torch.full((m,), sg * f, device=synthetic.device)
                cb, _ = registered_correlation(
                    s_final, t_final, p[:, 0], p[:, 1], p[:, 2:4], p[:, 4], cfg.min_overlap, field, bs
                )
                better = torch.nan_to_num(cb, nan=-math.inf) > corr  # ties keep the smaller blur
                corr = torch.where(better, cb, corr)
                sigma = torch.where(better, torch.full_like(sigma, sg), sigma)
        res["blur"][sl] = sigma.double().cpu().numpy()
        res["score"][sl] = torch.nan_to_num(corr, nan=-math.inf).double().cpu().numpy()
        res["angle"][sl] = p[:, 0].double().cpu().numpy()
        res["scale"][sl] = torch.exp(p[:, 1]).double().cpu().numpy()
        res["shift"][sl] = (p[:, 2:4] * torch.tensor([h, w], device=p.device)).double().cpu().numpy()
        res["gamma"][sl] = torch.exp(p[:, 4]).double().cpu().numpy()
        res["overlap"][sl] = overlap.double().cpu().numpy()
        # largest control-point displacement in pixels at full size
        res["warp"][sl] = (
            0.0
            if v is None
            else (v.abs().amax(dim=(1, 2, 3)) * cfg.warp_max * max(h, w)).double().cpu().numpy()
        )
    return Registration(**res)


def register_pairs(synthetic: torch.Tensor, train: torch.Tensor, cfg: RegisterConfig) -> Registration:
    """Coarse grid then local optimisation for each pair ``(synthetic[i], train[i])``.

    Args:
        synthetic, train: ``[B, C, H, W]`` float32 in [0, 1] (same shape).
        cfg: the search.

    Returns:
        :class:`Registration` of the B pairs.
    """
    if synthetic.shape != train.shape or synthetic.ndim != 4:
        raise ValueError(
            f"register_pairs needs two [B, C, H, W] tensors of one shape; got "
            f"{tuple(synthetic.shape)} and {tuple(train.shape)}"
        )
    _, a, s, t = coarse_search(synthetic, train, cfg)
    g = None
    if cfg.polish_steps:
        _, a, s, t, g = polish(synthetic, train, a, s, t, cfg)
    return refine(synthetic, train, a, s, t, cfg, gamma=g)
