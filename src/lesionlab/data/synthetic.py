"""Synthetic images in a training run: loaded from their own prepared data set, checked, and
appended to the training draw only (positions past the real store's rows refer to them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError, LeakError, NotEnoughDataError, preview
from .copy_guard import check_no_leak
from .store import Store


def real_rows(table, positions: np.ndarray) -> np.ndarray:
    """The positions of `table` that hold real images: those not marked synthetic=1 (a store may hold both)."""
    if "synthetic" not in table:
        return positions
    return positions[table["synthetic"].astype(str).to_numpy()[positions] != "1"]


@dataclass
class SyntheticPart:
    store: Store
    rows: np.ndarray  # table positions of the synthetic images used
    info: dict

    def __len__(self) -> int:
        return len(self.rows)


def load_synthetic(data: str | Path, n: int | None, main: Store, eval_ids: set[str], eval_images: np.ndarray,
                   eval_id_list: list[str], seed: int) -> SyntheticPart:
    syn = Store.open(data)
    table = syn.table
    if "synthetic" not in table or (table["synthetic"].astype(str) != "1").any():
        bad = table.loc[table.get("synthetic", "0").astype(str) != "1", "id"].tolist() if "synthetic" in table else []
        raise BadInputError(f"{data}: not a synthetic data set: every row must be marked synthetic=1 in its manifest"
                            + (f" ({len(bad)} are not: {preview(bad)})" if bad else ""))
    if (table["label"] != 1).any():
        raise BadInputError(f"{data}: synthetic images must be malignant (label 1); "
                            f"{int((table['label'] != 1).sum())} are not")
    if syn.size != main.size:
        raise BadInputError(f"{data}: prepared at {syn.size} px but the data set is at {main.size} px; "
                            f"prepare the synthetic images with --size {main.size}")
    same = sorted(set(table["id"]) & eval_ids)
    if same:
        raise LeakError(f"{data}: {len(same)} synthetic id(s) are validation or test images: {preview(same)}")
    available = len(table)
    n = available if n is None else n
    if n > available:
        raise NotEnoughDataError(f"--synthetic-n {n}: {data} holds {available} synthetic images")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(available, size=n, replace=False))
    guard = check_no_leak(syn.pixels(rows), table["id"].to_numpy()[rows].tolist(), eval_images, eval_id_list,
                          "validation or test")
    meta = syn.metadata()
    generators = sorted(set(meta["generator"].astype(str))) if "generator" in meta.columns else []
    info = {"data": str(Path(data).resolve()), "n": int(n), "available": int(available), "store_hash": syn.content_hash,
            "generators": generators, "guard": guard}
    return SyntheticPart(syn, rows, info)


class CombinedImages:
    """pixels(positions) over the real store's rows, then each added part's (synthetic images, an
    extra data set's draw), in the order given: part k's i-th image sits at len(main) + (sizes of the
    parts before k) + i."""

    def __init__(self, main: Store, *parts):
        self.main, self.offset = main, len(main.table)
        self.parts = [p for p in parts if p is not None]
        self.starts = self.offset + np.cumsum([0] + [len(p) for p in self.parts])

    def pixels(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions)
        if not self.parts:
            return self.main.pixels(positions)
        out = np.empty((len(positions), self.main.size, self.main.size, 3), np.uint8)
        real = positions < self.offset
        if real.any():
            out[real] = self.main.pixels(positions[real])
        for part, start, end in zip(self.parts, self.starts[:-1], self.starts[1:]):
            mine = (positions >= start) & (positions < end)
            if mine.any():
                out[mine] = part.store.pixels(part.rows[positions[mine] - start])
        return out
