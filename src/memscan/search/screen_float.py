"""The float screen: normalised rows multiplied in the screen precision (bf16/fp16/tf32/float32/float64)."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from memscan.search import limits
from memscan.search.blocks import _Groups, _mask_and_kth, _Prepared, _Screened
from memscan.search.precision import _cuda_float32_out, _cuda_matmul_flags
from memscan.search.stats import _executor, _map_rows, _normalise_long_row, _rows_f64, _valid

#: The torch dtype each float screen precision computes in ('tf32': float32 tensors, TF32 products).
_TORCH_DTYPE = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "tf32": torch.float32,
    "float32": torch.float32,
    "float64": torch.float64,
}

logger = logging.getLogger(__name__)


class _Screen:
    """Holds the normalised queries on the device and screens train sub-blocks against them."""

    exact_scores = False
    groups: _Groups | None = None

    def __init__(
        self,
        queries: np.ndarray | torch.Tensor,
        q_mean: np.ndarray,
        q_norm: np.ndarray,
        q_valid: np.ndarray,
        precision: str,
        device: str,
        chunk: int,
        k: int,
        keep_float32: bool = False,
    ) -> None:
        """``keep_float32`` (CPU): keep the float32 normalised queries as ``zq32`` (for a float32 screen
        that may take over from this one, without normalising them again)."""
        self.precision = precision
        self.device = torch.device(device)
        self.cuda = device == "cuda"
        self.dtype = _TORCH_DTYPE[precision]
        self.chunk = chunk
        self.k = k
        nq, d = queries.shape
        self.d = d
        self.bounds = [(a, min(d, a + chunk)) for a in range(0, d, chunk)]
        self.score_dtype = torch.float64 if precision == "float64" else torch.float32
        self.float32_out = False
        if self.cuda and precision in ("bf16", "fp16"):
            self.float32_out = _cuda_float32_out(self.dtype)
        self.rounded_output = precision in ("bf16", "fp16") and not self.float32_out
        self.copy_stream = torch.cuda.Stream() if self.cuda else None
        self.zq32: torch.Tensor | None = None
        if isinstance(queries, torch.Tensor):  # float32 normalised queries kept by an earlier screen (CPU)
            zq = queries.to(self.dtype)
        else:
            zq = self._normalise_host(queries, q_mean, q_norm, q_valid, keep_float32)
        self.zq = [zq[:, a:b].contiguous() for a, b in self.bounds]

    # normalised rows on the device, in the screen dtype
    def _normalise_host(
        self, raw: np.ndarray, mean: np.ndarray, norm: np.ndarray, valid: np.ndarray, keep_float32: bool
    ) -> torch.Tensor:
        if self.cuda:
            x = _to_device_raw(raw, self.device, None)
            return self._normalise_device(x, mean, norm, valid)
        zdt = np.float64 if self.precision == "float64" else np.float32
        z = np.empty(raw.shape, dtype=zdt)
        _fill_normalised(raw, mean, norm, valid, z)
        if keep_float32 and zdt == np.float32:
            self.zq32 = torch.from_numpy(z)
        return torch.from_numpy(z).to(self.dtype)

    def _normalise_device(
        self, x: torch.Tensor, mean: np.ndarray, norm: np.ndarray, valid: np.ndarray
    ) -> torch.Tensor:
        dev = self.device
        mu = torch.from_numpy(np.where(valid, mean, 0.0)).to(dev, non_blocking=False)
        nr = torch.from_numpy(np.where(valid, norm, np.inf)).to(dev, non_blocking=False)
        z = (x.to(torch.float64) - mu[:, None]) / nr[:, None]
        keep = torch.from_numpy(valid).to(dev)[:, None]
        z = torch.where(keep, z, torch.zeros((), dtype=z.dtype, device=dev))
        if self.precision != "float64":
            z = z.to(torch.float32)
        return z.to(self.dtype)

    def prepare(self, start: int, raw: np.ndarray) -> _Prepared:
        """Statistics on the host (float64, deterministic); rows normalised for the screen.

        On CUDA the raw rows travel (pinned, on a side stream) and are normalised on the device, so the
        copy of block i+1 overlaps the product of block i.
        """
        if self.cuda:
            mean, norm = _map_rows(raw, None)
            valid = _valid(mean, norm)
            assert self.copy_stream is not None
            with torch.cuda.stream(self.copy_stream):
                x = _to_device_raw(raw, self.device, self.copy_stream)
                ev = torch.cuda.Event()
                ev.record(self.copy_stream)
            return _Prepared(start, raw, mean, norm, valid, None, raw_dev=x, copied=ev)
        zdt = np.float64 if self.precision == "float64" else np.float32
        z = np.empty(raw.shape, dtype=zdt)
        mean, norm = _map_rows(raw, z)
        valid = _valid(mean, norm)
        # kept in float32 (float64) here and converted to the screen dtype by screen(): a float32 screen that
        # takes over from a bf16 one ('auto') can then screen this block without preparing it again
        return _Prepared(start, raw, mean, norm, valid, torch.from_numpy(z))

    def screen(self, prep: _Prepared) -> _Screened:
        if self.cuda:
            assert prep.copied is not None and prep.raw_dev is not None
            torch.cuda.current_stream().wait_event(prep.copied)
            prep.raw_dev.record_stream(torch.cuda.current_stream())
            zt = self._normalise_device(prep.raw_dev, prep.mean, prep.norm, prep.valid)
            prep.raw_dev = None
            ctx: contextlib.AbstractContextManager[None] = _cuda_matmul_flags(self.precision)
        else:
            assert prep.z is not None
            zt = prep.z.to(self.dtype)
            prep.z = None
            ctx = contextlib.nullcontext()
        scores: torch.Tensor | None = None
        with ctx:
            for (a, b), zq in zip(self.bounds, self.zq, strict=True):
                ztc = zt[:, a:b]
                if self.float32_out:
                    part = torch.mm(zq, ztc.t(), out_dtype=torch.float32)
                else:
                    part = torch.mm(zq, ztc.t())
                part = part.to(self.score_dtype)
                # chunk results added in float32 (float64 screen: float64); ε includes γ_{C-1}
                scores = part if scores is None else scores.add_(part)
        assert scores is not None
        return _Screened(prep, scores, _mask_and_kth(scores, prep, self.k, self.groups))


def _fill_normalised(
    raw: np.ndarray, mean: np.ndarray, norm: np.ndarray, valid: np.ndarray, z: np.ndarray
) -> None:
    n, d = raw.shape
    step = max(1, limits._STATS_ELEMS // max(d, 1))

    def run(r0: int) -> None:
        r1 = min(n, r0 + step)
        f = _rows_f64(raw, r0, r1)
        f -= np.where(valid[r0:r1], mean[r0:r1], 0.0)[:, None]
        f /= np.where(valid[r0:r1], norm[r0:r1], np.inf)[:, None]
        f[~valid[r0:r1]] = 0.0
        z[r0:r1] = f

    def run_long(r: int) -> None:  # the same values, a cache-resident segment at a time
        if not valid[r]:
            z[r] = 0.0
            return
        _normalise_long_row(raw[r], mean[r], norm[r], z[r], np.empty(min(d, limits._SEGMENT)))

    if d > limits._SEGMENT:
        list(_executor().map(run_long, range(n)))
    else:
        list(_executor().map(run, range(0, n, step)))


def _to_device_raw(raw: np.ndarray, device: torch.device, stream: torch.cuda.Stream | None) -> torch.Tensor:
    """Raw rows to the device through pinned memory (dtypes torch lacks go as float64, exactly)."""
    if raw.dtype not in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64):
        raw = raw.astype(np.float64)
    host = torch.from_numpy(np.ascontiguousarray(raw))
    if device.type == "cuda":
        host = host.pin_memory()
        return host.to(device, non_blocking=True)
    return host
