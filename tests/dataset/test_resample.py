"""Resampling items to another size (scan --resize)."""

from __future__ import annotations

import numpy as np

from memscan.dataset.resample import resize_items


def test_2d_uint8_round_trip_and_antialiasing() -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32]
    smooth = (127 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.uint8)[None, None]
    up = resize_items(smooth, (64, 64))
    assert up.dtype == np.uint8 and up.shape == (1, 1, 64, 64)
    back = resize_items(up, (32, 32))
    assert np.corrcoef(back.ravel(), smooth.ravel())[0, 1] > 0.99
    # shrinking averages (anti-aliased) rather than sampling: a checkerboard becomes flat grey
    board = (255 * ((x + y) % 2)).astype(np.uint8)[None, None]
    small = resize_items(board, (8, 8))
    assert np.abs(small.astype(int) - 128).max() <= 2
    noise = rng.integers(0, 256, size=(2, 3, 16, 16), dtype=np.uint8)
    assert resize_items(noise, (16, 16)) is noise  # same size: untouched


def test_3d_float_volumes() -> None:
    z, y, x = np.mgrid[0:8, 0:10, 0:12].astype(np.float32)
    vol = (x + 2 * y + 3 * z)[None, None]  # linear: trilinear resampling keeps it linear
    out = resize_items(vol, (16, 20, 24))
    assert out.dtype == np.float32 and out.shape == (1, 1, 16, 20, 24)
    assert abs(float(out.mean()) - float(vol.mean())) < 1e-3
    assert np.corrcoef(resize_items(out, (8, 10, 12)).ravel(), vol.ravel())[0, 1] > 0.999
