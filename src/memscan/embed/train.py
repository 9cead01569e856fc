"""Train the self-supervised encoder on the training set itself, cache it, embed items with it.

Method: SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", arXiv 2002.05709): two random perturbations (:mod:`memscan.embed.augment`) of each
image in a batch are embedded, and the NT-Xent loss pulls the pair together against the other 2B - 2
views. Nothing is downloaded: the encoder learns only from the training set it will be asked about.

Reproducibility: the views of step ``s`` are drawn from a ``torch.Generator`` seeded with
``(seed, s)`` and the batch's items from NumPy's generator seeded the same way, so the run is a
function of the seed; a run resumed from its last checkpoint (weights *and* Adam state, safetensors)
continues bit for bit as the uninterrupted run would on the same machine and thread count.

Cache: ``cache_dir/encoder-<key>/`` holds ``model.safetensors`` and ``config.json``; the key is
:func:`memscan.core.fingerprint.fingerprint` of the training set's identity (``dataset.json``, the item
ids and a digest of the first and last items) and the config, so a different training set or config can
never reuse a cached encoder. ``checkpoint.safetensors`` beside them holds the resumable state.

Multi-channel items: all channels are input channels of the first convolution (the study's items are
T1, T2, T1ce, FLAIR and the segmentation; a copy copies all of them).

Shapes: items ``[N, C, H, W]`` (any real dtype) → embeddings ``[N, D]`` float32, L2-normalised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from memscan.core.atomic import remove_stale_temporaries, write_json, write_with
from memscan.core.fingerprint import fingerprint
from memscan.core.progress import progress
from memscan.core.validate import check_float, check_int
from memscan.dataset.store import Dataset
from memscan.embed.augment import AugmentConfig, augment
from memscan.embed.network import Encoder, NetworkConfig
from memscan.errors import InputError

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass(frozen=True)
class EncoderConfig:
    """How the encoder is trained (saved as ``config.json`` beside the weights).

    Attributes:
        input_size: items are resized to ``input_size`` x ``input_size`` before the network.
        width: network width (see :class:`~memscan.embed.network.NetworkConfig`).
        steps: optimiser steps; batch: images per step (2 · batch views).
        lr: Adam learning rate (cosine decay to 0); temperature: NT-Xent temperature.
        seed: seed of everything random in training.
        checkpoint_every: steps between resumable checkpoints.
        augment: the perturbations (:class:`~memscan.embed.augment.AugmentConfig`).
    """

    input_size: int = 48
    width: int = 16
    steps: int = 300
    batch: int = 64
    lr: float = 2e-3
    temperature: float = 0.2
    seed: int = 0
    checkpoint_every: int = 50
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_int(self.input_size, "input_size", minimum=16)
        check_int(self.width, "width", minimum=8)
        check_int(self.steps, "steps", minimum=1)
        check_int(self.batch, "batch", minimum=2)
        check_float(self.lr, "lr", low=0.0, open_low=True)
        check_float(self.temperature, "temperature", low=0.0, open_low=True)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.checkpoint_every, "checkpoint_every", minimum=1)
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        d = dict(d)
        aug = dict(d.pop("augment", {}))
        for k in ("scale_range", "gamma_range", "contrast_range"):
            if k in aug:
                aug[k] = tuple(aug[k])
        return cls(augment=AugmentConfig(**aug), **d)


@dataclass
class TrainedEncoder:
    """A trained encoder ready to embed items.

    Attributes:
        network: the module (eval mode, CPU or the device it was moved to).
        config: how it was trained.
        in_channels: channels an item must have.
        description: what it is (method, data, config, key, training time), for reports and ``quality.json``.
        path: its cache folder.
    """

    network: Encoder
    config: EncoderConfig
    in_channels: int
    description: dict[str, Any]
    path: Path | None = None

    @property
    def dim(self) -> int:
        return self.network.dim


def scale_items(items: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Items ``[N, C, H, W]`` → float32 in [0, 1]: per item and channel, ``(x - min(x, 0)) / max``.

    Background stays 0 (it is 0 in prepared MRI and x-ray items), and a global intensity factor is
    removed, so contrast changes start from the same range. An all-zero channel stays 0.
    """
    x = torch.as_tensor(np.asarray(items) if not isinstance(items, torch.Tensor) else items).float()
    if x.ndim != 4:
        raise InputError(f"the encoder takes 2D items [N, C, H, W]; got shape {tuple(x.shape)}")
    lo = x.amin(dim=(2, 3), keepdim=True).clamp_max(0.0)
    x = x - lo
    hi = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > 0, x / hi.clamp_min(1e-12), torch.zeros_like(x))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per item and channel: zero mean, unit variance (a constant channel becomes 0)."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sd = x.std(dim=(2, 3), keepdim=True)
    return (x - mu) / sd.clamp_min(1e-6)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of SimCLR for ``B`` positive pairs ``z1[i] ↔ z2[i]`` (``[B, D]`` each)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def dataset_identity(ds: Dataset) -> str:
    """Fingerprint of a dataset's identity: ``dataset.json``, its ids, a digest of first and last items."""
    h = hashlib.sha256()
    if ds.n_items:
        h.update(np.ascontiguousarray(ds.read(0, 1)).tobytes())
        h.update(np.ascontiguousarray(ds.read(ds.n_items - 1, ds.n_items)).tobytes())
    return fingerprint(ds.info, str(ds.path.name), [str(i) for i in ds.ids], h.hexdigest())


def encoder_key(ds: Dataset, config: EncoderConfig) -> str:
    """The cache key of the encoder trained on ``ds`` with ``config``."""
    return fingerprint("memscan-encoder-v2", dataset_identity(ds), config.to_dict())


def _flatten_state(net: Encoder, opt: torch.optim.Optimizer, step: int) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    for pi, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            state[f"opt.{pi}.{k}"] = torch.as_tensor(v).clone().contiguous()
    state["step"] = torch.tensor(step, dtype=torch.int64)
    return state


def _restore_state(path: Path, net: Encoder, opt: torch.optim.Optimizer) -> int:
    state = load_file(str(path))
    net.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    osd = opt.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k.startswith("opt."):
            _, pi, name = k.split(".", 2)
            per_param.setdefault(int(pi), {})[name] = v
    osd["state"] = per_param
    opt.load_state_dict(osd)
    return int(state["step"])


def _batch_items(data: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items drawn from ``data`` (without replacement when there are enough), in stored order."""
    pos = np.sort(rng.choice(len(data), size=min(n, len(data)), replace=len(data) < n))
    return data[pos]


def _load_resized(ds: Dataset, size: int, block: int = 512) -> np.ndarray:
    """All items scaled and resized to the encoder's input size, ``[N, C, S, S]`` float16 (in [0, 1],
    rounding 2^-11 at most: far below the augmentations' noise; 20,000 items of 5 x 48² take 0.5 GB)."""
    out = np.empty((ds.n_items, ds.item_shape[0], size, size), dtype=np.float16)
    for start, items in ds.iter_blocks(block):
        out[start : start + len(items)] = _resize(scale_items(items), size).numpy()
    return out


def train_encoder(
    dataset: Dataset, cache_dir: str | Path, config: EncoderConfig | None = None
) -> TrainedEncoder:
    """Train (or load from the cache) the encoder of ``dataset``; resumes an interrupted training.

    Args:
        dataset: the training set (2D items ``[C, H, W]``).
        cache_dir: folder of cached encoders (created when missing).
        config: how to train; default :class:`EncoderConfig`.

    Returns:
        The trained encoder (CPU, eval mode).
    """
    config = config or EncoderConfig()
    if dataset.spatial_dims != 2:
        raise InputError("the robust encoder is 2D; this dataset holds 3D items", dataset.path)
    if dataset.n_items < 2:
        raise InputError("needs at least 2 training items to train the encoder", dataset.path)
    key = encoder_key(dataset, config)
    folder = Path(cache_dir) / f"encoder-{key}"
    c = int(dataset.item_shape[0])
    if (folder / MODEL_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        return load_encoder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE, CHECKPOINT_FILE):
        remove_stale_temporaries(folder, name)

    torch.manual_seed(config.seed)  # initial weights
    net = Encoder(NetworkConfig(in_channels=c, width=config.width))
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    step = 0
    if (folder / CHECKPOINT_FILE).is_file():
        step = _restore_state(folder / CHECKPOINT_FILE, net, opt)
        logger.info("resuming encoder training at step %d of %d", step, config.steps)
    t0 = time.perf_counter()
    data = _load_resized(dataset, config.input_size)
    net.train()
    with progress(config.steps, "encoder") as advance:
        advance(step)
        while step < config.steps:
            for group in opt.param_groups:  # cosine decay, a function of the step alone
                group["lr"] = config.lr * 0.5 * (1.0 + np.cos(np.pi * step / config.steps))
            rng = np.random.default_rng([config.seed, step])
            g = torch.Generator().manual_seed(int(rng.integers(2**62)))
            x = torch.from_numpy(_batch_items(data, config.batch, rng)).float()
            v1 = _standardise(augment(x, config.augment, g))
            v2 = _standardise(augment(x, config.augment, g))
            loss = nt_xent(net.project(v1), net.project(v2), config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            advance(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                state = _flatten_state(net, opt, step)
                write_with(folder / CHECKPOINT_FILE, lambda p, s=state: save_file(s, str(p)))
                logger.debug("encoder step %d loss %.4f", step, float(loss.detach()))
    seconds = time.perf_counter() - t0
    net.eval()
    weights = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {
        "key": key,
        "config": config.to_dict(),
        "in_channels": c,
        "train_items": int(dataset.n_items),
        "item_shape": list(dataset.item_shape),
        "dataset": str(dataset.path),
        "train_seconds": round(seconds, 3),
        "final_loss": float(loss.detach()) if config.steps else None,
    }
    write_with(folder / MODEL_FILE, lambda p: save_file(weights, str(p)))
    write_json(folder / CONFIG_FILE, meta)
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    return load_encoder(folder)


def load_encoder(folder: str | Path) -> TrainedEncoder:
    """Load a cached encoder folder (``model.safetensors`` + ``config.json``)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        config = EncoderConfig.from_dict(meta["config"])
        net = Encoder(NetworkConfig(in_channels=int(meta["in_channels"]), width=config.width))
        net.load_state_dict(load_file(str(folder / MODEL_FILE)))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"cannot load the cached encoder: {exc}", folder) from None
    net.eval()
    description = {
        "name": "memscan-simclr",
        "method": "SimCLR / NT-Xent (Chen et al. 2020) trained on the training set itself; no downloads",
        "input": f"all {meta['in_channels']} channels, resized to {config.input_size}x{config.input_size}, "
        "scaled per item and channel",
        "dim": net.dim,
        **{
            k: meta[k]
            for k in ("key", "train_items", "item_shape", "train_seconds", "final_loss")
            if k in meta
        },
        "config": meta["config"],
    }
    return TrainedEncoder(net, config, int(meta["in_channels"]), description, folder)


@torch.no_grad()
def embed(encoder: TrainedEncoder, items: np.ndarray | torch.Tensor, *, batch: int = 256) -> np.ndarray:
    """Embed items ``[N, C, H, W]`` → ``[N, D]`` float32, each row L2-normalised.

    An item is embedded the same way whatever batch it is in (GroupNorm, eval mode). A constant item
    embeds to the network's response to a zero input, normalised (it is still a vector of norm 1).
    """
    x = items if isinstance(items, torch.Tensor) else torch.from_numpy(np.asarray(items))
    if x.ndim != 4 or x.shape[1] != encoder.in_channels:
        raise InputError(
            f"the encoder takes items [N, {encoder.in_channels}, H, W]; got shape {tuple(x.shape)}"
        )
    out = np.empty((x.shape[0], encoder.dim), dtype=np.float32)
    for s in range(0, x.shape[0], batch):
        v = _standardise(_resize(scale_items(x[s : s + batch]), encoder.config.input_size))
        out[s : s + batch] = F.normalize(encoder.network(v), dim=1).numpy()
    return out
