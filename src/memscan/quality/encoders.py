"""Offline feature extractors for the quality metrics: a user's TorchScript file, or any ``Encoder``.

memscan never downloads weights. Two kinds of encoder feed the metrics:

- ``--encoder FILE``: a TorchScript file (``torch.jit.save`` of a scripted or traced network, e.g. an
  ImageNet or RadImageNet network the user has locally), loaded with ``torch.jit.load(map_location="cpu")``;
  or its successor, a ``torch.export.save`` archive (``torch.export.load``), told apart by their zip entries.
  A torchvision-style *state dict* is not loadable: it holds weights without the network's code, and
  torchvision cannot be installed beside this torch. Convert it once where torchvision exists
  (``torch.jit.trace(model.eval(), example).save("encoder.pt")``).
- the self-supervised encoder trained on the training set (``memscan.embed``), or any object with the
  same interface (:class:`Encoder`): ``features(items [N, C, *S] float) -> [N, D]`` and ``description``.

Input convention of :class:`TorchScriptEncoder`: intensities mapped to [0, 1] by one linear map taken
from the training set (``scale``), resized (bilinear, antialiased) to ``size x size``, grey-scale items
repeated to 3 channels when the network takes 3; any normalisation the network expects (e.g. ImageNet
mean/std) belongs inside the TorchScript file. Outputs of any shape are flattened to ``[N, D]``.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from memscan.core.fingerprint import file_digest
from memscan.errors import InputError

log = logging.getLogger(__name__)


@runtime_checkable
class Encoder(Protocol):
    """What the quality metrics need from an encoder."""

    description: dict[str, Any]

    def features(self, items: np.ndarray) -> np.ndarray:
        """Items ``[N, C, *S]`` (float, already mapped to about [0, 1]) → features float ``[N, D]``."""
        ...


def network_format(path: Path) -> str:
    """``"torchscript"`` (``torch.jit.save``) or ``"torch.export"`` (``torch.export.save``, a ``.pt2``
    archive), from the file's zip entries; anything else is refused with the reason.

    Raises:
        InputError: not a zip archive of either kind; a state dict (``torch.save`` of weights) is named.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "torch.export"
    if any("/code/" in n for n in names) and any(n.endswith("data.pkl") for n in names):
        return "torchscript"
    what = "a state dict or pickled weights (no network code)" if names else "not a torch archive"
    raise InputError(
        f"is {what}; memscan needs a TorchScript file: torch.jit.trace(model.eval(), example).save(FILE) "
        "(or torch.export.save(torch.export.export(model, (example,)), FILE))",
        path,
    )


class TorchScriptEncoder:
    """A user's TorchScript (or ``torch.export``) network as an :class:`Encoder` (2D items ``[N, C, H, W]``).

    An exported program is specialised to the example's shape: give ``size`` = its side; when it only takes
    one item at a time, batches fall back to one item.

    Args:
        path: the TorchScript file (``torch.jit.save``), or a ``torch.export.save`` archive.
        size: side the items are resized to before the network (``None``: keep their size).
        in_channels: channels the network takes; ``None`` probes it: the items' own channel count, else 1,
            else 3. When it differs from the items' count, each channel is encoded alone as a grey-scale
            image (repeated to ``in_channels``) and the features are concatenated (``[N, C * d]``).
        batch: items per forward pass.
        device: torch device.

    Raises:
        InputError: the file is missing or is not a TorchScript archive (e.g. a state dict).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        size: int | None = 224,
        in_channels: int | None = None,
        batch: int = 64,
        device: str = "cpu",
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("encoder file does not exist", self.path)
        self.format = network_format(self.path)
        try:
            with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; the files still load
                warnings.simplefilter("ignore", DeprecationWarning)
                if self.format == "torch.export":
                    self.net = torch.export.load(str(self.path)).module()
                else:
                    self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as exc:  # torch raises RuntimeError / ValueError / zip errors for bad archives
            raise InputError(
                f"cannot load the encoder ({self.format}): {str(exc).splitlines()[0][:120]}", self.path
            ) from None
        self.net.to(device)
        self.size = size
        self.in_channels = in_channels
        self.batch = int(batch)
        self.device = device
        self.output_dim: int | None = None
        self.per_channel: bool | None = None
        self._digest = file_digest(self.path, length=64)

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": self.format,
            "file": self.path.name,
            "sha256": self._digest,
            "input_size": self.size,
            "input_channels": self.in_channels,
            "output_dim": self.output_dim,
            "per_channel": self.per_channel,
            "preprocessing": "intensities linearly to [0, 1] (training-set range), bilinear resize;"
            " items whose channel count the network does not take: each channel alone as grey-scale"
            " (repeated to the network's channels), features concatenated",
        }

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        return x

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = self.net(x.to(self.device))
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.reshape(len(x), -1).float().cpu()

    def _embed(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """``x [n, C, H, W]`` → ``[n, D]``: whole items when the network takes C channels, else each channel
        as a grey-scale image (repeated to ``channels``) and the per-channel features concatenated."""
        x = self._resize(x)
        if x.shape[1] == channels:
            return self._forward(x)
        return torch.cat(
            [self._forward(x[:, c : c + 1].repeat(1, channels, 1, 1)) for c in range(x.shape[1])], 1
        )

    def _probe(self, items: np.ndarray) -> None:
        x = torch.from_numpy(np.asarray(items[:1], dtype=np.float32))
        tried = [self.in_channels] if self.in_channels is not None else [x.shape[1], 1, 3]
        errors = []
        for c in dict.fromkeys(tried):
            try:
                y = self._embed(x, c)
            except Exception as exc:
                errors.append(f"{c} channels: {str(exc).splitlines()[-1][:100]}")
                continue
            self.in_channels, self.output_dim = c, int(y.shape[1])
            self.per_channel = c != x.shape[1]
            if self.batch > 1 and len(items) > 1:
                try:
                    self._embed(torch.from_numpy(np.asarray(items[:2], dtype=np.float32)), c)
                except Exception:  # e.g. an exported program specialised to batch 1
                    log.info("the encoder takes one item at a time; batches of 1")
                    self.batch = 1
            return
        raise InputError(f"the encoder does not accept these items ({'; '.join(errors)})", self.path)

    def features(self, items: np.ndarray) -> np.ndarray:
        """Items ``[N, C, H, W]`` (float, about [0, 1]) → features float64 ``[N, D]``."""
        if items.ndim != 4:
            raise InputError(
                f"a TorchScript encoder takes 2D items [N, C, H, W], got shape {tuple(items.shape)}",
                self.path,
            )
        if self.output_dim is None:
            self._probe(items)
        assert self.in_channels is not None
        out = []
        for lo in range(0, len(items), self.batch):
            x = torch.from_numpy(np.asarray(items[lo : lo + self.batch], dtype=np.float32))
            out.append(self._embed(x, self.in_channels))
        return torch.cat(out).double().numpy()


def intensity_scale(items: np.ndarray, dtype: np.dtype | None = None) -> tuple[float, float]:
    """``(lo, hi)`` of the linear map to [0, 1]: ``(0, 255)`` for 8-bit data (the display range every 8-bit
    recipe writes), else the min and max of ``items`` (a sample of the training set): 16-bit MR/CT data
    rarely use their type's full range. Constant data gives ``(lo, lo + 1)``."""
    dtype = np.dtype(dtype if dtype is not None else items.dtype)
    if dtype == np.uint8:
        return 0.0, 255.0
    lo, hi = float(np.min(items)), float(np.max(items))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def encode(encoder: Encoder, items: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Features ``[N, D]`` (float64) of ``items [N, C, *S]`` after the linear map ``scale`` → [0, 1]."""
    lo, hi = scale
    x = (np.asarray(items, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    f = np.asarray(encoder.features(x), dtype=np.float64)
    if f.ndim != 2 or len(f) != len(items):
        raise InputError(f"the encoder returned shape {f.shape} for {len(items)} items; expected [N, D]")
    if not np.isfinite(f).all():
        raise InputError("the encoder returned NaN or infinite features")
    return f
