"""What several benchmarks train and report alike: an arm (a config's values) trained over seeds or as a
grouped cross-validation, with finished runs reused so an interrupted benchmark resumes, and the markdown
of their numbers."""
from __future__ import annotations

import time
from pathlib import Path

from ..config import build_config
from ..metrics import average_precision, pauc_above_tpr, roc_auc
from ..runs import Run, is_complete_run
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


def train_minutes(folders: list[Path]) -> float:
    """Training wall time as each run recorded it (so arms reused from an earlier invocation still count)."""
    return sum(Run.load(f).info.get("wall_seconds") or 0.0 for f in folders) / 60


def cv_table(cvs: dict[str, Run]) -> list[str]:
    """Markdown rows: each cv arm's OOF metrics, its fold ensemble's test metrics and its training minutes."""
    lines = ["| arm | OOF ROC AUC | OOF AP | OOF pAUC80 | fold-ensemble test ROC AUC | test AP | test pAUC80 "
             "| train min (all folds) |", "|---|---|---|---|---|---|---|---|"]
    for name, run in cvs.items():
        o, te = run.metrics["oof"], run.metrics["test"]
        minutes = train_minutes(sorted(p.parent for p in (run.path / "folds").glob("*/run.json")))
        lines.append(f"| {name} | {o['roc_auc']:.3f} | {o['average_precision']:.3f} | {o['pauc_80']:.4f} | "
                     f"{te['roc_auc']:.3f} | {te['average_precision']:.3f} | {te['pauc_80']:.4f} | {minutes:.1f} |")
    return lines


def fmt_ci(d: dict, m: str) -> str:
    """'+0.012 [-0.003, +0.027]': a paired difference of metric `m` with its interval."""
    x = d[m]
    return f"{x['diff']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]"
