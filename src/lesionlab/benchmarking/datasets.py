"""The data sets every quality benchmark runs on (`--dataset`), each with the protocol's counts it allows,
prepared once and split as the protocol says; docs/results.md has a section per data set.

- ham10000: 8,787 dermoscopic images (CC BY-NC 4.0), val and test 50:1000 grouped by lesion, training
  draws of 293 malignant images (the notebook's).
- isic2024-permissive: 8,234 real ISIC 2024 (SLICE-3D) crops of the ISIC Archive's permissive release, 235
  malignant: val and test 30:1000 each, grouped by lesion where it is filled (every crop its own group
  otherwise; the release has no patient ids), training draws of every malignant crop left in the train pool
  (175; in a 5-fold cv, the 110 a fold keeps after its inner 30:1000 validation part).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data.sources import read_source
from ..data.splits import load_split, make_split, save_split, split_path
from ..data.store import Store, prepare
from ..fileio import write_text
from .results import ROOT


@dataclass(frozen=True)
class Dataset:
    key: str
    title: str                 # as the results name it
    folder: str                # under ../shared/data
    store: str                 # prepared data sets are STORE{size} in the benchmark's work folder
    val: tuple[int, int]
    test: tuple[int, int]
    n_malignant: int | str     # malignant images of every training draw ("all": every one the pool holds)
    draw: str                  # the training draw, in words
    groups: str                # what the split and the intervals group by, in words
    metadata: str              # the metadata columns `tabular --features auto` takes, in words

    @property
    def sentence(self) -> str:
        """The title at the start of a sentence."""
        return self.title[:1].upper() + self.title[1:]

    @property
    def source(self) -> Path:
        return ROOT.parent / "shared" / "data" / self.folder

    def work(self, work: Path) -> Path:
        """The benchmark's folder for this data set (HAM10000 keeps the one earlier results were made in)."""
        return work if self.key == "ham10000" else work / self.key

    def section(self, name: str) -> str:
        """docs/results.md's section of benchmark `name` on this data set."""
        return name if self.key == "ham10000" else f"{name}-{self.key}"

    def split_text(self) -> str:
        return (f"val {self.val[0]}:{self.val[1]} and test {self.test[0]}:{self.test[1]} (malignant:benign), grouped by "
                f"{self.groups}, split seed 0")


DATASETS = {
    "ham10000": Dataset("ham10000", "HAM10000", "ham10000", "ham", (50, 1000), (50, 1000), 293,
                        "293 malignant images (the notebook's)", "lesion", "age, sex, localization"),
    "isic2024-permissive": Dataset(
        "isic2024-permissive", "the ISIC 2024 permissive release (real SLICE-3D crops)", "isic2024-permissive", "isicp",
        (30, 1000), (30, 1000), "all",
        "every malignant crop of the train pool (175; in a cv fold, the 110 left beside its inner 30:1000 validation "
        "part)", "lesion where `lesion_id` is filled, else each crop alone (no patient ids in the release)",
        "attribution, copyright_license (the release's only columns that are neither label-derived nor train-only)"),
}


def add_dataset_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--dataset", default="ham10000", choices=list(DATASETS),
                    help="ham10000 (val/test 50:1000, draws of 293 malignant) or isic2024-permissive (real ISIC 2024 "
                         "crops: val/test 30:1000, draws of every malignant crop of the train pool, 175)")


def _ham_same_images(data: Path, source: Path) -> bool:
    """Whether a store prepared earlier holds exactly the manifest's images, byte for byte. ../shared is
    copied afresh onto each machine, which changes the files' times and so the fingerprint that prepare
    compares; the md5 of every file, kept in the store's table from the manifest, says whether the bytes did."""
    if not (data / "store.json").exists() or not (data / "rows.csv").exists():
        return False
    rows = pd.read_csv(data / "rows.csv", dtype=str, keep_default_na=False)
    if not {"md5", "locator"} <= set(rows) or len(rows) != len(pd.read_csv(source / "manifest.csv", usecols=["path"])):
        return False
    return all(hashlib.md5((source / p).read_bytes()).hexdigest() == m for p, m in zip(rows["locator"], rows["md5"]))


def _content_digest(source: Path) -> str:
    """SHA-256 over the release's CSV files and every image's bytes (34 MB here: well under a second)."""
    h = hashlib.sha256()
    for p in sorted(p for p in source.rglob("*") if p.is_file() and p.name != "SOURCE.md"):
        h.update(str(p.relative_to(source)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def prepared(work: Path, dataset: Dataset, size: int = 128) -> Path:
    """The data set prepared at `size` px in `work`, with the protocol's split (split seed 0)."""
    source = dataset.source
    if not source.exists():
        sys.exit(f"{source}: the {dataset.key} data set is not there")
    data = work / f"{dataset.store}{size}"
    if dataset.key == "ham10000":
        if not _ham_same_images(data, source):
            prepare(read_source(source), data, size=size)
    else:
        # the store records the files' times, which a fresh copy of ../shared changes: a digest of the bytes,
        # kept beside the store, says whether a store made earlier holds these images
        digest_file = data.parent / f"{data.name}.source-sha256"
        digest = _content_digest(source)
        if not (data / "store.json").exists() or not digest_file.exists() or digest_file.read_text().strip() != digest:
            prepare(read_source(source), data, size=size)
            write_text(digest_file, digest + "\n")
    store = Store.open(data)
    save_split(make_split(store, dataset.val, dataset.test, seed=0), split_path(data))
    return data


def pool_counts(data: Path) -> tuple[int, int]:
    """(malignant, benign) images of the split's train pool."""
    store = Store.open(data)
    labels = store.table["label"].to_numpy()[load_split(store).positions(store.table, "train")]
    return int(labels.sum()), int((labels == 0).sum())
