"""A compact StyleGAN2 with adaptive discriminator augmentation, for 2D and 3D multi-channel images.

Written from the papers (NVIDIA's code is not used; its licence forbids copying); one concept per module,
as in stylegan2-ada-pytorch's ``training/``:

* :mod:`.config`        — :class:`StyleGAN2Config`, presets, :func:`resolve_config`, accepted image sizes;
* :mod:`.layers`        — equalized-lr layers, the modulated convolution, minibatch stddev;
* :mod:`.generator`     — mapping network and skip generator;
* :mod:`.discriminator` — residual discriminator;
* :mod:`.loss`          — non-saturating logistic loss and lazy R1;
* :mod:`.model`         — :class:`StyleGAN2Model` (training step, EMA, ADA, sampling) and :func:`build`;
* augmentation: :mod:`memscan.models.augment`; EMA: :mod:`memscan.models.ema`.

Path-length regularization and style-mixing regularization are left out (both optional in the paper).
Images are ``[B, C, H, W]`` or ``[B, C, X, Y, Z]`` in ``[-1, 1]``; every spatial size a power of two ≥ 4
(they may differ: a ``32×64`` image starts from a ``4×8`` constant).
"""

from __future__ import annotations

from memscan.models.ema import ema_beta, update_ema
from memscan.models.stylegan2.config import (
    PRESETS,
    StyleGAN2Config,
    auto_r1_gamma,
    check_image_shape,
    resolve_config,
)
from memscan.models.stylegan2.discriminator import Discriminator
from memscan.models.stylegan2.generator import Generator
from memscan.models.stylegan2.layers import ModulatedConv, minibatch_stddev
from memscan.models.stylegan2.model import StyleGAN2Model, build

__all__ = [
    "PRESETS",
    "Discriminator",
    "Generator",
    "ModulatedConv",
    "StyleGAN2Config",
    "StyleGAN2Model",
    "auto_r1_gamma",
    "build",
    "check_image_shape",
    "ema_beta",
    "minibatch_stddev",
    "resolve_config",
    "update_ema",
]
