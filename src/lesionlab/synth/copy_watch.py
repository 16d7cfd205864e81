"""Stop a generator before it copies: at every FID estimate of its training, the data-copying test
(quality.data_copying) of that estimate's samples against the class's training images and a reference of new real
images, which no generator learns from (held_out val: the split's validation images of the class; train: the
training images themselves, each against the other groups'); the training keeps the EMA generator of the stop its
rule selects (selected_stop; when every stop copied, the one that copies least: fallback_stop) and ends once
`patience` stops in a row copy.

Why a watch: the trajectory in docs/results.md (ISIC 2024 crops) shows the projected recipe reaching its recall
early and then only adding copying, so the stop has to be chosen, and a choice needs a reference of its own. The
check (synth check) then judges on the images the generator neither learned nor was chosen on (the test set, the
pool's unused images, and the validation images unless the watch used them): check.unseen_images leaves out
watch_ids.csv."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.splits import Split
from ..data.store import Store
from ..data.synthetic import real_rows
from ..errors import NotEnoughDataError
from ..fileio import atomic_path, csv_restore, load_checkpoint, write_csv
from . import quality

WATCH_IDS = "watch_ids.csv"  # the validation images the watch compared with, in the generator folder
SNAPSHOT = "selected.pt"  # the EMA generator of the stop sampling uses (sampled_stop)
MIN_WATCH = 10  # validation images of the class, the fewest a rank test stands on (as check's MIN_UNSEEN)
# the quality bar of the margin rule: the goal synth check's users judge a generator by (recall and coverage
# against the class's training images), read here on the FID estimate's samples
SELECT_RECALL, SELECT_COVERAGE = 0.3, 0.5


def watch_positions(store: Store, split: Split, label: int) -> np.ndarray:
    """Positions of the split's validation images of `label` (never a synthetic one)."""
    table = store.table
    pos = split.positions(table, "val")
    return real_rows(table, pos[table["label"].to_numpy()[pos] == label])


class CopyWatch:
    """The data-copying test of a batch of samples in 32x32 pixels and in the FID estimate's features
    (`features`, a callable on uint8 NHWC images) against `learned` (uint8 NHWC, the class's training
    images at the generator's size, at `learned_positions` of the store) and a reference of new real images:
    held_out "val", the split's validation images of the class; "train", the training images themselves, each
    against the other groups' (quality.other_group_nearest).

    Why "train": a few dozen validation images can sit closer to the training images than the distribution's new
    images do (the ISIC 2024 crops' 30 did, docs/results.md), and a watch judged against them passes samples that
    copy; the training images left out by group are a reference of hundreds, drawn as the training set was, and they
    leave the validation images to synth check as new images."""

    def __init__(self, store: Store, split: Split, label: int, size: int, learned: np.ndarray,
                 learned_positions: np.ndarray, features, patience: int, held_out: str = "val", seed: int = 0):
        group_of = split.group_keys(store.table)
        self.held_out, self.patience = held_out, patience
        self.learned_groups = group_of[learned_positions]
        if held_out == "train":
            groups = len(np.unique(self.learned_groups))
            if groups < MIN_WATCH:
                raise NotEnoughDataError(
                    f"--copy-watch train: the class's training images come from {groups} group(s) (patients or "
                    f"lesions); the data-copying test against them needs at least {MIN_WATCH} (use --copy-watch val "
                    "or off)")
            self.ids = np.array([], dtype=str)  # no validation image is used: check keeps them all as new images
            self.groups, held_pixels, held_features = self.learned_groups, None, None  # None: the training images
        else:
            pos = watch_positions(store, split, label)
            if len(pos) < MIN_WATCH:
                raise NotEnoughDataError(
                    f"--copy-watch val: the split's validation set holds {len(pos)} image(s) of the class the "
                    f"generator is watched on; the data-copying test needs at least {MIN_WATCH} (use --copy-watch "
                    "train, which needs none, or off to train without it)")
            self.ids = store.table["id"].astype(str).to_numpy()[pos]
            self.groups = group_of[pos]
            held = quality.resize(store.pixels(pos), size)
            held_pixels, held_features = quality.pixels(held), features(held)
        # the training images and the reference are the same at every stop: cluster and measure them once
        by_group = {"held_groups": self.groups, "train_groups": self.learned_groups}
        self.pixel_reference = quality.CopyingReference(quality.pixels(learned), held_pixels, seed, **by_group)
        self.feature_reference = quality.CopyingReference(features(learned), held_features, seed, **by_group)

    def __call__(self, images: np.ndarray, image_features: np.ndarray) -> dict[str, float]:
        """The test's Z_U in each space, whether each space finds copying (Z_U, C_T or a cell: the record says which
        space made the verdict) and whether either does; image_features: the images' features in `features` (the FID
        estimate has them already)."""
        pixel = self.pixel_reference.test(quality.pixels(images))
        feature = self.feature_reference.test(image_features)
        return {"copy_z_pixel": round(pixel["z_u"], 3), "copy_z_feature": round(feature["z_u"], 3),
                "copying_pixel": float(pixel["copying"]), "copying_feature": float(feature["copying"]),
                "copying": float(pixel["copying"] or feature["copying"]), "copy_n": float(len(images))}

    def summary(self, history: list[dict], rule: str, selected_step: int | None, stopped: bool,
                fallback_step: int | None = None) -> dict:
        """selected_step: the stop without copying that the rule chose (None when every stop copied);
        fallback_step: the stop sampled instead then (fallback_stop; None: the last step)."""
        keys = ("step", "copy_z_pixel", "copy_z_feature", "copying_pixel", "copying_feature", "copying", "copy_n",
                "recall", "coverage")
        return {"reference": self.held_out,  # --copy-watch's value
                "held_out": ("the class's training images, each against the other groups'" if self.held_out == "train"
                             else "the split's validation images of the class"),
                "n": int(len(self.groups)), "groups": int(len(np.unique(self.groups))), "patience": self.patience, "rule": rule,
                "quality_bar": {"recall": SELECT_RECALL, "coverage": SELECT_COVERAGE} if rule == "margin" else None,
                "selected_step": selected_step, "fallback_step": fallback_step, "stopped_by_copying": stopped,
                # a stop recorded before a key (a resumed generator's progress.csv) leaves it blank: left out
                "stops": [{k: r[k] for k in keys if k in r and not pd.isna(r[k])} for r in _watched(history)]}


def _watched(history: list[dict]) -> list[dict]:
    return [r for r in history if "copying" in r and not pd.isna(r["copying"])]


def selected_stop(history: list[dict], rule: str) -> int | None:
    """The watched stop a generator samples from; None when every stop copied.

    last: the last stop without copying. margin: among the stops without copying whose samples meet the quality
    bar (recall and coverage against the class's training images, in the FID estimate's features), the one whose
    samples lie farthest from copying (the largest min(Z_U in pixels, Z_U in features)), the earliest on a tie;
    without such a stop, the last stop without copying. Why margin: a GAN's quality on a few hundred images
    plateaus early while its copying drifts up and down from stop to stop (the watched runs in docs/results.md),
    so the last clean stop is often one just above the cut, and the next images read as copying; the stop with
    the widest margin that is good enough is the one least likely to copy on images not yet seen."""
    clean = [r for r in _watched(history) if not r["copying"]]
    if not clean:
        return None
    if rule == "margin":
        good = [r for r in clean if meets_bar(r, missing=-1.0)]
        if good:
            return _widest_margin(good)
    return int(clean[-1]["step"])


def fallback_stop(history: list[dict]) -> int | None:
    """The stop sampled when every watched stop copied (selected_stop is None): among those whose samples reach the
    quality bar, the one farthest from copying (the largest min(Z_U in pixels, Z_U in features)), the earliest on a
    tie; None when none reaches the bar, and the last step is sampled.

    Why not the last step: in the ISIC 2024 cv experiment with --copy-watch train (README) four of five fold
    generators copied at every stop, and their last steps were sampled whatever their Z_U; the stop that copies
    least is the one whose images are least likely to be copies, and the record names it as a fallback."""
    good = [r for r in _watched(history) if meets_bar(r, missing=-1.0)]
    return _widest_margin(good) if good else None


def sampled_stop(history: list[dict], rule: str) -> int | None:
    """The stop whose snapshot sampling uses: selected_stop, or when every stop copied, fallback_stop."""
    chosen = selected_stop(history, rule)
    return chosen if chosen is not None else fallback_stop(history)


def _widest_margin(rows: list[dict]) -> int:
    return int(max(rows, key=lambda r: (min(r["copy_z_pixel"], r["copy_z_feature"]), -r["step"]))["step"])


def meets_bar(row: dict, missing: float) -> bool:
    """Whether a stop's samples reach the quality bar (recall and coverage against the class's training images);
    `missing` stands for a value the stop did not record (generators before the bar)."""
    return row.get("recall", missing) >= SELECT_RECALL and row.get("coverage", missing) >= SELECT_COVERAGE


def copying_in_a_row(history: list[dict]) -> int:
    """How many of the last watched stops that reach the quality bar found copying, in a row (resume counts from
    progress.csv); a stop under the bar is passed over, neither counted nor breaking the row.

    Why: before a generator has learned the class its samples crowd a few regions, and the nearest-neighbour test
    reads crowding as copying whatever the reference. Measured on fold 0 of the ISIC 2024 cv experiment
    (README, copy watch): at 500 steps, recall 0.19, the samples read Z_U -4.21 in features against the training images
    by group and -3.47 against the new real crops, and with the first stop they ended the training before any stop
    reached the bar. Such a stop is still never sampled (selected_stop skips copying stops); it only no longer ends
    the training. Stops recorded before the bar count as before."""
    n = 0
    for row in reversed([r for r in _watched(history) if meets_bar(r, missing=1.0)]):
        if not row["copying"]:
            break
        n += 1
    return n


def save_snapshot(folder: Path, step: int, ema_state: dict) -> None:
    with atomic_path(folder / SNAPSHOT) as tmp:
        torch.save({"step": int(step), "ema": ema_state}, tmp)


def load_snapshot(folder: Path) -> dict:
    """{"step", "ema"}, loaded safely (tensors and plain values only)."""
    return load_checkpoint(folder / SNAPSHOT)


def write_watch_ids(folder: Path, ids: np.ndarray) -> None:
    write_csv(folder / WATCH_IDS, pd.DataFrame({"id": ids}))


def watch_ids(folder: Path) -> set[str]:
    """The validation images a generator's stop was chosen on (empty when it was not watched)."""
    path = folder / WATCH_IDS
    if not path.exists():
        return set()
    return set(csv_restore(pd.read_csv(path, dtype=str, keep_default_na=False))["id"])
