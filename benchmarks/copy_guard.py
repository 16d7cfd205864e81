"""How well the leak guard (src/lesionlab/data/copy_guard.py) tells copies from distinct images, on every data set.

    python benchmarks/copy_guard.py [--size 128] [--work bench-out] [--seed 0] [--print-only]

The guard calls an image a copy of a validation/test image when one of two signatures is more similar than its bar
(texture NEAR_COPY, shape LOW_PASS_NEAR; both set on HAM10000). For each data set, prepared at --size with the
protocol's split (lesionlab.benchmarking.datasets):

- distinct images: each val/test image against the split's train pool without its own group (lesion, or patient
  where the data set has one): the most similar one's similarity per signature, and the share of val/test images
  the guard would call copies of a distinct image (false alarms: an extra store or a generator's output of such
  images is refused or thrown away);
- copies: each val/test image changed as a copy is (JPEG quality 75, 10% brighter, halved and enlarged again, and
  "generator-like": halved and enlarged, channel gains 1.05/0.97/1.0, +5 grey levels, Gaussian noise of sd 8) against
  the val/test images: the similarity to its own original per signature (1st percentile) and the share the guard
  catches;
- as another source: the train pool drawn as an extra store would be (`--extra-data`: every malignant image and two
  benign ones per malignant, seeds 0-2) against the val/test images: the draw's images the guard calls copies, each
  of which refuses the run unless `--extra-drop-copies` replaces it.

Writes docs/results.md (section "copy-guard"); --print-only writes nothing there.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from lesionlab.benchmarking.datasets import DATASETS, prepared
from lesionlab.benchmarking.results import ROOT, command_line, git_commit, machine, update_section
from lesionlab.data.copy_guard import LOW_PASS_NEAR, NEAR_COPY, find_copies, index_references, resized, shape_signatures, signatures
from lesionlab.data.sampling import draw_training_set
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store

SIGNATURES = {"texture": (signatures, NEAR_COPY), "shape": (shape_signatures, LOW_PASS_NEAR)}


def jpeg(images: np.ndarray, quality: int = 75) -> np.ndarray:
    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def halved(images: np.ndarray) -> np.ndarray:
    return resized(resized(images, images.shape[1] // 2), images.shape[1])


def generator_like(images: np.ndarray, seed: int) -> np.ndarray:
    x = halved(images).astype(np.float32) * np.array([1.05, 0.97, 1.0], np.float32) + 5
    x += np.random.default_rng(seed).normal(0, 8, x.shape).astype(np.float32)
    return x.round().clip(0, 255).astype(np.uint8)


def nearest_other_group(evals: np.ndarray, pool: np.ndarray, eval_groups: np.ndarray, pool_groups: np.ndarray,
                        chunk: int = 512) -> np.ndarray:
    """Per val/test image: the highest similarity to a pool image of another group (both given as signatures)."""
    best = []
    for start in range(0, len(evals), chunk):
        sim = evals[start:start + chunk] @ pool.T
        sim[eval_groups[start:start + chunk, None] == pool_groups[None, :]] = -1.0
        best.append(sim.max(1))
    return np.concatenate(best)


def measure(data: Path, seed: int) -> dict:
    store = Store.open(data)
    split, table = load_split(store), store.table
    groups = split.group_keys(table)
    ev = np.concatenate([split.positions(table, "val"), split.positions(table, "test")])
    pool = split.positions(table, "train")
    evals = store.pixels(ev)
    refs = index_references(evals)  # the val/test images' signatures, computed once for every pass below
    eval_sig = {"texture": refs[0], "shape": refs[1]}
    pool_images = store.pixels(pool)
    distinct = {name: nearest_other_group(eval_sig[name], fn(pool_images), groups[ev], groups[pool])
                for name, (fn, _) in SIGNATURES.items()}
    flagged = np.zeros(len(ev), bool)
    for name, (_, bar) in SIGNATURES.items():
        flagged |= distinct[name] > bar
    changes = {"JPEG quality 75": jpeg(evals), "10% brighter": (evals.astype(np.float32) * 1.1).clip(0, 255).astype(np.uint8),
               "halved and enlarged": halved(evals), "generator-like": generator_like(evals, seed)}
    copies = {}
    for change, images in changes.items():
        own = {name: np.einsum("ij,ij->i", fn(images), eval_sig[name]) for name, (fn, _) in SIGNATURES.items()}
        caught = len(find_copies(images, refs))
        copies[change] = {"own": own, "caught": caught / len(ev)}
    labels = table["label"].to_numpy()[pool]
    draws = [pool[draw_training_set(labels, np.arange(len(pool)), "1:2", "all", s)] for s in range(3)]
    as_source = [{"drawn": len(d), "copies": len(find_copies(store.pixels(d), refs))} for d in draws]
    return {"n_eval": len(ev), "n_pool": len(pool), "distinct": distinct, "false_alarms": float(flagged.mean()),
            "n_false": int(flagged.sum()), "copies": copies, "size": store.size, "as_source": as_source}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="image size the data sets are prepared at")
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--seed", type=int, default=0, help="seed of the generator-like copies' noise")
    ap.add_argument("--print-only", action="store_true", help="print the section; leave docs/results.md as it is")
    args = ap.parse_args()
    found = {ds.key: measure(prepared(ds.work(Path(args.work)), ds, args.size), args.seed) for ds in DATASETS.values()}

    lines = ["## The leak guard: copies against distinct images (`benchmarks/copy_guard.py`)", "",
             f"Command: `{command_line('copy_guard', args, ap)}` (code {git_commit()}); machine: {machine()}. Bars: "
             f"texture {NEAR_COPY}, shape {LOW_PASS_NEAR} (src/lesionlab/data/copy_guard.py, set on HAM10000).", "",
             "### Distinct images: each val/test image against the train pool's images of other groups", "",
             "| data set | val/test | pool | texture p99 / p99.9 / max | shape p99 / p99.9 / max | called copies |",
             "|---|---|---|---|---|---|"]
    for key, f in found.items():
        cells = [" / ".join(f"{v:.4f}" for v in (*np.quantile(f["distinct"][s], [0.99, 0.999]), f["distinct"][s].max()))
                 for s in SIGNATURES]
        lines.append(f"| {DATASETS[key].title} at {f['size']} px | {f['n_eval']} | {f['n_pool']} | {cells[0]} | "
                     f"{cells[1]} | {f['n_false']} ({100 * f['false_alarms']:.1f}%) |")
    lines += ["", "### Copies: each val/test image changed, against the val/test images", "",
              "| data set | change | texture to its original, p1 | shape to its original, p1 | caught |",
              "|---|---|---|---|---|"]
    for key, f in found.items():
        for change, c in f["copies"].items():
            lines.append(f"| {DATASETS[key].title} | {change} | {np.quantile(c['own']['texture'], 0.01):.4f} | "
                         f"{np.quantile(c['own']['shape'], 0.01):.4f} | {100 * c['caught']:.1f}% |")
    lines += ["", "### As another source: the train pool drawn as an extra store (1:2, every malignant image)", "",
              "| data set | images a draw | called copies of a val/test image, seeds 0 / 1 / 2 | draws refused without "
              "--extra-drop-copies |", "|---|---|---|---|"]
    for key, f in found.items():
        counts = [d["copies"] for d in f["as_source"]]
        lines.append(f"| {DATASETS[key].title} | {f['as_source'][0]['drawn']} | {' / '.join(map(str, counts))} | "
                     f"{sum(c > 0 for c in counts)} of {len(counts)} |")
    if not args.print_only:
        update_section("copy-guard", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
