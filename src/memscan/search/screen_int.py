"""The exact 8-bit integer path: int8 products with exact integer sums (see :class:`_IntScreen`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from memscan.errors import InputError
from memscan.search import limits
from memscan.search.blocks import _Groups, _kth, _mask_excluded, _pad_to, _Prepared, _Screened
from memscan.search.candidates import _round_down_f32, _thresholds
from memscan.search.stats import _executor

logger = logging.getLogger(__name__)

# int32 values per task of the exact row sums
_SUM_ELEMS = 2**20


def int8_block(raw: torch.Tensor, dp: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 ``[n, d]`` (any device) → (int8 ``[rows, dp]`` of x - 128 zero-padded, Σx' ``[rows]``,
    d²·variance ``[rows]``), all int64 sums exact. Used on the GPU, where plain reductions are fast."""
    n, d = raw.shape
    z = torch.zeros((rows, dp), dtype=torch.int8, device=raw.device)
    z[:n, :d] = torch.bitwise_xor(raw, 128).view(torch.int8)
    wide = z.to(torch.int32)
    s1 = wide.sum(dim=1, dtype=torch.int64)
    s2 = (wide * wide).sum(dim=1, dtype=torch.int64)
    return z, s1, d * s2 - s1 * s1


class _IntScreen:
    """The exact integer path for uint8 items: int8 products with exact integer sums (see module doc).

    ``screen`` returns the block's exact int32/int64 products ``Σx'y'`` and a float32 *ranking* of them,
    ``G = Σx'y' · d/√V_t - Σx'_q · Σx'_t/√V_t`` (= correlation · √V_q, V = d²·variance), with a proven
    per-query bound ``|G - exact| <= ε_q`` (:meth:`epsilon`). The candidates it selects are then
    evaluated exactly in float64 from the integer products (:meth:`exact`), so the float64 passes over
    the whole ``[nq, nb]`` block of the earlier design (convert, numerator, outer product of the
    variances, square root, division: ~3× the memory traffic of float32) shrink to a few values per
    query. Shapes are padded with zeros (which add nothing to the sums) to what ``torch._int_mm`` needs
    on CUDA (rows > 16, inner and column sizes multiples of 8).
    """

    exact_scores = True  # no float re-rank from the raw rows: candidates are exact from the products
    precision = "int8"
    rounded_output = False
    groups: _Groups | None = None

    def __init__(self, queries: np.ndarray, device: str, k: int, sums: np.ndarray | None = None) -> None:
        """``sums``: optional exact int64 ``[nq, 2]`` ``Σx``, ``Σx²`` of the uint8 queries, when the caller
        has them (the 16-bit path's quantisation does); saves a pass over the items."""
        if queries.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got {queries.dtype}")
        self.device = torch.device(device)
        self.cuda = device == "cuda"
        self.k = k
        self.nq, self.d = queries.shape
        if self.d > limits.INT8_MAX_D:
            raise InputError(f"precision 'int8' supports d <= 2^24, got d={self.d}")
        self.dp = _pad_to(self.d, 8)
        self.bounds = [(a, min(self.dp, a + limits.INT8_CHUNK)) for a in range(0, self.dp, limits.INT8_CHUNK)]
        self.copy_stream = torch.cuda.Stream() if self.cuda else None
        self._buffers: list[np.ndarray] = []
        self.exact_in_f64 = self.d <= 2**19
        rows = _pad_to(self.nq, 8, 24)
        if self.cuda:
            self.zq_chunks, s1, var, sq = self._int8_on_device(queries, rows)
        else:
            self.zq_chunks, s1, var, sq = self._to_int8(queries, pad_rows=rows, sums=sums)
        self.q_valid = var[: self.nq] > 0
        self.q_s1 = torch.from_numpy(s1[: self.nq]).to(self.device)
        self.q_var = torch.from_numpy(sq[: self.nq]).to(self.device)  # d²·variance, float64 (exact)
        self.q_s1_f32 = torch.from_numpy(s1[: self.nq].astype(np.float32)).to(self.device)
        root = np.sqrt(np.where(self.q_valid, sq[: self.nq], 1.0))
        self.q_root = root  # √V_q: converts correlations to the units of G and back
        self.q_alpha = np.sqrt(1.0 + s1[: self.nq].astype(np.float64) ** 2 / root**2)

    def _to_int8(
        self,
        raw: np.ndarray,
        pad_rows: int | None = None,
        reuse: bool = False,
        sums: np.ndarray | None = None,
    ):
        """uint8 ``[n, d]`` → (int8 x - 128 as one contiguous ``[n_pad, chunk width]`` tensor per reduction
        chunk of :attr:`bounds`, Σx', d²·variance (int64), it in float64).

        ``sums``: the rows' exact ``Σx``, ``Σx²`` (int64 ``[n, 2]``) if known; then ``Σx' = Σx - 128 d`` and
        ``Σx'² = Σx² - 256 Σx + 128² d`` (exact int64) replace the pass of :meth:`_sums`.

        Chunk-major, so that a long item (3D: d up to 2^24) needs no column-slice copies before its products.
        ``reuse``: write into buffers kept across blocks (on the CPU a block's int8 copy is dead once it is
        screened); fresh 100s-of-MB arrays cost more in page faults than the conversion itself.
        """
        if raw.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got a block of {raw.dtype}")
        n = raw.shape[0]
        rows = n if pad_rows is None else max(n, pad_rows)
        if reuse and (not self._buffers or self._buffers[0].shape[0] < rows):
            self._buffers = [np.empty((rows, b - a), dtype=np.int8) for a, b in self.bounds]
        chunks = []
        for i, (a, b) in enumerate(self.bounds):
            if reuse:
                z = self._buffers[i][:rows]
                z[n:] = 0
            else:
                z = np.zeros((rows, b - a), dtype=np.int8)
            w = max(0, min(b, self.d) - a)  # the last chunk may end in zero padding
            z[:n, w:] = 0
            np.bitwise_xor(raw[:, a : a + w], np.uint8(128), out=z[:n, :w].view(np.uint8))  # x - 128, exactly
            chunks.append(torch.from_numpy(z))
        if sums is None:
            s1, s2 = self._sums(chunks, rows)
        else:
            s1, s2 = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
            s1[:n] = sums[:, 0] - 128 * self.d
            s2[:n] = sums[:, 1] - 256 * sums[:, 0] + 128 * 128 * self.d
        var = self.d * s2 - s1 * s1  # = d² · population variance, exact
        return chunks, s1, var, var.astype(np.float64)

    def _int8_on_device(self, raw: np.ndarray, rows: int):
        """:meth:`_to_int8` on :attr:`device` (the queries on CUDA): the shift and the exact sums by
        :func:`int8_block`, bit for bit the host's, 4,096 rows at a time (its int32 temporaries stay small).
        The host's own int8 products may have no fast kernel on the GPU machine's CPU."""
        if raw.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got a block of {raw.dtype}")
        n = raw.shape[0]
        z = torch.zeros((rows, self.dp), dtype=torch.int8, device=self.device)
        s1 = torch.zeros(rows, dtype=torch.int64, device=self.device)
        var = torch.zeros(rows, dtype=torch.int64, device=self.device)
        for r in range(0, n, 4096):
            part = torch.from_numpy(np.ascontiguousarray(raw[r : r + 4096])).to(self.device)
            m = part.shape[0]
            z[r : r + m], s1[r : r + m], var[r : r + m] = int8_block(part, self.dp, m)
        chunks = [z] if len(self.bounds) == 1 else [z[:, a:b].contiguous() for a, b in self.bounds]
        s1_h, var_h = s1.cpu().numpy(), var.cpu().numpy()
        return chunks, s1_h, var_h, var_h.astype(np.float64)

    def _sums(self, chunks: list[torch.Tensor], rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Σx' and Σx'² exactly: per reduction chunk in int32 (|Σx'²| <= 131,064 · 2^14 < 2^31), chunks added
        in int64; NumPy on the thread pool, a few rows (~4 MB of int32) per task.

        Why not the int8 matrix unit (Σx'² = diag(Z Zᵀ) in groups of rows): its many small calls each
        synchronise the library's threads, and on a shared machine that wait dominates; measured on this
        project's 2-core CPU under load (4,096 rows of 16,384 values, three alternating runs): 0.9-4.0 s
        for the grouped products, 0.05-0.15 s here.
        """
        s1 = np.zeros(rows, dtype=np.int64)
        s2 = np.zeros(rows, dtype=np.int64)
        for zc in chunks:
            z = zc.numpy()
            step = max(1, _SUM_ELEMS // max(z.shape[1], 1))

            def run(r0: int, z: np.ndarray = z, step: int = step) -> None:
                a = z[r0 : r0 + step].astype(np.int32)
                s1[r0 : r0 + step] += a.sum(axis=1, dtype=np.int64)
                s2[r0 : r0 + step] += np.einsum("ij,ij->i", a, a)

            list(_executor().map(run, range(0, rows, step)))
        return s1, s2

    def prepare(self, start: int, raw: np.ndarray, sums: np.ndarray | None = None) -> _Prepared:
        """A block ready to screen; ``sums`` as in :meth:`_to_int8` (unused on CUDA: it sums on the GPU)."""
        if self.cuda:
            return self._prepare_on_device(start, raw)
        n = raw.shape[0]
        chunks, s1, var, sq = self._to_int8(raw, pad_rows=_pad_to(n, 8), reuse=True, sums=sums)
        valid = var[:n] > 0
        prep = _Prepared(start, raw, s1[:n].astype(np.float64), np.sqrt(sq[:n]), valid, None)
        prep.chunks = chunks
        prep.int_stats = (torch.from_numpy(s1[:n]), torch.from_numpy(sq[:n]))
        return prep

    def _prepare_on_device(self, start: int, raw: np.ndarray) -> _Prepared:
        """CUDA: only the raw uint8 bytes cross the bus (pinned, on the side stream); the int8 shift and the
        exact integer statistics are computed on the GPU, overlapping the previous block's product."""
        if raw.dtype != np.uint8:
            raise InputError(f"precision 'int8' needs uint8 items, got a block of {raw.dtype}")
        n = raw.shape[0]
        assert self.copy_stream is not None
        with torch.cuda.stream(self.copy_stream):
            host = torch.from_numpy(np.ascontiguousarray(raw)).pin_memory()
            z, s1, var = int8_block(host.to(self.device, non_blocking=True), self.dp, _pad_to(n, 8))
            ev = torch.cuda.Event()
            ev.record(self.copy_stream)
        ev.synchronize()  # the block's statistics are needed on the host (vectors of n values)
        s1_h, var_h = s1[:n].cpu().numpy(), var[:n].cpu().numpy()
        varf = var_h.astype(np.float64)
        prep = _Prepared(start, raw, s1_h.astype(np.float64), np.sqrt(varf), var_h > 0, None)
        prep.raw_dev, prep.copied = z, ev
        prep.int_stats = (s1[:n], var[:n].to(torch.float64))
        return prep

    def screen(self, prep: _Prepared) -> _Screened:
        assert prep.int_stats is not None
        if prep.chunks is not None:  # CPU: chunk-major already
            chunks, prep.chunks = prep.chunks, None
        else:  # CUDA: one [rows, dp] block; mat2 column-major for cuBLASLt
            assert prep.raw_dev is not None and prep.copied is not None
            torch.cuda.current_stream().wait_event(prep.copied)
            prep.raw_dev.record_stream(torch.cuda.current_stream())
            zt = prep.raw_dev
            prep.raw_dev = None
            chunks = [zt] if len(self.bounds) == 1 else [zt[:, a:b].contiguous() for a, b in self.bounds]
        acc: torch.Tensor | None = None
        for ztc, zq in zip(chunks, self.zq_chunks, strict=True):
            part = torch._int_mm(zq, ztc.t())
            acc = part if len(self.bounds) == 1 else (part.long() if acc is None else acc.add_(part))
        del chunks
        assert acc is not None
        n = len(prep.valid)
        acc = acc[: self.nq, :n]
        # the float32 ranking G (module doc): exact ints scaled per column, minus a rank-one term
        root = np.where(prep.valid, prep.norm, 1.0)  # √V_t (prep.norm holds √V_t on this path)
        p = torch.from_numpy((self.d / root).astype(np.float32)).to(self.device)
        q = torch.from_numpy((prep.mean / root).astype(np.float32)).to(self.device)
        g = acc.to(torch.float32).mul_(p[None, :])  # (one fused int32→float32 multiply is 4× slower)
        g.addr_(self.q_s1_f32, q, alpha=-1.0)
        _mask_excluded(g, prep, self.groups)
        return _Screened(prep, g, None, acc)  # the block's k-th values only if needed (finish)

    def epsilon(self, prep: _Prepared) -> np.ndarray:
        """Per-query bound on ``|G - exact·√V_q|`` for this block, in the units of G.

        Each factor of G is rounded to float32 (u = 2^-24) at most once before the product and once after
        (p, q: float64 → float32; the integer sums: exact below 2^24, else one rounding; the products, the
        subtraction: one each), so ``|G - h| <= 8u (|Σx'y'| d/√V_t + |Σx'_q| |Σx'_t|/√V_t)`` with
        ``h = (d Σx'y' - Σx'_q Σx'_t)/√V_t`` exactly (the rounding-error model, Higham 2002, §2.2, with
        ``γ_5 + u(1 + γ_5) < 8u``). Cauchy–Schwarz, ``|Σx'y'| <= √(Σx'²_q Σx'²_t)``, and
        ``d Σx'² = V + (Σx')²`` turn the first term into ``√V_q α_q α_t`` and the second into
        ``√V_q β_q β_t`` with ``β = |Σx'|/√V`` and ``α = √(1 + β²) >= β``, so
        ``|G - h| <= 16u √V_q α_q max_t α_t`` over the block's valid items. For ordinary images α is 1–5;
        a near-constant item with a large mean raises α and with it only the number of candidates.
        ``+ 2^-40 √V_q`` covers the float64 roundings of the exact values and of ``v_k √V_q`` (< 2^-50).
        """
        if not prep.valid.any():
            return np.full(self.nq, np.inf)
        beta_t = np.abs(prep.mean[prep.valid]) / prep.norm[prep.valid]
        alpha_t = float(np.sqrt(1.0 + beta_t**2).max())
        return self.q_root * (16.0 * limits._U32 * self.q_alpha * alpha_t + 2.0**-40)

    def candidates(self, sc: _Screened, v_k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The block's pairs that can still enter the top-k, with their exact values: (query, block-local
        train index, value). ``v_k``: each query's running exact k-th value (``-inf`` while unknown).

        The line ``max(v_k - ε, s_k - 2ε)`` (:func:`_thresholds`, here in the ranking's units) is proven
        with either term alone; ``s_k`` only prunes rows without a running k-th value yet, so the top-k
        pass runs for those rows only.
        """
        if not sc.prep.valid.any():  # a block of constant items: nothing to match (and ε would be infinite)
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64), np.zeros(0)
        eps = self.epsilon(sc.prep)
        root = self.q_root
        s_k = np.full(self.nq, -np.inf)
        fresh = np.flatnonzero(self.q_valid & ~np.isfinite(v_k))
        if len(fresh):
            rows = torch.from_numpy(fresh).to(self.device)
            s_k[fresh] = _kth(sc.scores[rows], self.k).double().cpu().numpy()
        thr = _thresholds(v_k * root, s_k, eps, self.q_valid, floor=-2.0 * root - 2.0 * eps)
        mask = sc.scores >= torch.from_numpy(_round_down_f32(thr)).to(self.device)[:, None]
        if mask.is_cuda:
            pairs = torch.nonzero(mask)
        else:  # NumPy's flat nonzero is ~5× faster than torch's (and NumPy's 2-D) nonzero on the CPU
            flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
            pairs = torch.stack([flat // mask.shape[1], flat % mask.shape[1]], dim=1)
        del mask
        vals = self.exact(sc, pairs[:, 0], pairs[:, 1])
        pairs_h = pairs.cpu().numpy()
        return pairs_h[:, 0].astype(np.intp), pairs_h[:, 1].astype(np.int64), vals

    def exact(self, sc: _Screened, qi: torch.Tensor, ti: torch.Tensor) -> np.ndarray:
        """Exact float64 correlations of the pairs ``(qi, ti)`` of a screened block.

        From its integer products: ``(d Σx'y' - Σx'_q Σx'_t) / √(V_q V_t)``, the numerator exact
        (integers < 2^53 for d ≤ 2^19, int64 beyond), then one rounding each in the product of the
        variances, the root and the division, in the same order for every pair: bitwise reproducible
        across block sizes, devices and thread counts."""
        assert sc.acc is not None and sc.prep.int_stats is not None
        t_s1, t_var = sc.prep.int_stats
        a = sc.acc[qi, ti]
        qs, ts = self.q_s1[qi], t_s1.to(self.device)[ti]
        if self.exact_in_f64:
            num = a.double().mul_(self.d).sub_(qs.double() * ts.double())
        else:
            num = a.long().mul_(self.d).sub_(qs * ts).double()
        den = (self.q_var[qi] * t_var.to(self.device)[ti]).sqrt_()
        return num.div_(den).cpu().numpy()
