"""The shapes of run.json and metrics.json (format.py names the files), declared once for their
writers (train, cv, ensemble, tabular, pretrain: RunWriter.finish takes these) and their readers
(Run.info, Run.metrics), so that a type checker holds both to the same keys.

Every key is optional (total=False): each kind writes its own part, and folders written by earlier
versions lack the keys added since, so readers still .get() what they use and check it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypedDict, cast


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
    audit: AuditBlock              # train: why the audit was left out (its `error` alone)
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
    audit: AuditBlock                  # train: the shortcut audit of the test set
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


# ---------------------------------------------------------------- the shortcut audit (lesionlab.audit)
# its block: audit.json, and `audit` in a train run's metrics.json; its keys are those the JSON holds


class Stats(TypedDict, total=False):
    """A distribution of per-image values (only n when no value is finite)."""
    n: int
    mean: float
    median: float
    q25: float
    q75: float


class MeanCI(TypedDict, total=False):
    """A mean over some images with its 95% interval from the metrics' resamples (whole groups)."""
    mean: float
    ci95: list[float]
    n: int
    over: str                 # "flagged" (TP + FP) or "all"


class MetricShift(TypedDict, total=False):
    original: float
    hidden: float
    drop: float               # original - hidden
    ci95: list[float]


class Occlusion(TypedDict, total=False):
    """How the probabilities and the ranking move when a part of each image is painted over."""
    mean_change: float
    mean_abs_change: float
    p95_abs_change: float
    max_abs_change: float
    decisions_changed: int
    mean_change_malignant: float
    mean_change_benign: float
    roc_auc: MetricShift
    pauc_80: MetricShift


class Stratum(TypedDict, total=False):
    """The metrics (with intervals) of the images of one stratum; only n without labels."""
    n: int
    n_malignant: int
    n_benign: int
    roc_auc: float
    pauc_80: float
    average_precision: float
    recall: float
    specificity: float
    f1: float
    ci95: dict[str, list[float]]


# the functional form: "with" is a keyword
ArtifactStrata = TypedDict("ArtifactStrata", {"description": str, "n_with": int, "with": Stratum, "without": Stratum})


class Parts(TypedDict):
    """The audit's files, relative to its folder (or absolute, once recorded in a run)."""
    table: str
    figures: dict[str, str | None]


class AuditBlock(TypedDict, total=False):
    version: int
    on_lesion_share: float | None      # the run's number: mean CAM mass on the lesion over the flagged images
    frame_auc_drop: float | None       # and the ROC AUC drop with the frame hidden
    n: int
    n_malignant: int
    n_benign: int
    settings: dict[str, Any]           # AuditSettings, the CAM layers, the mask rule, threshold, size, interval unit
    cam: dict[str, Any]                # on_lesion / frame (MeanCI), area; or skipped
    by_outcome: dict[str, dict[str, Any]]
    mask_fallback: dict[str, Any]
    occlusion: dict[str, Occlusion | None]
    artifacts: dict[str, ArtifactStrata]
    strata: dict[str, dict[str, Stratum]]
    notes: list[str]
    error: str                         # train: why the audit was left out (the run stands without it)
    # once written: what was audited, the files, and who recorded it
    input: dict[str, Any]
    table: str
    figures: dict[str, str | None]
    folder: str
    recorded: dict[str, str]
    previous: list[dict[str, Any]]     # earlier audits of the run, in brief
    # audit.json only
    run: str
    run_kind: str
    skipped_unreadable: list[str]


class AuditResult(TypedDict):
    """What `audit_run` returns."""
    block: AuditBlock
    out: str
    recorded: bool
    replaced: int             # earlier audits the run's metrics.json now keeps in brief
    skipped: list[str]
    layers: list[str]


# ---------------------------------------------------------------- what the workflows return
# (lesionlab.workflows, tabular/command.py, audit/command.py; the CLI prints from these)


class RunResult(RunInfo, total=False):
    """train, ensemble, tabular and pretrain: run.json's content with the metrics (empty on a training
    process that is not rank 0: only rank 0 writes)."""
    metrics: Mapping[str, Any]  # metrics.json's content (RunMetrics), or a training process's own


class CvResult(TypedDict, total=False):
    complete: bool
    left: list[str]           # fold folders not complete yet (another task's share, or --no-finish)
    run: RunResult            # once complete: the cv folder's run.json with its metrics


class SweepResult(TypedDict):
    done: list[Path]
    skipped: list[Path]       # complete already
    failed: list[tuple[Path, str]]
    elsewhere: list[Path]     # claimed by another worker


class TuneBest(TypedDict):
    number: int
    value: float
    params: dict[str, Any]
    config: str               # best.yaml


class TuneResult(TypedDict, total=False):
    study: str
    trials: int
    complete: int
    pruned: int
    failed: int
    best: TuneBest | None
    figures: dict[str, str | None]
    ran: int                  # a worker without the summary: the trials it ran


class Comparison(TypedDict):
    """compare: B - A paired on the same images."""
    a: list[str]
    b: list[str]
    on: str                   # "test" or "oof"
    n_test: int
    n_boot: int
    unit: str                 # what the bootstrap resamples: image, lesion or patient
    metrics: dict[str, dict[str, float]]   # metric -> a, b, diff, lo, hi
    audit: dict[str, Any]     # each side's audit numbers and, for one run a side, the paired audit
    folds: list[int] | None   # out-of-fold images of these folds only (compare --folds); None: every image
    per_fold: list[int] | None  # compare --per-fold: each metric the mean over these folds; None: pooled


class PredictResult(TypedDict, total=False):
    n: int
    seconds: float
    img_s: float
    threshold: float
    out: str
    unit: str                 # "image" or "row" (a tabular run)
    skipped: int
    skipped_ids: list[str]
    skipped_file: str | None
    kaggle: bool


class ExportResult(TypedDict, total=False):
    out: str
    format: str
    max_abs_diff: float       # largest |exported - torch| probability on the check images
    n_images: int
    images: str
    bytes: int
    metadata: dict[str, Any]


class ExplainResult(TypedDict):
    n: int
    skipped: list[str]       # 'ID (why)' of each unreadable image
    method: str
    layers: list[str]
    out: str
