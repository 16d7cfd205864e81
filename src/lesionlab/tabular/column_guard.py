"""Which metadata columns may be features: everything that is not an id, a path, a group key or
derived from the label.

Label-derived columns of the layouts lesionlab knows are refused by name; any other column that
equals the label is refused by content; and any column that alone ranks the training images almost
perfectly (single-column AUC > MAX_SINGLE_AUC) stops the run unless the user allows it by name.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import BadInputError, LeakError, closest, preview
from ..metrics import roc_auc

MAX_SINGLE_AUC = 0.98

# columns of the common table that are never features, and why
STRUCTURAL = {
    "id": "an image id", "source_id": "an image id", "isic_id": "an image id", "image": "an image id",
    "image_name": "an image id", "md5": "a file checksum (an image id)",
    "path": "a file path", "locator": "a file path", "index": "a row index of the prepared images",
    "patient_id": "a group key",
    # ISIC 2024 (and its permissive release) fills it for every malignant crop and for about 8% of benign ones
    "lesion_id": "a group key, and in ISIC 2024 derived from the label: it is filled for every malignant (biopsied) "
                 "crop and few benign ones, so even its presence gives the label away (splits may still group by it)",
    "label": "the label", "target": "the label",
    "synthetic": "marks synthetic images",
}

# (name or fnmatch pattern, why it is derived from the label); all layouts' lists apply everywhere,
# so a HAM-style column in any manifest is refused too
LABEL_DERIVED: tuple[tuple[str, str], ...] = (
    # ISIC 2024 (docs: isic2024-format.md); its lesion_id is a group key above
    ("iddx_*", "ISIC 2024: the diagnosis"),
    ("mel_*", "ISIC 2024: melanoma measurements, recorded for melanomas only"),
    # not shown to leak on the stand-in (its values are random there); refused because the challenge's
    # test-metadata.csv does not have it: a model using it cannot score real test rows
    ("tbp_lv_dnn_lesion_confidence", "ISIC 2024: a train-only column, absent from the challenge's test metadata"),
    # HAM10000 manifests (../shared/data/ham10000/SOURCE.md)
    ("dx", "HAM10000: the diagnosis"),
    ("dx_type", "HAM10000: how the diagnosis was confirmed (histopathology for malignant lesions, "
                "follow-up for nevi)"),
    ("isic2019_dx", "the ISIC 2019 diagnosis"),
    ("melanoma", "1 where the diagnosis is melanoma"),
    ("label_*", "another labelling of the diagnosis"),
    # ISIC 2019 ground truth (one-hot diagnoses) and ISIC 2020 train.csv
    ("MEL", "ISIC 2019: a diagnosis column"), ("NV", "ISIC 2019: a diagnosis column"),
    ("BCC", "ISIC 2019: a diagnosis column"), ("AK", "ISIC 2019: a diagnosis column"),
    ("BKL", "ISIC 2019: a diagnosis column"), ("DF", "ISIC 2019: a diagnosis column"),
    ("VASC", "ISIC 2019: a diagnosis column"), ("SCC", "ISIC 2019: a diagnosis column"),
    ("UNK", "ISIC 2019: a diagnosis column"),
    ("diagnosis", "ISIC 2020: the diagnosis"), ("benign_malignant", "ISIC 2020: the label as text"),
)


def label_derived_reason(column: str) -> str | None:
    for pattern, why in LABEL_DERIVED:
        if fnmatch.fnmatchcase(column, pattern):
            return why
    return None


@dataclass
class Selection:
    columns: list[str]                                   # metadata columns used as features, in table order
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    single_auc: dict[str, float] = field(default_factory=dict)
    allowed: list[str] = field(default_factory=list)     # columns kept by --allow-column despite their AUC


def _present(values: pd.Series) -> pd.Series:
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        return values.notna() & (values.astype(str).str.strip() != "")
    return values.notna()


def _equals_label(values: pd.Series, y: np.ndarray) -> bool:
    """The column is the label under another name: each value occurs with one label only, and each
    label with one value only (missing counts as a value)."""
    key = values.astype(str).where(_present(values), "<missing>").to_numpy()
    frame = pd.DataFrame({"v": key, "y": y})
    return bool(frame.groupby("v")["y"].nunique().max() == 1 and frame.groupby("y")["v"].nunique().max() == 1)


def single_column_auc(values: pd.Series, y: np.ndarray, kind: str) -> float:
    """How well one column alone ranks the labels, in either direction (0.5 .. 1).

    Numeric: the values with missing ones ranked lowest (a column recorded only for one class
    shows up). Categorical: each category's malignant share in the same rows (in-sample, so an
    upper bound)."""
    y = np.asarray(y)
    if not 0 < y.sum() < len(y):
        return float("nan")
    if kind == "numeric":
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        lowest = np.nanmin(x) - 1 if np.isfinite(x).any() else 0.0
        score = np.where(np.isfinite(x), x, lowest)
    else:
        key = values.astype(str).where(_present(values), "<missing>")
        score = pd.Series(y, dtype=np.float64).groupby(key.to_numpy()).transform("mean").to_numpy()
    auc = roc_auc(y, score)
    return float(max(auc, 1 - auc))


def select_columns(table: pd.DataFrame, y: np.ndarray, kinds: dict[str, str], requested: list[str] | None,
                   allow: list[str] | tuple[str, ...] = ()) -> Selection:
    """The metadata columns of `table` (the train pool, labels `y`) that may be features.

    requested=None is `--features auto`: unsuitable columns are dropped with their reason (and an
    error lists them when none is left). A requested column that is label-derived or structural
    is refused with an error."""
    allow = list(allow)
    unknown_allowed = [c for c in allow if c not in table.columns]
    if unknown_allowed:
        raise BadInputError(f"--allow-column: no column {', '.join(unknown_allowed)} in the data set"
                            f"{closest(unknown_allowed[0], table.columns)}")
    dropped: dict[str, str] = {}
    if requested is not None:
        missing = [c for c in requested if c not in table.columns]
        if missing:
            raise BadInputError(f"--features: no column {', '.join(missing)} in the data set"
                                f"{closest(missing[0], table.columns)}; it has {', '.join(table.columns)}")
        for c in requested:
            if c in STRUCTURAL:
                raise BadInputError(f"--features {c}: {STRUCTURAL[c]}, never a feature")
            why = label_derived_reason(c)
            if why:
                raise LeakError(f"--features {c}: refused, it is derived from the label ({why})")
            if c in table.columns and not _present(table[c]).any():
                raise BadInputError(f"--features {c}: the column is empty in the train pool")
            if _equals_label(table[c], y):
                raise LeakError(f"--features {c}: refused, its values are the label under another name")
        candidates = list(dict.fromkeys(requested))
    else:
        candidates = []
        n = len(table)
        for c in table.columns:
            if c in STRUCTURAL:
                dropped[c] = STRUCTURAL[c]
                continue
            why = label_derived_reason(c)
            if why:
                dropped[c] = f"label-derived ({why})"
                continue
            present = _present(table[c])
            if not present.any():
                dropped[c] = "empty"
                continue
            values = table.loc[present.to_numpy(), c].astype(str)
            uniq = values.nunique()
            if uniq == 1 and present.all():
                dropped[c] = "constant"
                continue
            if kinds.get(c) == "categorical" and n >= 20 and uniq >= 0.9 * present.sum():
                dropped[c] = f"identifier-like ({uniq} distinct values in {int(present.sum())} rows)"
                continue
            if _equals_label(table[c], y):
                dropped[c] = "equal to the label"
                continue
            candidates.append(c)
        if not candidates:
            raise BadInputError("no usable metadata column: " + "; ".join(f"{c}: {r}" for c, r in dropped.items())
                                + ". Give a data set with metadata columns (age, sex, site, ...)")
    aucs = {c: single_column_auc(table[c], y, kinds[c]) for c in candidates}
    too_good = [c for c in candidates if aucs[c] > MAX_SINGLE_AUC and c not in allow]
    if too_good:
        detail = [f"{c} (AUC {aucs[c]:.3f})" for c in too_good]
        raise LeakError(f"column(s) that alone rank the training images almost perfectly (single-column AUC > "
                        f"{MAX_SINGLE_AUC}): {preview(detail)}; such a column is usually derived from the label. "
                        f"If it is a legitimate input, pass --allow-column {too_good[0]} (recorded in the run)")
    return Selection(candidates, dropped, {c: round(v, 4) for c, v in aucs.items()},
                     [c for c in allow if c in candidates])
