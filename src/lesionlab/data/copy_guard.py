"""The leakage guard: synthetic images are compared by content with every validation and test
image before training; an exact or near copy stops the run and names the images.

Two content signatures, each compared by cosine similarity; either one above its threshold makes
a near copy:

- texture: the image at 32x32 (area average) minus its 4x4 low-pass, scaled to unit length: the
  texture (hairs, pigment network, skin pores) that makes a photograph itself, without the overall
  colour and shape that many lesions share; near copy above NEAR_COPY. Measured on HAM10000 at
  128 px (2,100 val/test images against 6,687 train-pool images of other lesions): distinct lesions
  reach 0.965 at the 99.9th percentile; JPEG re-encodes (quality 75) of the same image score at
  least 0.971, a 10% brightness change 0.993. The one distinct-id pair above 0.97 was the same
  photograph of one lesion filed under two lesion ids.
- shape: the image at 16x16 (area average) minus its mean colour, scaled to unit length: the layout
  of the lesion and its surroundings, which a generator's copy keeps even where it loses the fine
  texture (a generated image is smoother than a photograph); near copy above LOW_PASS_NEAR.
  Measured on HAM10000 at 64 px (the same 2,100 against 6,687): distinct lesions reach 0.9856 at
  the 99.9th percentile and 0.9899 at most (one pair above 0.99, as for the texture); an image
  halved and enlarged again scores at least 0.9948. Of "generator-like" copies (halved and
  enlarged, channel gains 1.05/0.97/1.0, +5 grey levels, Gaussian noise of sd 8) the texture
  signature alone flags 34%, the two together 79%.

On the ISIC 2024 permissive crops at 128 px (benchmarks/copy_guard.py, docs/results.md section "copy-guard"),
plain skin around a small spot, distinct crops are closer: shape 0.9911 at the 99th percentile, 0.9951 at most,
so the guard calls 38 of the 2,060 val/test crops (1.8%) copies of distinct train-pool crops (HAM10000: 2, 0.1%),
while 99% of halved-and-enlarged copies score 0.9994 or more there. That is why an encoder pretrained on the run's own
data set is checked by id only (runs/encoder_run.py), and why `--extra-drop-copies` leaves such crops of another
source out of the draw instead of refusing it (data/extra.py).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import LeakError, preview

NEAR_COPY = 0.97
SIDE = 32
LOW_PASS_NEAR = 0.99
LOW_PASS_SIDE = 16


def signatures(images: np.ndarray, batch: int = 512) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, SIDE*SIDE*3) unit vectors."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).permute(0, 3, 1, 2).float()
        x = F.adaptive_avg_pool2d(x, SIDE)
        low = F.interpolate(F.adaptive_avg_pool2d(x, SIDE // 8), size=SIDE, mode="bilinear", align_corners=False)
        v = (x - low).reshape(len(x), -1)
        out.append((v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)).numpy())
    return np.concatenate(out) if out else np.zeros((0, SIDE * SIDE * 3), np.float32)


def shape_signatures(images: np.ndarray, batch: int = 512) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, LOW_PASS_SIDE**2 * 3) unit vectors: the 16x16 image minus its mean."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).permute(0, 3, 1, 2).float()
        v = F.adaptive_avg_pool2d(x, LOW_PASS_SIDE)
        v = (v - v.mean((1, 2, 3), keepdim=True)).reshape(len(x), -1)
        out.append((v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)).numpy())
    return np.concatenate(out) if out else np.zeros((0, LOW_PASS_SIDE * LOW_PASS_SIDE * 3), np.float32)


def exact_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def index_references(references: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The references' signatures and exact hashes, to check many candidate chunks against them."""
    return signatures(references), shape_signatures(references), {h: j for j, h in enumerate(exact_hashes(references))}


def find_copies(candidates: np.ndarray, references: np.ndarray | tuple, threshold: float = NEAR_COPY,
                batch: int = 1024) -> list[tuple[int, int, float]]:
    """(candidate index, reference index, similarity) for every candidate whose most similar
    reference is an exact or near copy. `references`: images, or their index_references()."""
    ref_sig, ref_low, ref_hash = references if isinstance(references, tuple) else index_references(references)
    hits = []
    for start in range(0, len(candidates), batch):
        chunk = candidates[start:start + batch]
        sim = signatures(chunk) @ ref_sig.T
        low = shape_signatures(chunk) @ ref_low.T
        best, best_low = sim.argmax(1), low.argmax(1)
        for i, (h, j, k) in enumerate(zip(exact_hashes(chunk), best, best_low)):
            if h in ref_hash:
                hits.append((start + i, ref_hash[h], 1.0))
            elif sim[i, j] > threshold:
                hits.append((start + i, int(j), float(sim[i, j])))
            elif low[i, k] > LOW_PASS_NEAR:
                hits.append((start + i, int(k), float(low[i, k])))
    return hits


def resized(images: np.ndarray, size: int) -> np.ndarray:
    from ..engine.ssl import resize_batch  # here: the decoding workers import this package without torch's training stack

    return resize_batch(torch.from_numpy(np.ascontiguousarray(images)), size).numpy()


def index_store(store, positions: np.ndarray, size: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, dict]:
    """index_references() of a prepared `store`'s images at table `positions`, resized to `size`: read a chunk
    at a time, so a large store is never in memory whole."""
    positions = np.asarray(positions)
    if not len(positions):
        return index_references(np.zeros((0, size, size, 3), np.uint8))
    sig, low, hashes = [], [], {}
    for start in range(0, len(positions), chunk):
        images = resized(store.pixels(positions[start:start + chunk]), size)
        sig.append(signatures(images))
        low.append(shape_signatures(images))
        hashes.update({h: start + j for j, h in enumerate(exact_hashes(images))})
    return np.concatenate(sig), np.concatenate(low), hashes


def copies_in_store(store, positions: np.ndarray, references: np.ndarray | tuple,
                    chunk: int = 2048) -> list[tuple[int, int, float]]:
    """(position in `store`, reference index, similarity) for every image of a prepared `store` at table
    `positions` that is an exact or near copy of one of `references`: uint8 NHWC images of any size (both
    are compared at the smaller of the two sizes, the references indexed once), or index_references() of
    images at the store's size (for a caller that checks several sets of positions against one index)."""
    if not len(positions):
        return []
    if isinstance(references, tuple):
        size, refs = store.size, references
    elif not len(references):
        return []
    else:
        size = min(store.size, references.shape[1])
        refs = index_references(resized(references, size))
    positions = np.asarray(positions)
    hits = []
    for start in range(0, len(positions), chunk):
        rows = positions[start:start + chunk]
        hits += [(int(rows[i]), j, s) for i, j, s in find_copies(resized(store.pixels(rows), size), refs)]
    return hits


def check_no_leak(candidates: np.ndarray, candidate_ids: list[str], references: np.ndarray | tuple,
                  reference_ids: list[str], what: str, kind: str = "synthetic") -> dict:
    """Raise LeakError naming the pairs if any candidate copies a reference; else a summary.
    `references`: images, or their index_references(); `kind` names the candidates in the message."""
    hits = find_copies(candidates, references)
    if hits:
        pairs = [f"{candidate_ids[i]} ~ {reference_ids[j]} (similarity {s:.3f})" for i, j, s in hits]
        raise LeakError(f"{len(hits)} {kind} image(s) are copies of {what} images: {preview(pairs)}; "
                        f"remove them from the {kind} set (a model must never train on its evaluation images)")
    against = len(references[0]) if isinstance(references, tuple) else len(references)
    return {"checked": len(candidates), "against": against, "near_copy_threshold": NEAR_COPY,
            "near_copy_threshold_shape": LOW_PASS_NEAR, "copies": 0}
