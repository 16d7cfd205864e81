"""Another prepared data set as an extra source of training images (`--extra-data DATA_DIR`).

Its images join the training draw only: they are never validation, test or out-of-fold images,
since those sides are positions of the run's own store. Before training it is checked like the
synthetic images are (data/copy_guard.py): its ids and its images' content against every image
the run evaluates on, so a copy of an evaluation image under another name, or re-encoded, stops
the run and is named.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError, LeakError, NotEnoughDataError, preview
from .copy_guard import check_no_leak, index_references
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


def load_extra(data: str | Path, ratio: str, n_malignant: int | str, main: Store, eval_ids: list[str],
               eval_images: np.ndarray, seed: int, group_rule: str = "none", eval_groups: np.ndarray | None = None) -> ExtraPart:
    """The extra data set's draw, refused when it is the run's own data set, has another image size,
    or holds any of the evaluation images (`eval_ids`, `eval_images`: every image the run scores), or
    another image of their patients or lesions (`eval_groups`, keys by the split's `group_rule`,
    where the extra data set has that column)."""
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
    refs = index_references(eval_images)
    ids = table["id"].astype(str).to_numpy()
    # chunked: an extra data set can be much larger than the evaluation sets
    for start in range(0, len(rows), 4096):
        chunk = rows[start:start + 4096]
        try:
            check_no_leak(extra.pixels(chunk), ids[chunk].tolist(), refs, list(eval_ids),
                          "this run's validation, test or out-of-fold", kind="extra")
        except LeakError as e:
            raise LeakError(f"--extra-data {data}: {e}") from None
    labels = table["label"].to_numpy()[rows]
    info = {"data": str(Path(data).resolve()), "store_hash": extra.content_hash, "ratio": ratio,
            "n_malignant": int(labels.sum()), "n_benign": int((labels == 0).sum()),
            "available": {"malignant": int(table["label"].sum()), "benign": int((table["label"] == 0).sum())},
            "guard": {"checked": int(len(rows)), "against": int(len(eval_ids)), "copies": 0,
                      "by": "id and content (data/copy_guard.py)"}}
    return ExtraPart(extra, rows, info)
