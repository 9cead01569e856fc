"""Deterministic, realistic-looking phantom data for tests and the demo (nothing is ever downloaded).

Two families of synthetic "patients" are generated from a :class:`numpy.random.Generator`:

**Brain MRI (BraTS-like).** :func:`brain_volumes` builds one subject as four co-registered modality
volumes (T1, T1ce, T2, FLAIR) plus a BraTS tumour segmentation, with array axes ``(x, y, z)`` like a
BraTS NIfTI (``x`` left-right, ``y`` posterior-anterior, ``z`` inferior-superior; axial slices are
``vol[:, :, k]``). The anatomy model is a set of nested, noise-perturbed implicit surfaces evaluated in
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
    "skull",
    "scalp",
)

# Relative intensity of each tissue per modality (rows: t1, t1ce, t2, flair; columns: _TISSUES).
_BASE_INTENSITY = np.array(
    [
        # nec   enh   oed   vent  dgm   wm    gm    csf   skull scalp
        [0.22, 0.42, 0.36, 0.12, 0.50, 0.68, 0.47, 0.13, 0.80, 0.90],  # t1
        [0.16, 0.95, 0.36, 0.12, 0.50, 0.66, 0.46, 0.13, 0.78, 0.88],  # t1ce
        [0.88, 0.55, 0.80, 1.00, 0.50, 0.38, 0.55, 0.98, 0.40, 0.62],  # t2
        [0.35, 0.62, 0.95, 0.08, 0.52, 0.40, 0.55, 0.09, 0.35, 0.55],  # flair
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
        a = np.einsum("xi,ijk->xjk", mats[0], g)  # (X, cy, cz)
        a = np.einsum("yj,xjk->xyk", mats[1], a)  # (X, Y, cz)
        f = (a.reshape(-1, n_ctrl[2]) @ mats[2].T).reshape(shape)
    sub = f[(slice(None, None, max(1, shape[0] // 24)),) * len(shape)]
    sd = float(sub.std()) or 1.0
    return ((f - float(sub.mean())) / sd).astype(np.float32, copy=False)


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
        ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
    ).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# brain MRI
# --------------------------------------------------------------------------------------------------


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
    if min(nx, ny, nz) < 8:
        raise ValueError(f"shape too small for a brain phantom: {shape}")
    u = rng.uniform

    # ---- per-subject parameters (fixed number of draws) ------------------------------------------
    ax, ay, az = u(0.62, 0.74), u(0.76, 0.88), u(0.74, 0.84)  # head semi-axes (fraction of half extent)
    cx, cy, cz = u(-0.05, 0.05), u(-0.05, 0.05), u(-0.06, 0.04)  # head centre
    egg = u(0.04, 0.12)  # head narrower at the bottom
    tilt = u(-0.06, 0.06)  # small in-plane rotation of the head (radians)
    skull_out, skull_in, brain_r = u(0.90, 0.935), u(0.84, 0.87), u(0.815, 0.835)
    gm_thick = u(0.07, 0.10)  # cortical ribbon thickness (head-radius units)
    sulc_depth = u(0.10, 0.15)
    vent_scale = u(0.7, 1.45)
    vent_asym = u(-0.15, 0.15)
    # tumour (in head-normalised coordinates)
    side = 1.0 if rng.random() < 0.5 else -1.0
    t_r = u(0.2, 0.5)
    t_theta = u(-0.9, 0.9)  # angle in the axial plane away from lateral
    t_z = u(-0.25, 0.35)
    t_size = u(0.10, 0.22)
    t_elong = u(0.8, 1.25, size=3)
    nec_frac = u(0.25, 0.65)
    rim = u(0.18, 0.35)
    oed_ext = u(1.35, 2.2)
    # intensities
    contrast = (_BASE_INTENSITY * u(0.92, 1.08, size=_BASE_INTENSITY.shape)).astype(np.float32)
    scales = np.array([u(*_SCALE_RANGE[m]) for m in BRATS_MODALITIES], dtype=np.float32)
    bias_amp = u(0.04, 0.12, size=4).astype(np.float32) * np.where(rng.random(4) < 0.5, -1, 1)
    noise_sd = np.float32(u(0.008, 0.02))
    noise_seed = int(rng.integers(0, 2**63 - 1))
    # smooth random fields (control grids are shape independent)
    f_low = _smooth_field(rng, shape, (5, 5, 4))
    f_mid = _smooth_field(rng, shape, (10, 11, 8))
    f_sulc = _smooth_field(rng, shape, (19, 21, 13))
    f_bias = _smooth_field(rng, shape, (4, 4, 3))

    # ---- head-normalised open-grid coordinates ----------------------------------------------------
    gx = ((np.arange(nx, dtype=np.float32) + 0.5) / nx * 2 - 1)[:, None, None]
    gy = ((np.arange(ny, dtype=np.float32) + 0.5) / ny * 2 - 1)[None, :, None]
    gz = ((np.arange(nz, dtype=np.float32) + 0.5) / nz * 2 - 1)[None, None, :]
    zc = (gz - cz) / az  # (1, 1, Z)
    widen = 1.0 + egg * zc  # narrower towards the bottom
    ct, st = math.cos(tilt), math.sin(tilt)
    xr, yr = (gx - cx) * ct + (gy - cy) * st, -(gx - cx) * st + (gy - cy) * ct
    hx = xr / (ax * widen)  # (X, Y, Z) after broadcasting
    hy = yr / (ay * widen)
    hz = np.broadcast_to(zc, (1, 1, nz))
    coords = (hx, hy, hz)

    # one voxel expressed in head-radius units (edge width of the partial-volume ramps)
    vox = 2.0 / (min(nx, ny) * min(ax, ay))
    w = float(np.clip(1.2 * vox, 0.004, 0.08))

    r = np.sqrt(hx * hx + hy * hy + hz * hz, dtype=np.float32)
    r *= 1.0 + 0.025 * f_low  # irregular head outline

    head = _ramp(1.0 - r, w)
    a_skull = _ramp(skull_out - r, w)
    a_csf = _ramp(skull_in - r, w)

    depth = brain_r - r  # depth below the brain surface (head-radius units)
    sulc = _ramp(0.16 - np.abs(f_sulc), 0.12) * _ramp(sulc_depth + 0.03 * f_mid - depth, 2 * w)
    fissure = _ramp(0.018 + 0.6 * vox - np.abs(hx - 0.01 * f_low), w) * _ramp(0.42 - depth - 0.25 * hz, w)
    brain = _ramp(depth, w) * (1.0 - np.maximum(sulc, fissure))
    # grey/white boundary: ribbon thicker along sulci and slightly wavy
    gm_edge = gm_thick * (1.0 + 0.25 * f_mid) + sulc_depth * 0.8 * _ramp(0.3 - np.abs(f_sulc), 0.3)
    a_wm = _ramp(depth - gm_edge, 2.5 * w)
    a_dgm = np.zeros_like(head)
    for sx in (-1.0, 1.0):
        for c, rad in (((0.11, -0.08, 0.02), (0.085, 0.14, 0.11)), ((0.25, 0.12, 0.05), (0.05, 0.14, 0.10))):
            r2 = _ellipsoid_r2(coords, (sx * c[0], c[1], c[2]), rad)
            np.maximum(a_dgm, _ramp(1.0 - r2, 0.5), out=a_dgm)
    # lateral ventricles: curved ellipsoids, frontal horns close to the midline
    a_vent = np.zeros_like(head)
    vs = vent_scale
    for sx in (-1.0, 1.0):
        sv = vs * (1.0 + sx * vent_asym)
        xc = sx * (0.075 + 0.03 * sv - 0.03 * hy)
        zc_v = 0.2 - 0.55 * hy * hy
        r2 = ((hx - xc) / (0.05 * sv + 0.02)) ** 2 + ((hy + 0.05) / 0.42) ** 2 + ((hz - zc_v) / (0.05 * sv + 0.03)) ** 2
        np.maximum(a_vent, _ramp(1.0 - r2, 0.4), out=a_vent)
    # third ventricle (thin midline slit)
    r2 = _ellipsoid_r2(coords, (0.0, -0.08, 0.0), (0.012 + 0.6 * vox, 0.13, 0.1))
    np.maximum(a_vent, _ramp(1.0 - r2, 0.5), out=a_vent)

    # tumour: perturbed ellipsoidal layers
    tc = (side * t_r * math.cos(t_theta), t_r * math.sin(t_theta), t_z)
    tr = (t_size * t_elong[0], t_size * t_elong[1], t_size * t_elong[2])
    rt = np.sqrt(_ellipsoid_r2(coords, tc, tr))
    rt *= 1.0 + 0.22 * f_mid
    parenchyma = _ramp(depth - 0.01, w) * (1.0 - a_vent)
    a_nec = _ramp(nec_frac * (1.0 - rim) - rt, 0.08)
    a_enh = _ramp(1.0 - rt, 0.08)
    a_oed = _ramp(oed_ext * (1.0 + 0.3 * f_low) - rt, 0.25) * parenchyma
    # the tumour does not extend outside the brain
    a_nec *= brain
    a_enh *= brain

    # ---- partial-volume painting (innermost first) -------------------------------------------------
    alphas = (a_nec, a_enh, a_oed, a_vent, a_dgm, a_wm, brain, a_csf, a_skull, head)
    fracs = np.empty((len(_TISSUES), nx, ny, nz), dtype=np.float32)
    rem = np.ones(shape, dtype=np.float32)
    for k, a in enumerate(alphas):
        np.multiply(a, rem, out=fracs[k])
        rem -= fracs[k]
    # faint parenchymal texture (same relative modulation in every modality)
    tex = 1.0 + 0.035 * f_sulc * f_mid.clip(-1.5, 1.5)
    for t in ("deep_gm", "wm", "gm"):
        fracs[_TISSUES.index(t)] *= tex

    seg = np.zeros(shape, dtype=np.uint8)
    tumour_core = (a_enh > 0.5) & (brain > 0.5)
    seg[(a_oed > 0.5) & (brain > 0.5)] = 2
    seg[tumour_core] = 4
    seg[tumour_core & (a_nec > 0.5)] = 1

    imgs = np.tensordot(contrast, fracs, axes=(1, 0))  # (4, X, Y, Z)
    del fracs
    noise_rng = np.random.default_rng(noise_seed)
    out: dict[str, np.ndarray] = {}
    for m, mod in enumerate(BRATS_MODALITIES):
        img = imgs[m]
        img *= 1.0 + bias_amp[m] * f_bias
        img += noise_rng.standard_normal(shape, dtype=np.float32) * (noise_sd * head)
        np.maximum(img, 0.0, out=img)
        img *= scales[m]
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
    .nii.gz`` (numbered from 00000). The affine is 1 mm isotropic (``diag(-1, -1, 1, 1)``, as in
    BraTS). Image volumes are stored as int16 by default (rounded, like most real BraTS files) or
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
