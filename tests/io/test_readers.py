"""Tests for memscan.io.readers: real sample files from installed packages, and generated files."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from memscan.errors import InputError
from memscan.io.readers import (
    ImageData,
    NoImageData,
    _dcmread,
    is_dicom_series_dir,
    read_dicom_series,
    read_image,
    suffix_of,
    supported,
)

# ----------------------------------------------------------------------------------------------- helpers


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    series_uid: str | None = None,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    instance: int | None = None,
    patient: dict[str, str] | None = None,
    spacing: tuple[float, float] = (0.5, 0.75),
) -> Path:
    """Write a minimal valid Part 10 DICOM file (Explicit VR Little Endian, 16-bit grayscale).

    ``pixels`` is ``[rows, cols]`` or ``[frames, rows, cols]`` int16/uint16, or None for no pixel data.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "MR"
    for key, value in (patient or {}).items():
        setattr(ds, key, value)
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = list(orientation)
    if instance is not None:
        ds.InstanceNumber = instance
    ds.PixelSpacing = list(spacing)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
    if pixels is not None:
        pixels = np.asarray(pixels)
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"))).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# Voxel -> RAS+ affine of an array already in memscan's frame (X posterior, Y left, Z superior): reading a
# file written with it returns the array unchanged, so value tests need no reorientation.
PLS_AFFINE = np.array([[0.0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def write_nifti(
    path: Path,
    arr: np.ndarray,
    *,
    slope: float | None = None,
    zooms: tuple | None = None,
    affine: np.ndarray = PLS_AFFINE,
) -> Path:
    img = nib.Nifti1Image(arr, affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


def rng_image(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def assert_names(exc: pytest.ExceptionInfo[InputError], path: Path) -> None:
    assert path.name in str(exc.value)
    assert exc.value.path is not None and Path(exc.value.path).name == path.name


# ---------------------------------------------------------------------------------------- real DICOM/NIfTI


def test_real_mr_small_matches_pydicom() -> None:
    path = Path(get_testdata_file("MR_small.dcm"))
    ref = pydicom.dcmread(path)
    data = read_image(path)
    assert data.spatial_dims == 2
    assert data.array.shape == (1, 64, 64)
    expected = apply_modality_lut(ref.pixel_array, ref)
    np.testing.assert_array_equal(data.array[0], expected)
    assert data.spacing == pytest.approx((0.3125, 0.3125))


def test_real_ct_small_records_rescale() -> None:
    path = Path(get_testdata_file("CT_small.dcm"))
    ref = pydicom.dcmread(path)
    assert "RescaleSlope" in ref
    data = read_image(path, spatial_dims=2)
    assert data.array.dtype == np.int16  # stored integers kept, rescale recorded (test_dicom_rescale.py)
    assert data.array.shape == (1, 128, 128)
    np.testing.assert_allclose(
        data.modality_values()[0], apply_modality_lut(ref.pixel_array, ref), rtol=0, atol=1e-3
    )
    assert float(data.modality_values().min()) < 0  # Hounsfield units, intercept -1024


def test_real_truncated_dicom_is_input_error() -> None:
    path = Path(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(InputError) as exc:
        read_image(path)
    assert_names(exc, path)


def test_real_rgb_dicom() -> None:
    path = get_testdata_file("SC_rgb_small_odd.dcm")
    if path is None:
        pytest.skip("pydicom test file SC_rgb_small_odd.dcm not shipped")
    ref = pydicom.dcmread(path)
    data = read_image(Path(path))
    assert data.array.shape == (3, ref.Rows, ref.Columns)
    np.testing.assert_array_equal(np.moveaxis(data.array, 0, -1), ref.pixel_array)


def test_real_nibabel_anatomical() -> None:
    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not path.exists():
        pytest.skip("nibabel's anatomical.nii not shipped")
    data = read_image(path, spatial_dims=3)
    img = nib.load(str(path))
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    # Independent reference: nibabel's RAS+ canonical image, then RAS -> PLS by hand (swap the first two
    # axes and reverse both: P is -A, L is -R).
    ras = np.asanyarray(nib.as_closest_canonical(img).dataobj)
    ref = ras.transpose(1, 0, 2)[::-1, ::-1, :]
    assert data.array.shape == (1, *ref.shape) == (1, 41, 33, 25)
    np.testing.assert_array_equal(data.array[0], ref)
    assert data.frame == "PLS" and data.source_frame == "LAS"
    zooms = img.header.get_zooms()
    assert data.spacing == (zooms[1], zooms[0], zooms[2])


# ------------------------------------------------------------------------------------- PNG / JPEG / TIFF


def test_png_8bit(tmp_path: Path) -> None:
    arr = rng_image((12, 10))
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = read_image(tmp_path / "a.png")
    assert data.array.dtype == np.uint8 and data.array.shape == (1, 12, 10)
    np.testing.assert_array_equal(data.array[0], arr)
    assert data.spatial_dims == 2 and data.spacing is None


def test_png_16bit(tmp_path: Path) -> None:
    arr = rng_image((12, 10), np.uint16, seed=1)
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = read_image(tmp_path / "a.png")
    assert data.array.dtype == np.uint16
    np.testing.assert_array_equal(data.array[0], arr)


def test_png_rgb_and_rgba(tmp_path: Path) -> None:
    rgb = rng_image((6, 7, 3), seed=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    data = read_image(tmp_path / "rgb.png")
    assert data.array.shape == (3, 6, 7)
    np.testing.assert_array_equal(np.moveaxis(data.array, 0, -1), rgb)
    rgba = rng_image((6, 7, 4), seed=3)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    data = read_image(tmp_path / "rgba.png")
    assert data.array.shape == (3, 6, 7)
    np.testing.assert_array_equal(np.moveaxis(data.array, 0, -1), rgba[..., :3])


def test_png_palette(tmp_path: Path) -> None:
    gray = Image.fromarray(rng_image((5, 5), seed=4)).convert("P")  # a gray palette
    gray.putpalette([v for i in range(256) for v in (i, i, i)])
    gray.save(tmp_path / "gray_p.png")
    assert read_image(tmp_path / "gray_p.png").array.shape == (1, 5, 5)
    color = Image.fromarray(rng_image((5, 5, 3), seed=5)).convert("P", palette=Image.Palette.ADAPTIVE)
    color.save(tmp_path / "color_p.png")
    assert read_image(tmp_path / "color_p.png").array.shape == (3, 5, 5)


def test_jpeg_gray_and_rgb(tmp_path: Path) -> None:
    arr = np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))
    Image.fromarray(arr).save(tmp_path / "g.jpg", quality=95)
    data = read_image(tmp_path / "g.jpg")
    assert data.array.shape == (1, 16, 16) and data.array.dtype == np.uint8
    assert np.abs(data.array[0].astype(int) - arr).max() < 12  # lossy
    Image.fromarray(np.dstack([arr, arr, arr])).save(tmp_path / "c.jpeg")
    assert read_image(tmp_path / "c.jpeg").array.shape == (3, 16, 16)


def test_tiff_float_and_16bit_and_bmp(tmp_path: Path) -> None:
    f = np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6)
    Image.fromarray(f).save(tmp_path / "f.tif")
    data = read_image(tmp_path / "f.tif")
    assert data.array.dtype == np.float32
    np.testing.assert_array_equal(data.array[0], f)
    u = rng_image((5, 6), np.uint16)
    Image.fromarray(u).save(tmp_path / "u.tiff")
    np.testing.assert_array_equal(read_image(tmp_path / "u.tiff").array[0], u)
    b = rng_image((4, 4))
    Image.fromarray(b).save(tmp_path / "b.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "b.bmp").array[0], b)


def test_multipage_tiff_is_input_error(tmp_path: Path) -> None:
    pages = [Image.fromarray(rng_image((4, 4), seed=i)) for i in range(3)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match="3 pages") as exc:
        read_image(tmp_path / "m.tif")
    assert_names(exc, tmp_path / "m.tif")


def test_constant_image_is_fine(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "c.png")
    assert int(read_image(tmp_path / "c.png").array.max()) == 7


# ------------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_2d_3d(tmp_path: Path, suffix: str) -> None:
    vol = rng_image((6, 5, 4), np.int16)
    data = read_image(write_nifti(tmp_path / f"v{suffix}", vol, zooms=(1.0, 2.0, 3.0)))
    assert data.spatial_dims == 3 and data.array.shape == (1, 6, 5, 4)
    assert data.array.dtype == np.int16  # no scaling: integer dtype kept
    np.testing.assert_array_equal(data.array[0], vol)
    assert data.spacing == (1.0, 2.0, 3.0)
    img = rng_image((6, 5), np.int16)
    data2 = read_image(write_nifti(tmp_path / f"i{suffix}", img), spatial_dims=2)
    assert data2.spatial_dims == 2 and data2.array.shape == (1, 6, 5)


def test_nifti_scaled_gives_float32(tmp_path: Path) -> None:
    vol = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    data = read_image(write_nifti(tmp_path / "s.nii.gz", vol, slope=0.5))
    assert data.array.dtype == np.float32
    np.testing.assert_allclose(data.array[0], vol * 0.5)


def test_nifti_4d_singleton_squeezed(tmp_path: Path) -> None:
    vol = rng_image((4, 4, 3, 1), np.int16)
    data = read_image(write_nifti(tmp_path / "v.nii.gz", vol), spatial_dims=3)
    assert data.array.shape == (1, 4, 4, 3)


def test_nifti_slice_as_image(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "s.nii.gz", rng_image((4, 5, 1), np.int16))
    assert read_image(path).array.shape == (1, 4, 5, 1)
    assert read_image(path, spatial_dims=2).array.shape == (1, 4, 5)


def test_nifti_4d_is_input_error(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", rng_image((4, 4, 3, 2), np.int16))
    with pytest.raises(
        InputError, match=r"4D NIfTI \(4, 4, 3, 2\): 2 volumes .* one 3D volume per file"
    ) as exc:
        read_image(path)
    assert_names(exc, path)


def test_nifti_spatial_dims_mismatch(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", rng_image((4, 4, 3), np.int16))
    with pytest.raises(InputError, match="expected a 2D image") as exc:
        read_image(path, spatial_dims=2)
    assert_names(exc, path)


def test_nifti_nan_is_input_error(tmp_path: Path) -> None:
    vol = np.zeros((3, 3, 3), np.float32)
    vol[0, 0, 0] = np.nan
    vol[1, 1, 1] = np.inf
    path = write_nifti(tmp_path / "n.nii.gz", vol)
    with pytest.raises(InputError, match="contains 1 infinite values .* and 1 NaN values") as exc:
        read_image(path, nan="zero")  # Inf is refused whatever the NaN policy
    assert_names(exc, path)


def test_nifti_nan_policy(tmp_path: Path) -> None:
    vol = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    vol[0, 0, 0] = vol[2, 1, 0] = np.nan
    path = write_nifti(tmp_path / "n.nii.gz", vol)
    with pytest.raises(InputError, match=r"contains 2 NaN values \(pass --nan zero") as exc:
        read_image(path)
    assert_names(exc, path)
    data = read_image(path, nan="zero")
    assert data.n_nan == 2
    np.testing.assert_array_equal(data.array[0], np.nan_to_num(vol, nan=0.0))
    with pytest.raises(InputError, match="nan policy"):
        read_image(path, nan="drop")


def test_float64_beyond_float32_is_refused(tmp_path: Path) -> None:
    vol = np.ones((3, 3, 3), np.float64)
    vol[1, 1, 1] = 1e300
    path = write_nifti(tmp_path / "big.nii", vol)
    with pytest.raises(InputError, match="beyond float32's range") as exc:
        read_image(path)
    assert_names(exc, path)


def test_truncated_nii_gz_is_input_error(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii.gz", rng_image((16, 16, 16), np.int16))
    raw = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read NIfTI") as exc:
        read_image(bad)
    assert_names(exc, bad)


def test_truncated_nii_is_input_error(tmp_path: Path) -> None:
    good = write_nifti(tmp_path / "good.nii", rng_image((8, 8, 8), np.int16))
    bad = tmp_path / "bad.nii"
    bad.write_bytes(good.read_bytes()[:600])
    with pytest.raises(InputError) as exc:
        read_image(bad)
    assert_names(exc, bad)


def test_garbage_nii_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.nii"
    bad.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(1000)))
    with pytest.raises(InputError) as exc:
        read_image(bad)
    assert_names(exc, bad)


def test_gzip_of_garbage_nii_gz_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti header" * 40))
    with pytest.raises(InputError) as exc:
        read_image(bad)
    assert_names(exc, bad)


# --------------------------------------------------------------------------------------------- NPY / NPZ


def test_npy_2d_3d(tmp_path: Path) -> None:
    img = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    np.save(tmp_path / "i.npy", img)
    data = read_image(tmp_path / "i.npy")
    assert data.spatial_dims == 2 and data.array.shape == (1, 5, 6) and data.array.dtype == np.float32
    vol = rng_image((3, 4, 5), np.int16)
    np.save(tmp_path / "v.npy", vol)
    data = read_image(tmp_path / "v.npy", spatial_dims=3, volumes=True)
    assert not data.stack and data.frame is None
    np.testing.assert_array_equal(data.array[0], vol)


def test_npy_big_endian_and_bool(tmp_path: Path) -> None:
    np.save(tmp_path / "be.npy", np.arange(6, dtype=">i4").reshape(2, 3))
    data = read_image(tmp_path / "be.npy")
    assert data.array.dtype.isnative
    np.testing.assert_array_equal(data.array[0], np.arange(6).reshape(2, 3))
    np.save(tmp_path / "b.npy", np.eye(3, dtype=bool))
    assert read_image(tmp_path / "b.npy").array.dtype == np.uint8


def test_npz_choices(tmp_path: Path) -> None:
    a = rng_image((4, 4))
    np.savez(tmp_path / "one.npz", whatever=a)
    np.testing.assert_array_equal(read_image(tmp_path / "one.npz").array[0], a)
    np.savez_compressed(tmp_path / "named.npz", image=a, mask=a > 3)
    np.testing.assert_array_equal(read_image(tmp_path / "named.npz").array[0], a)
    np.savez(tmp_path / "pos.npz", a, a > 3)
    np.testing.assert_array_equal(read_image(tmp_path / "pos.npz").array[0], a)
    np.savez(tmp_path / "ambiguous.npz", x=a, y=a)
    with pytest.raises(InputError, match="none is named 'image'") as exc:
        read_image(tmp_path / "ambiguous.npz")
    assert_names(exc, tmp_path / "ambiguous.npz")


def test_npy_nan_is_input_error(tmp_path: Path) -> None:
    arr = np.ones((4, 4), np.float64)
    arr[2, 2] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(InputError, match="contains 1 NaN values") as exc:
        read_image(tmp_path / "nan.npy")
    assert_names(exc, tmp_path / "nan.npy")


def test_npy_empty_is_input_error(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="empty") as exc:
        read_image(tmp_path / "empty.npy")
    assert_names(exc, tmp_path / "empty.npy")


def test_npy_5d_without_volumes_is_input_error(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 2, 2, 2), np.float32))
    with pytest.raises(InputError, match=r"shape \(2, 2, 2, 2, 2\).*5D needs --volumes.*the rule for") as exc:
        read_image(tmp_path / "x.npy")
    assert_names(exc, tmp_path / "x.npy")


def test_corrupt_npy_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "bad.npy")
    assert_names(exc, tmp_path / "bad.npy")


# ------------------------------------------------------------------------------------------- bad inputs


def test_truncated_png_is_input_error(tmp_path: Path) -> None:
    Image.fromarray(rng_image((64, 64))).save(tmp_path / "good.png")
    raw = (tmp_path / "good.png").read_bytes()
    bad = tmp_path / "trunc.png"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cannot read image") as exc:
        read_image(bad)
    assert_names(exc, bad)


def test_garbage_jpeg_is_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8\xff" + bytes(random.Random(1).randrange(256) for _ in range(500)))
    with pytest.raises(InputError) as exc:
        read_image(bad)
    assert_names(exc, bad)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as exc:
        read_image(tmp_path / "nope.png")
    assert_names(exc, tmp_path / "nope.png")


def test_unsupported_suffix_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type '.txt'") as exc:
        read_image(tmp_path / "notes.txt")
    assert_names(exc, tmp_path / "notes.txt")


def test_plain_folder_is_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder") as exc:
        read_image(folder)
    assert_names(exc, folder)


def test_bad_spatial_dims_argument(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="spatial_dims"):
        read_image(tmp_path / "x.png", spatial_dims=4)


# ------------------------------------------------------------------------------------- generated DICOM


def test_dicom_roundtrip_int16(tmp_path: Path) -> None:
    arr = rng_image((6, 8), np.int16)
    data = read_image(write_dicom(tmp_path / "a.dcm", arr))
    assert data.array.dtype == np.int16 and data.array.shape == (1, 6, 8)
    np.testing.assert_array_equal(data.array[0], arr)
    assert data.spacing == (0.5, 0.75)


def test_dicom_rescale_is_recorded(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    data = read_image(write_dicom(tmp_path / "a.dcm", arr, slope=2.0, intercept=-10.0))
    assert data.array.dtype == np.uint16 and data.rescale == (2.0, -10.0)
    np.testing.assert_array_equal(data.array[0], arr)
    np.testing.assert_array_equal(data.modality_values()[0], arr * 2.0 - 10.0)


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    arr = np.array([[0, 100], [300, 1000]], dtype=np.uint16)
    data = read_image(write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(data.array[0], 1000 + 0 - arr)
    assert data.array.dtype == np.uint16


def test_dicom_multiframe_is_volume(tmp_path: Path) -> None:
    frames = rng_image((3, 4, 5), np.int16)
    data = read_image(write_dicom(tmp_path / "mf.dcm", frames))
    assert data.spatial_dims == 3 and data.array.shape == (1, 4, 5, 3)
    np.testing.assert_array_equal(data.array[0], np.moveaxis(frames, 0, -1))
    with pytest.raises(InputError, match="expected a 2D image"):
        read_image(tmp_path / "mf.dcm", spatial_dims=2)


def test_dicom_without_preamble(tmp_path: Path) -> None:
    arr = rng_image((4, 4), np.int16)
    path = write_dicom(tmp_path / "a.dcm", arr)
    part10 = path.read_bytes()
    assert part10[128:132] == b"DICM"
    # Drop the preamble, "DICM" and the File Meta group: what old devices write as a bare dataset.
    meta_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL value
    (tmp_path / "raw.dcm").write_bytes(part10[144 + meta_length :])
    np.testing.assert_array_equal(read_image(tmp_path / "raw.dcm").array[0], arr)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(NoImageData, match=r"DICOM object without an image \(.*\)") as exc:
        read_image(path)
    assert_names(exc, path)


def test_not_a_dicom(tmp_path: Path) -> None:
    bad = tmp_path / "fake.dcm"
    bad.write_bytes(b"this is plainly not a DICOM file\n" * 10)
    with pytest.raises(InputError, match="not a DICOM file") as exc:
        read_image(bad)
    assert_names(exc, bad)


def test_dicom_private_tags_never_returned(tmp_path: Path) -> None:
    secrets = {"PatientName": "Doe^Jane", "PatientID": "MRN123456", "PatientBirthDate": "19700101"}
    path = write_dicom(tmp_path / "p.dcm", rng_image((4, 4), np.int16), patient=secrets)
    data = read_image(path)
    fields = [repr(data), str(data.path), repr(data.spacing), repr(data.array), repr(vars(data))]
    for field in fields:
        for value in ("Doe", "Jane", "MRN123456", "19700101"):
            assert value not in field
    assert set(vars(data)) == {
        "array",
        "spatial_dims",
        "path",
        "spacing",
        "frame",
        "source_frame",
        "n_nan",
        "stack",
        "rescale",  # two numbers (slope, intercept), nothing identifying
    }
    parsed = _dcmread(path)  # the whitelist parse never even holds them
    assert not any(k in parsed for k in secrets)


def _write_series(
    folder: Path, n: int = 5, *, shuffle: bool = True, with_position: bool = True
) -> np.ndarray:
    """Write an n-slice series (slice k holds value 10*k everywhere + a ramp); return [rows, cols, n]."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    slices = [(np.arange(12, dtype=np.int16).reshape(3, 4) + 10 * k).astype(np.int16) for k in range(n)]
    order = list(range(n))
    if shuffle:
        random.Random(3).shuffle(order)
    # Slices go along -z: the file position z decreases with k, and the normal (row x col) is +z,
    # so the sorted volume runs k = n-1 ... 0. InstanceNumber is set opposite to catch a wrong key.
    for file_index, k in enumerate(order):
        write_dicom(
            folder / f"f{file_index:03d}.dcm",
            slices[k],
            series_uid=uid,
            position=(0.0, 0.0, -2.5 * k) if with_position else None,
            instance=n - k if with_position else k + 1,
        )
    stack = np.stack(slices, axis=-1)
    return stack[..., ::-1] if with_position else stack


def test_dicom_series_sorted_by_position(tmp_path: Path) -> None:
    expected = _write_series(tmp_path / "s")
    assert is_dicom_series_dir(tmp_path / "s")
    data = read_dicom_series(tmp_path / "s")
    assert data.array.shape == (1, 3, 4, 5) and data.spatial_dims == 3
    np.testing.assert_array_equal(data.array[0], expected)
    assert data.spacing == pytest.approx((0.5, 0.75, 2.5))
    assert read_image(tmp_path / "s").array.shape == (1, 3, 4, 5)


def test_dicom_series_sorted_by_instance_number(tmp_path: Path) -> None:
    expected = _write_series(tmp_path / "s", with_position=False)
    data = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(data.array[0], expected)


def test_dicom_series_extensionless_files(tmp_path: Path) -> None:
    expected = _write_series(tmp_path / "s", n=3)
    for f in sorted((tmp_path / "s").iterdir()):
        f.rename(f.with_suffix(""))
    assert supported(tmp_path / "s" / "f000")
    assert is_dicom_series_dir(tmp_path / "s")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array[0], expected)


def test_dicom_series_duplicate_positions_is_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    uid = generate_uid()
    for i in range(2):
        write_dicom(folder / f"{i}.dcm", rng_image((3, 3), np.int16), series_uid=uid, position=(0, 0, 0))
    with pytest.raises(InputError, match="same position") as exc:
        read_dicom_series(folder)
    assert_names(exc, folder)


def test_not_a_series(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_dicom(folder / "a.dcm", rng_image((3, 3), np.int16))
    assert not is_dicom_series_dir(folder)  # one file
    write_dicom(folder / "b.dcm", rng_image((3, 3), np.int16))
    assert not is_dicom_series_dir(folder)  # two series
    assert not is_dicom_series_dir(folder / "a.dcm")


def test_supported_and_suffix() -> None:
    assert suffix_of("a/B.NII.GZ") == ".nii.gz"
    assert suffix_of("x.tar.gz") == ".gz"
    for name in (
        "a.png",
        "a.JPG",
        "a.jpeg",
        "a.tif",
        "a.tiff",
        "a.bmp",
        "a.dcm",
        "a.nii",
        "a.nii.gz",
        "a.npy",
    ):
        assert supported(Path(name)), name
    for name in ("a.txt", "a.gz", "a.csv", "nosuffix_missing"):
        assert not supported(Path(name)), name


def test_imagedata_is_frozen(tmp_path: Path) -> None:
    data = ImageData(array=np.zeros((1, 2, 2)), spatial_dims=2, path=tmp_path)
    with pytest.raises(AttributeError):
        data.spatial_dims = 3  # type: ignore[misc]


def test_mgz_in_freesurfer_lia_orientation_reads_in_pls(tmp_path: Path) -> None:
    """FreeSurfer's conformed volumes are stored LIA; memscan returns them in PLS, exactly."""
    from nibabel.orientations import aff2axcodes

    lia = np.array([[-1.0, 0, 0, 10], [0, 0, 1, -5], [0, -1, 0, 7], [0, 0, 0, 1]])
    assert aff2axcodes(lia) == ("L", "I", "A")
    vol = rng_image((5, 6, 7), np.int16)
    nib.save(nib.MGHImage(vol, lia), str(tmp_path / "brain.mgz"))
    data = read_image(tmp_path / "brain.mgz")
    assert data.frame == "PLS" and data.source_frame == "LIA"
    # LIA -> PLS by hand: P = reversed A (axis 2), L = axis 0, S = reversed I (axis 1).
    expected = vol.transpose(2, 0, 1)[::-1, :, ::-1]
    np.testing.assert_array_equal(data.array[0], expected)


def test_nifti_without_orientation_is_kept_as_stored(tmp_path: Path) -> None:
    vol = rng_image((4, 5, 6), np.int16)
    img = nib.Nifti1Image(vol, np.diag([-1.0, 1, 1, 1]))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "raw.nii"))
    data = read_image(tmp_path / "raw.nii")
    assert data.frame is None
    np.testing.assert_array_equal(data.array[0], vol)


def test_cifti_is_no_image_data() -> None:
    path = Path(nib.__file__).parent / "tests" / "data" / "row_major.dconn.nii"
    if not path.exists():
        pytest.skip("nibabel's CIFTI-2 test file is not installed")
    with pytest.raises(NoImageData, match="CIFTI-2"):
        read_image(path)


def test_sagittal_dicom_series_reads_in_pls(tmp_path: Path) -> None:
    """A sagittal series (rows toward the feet, columns posterior, slices stepping to the patient's right) is
    returned in PLS: X = columns, Y = slices reversed (to the left), Z = rows reversed (to the head)."""
    folder = tmp_path / "sag"
    folder.mkdir()
    uid = generate_uid()
    rng = np.random.default_rng(5)
    slices = [rng.integers(0, 1000, (3, 4)).astype(np.int16) for _ in range(5)]
    for k, pixels in enumerate(slices):  # LPS x decreases with k: toward the patient's right
        write_dicom(
            folder / f"s{k}.dcm",
            pixels,
            series_uid=uid,
            position=(-2.0 * k, 0.0, 0.0),
            orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
            instance=k + 1,
        )
    data = read_image(folder)
    assert data.frame == "PLS" and data.source_frame == "IPR"
    stack = np.stack(slices, axis=-1)  # [rows (I), cols (P), k (R)]
    np.testing.assert_array_equal(data.array[0], stack.transpose(1, 2, 0)[:, ::-1, ::-1])
    assert data.spacing == pytest.approx((0.75, 2.0, 0.5))
