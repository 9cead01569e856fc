"""Shared test data: a phantom BraTS cohort with a held-out split and a planted-copy synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest

from memscan import phantoms
from memscan.dataset.planted import plant_copies
from memscan.dataset.store import Dataset
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset


def write_planted_cohort(
    root: Path,
    *,
    subjects: int,
    shape: tuple[int, int, int],
    size: int,
    n_copies: int,
    n_novel: int,
    seed: int,
    tree_seed: int = 0,
) -> Path:
    """``root/raw`` (phantom BraTS tree), ``root/ds`` (study recipe, one held-out subject: ``ds/train``,
    ``ds/test``) and ``root/syn`` (planted copies of training slices + novel held-out slices)."""
    phantoms.write_brats_tree(root / "raw", subjects, seed=tree_seed, shape=shape)
    prepare_dataset(root / "raw", root / "ds", PrepareOptions(layout="brats", size=size, test_subjects=1))
    train, test = Dataset.open(root / "ds" / "train"), Dataset.open(root / "ds" / "test")
    plant_copies(train, test, root / "syn", n_copies=n_copies, n_novel=n_novel, seed=seed)
    return root


@pytest.fixture(scope="session")
def planted_cohort():
    """The factory :func:`write_planted_cohort`, for module-scoped fixtures."""
    return write_planted_cohort
