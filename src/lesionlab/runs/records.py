"""The shapes of run.json and metrics.json (format.py names the files), declared once for their
writers (train, cv, ensemble, tabular, pretrain: RunWriter.finish takes these) and their readers
(Run.info, Run.metrics), so that a type checker holds both to the same keys.

Every key is optional (total=False): each kind writes its own part, and folders written by earlier
versions lack the keys added since, so readers still .get() what they use and check it."""
from __future__ import annotations

from typing import Any, TypedDict, cast


class FormatBlock(TypedDict):
    version: int  # format.FORMAT_VERSION when written; folders without it are version 0
    kind: str     # a kind declared in kinds.py


class SplitRecord(TypedDict):
    """The data set and split a run was made on (run.json of every kind)."""

    data: str            # the prepared data set's folder, absolute
    store_hash: str      # its content hash (data/store.py)
    split_file: str      # split.json or split-NAME.json
    split_sha256: str


class RunInfo(TypedDict, total=False):
    """run.json: what was done, on what, and how it went; the sections say which kinds write a key."""

    # every kind (RunWriter.finish adds format and lesionlab_version)
    format: FormatBlock
    lesionlab_version: str
    data: str
    store_hash: str
    split_file: str
    split_sha256: str
    runtime: dict[str, Any] | None  # engine.runtime.Runtime.describe() (a cv run: its first fold's)
    torch: str
    python: str
    wall_seconds: float | None
    # the kinds that score a split: train, cv, ensemble, tabular
    name: str
    threshold_rule: str
    threshold: float
    group_rule: str                # the split's group column that intervals resample whole (cv, ensemble, train)
    draw: dict[str, Any]           # the training draw: malignant, benign, synthetic, extra, pool_malignant, ...
    monitor: str | None
    # train
    synthetic: dict[str, Any] | None
    extra_data: dict[str, Any] | None
    levers: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    best_epoch: int
    prevalence: dict[str, Any]
    calibration: dict[str, Any] | None
    tta: str
    speed: dict[str, Any]          # train: img/s of the loop and of the pure compute; encoder: img/s
    setup_seconds: float
    cam_gallery: dict[str, Any]    # the test-set Grad-CAM gallery's ids (or its error)
    audit: dict[str, Any]          # the shortcut audit's record (lesionlab.audit)
    encoder: dict[str, Any] | None  # the encoder it started from (train --pretrained ENC_DIR)
    plan: dict[str, Any]           # a cv fold: its repeat, fold, counts and the fold assignment's fold_sha256
    # train and encoder
    weights: dict[str, Any]        # where the starting weights came from
    preprocessing: dict[str, Any]  # engine.runtime.Preprocessing.to_dict()
    # cv (fold_sha256, repeats) and tabular (folds as a record)
    folds: int | dict[str, Any]    # cv: the number of folds; tabular: k, source, hash, best_iterations, per_fold
    repeats: int
    fold_seed: int
    fold_sha256: str
    inner_validation: str
    members: list[dict[str, Any]]  # cv: the fold runs; ensemble: each member with its preprocessing
    mean: str                      # how members' probabilities are averaged (choices.ENSEMBLE_MEANS)
    # ensemble
    n_members: int
    tta_override: str | None
    given: list[str]
    # tabular
    group: str
    engine: dict[str, Any]
    features: dict[str, Any]
    image: dict[str, Any] | None   # the image run it is fused with (tabular.image.ImageScores.record)
    fusion: str | None
    seconds: dict[str, float]
    # encoder
    method: str
    model: str
    image_size: int
    feature_dim: int
    source: dict[str, Any]         # the images it was pretrained on
    inner_val: dict[str, Any]
    steps: int
    resumed_from_epoch: int | None


# one side's metrics: metrics.METRIC_KEYS (loss, accuracy, ..., threshold), ci95 {metric: [lo, hi]},
# ci95_unit, n_malignant, n_benign, n_groups (built by metrics.compute_metrics and metrics_with_ci)
SideMetrics = dict[str, Any]


class RunMetrics(TypedDict, total=False):
    """metrics.json, written last (its presence marks the folder complete)."""

    val: SideMetrics                   # a cv fold: its inner validation part
    test: SideMetrics
    oof: SideMetrics                   # cv and tabular: the train pool, out of fold; a cv fold: its held-out fold
    split_val: SideMetrics             # a cv fold: the split's validation images
    audit: dict[str, Any]              # train: the shortcut audit of the test set
    # encoder: the kNN and linear-probe scores on the inner validation part, at the end and at the start
    quality: dict[str, float]
    quality_at_start: dict[str, float]
    loss: float
    inner_val: dict[str, int]



def metrics_record(parts: dict[str, Any]) -> RunMetrics:
    """metrics.json from a writer's metrics per side (a loop over the sides it scored) and blocks such as
    the audit; a key RunMetrics does not declare is a programming error."""
    unknown = sorted(set(parts) - (RunMetrics.__required_keys__ | RunMetrics.__optional_keys__))
    if unknown:
        raise ValueError(f"metrics.json declares no {', '.join(unknown)}")
    return cast(RunMetrics, dict(parts))
