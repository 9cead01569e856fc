"""The Python API (``memscan.api`` via lazy ``memscan.*``): signatures, documented keywords, calibrated scans
from Python, parameter names in errors, and the layering of the packages this API sits on."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memscan
from memscan import api
from memscan.dataset.store import DatasetWriter
from memscan.errors import InputError

SRC = Path(__file__).resolve().parents[2] / "src"
API = [
    "prepare",
    "open_dataset",
    "train",
    "sample",
    "load_model",
    "scan",
    "write_report",
    "load_run",
    "run_study",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (20, 1, 12, 12), dtype=np.uint8)
    sets = {
        "train": [(f"t{i}", f"s{i % 4}", train[i]) for i in range(20)],
        "hold": [
            (f"h{i}", f"h{i % 2}", rng.integers(0, 256, (1, 12, 12), dtype=np.uint8)) for i in range(10)
        ],
        "syn": [(f"c{i}", "m", train[i]) for i in range(3)]
        + [(f"n{i}", "m", rng.integers(0, 256, (1, 12, 12), dtype=np.uint8)) for i in range(5)],
    }
    for name, rows in sets.items():
        with DatasetWriter(root / name, (1, 12, 12), "uint8", ("g",), recipe={"name": "t"}) as w:
            for sid, subj, item in rows:
                w.add(item, {"id": sid, "subject": subj})
            w.commit()
    return root


def test_every_function_is_exported_lazily_with_keyword_only_documented_options():
    for name in API:
        fn = getattr(memscan, name)
        assert fn is getattr(api, name) and name in memscan.__all__
        params = inspect.signature(fn).parameters.values()
        doc = inspect.getdoc(fn) or ""
        for p in params:
            assert f"{p.name}:" in doc, f"{name}: keyword {p.name} is not documented"
            assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), f"{name}: *args/**kwargs"
        options = [p for p in params if p.default is not p.empty]
        assert all(p.kind is p.KEYWORD_ONLY for p in options if p.name != "family"), name


def test_import_memscan_loads_no_torch():
    code = "import sys, memscan; memscan.__version__; print('torch' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_scan_with_holdout_calibrates_and_writes_no_report(data, tmp_path):
    res = memscan.scan(
        data / "train",
        data / "syn",
        tmp_path / "run",
        holdout=data / "hold",
        report=False,
        top_k=2,
        baseline_items=0,
        alpha=0.3,
    )
    s = res.summary
    assert s.threshold_source == "holdout" and s["n_holdout"] == 10 and s.calibration["method"] == "fdr"
    assert res.synthetic["p_value"].notna().all() and res.holdout is not None
    assert not (tmp_path / "run" / "report.html").exists()
    assert memscan.load_run(tmp_path / "run").run_id == res.run_id
    path = memscan.write_report(tmp_path / "run")
    assert path == tmp_path / "run" / "report.html" and path.exists()


def test_scan_with_report_and_a_gate(data, tmp_path):
    res = memscan.scan(
        data / "train",
        data / "syn",
        tmp_path / "run",
        report=True,
        top_k=1,
        baseline_items=0,
        fail_above=0.1,
        memory_budget="512MiB",
    )
    assert (tmp_path / "run" / "report.html").exists()
    assert res.gate_failed and "fail_above" in res.gate_failed  # returned, not raised


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(precision="int4"), "precision must be one of"),
        (dict(alpha=0.0), "alpha must be > 0"),
        (dict(max_shift=-1), "max_shift must be >= 0"),
        (dict(device="tpu"), "device must be auto"),
        (dict(memory_budget="lots"), "as a size"),
    ],
)
def test_library_errors_name_python_parameters(data, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        memscan.scan(data / "train", data / "syn", tmp_path / "run", **kwargs)
    assert "--" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_run_study_rejects_source_with_a_config_object():
    with pytest.raises(TypeError):
        api.run_study(object(), "x", source="y")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- layering

#: Layer order, top first (common brief): a module may import only from layers below its own.
LAYERS = [
    ("memscan.cli",),
    ("memscan.api",),
    ("memscan.demo", "memscan.study"),
    ("memscan.report",),
    ("memscan.scanning",),
    ("memscan.quality", "memscan.robust"),
    ("memscan.audit",),
    ("memscan.search",),
    ("memscan.embed",),
    ("memscan.models",),
    ("memscan.preprocess",),
    ("memscan.phantoms", "memscan.dataset"),
    ("memscan.io",),
    ("memscan.core",),
    ("memscan.errors",),
]
#: The packages this work owns (others' are checked by the import-linter contract).
CHECKED = (
    "memscan.cli",
    "memscan.api",
    "memscan.demo",
    "memscan.report",
    "memscan.scanning",
    "memscan.audit",
    "memscan.search.features",
    "memscan.search.transforms",
)


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):  # imports inside functions count too
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in out if m.startswith("memscan")]


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for path in sorted((SRC / "memscan").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        if not module.startswith(CHECKED):
            continue
        own = _layer(module)
        for imported in _imports(path):
            other = _layer(imported)
            if other is not None and own is not None and other < own:
                bad.append(f"{module} imports {imported}")
    assert not bad, bad


def test_the_layer_check_can_fail(tmp_path):
    """The check above sees a violation when there is one (imports inside functions too)."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from memscan.report.html import write_report\n")
    assert "memscan.report.html" in _imports(bad) and _layer("memscan.report.html") < _layer(
        "memscan.scanning.x"
    )
