"""ISIC 2024 size on one small machine: a 401,059-crop stand-in in the official layout, prepared,
split by patient, trained on a 1:5 draw and fully predicted, with wall time and peak memory.

    python benchmarks/scale.py [--work bench-out/isic2024] [--n 401059]

Writes docs/results.md (section "scale"). Each step is a `lesionlab` command in its own process,
as a user would run it; memory is sampled from /proc every 0.2 s.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lesionlab.benchmarking.process import measure
from lesionlab.benchmarking.results import ROOT, git_commit, machine, update_section

LESIONLAB = [sys.executable, "-m", "lesionlab"]


def step(name: str, cmd: list[str], log: list[str], **kw):
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    m = measure(cmd, **kw)
    print(m.output[-2000:], flush=True)
    log.append(f"| {name} | {m.seconds:.1f} s | {m.peak_process_mib:.0f} MiB | {m.peak_tree_mib:.0f} MiB | exit {m.returncode} |")
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=str(ROOT / "bench-out" / "isic2024"))
    ap.add_argument("--n", type=int, default=401059)
    ap.add_argument("--interrupt-after", type=float, default=60.0, help="seconds before the first prepare is stopped")
    args = ap.parse_args()
    work = Path(args.work)
    raw, data, run = work / "raw", work / "data128", work / "run-1to5"
    rows: list[str] = []
    if not (raw / "train-metadata.csv").exists():
        shutil.rmtree(raw, ignore_errors=True)
        step("write the 401,059-crop stand-in", [sys.executable, str(ROOT / "benchmarks" / "make_isic2024_fixture.py"),
                                                 "--n", str(args.n), "--out", str(raw)], rows)
    hdf5_gib = (raw / "train-image.hdf5").stat().st_size / 2**30
    csv_mib = (raw / "train-metadata.csv").stat().st_size / 2**20
    shutil.rmtree(data, ignore_errors=True)
    first = step("prepare, stopped by SIGINT", LESIONLAB + ["prepare", str(raw), "--out", str(data)], rows,
                 interrupt_after=args.interrupt_after)
    looks_complete = (data / "store.json").exists()
    again = step("prepare, run again (resumes)", LESIONLAB + ["prepare", str(raw), "--out", str(data)], rows)
    store = json.loads((data / "store.json").read_text())
    disk_gib = sum(p.stat().st_size for p in data.iterdir()) / 2**30
    split = step("split by patient, 50:1000 / 50:1000", LESIONLAB + ["split", str(data), "--group", "patient_id"], rows)
    shutil.rmtree(run, ignore_errors=True)
    step("train simple_cnn on a 1:5 draw, 1 epoch", LESIONLAB + [
        "train", "--data", str(data), "--out", str(run), "--ratio", "1:5", "--n-malignant", "all",
        "--epochs", "1", "--bootstrap", "200"], rows)
    info = json.loads((run / "run.json").read_text())
    preds = work / "predictions.csv"
    preds.unlink(missing_ok=True)
    predict = step("predict all crops from the HDF5", LESIONLAB + ["predict", str(run), str(raw / "train-metadata.csv"),
                                                                  "--out", str(preds)], rows)
    n_pred = sum(1 for _ in open(preds)) - 1
    prepared = store["n"]
    total_prepare = first.seconds + again.seconds
    lines = ["## ISIC 2024 size (`benchmarks/scale.py`)", "",
             f"A stand-in written by `benchmarks/make_isic2024_fixture.py` in the official layout: {args.n:,} crops "
             f"(train-metadata.csv with the 55 columns, {csv_mib:.0f} MiB; train-image.hdf5 of JPEG crops of "
             f"110-150 px, {hdf5_gib:.2f} GiB), ~1,042 patients, 393 positives. Machine: {machine()}; commit "
             f"{git_commit()}. Each step is a separate `lesionlab` process; memory sampled every 0.2 s "
             "(tree = all processes summed, counting pages shared between forked workers more than once).", "",
             "| step | wall | peak RSS, largest process | peak RSS, process tree | result |", "|---|---|---|---|---|",
             *rows, "",
             f"- prepare: {prepared:,} images at 128x128 in {total_prepare:.0f} s over the two runs "
             f"({prepared / total_prepare:.0f} img/s overall); the first run was stopped after {args.interrupt_after:.0f} s "
             f"and left a store that does not look complete (store.json present: {looks_complete}); the second resumed "
             f"from its finished chunks. Size on disk {disk_gib:.1f} GiB (uint8, 49,152 bytes an image).",
             f"- training started {info.get('setup_seconds', float('nan')):.1f} s after the command began its work "
             f"(open store, read and verify the split, draw {info['draw']['malignant']}:{info['draw']['benign']}, load "
             f"val/test); {info['speed']['train_img_s']:.0f} img/s training.",
             f"- predict: {n_pred:,} crops decoded from the HDF5 and scored in {predict.seconds:.0f} s "
             f"({n_pred / predict.seconds:.0f} img/s), peak {predict.peak_process_mib:.0f} MiB in the largest process.",
             f"- split: {split.output.strip().splitlines()[-1] if split.output.strip() else ''}"]
    update_section("scale", "\n".join(lines))
    print("docs/results.md: scale section written")


if __name__ == "__main__":
    main()
