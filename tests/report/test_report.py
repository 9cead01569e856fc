"""The HTML report of a scan run: sections, figures, pagination, exports, missing data, escaping."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from memscan.dataset.store import Dataset, DatasetWriter
from memscan.preprocess.prepare import PrepareOptions, prepare_dataset
from memscan.report import figures
from memscan.report.html import select_gallery, write_report
from memscan.scanning import runfolder
from memscan.scanning.options import ScanOptions
from memscan.scanning.runfolder import load_run
from memscan.scanning.scanner import scan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("verdict", "numbers", "histogram", "gallery", "subjects", "how-to-read", "provenance")


class Page(HTMLParser):
    """Collects ids, image sources, links and text of an HTML page."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())

    @property
    def pairs(self) -> list[str]:
        return [s for s in self.imgs if s.startswith("figures/pairs/")]


@pytest.fixture(scope="module")
def base(tmp_path_factory, planted_cohort) -> dict[str, Path]:
    """3 phantom subjects (2 train, 1 test) of 32x32 slices; planted copies + novel items; one scan."""
    root = planted_cohort(
        tmp_path_factory.mktemp("report"),
        subjects=3,
        shape=(32, 32, 16),
        size=32,
        n_copies=6,
        n_novel=4,
        seed=1,
    )
    scan(
        root / "ds" / "train",
        root / "syn",
        root / "run",
        ScanOptions(flips=True, max_shift=3, device="cpu", threshold=0.97),
        command="memscan scan ...",
    )
    return {"root": root, "run": root / "run", "train": root / "ds" / "train", "syn": root / "syn"}


@pytest.fixture
def run(base, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base["run"], out)
    return out


def _pages(run: Path) -> list[Path]:
    return sorted(run.glob("gallery-*.html"), key=lambda p: int(p.stem.split("-")[1]))


def test_report_sections_figures_and_exports(run):
    out = write_report(run)
    assert out == run / "report.html"
    page = Page(out)
    assert set(SECTIONS) <= page.ids
    s = json.loads((run / "summary.json").read_text())
    text = page.plain
    assert f"{s['n_flagged']} of {s['n_synthetic']} synthetic images" in text
    assert f"of {s['subjects_total']} training subjects" in text
    assert "FIXED AND NOT CALIBRATED" in text
    assert "memscan scan ..." in text and "numpy" in text and "torch" in text and "python" in text
    assert "figures/histogram.png" in page.imgs
    assert page.pairs, "gallery is empty"
    for src in page.imgs:
        data = (run / src).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, src
    # gallery shows flagged items and, in the free slots, the closest unflagged ones
    assert "flagged" in text and "not flagged" in text
    # no external assets, no scripts
    html = out.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    for name, table in (("synthetic", "synthetic"), ("matches", "matches"), ("subjects", "subjects")):
        csv = pd.read_csv(run / f"{name}.csv")
        assert len(csv) == len(pd.read_parquet(run / f"{table}.parquet")), name
        assert f"{name}.csv" in page.links
    assert not (run / "holdout.csv").exists()
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


def test_gallery_order_and_mix(base):
    df = load_run(base["run"]).synthetic
    chosen = select_gallery(df, 7)
    n_flagged = int(df["flagged"].sum())
    assert 0 < n_flagged < 7
    assert chosen["flagged"].tolist() == [True] * n_flagged + [False] * (7 - n_flagged)
    flagged = chosen[chosen["flagged"]]["max_correlation"].to_numpy()
    assert np.all(np.diff(flagged) <= 0)
    rest = chosen[~chosen["flagged"]]["max_correlation"].to_numpy()
    assert np.all(np.diff(rest) <= 0)
    assert len(select_gallery(df, 2)) == 2 and select_gallery(df, 2)["flagged"].all()


def test_alignment_reproduces_the_scans_correlation(base):
    """Undoing each match's transform gives back exactly the scan's correlation (the scan's convention)."""
    res = load_run(base["run"])
    train, syn = Dataset.open(base["train"]), Dataset.open(base["syn"])
    tpos = {v: i for i, v in enumerate(train.ids)}
    spos = {v: i for i, v in enumerate(syn.ids)}
    seen = set()
    for row in res.synthetic.itertuples():
        t = train.take([tpos[row.nearest_train_id]])[0]
        s = syn.take([spos[row.synthetic_id]])[0]
        aligned, valid = figures.align_to_train(s, row.transform, 2)
        assert figures.pearson(aligned, t, valid) == pytest.approx(row.max_correlation, abs=1e-9)
        parsed = figures.parse_transform(row.transform)
        seen.add((parsed.orientation == "flip", parsed.shifted))
    assert (True, False) in seen or (True, True) in seen  # at least one flip was undone


def test_parse_transform():
    def parsed(label):
        t = figures.parse_transform(label)
        return t.orientation, t.dy, t.dx, list(t.unknown)

    assert parsed("none") == ("none", 0, 0, [])
    assert parsed(None) == ("none", 0, 0, [])
    assert parsed("flip") == ("flip", 0, 0, [])
    assert parsed("shift(+2,-1)") == ("none", 2, -1, [])
    assert parsed("flip+shift(+1,+0)") == ("flip", 1, 0, [])
    assert parsed("rot90+shift(-1,+2)") == ("rot90", -1, 2, [])
    assert parsed("flip+warp") == ("flip", 0, 0, ["warp"])


def test_pagination_and_stale_pages(run):
    write_report(run, max_gallery=5, per_page=2)
    pages = _pages(run)
    assert [p.name for p in pages] == ["gallery-2.html", "gallery-3.html"]
    first = Page(run / "report.html")
    assert len(first.pairs) == 2 and "gallery-2.html" in first.links and "gallery-3.html" in first.links
    second, third = Page(pages[0]), Page(pages[1])
    assert len(second.pairs) == 2 and len(third.pairs) == 1
    assert "report.html#gallery" in second.links and "gallery-3.html" in second.links
    assert "gallery-2.html" in third.links and "report.html" in third.links
    shown = first.pairs + second.pairs + third.pairs
    assert len(set(shown)) == 5 and len(list((run / "figures" / "pairs").glob("*.png"))) == 5
    for src in shown:
        assert (run / src).read_bytes().startswith(PNG_MAGIC)
    # a smaller gallery removes the pages and figures it no longer needs
    write_report(run, max_gallery=3, per_page=12)
    assert _pages(run) == []
    assert len(list((run / "figures" / "pairs").glob("*.png"))) == 3
    assert "gallery-2.html" not in Page(run / "report.html").links


def test_missing_datasets_still_writes_a_report(run):
    s = json.loads((run / "summary.json").read_text())
    s["train"], s["synthetic"] = "/nonexistent/train", "gone/synthetic"
    (run / "summary.json").write_text(json.dumps(s))
    page = Page(write_report(run))
    assert "Images are not shown" in page.plain and "/nonexistent/train" in page.plain
    assert page.pairs == [] and "figures/histogram.png" in page.imgs
    assert (run / "synthetic.csv").exists()


def _rewrite(run, name, df):
    """Replace one table of a run as memscan writes it (with the run's id)."""
    runfolder.write_table(df, runfolder.table_path(run, name), load_run(run).run_id)


def test_ids_are_escaped(run):
    df = pd.read_parquet(run / "synthetic.parquet")
    df["synthetic_id"] = df["synthetic_id"].astype(object)
    df.loc[df["max_correlation"].idxmax(), "synthetic_id"] = "<script>alert('x')</script>&<b>"
    _rewrite(run, "synthetic", df)
    sub = pd.read_parquet(run / "subjects.parquet")
    sub["subject"] = sub["subject"].astype(object)
    sub.loc[0, "subject"] = "<img src=x onerror=alert(1)>"
    _rewrite(run, "subjects", sub)
    html = write_report(run).read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&lt;b&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "not in the dataset any more" in html  # that id has no item in the synthetic dataset


def test_regeneration_is_idempotent(run):
    write_report(run, per_page=3)
    first = {
        p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "parquet" not in p.name
    }
    write_report(run, per_page=3)
    second = {
        p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and "parquet" not in p.name
    }
    assert first.keys() == second.keys()
    for rel in first:
        if rel.suffix in (".html", ".csv"):
            assert first[rel] == second[rel], rel
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or ".old" in p.name]


def test_calibrated_run_with_holdout_and_baseline(run, base):
    rng = np.random.default_rng(0)
    synth = pd.read_parquet(run / "synthetic.parquet")
    hold = pd.DataFrame(
        {
            "holdout_id": [f"test_{i}" for i in range(40)],
            "max_correlation": rng.uniform(0.80, 0.93, 40),
            "nearest_train_id": synth["nearest_train_id"].iloc[0],
            "nearest_subject": synth["nearest_subject"].iloc[0],
            "transform": "none",
        }
    )
    _rewrite(run, "holdout", hold)
    items = pd.read_parquet(run / "train_items.parquet")
    baseline = pd.DataFrame(
        {
            "train_id": items["train_id"],
            "subject": items["subject"],
            "nn_correlation_any": rng.uniform(0.97, 0.995, len(items)),
            "nn_id_any": items["train_id"],
            "nn_correlation_other_subject": rng.uniform(0.7, 0.9, len(items)),
            "nn_id_other_subject": items["train_id"],
        }
    )
    _rewrite(run, "baseline", baseline)
    synth["p_value"] = pd.array(
        [(1 + (hold["max_correlation"] >= v).sum()) / 41 for v in synth["max_correlation"]], dtype="Float64"
    )
    _rewrite(run, "synthetic", synth)
    s = json.loads((run / "summary.json").read_text())
    s.update(
        n_holdout=40,
        threshold_source="holdout",
        threshold=0.93,
        holdout="/data/holdout",
        calibration={
            "method": "fdr",
            "alpha": 0.05,
            "p_threshold": 0.0244,
            "null_quantiles": {"q50": 0.86, "q90": 0.92, "q95": 0.925, "q99": 0.929, "max": 0.93},
        },
    )
    (run / "summary.json").write_text(json.dumps(s))
    page = Page(write_report(run))
    text = page.plain
    assert "calibrated on 40 held-out real images" in text and "FIXED AND NOT CALIBRATED" not in text
    assert "false discovery rate" in text and "p-value 0.0244" in text
    assert len(pd.read_csv(run / "holdout.csv")) == 40 and "holdout.csv" in page.links
    assert (run / "baseline.csv").exists()


def test_volumes_and_channel_option(tmp_path, base):
    """3D items: the middle axial slice is shown, neighbour panels say why they are empty."""
    vol = prepare_dataset(
        base["root"] / "raw",
        tmp_path / "vol",
        PrepareOptions(layout="brats", volumes=True, size=32, modalities=("t1", "flair")),
    )
    items = vol.take([0, 1])
    with DatasetWriter(
        tmp_path / "vsyn",
        item_shape=vol.item_shape,
        dtype=str(vol.dtype),
        channels=vol.channels,
        recipe={"name": "test"},
    ) as w:
        w.add(items[0], {"id": "v0", "subject": "s"})
        w.add(np.ascontiguousarray(items[1][:, ::-1]), {"id": "v1-flipped", "subject": "s"})
        w.commit()
    scan(
        tmp_path / "vol",
        tmp_path / "vsyn",
        tmp_path / "vrun",
        ScanOptions(flips=True, device="cpu", channel="flair", top_k=1),
    )
    page = Page(write_report(tmp_path / "vrun"))
    assert len(page.pairs) == 2
    assert "channel 'flair'" in page.plain and "middle axial slice" in page.plain
    for src in page.pairs:
        assert (tmp_path / "vrun" / src).read_bytes().startswith(PNG_MAGIC)


def test_calibrated_run_without_any_significant_image(run):
    s = json.loads((run / "summary.json").read_text())
    s.update(
        n_holdout=11,
        threshold_source="holdout",
        threshold=None,
        calibration={
            "method": "fdr",
            "alpha": 0.05,
            "p_threshold": 0.0,
            "threshold": None,
            "min_p_value": 1 / 12,
            "note": "with 11 held-out images the smallest possible p-value is 0.0833",
        },
    )
    (run / "summary.json").write_text(json.dumps(s))
    text = Page(write_report(run)).plain
    assert "no synthetic image is significant" in text and "smallest possible p-value is 0.0833" in text
    assert "FIXED AND NOT CALIBRATED" not in text and "r > n/a" not in text
