"""The models package's layout: one family per folder, registry names, options checked before any write."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from model_helpers import write_items

import memscan.models
from memscan.errors import InputError
from memscan.models.registry import FAMILIES, all_preset_names, family_module, preset_names
from memscan.models.train import train_model

MODELS = Path(memscan.models.__file__).parent


def test_every_family_is_a_package_with_build_resolve_config_and_presets():
    for family, package in FAMILIES.items():
        module = family_module(family)
        assert module.__name__ == package
        assert Path(module.__file__).name == "__init__.py", f"{family} is not a folder"
        assert callable(module.build) and callable(module.resolve_config) and module.PRESETS


def test_preset_names_list_both_families_in_their_defined_order():
    names = all_preset_names()
    assert list(names) == ["ddpm", "stylegan2"]
    assert names["ddpm"] == preset_names("ddpm") == ["study", "quick", "quick3d", "tiny"]
    assert names["stylegan2"] == ["study", "quick", "quick3d", "tiny"]
    with pytest.raises(InputError, match="did you mean 'stylegan2'"):
        preset_names("stylegan")


def _defined(name: str) -> list[str]:
    """Modules of memscan/models that define a top-level function or class ``name``."""
    hits = []
    for path in MODELS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
                hits.append(str(path.relative_to(MODELS)))
    return hits


@pytest.mark.parametrize(
    "name",
    ["update_ema", "EMA", "randn", "_randn", "resolve_device", "speed_settings", "write_grid", "load_model"],
)
def test_each_helper_is_defined_once(name):
    assert len(_defined(name)) <= 1, _defined(name)


def test_no_module_imports_difflib_hashlib_or_uuid():
    """ "Did you mean", hashing and temporary names come from memscan.core."""
    for path in MODELS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not {"difflib", "hashlib", "uuid"} & set(names), path


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"batch": 0},
        {"log_every": 0},
        {"preset": "quik"},
        {"device": "gpu"},
        {"keep_checkpoints": 0},
    ],
)
def test_options_are_checked_before_the_folder_is_written(tmp_path, kwargs):
    import numpy as np

    data = write_items(tmp_path / "ds", np.zeros((4, 1, 8, 8), dtype=np.uint8) + 7)
    out = tmp_path / "model"
    with pytest.raises(InputError):
        train_model(data, out, "ddpm", **{"preset": "tiny", **kwargs})
    assert not out.exists()
