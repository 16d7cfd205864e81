"""Decisive evidence: 5-fold grouped cross-validation of the notebook baseline and of the levers that
looked best in docs/results.md, paired on the same out-of-fold (OOF) images; then the fold ensemble,
with and without d4 test-time augmentation, against a single run on the split's test set.

    python benchmarks/cv.py [--dataset ham10000|isic2024-permissive] [--work bench-out] [--size 128] [--folds 5]
                            [--epochs 10] [--arms baseline,upgraded_cnn,resnet18,augment_medium,sampler_redraw,combination]

Everything that chooses (the combination, the lever it would recommend) looks at OOF results only,
never at test. Folds resume (finished ones are skipped), so an interrupted benchmark picks up where it
stopped. Writes docs/results.md (section "cv", or "cv-DATASET" for another data set than HAM10000). configs/scratch.yaml has one writer,
benchmarks/quality.py, which puts the candidate recipes against the baseline the same way (and
configs/recommended.yaml one, benchmarks/transfer.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lesionlab.benchmarking.arms import BASELINE
from lesionlab.benchmarking.datasets import DATASETS, add_dataset_option, prepared
from lesionlab.benchmarking.results import ROOT, git_commit, machine, update_section
from lesionlab.config import build_config, load_yaml
from lesionlab.metrics import bootstrap_ci
from lesionlab.runs import Run, is_complete_run, oof_arrays
from lesionlab.workflows.compare import COMPARE_METRICS, compare_runs, difference_cell
from lesionlab.workflows.cv import run_cv
from lesionlab.workflows.ensemble import build_ensemble
from lesionlab.workflows.report import md_table
from lesionlab.workflows.train import train_process

# the arms that looked best on the 50-malignant test set (docs/results.md, imbalance section)
ARMS: dict[str, dict] = {
    "baseline": {},
    "upgraded_cnn": {"model": "upgraded_cnn"},
    "resnet18": {"model": "resnet18"},
    "augment_medium": {"augment": "medium"},
    "sampler_redraw": {"sampler": "redraw"},
}
ARCHITECTURES = ("baseline", "upgraded_cnn", "resnet18")
TRAINING_LEVERS = ("augment_medium", "sampler_redraw")
SELECT = "pauc_80"  # ISIC 2024's metric; OOF pAUC was the winners' headline
DEFAULTS = {"size": 128, "folds": 5, "epochs": 10}


def value(m: dict, key: str, digits: int = 3) -> str:
    ci = m.get("ci95", {}).get(key)
    return f"{m[key]:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    add_dataset_option(ap)
    ap.add_argument("--size", type=int, default=DEFAULTS["size"], help="store side in pixels")
    ap.add_argument("--folds", type=int, default=DEFAULTS["folds"])
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs of every arm")
    ap.add_argument("--arms", default=",".join([*ARMS, "combination"]),
                    help="comma-separated: " + ", ".join([*ARMS, "combination"]))
    ap.add_argument("--seed", type=int, default=0, help="training and fold seed")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the paired comparisons")
    ap.add_argument("--bootstrap", type=int, default=2000, help="resamples of each run's own intervals")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS and a != "combination"]
    if unknown or "baseline" not in arms:
        raise SystemExit(f"--arms: unknown {unknown}; 'baseline' is required" if unknown else "--arms must include baseline")
    scaled = (any(getattr(args, k) != v for k, v in DEFAULTS.items())
              or set(arms) != {*ARMS, "combination"})
    started = time.time()
    ds = DATASETS[args.dataset]
    work = ds.work(Path(args.work))
    data = prepared(work, ds, args.size)
    prep_seconds = time.time() - started
    root = work / f"cv{args.size}-e{args.epochs}-k{args.folds}"
    base_values = {k: v for k, v in load_yaml(BASELINE).items() if k != "name"}
    base_values.update({"epochs": args.epochs, "seed": args.seed, "bootstrap": args.bootstrap, "data": str(data),
                        "n_malignant": ds.n_malignant})
    timings: dict[str, float] = {}
    cvs: dict[str, Run] = {}
    values_of: dict[str, dict] = {}

    def run_arm(name: str, values: dict) -> Run:
        t = time.time()
        cfg = build_config({**values, "name": name}, f"arm '{name}'")
        print(f"[{name}] {args.folds}-fold cv", flush=True)
        run_cv(cfg, root / name, args.folds, 1, args.seed, echo=lambda s: print("  " + s, flush=True))
        timings[name] = time.time() - t
        values_of[name] = values
        return Run.load(root / name)

    for name in [a for a in arms if a != "combination"]:
        cvs[name] = run_arm(name, {**base_values, **ARMS[name]})

    def oof_vs_base(name: str) -> dict:
        return compare_runs([cvs["baseline"]], [cvs[name]], n_boot=args.n_boot)["metrics"]

    paired = {name: oof_vs_base(name) for name in cvs if name != "baseline"}

    # the combination, from OOF only: the best architecture and every training lever that beat the baseline
    why = []
    if any(a in cvs for a in ARCHITECTURES[1:]) or any(lever in cvs for lever in TRAINING_LEVERS):
        archs = [a for a in ARCHITECTURES if a in cvs]
        best_arch = max(archs, key=lambda a: cvs[a].metrics["oof"][SELECT])
        why.append(f"architecture: {best_arch} (best OOF {SELECT} among {', '.join(archs)}: "
                   + ", ".join(f"{a} {cvs[a].metrics['oof'][SELECT]:.4f}" for a in archs) + ")")
        helpful = [lever for lever in TRAINING_LEVERS if lever in paired and paired[lever][SELECT]["diff"] > 0]
        why.append("training levers with a higher OOF " + SELECT + " than the baseline: "
                   + (", ".join(f"{lever} ({paired[lever][SELECT]['diff']:+.4f})" for lever in helpful) or "none"))
        combo = {**base_values, **ARMS[best_arch]}
        for lever in helpful:
            combo.update(ARMS[lever])
        same = next((n for n, v in values_of.items() if v == combo), None)
        if same:
            why.append(f"that combination is the arm '{same}' already run; not trained again")
        elif "combination" not in arms:
            why.append("that combination was not trained in this run (not in --arms)")
        else:
            cvs["combination"] = run_arm("combination", combo)
            paired["combination"] = oof_vs_base("combination")

    # test set: a single run of the baseline, its fold ensemble, and the fold ensemble with d4 TTA
    t = time.time()
    single_dir = root / "single-baseline"
    if not is_complete_run(single_dir):
        print("[single run] baseline trained once on the split's train pool", flush=True)
        train_process(build_config({**base_values, "name": "single baseline"}, "single"), single_dir)
    single = Run.load(single_dir)
    ens_d4_dir = root / "ensemble-baseline-d4"
    if not is_complete_run(ens_d4_dir):
        print("[ensemble] baseline folds with d4 TTA", flush=True)
        build_ensemble([root / "baseline"], ens_d4_dir, tta="d4", n_boot=args.bootstrap, seed=args.seed,
                       name="baseline folds, d4 TTA")
    ens_d4 = Run.load(ens_d4_dir)
    timings["single run + d4 ensemble"] = time.time() - t
    test_cmp = {
        "fold ensemble vs single run": compare_runs([single], [cvs["baseline"]], n_boot=args.n_boot),
        "fold ensemble + d4 TTA vs single run": compare_runs([single], [ens_d4], n_boot=args.n_boot),
        "fold ensemble + d4 TTA vs fold ensemble": compare_runs([cvs["baseline"]], [ens_d4], n_boot=args.n_boot),
    }

    # the lever this benchmark would recommend: from OOF only; an arm whose paired OOF interval on SELECT lies above zero
    candidates = [n for n, p in paired.items() if p[SELECT]["lo"] > 0]
    chosen = max(candidates, key=lambda n: cvs[n].metrics["oof"][SELECT]) if candidates else None

    # per-image vs grouped interval of the baseline's OOF metrics (what grouping changes)
    _, y, groups, probs, thr = oof_arrays(cvs["baseline"].oof())
    per_image = bootstrap_ci(y, probs[0], thr[0], n_boot=args.bootstrap, seed=args.seed)
    grouped = bootstrap_ci(y, probs[0], thr[0], n_boot=args.bootstrap, seed=args.seed, groups=groups)
    wall = time.time() - started

    # ------------------------------------------------------------ tables
    base_oof = cvs["baseline"].metrics["oof"]
    unit = base_oof.get("ci95_unit", "image")
    header = ["arm", "OOF ROC AUC", "OOF AP", "OOF pAUC80", "OOF F1", "fold-ensemble test AP", "fold-ensemble test pAUC80",
              "minutes"]
    rows = [[n, value(r.metrics["oof"], "roc_auc"), value(r.metrics["oof"], "average_precision"),
             value(r.metrics["oof"], "pauc_80", 4), value(r.metrics["oof"], "f1"),
             value(r.metrics["test"], "average_precision"), value(r.metrics["test"], "pauc_80", 4),
             f"{timings.get(n, 0) / 60:.1f}"] for n, r in cvs.items()]
    c_header = ["arm (B) vs baseline (A), OOF"] + [f"{m}: B - A [95% CI]" for m in COMPARE_METRICS]
    c_rows = [[n] + [difference_cell(p[m], 4) for m in COMPARE_METRICS] for n, p in paired.items()]
    t_header = ["on the test set (B vs A)"] + [f"{m}: B - A [95% CI]" for m in COMPARE_METRICS]
    t_rows = [[n] + [difference_cell(res["metrics"][m], 4) for m in COMPARE_METRICS] for n, res in test_cmp.items()]
    s_header = ["model (test set)", "ROC AUC", "AP", "pAUC80", "F1"]
    s_rows = [[label, *(value(run.metrics["test"], k, 4 if k == "pauc_80" else 3)
                        for k in ("roc_auc", "average_precision", "pauc_80", "f1"))]
              for label, run in (("single run (baseline, trained once)", single),
                                 (f"fold ensemble ({args.folds} baseline folds)", cvs["baseline"]),
                                 ("fold ensemble + d4 TTA", ens_d4))]
    distinguishable = [f"{n} ({m}: {p[m]['diff']:+.4f})" for n, p in paired.items() for m in COMPARE_METRICS
                       if p[m]["lo"] > 0 or p[m]["hi"] < 0]
    n_oof = base_oof["n_malignant"], base_oof["n_benign"]
    fold_draws = sorted({(r.info["draw"]["malignant"], r.info["draw"]["benign"])
                         for r in cvs["baseline"].fold_runs()})
    draw_text = "each fold's draw " + " or ".join(f"{m}:{b}" for m, b in fold_draws)
    test_m = cvs["baseline"].metrics["test"]
    scale_note = (f"**A scaled run, not the full protocol**: {args.size} px, {args.folds} folds, {args.epochs} epochs, "
                  f"arms {', '.join(arms)} (the full protocol: 128 px, 5 folds, 10 epochs, every arm incl. resnet18). "
                  if scaled else "The full protocol. ")
    lines = [
        f"## Cross-validation, ensembles and TTA on {ds.title} (`benchmarks/cv.py`)", "",
        scale_note + f"{ds.sentence}, the seed protocol's split ({ds.split_text()}); "
        f"{args.folds}-fold StratifiedGroupKFold over the split's train pool by the same groups (fold seed {args.seed}); "
        f"each fold trains the arm's config with an inner validation part of {ds.val[0]}:{ds.val[1]} drawn in whole "
        f"groups from the other folds. Baseline = the notebook's simple_cnn at 1:2 with draws of {ds.draw} "
        f"({draw_text}) for {args.epochs} epochs. "
        f"OOF = {n_oof[0]} malignant / {n_oof[1]} benign images ({base_oof.get('n_groups', '?')} groups), against "
        f"{test_m['n_malignant']} malignant on the test set. Intervals: 95%, bootstrap resampling whole {unit} groups "
        f"stratified by whether a group holds a malignant image ({args.bootstrap} resamples per run, {args.n_boot} "
        f"for paired comparisons). Machine: {machine()}; commit {git_commit()}. Wall time {wall / 60:.1f} min "
        f"(prepare {prep_seconds / 60:.1f} min).", "",
        f"Command: `python benchmarks/cv.py --dataset {args.dataset} " + " ".join(
            f"--{k.replace('_', '-')} {getattr(args, k)}" for k in ("size", "folds", "epochs", "arms", "n_boot", "bootstrap")) + "`", "",
        "### Each arm: out-of-fold metrics and its fold ensemble on test", "", md_table(header, rows, escape=False), "",
        f"### Paired on the same {sum(n_oof)} OOF images, against the baseline", "",
        "↑/↓: the paired 95% interval lies above/below zero. Thresholded metrics (F1) use each fold's threshold, "
        "chosen on its inner validation part.", "", md_table(c_header, c_rows, escape=False), "",
        "Distinguishable from the baseline on OOF: " + (", ".join(distinguishable) or "none") + ".", "",
        f"What grouping changes (baseline OOF, {args.bootstrap} resamples): AP interval per image "
        f"[{per_image['average_precision'][0]:.3f}, {per_image['average_precision'][1]:.3f}] vs whole groups "
        f"[{grouped['average_precision'][0]:.3f}, {grouped['average_precision'][1]:.3f}]; pAUC80 per image "
        f"[{per_image['pauc_80'][0]:.4f}, {per_image['pauc_80'][1]:.4f}] vs whole groups "
        f"[{grouped['pauc_80'][0]:.4f}, {grouped['pauc_80'][1]:.4f}].", "",
    ]
    if why:
        lines += ["### The combination (chosen on OOF only)", ""] + [f"- {w}" for w in why] + [""]
    lines += ["### Fold ensemble and TTA on the split's test set (baseline config)", "", md_table(s_header, s_rows, escape=False), "",
              md_table(t_header, t_rows, escape=False), "",
              "### Recommended lever", ""]
    if chosen:
        rec_oof, rec_test = cvs[chosen].metrics["oof"], cvs[chosen].metrics["test"]
        lines.append(f"Chosen from OOF only: **{chosen}** (OOF {SELECT} {value(rec_oof, SELECT, 4)}, paired OOF "
                     f"difference {difference_cell(paired[chosen][SELECT], 4)}); OOF AP {value(rec_oof, 'average_precision')}; its fold "
                     f"ensemble on test: AP {value(rec_test, 'average_precision')}, pAUC80 {value(rec_test, 'pauc_80', 4)}. "
                     "configs/scratch.yaml is chosen by benchmarks/quality.py.")
    else:
        lines.append(f"No arm's paired OOF {SELECT} interval against the baseline lies above zero, so the OOF evidence "
                     "does not support a lever.")
    lines += ["", "Time per arm: " + ", ".join(f"{n}: {s / 60:.1f} min" for n, s in timings.items())]
    path = update_section(ds.section("cv"), "\n".join(lines))
    print("\n".join(lines))
    print(f"{path}: cv section written")


if __name__ == "__main__":
    main()
