"""Test-time augmentation on finished cross-validations, without training again: each fold's checkpoint
scores its own out-of-fold images and the split's test images again under each TTA mode (data/tta.py: flip
averages the logits of the image and its mirror, d4 of its eight quarter turns and mirrors), through the fold
run's own predictor (`lesionlab predict FOLD_DIR --tta MODE`).

    python benchmarks/tta_rescore.py --cv NAME=CV_DIR [--cv NAME=CV_DIR ...] [--modes flip,d4] [--n-boot 1000]
        [--tag T] [--print-only]

Per cv: every mode paired with the plain scores on the same OOF images, pooled and per fold (`lesionlab compare
--per-fold`: the mean of the folds' own values), whole groups resampled; and the fold ensemble (the folds' mean
probability, as `lesionlab cv` forms it) on the test set, paired the same way. Rescoring without TTA reproduces
the stored OOF scores (their largest difference is printed: a check that the rescoring is the cv's own). A mode
is a config key (`tta`), so a recipe would take it on what OOF says; the test set is reported, never used to choose.
Writes docs/results.md (section "tta-rescore", with --tag T "tta-rescore-T").
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lesionlab.benchmarking.arms import fmt_ci
from lesionlab.benchmarking.results import command_line, git_commit, machine, named_paths, update_section
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store
from lesionlab.data.tta import check_mode
from lesionlab.metrics import compute_metric, paired_bootstrap
from lesionlab.runs import load_run
from lesionlab.runs.predictor import load_predictor

METRICS = ("roc_auc", "pauc_80")


def rescore(cv_dir: Path, modes: list[str]) -> dict:
    """mode -> OOF probabilities (in oof.csv's order) and the fold ensemble's test probabilities; with the OOF
    table, the test labels and groups, and the seconds each mode took."""
    cv = load_run(cv_dir, ("cv",))
    oof = cv.oof()
    if oof["repeat"].nunique() > 1:
        raise SystemExit(f"{cv_dir}: a cv of several repeats; rescore one of one repeat")
    store = Store.open(cv.config["data"])
    split = load_split(store, cv.config.get("split", ""))
    position = {i: k for k, i in enumerate(store.table["id"].astype(str))}
    test_pos = split.positions(store.table, "test")
    test_x = store.pixels(test_pos)
    out: dict = {"oof": oof, "test_y": store.table["label"].to_numpy()[test_pos],
                 "test_groups": split.group_keys(store.table)[test_pos], "prob": {}, "test": {}, "seconds": {}}
    for mode in ["none", *modes]:
        started = time.time()
        prob = np.full(len(oof), np.nan)
        test = []
        for fold_run in cv.fold_runs():
            fold = fold_run.info["plan"]["fold"]
            rows = np.flatnonzero(oof["fold"].to_numpy() == fold)
            predictor = load_predictor(fold_run.path, "cpu", tta=mode)
            prob[rows] = predictor.probabilities(store.pixels(np.array([position[i] for i in oof["id"].iloc[rows]])))
            test.append(predictor.probabilities(test_x))
        out["prob"][mode], out["test"][mode] = prob, np.mean(test, axis=0)
        out["seconds"][mode] = time.time() - started
        print(f"[{cv_dir.name}] {mode}: {out['seconds'][mode] / 60:.1f} min", flush=True)
    return out


def per_fold_mean(y: np.ndarray, prob: np.ndarray, folds: np.ndarray, metric: str) -> float:
    return float(np.mean([compute_metric(metric, y[folds == f], prob[folds == f]) for f in np.unique(folds)]))


def lines_for(name: str, cv_dir: Path, got: dict, modes: list[str], n_boot: int) -> list[str]:
    oof = got["oof"]
    y, groups, folds = oof["label"].to_numpy(), oof["group"].astype(str).to_numpy(), oof["fold"].to_numpy()
    plain = got["prob"]["none"]
    stored_gap = float(np.abs(plain - oof["prob"].to_numpy()).max())
    lines = [f"### {name}: `{cv_dir.name}` ({len(y)} OOF images, {int(y.sum())} malignant; test {len(got['test_y'])} "
             f"images, {int(got['test_y'].sum())} malignant)", "",
             f"Rescored without TTA, the largest difference from the stored OOF scores: {stored_gap:.1e}.", "",
             "| TTA | minutes (all folds, OOF + test) | OOF ROC AUC pooled / per fold | OOF pAUC80 pooled / per fold | "
             "vs none, ROC AUC per fold | vs none, pAUC80 per fold | vs none, ROC AUC pooled | vs none, pAUC80 pooled | "
             "test ROC AUC | test pAUC80 | vs none, test ROC AUC | vs none, test pAUC80 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ["none", *modes]:
        prob, test = got["prob"][mode], got["test"][mode]
        cells = [f"{compute_metric(m, y, prob):.4f} / {per_fold_mean(y, prob, folds, m):.4f}" for m in METRICS]
        test_cells = [f"{compute_metric(m, got['test_y'], test):.4f}" for m in METRICS]
        if mode == "none":
            paired = ["", "", "", "", "", ""]
        else:
            fold_d = paired_bootstrap(y, plain, prob, 0.5, 0.5, METRICS, n_boot, groups=groups, strata=folds)
            pool_d = paired_bootstrap(y, plain, prob, 0.5, 0.5, METRICS, n_boot, groups=groups)
            test_d = paired_bootstrap(got["test_y"], got["test"]["none"], test, 0.5, 0.5, METRICS, n_boot,
                                      groups=got["test_groups"])
            paired = [fmt_ci(fold_d, "roc_auc"), fmt_ci(fold_d, "pauc_80"), fmt_ci(pool_d, "roc_auc"),
                      fmt_ci(pool_d, "pauc_80"), fmt_ci(test_d, "roc_auc"), fmt_ci(test_d, "pauc_80")]
        lines.append(f"| {mode} | {got['seconds'][mode] / 60:.1f} | {cells[0]} | {cells[1]} | {paired[0]} | {paired[1]} | "
                     f"{paired[2]} | {paired[3]} | {test_cells[0]} | {test_cells[1]} | {paired[4]} | {paired[5]} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cv", action="append", required=True, metavar="NAME=CV_DIR",
                    help="a finished cross-validation (repeat for each)")
    ap.add_argument("--modes", default="flip,d4", help="TTA modes to rescore with, besides none")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tag", default="")
    ap.add_argument("--print-only", action="store_true", help="print the section; leave docs/results.md as it is")
    args = ap.parse_args()
    modes = [check_mode(m.strip()) for m in args.modes.split(",") if m.strip() and m.strip() != "none"]
    started = time.time()
    body = []
    cvs = named_paths(args.cv, "--cv", "CV_DIR")
    for name, cv_dir in cvs.items():
        body += ["", *lines_for(name, cv_dir, rescore(cv_dir, modes), modes, args.n_boot)]
    cmd = command_line("tta_rescore", args, ap, skip=("cv",)) + "".join(f" --cv {n}=CV_DIR" for n in cvs)
    lines = ["## Test-time augmentation on finished cross-validations (`benchmarks/tta_rescore.py`)"
             + (f", {args.tag}" if args.tag else ""), "",
             f"Command: `{cmd}` (code {git_commit()}); machine: {machine()}; wall {(time.time() - started) / 60:.1f} min. "
             "Each fold's checkpoint rescores its OOF images and the test images; paired intervals resample whole "
             "groups; per fold = the mean of the folds' own values, each fold resampled on its own.", *body]
    text = "\n".join(lines)
    if not args.print_only:
        update_section("tta-rescore" + (f"-{args.tag}" if args.tag else ""), text)
    print(text)


if __name__ == "__main__":
    main()
