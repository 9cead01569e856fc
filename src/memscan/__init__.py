"""memscan: find memorized copies of training images among synthetic medical images."""

from __future__ import annotations

__version__ = "0.1.0"
