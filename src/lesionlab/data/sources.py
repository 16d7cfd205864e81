"""Readers for the image layouts lesionlab accepts, each giving one common table.

Every reader returns a `Source`: a table with the columns
    id, label (0/1, absent for unlabelled data), patient_id, lesion_id, source_id, locator
plus any metadata columns, and an `ImageReader` that turns a locator into file bytes.

Layouts:
- manifest:  a CSV with `path,label` (+ optional id, patient_id, lesion_id, source_id, metadata)
- isic2024:  train-metadata.csv with train-image.hdf5 or train-image/image/*.jpg (SLICE-3D)
- isic2024-permissive: the ISIC Archive's "ISIC 2024 Permissive Training" release, as downloaded:
             PREFIX_Input/ (JPEG crops), PREFIX_GroundTruth.csv (isic_id,malignant) and
             PREFIX_Supplement.csv (attribution, license, lesion_id, diagnoses), joined on isic_id
- isic-csv:  the ISIC 2019 / 2020 ground-truth CSV beside a JPEG folder
- folders:   benign/ and malignant/ sub-folders of images
- images:    one image file or a folder of images, unlabelled (for predict)
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..choices import FORMATS
from ..errors import BadInputError, preview, shown
from ..fileio import csv_restore
from .images import IMAGE_SUFFIXES, read_bytes

GROUP_COLUMNS = ("patient_id", "lesion_id")
BASE_COLUMNS = ("id", "label", "patient_id", "lesion_id", "source_id", "locator")

_TRUE_LABELS = {"1", "1.0", "malignant", "true"}
_FALSE_LABELS = {"0", "0.0", "benign", "false"}

# ISIC 2024 columns whose values are text; every other column but the ids is numeric.
# Explicit dtypes because many columns are mostly empty and pandas guesses wrong on them.
ISIC2024_TEXT_COLUMNS = {
    "isic_id", "patient_id", "sex", "anatom_site_general", "image_type", "tbp_tile_type",
    "tbp_lv_location", "tbp_lv_location_simple", "attribution", "copyright_license", "lesion_id",
    "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index",
}
ISIC2024_COLUMNS = (
    "isic_id target patient_id age_approx sex anatom_site_general clin_size_long_diam_mm image_type "
    "tbp_tile_type tbp_lv_A tbp_lv_Aext tbp_lv_B tbp_lv_Bext tbp_lv_C tbp_lv_Cext tbp_lv_H tbp_lv_Hext "
    "tbp_lv_L tbp_lv_Lext tbp_lv_areaMM2 tbp_lv_area_perim_ratio tbp_lv_color_std_mean tbp_lv_deltaA "
    "tbp_lv_deltaB tbp_lv_deltaL tbp_lv_deltaLB tbp_lv_deltaLBnorm tbp_lv_eccentricity tbp_lv_location "
    "tbp_lv_location_simple tbp_lv_minorAxisMM tbp_lv_nevi_confidence tbp_lv_norm_border "
    "tbp_lv_norm_color tbp_lv_perimeterMM tbp_lv_radial_color_std_max tbp_lv_stdL tbp_lv_stdLExt "
    "tbp_lv_symm_2axis tbp_lv_symm_2axis_angle tbp_lv_x tbp_lv_y tbp_lv_z attribution "
    "copyright_license lesion_id iddx_full iddx_1 iddx_2 iddx_3 iddx_4 iddx_5 mel_mitotic_index "
    "mel_thick_mm tbp_lv_dnn_lesion_confidence"
).split()
# The ISIC Archive names the three downloads of a release by one prefix: PREFIX_Input/,
# PREFIX_GroundTruth.csv and PREFIX_Supplement.csv
PERMISSIVE_PREFIX = "ISIC_2024_Permissive_Training"
PERMISSIVE_PARTS = {
    "_Input": "the folder of ISIC_*.jpg crops",
    "_GroundTruth.csv": "isic_id,malignant",
    "_Supplement.csv": "isic_id, attribution, copyright_license, lesion_id, iddx_*, mel_*",
}
# an ISIC Archive image id: what a Kaggle submission names each test image by
ISIC_ID = re.compile(r"ISIC_\d+")
# ISIC 2019: these diagnoses are malignant, as ISIC 2024's `target`
ISIC2019_MALIGNANT = ("MEL", "BCC", "SCC")
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


class ImageReader:
    """Gives the bytes of one image by its locator; picklable, so worker processes can use it."""

    def read(self, locator: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def missing(self, locators: list[str]) -> list[str]:
        """Locators with no image behind them (cheap check before decoding)."""
        return []

    def where(self) -> str:
        """Where the images are looked for, for messages ('under FOLDER', 'in FILE.hdf5')."""
        return ""

    def fingerprint(self, locators: list[str]) -> str:
        raise NotImplementedError  # pragma: no cover

    def close(self) -> None:
        """Release open handles (before worker processes are started)."""


@dataclass
class FileReader(ImageReader):
    """Images as loose files; locators are paths relative to `root` (or absolute)."""

    root: str

    def path(self, locator: str) -> str:
        return os.path.join(self.root, locator)

    def read(self, locator: str) -> bytes:
        return read_bytes(self.path(locator))

    def missing(self, locators: list[str]) -> list[str]:
        return [loc for loc in locators if not os.path.isfile(self.path(loc))]

    def where(self) -> str:
        return f"under {self.root}"

    def fingerprint(self, locators: list[str]) -> str:
        h = hashlib.sha256()
        for loc in locators:
            try:
                st = os.stat(self.path(loc))
                h.update(f"{loc}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{loc}\0missing\n".encode())
        return h.hexdigest()


@dataclass
class HDF5Reader(ImageReader):
    """ISIC 2024's train-image.hdf5: one scalar bytes dataset per isic_id holding a JPEG file."""

    path: str
    _file: Any = field(default=None, repr=False, compare=False)  # the h5py.File, once opened

    def __getstate__(self):  # an open h5py file cannot cross a process boundary
        return {"path": self.path, "_file": None}

    def _open(self):
        if self._file is None:
            import h5py

            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise BadInputError(f"{self.path}: not a readable HDF5 file ({e})") from None
        return self._file

    def read(self, locator: str) -> bytes:
        f = self._open()
        if locator not in f:
            raise FileNotFoundError(f"{self.path} has no entry '{locator}'")
        value = f[locator][()]
        if isinstance(value, np.ndarray):  # some writers store uint8 arrays instead of bytes
            value = value.tobytes()
        return bytes(value)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def missing(self, locators: list[str]) -> list[str]:
        keys = set(self._open().keys())
        return [loc for loc in locators if loc not in keys]

    def where(self) -> str:
        return f"in {self.path}"

    def fingerprint(self, locators: list[str]) -> str:
        st = os.stat(self.path)
        return hashlib.sha256(f"{self.path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


@dataclass
class Source:
    format: str
    location: Path
    table: pd.DataFrame
    reader: ImageReader
    companions: tuple[Path, ...] = ()  # other files the table was read from (their bytes enter the fingerprint)

    @property
    def labelled(self) -> bool:
        return "label" in self.table.columns

    def fingerprint(self) -> str:
        """Changes when the table file, the rows or any image file change (images by size and
        mtime, not content). Hashes the CSV's bytes rather than the parsed table: cheaper in
        memory for 400k rows of metadata."""
        from ..fileio import sha256_file

        h = hashlib.sha256(self.format.encode())
        if self.location.is_file():
            h.update(sha256_file(self.location).encode())
        for path in self.companions:
            h.update(sha256_file(path).encode())
        core = [c for c in ("id", "label", "locator") if c in self.table]
        h.update(pd.util.hash_pandas_object(self.table[core].astype(str), index=False).values.tobytes())
        h.update(self.reader.fingerprint(self.table["locator"].tolist()).encode())
        return h.hexdigest()


# ---------------------------------------------------------------- helpers


def _read_csv(path: Path, dtype=str, usecols=None) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""], low_memory=False, usecols=usecols)
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise BadInputError(f"{path}: not a readable CSV file ({e})") from None
    except ValueError as e:  # a value that does not fit its column's declared type
        raise BadInputError(f"{path}: {e}") from None


def _csv_header(path: Path) -> list[str]:
    return list(_read_csv_limited(path, nrows=0).columns)


def _read_csv_limited(path: Path, nrows: int) -> pd.DataFrame:
    try:
        return pd.read_csv(path, nrows=nrows)
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise BadInputError(f"{path}: not a readable CSV file ({e})") from None


def _require_columns(df: pd.DataFrame, needed: tuple[str, ...], path: Path) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise BadInputError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )


def parse_labels(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """0/1, benign/malignant (any case) -> int8; anything else names its rows."""
    text = values.fillna("").astype(str).str.strip().str.lower()
    ok_true, ok_false = text.isin(_TRUE_LABELS), text.isin(_FALSE_LABELS)
    bad = ~(ok_true | ok_false)
    if bad.any():
        rows = [f"line {i + 2}: {shown(values.iloc[i])}" for i in np.flatnonzero(bad.to_numpy())]
        raise BadInputError(
            f"{path}: column '{column}' must be 0/1 or benign/malignant; "
            f"{int(bad.sum())} row(s) are not: {preview(rows)}"
        )
    return ok_true.to_numpy().astype(np.int8)


def _check_unique_ids(ids: pd.Series, path: Path) -> None:
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        lines = defaultdict(list)
        for i, v in dup.items():
            lines[v].append(i + 2)
        detail = [f"'{v}' (lines {', '.join(map(str, ls))})" for v, ls in lines.items()]
        raise BadInputError(f"{path}: {len(lines)} duplicate id(s): {preview(detail)}")


def _check_ids_present(ids: pd.Series, path: Path, column: str) -> None:
    empty = np.flatnonzero((ids.fillna("").astype(str).str.strip() == "").to_numpy())
    if len(empty):
        raise BadInputError(
            f"{path}: column '{column}' is empty on {len(empty)} row(s): "
            f"{preview([f'line {i + 2}' for i in empty])}"
        )


def _standard_table(df: pd.DataFrame, ids: pd.Series, labels: np.ndarray | None,
                    locators: pd.Series, path: Path, used: set[str]) -> pd.DataFrame:
    """Put the common columns first; keep every other column as metadata."""
    ids = ids.astype(str).str.strip()
    _check_ids_present(ids, path, "id")
    _check_unique_ids(ids.reset_index(drop=True), path)
    out = pd.DataFrame({"id": ids.to_numpy()})
    if labels is not None:
        out["label"] = labels
    for col in ("patient_id", "lesion_id", "source_id"):
        out[col] = df[col].fillna("").astype(str).str.strip().to_numpy() if col in df.columns else ""
    out["locator"] = locators.astype(str).to_numpy()
    for col in df.columns:
        if col not in used and col not in out.columns:
            out[col] = df[col].to_numpy()
    return out


def _images_under(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files)


def _stem_ids(files: list[Path], root: Path) -> list[str]:
    """File stems as ids; relative paths where stems repeat, so ids stay unique."""
    stems = [f.stem for f in files]
    counts = Counter(stems)
    return [s if counts[s] == 1 else str(f.relative_to(root).with_suffix("")) for s, f in zip(stems, files)]


# ---------------------------------------------------------------- readers


# the columns a reader needs when metadata is not wanted (predict over 400k rows)
_ESSENTIAL = {"path", "label", "id", "patient_id", "lesion_id", "source_id", "isic_id", "target"}


def _usecols(path: Path, metadata: bool):
    return None if metadata else [c for c in _csv_header(path) if c in _ESSENTIAL]


def read_manifest(path: Path, require_labels: bool = True, metadata: bool = True) -> Source:
    # a manifest lesionlab wrote (synth sample/import) has formula-like text neutralised for
    # spreadsheets ('=x); restored, its values are what they were ('abc, with no formula sign, stays)
    df = csv_restore(_read_csv(path, usecols=_usecols(path, metadata)))
    _require_columns(df, ("path", "label") if require_labels else ("path",), path)
    _check_ids_present(df["path"], path, "path")
    if "id" in df.columns:
        ids = df["id"]
    else:
        ids = df["path"].map(lambda p: Path(p).stem)
    labels = parse_labels(df["label"], path, "label") if "label" in df.columns else None
    table = _standard_table(df, ids, labels, df["path"], path, used={"id", "label"})
    return Source("manifest", path, table, FileReader(str(path.parent)))


def _isic2024_pair(source: Path) -> tuple[Path, Path]:
    """(metadata csv, hdf5 file or image folder) for an ISIC 2024 folder or metadata path."""
    if source.is_dir():
        csvs = [source / n for n in ("train-metadata.csv", "test-metadata.csv") if (source / n).exists()]
        if not csvs:
            raise BadInputError(f"{source}: no train-metadata.csv or test-metadata.csv (ISIC 2024 layout)")
        meta = csvs[0]
    else:
        meta = source
    prefix = meta.name.removesuffix("-metadata.csv")
    for images in (meta.parent / f"{prefix}-image.hdf5", meta.parent / f"{prefix}-image" / "image",
                   meta.parent / f"{prefix}-image"):
        if images.exists():
            return meta, images
    raise BadInputError(
        f"{meta}: found no images beside it; expected {prefix}-image.hdf5 or {prefix}-image/image/"
    )


def read_isic2024(source: Path, require_labels: bool = True, metadata: bool = True) -> Source:
    meta, images = _isic2024_pair(source)
    dtypes = {c: (str if c in ISIC2024_TEXT_COLUMNS or c not in ISIC2024_COLUMNS else "float64")
              for c in _csv_header(meta)}
    dtypes.pop("target", None)
    df = _read_csv(meta, dtype=dtypes, usecols=_usecols(meta, metadata))
    _require_columns(df, ("isic_id", "target") if require_labels else ("isic_id",), meta)
    labels = parse_labels(df["target"], meta, "target") if "target" in df.columns else None
    if images.suffix == ".hdf5":
        reader: ImageReader = HDF5Reader(str(images))
        locators = df["isic_id"].astype(str)
    else:
        reader = FileReader(str(images))
        locators = df["isic_id"].astype(str) + ".jpg"
    df = df.assign(source_id=df["isic_id"])
    table = _standard_table(df, df["isic_id"], labels, locators, meta, used={"isic_id", "target"})
    return Source("isic2024", meta, table, reader)


def _permissive_prefix(folder: Path) -> str | None:
    """The name prefix of an ISIC Archive release of the 2024 kind held (even in part) by `folder`: a
    PREFIX_GroundTruth.csv whose columns are isic_id and malignant (an ISIC 2019 ground truth has `image`
    and one-hot diagnoses), a PREFIX_Supplement.csv or an ISIC_2024_*_Input folder."""
    for p in sorted(folder.glob("*_GroundTruth.csv")):
        if {"isic_id", "malignant"} <= set(_csv_header(p)):
            return p.name.removesuffix("_GroundTruth.csv")
    for p in sorted(folder.glob("ISIC_2024_*_Supplement.csv")):
        return p.name.removesuffix("_Supplement.csv")
    for p in sorted(folder.glob("ISIC_2024_*_Input")):
        if p.is_dir():
            return p.name.removesuffix("_Input")
    return None


def _permissive_release(source: Path) -> tuple[Path, str]:
    """(release folder, prefix) for the release folder or its ground-truth CSV."""
    if source.is_file():
        if not source.name.endswith("_GroundTruth.csv"):
            raise BadInputError(f"{source}: expected the release's PREFIX_GroundTruth.csv beside PREFIX_Input/ and "
                                f"PREFIX_Supplement.csv (e.g. {PERMISSIVE_PREFIX}_GroundTruth.csv), or the folder holding them")
        return source.parent, source.name.removesuffix("_GroundTruth.csv")
    prefix = _permissive_prefix(source)
    if prefix is None:
        raise BadInputError(f"{source}: no ISIC 2024 permissive release here; expected "
                            + ", ".join(PERMISSIVE_PREFIX + part for part in PERMISSIVE_PARTS))
    return source, prefix


def _binary_labels(values: pd.Series, ids: pd.Series, path: Path, column: str) -> np.ndarray:
    """A 0/1 column the ISIC Archive writes as 1.0 / 0.0; anything else is named by id and line."""
    number = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    bad = np.flatnonzero(~number.isin([0.0, 1.0]).to_numpy())
    if len(bad):
        rows = [f"{ids.iloc[i]} (line {i + 2}: {values.iloc[i]!r})" for i in bad]
        raise BadInputError(f"{path}: column '{column}' must be 1.0 (malignant) or 0.0 (benign); {len(bad)} row(s) "
                            f"are not: {preview(rows)}")
    return (number.to_numpy() == 1.0).astype(np.int8)


def _images_by_id(folder: Path) -> dict[str, Path]:
    """Every image under `folder` by its file stem (an isic_id); two files of one stem are refused."""
    by_id: dict[str, list[Path]] = defaultdict(list)
    for p in _images_under(folder):
        by_id[p.stem].append(p)
    twice = [f"{i} ({', '.join(p.name for p in ps)})" for i, ps in by_id.items() if len(ps) > 1]
    if twice:
        raise BadInputError(f"{folder}: {len(twice)} id(s) have more than one image: {preview(twice)}")
    return {i: ps[0] for i, ps in by_id.items()}


def _require_same_ids(ids: pd.Series, other: pd.Series, truth: Path, other_path: Path) -> None:
    """The Supplement describes exactly the ground truth's images."""
    known, theirs = set(ids), set(other)
    foreign = [i for i in other if i not in known]
    if foreign:
        raise BadInputError(f"{other_path}: {len(foreign)} id(s) are not in {truth.name}: {preview(foreign)}")
    lacking = [i for i in ids if i not in theirs]
    if lacking:
        raise BadInputError(f"{other_path}: has no row for {len(lacking)} id(s) of {truth.name}: {preview(lacking)}")


def read_isic2024_permissive(source: Path, require_labels: bool = True, metadata: bool = True) -> Source:
    """The ISIC Archive's ISIC 2024 permissive release as downloaded (docs: isic2024-format.md).

    Rows follow the ground truth; the Supplement's columns become the metadata (lesion_id the group
    column). Ground-truth ids without an image are left to prepare/predict, which name them (and
    --skip-bad drops them); images without a ground-truth row, and a Supplement of other ids, are refused."""
    root, prefix = _permissive_release(source)
    parts = {part: root / (prefix + part) for part in PERMISSIVE_PARTS}
    absent = [f"{p.name}{'/' if part == '_Input' else ''} ({PERMISSIVE_PARTS[part]})" for part, p in parts.items()
              if not (p.is_dir() if part == "_Input" else p.is_file())]
    if absent:
        present = [p.name for p in parts.values() if p.exists()]
        raise BadInputError(f"{root}: the release is incomplete: {'; '.join(absent)} missing"
                            + (f" beside {', '.join(present)}" if present else "")
                            + "; download every part of the release from the ISIC Archive into this folder")
    truth, supplement, images = parts["_GroundTruth.csv"], parts["_Supplement.csv"], parts["_Input"]

    gt = _read_csv(truth)
    _require_columns(gt, ("isic_id", "malignant") if require_labels else ("isic_id",), truth)
    _check_ids_present(gt["isic_id"], truth, "isic_id")
    ids = gt["isic_id"].astype(str).str.strip()
    _check_unique_ids(ids, truth)
    labels = _binary_labels(gt["malignant"], ids, truth, "malignant") if "malignant" in gt.columns else None

    header = _csv_header(supplement)
    dtypes = {c: (str if c in ISIC2024_TEXT_COLUMNS or c not in ISIC2024_COLUMNS else "float64") for c in header}
    usecols = None if metadata else [c for c in header if c in ("isic_id", "lesion_id")]
    sup = _read_csv(supplement, dtype=dtypes, usecols=usecols)
    _require_columns(sup, ("isic_id",), supplement)
    _check_ids_present(sup["isic_id"], supplement, "isic_id")
    sup_ids = sup["isic_id"].astype(str).str.strip()
    _check_unique_ids(sup_ids, supplement)
    _require_same_ids(ids, sup_ids, truth, supplement)
    order = pd.Series(np.arange(len(sup)), index=sup_ids.to_numpy()).loc[ids.to_numpy()].to_numpy()
    df = sup.iloc[order].drop(columns=["isic_id"]).reset_index(drop=True).assign(source_id=ids.to_numpy())

    on_disk = _images_by_id(images)
    known = set(ids)
    unlisted = sorted(i for i in on_disk if i not in known)
    if unlisted:
        raise BadInputError(f"{images}: {len(unlisted)} image(s) have no row in {truth.name}: {preview(unlisted)}")
    locators = pd.Series([str(on_disk[i].relative_to(root)) if i in on_disk else f"{images.name}/{i}.jpg" for i in ids])
    table = _standard_table(df, ids, labels, locators, truth, used=set())
    return Source("isic2024-permissive", truth, table, FileReader(str(root)), companions=(supplement,))


def _find_isic_csv(source: Path) -> Path:
    if source.is_file():
        return source
    candidates = sorted(source.glob("*GroundTruth*.csv")) + sorted(source.glob("train*.csv"))
    if not candidates:
        raise BadInputError(
            f"{source}: no ground-truth CSV (ISIC 2019 *GroundTruth*.csv or ISIC 2020 train.csv)"
        )
    return candidates[0]


def _locate_images(ids: list[str], root: Path, csv: Path) -> list[str]:
    """Find each id's image under root; where an id appears in several folders (a full-size
    and a resized copy), take the folder that holds most of the ids."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for p in _images_under(root):
        by_stem[p.stem].append(p)
    folder_hits = Counter(p.parent for i in ids for p in by_stem.get(i, []))
    out, missing = [], []
    for i in ids:
        paths = by_stem.get(i)
        if not paths:
            missing.append(i)
            out.append(f"{i}.jpg")
            continue
        best = max(paths, key=lambda p: folder_hits[p.parent])
        out.append(str(best.relative_to(root)))
    if len(missing) == len(ids):
        raise BadInputError(f"{csv}: none of its {len(ids)} images were found under {root}")
    return out  # the few missing ones are reported by prepare like any unreadable image


def read_isic_csv(source: Path, require_labels: bool = True) -> Source:
    csv = _find_isic_csv(source)
    df = _read_csv(csv)
    if "image_name" in df.columns:  # ISIC 2020
        ids = df["image_name"]
        labels = parse_labels(df["target"], csv, "target") if "target" in df.columns else None
        if labels is None and require_labels:
            _require_columns(df, ("target",), csv)
        used = {"image_name", "target"}
    elif "image" in df.columns:  # ISIC 2019
        present = [c for c in ISIC2019_MALIGNANT if c in df.columns]
        if require_labels and len(present) < len(ISIC2019_MALIGNANT):
            _require_columns(df, ISIC2019_MALIGNANT, csv)
        labels = None
        if present:
            onehot = df[present].apply(pd.to_numeric, errors="coerce")
            bad = onehot.isna().any(axis=1).to_numpy()
            if bad.any():
                rows = [f"line {i + 2}" for i in np.flatnonzero(bad)]
                raise BadInputError(f"{csv}: columns {', '.join(present)} must be numbers: {preview(rows)}")
            labels = (onehot.to_numpy() > 0.5).any(axis=1).astype(np.int8)
        ids = df["image"]
        metadata = sorted(csv.parent.glob("*Metadata*.csv"))
        if metadata:  # lesion_id (the grouping key) lives in the metadata file
            extra = _read_csv(metadata[0])
            if "image" in extra.columns:
                extra = extra.drop(columns=[c for c in extra.columns if c in df.columns and c != "image"])
                df = df.merge(extra, on="image", how="left")
        used = {"image"}
    else:
        hint = ("; its isic_id,malignant columns are the ISIC 2024 permissive release's "
                "(--format isic2024-permissive, or auto)" if {"isic_id", "malignant"} <= set(df.columns) else "")
        raise BadInputError(
            f"{csv}: not an ISIC 2019/2020 ground-truth file (expected a column 'image' or 'image_name'){hint}"
        )
    root = csv.parent if source.is_file() else source
    locators = pd.Series(_locate_images(ids.astype(str).tolist(), root, csv))
    df = df.assign(source_id=ids)
    table = _standard_table(df, ids, labels, locators, csv, used=used)
    return Source("isic-csv", csv, table, FileReader(str(root)))


def read_folders(source: Path) -> Source:
    subdirs = {p.name.lower(): p for p in source.iterdir() if p.is_dir()}
    if "benign" not in subdirs or "malignant" not in subdirs:
        raise BadInputError(f"{source}: expected sub-folders benign/ and malignant/, found "
                            f"{', '.join(sorted(subdirs)) or 'none'}")
    files, labels = [], []
    for name, label in (("benign", 0), ("malignant", 1)):
        found = _images_under(subdirs[name])
        files += found
        labels += [label] * len(found)
    if not files:
        raise BadInputError(f"{source}: benign/ and malignant/ hold no images ({', '.join(IMAGE_SUFFIXES)})")
    ids = _stem_ids(files, source)
    df = pd.DataFrame({"path": [str(f.relative_to(source)) for f in files]})
    table = _standard_table(df, pd.Series(ids), np.array(labels, np.int8), df["path"], source, used=set())
    return Source("folders", source, table, FileReader(str(source)))


def read_images(source: Path) -> Source:
    """An image file or a folder of images, no labels (what `predict` takes)."""
    if source.is_file():
        files, root = [source], source.parent
    else:
        files, root = _images_under(source), source
        if not files:
            raise BadInputError(f"{source}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    ids = _stem_ids(files, root)
    df = pd.DataFrame({"path": [str(f.relative_to(root)) for f in files]})
    table = _standard_table(df, pd.Series(ids), None, df["path"], source, used=set())
    return Source("images", source, table, FileReader(str(root)))


def detect_format(source: Path) -> str:
    if not source.exists():
        raise BadInputError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() in IMAGE_SUFFIXES:
            return "images"
        if source.suffix.lower() != ".csv":
            raise BadInputError(f"{source}: expected a CSV file, an image or a folder")
        cols = set(_csv_header(source))
        if "path" in cols:
            return "manifest"
        if {"isic_id", "malignant"} <= cols and "target" not in cols:
            return "isic2024-permissive"
        if "isic_id" in cols:
            return "isic2024"
        if cols & {"image", "image_name"}:
            return "isic-csv"
        raise BadInputError(
            f"{source}: cannot tell the layout from its columns ({', '.join(sorted(cols))}); "
            "expected 'path' (manifest), 'isic_id' (ISIC 2024), 'isic_id,malignant' (the ISIC 2024 permissive "
            "release's ground truth) or 'image'/'image_name' (ISIC 2019/2020)"
        )
    if (source / "train-metadata.csv").exists() or (source / "test-metadata.csv").exists():
        return "isic2024"
    if (source / "manifest.csv").exists():
        return "manifest"
    names = {p.name.lower() for p in source.iterdir() if p.is_dir()}
    if {"benign", "malignant"} <= names:
        return "folders"
    # before isic-csv: that layout's *GroundTruth*.csv would also match the release's ground truth
    if _permissive_prefix(source) is not None:
        return "isic2024-permissive"
    if list(source.glob("*GroundTruth*.csv")) or (source / "train.csv").exists():
        return "isic-csv"
    return "images"


def read_source(source: str | os.PathLike, fmt: str = "auto", require_labels: bool = True,
                metadata: bool = True) -> Source:
    """Read any supported layout into a Source; `fmt='auto'` guesses from the files.
    metadata=False keeps only ids, labels, groups and image locations (less memory)."""
    source = Path(source)
    if fmt not in FORMATS:
        raise BadInputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if not source.exists():
        raise BadInputError(f"{source}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "manifest":
        path = source / "manifest.csv" if source.is_dir() else source
        src = read_manifest(path, require_labels, metadata)
    elif fmt == "isic2024":
        src = read_isic2024(source, require_labels, metadata)
    elif fmt == "isic2024-permissive":
        src = read_isic2024_permissive(source, require_labels, metadata)
    elif fmt == "isic-csv":
        src = read_isic_csv(source, require_labels)
    elif fmt == "folders":
        src = read_folders(source)
    else:
        src = read_images(source)
    if require_labels and not src.labelled:
        raise BadInputError(f"{src.location}: has no labels; prepare needs labelled data")
    if src.table.empty:
        raise BadInputError(f"{src.location}: holds no rows")
    return src
