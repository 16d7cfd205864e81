"""The seed notebook's protocol on the development data, 3 seeds per experiment.

HAM10000 at 128 px -> val/test 50:1000 each, grouped by lesion -> configs/seed (SimpleCNN at 1:1,
1:2, 1:3, 1:5 with 293 malignant; UpgradedCNN at 1:2) -> report -> docs/results.md.

    python benchmarks/seed_protocol.py [--work bench-out] [--seeds 0,1,2] [--epochs N]

Complete runs are skipped, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import pandas as pd

from _results import ROOT, git_commit, ham10000, machine, update_section
from lesionlab.data.sources import read_source
from lesionlab.data.splits import make_split, save_split, split_path
from lesionlab.data.store import Store, prepare
from lesionlab.experiment import run_experiment
from lesionlab.report import build_report, group_runs, md_table, notebook_line, summary_rows
from lesionlab.runs import find_runs
from lesionlab.sweep import plan, run_sweep


def _same_images(data: Path, source: Path) -> bool:
    """Whether a store prepared earlier holds exactly the manifest's images, byte for byte. ../shared is
    copied afresh onto each machine, which changes the files' times and so the fingerprint that prepare
    compares; the md5 of every file, kept in the store's table from the manifest, says whether the bytes did."""
    if not (data / "store.json").exists() or not (data / "rows.csv").exists():
        return False
    rows = pd.read_csv(data / "rows.csv", dtype=str, keep_default_na=False)
    if not {"md5", "locator"} <= set(rows) or len(rows) != len(pd.read_csv(source / "manifest.csv", usecols=["path"])):
        return False
    return all(hashlib.md5((source / p).read_bytes()).hexdigest() == m for p, m in zip(rows["locator"], rows["md5"]))


def prepared_ham(work: Path, size: int = 128) -> Path:
    data = work / f"ham{size}"
    if not _same_images(data, ham10000()):
        prepare(read_source(ham10000()), data, size=size)
    store = Store.open(data)
    save_split(make_split(store, (50, 1000), (50, 1000), seed=0), split_path(data))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    args = ap.parse_args()
    work = Path(args.work)
    t0 = time.time()
    data = prepared_ham(work)
    sweep_file = ROOT / "configs" / "seed" / "sweep.yaml"
    overrides = {"measure_compute": True, **({"epochs": args.epochs} if args.epochs else {})}
    seeds = [int(s) for s in args.seeds.split(",")]
    planned = [p for p in plan(sweep_file, data=str(data), out=str(work / "seed-runs"), overrides=overrides)
               if p.config.seed in seeds]
    result = run_sweep(planned, lambda cfg, folder: run_experiment(cfg, folder))
    if result["failed"]:
        raise SystemExit(f"failed runs: {result['failed']}")
    wall = time.time() - t0
    runs_dir = work / "seed-runs"
    build_report(runs_dir, work / "seed-report", title="Seed protocol on HAM10000")
    runs = [r for r in find_runs(runs_dir) if r.path in {p.folder for p in planned}]
    groups = group_runs(runs)
    header, rows = summary_rows(groups)
    lines = ["## Seed protocol (`benchmarks/seed_protocol.py`)", "",
             f"HAM10000 at 128x128, val and test 50 malignant / 1000 benign each (grouped by lesion, split seed 0), "
             f"training draws of 293 malignant images; configs/seed ({planned[0].config.epochs} epochs, Adam lr 1e-4, "
             f"BCE, checkpoint kept on val loss, threshold 0.5); seeds {args.seeds}. Machine: {machine()}; "
             f"commit {git_commit()}. Summed run time {sum(r.info['wall_seconds'] for r in runs) / 60:.1f} min "
             f"(this invocation {wall / 60:.1f} min).", "",
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
    lines.append("The notebook (ISIC 2024 crops, one run each) reported test F1 0.301 / 0.455 / 0.390 / 0.409 for "
                 "SimpleCNN at 1:1 / 1:2 / 1:3 / 1:5 and 0.351 for UpgradedCNN at 1:2; the data differ (HAM10000 is "
                 "dermoscopy with 18% malignant images, ISIC 2024 is 3D-TBP crops with 0.1%), so only the protocol "
                 "is reproduced, not the numbers.")
    path = update_section("seed_protocol", "\n".join(lines))
    print(f"{path}: seed protocol section written; report in {work / 'seed-report'}")


if __name__ == "__main__":
    main()
