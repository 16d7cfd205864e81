"""The imbalance toolkit on a data set of `--dataset`: the notebook's baseline against each lever alone,
then a combination chosen on validation, 3 seeds each, with paired comparisons on the test images.

    python benchmarks/imbalance.py [--dataset ham10000|isic2024-permissive] [--work bench-out] [--seeds 0,1,2]
        [--epochs 10] [--combo-epochs 25] [--size 128]

Everything is chosen on validation: the combination takes the best architecture and every training
lever whose mean validation average precision beat the baseline's. Complete runs are skipped, so an
interrupted benchmark resumes. Writes docs/results.md (section "imbalance", or "imbalance-DATASET");
the recipe
files are chosen elsewhere, on out-of-fold images: configs/scratch.yaml by benchmarks/quality.py,
configs/recommended.yaml by benchmarks/transfer.py.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from lesionlab.benchmarking.arms import BASELINE
from lesionlab.benchmarking.datasets import DATASETS, add_dataset_option, prepared
from lesionlab.benchmarking.results import ROOT, git_commit, machine, update_section
from lesionlab.config import build_config, load_yaml, to_dict
from lesionlab.metrics import ThresholdRule, compute_metrics
from lesionlab.runs import Run, is_complete_run
from lesionlab.workflows.compare import COMPARE_METRICS, compare_runs, difference_cell
from lesionlab.workflows.report import md_table, summarise, summary_cell
from lesionlab.workflows.train import train_process

# each lever alone, on top of the baseline
LEVERS: dict[str, dict] = {
    "pos_weight auto": {"pos_weight": "auto"},
    "focal loss": {"loss": "focal", "focal_alpha": 0.5, "focal_gamma": 2.0},
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "sampler redraw": {"sampler": "redraw"},
    "sampler balanced": {"sampler": "balanced"},
    "augment medium": {"augment": "medium"},
    "adamw + cosine": {"optimizer": "adamw", "weight_decay": 0.05, "scheduler": "cosine", "warmup_epochs": 1},
    "ema 0.99": {"ema": 0.99},
    "early stop pauc_80": {"early_stop": "pauc_80", "patience": 3},
}
ARCHITECTURES: dict[str, dict] = {
    "upgraded_cnn": {"model": "upgraded_cnn"},
    "resnet18 (timm, from scratch)": {"model": "resnet18"},
}
# levers that cannot be combined: keep the one that did better on validation
EXCLUSIVE = [("pos_weight auto", "focal loss"), ("sampler redraw", "sampler balanced")]


def run_arm(name: str, values: dict, data: Path, work: Path, seeds: list[int]) -> list[Run]:
    runs = []
    for seed in seeds:
        cfg = build_config({**values, "name": name, "data": str(data), "seed": seed}, f"arm '{name}'")
        folder = work / "imbalance-runs" / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "") / f"seed-{seed}"
        if not is_complete_run(folder):
            print(f"[{name}] seed {seed}", flush=True)
            train_process(cfg, folder)
        runs.append(Run.load(folder))
    return runs


def val_mean(runs: list[Run], metric: str = "average_precision") -> float:
    return float(np.mean([r.metrics["val"][metric] for r in runs]))


def choose_combination(base: list[Run], arms: dict[str, list[Run]], archs: dict[str, list[Run]], epochs: int,
                       n_malignant: int | str = 293) -> tuple[dict, list[str]]:
    """On validation only: the best architecture and every lever that beat the baseline."""
    why = []
    base_ap = val_mean(base)
    best_arch = max([("simple_cnn", base)] + list(archs.items()), key=lambda kv: val_mean(kv[1]))
    why.append(f"architecture: {best_arch[0]} (mean val AP {val_mean(best_arch[1]):.3f}; baseline {base_ap:.3f})")
    helpful = {n: val_mean(r) for n, r in arms.items() if val_mean(r) > base_ap}
    for a, b in EXCLUSIVE:
        if a in helpful and b in helpful:
            drop = a if helpful[a] < helpful[b] else b
            why.append(f"{a} and {b} both helped; kept the better on validation, dropped {drop}")
            helpful.pop(drop)
    values = dict(load_yaml(BASELINE))
    values.pop("name", None)
    values["epochs"] = epochs
    values["n_malignant"] = n_malignant
    values["model"] = best_arch[1][0].config["model"]
    for name in helpful:
        values.update(LEVERS[name])
    if "ema 0.99" in helpful:
        values["ema"] = 0.995  # a longer run: average over more steps
    if "early stop pauc_80" in helpful:
        values.update({"early_stop": "pauc_80", "patience": 6})
    why.append("levers that beat the baseline's mean val AP: " + (", ".join(
        f"{n} ({v:.3f})" for n, v in sorted(helpful.items(), key=lambda kv: -kv[1])) or "none"))
    return values, why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    add_dataset_option(ap)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the baseline and of every single-lever arm")
    ap.add_argument("--combo-epochs", type=int, default=25, help="epochs of the combination chosen on validation")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128, help="store side in pixels (the protocol's: 128; less for a smoke test)")
    args = ap.parse_args()
    ds = DATASETS[args.dataset]
    work, seeds = ds.work(Path(args.work)), [int(s) for s in args.seeds.split(",")]
    if args.size != 128:  # runs of another size are kept apart
        work = work / f"size{args.size}"
    started = time.time()
    data = prepared(work, ds, args.size)
    base_values = {k: v for k, v in load_yaml(BASELINE).items() if k != "name"}
    base_values.update(epochs=args.epochs, n_malignant=ds.n_malignant)

    timings: dict[str, float] = {}

    def timed(name: str, values: dict) -> list[Run]:
        t = time.time()
        runs = run_arm(name, values, data, work, seeds)
        timings[name] = sum(r.info["wall_seconds"] for r in runs)
        print(f"[{name}] done in {time.time() - t:.0f} s", flush=True)
        return runs

    baseline = timed("baseline", base_values)
    arms = {name: timed(name, {**base_values, **lever}) for name, lever in LEVERS.items()}
    archs = {name: timed(name, {**base_values, **a}) for name, a in ARCHITECTURES.items()}
    combo_values, why = choose_combination(baseline, arms, archs, args.combo_epochs, ds.n_malignant)
    combo = timed("combination", combo_values)
    wall = time.time() - started

    # -------- tables
    header = ["arm", "seeds", "val AP", "test AP", "test pAUC80", "test ROC AUC", "test F1"]
    rows = []
    everything = {"baseline": baseline, **arms, **archs, "combination": combo}
    for name, runs in everything.items():
        rows.append([name, str(len(runs)), f"{val_mean(runs):.3f}"] + [summary_cell(summarise(runs, m))
                                                                       for m in ("average_precision", "pauc_80", "roc_auc", "f1")])
    c_header = ["arm (B) vs baseline (A)"] + [f"{m}: B - A [95% CI]" for m in COMPARE_METRICS]
    c_rows, combo_result = [], None
    for name, runs in everything.items():
        if name == "baseline":
            continue
        res = compare_runs(baseline, runs, n_boot=args.n_boot)["metrics"]
        if name == "combination":
            combo_result = res
        c_rows.append([name] + [difference_cell(res[m]) for m in COMPARE_METRICS])

    # -------- thresholds and prevalence: no training, the baseline's own predictions
    t_header = ["threshold rule (chosen on val)", "threshold", "test precision", "test recall", "test F1",
                "expected precision at 0.098% (ISIC 2024)"]
    t_rows = []
    for rule_text in ("0.5", "val-f1", "sens:0.8", "sens:0.9", "sens:0.95"):
        rule = ThresholdRule.parse(rule_text)
        vals = []
        for r in baseline:
            val, test = r.predictions("val"), r.predictions("test")
            thr = rule.choose(val["label"].to_numpy(), val["prob"].to_numpy())
            m = compute_metrics(test["label"].to_numpy(), test["prob"].to_numpy(), thr, prevalence=0.00098)
            vals.append((thr, m["precision"], m["recall"], m["f1"], m["precision_at_prevalence"]))
        v = np.array(vals)
        t_rows.append([rule_text] + [f"{v[:, k].mean():.{p}f} ± {v[:, k].std(ddof=1):.{p}f}" for k, p in zip(range(5), (3, 3, 3, 3, 4))])

    verdict = "held" if combo_result and all(combo_result[m]["lo"] > 0 for m in ("average_precision", "pauc_80")) else "did not hold"
    combination = {**combo_values, "name": "combination"}
    cfg = build_config({**combination, "data": ""}, "combination")
    kept = {k: v for k, v in to_dict(cfg).items() if k in combination and k not in ("data",)}
    draw = baseline[0].info["draw"]
    n_test = sum(ds.test)
    lines = [f"## Imbalance levers on {ds.title} (`benchmarks/imbalance.py`)", "",
             (f"**A scaled run**: {args.size} px (the protocol's: 128). " if args.size != 128 else "")
             + f"{ds.sentence} at {args.size} px, the seed protocol's split ({ds.split_text()}); baseline = the "
             f"notebook's simple_cnn at 1:2 ({draw['malignant']} malignant, {draw['benign']} benign, Adam lr 1e-4, BCE, "
             f"no augmentation) for {args.epochs} epochs, checkpoint on val loss; each lever alone on top of it ({args.epochs} epochs); "
             f"the combination ({args.combo_epochs} epochs) chosen on validation only. Seeds {args.seeds}. "
             f"Machine: {machine()}; commit {git_commit()}. Time of the runs: "
             f"{sum(timings.values()) / 3600:.2f} h (this invocation {wall / 3600:.2f} h).", "",
             "### Each arm (mean ± sd over seeds)", "", md_table(header, rows, escape=False), "",
             f"### Paired comparison with the baseline on the same {n_test:,} test images",
             "", f"Seed-averaged metric on each side, stratified bootstrap ({args.n_boot} resamples); ↑/↓: the 95% "
             "interval lies above/below zero, otherwise it includes zero and the difference is not clear.", "",
             md_table(c_header, c_rows, escape=False), "",
             "### How the combination was chosen (validation only)", ""] + [f"- {w}" for w in why] + [
             "", "```yaml", yaml.safe_dump(kept, sort_keys=False).strip(), "```", "",
             f"Goal (test AP and pAUC80 above the baseline with a paired 95% interval above zero): **{verdict}**.", "",
             "### Thresholds and prevalence on the baseline's predictions (no retraining)", "",
             "The threshold is chosen on validation by each rule and applied to test; the last column is the "
             "precision expected at ISIC 2024's prevalence (0.098%) from the test sensitivity and specificity.", "",
             md_table(t_header, t_rows, escape=False), "",
             "### Time per arm (all seeds)", "",
             ", ".join(f"{n}: {s / 60:.1f} min" for n, s in timings.items())]
    path = update_section(ds.section("imbalance"), "\n".join(lines))
    print(f"{path}: imbalance section written; goal {verdict}")


if __name__ == "__main__":
    main()
