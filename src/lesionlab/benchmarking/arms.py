"""What several benchmarks train and report alike: an arm (a config's values) trained over seeds or as a
grouped cross-validation, with finished runs reused so an interrupted benchmark resumes, and the markdown
of their numbers."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..config import build_config, build_tabular_config
from ..metrics import average_precision, pauc_above_tpr, roc_auc
from ..runs import Run, is_complete_run
from ..tabular.command import tabular_run
from ..workflows.cv import run_cv
from ..workflows.train import train_process
from .results import ROOT

BASELINE = ROOT / "configs" / "seed" / "simple_cnn_1to2.yaml"  # the notebook's SimpleCNN at 1:2
METRICS = {"roc_auc": roc_auc, "average_precision": average_precision, "pauc_80": pauc_above_tpr}


def train_arm(name: str, values: dict, data: Path, work: Path, seeds: list[int]) -> list[Run]:
    """The arm trained once per seed into WORK/runs/NAME/seed-S."""
    runs = []
    for seed in seeds:
        folder = work / "runs" / name / f"seed-{seed}"
        if not is_complete_run(folder):
            t = time.time()
            print(f"[{name}] seed {seed}", flush=True)
            train_process(build_config({**values, "name": name, "data": str(data), "seed": seed}, name), folder)
            print(f"[{name}] seed {seed} done in {time.time() - t:.0f} s", flush=True)
        runs.append(Run.load(folder))
    return runs


def cv_arm(name: str, values: dict, data: Path, work: Path, folds: int, seed: int) -> Run:
    """The arm as a `folds`-fold grouped cv of the train pool (fold seed `seed`) into WORK/cv/NAME."""
    t = time.time()
    print(f"[cv {name}] {folds} folds", flush=True)
    cfg = build_config({**values, "name": f"cv {name}", "data": str(data), "seed": seed}, f"cv arm '{name}'")
    run_cv(cfg, work / "cv" / name, folds, 1, seed, echo=lambda s: print("  " + s, flush=True))
    print(f"[cv {name}] done in {time.time() - t:.0f} s", flush=True)
    return Run.load(work / "cv" / name)


def fused_arm(cv: Run, data: Path, out: Path, fusion: str) -> Run:
    """The cv's image scores fused with the data set's metadata (`lesionlab tabular --image CV_DIR
    --fusion FUSION`: on the cv's folds, so the two pair on the same out-of-fold images) into OUT; a complete
    folder is reused."""
    if not is_complete_run(out):
        t = time.time()
        print(f"[fusion {fusion}] {cv.path}", flush=True)
        cfg = build_tabular_config({"data": str(data), "image": str(cv.path), "fusion": fusion, "bootstrap": 0},
                                   f"fusion of {cv.path}")
        tabular_run(cfg, out, echo=lambda s: print("  " + s, flush=True))
        print(f"[fusion {fusion}] done in {time.time() - t:.0f} s", flush=True)
    return Run.load(out)


def train_minutes(runs: list[Run]) -> float:
    """Training wall time as each run recorded it (so arms reused from an earlier invocation still count)."""
    return sum(r.info.get("wall_seconds") or 0.0 for r in runs) / 60


def cv_table(cvs: dict[str, Run]) -> list[str]:
    """Markdown rows: each cv arm's OOF metrics, its fold ensemble's test metrics and its training minutes."""
    lines = ["| arm | OOF ROC AUC | OOF AP | OOF pAUC80 | fold-ensemble test ROC AUC | test AP | test pAUC80 "
             "| train min (all folds) |", "|---|---|---|---|---|---|---|---|"]
    for name, run in cvs.items():
        o, te = run.metrics["oof"], run.metrics["test"]
        minutes = train_minutes(run.fold_runs())
        lines.append(f"| {name} | {o['roc_auc']:.3f} | {o['average_precision']:.3f} | {o['pauc_80']:.4f} | "
                     f"{te['roc_auc']:.3f} | {te['average_precision']:.3f} | {te['pauc_80']:.4f} | {minutes:.1f} |")
    return lines


def curve_table(cvs: dict[str, Run]) -> list[str]:
    """Markdown rows: each cv arm's training curves on the split's validation set, the mean of its folds at
    five epochs (first, quarters, last), the epoch each fold kept, and the train - validation ROC AUC gap at
    the last epoch (a wide gap with a flat validation curve says the arm overfits rather than undertrains)."""
    lines = ["| arm | epoch kept (each fold) | val ROC AUC by epoch | val pAUC80 by epoch | train - val ROC AUC, "
             "last epoch |", "|---|---|---|---|---|"]
    for name, run in cvs.items():
        folds = run.fold_runs()
        history = pd.concat([f.history().assign(fold=i) for i, f in enumerate(folds)])
        by_epoch = history.groupby("epoch")[["val_roc_auc", "val_pauc_80"]].mean()  # folds that reached it
        last = int(by_epoch.index.max())
        shown = sorted({1, *(max(1, round(last * q)) for q in (0.25, 0.5, 0.75)), last} & set(by_epoch.index))
        lasts = history.sort_values("epoch").groupby("fold").tail(1)
        gap = float((lasts["train_roc_auc"] - lasts["val_roc_auc"]).mean())
        lines.append(f"| {name} | {', '.join(str(f.info.get('best_epoch')) for f in folds)} | "
                     + " | ".join(" · ".join(f"{e}: {by_epoch.at[e, m]:.{d}f}" for e in shown)
                                  for m, d in (("val_roc_auc", 3), ("val_pauc_80", 4)))
                     + f" | {gap:+.3f} |")
    return lines


def fmt_ci(d: dict, m: str) -> str:
    """'+0.012 [-0.003, +0.027]': a paired difference of metric `m` with its interval."""
    x = d[m]
    return f"{x['diff']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]"
