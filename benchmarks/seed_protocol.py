"""The seed notebook's protocol, 3 seeds per experiment, on a data set of `--dataset`.

ham10000: HAM10000 at 128 px -> val/test 50:1000 each, grouped by lesion -> configs/seed (SimpleCNN at 1:1,
1:2, 1:3, 1:5 with 293 malignant; UpgradedCNN at 1:2) -> report -> docs/results.md (section seed_protocol).
isic2024-permissive: the same experiments on real ISIC 2024 (SLICE-3D) crops, the notebook's own kind of
image, with the counts the release allows: val/test 30:1000, training draws of every malignant crop of the
train pool (175) -> section seed_protocol-isic2024-permissive, with the notebook's numbers beside.

    python benchmarks/seed_protocol.py [--dataset ham10000|isic2024-permissive] [--work bench-out]
        [--seeds 0,1,2] [--epochs N] [--size 128]

Complete runs are skipped, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lesionlab.benchmarking.datasets import DATASETS, add_dataset_option, prepared
from lesionlab.benchmarking.results import ROOT, command_line, git_commit, machine, update_section
from lesionlab.runs import find_runs
from lesionlab.workflows.report import build_report, group_runs, md_table, notebook_line, summary_rows
from lesionlab.workflows.sweep import read_sweep, run_sweep
from lesionlab.workflows.train import train_process

# the notebook's own test lines (ISIC 2024 crops, one run each, 293 malignant per draw, val/test 50:1000):
# F1, precision, recall
NOTEBOOK_TEST = {"simple_cnn 1:1": (0.301, 0.187, 0.780), "simple_cnn 1:2": (0.455, 0.337, 0.700),
                 "simple_cnn 1:3": (0.390, 0.329, 0.480), "simple_cnn 1:5": (0.409, 0.442, 0.380),
                 "upgraded_cnn 1:2": (0.351, 0.260, 0.540)}


def beside_the_notebook(groups: dict) -> list[str]:
    """Markdown: each experiment's test F1 / precision / recall (mean ± sd over seeds) beside the notebook's."""
    def ms(values: list[float], digits: int = 3) -> str:
        return f"{np.mean(values):.{digits}f}" + (f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else "")

    lines = ["| experiment | notebook test F1 / precision / recall | lesionlab test F1 | precision | recall | ROC AUC | "
             "pAUC80 |", "|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        nb = NOTEBOOK_TEST.get(name)
        cells = [ms([r.metrics["test"][k] for r in runs], 4 if k == "pauc_80" else 3)
                 for k in ("f1", "precision", "recall", "roc_auc", "pauc_80")]
        lines.append(f"| {name} | {' / '.join(f'{v:.3f}' for v in nb) if nb else '-'} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    add_dataset_option(ap)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    ap.add_argument("--size", type=int, default=128, help="store side in pixels (the protocol's: 128)")
    args = ap.parse_args()
    ds = DATASETS[args.dataset]
    work = ds.work(Path(args.work))
    t0 = time.time()
    data = prepared(work, ds, args.size)
    sweep_file = ROOT / "configs" / "seed" / "sweep.yaml"
    overrides = {"measure_compute": True, "n_malignant": ds.n_malignant, **({"epochs": args.epochs} if args.epochs else {})}
    seeds = [int(s) for s in args.seeds.split(",")]
    runs_dir = work / ("seed-runs" if args.size == 128 else f"seed-runs{args.size}")
    planned = [p for p in read_sweep(sweep_file, data=str(data), out=str(runs_dir), overrides=overrides)
               if p.config.seed in seeds]
    result = run_sweep(planned, lambda cfg, folder: train_process(cfg, folder))
    if result["failed"]:
        raise SystemExit(f"failed runs: {result['failed']}")
    wall = time.time() - t0
    build_report(runs_dir, work / "seed-report", title=f"Seed protocol on {ds.title}")
    runs = [r for r in find_runs(runs_dir) if r.path in {p.folder for p in planned}]
    groups = group_runs(runs)
    header, rows = summary_rows(groups)
    scaled = args.size != 128 or args.epochs is not None or len(seeds) < 3
    command = command_line("seed_protocol", args, ap)
    lines = [f"## Seed protocol on {ds.title} (`benchmarks/seed_protocol.py`)", "",
             ("**A scaled run, not the whole protocol** (which is 128 px, seeds 0,1,2 and the configs' epochs). " if scaled
              else "")
             + f"{ds.sentence} at {args.size}x{args.size}, {ds.split_text()}; training draws of {ds.draw}; configs/seed "
             f"({planned[0].config.epochs} epochs, Adam lr 1e-4, BCE, checkpoint kept on val loss, threshold 0.5); "
             f"seeds {args.seeds}. Command: `{command}`. Machine: {machine()}; commit {git_commit()}. Summed run time "
             f"{sum(r.info['wall_seconds'] for r in runs) / 60:.1f} min (this invocation {wall / 60:.1f} min).", "",
             "### Summary (test set; mean ± sd over seeds)", "", md_table(header, rows, escape=False), "",
             "### Per experiment, as in the notebook", ""]
    for name, members in groups.items():
        lines.append(f"**{name}**")
        lines.append("")
        lines.append("```")
        for r in members:
            lines.append(f"seed {r.seed}: " + notebook_line("Val", r.metrics["val"]))
            lines.append(f"seed {r.seed}: " + notebook_line("Test", r.metrics["test"]))
        lines.append("```")
        speed = [r.info["speed"] for r in members]
        lines.append(f"training {sum(s['train_img_s'] for s in speed) / len(speed):.1f} img/s, pure compute "
                     f"{sum(s['compute_img_s'] for s in speed) / len(speed):.1f} img/s, loop/compute "
                     + ", ".join(f"{s['loop_vs_compute']:.2f}" for s in speed)
                     + f"; best epochs {', '.join(str(r.info['best_epoch']) for r in members)}; wall "
                     + ", ".join(f"{r.info['wall_seconds'] / 60:.1f}" for r in members) + " min")
        lines.append("")
    if ds.key == "ham10000":
        lines.append("The notebook (ISIC 2024 crops, one run each) reported test F1 0.301 / 0.455 / 0.390 / 0.409 for "
                     "SimpleCNN at 1:1 / 1:2 / 1:3 / 1:5 and 0.351 for UpgradedCNN at 1:2; the data differ (HAM10000 is "
                     "dermoscopy with 18% malignant images, ISIC 2024 is 3D-TBP crops with 0.1%), so only the protocol "
                     "is reproduced, not the numbers.")
    else:
        n_pos = runs[0].info["draw"]["malignant"]
        lines += ["### Beside the notebook's own numbers (same kind of images)", "",
                  "The notebook: one run per experiment on the full ISIC 2024 training data (293 malignant crops per "
                  f"draw, val/test 50:1000); here: mean ± sd over seeds {args.seeds}, draws of {n_pos} malignant crops "
                  f"and val/test {ds.val[0]}:{ds.val[1]}. F1, precision and recall depend on the share of malignant "
                  f"images in the test set ({ds.test[0] / sum(ds.test):.1%} here against {50 / 1050:.1%} in the "
                  "notebook) and on 30 or 50 malignant test images; ROC AUC and pAUC80 do not depend on that share.",
                  "", *beside_the_notebook(groups)]
    path = update_section(ds.section("seed_protocol"), "\n".join(lines))
    print("\n".join(lines))
    print(f"{path}: section {ds.section('seed_protocol')} written; report in {work / 'seed-report'}")


if __name__ == "__main__":
    main()
