"""Another prepared data set as an extra source of training images (`--extra-data DATA_DIR`).

Its images join the training draw only: they are never validation, test or out-of-fold images,
since those sides are positions of the run's own store. Before training it is checked like the
synthetic images are (data/copy_guard.py): its ids and its images' content against every image
the run evaluates on, so a copy of an evaluation image under another name, or re-encoded, stops
the run and is named. With --extra-drop-copies the drawn images that the content check calls
copies are left out instead, each replaced by an unchecked image of its class, and named in
run.json: the guard's bars were set on dermoscopy, and distinct total-body crops (plain skin
around a small spot) cross them (docs/results.md, section "copy-guard": 4-9 crops of every
525-crop draw of the ISIC 2024 permissive train pool, against its val/test crops of other
lesions), so another TBP source would otherwise be refused for images it does not share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError, LeakError, NotEnoughDataError, preview
from .copy_guard import copies_in_store, index_references
from .sampling import draw_training_set
from .store import Store


@dataclass
class ExtraPart:
    store: Store
    rows: np.ndarray  # table positions of the extra data set's images in the training draw
    info: dict

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        return self.store.table["label"].to_numpy()[self.rows]

    @property
    def ids(self) -> np.ndarray:
        return self.store.table["id"].astype(str).to_numpy()[self.rows]


def _draw(extra: Store, ratio: str, n_malignant: int | str, seed: int, data: str) -> np.ndarray:
    """The extra data set's own draw, with the errors naming its flags."""
    labels = extra.table["label"].to_numpy()
    try:
        return draw_training_set(labels, np.arange(len(labels)), ratio, n_malignant, seed)
    except (BadInputError, NotEnoughDataError) as e:
        text = str(e).replace("--n-malignant", "--extra-n-malignant").replace("--ratio", "--extra-ratio")
        raise type(e)(f"--extra-data {data}: {text.replace('the train pool', 'it')}") from None


def _checked_draw(extra: Store, rows: np.ndarray, refs: tuple, seed: int,
                  drop_copies: bool) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """The drawn rows without copies of an evaluation image, and the copies found: (row, evaluation index,
    similarity). Without `drop_copies` the first copies found are returned for the caller to refuse; with it,
    each is replaced by an image of its class that was not drawn, checked in turn, until none is left or the
    class has no image left (the draw is then smaller by as many)."""
    labels = extra.table["label"].to_numpy()
    rng = np.random.default_rng([seed, 7])
    kept, found, seen = [], [], set(rows.tolist())
    pending = rows
    while len(pending):
        hits = copies_in_store(extra, pending, refs, chunk=4096)
        found += hits
        if hits and not drop_copies:
            return rows, found
        copied = np.array([r for r, _, _ in hits], np.int64)
        kept.append(pending[~np.isin(pending, copied)])
        fresh = []
        for label in (0, 1):
            need = int((labels[copied] == label).sum())
            unseen = np.setdiff1d(np.flatnonzero(labels == label), np.fromiter(seen, np.int64))
            fresh.append(rng.choice(unseen, min(need, len(unseen)), replace=False) if need and len(unseen) else
                         np.zeros(0, np.int64))
        pending = np.concatenate(fresh)
        seen.update(pending.tolist())
    return np.sort(np.concatenate(kept)), found


def load_extra(data: str | Path, ratio: str, n_malignant: int | str, main: Store, eval_ids: list[str],
               eval_images: np.ndarray, seed: int, group_rule: str = "none", eval_groups: np.ndarray | None = None,
               drop_copies: bool = False) -> ExtraPart:
    """The extra data set's draw, refused when it is the run's own data set, has another image size,
    or holds any of the evaluation images (`eval_ids`, `eval_images`: every image the run scores), or
    another image of their patients or lesions (`eval_groups`, keys by the split's `group_rule`,
    where the extra data set has that column). Drawn images whose content copies an evaluation
    image refuse the run, or with `drop_copies` are replaced (_checked_draw)."""
    extra = Store.open(data)
    if extra.content_hash == main.content_hash:
        raise LeakError(f"--extra-data {data}: is the run's own data set, whose validation and test images would be "
                        "trained on; give another data set")
    if extra.size != main.size:
        raise BadInputError(f"--extra-data {data}: prepared at {extra.size} px but the run's data set is at {main.size} "
                            f"px; prepare it with --size {main.size}")
    table = extra.table
    same = sorted(set(table["id"].astype(str)) & set(eval_ids))
    if same:
        raise LeakError(f"--extra-data {data}: {len(same)} of its image ids are among the images this run evaluates on "
                        f"(validation, test or out-of-fold): {preview(same)}; remove them from that data set")
    if group_rule != "none" and group_rule in table and eval_groups is not None:
        from .splits import group_keys

        keys = group_keys(table, group_rule)[0]
        shared = sorted(set(keys[np.char.find(keys.astype(str), "id:") != 0]) & set(eval_groups))
        if shared:
            raise LeakError(f"--extra-data {data}: holds images of {len(shared)} {group_rule.removesuffix('_id')}(s) this "
                            f"run evaluates on: {preview(shared)}; remove them from that data set")
    rows = _draw(extra, ratio, n_malignant, seed, str(data))
    ids = table["id"].astype(str).to_numpy()
    rows, copies = _checked_draw(extra, rows, index_references(eval_images), seed, drop_copies)
    named = [f"{ids[r]} ~ {eval_ids[j]} (similarity {s:.3f})" for r, j, s in copies]
    if copies and not drop_copies:
        raise LeakError(f"--extra-data {data}: {len(copies)} extra image(s) are copies of this run's validation, test "
                        f"or out-of-fold images: {preview(named)}; remove them from that data set, or add "
                        "--extra-drop-copies to leave them out of the draw (a model must never train on its evaluation "
                        "images)")
    labels = table["label"].to_numpy()[rows]
    info = {"data": str(Path(data).resolve()), "store_hash": extra.content_hash, "ratio": ratio,
            "n_malignant": int(labels.sum()), "n_benign": int((labels == 0).sum()),
            "available": {"malignant": int(table["label"].sum()), "benign": int((table["label"] == 0).sum())},
            "guard": {"checked": int(len(rows) + len(copies)), "against": int(len(eval_ids)), "copies": len(copies),
                      "dropped": named, "by": "id and content (data/copy_guard.py)"}}
    return ExtraPart(extra, rows, info)
