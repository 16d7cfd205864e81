"""Fixed validation and test sets, stratified by counts and grouped so that no patient,
lesion or image falls on two sides.

A split is saved as DATA_DIR/split.json (or split-NAME.json) and recorded by every run by its
hash. Images of a group chosen for val/test that are beyond the requested counts are set
aside as `excluded`: they can join neither the train pool (their group is elsewhere) nor
the evaluation sets (the counts are fixed).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..choices import GROUP_CHOICES
from ..errors import BadInputError, ExistsError, LeakError, NotEnoughDataError, preview
from ..fileio import write_text
from .sources import GROUP_COLUMNS
from .store import Store

SIDES = ("val", "test")
SIDE_NAMES = {"val": "validation", "test": "test"}


def parse_counts(text: str, name: str) -> tuple[int, int]:
    """'50:1000' -> (50 malignant, 1000 benign)."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not m:
        raise BadInputError(f"--{name} must be MALIGNANT:BENIGN image counts such as 50:1000, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def require_both_classes(side: str, n_malignant: int, n_benign: int, where: str, fix: str) -> None:
    """A validation or test set needs malignant and benign images: the threshold is chosen on
    validation, and ROC AUC, AP, pAUC80 and F1 all compare the two classes; without one of them a
    run would train to the end and then fail."""
    if n_malignant < 1 or n_benign < 1:
        raise BadInputError(f"{where}: the {SIDE_NAMES[side]} set has {n_malignant} malignant and {n_benign} benign "
                             f"image(s); expected at least 1 of each; {fix}")


def check_evaluable(split: "Split", table: pd.DataFrame) -> None:
    """Refuse a saved split whose validation or test set lacks a class (made by hand or by an
    older lesionlab), before a run starts."""
    labels = table["label"].to_numpy()
    for side in SIDES:
        pos = split.positions(table, side)
        require_both_classes(side, int((labels[pos] == 1).sum()), int((labels[pos] == 0).sum()), str(split.path),
                             f"make a new split with `lesionlab split {split.path.parent} --val M:B --test M:B`")


def split_path(data_dir: Path, name: str = "") -> Path:
    return Path(data_dir) / (f"split-{name}.json" if name else "split.json")


def split_name(file_name: str) -> str:
    """The inverse of split_path: the split name a run recorded by its split file's name."""
    return "" if file_name == "split.json" else file_name.removeprefix("split-").removesuffix(".json")


def group_keys(table: pd.DataFrame, group: str) -> tuple[np.ndarray, str]:
    """One key per row; rows with an empty group value stand alone (keyed by their id)."""
    if group not in GROUP_CHOICES:
        raise BadInputError(f"--group must be one of {', '.join(GROUP_CHOICES)}, got '{group}'")
    if group == "auto":
        group = next((c for c in GROUP_COLUMNS if c in table and (table[c].astype(str) != "").any()), "none")
    if group == "none":
        return ("id:" + table["id"].astype(str)).to_numpy(), "none"
    if group not in table:
        raise BadInputError(f"--group {group}: the data set has no column '{group}'")
    values = table[group].astype(str)
    keys = np.where(values != "", group + ":" + values, "id:" + table["id"].astype(str))
    return keys, group


@dataclass
class Split:
    path: Path
    sha256: str
    params: dict
    assign: dict[str, list[str]]  # val, test, excluded -> ids

    def ids(self, side: str) -> list[str]:
        return self.assign[side]

    @property
    def group_rule(self) -> str:
        """The column whose groups the split kept on one side ('none': every image is its own group)."""
        return self.params.get("group_used", "none")

    def group_keys(self, table: pd.DataFrame) -> np.ndarray:
        """One group key per row of table, by the split's rule; every later split (folds, inner validation,
        bootstrap resamples) keeps these groups whole as the split did."""
        return group_keys(table, self.group_rule)[0]

    def positions(self, table: pd.DataFrame, side: str) -> np.ndarray:
        """Table positions of a side; 'train' = every row in no other side."""
        ids = table["id"].astype(str)
        if side == "train":
            taken = set().union(*self.assign.values())
            return np.flatnonzero(~ids.isin(taken).to_numpy())
        return np.flatnonzero(ids.isin(set(self.assign[side])).to_numpy())


def _choose(groups: pd.DataFrame, want_m: int, want_b: int, rng: np.random.Generator, side: str) -> list[str]:
    """Whole groups, in random order: first groups with malignant images until there are enough
    of those, then benign-only groups until there are enough benign images. A group never
    splits; images beyond the counts are trimmed later (and excluded from the train pool)."""
    g = groups.iloc[rng.permutation(len(groups))]
    chosen, got_m, got_b = [], 0, 0
    for key, m, b in zip(g.index, g["m"], g["b"]):
        if got_m >= want_m:
            break
        if m > 0:
            chosen.append(key)
            got_m += m
            got_b += b
    for key, m, b in zip(g.index, g["m"], g["b"]):
        if got_b >= want_b:
            break
        if m == 0:
            chosen.append(key)
            got_b += b
    if got_m < want_m or got_b < want_b:
        raise NotEnoughDataError(
            f"--{side} {want_m}:{want_b}: the data left can supply only {got_m} malignant and "
            f"{got_b} benign images in whole groups"
        )
    return chosen


def make_split(store: Store, val: tuple[int, int], test: tuple[int, int], seed: int = 0,
               group: str = "auto") -> dict:
    """Draw val and test sets with exact malignant:benign counts; return the split document."""
    for side, (m, b) in zip(SIDES, (val, test)):
        require_both_classes(side, m, b, f"--{side} {m}:{b}", "ask for MALIGNANT:BENIGN counts of 1 or more")
    table = store.table
    keys, group_used = group_keys(table, group)
    labels = table["label"].to_numpy()
    total_m, total_b = int((labels == 1).sum()), int((labels == 0).sum())
    need_m, need_b = val[0] + test[0], val[1] + test[1]
    if need_m > total_m or need_b > total_b:
        raise NotEnoughDataError(
            f"val {val[0]}:{val[1]} and test {test[0]}:{test[1]} need {need_m} malignant and {need_b} benign "
            f"images; the data set has {total_m} malignant and {total_b} benign"
        )
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"key": keys, "label": labels, "id": table["id"].astype(str)})
    assign: dict[str, list[str]] = {"val": [], "test": [], "excluded": []}
    used: set[str] = set()
    for side, (want_m, want_b) in zip(SIDES, (val, test)):
        free = frame[~frame["key"].isin(used)]
        groups = free.groupby("key")["label"].agg(m="sum", n="size")
        groups["b"] = groups["n"] - groups["m"]
        chosen = _choose(groups, want_m, want_b, rng, side)
        used.update(chosen)
        rows = free[free["key"].isin(set(chosen))]
        for label, want in ((1, want_m), (0, want_b)):
            ids = rows.loc[rows["label"] == label, "id"].to_numpy()
            keep = rng.choice(len(ids), size=want, replace=False) if len(ids) > want else np.arange(len(ids))
            mask = np.zeros(len(ids), bool)
            mask[keep] = True
            assign[side] += sorted(ids[mask].tolist())
            assign["excluded"] += sorted(ids[~mask].tolist())
    doc = {
        "split_version": 1,
        "params": {"val": f"{val[0]}:{val[1]}", "test": f"{test[0]}:{test[1]}", "seed": seed,
                   "group": group, "group_used": group_used},
        "store_hash": store.content_hash,
        "counts": {},
        "assign": assign,
    }
    doc["counts"] = _counts(table, assign)
    check_split(table, doc, group_used)
    return doc


def _counts(table: pd.DataFrame, assign: dict) -> dict:
    ids = table["id"].astype(str)
    out = {}
    taken = set().union(*assign.values())
    for side in ("train", *assign):
        mask = ~ids.isin(taken) if side == "train" else ids.isin(set(assign[side]))
        lab = table.loc[mask.to_numpy(), "label"]
        out[side] = {"malignant": int((lab == 1).sum()), "benign": int((lab == 0).sum())}
    return out


def check_split(table: pd.DataFrame, doc: dict, group: str, path: Path | str = "split") -> None:
    """Refuse a split in which an id is unknown or on two sides, or a group spans sides."""
    assign = doc.get("assign")
    if not isinstance(assign, dict) or not all(isinstance(assign.get(s), list) for s in (*SIDES, "excluded")):
        raise BadInputError(f"{path}: 'assign' must map val, test and excluded to lists of ids")
    known = set(table["id"].astype(str))
    side_of: dict[str, str] = {}
    for side in (*SIDES, "excluded"):
        unknown = [i for i in assign[side] if i not in known]
        if unknown:
            raise BadInputError(f"{path}: {len(unknown)} {side} id(s) are not in the data set: {preview(unknown)}")
        for i in assign[side]:
            if i in side_of:
                raise LeakError(f"{path}: image '{i}' is listed in both {side_of[i]} and {side}")
            side_of[i] = side
    keys, _ = group_keys(table, group)
    sides = np.array([side_of.get(i, "train") for i in table["id"].astype(str)])
    frame = pd.DataFrame({"key": keys, "side": sides})
    frame = frame[frame["side"] != "excluded"]
    spread = frame.groupby("key")["side"].nunique()
    bad = spread[spread > 1].index.tolist()
    if bad:
        detail = [f"{k} ({', '.join(sorted(frame.loc[frame['key'] == k, 'side'].unique()))})" for k in bad[:10]]
        raise LeakError(f"{path}: {len(bad)} group(s) fall on two sides of the split: {preview(detail)}"
                        + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))


def save_split(doc: dict, path: Path, overwrite: bool = False) -> str:
    text = json.dumps(doc, indent=1) + "\n"
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old.get("params") == doc["params"] and old.get("assign") == doc["assign"]:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        raise ExistsError(f"{path}: a different split is already saved there ({old.get('params')}); "
                          "give --name for a second split, or --overwrite to replace it")
    write_text(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def load_split(store: Store, name: str = "") -> Split:
    """Read and verify a split of this store (refuses leaks and hand edits that create them)."""
    path = split_path(store.root, name)
    if not path.exists():
        raise BadInputError(f"{path}: no split; make one with `lesionlab split {store.root}`")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: not valid JSON ({e})") from None
    group = doc.get("params", {}).get("group_used", "none")
    check_split(store.table, doc, group, path)
    if doc.get("store_hash") != store.content_hash:
        raise BadInputError(f"{path}: was made for another version of this data set (store hash differs); "
                            "make the split again")
    return Split(path, hashlib.sha256(raw).hexdigest(), doc["params"], doc["assign"])
