"""Fidelity, diversity and dataset-level copying metrics of a synthetic set, on encoder features.

One concept per module: :mod:`frechet` (Fréchet distance), :mod:`kid` (kernel inception distance),
:mod:`prdc` (precision, recall, density, coverage), :mod:`alpha_precision` (α-precision, β-recall,
authenticity), :mod:`copying` (the C_T data-copying test), :mod:`diversity` (mean pairwise MS-SSIM),
:mod:`encoders` (an offline feature extractor: a user's TorchScript file or the self-supervised encoder)
and :mod:`panel` (all of them into ``quality.json``). Features are float arrays ``[N, D]``; images are
``[N, C, H, W]`` or ``[N, C, X, Y, Z]``.
"""
