"""Model families by name: ``ddpm`` and ``stylegan2`` → their packages, builders and presets.

A family package offers ``build(config: dict | None, data: DataInfo, *, preset: str = 'quick') ->
GenerativeModel``, ``resolve_config(config, preset)`` (validates overrides without data) and
``PRESETS: dict[str, dict]``. A new family is one folder ``memscan/models/NAME/`` with those three names
and one line in :data:`FAMILIES`. Packages are imported lazily, so a family whose package is missing (or
fails to import) gives a clear ``InputError`` only when it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from memscan.core.validate import did_you_mean
from memscan.errors import InputError
from memscan.models.base import DataInfo, GenerativeModel

#: family name → package implementing it
FAMILIES: dict[str, str] = {
    "ddpm": "memscan.models.ddpm",
    "stylegan2": "memscan.models.stylegan2",
}


def family_module(family: str) -> ModuleType:
    """The package of ``family``.

    Raises:
        InputError: unknown family (nearest name suggested) or a family whose package is not available.
    """
    if family not in FAMILIES:
        hint = did_you_mean(family, FAMILIES)
        raise InputError(f"unknown model family {family!r}{hint}; families: {', '.join(FAMILIES)}")
    name = FAMILIES[family]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise InputError(f"model family {family!r} is not available in this memscan build") from None
        raise InputError(
            f"model family {family!r} needs the package {exc.name!r}, which is not installed"
        ) from None


def get_builder(family: str) -> Callable[..., GenerativeModel]:
    """``build(config, data, *, preset)`` of ``family``."""
    module = family_module(family)
    builder = getattr(module, "build", None)
    if builder is None:
        raise InputError(f"model family {family!r} has no build() function")
    return builder


def presets(family: str) -> dict[str, dict[str, Any]]:
    """The named presets of ``family``."""
    return dict(getattr(family_module(family), "PRESETS", {}))


def preset_names(family: str) -> list[str]:
    """Preset names of ``family`` in their defined order, e.g. ``["study", "quick", "quick3d", "tiny"]``."""
    return list(presets(family))


def all_preset_names() -> dict[str, list[str]]:
    """``{family: preset names}`` for every family (for the CLI's ``train --preset`` help)."""
    return {family: preset_names(family) for family in FAMILIES}


def check_preset(family: str, preset: str) -> None:
    """Raise InputError for a preset ``family`` does not have (nearest name suggested)."""
    names = presets(family)
    if names and preset not in names:
        raise InputError(
            f"unknown {family} preset {preset!r}{did_you_mean(preset, names)}; presets: {', '.join(names)}"
        )


def check_config(family: str, config: dict[str, Any] | None, preset: str) -> None:
    """Raise InputError for an unknown preset, or config overrides ``family`` does not accept."""
    check_preset(family, preset)
    resolve = getattr(family_module(family), "resolve_config", None)
    if resolve is not None:
        resolve(config, preset)


def build_model(
    family: str, config: dict[str, Any] | None, data: DataInfo, *, preset: str = "quick"
) -> GenerativeModel:
    """Build a model of ``family`` for ``data`` (preset values overridden by ``config``)."""
    check_preset(family, preset)
    return get_builder(family)(config, data, preset=preset)
