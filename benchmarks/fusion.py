"""Metadata and fusion: image-only (a cv run), metadata-only, late fusion and stacked fusion on
HAM10000, with out-of-fold and test metrics and paired intervals over whole lesions; and the time
and peak memory of the tabular model at ISIC 2024 size on the stand-in.

    python benchmarks/fusion.py [--data DATA_DIR] [--image CV_DIR] [--isic-n 401059] [--skip-isic]

--data: a prepared HAM10000 store with its split (default: bench-out/ham64, prepared at 64 px with the
50:1000 / 50:1000 split of seed 0 that the cv benchmark uses; metadata-only does not look at pixels).
--image: a cv run folder on that store and split; without it the image-only and fusion arms are skipped
and the section says so. Writes docs/results.md (section "fusion"). Run it under the shared lock:
    flock /tmp/lesionlab-bench.lock python benchmarks/fusion.py ...
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lesionlab.benchmarking.process import measure
from lesionlab.benchmarking.results import ROOT, git_commit, ham10000, machine, update_section
from lesionlab.metrics import bootstrap_ci, compute_metrics
from lesionlab.runs import Run
from lesionlab.workflows.compare import difference_cell

LESIONLAB = [sys.executable, "-m", "lesionlab"]
KEYS = ("roc_auc", "pauc_80", "average_precision")
LABEL = {"roc_auc": "ROC AUC", "pauc_80": "pAUC80", "average_precision": "AP"}


def run(cmd: list[str], log: list[str] | None = None, name: str = "", **kw):
    print(f"== {name or cmd[3]}: {' '.join(map(str, cmd))}", flush=True)
    m = measure([str(c) for c in cmd], **kw)
    print(m.output[-3000:], flush=True)
    if m.returncode:
        raise SystemExit(f"{name}: exit {m.returncode}")
    if log is not None:
        log.append(f"| {name} | {m.seconds:.1f} s | {m.peak_process_mib:.0f} MiB | {m.peak_tree_mib:.0f} MiB |")
    return m


def ham_store(work: Path) -> Path:
    data = work / "ham64"
    if not (data / "split.json").exists():
        run(LESIONLAB + ["prepare", ham10000(), "--out", data, "--size", "64"], name="prepare HAM10000 at 64 px")
        run(LESIONLAB + ["split", data, "--val", "50:1000", "--test", "50:1000", "--seed", "0"], name="split")
    return data


def _arm(oof: pd.DataFrame, preds: pd.DataFrame, threshold: float | None = None) -> dict:
    """Metrics of one arm from its out-of-fold and val/test probabilities (ids as index)."""
    out = {}
    for side, frame in (("oof", oof), ("test", preds[preds["split"] == "test"])):
        y, p = frame["label"].to_numpy(), frame["prob"].to_numpy()
        m = compute_metrics(y, p, threshold if threshold is not None else 0.5)
        ci = bootstrap_ci(y, p, 0.5, n_boot=1000, seed=0)
        out[side] = {k: (m[k], ci[k]) for k in KEYS}
    return out


def tabular_arm(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    run = Run.load(run_dir)
    return run.oof().set_index("id"), run.predictions().set_index("id"), run.info


def image_arm(cv_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    run = Run.load(cv_dir)
    oof = run.oof()
    prob = oof.groupby("id")["prob"].mean()  # mean over repeats, each out of fold
    first = oof.drop_duplicates("id").set_index("id")
    oof = first.assign(prob=prob.reindex(first.index))
    return oof, run.predictions().drop_duplicates("id").set_index("id")


def ham_part(args, work: Path) -> list[str]:
    from lesionlab.metrics import paired_bootstrap

    data = Path(args.data) if args.data else ham_store(work)
    runs = work / "fusion-runs"
    flags = ["--bootstrap", str(args.n_boot), "--seed", "0"]
    arms: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    meta_dir = runs / "metadata-only"
    if not (meta_dir / "metrics.json").exists():
        shutil.rmtree(meta_dir, ignore_errors=True)
        run(LESIONLAB + ["tabular", "--data", data, "--out", meta_dir] + flags, name="metadata-only")
    oof, preds, info = tabular_arm(meta_dir)
    arms["metadata only (LightGBM)"] = (oof, preds)
    dropped = info["features"]["dropped"]
    skip_reason = ""
    if args.image:
        cv = Path(args.image)
        arms["image only (cv)"] = image_arm(cv)
        for name, folder, fusion in (("late fusion (rank average)", "late", "late"), ("stacked fusion", "stacked", "stack")):
            out, extra = runs / folder, ["--fusion", fusion]
            if not (out / "metrics.json").exists():
                shutil.rmtree(out, ignore_errors=True)
                run(LESIONLAB + ["tabular", "--data", data, "--out", out, "--image", cv] + extra + flags, name=name)
            o, p, _ = tabular_arm(out)
            arms[name] = (o, p)
    else:
        skip_reason = ("no cv run was given (--image CV_DIR): the image-only, late and stacked arms were not run; "
                       "the cross-validation command is on another branch")
        print(f"skipped image arms: {skip_reason}", flush=True)

    groups = oof["group"]
    lines = ["| arm | OOF ROC AUC | OOF pAUC80 | OOF AP | test ROC AUC | test pAUC80 | test AP |", "|---|---|---|---|---|---|---|"]
    for name, (o, p) in arms.items():
        m = _arm(o, p)
        cells = [f"{m[s][k][0]:.3f} [{m[s][k][1][0]:.3f}, {m[s][k][1][1]:.3f}]" if k != "pauc_80" else
                 f"{m[s][k][0]:.4f} [{m[s][k][1][0]:.4f}, {m[s][k][1][1]:.4f}]" for s in ("oof", "test") for k in KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pairs_lines, verdicts = [], []
    if "image only (cv)" in arms:
        base = "image only (cv)"
        pairs_lines = ["| B - A | set | ROC AUC | pAUC80 | AP |", "|---|---|---|---|---|"]
        for name in [a for a in arms if a != base]:
            for side in ("oof", "test"):
                if side == "oof":
                    a, b = arms[base][0], arms[name][0]
                    ids = b.index.intersection(a.index)
                    g = groups.reindex(ids).to_numpy()
                else:
                    a, b = (arms[base][1][arms[base][1]["split"] == "test"], arms[name][1][arms[name][1]["split"] == "test"])
                    ids = b.index.intersection(a.index)
                    g = np.asarray(ids)  # test groups: the split's keys are not in predictions.csv; images as groups
                    keys = _test_groups(data, ids)
                    g = keys if keys is not None else g
                # ranking metrics only: the 0.5 thresholds are not used
                res = paired_bootstrap(b.loc[ids, "label"].to_numpy(), a.loc[ids, "prob"].to_numpy(),
                                       b.loc[ids, "prob"].to_numpy(), 0.5, 0.5, KEYS, n_boot=args.n_boot, seed=0, groups=g)
                cells = [difference_cell(res[k], 4) for k in KEYS]
                pairs_lines.append(f"| {name} - image only | {side} ({len(ids)} images) | " + " | ".join(cells) + " |")
                if side == "oof" and "fusion" in name:
                    met = all(res[k]["lo"] > 0 for k in ("roc_auc", "pauc_80"))
                    verdicts.append(f"{name}: {'met' if met else 'NOT met'} (OOF ROC AUC {res['roc_auc']['diff']:+.4f} "
                                    f"[{res['roc_auc']['lo']:+.4f}, {res['roc_auc']['hi']:+.4f}], pAUC80 "
                                    f"{res['pauc_80']['diff']:+.4f} [{res['pauc_80']['lo']:+.4f}, {res['pauc_80']['hi']:+.4f}])")
    text = [
        "### HAM10000", "",
        f"Store `{data}` ({info['split_file']} sha256 {info['split_sha256'][:12]}, grouped by {info['group']}); "
        f"train pool {info['draw']['pool_malignant']} malignant / {info['draw']['pool_benign']} benign, "
        f"val and test 50:1000. Metadata-only: `lesionlab tabular --data DATA --out RUN --bootstrap {args.n_boot}` "
        f"(LightGBM {info['engine']['version']}, {info['folds']['k']} folds of {info['folds']['source']}, features "
        f"{', '.join(info['features']['metadata'])}; refused automatically: "
        + ", ".join(f"{c}" for c, r in dropped.items() if _refused(r))
        + "; also dropped: " + ", ".join(f"{c} ({r})" for c, r in dropped.items() if not _refused(r))
        + f"). Wall {info['wall_seconds']:.0f} s.", "",
        "Metrics with 95% stratified bootstrap intervals over images (OOF = the train pool, each image scored by "
        "the fold model that did not see it):", "", *lines, ""]
    if pairs_lines:
        cv_info = Run.load(args.image).info
        text += [f"Image-only: the cv run `{args.image}` ({cv_info.get('name')}, {cv_info.get('folds')} folds, "
                 f"{cv_info.get('repeats', 1)} repeat(s); OOF = its oof.csv, test = its fold ensemble). Fusions use its "
                 "OOF scores for the train pool and its fold-ensemble scores for val/test, and its fold assignment.", "",
                 "Paired differences against image-only, 95% interval from a bootstrap over whole lesions "
                 f"({args.n_boot} resamples; ↑ = above zero):", "", *pairs_lines, "",
                 "Goal (fused beats image-only with a paired 95% interval above zero on OOF ROC AUC and pAUC80): "
                 + "; ".join(verdicts) + ".", ""]
    if skip_reason:
        text += [f"Not run: {skip_reason}. With a cv run on the same store and split: "
                 "`python benchmarks/fusion.py --data DATA_DIR --image CV_DIR`.", ""]
    return text


def _refused(reason: str) -> bool:
    return reason.startswith("label-derived") or reason == "equal to the label"


def _test_groups(data: Path, ids) -> np.ndarray | None:
    from lesionlab.data.splits import load_split
    from lesionlab.data.store import Store

    store = Store.open(data)
    split = load_split(store)
    keys = split.group_keys(store.table)
    return pd.Series(keys, index=store.table["id"].astype(str)).reindex(ids).to_numpy()


# ---------------------------------------------------------------- ISIC 2024 size


def features_only(data: str) -> None:
    """Child process: feature engineering alone (read the store's metadata, select, build), timed."""
    from lesionlab.data.splits import load_split
    from lesionlab.data.store import Store
    from lesionlab.tabular import features as feat
    from lesionlab.tabular.column_guard import select_columns
    from lesionlab.tabular.command import read_metadata

    t0 = time.perf_counter()
    store = Store.open(data)
    split = load_split(store)
    table = read_metadata(store)
    t_read = time.perf_counter() - t0
    pos = split.positions(store.table, "train")
    y = store.table["label"].to_numpy()[pos]
    cols = [c for c in table.columns if c != "id"]
    kinds = feat.column_kinds(table, cols)
    train = table.iloc[pos].reset_index(drop=True)
    sel = select_columns(train[cols], y, kinds, None)
    spec = feat.make_spec(train, sel.columns, kinds, image=False)
    X = feat.build_features(train, spec)
    t_all = time.perf_counter() - t0
    print(json.dumps({"rows": len(train), "inputs": X.shape[1], "read_s": round(t_read, 1),
                      "features_s": round(t_all - t_read, 1), "total_s": round(t_all, 1)}))


def isic_part(args, work: Path) -> list[str]:
    n = args.isic_n
    base = work / f"isic{n}"
    raw, data, out = base / "raw", base / "data8", base / "tabular"
    rows: list[str] = []
    if not (raw / "train-metadata.csv").exists():
        shutil.rmtree(raw, ignore_errors=True)
        run([sys.executable, ROOT / "benchmarks" / "make_isic2024_fixture.py", "--n", n, "--out", raw,
             "--crop-px", args.isic_crop_px], rows, name=f"write the {n:,}-row stand-in (crops {args.isic_crop_px} px)")
    if not (data / "split.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        run(LESIONLAB + ["prepare", raw, "--out", data, "--size", "8"], rows, name="prepare at 8 px (needed for a store)")
        run(LESIONLAB + ["split", data, "--val", args.isic_split, "--test", args.isic_split, "--group", "patient_id"], rows,
            name="split by patient")
    m = run([sys.executable, __file__, "--features-only", data], rows, name="feature engineering alone")
    fe = json.loads(m.output.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["tabular", "--data", data, "--out", out, "--bootstrap", "200"] + (
        ["--neg-ratio", str(args.isic_neg_ratio)] if args.isic_neg_ratio else [])
    run(LESIONLAB + cmd, rows, name="tabular: features + 5-fold training + val/test")
    info = Run.load(out).info
    preds = base / "predict.csv"
    preds.unlink(missing_ok=True)
    run(LESIONLAB + ["predict", out, raw / "train-metadata.csv", "--out", preds], rows,
        name=f"predict all {n:,} rows (features over their patients)")
    n_pred = sum(1 for _ in open(preds)) - 1
    sec = info["seconds"]
    return ["### ISIC 2024 size (timing only: the stand-in's values are random, so no quality claim)", "",
            f"Stand-in from `benchmarks/make_isic2024_fixture.py --n {n}` (55 columns, 1,042 patients, 393 positives"
            + (", the full 401,059 rows" if n == 401059 else f"; {n:,} rows, a smaller stand-in than the full 401,059")
            + f"; crops of {args.isic_crop_px} px: the metadata are the generator's whatever the crop size, and the "
            f"tabular steps never decode a crop; val and test {args.isic_split} by patient"
            + f"). `lesionlab {' '.join(str(c) for c in cmd).replace(str(base) + '/', '')}`: {fe['inputs']} model inputs "
            f"({len(info['features']['recipe'])} recipe features, per-patient z-scores, counts), "
            f"{info['folds']['k']} folds, rounds {info['folds']['best_iterations']}, "
            f"{info['engine']['threads']} threads. Each step a separate process; peak RSS sampled every 0.2 s.", "",
            "| step | wall | peak RSS, largest process | peak RSS, process tree |", "|---|---|---|---|", *rows, "",
            f"- feature engineering alone: {fe['rows']:,} train-pool rows, read {fe['read_s']} s + build "
            f"{fe['features_s']} s; inside the tabular run: features {sec['features']} s (all sides), training "
            f"{sec['train']} s, val/test scoring {sec['predict_val_test']} s.",
            f"- predict: {n_pred:,} rows scored from the ISIC 2024 csv (metadata only, no image decoding for a "
            "metadata-only run).", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--data", default=None, help="prepared HAM10000 store with a split (default: WORK/ham64)")
    ap.add_argument("--image", default=None, help="cv run folder on that store and split")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--isic-n", type=int, default=401059, help="rows of the ISIC 2024 stand-in")
    ap.add_argument("--isic-neg-ratio", type=float, default=None, help="--neg-ratio for the ISIC-size run")
    ap.add_argument("--isic-split", default="50:1000", help="val and test MALIGNANT:BENIGN of the stand-in's split")
    ap.add_argument("--isic-crop-px", default="110:151", help="crop sides of the stand-in (the metadata do not depend "
                    "on them; the tabular steps never decode the crops)")
    ap.add_argument("--skip-isic", action="store_true")
    ap.add_argument("--skip-ham", action="store_true")
    ap.add_argument("--features-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.features_only:
        features_only(args.features_only)
        return
    work = Path(args.work)
    t0 = time.time()
    body = ["## Metadata and fusion (`benchmarks/fusion.py`)", "",
            f"Machine: {machine()}; commit {git_commit()}. Command: `python benchmarks/fusion.py "
            + " ".join(a for a in sys.argv[1:]) + "`.", ""]
    if not args.skip_ham:
        body += ham_part(args, work)
    if not args.skip_isic:
        body += isic_part(args, work)
    body.append(f"Benchmark wall time {((time.time() - t0) / 60):.1f} min.")
    update_section("fusion", "\n".join(body))
    print("docs/results.md: fusion section written")


if __name__ == "__main__":
    main()
