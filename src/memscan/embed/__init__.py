"""Self-supervised image encoder trained on the training set itself (shared by --robust and --quality)."""

from memscan.embed.augment import AugmentConfig, augment
from memscan.embed.train import EncoderConfig, TrainedEncoder, embed, load_encoder, train_encoder

__all__ = [
    "AugmentConfig",
    "EncoderConfig",
    "TrainedEncoder",
    "augment",
    "embed",
    "load_encoder",
    "train_encoder",
]
