"""Deterministic, realistic-looking phantom data for tests and the demo (nothing is ever downloaded).

Two families of synthetic "patients" are generated from a :class:`numpy.random.Generator`:

**Brain MRI (BraTS-like).** :func:`brain_volumes` builds one subject as four co-registered modality
volumes (T1, T1ce, T2, FLAIR) plus a BraTS tumour segmentation, with array axes ``(x, y, z)``: ``x``
toward the patient's left, ``y`` toward anterior, ``z`` toward superior (nibabel codes ``LAS``; axial
slices are ``vol[:, :, k]``). :func:`write_brats_tree` stores them as BraTS files are stored (``LPS``:
``y`` reversed, affine ``diag(-1, -1, 1)``), so a file's affine tells the anatomy truly.
The anatomy model is a set of nested, noise-perturbed implicit surfaces evaluated in
head-normalised coordinates (so every geometry scales with the array shape):

* head ellipsoid (slightly egg-shaped, surface perturbed by a smooth random field) with a scalp layer,
  a skull layer (bright marrow in T1, moderate elsewhere) and a thin CSF layer under the skull;
* the brain, whose surface is cut by sulci (zero-level sets of a mid-frequency random field, limited
  to the outer cortex) and by the inter-hemispheric fissure; grey matter forms a cortical ribbon of
  varying thickness that dips along the sulci, white matter lies beneath it; deep grey nuclei
  (thalami, putamina) are small ellipsoids;
* curved ("banana") lateral ventricles full of CSF (dark in T1/T1ce/FLAIR, bright in T2);
* a glioma: necrotic core (label 1, dark in T1ce), enhancing rim (label 4, bright in T1ce) and
  surrounding vasogenic oedema (label 2, bright in T2/FLAIR), all with perturbed shapes and confined
  to brain parenchyma.

Every tissue gets a partial-volume fraction (linear ramps about one voxel wide); each modality is the
fraction-weighted sum of per-tissue intensities, modulated by a faint parenchymal texture and a smooth
multiplicative bias field, plus mild noise. Background outside the head is exactly 0. The head spans
only the middle part of the ``z`` range, so the first and last axial slices are empty. Per subject the
rng draws head size/shape/position, ventricle size, tumour position/size/shape and the intensity scale
of each modality (max in the hundreds to thousands, different per modality).

**Paediatric chest x-ray (Kermany-like).** :func:`chest_patient` draws a patient's anatomy (body
width, lung fields, diaphragm, heart, mediastinum/spine, ribs, clavicles, lung-marking texture) and
:func:`chest_xray_from` renders one radiograph of that patient with per-image pose (shift, small
rotation, scale), exposure and noise, optionally with patchy pneumonic opacities. Radiographs are
composed in an attenuation domain and mapped to uint8 (bone/soft tissue bright, lungs and air dark).

Writers create on-disk trees in the real datasets' layouts: :func:`write_brats_tree` (BraTS 2020 and
2021 naming, NIfTI ``.nii.gz``), :func:`write_cxr_tree` (``{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``
with the Kermany file-name schemes) and :func:`write_folder_tree` (generic ``subj_XXX/slice_YYY.png``).

Determinism: every generator takes an explicit rng; the writers derive subject/patient ``i``'s rng from
``numpy.random.SeedSequence([seed, i])`` only, so subject ``i`` is identical whatever the number of
subjects. The number of random draws does not depend on the array shape, so for a fixed rng a small
volume is a down-scaled version of a large one (up to interpolation and noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BRATS_MODALITIES",
    "ChestParams",
    "brain_subject",
    "brain_volumes",
    "chest_patient",
    "chest_xray",
    "chest_xray_from",
    "subject_rng",
    "write_brats_tree",
    "write_cxr_tree",
    "write_folder_tree",
]

#: Modality keys of a BraTS subject, in the order of the BraTS file suffixes.
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# Tissue classes of the brain phantom, innermost (painted first) to outermost.
_TISSUES: tuple[str, ...] = (
    "necrosis",
    "enhancing",
    "oedema",
    "ventricle",
    "deep_gm",
    "wm",
    "gm",
    "csf",
    "marrow",
    "skull",
    "scalp",
)

# Relative intensity of each tissue per modality (rows: t1, t1ce, t2, flair; columns: _TISSUES).
# "skull" is cortical bone (dark everywhere); "marrow" is the fatty diploe inside it (bright in T1).
_BASE_INTENSITY = np.array(
    [
        # nec   enh   oed   vent  dgm   wm    gm    csf   marrow skull scalp
        [0.22, 0.44, 0.38, 0.10, 0.55, 0.68, 0.42, 0.11, 0.85, 0.10, 0.78],  # t1
        [0.15, 0.95, 0.38, 0.10, 0.55, 0.66, 0.41, 0.11, 0.82, 0.10, 0.76],  # t1ce
        [0.85, 0.55, 0.80, 1.00, 0.46, 0.36, 0.52, 0.98, 0.45, 0.07, 0.50],  # t2
        [0.35, 0.62, 0.95, 0.07, 0.48, 0.40, 0.55, 0.08, 0.42, 0.07, 0.48],  # flair
    ],
    dtype=np.float32,
)

# Range of the per-subject intensity scale (the approximate maximum) of each modality.
_SCALE_RANGE: dict[str, tuple[float, float]] = {
    "t1": (350.0, 1400.0),
    "t1ce": (500.0, 3200.0),
    "t2": (700.0, 4000.0),
    "flair": (250.0, 1200.0),
}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """Return the generator of subject/patient ``index`` for a dataset ``seed``.

    Args:
        seed: Dataset seed.
        index: Zero-based subject or patient index.

    Returns:
        A generator that depends on ``(seed, index)`` only.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _interp_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """Normalised Gaussian-RBF interpolation weights, shape ``(n_out, n_ctrl)``.

    Control points span slightly more than the unit interval to avoid edge effects.
    """
    t = (np.arange(n_out, dtype=np.float64) + 0.5) / n_out
    c = np.linspace(-0.15, 1.15, n_ctrl)
    sigma = (c[1] - c[0]) * 0.75
    w = np.exp(-0.5 * ((t[:, None] - c[None, :]) / sigma) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return w.astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: tuple[int, ...]) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation (approximately).

    The field is a separable Gaussian-RBF interpolation of an ``n_ctrl`` grid of standard normal
    values, so its spatial frequency is fixed relative to the array extent (shape independent).

    Args:
        rng: Random generator (draws ``prod(n_ctrl)`` normals).
        shape: Output shape, 2D ``(H, W)`` or 3D ``(X, Y, Z)``.
        n_ctrl: Control-grid size per axis (same length as ``shape``).

    Returns:
        float32 array of ``shape``.
    """
    g = rng.standard_normal(n_ctrl).astype(np.float32)
    mats = [_interp_matrix(n, c) for n, c in zip(shape, n_ctrl, strict=True)]
    if len(shape) == 2:
        f = mats[0] @ g @ mats[1].T
    else:
        a = (mats[0] @ g.reshape(n_ctrl[0], -1)).reshape(shape[0], n_ctrl[1], n_ctrl[2])  # (X, cy, cz)
        a = np.matmul(mats[1], a)  # (X, Y, cz)
        f = (a.reshape(-1, n_ctrl[2]) @ mats[2].T).reshape(shape)
    sub = f[(slice(None, None, max(1, shape[0] // 24)),) * len(shape)]
    f -= np.float32(sub.mean())
    f *= np.float32(1.0 / (float(sub.std()) or 1.0))
    return f


def _ramp(v: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for ``v <= -width/2``, 1 for ``v >= width/2``, linear between (float32)."""
    out = np.asarray(v, dtype=np.float32) * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _ellipsoid_r2(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    """Squared normalised ellipsoid radius for open-grid coordinates (1 on the surface)."""
    x, y, z = coords
    return (
        ((x - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((z - centre[2]) / radii[2]) ** 2
    ).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# brain MRI
# --------------------------------------------------------------------------------------------------


def _box(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    lo: tuple[float, float, float],
    hi: tuple[float, float, float],
    step: int = 4,
) -> tuple[slice, slice, slice] | None:
    """Index box (conservative) of the voxels whose head coordinates lie within ``[lo, hi]``."""
    hx, hy, hz = coords
    sub = (slice(None, None, step),) * 3
    m = (
        (hx[sub] >= lo[0])
        & (hx[sub] <= hi[0])
        & (hy[sub] >= lo[1])
        & (hy[sub] <= hi[1])
        & (hz[sub] >= lo[2])
        & (hz[sub] <= hi[2])
    )
    m = np.broadcast_to(m, hx[sub].shape)
    if not m.any():
        return None
    out = []
    for axis, n in enumerate(hx.shape):
        idx = np.nonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        out.append(slice(max(0, int(idx[0]) * step - step), min(n, int(idx[-1]) * step + 2 * step)))
    return out[0], out[1], out[2]


def _sub(coords: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[slice, slice, slice]):
    """Coordinates restricted to box ``b`` (``hz`` is an open-grid ``(1, 1, Z)`` array)."""
    return coords[0][b], coords[1][b], coords[2][:, :, b[2]]


def brain_volumes(
    rng: np.random.Generator, shape: tuple[int, int, int] = (240, 240, 155)
) -> dict[str, np.ndarray]:
    """Generate one BraTS-like subject: four MRI modalities and the tumour segmentation.

    Args:
        rng: Random generator; the subject is fully determined by its state. The number of draws does
            not depend on ``shape``.
        shape: Volume shape ``(X, Y, Z)``; ``z`` is the axial (slice) axis. Any size from about
            ``(32, 32, 20)`` up works; all geometry scales with the shape.

    Returns:
        Dict with keys ``'t1'``, ``'t1ce'``, ``'t2'``, ``'flair'`` (float32 ``(X, Y, Z)``, non-negative,
        0 outside the head, maxima in the hundreds to thousands, differing per modality and subject)
        and ``'seg'`` (uint8 ``(X, Y, Z)`` with labels 0 background, 1 necrotic core, 2 oedema,
        4 enhancing tumour).
    """
    nx, ny, nz = (int(s) for s in shape)
    shape = (nx, ny, nz)
    if min(nx, ny, nz) < 8:
        raise ValueError(f"shape too small for a brain phantom: {shape}")
    u = rng.uniform

    # ---- per-subject parameters (fixed number of draws) ------------------------------------------
    ax, ay, az = u(0.64, 0.76), u(0.78, 0.88), u(0.76, 0.86)  # head semi-axes (fraction of half extent)
    cx, cy, cz = u(-0.05, 0.05), u(-0.05, 0.05), u(-0.06, 0.04)  # head centre
    egg = u(0.05, 0.14)  # head narrower at the bottom
    tilt = u(-0.07, 0.07)  # small in-plane rotation of the head (radians)
    scalp_t, skull_t, csf_t = u(0.035, 0.06), u(0.05, 0.075), u(0.012, 0.025)  # layer thicknesses
    gm_thick = u(0.05, 0.07)  # cortical ribbon thickness (head-radius units)
    sulc_depth = u(0.08, 0.12)
    vent_scale = u(0.7, 1.5)
    vent_asym = u(-0.15, 0.15)
    # tumour (in head-normalised coordinates)
    side = 1.0 if rng.random() < 0.5 else -1.0
    t_r = u(0.18, 0.45)
    t_theta = u(-1.1, 1.1)  # angle in the axial plane away from lateral
    t_z = u(-0.25, 0.35)
    t_size = u(0.11, 0.22)
    t_elong = u(0.8, 1.25, size=3)
    nec_r = u(0.45, 0.75)
    oed_ext = u(1.4, 2.1)
    # intensities
    contrast = (_BASE_INTENSITY * u(0.93, 1.07, size=_BASE_INTENSITY.shape)).astype(np.float32)
    scales = np.array([u(*_SCALE_RANGE[m]) for m in BRATS_MODALITIES], dtype=np.float32)
    bias_amp = [float(a) for a in u(0.05, 0.12, size=4) * np.where(rng.random(4) < 0.5, -1.0, 1.0)]
    noise_sd = np.float32(u(0.008, 0.018))
    noise_seed = int(rng.integers(0, 2**63 - 1))
    # smooth random fields (control grids are shape independent; z spans ~0.65 of the x/y extent)
    f_low = _smooth_field(rng, shape, (5, 5, 4))
    f_mid = _smooth_field(rng, shape, (11, 12, 8))
    f_sulc = _smooth_field(rng, shape, (40, 44, 27))
    f_bias = _smooth_field(rng, shape, (4, 4, 3))

    # ---- head-normalised coordinates ---------------------------------------------------------------
    gx = ((np.arange(nx, dtype=np.float32) + 0.5) / nx * 2 - 1)[:, None, None]
    gy = ((np.arange(ny, dtype=np.float32) + 0.5) / ny * 2 - 1)[None, :, None]
    gz = ((np.arange(nz, dtype=np.float32) + 0.5) / nz * 2 - 1)[None, None, :]
    hz = ((gz - cz) / az).astype(np.float32)  # (1, 1, Z)
    widen = (1.0 + egg * hz).astype(np.float32)  # narrower towards the bottom
    ct, st = math.cos(tilt), math.sin(tilt)
    xr = ((gx - cx) * ct + (gy - cy) * st).astype(np.float32)  # (X, Y, 1)
    yr = (-(gx - cx) * st + (gy - cy) * ct).astype(np.float32)
    hx = xr / (ax * widen)  # (X, Y, Z)
    hy = yr / (ay * widen)
    coords = (hx, hy, hz)

    # one voxel in head-radius units sets the width of the partial-volume ramps
    vox = 2.0 / (min(nx, ny) * min(ax, ay))
    w = float(np.clip(1.2 * vox, 0.004, 0.1))

    r = hx * hx
    r += hy * hy
    r += hz * hz
    np.sqrt(r, out=r)
    r *= 1.0 + 0.02 * f_low  # irregular head outline

    skull_out = 1.0 - scalp_t
    skull_in = skull_out - skull_t
    brain_r = skull_in - csf_t
    head = _ramp(1.0 - r, w)
    a_skull = _ramp(skull_out - r, w)
    a_marrow = _ramp(skull_t * 0.28 - np.abs(r - (skull_out - 0.5 * skull_t)), w)
    a_csf = _ramp(skull_in - r, w)

    depth = brain_r - r  # depth below the brain surface (head-radius units)
    abs_s = np.abs(f_sulc)
    sulc = _ramp(0.2 - abs_s, 0.14)
    sulc *= _ramp(sulc_depth * (1.0 + 0.3 * f_mid) - depth, 2 * w)
    brain = _ramp(depth, w)
    brain *= 1.0 - sulc
    b_fis = _box(coords, (-0.1, -2, -0.2), (0.1, 2, 2))
    if b_fis is not None:
        shx, _, shz = _sub(coords, b_fis)
        fissure = _ramp(0.012 + 0.6 * vox - np.abs(shx - 0.015 * f_low[b_fis]), w)
        fissure *= _ramp(0.45 - depth[b_fis] - 0.3 * shz, w)
        brain[b_fis] *= 1.0 - fissure
    # grey/white boundary: ribbon dips along the sulci (gyral white-matter cores) and varies in thickness
    gm_edge = _ramp(0.45 - abs_s, 0.5)
    gm_edge *= sulc_depth
    gm_edge += gm_thick * (1.0 + 0.2 * f_mid)
    a_wm = _ramp(depth - gm_edge, 2.5 * w)
    del abs_s, sulc, gm_edge

    # deep grey nuclei (thalami, putamina)
    b_dgm = _box(coords, (-0.42, -0.35, -0.25), (0.42, 0.35, 0.25))
    a_dgm = None
    if b_dgm is not None:
        c3 = _sub(coords, b_dgm)
        a_dgm = np.zeros(np.broadcast_shapes(c3[0].shape, c3[2].shape), dtype=np.float32)
        for sx in (-1.0, 1.0):
            for c, rad in (((0.1, -0.1, 0.02), (0.08, 0.13, 0.1)), ((0.26, 0.1, 0.04), (0.045, 0.14, 0.09))):
                r2 = _ellipsoid_r2(c3, (sx * c[0], c[1], c[2]), rad)
                np.maximum(a_dgm, _ramp(1.0 - r2, 0.6), out=a_dgm)
    # lateral ventricles: curved ellipsoids, frontal horns close to the midline; third ventricle
    b_vent = _box(coords, (-0.4, -0.7, -0.45), (0.4, 0.6, 0.5))
    a_vent = None
    if b_vent is not None:
        vx, vy, vz = _sub(coords, b_vent)
        a_vent = np.zeros(np.broadcast_shapes(vx.shape, vz.shape), dtype=np.float32)
        for sx in (-1.0, 1.0):
            sv = vent_scale * (1.0 + sx * vent_asym)
            xc = sx * (0.07 + 0.035 * sv - 0.05 * vy)
            zc = 0.12 - 0.35 * (vy + 0.05) ** 2
            r2 = ((vx - xc) / (0.055 * sv + 0.03)) ** 2
            r2 += ((vy + 0.05) / 0.46) ** 2
            r2 += ((vz - zc) / (0.12 * sv + 0.08)) ** 2
            np.maximum(a_vent, _ramp(1.0 - r2, 0.35), out=a_vent)
        r2 = _ellipsoid_r2((vx, vy, vz), (0.0, -0.1, -0.02), (0.01 + 0.6 * vox, 0.12, 0.1))
        np.maximum(a_vent, _ramp(1.0 - r2, 0.5), out=a_vent)
        a_vent *= brain[b_vent] > 0.2

    # tumour: perturbed ellipsoidal layers restricted to brain parenchyma
    tc = (side * t_r * math.cos(t_theta), t_r * math.sin(t_theta), t_z)
    tr = (t_size * t_elong[0], t_size * t_elong[1], t_size * t_elong[2])
    ext = oed_ext * 1.6
    b_tum = _box(
        coords,
        tuple(c - ext * s for c, s in zip(tc, tr, strict=True)),
        tuple(c + ext * s for c, s in zip(tc, tr, strict=True)),
    )
    seg = np.zeros(shape, dtype=np.uint8)
    if b_tum is not None:
        c3 = _sub(coords, b_tum)
        rt = np.sqrt(_ellipsoid_r2(c3, tc, tr))
        rt *= 1.0 + 0.2 * f_mid[b_tum]
        br = brain[b_tum]
        a_nec = _ramp(nec_r - rt, 0.1) * br
        a_enh = _ramp(1.0 - rt, 0.1) * br
        oed = _ramp(oed_ext * (1.0 + 0.25 * f_low[b_tum]) - rt, 0.3)
        oed *= _ramp(depth[b_tum] - 0.005, w)
        oed *= 0.4 + 0.6 * a_wm[b_tum]  # vasogenic oedema spreads along white matter
        if a_vent is not None:  # no oedema inside the ventricles
            vb = tuple(
                slice(max(t.start, v.start), min(t.stop, v.stop)) for t, v in zip(b_tum, b_vent, strict=True)
            )
            if all(s.start < s.stop for s in vb):
                in_t = tuple(
                    slice(s.start - t.start, s.stop - t.start) for s, t in zip(vb, b_tum, strict=True)
                )
                in_v = tuple(
                    slice(s.start - v.start, s.stop - v.start) for s, v in zip(vb, b_vent, strict=True)
                )
                oed[in_t] *= 1.0 - a_vent[in_v]
        core = a_enh > 0.5
        sb = seg[b_tum]
        sb[oed > 0.5] = 2
        sb[core] = 4
        sb[core & (a_nec > 0.5)] = 1

    # ---- partial-volume painting (innermost first) -------------------------------------------------
    full = (slice(None),) * 3
    layers: list[tuple[np.ndarray | None, tuple[slice, slice, slice]]] = [
        (a_nec if b_tum is not None else None, b_tum or full),
        (a_enh if b_tum is not None else None, b_tum or full),
        (oed if b_tum is not None else None, b_tum or full),
        (a_vent, b_vent or full),
        (a_dgm, b_dgm or full),
        (a_wm, full),
        (brain, full),
        (a_csf, full),
        (a_marrow, full),
        (a_skull, full),
        (head, full),
    ]
    fracs = np.zeros((len(_TISSUES), nx, ny, nz), dtype=np.float32)
    rem = np.ones(shape, dtype=np.float32)
    for k, (a, b) in enumerate(layers):
        if a is None:
            continue
        fk = fracs[k][b]
        np.multiply(a, rem[b], out=fk)
        rem[b] -= fk
    del layers
    rem_buf = rem
    # faint parenchymal texture (same relative modulation in every modality)
    tex = f_sulc * f_mid
    tex *= 0.03
    tex += 1.0
    for t in ("deep_gm", "wm", "gm"):
        fracs[_TISSUES.index(t)] *= tex
    del tex

    imgs = np.tensordot(contrast, fracs, axes=(1, 0))  # (4, X, Y, Z)
    del fracs
    # one Gaussian noise volume, seen through a different flip per modality (cheap, uncorrelated look)
    noise = np.random.default_rng(noise_seed).standard_normal(shape, dtype=np.float32)
    head *= noise_sd
    noise *= head
    flips = (noise, noise[::-1], noise[:, ::-1], noise[:, :, ::-1])
    buf = rem_buf
    out: dict[str, np.ndarray] = {}
    for m, mod in enumerate(BRATS_MODALITIES):
        img = imgs[m]
        np.multiply(f_bias, bias_amp[m], out=buf)
        buf += 1.0
        img *= buf
        img += flips[m]
        np.maximum(img, 0.0, out=img)
        img *= scales[m] / float(_BASE_INTENSITY[m].max())
        out[mod] = img
    out["seg"] = seg
    return out


def brain_subject(
    index: int, *, seed: int = 0, shape: tuple[int, int, int] = (240, 240, 155)
) -> dict[str, np.ndarray]:
    """Generate subject ``index`` of the phantom cohort ``seed`` (same data the writers use).

    Args:
        index: Zero-based subject index.
        seed: Cohort seed.
        shape: Volume shape ``(X, Y, Z)``.

    Returns:
        Same dict as :func:`brain_volumes`.
    """
    return brain_volumes(subject_rng(seed, index), shape)


def _brats_name(naming: str, i: int) -> str:
    if naming == "2020":
        return f"BraTS20_Training_{i + 1:03d}"
    if naming == "2021":
        return f"BraTS2021_{i:05d}"
    raise ValueError(f"naming must be '2020' or '2021', got {naming!r}")


def write_brats_tree(
    root: Path,
    n_subjects: int,
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (240, 240, 155),
    naming: str = "2020",
    image_dtype: str = "int16",
) -> list[str]:
    """Write a miniature BraTS training folder of phantom subjects as gzipped NIfTI.

    Layout for ``naming='2020'``: ``root/BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}
    .nii.gz`` (numbered from 001); for ``naming='2021'``: ``root/BraTS2021_00000/BraTS2021_00000_{...}
    .nii.gz`` (numbered from 00000). As in BraTS, voxels are 1 mm and stored ``LPS`` (index increasing
    toward the patient's left, posterior, superior: affine ``diag(-1, -1, 1, 1)``), so the generator's
    ``LAS`` arrays (:func:`brain_volumes`) are written with ``y`` reversed.
    Image volumes are stored as int16 by default (rounded, like most real BraTS files) or
    float32 with ``image_dtype='float32'``; the segmentation as uint8.

    Args:
        root: Output folder (created if missing).
        n_subjects: Number of subjects.
        seed: Cohort seed; subject ``i`` depends on ``(seed, i)`` only.
        shape: Volume shape ``(X, Y, Z)``.
        naming: ``'2020'`` or ``'2021'``.
        image_dtype: ``'int16'`` or ``'float32'`` for the four modality volumes.

    Returns:
        Subject folder names, in order.
    """
    import nibabel as nib

    if image_dtype not in ("int16", "float32"):
        raise ValueError(f"image_dtype must be 'int16' or 'float32', got {image_dtype!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    names = []
    for i in range(n_subjects):
        name = _brats_name(naming, i)
        vols = brain_subject(i, seed=seed, shape=shape)
        d = root / name
        d.mkdir(exist_ok=True)
        for key in (*BRATS_MODALITIES, "seg"):
            arr = vols[key]
            if key == "seg":
                arr = arr.astype(np.uint8)
            elif image_dtype == "int16":
                arr = np.rint(arr).astype(np.int16)
            arr = np.ascontiguousarray(arr[:, ::-1, :])  # LAS → LPS, the orientation the affine states
            img = nib.Nifti1Image(arr, affine)
            img.header.set_data_dtype(arr.dtype)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(d / f"{name}_{key}.nii.gz"))
        names.append(name)
    return names


def write_folder_tree(
    root: Path,
    n_subjects: int,
    *,
    seed: int = 0,
    size: int = 64,
    n_slices: int = 6,
    modality: str = "t1",
) -> list[Path]:
    """Write a generic folder layout of 2D PNG slices: ``root/subj_000/slice_010.png`` ...

    Each subject is a brain phantom of shape ``(size, size, round(size * 155 / 240))``; ``n_slices``
    evenly spaced axial slices from the middle 50% of the volume are scaled by the volume maximum to
    0-255 and saved as 8-bit grayscale PNG (rows = anterior to posterior, columns = ``x``). The slice
    number in the file name is the axial index in the volume.

    Args:
        root: Output folder (created if missing).
        n_subjects: Number of subjects.
        seed: Cohort seed; subject ``i`` depends on ``(seed, i)`` only.
        size: In-plane size of the slices (pixels).
        n_slices: Slices per subject.
        modality: One of ``'t1'``, ``'t1ce'``, ``'t2'``, ``'flair'``.

    Returns:
        Paths of the written PNG files.
    """
    from PIL import Image

    if modality not in BRATS_MODALITIES:
        raise ValueError(f"modality must be one of {BRATS_MODALITIES}, got {modality!r}")
    root = Path(root)
    depth = max(8, round(size * 155 / 240))
    ks = np.unique(np.linspace(depth * 0.25, depth * 0.75, n_slices).round().astype(int))
    paths: list[Path] = []
    for i in range(n_subjects):
        vol = brain_subject(i, seed=seed, shape=(size, size, depth))[modality]
        vol = vol / max(float(vol.max()), 1e-6) * 255.0
        d = root / f"subj_{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in ks:
            sl = np.rot90(vol[:, :, k]).clip(0, 255).round().astype(np.uint8)
            p = d / f"slice_{k:03d}.png"
            Image.fromarray(np.ascontiguousarray(sl), mode="L").save(p)
            paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------------
# chest x-ray
# --------------------------------------------------------------------------------------------------

_TEX_GRID = 192  # resolution of the patient's canonical texture maps
_TEX_EXTENT = 1.5  # texture maps cover [-_TEX_EXTENT, _TEX_EXTENT]^2 in canonical coordinates


@dataclass(frozen=True)
class ChestParams:
    """Anatomy of one phantom chest-x-ray patient, in canonical coordinates.

    Canonical coordinates: ``x`` to the image right (patient's left in a PA film), ``y`` downwards,
    both in units of half the shorter image side, origin at the image centre. All images of a patient
    share these parameters; per-image pose, exposure, breathing and noise vary.
    """

    body_w: float
    neck_w: float
    shoulder_y: float
    lung_top: float
    lung_lat: float
    lung_med: float
    dia_right: float
    dia_left: float
    dome: float
    heart_x: float
    heart_y: float
    heart_w: float
    heart_h: float
    spine_w: float
    med_w: float
    rib_top: float
    rib_gap: float
    rib_curv: float
    rib_t: float
    clav_y: float
    clav_slope: float
    soft_att: float
    lung_att: float
    bone_att: float
    gain: float
    gamma: float
    kind: str
    texture_seed: int


def chest_patient(rng: np.random.Generator) -> ChestParams:
    """Draw the anatomy of one paediatric chest-x-ray patient.

    Args:
        rng: Random generator (a fixed number of draws).

    Returns:
        The patient's :class:`ChestParams`; ``kind`` is ``'bacteria'`` or ``'virus'`` (the pneumonia
        subtype used if the patient's images are rendered with ``pneumonia=True``).
    """
    u = rng.uniform
    dia_right = u(0.30, 0.42)
    return ChestParams(
        body_w=u(0.80, 0.94),
        neck_w=u(0.20, 0.28),
        shoulder_y=u(-0.78, -0.62),
        lung_top=u(-0.68, -0.56),
        lung_lat=u(0.62, 0.76),
        lung_med=u(0.13, 0.17),
        dia_right=dia_right,
        dia_left=dia_right + u(0.0, 0.06),
        dome=u(0.07, 0.13),
        heart_x=u(0.06, 0.12),
        heart_y=u(0.18, 0.26),
        heart_w=u(0.30, 0.38),
        heart_h=u(0.20, 0.26),
        spine_w=u(0.055, 0.075),
        med_w=u(0.13, 0.17),
        rib_top=u(-0.64, -0.56),
        rib_gap=u(0.085, 0.105),
        rib_curv=u(0.6, 0.9),
        rib_t=u(0.026, 0.036),
        clav_y=u(-0.66, -0.56),
        clav_slope=u(0.12, 0.25),
        soft_att=u(0.9, 1.1),
        lung_att=u(0.62, 0.75),
        bone_att=u(0.11, 0.16),
        gain=u(1.25, 1.75),
        gamma=u(0.95, 1.45),
        kind="bacteria" if rng.random() < 0.65 else "virus",
        texture_seed=int(rng.integers(0, 2**63 - 1)),
    )


def _sample(tex: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinearly sample a canonical texture map at canonical coordinates (float32, like ``x``)."""
    from scipy.ndimage import map_coordinates

    scale = (_TEX_GRID - 1) / (2 * _TEX_EXTENT)
    rows = (y + _TEX_EXTENT) * scale
    cols = (x + _TEX_EXTENT) * scale
    return map_coordinates(tex, [rows, cols], order=1, mode="nearest").astype(np.float32)


def chest_xray_from(
    params: ChestParams,
    rng: np.random.Generator,
    size: int = 256,
    *,
    pneumonia: bool = False,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render one radiograph of a patient, with per-image pose, breathing, exposure and noise.

    Args:
        params: The patient's anatomy (:func:`chest_patient`).
        rng: Random generator for the per-image variation (and the pneumonic opacities).
        size: Side of a square output image (ignored when ``shape`` is given).
        pneumonia: Add patchy opacities in the lungs (lobar consolidation for ``kind='bacteria'``,
            diffuse bilateral perihilar opacities for ``kind='virus'``).
        shape: Output ``(H, W)``; may be non-square (the anatomy is not stretched: the field of view
            changes instead).

    Returns:
        uint8 grayscale image of shape ``(H, W)``.
    """
    p = params
    h, w = shape if shape is not None else (size, size)
    u = rng.uniform
    theta = math.radians(u(-2.5, 2.5))
    shift_x, shift_y = u(-0.03, 0.03), u(-0.03, 0.03)
    zoom = u(0.96, 1.04)
    breath = u(-0.02, 0.02)  # depth of inspiration moves the diaphragm
    gamma = p.gamma * u(0.92, 1.08)
    gain = p.gain * u(0.93, 1.07)
    offset = u(0.03, 0.08)
    noise_sd = u(0.006, 0.018)
    opac_amp = u(0.5, 0.9)
    opac_seed = int(rng.integers(0, 2**63 - 1))

    # canonical coordinates of every output pixel
    half = min(h, w) / 2.0
    yy = ((np.arange(h, dtype=np.float32) + 0.5 - h / 2) / half)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5 - w / 2) / half)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    x = ((c * xx + s * yy) / zoom - shift_x).astype(np.float32)
    y = ((-s * xx + c * yy) / zoom - shift_y).astype(np.float32)
    ax = np.abs(x)
    px = 2.0 / min(h, w)  # one pixel in canonical units
    ew = max(2.5 * px, 0.01)  # edge width

    trng = np.random.default_rng(p.texture_seed)
    tex_vessel = _smooth_field(trng, (_TEX_GRID, _TEX_GRID), (34, 34))
    tex_soft = _smooth_field(trng, (_TEX_GRID, _TEX_GRID), (8, 8))
    tex_opac = _smooth_field(trng, (_TEX_GRID, _TEX_GRID), (12, 12))

    # body (soft tissue; thicker in the middle), narrowing to the neck above the shoulders
    t_sh = np.clip((y - (p.shoulder_y - 0.25)) / 0.25, 0.0, 1.0)
    bw = p.neck_w + (p.body_w - p.neck_w) * np.sqrt(t_sh)
    body = _ramp(bw - ax, 8 * ew)
    thick = np.sqrt(np.clip(1.0 - (ax / (bw + 0.05)) ** 2, 0.0, 1.0))
    att = p.soft_att * body * (0.55 + 0.45 * thick) * (1.0 + 0.05 * _sample(tex_soft, x, y))

    # lungs: rounded apex, straight-ish medial border, diaphragm domes with costophrenic angles
    dia = np.where(x < 0, p.dia_right, p.dia_left) + breath
    lat = np.clip((ax - p.lung_med) / (p.lung_lat - p.lung_med), 0.0, 1.0)
    dia_y = dia - p.dome * (1.0 - (2.0 * lat - 0.9) ** 2)
    apex = np.clip((y - p.lung_top) / 0.45, 0.0, 1.0)
    lat_edge = p.lung_med + (p.lung_lat - p.lung_med) * (0.2 + 0.8 * np.sqrt(apex))
    lat_edge = lat_edge - 0.06 * np.clip((y - dia + 0.1) / 0.2, 0.0, 1.0)  # narrower at the base
    lung = _ramp(ax - p.lung_med, ew) * _ramp(lat_edge - ax, ew) * _ramp(y - p.lung_top, ew)
    lung *= _ramp(dia_y - y, ew)
    att -= p.lung_att * lung * (0.6 + 0.4 * thick)
    # vascular markings, denser near the hila
    hilum = np.clip(1.2 - lat, 0.0, 1.0)
    vessels = _ramp(0.12 - np.abs(_sample(tex_vessel, x, y)), 0.1)
    att += 0.1 * vessels * lung * hilum

    # mediastinum, spine with vertebral bodies, heart
    att += 0.25 * _ramp(p.med_w - ax, 4 * ew) * _ramp(y - p.lung_top + 0.15, ew)
    vert = 1.0 + 0.25 * np.cos(2 * math.pi * (y - p.rib_top) / p.rib_gap)
    att += p.bone_att * 2.5 * _ramp(p.spine_w - ax, 2 * ew) * vert
    hr2 = ((x - p.heart_x) / p.heart_w) ** 2 + ((y - p.heart_y) / p.heart_h) ** 2
    att += 0.4 * _ramp(1.0 - hr2, 0.3) * _ramp(dia_y + 0.05 - y, 4 * ew)

    # ribs: posterior ribs arc laterally and downwards; anterior ribs run down towards the midline
    rib_extent = _ramp(p.lung_lat + 0.1 - ax, 4 * ew) * _ramp(ax - p.spine_w * 0.8, ew)
    rib_extent *= 0.3 + 0.7 * _ramp(dia_y + 0.05 - y, 0.1)
    for k in range(10):
        y0 = p.rib_top + k * p.rib_gap * (1.0 + 0.05 * k)
        yc = y0 - 0.05 * ax + p.rib_curv * ax * ax
        band = _ramp(p.rib_t * (1.0 + 0.05 * k) - np.abs(y - yc), ew)
        att += p.bone_att * band * rib_extent
        ya = y0 + 0.2 + 0.35 * (p.lung_lat - ax)
        banda = _ramp(0.6 * p.rib_t - np.abs(y - ya), ew)
        att += 0.45 * p.bone_att * banda * rib_extent * _ramp(ax - 0.25, 4 * ew)
    # clavicles
    yc = p.clav_y - p.clav_slope * (ax - 0.1)
    att += 1.1 * p.bone_att * _ramp(0.03 - np.abs(y - yc), ew) * _ramp(ax - 0.06, ew) * _ramp(0.6 - ax, ew)

    if pneumonia:
        orng = np.random.default_rng(opac_seed)
        patch = _sample(tex_opac, x, y) + 0.6 * _smooth_field(orng, (h, w), (10, 10))
        if p.kind == "bacteria":  # lobar consolidation: one dense confluent region
            opac = _ramp(patch - 0.9, 0.8)
        else:  # viral: bilateral, perihilar, patchy
            opac = _ramp(patch + 0.3, 1.6) * (0.4 + 0.6 * hilum)
        att += opac_amp * p.lung_att * opac * lung

    from scipy.ndimage import gaussian_filter

    att = gaussian_filter(np.clip(att, 0.0, None), sigma=max(0.6, 0.003 * min(h, w)))
    img = 1.0 - np.exp(-gain * att)
    img = offset + (1.0 - offset) * img**gamma
    img += rng.standard_normal(img.shape).astype(np.float32) * noise_sd
    return np.clip(img * 255.0, 0, 255).round().astype(np.uint8)


def chest_xray(rng: np.random.Generator, size: int = 256, *, pneumonia: bool = False) -> np.ndarray:
    """Render one radiograph of a new random patient.

    Args:
        rng: Random generator (draws the patient, then the image).
        size: Output side length.
        pneumonia: Add pneumonic opacities.

    Returns:
        uint8 grayscale image of shape ``(size, size)``.
    """
    return chest_xray_from(chest_patient(rng), rng, size, pneumonia=pneumonia)


# Split/class of patient i is _CXR_PLAN[i % 10]: the first six patients cover every folder, and the
# class balance (70% pneumonia) and split sizes roughly follow the Kermany data set.
_CXR_PLAN: tuple[tuple[str, str], ...] = (
    ("train", "PNEUMONIA"),
    ("train", "NORMAL"),
    ("test", "PNEUMONIA"),
    ("test", "NORMAL"),
    ("val", "PNEUMONIA"),
    ("val", "NORMAL"),
    ("train", "PNEUMONIA"),
    ("train", "PNEUMONIA"),
    ("train", "PNEUMONIA"),
    ("test", "PNEUMONIA"),
)


def write_cxr_tree(
    root: Path,
    n_patients: int,
    *,
    seed: int = 0,
    images_per_patient: tuple[int, int] = (1, 3),
    size: int = 256,
) -> list[Path]:
    """Write a miniature Kermany paediatric chest-x-ray tree of phantom radiographs.

    Layout: ``root/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`` (8-bit grayscale JPEG). Patient ``i``
    (0-based) goes to split/class ``_CXR_PLAN[i % 10]`` (patients 0-5 cover all six folders) and has
    between ``images_per_patient[0]`` and ``images_per_patient[1]`` images (inclusive), all in that one
    folder. File names follow the real data set: pneumonia ``person{i+1}_{bacteria|virus}_{K}.jpeg``
    with ``K`` a running counter per subtype over the data set; normal ``IM-{i+1:04d}-{k:04d}.jpeg``, and
    ``NORMAL2-IM-{i+1:04d}-{k:04d}.jpeg`` for every third normal patient (``i % 3 == 2``), with ``k``
    counting the patient's images from 1. Image sizes vary and are non-square (height and width each
    between 0.8 and 1.3 times ``size``). Patient ``i`` (anatomy, images, names) depends on
    ``(seed, i)`` only.

    Args:
        root: Output folder (created if missing).
        n_patients: Number of patients.
        seed: Data-set seed.
        images_per_patient: Inclusive range of the number of images per patient.
        size: Nominal image size in pixels.

    Returns:
        Paths of the written JPEG files, in patient order.
    """
    from PIL import Image

    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise ValueError(f"images_per_patient must satisfy 1 <= lo <= hi, got {images_per_patient}")
    root = Path(root)
    for split in ("train", "test", "val"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    counters = {"bacteria": 0, "virus": 0}
    paths: list[Path] = []
    for i in range(n_patients):
        rng = subject_rng(seed, i)
        params = chest_patient(rng)
        n_img = int(rng.integers(lo, hi + 1))
        split, cls = _CXR_PLAN[i % len(_CXR_PLAN)]
        for k in range(1, n_img + 1):
            hh = round(size * rng.uniform(0.8, 1.3))
            ww = round(size * rng.uniform(0.8, 1.3))
            img = chest_xray_from(params, rng, shape=(hh, ww), pneumonia=cls == "PNEUMONIA")
            if cls == "PNEUMONIA":
                counters[params.kind] += 1
                name = f"person{i + 1}_{params.kind}_{counters[params.kind]}.jpeg"
            else:
                prefix = "NORMAL2-" if i % 3 == 2 else ""
                name = f"{prefix}IM-{i + 1:04d}-{k:04d}.jpeg"
            path = root / split / cls / name
            Image.fromarray(img, mode="L").save(path, format="JPEG", quality=92)
            paths.append(path)
    return paths
