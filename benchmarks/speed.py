"""lesionlab against the plain pipeline a notebook would write, measured in one run on the same data
and models, reported as ratios (this machine is shared and noisy; ratios measured together hold).

    python benchmarks/speed.py [--source ../shared/data/ham10000] [--work bench-out/speed] [--epochs 3] [--device cpu]
        [--models simple_cnn,upgraded_cnn] [--tag T]

1. training img/s: lesionlab's loop vs benchmarks/plain_pipeline.py (PIL decode + resize in
   __getitem__, fp32, DataLoader defaults), simple_cnn and upgraded_cnn, same 1:2 draw and seed;
   validation metrics after the same epochs, to show the speed costs nothing
2. the loop vs the model's pure compute on the same batches (recorded by every run)
3. `prepare` img/s vs single-thread decode + resize with the fastest decoder here
4. `predict` img/s from raw JPEGs
Writes docs/results.md, section "speed-<device>" (with --tag T, "speed-<device>-T").
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lesionlab.benchmarking.results import ROOT, git_commit, machine, update_section
from lesionlab.data.images import decode_resize
from lesionlab.data.parallel import cpu_count
from lesionlab.data.sampling import draw_training_set
from lesionlab.data.sources import read_source
from lesionlab.data.splits import load_split, make_split, save_split, split_path
from lesionlab.data.store import Store, prepare

LESIONLAB = [sys.executable, "-m", "lesionlab"]


def single_thread_decode(paths: list[Path], size: int = 128) -> dict[str, float]:
    """img/s of decode + resize from bytes in memory, one thread: PIL, and libjpeg-turbo via simplejpeg."""
    from PIL import Image

    blobs = [p.read_bytes() for p in paths]
    out = {}

    def pil(data):
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (size, size))
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    candidates = {"PIL": pil}
    try:
        import simplejpeg  # noqa: F401

        candidates["simplejpeg (lesionlab's decoder)"] = lambda data: decode_resize(data, size)
    except ImportError:
        pass
    for name, fn in candidates.items():
        fn(blobs[0])
        t0 = time.perf_counter()
        for b in blobs:
            fn(b)
        out[name] = len(blobs) / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "ham10000"))
    ap.add_argument("--work", default=str(ROOT / "bench-out" / "speed"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="simple_cnn,upgraded_cnn", help="seed CNNs or timm names, e.g. tf_efficientnet_lite0")
    ap.add_argument("--tag", default="", help="suffix of the results section (runs of other models beside the default)")
    ap.add_argument("--precision-epochs", type=int, default=1, help="epochs of the fp32 vs bf16 comparison (0: skip it)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = read_source(args.source)
    root = Path(src.reader.root)

    # 3. prepare vs single-thread decode
    decode = single_thread_decode([root / loc for loc in src.table["locator"][:3000]])
    data = work / "data128"
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.perf_counter()
    prepare(src, data, size=128, workers=cpu_count())
    prepare_img_s = len(src.table) / (time.perf_counter() - t0)
    store = Store.open(data)
    save_split(make_split(store, (50, 1000), (50, 1000), seed=0), split_path(data))

    # the same draw lesionlab will make, as files for the plain pipeline
    split = load_split(store)
    labels = store.table["label"].to_numpy()
    draw = draw_training_set(labels, split.positions(store.table, "train"), "1:2", 293, seed=0)
    paths = (str(root) + "/" + store.table["locator"]).to_numpy()
    pd.DataFrame({"path": paths[draw], "label": labels[draw]}).to_csv(work / "train.csv", index=False)
    val = split.positions(store.table, "val")
    pd.DataFrame({"path": paths[val], "label": labels[val]}).to_csv(work / "val.csv", index=False)

    rows = []
    for model in args.models.split(","):
        plain_json = work / f"plain_{model}.json"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_pipeline.py"), "--train", str(work / "train.csv"),
                        "--val", str(work / "val.csv"), "--model", model, "--epochs", str(args.epochs),
                        "--device", args.device, "--out", str(plain_json)], check=True)
        run = work / f"run_{model}"
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(LESIONLAB + ["train", "--data", str(data), "--out", str(run), "--model", model, "--ratio", "1:2",
                                    "--n-malignant", "293", "--epochs", str(args.epochs), "--seed", "0",
                                    "--bootstrap", "0", "--device", args.device, "--measure-compute"], check=True)
        plain = json.loads(plain_json.read_text())["epochs"]
        ours = pd.read_csv(run / "history.csv")
        info = json.loads((run / "run.json").read_text())
        # epoch 1 carries warm-up costs in both pipelines
        p_speed = float(np.median([e["img_s"] for e in plain[1:]] or [plain[0]["img_s"]]))
        o_speed = float(np.median(ours["train_img_s"].iloc[1:] if len(ours) > 1 else ours["train_img_s"]))
        last_p, last_o = plain[-1], ours.iloc[-1]
        rows.append([model, f"{p_speed:.1f}", f"{o_speed:.1f}", f"**{o_speed / p_speed:.2f}x**",
                     f"{info['speed']['compute_img_s']:.1f}", f"{info['speed']['loop_vs_compute']:.2f}",
                     f"{last_p['val_average_precision']:.3f} / {last_p['val_roc_auc']:.3f} / {last_p['val_loss']:.3f}",
                     f"{last_o['val_average_precision']:.3f} / {last_o['val_roc_auc']:.3f} / {last_o['val_loss']:.3f}",
                     f"{info['runtime']['precision']}, channels_last {info['runtime']['channels_last']}"])

    # bf16 autocast against fp32 on this device: speed and whether the metrics hold
    precision_rows = []
    for precision in ("32", "bf16") if args.precision_epochs else ():
        run = work / f"precision_{precision}"
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(LESIONLAB + ["train", "--data", str(data), "--out", str(run), "--model", "upgraded_cnn",
                                    "--ratio", "1:1", "--epochs", str(args.precision_epochs), "--seed", "0",
                                    "--bootstrap", "0", "--precision", precision, "--channels-last", "true",
                                    "--device", args.device], check=True)
        h = pd.read_csv(run / "history.csv").iloc[-1]
        precision_rows.append(f"| {precision} | {pd.read_csv(run / 'history.csv')['train_img_s'].median():.1f} | "
                              f"{h['val_average_precision']:.3f} | {h['val_roc_auc']:.3f} | {h['val_loss']:.4f} |")

    # 4. predict from raw JPEGs (a folder of the source's images)
    first = f"run_{args.models.split(',')[0]}"
    t0 = time.perf_counter()
    out = subprocess.run(LESIONLAB + ["predict", str(work / first), str(root / Path(src.table['locator'][0]).parent),
                                      "--out", str(work / "predict.csv"), "--overwrite", "--device", args.device],
                         check=True, capture_output=True, text=True)
    predict_seconds = time.perf_counter() - t0
    n_pred = len(pd.read_csv(work / "predict.csv"))


    import torch

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU: {machine()}"
    best_decoder = max(decode, key=decode.get)
    header = ["model", "plain img/s", "lesionlab img/s", "lesionlab / plain", "pure compute img/s",
              "loop / compute", f"plain val AP / AUC / loss (epoch {args.epochs})",
              f"lesionlab val AP / AUC / loss (epoch {args.epochs})", "lesionlab precision"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    lines = [f"## Speed on {args.device} (`benchmarks/speed.py`)", "",
             f"Device: {device_name}; commit {git_commit()}. Data: {len(src.table):,} JPEGs of {args.source} "
             f"(HAM10000, 200x150); training on the 1:2 draw (293 malignant, 586 benign), {args.epochs} epochs, seed 0; "
             f"img/s is the median of epochs 2..{args.epochs}, all measured in this one run.", "",
             "### 1-2. Training: lesionlab vs the plain pipeline, and the loop vs pure compute", "", *table, "",
             *([f"### bf16 autocast vs fp32 (upgraded_cnn, channels_last, 1:1 draw, {args.precision_epochs} epoch(s), "
                "seed 0)", "", "| precision | train img/s | val AP | val ROC AUC | val loss |", "|---|---|---|---|---|",
                *precision_rows, ""] if precision_rows else []),
             "### 3. Decoding", "",
             "- single thread, decode + resize to 128 from bytes in memory: " +
             ", ".join(f"{k} {v:.0f} img/s" for k, v in decode.items()),
             f"- `prepare` on {cpu_count()} cores (reading the files, decoding, resizing, writing the store): "
             f"{prepare_img_s:.0f} img/s = **{prepare_img_s / decode[best_decoder]:.2f}x** the fastest single thread "
             f"({best_decoder})", "",
             "### 4. Predict from raw JPEGs", "",
             f"- `lesionlab predict` on a folder of {n_pred:,} JPEGs (decode in workers + {args.models.split(',')[0]}): "
             f"{n_pred / predict_seconds:.0f} img/s including start-up ({predict_seconds:.1f} s); "
             f"the command's own figure: {out.stdout.strip().splitlines()[-1]}"]
    update_section(f"speed-{args.device.split(':')[0]}" + (f"-{args.tag}" if args.tag else ""), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
