"""The search's constants: precisions, reduction lengths, unit roundoffs and memory bounds (elements).

One module so that a test can change a bound in one place (``monkeypatch.setattr(limits, ...)``); it
loads no torch, so option objects and the CLI can read ``PRECISIONS`` from here."""

from __future__ import annotations

import numpy as np

#: Accepted values of ``precision`` ('tf32' only on CUDA).
PRECISIONS = ("auto", "int8", "int16", "bf16", "fp16", "tf32", "float32", "float64")
#: Reduction length of one screened product used by :func:`search_topk` (≤ 65,536). Smaller chunks
#: shrink γ_m and cost nothing in the output-rounding term (the chunks' |partial sums| add up to ≤ ~1).
SCREEN_CHUNK = 16384
#: Reduction length of one int8 product: |Σ x'y'| <= m 2^14 < 2^31 needs m < 131,072 (multiple of 8).
INT8_CHUNK = 131064
#: Largest d for the exact integer path: |d Σx'y' - Σx'Σy'| <= 2 d² 2^14 < 2^63.
INT8_MAX_D = 2**24
_U32 = 2.0**-24
_U64 = 2.0**-53
# unit roundoff of the screen format (tf32: 2^-10, not 2^-11, in case the hardware truncates)
_U_FORMAT = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 2.0**-10, "float32": _U32, "float64": 0.0}
# absolute error of rounding into the format when the result underflows (half the smallest subnormal;
# tf32 truncation: the whole spacing)
_ETA_FORMAT = {"bf16": 2.0**-134, "fp16": 2.0**-25, "tf32": 2.0**-149, "float32": 2.0**-150, "float64": 0.0}
# memory bounds (elements): one sub-block of scores [nq, nb] and one block of normalised rows [nb, d]
_SCORE_ELEMS = 2**25
_ROW_ELEMS = 2**26
# elements per float64 temporary in the exact re-rank / the row statistics
_EXACT_ELEMS = 2**21
_STATS_ELEMS = 2**18
# rows longer than this (3D volumes) are summed in segments of this many values (1 MiB of float64: two
# such buffers stay in a core's L2 cache) rather than through row-sized float64 copies
_SEGMENT = 2**17
# centred float64 queries are cached for the re-rank up to this size
_QUERY_CACHE_BYTES = 2**30
#: 'auto' screens float data in bf16 unless the first block's bf16 screen leaves more than this fraction of
#: its pairs for the exact float64 re-rank; then it screens in float32. An exact pair costs ~100-1,000
#: screened pairs (it re-reads both rows in float64), so beyond ~0.5% the wider screen is the cheaper
#: side. Seen on this project's 2-core CPU: 2D 2,000 x 20,000 x 128² re-ranks 0.18% in bf16 (bf16 5.4 s,
#: float32 8.3 s: stays bf16); 3D 50 x 200 volumes of 128x128x96 re-rank 13% (bf16 9.7 s, float32 4.7 s:
#: switches).
AUTO_SWITCH_FRACTION = 0.005
#: dtypes the exact 16-bit path takes (values within [-2^15, 2^16)).
INT16_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.uint16))
#: Largest d for the 16-bit path: integer dot products of centred values (< 2^16 in magnitude) stay exact in
#: float64 (d 2^32 <= 2^53).
INT16_MAX_D = 2**21
