"""`lesionlab synth check`: quality and memorisation of a generator or a synthetic folder against
the real training images of its class; writes check.json, check.md, a self-contained check.html
and figures."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..data.images import decode_resize
from ..data.sources import read_source
from ..errors import BadInputError
from ..fileio import csv_restore, read_json, write_bytes, write_json, write_text
from . import quality
from .generator import grid_png, latents, load_generator, real_images, to_uint8


def _synthetic_images(source: Path, n: int, seed: int) -> tuple[np.ndarray, dict]:
    if (source / "generator.json").exists():
        trainer, info = load_generator(source)
        images = np.concatenate([to_uint8(trainer.generate(latents(info["kind"], min(64, n - s), info["size"], 10_000 + seed + s)))
                                 for s in range(0, n, 64)])
        return images, {"source": "generator", "generator": info["generator_id"], "size": info["size"], "label": info["label"]}
    if (source / "manifest.csv").exists():
        meta = read_json(source / "synthetic.json") if (source / "synthetic.json").exists() else {}
        size = int(meta.get("size", 64))
        src = read_source(source / "manifest.csv")
        rows = src.table.sample(n=min(n, len(src.table)), random_state=seed) if len(src.table) > n else src.table
        images = np.stack([decode_resize(src.reader.read(loc), size) for loc in rows["locator"]])
        return images, {"source": "folder", "generator": meta.get("generator", "?"), "size": size,
                        "label": meta.get("label", "malignant")}
    raise BadInputError(f"{source}: neither a generator folder (generator.json) nor a synthetic folder (manifest.csv)")


def _embed(path: Path) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def check(source: str | Path, data_dir: str | Path, features_run: str | Path, out: str | Path | None = None,
          n: int = 1000, seed: int = 0) -> dict:
    source = Path(source)
    out = Path(out) if out else source / "check"
    syn, meta = _synthetic_images(source, n, seed)
    label = 1 if meta["label"] == "malignant" else 0
    store, positions = real_images(data_dir, label)
    if (source / "real_ids.csv").exists():  # exactly the images the generator learned from
        ids = set(csv_restore(pd.read_csv(source / "real_ids.csv", dtype=str, keep_default_na=False))["id"])
        positions = positions[np.isin(store.table["id"].to_numpy()[positions], list(ids))]
    # compare at the synthetic images' resolution: real images pass through the same size
    real = quality.resize(store.pixels(positions), meta["size"])
    feats = quality.Features(features_run)
    f_syn, f_real = feats(syn), feats(real)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    half_a, half_b = order[: len(real) // 2], order[len(real) // 2:]
    m = len(half_b)
    syn_m = rng.choice(len(syn), size=min(m, len(syn)), replace=False)
    kid_syn, kid_syn_sd = quality.kid(f_syn[syn_m], f_real[half_a], seed=seed)
    kid_real, kid_real_sd = quality.kid(f_real[half_b], f_real[half_a], seed=seed)
    scores = quality.manifold_scores(f_real, f_syn)
    p_syn, p_real = quality.pixels(syn), quality.pixels(real)
    d_pix, nn_pix = quality.nearest(p_syn, p_real)
    d_pix_rr, _ = quality.nearest(p_real, p_real, exclude_self=True)
    d_feat, nn_feat = quality.nearest(f_syn, f_real)
    d_feat_rr, _ = quality.nearest(f_real, f_real, exclude_self=True)
    pix_cut, feat_cut = float(np.quantile(d_pix_rr, 0.01)), float(np.quantile(d_feat_rr, 0.01))
    result = {
        "synthetic": {**meta, "n": int(len(syn)), "path": str(source)},
        "real": {"data": str(data_dir), "n": int(len(real)), "label": meta["label"]},
        "feature_extractor": feats.name,
        "fid": {"synthetic_vs_real": quality.fid(f_syn[syn_m], f_real[half_a]),
                "real_half_vs_real_half": quality.fid(f_real[half_b], f_real[half_a]), "n_each": int(m)},
        "kid": {"synthetic_vs_real": [kid_syn, kid_syn_sd], "real_half_vs_real_half": [kid_real, kid_real_sd]},
        "manifold_k5": scores,
        "memorisation": {
            "pixel_space": "32x32 RGB in [0, 1], L2",
            "pixel_nn_quantiles_synthetic": np.quantile(d_pix, [0.01, 0.05, 0.5]).tolist(),
            "pixel_nn_quantiles_real": np.quantile(d_pix_rr, [0.01, 0.05, 0.5]).tolist(),
            "feature_nn_quantiles_synthetic": np.quantile(d_feat, [0.01, 0.05, 0.5]).tolist(),
            "feature_nn_quantiles_real": np.quantile(d_feat_rr, [0.01, 0.05, 0.5]).tolist(),
            "near_copy_rule": "closer to a real training image than 99% of real images are to their nearest other real image",
            "near_copies_pixel": float(np.mean(d_pix < pix_cut)),
            "near_copies_feature": float(np.mean(d_feat < feat_cut)),
        },
    }
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    k = 8
    pick = rng.choice(len(syn), size=min(2 * k, len(syn)), replace=False)
    pick_real = rng.choice(len(real), size=min(2 * k, len(real)), replace=False)
    write_bytes(figs / "samples_vs_real.png", grid_png(np.concatenate([syn[pick], real[pick_real]]), k))
    closest = np.argsort(d_pix)[:k]
    pairs = np.stack([x for i in closest for x in (syn[i], real[nn_pix[i]])])
    write_bytes(figs / "closest_pairs.png", grid_png(pairs, 2))
    plots.distance_histogram(d_pix, d_pix_rr, "nearest-neighbour distance, pixels (32x32)", figs / "nn_pixels.png")
    plots.distance_histogram(d_feat, d_feat_rr, "nearest-neighbour distance, features", figs / "nn_features.png")
    write_json(out / "check.json", result)
    md = render_markdown(result)
    write_text(out / "check.md", md)
    captions = {"samples_vs_real.png": "synthetic (top two rows) and real (bottom two rows)",
                "closest_pairs.png": "the synthetic images closest to a real one (left) and that real image (right)",
                "nn_pixels.png": "nearest-neighbour distances in pixel space",
                "nn_features.png": "nearest-neighbour distances in feature space"}
    body = "<pre>" + html.escape(md) + "</pre>" + "".join(
        f"<figure>{_embed(figs / f)}<figcaption>{html.escape(c)}</figcaption></figure>" for f, c in captions.items())
    write_text(out / "check.html", f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>synthetic check</title>"
                                   f"<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto}}"
                                   f"img{{image-rendering:pixelated;max-width:100%}}</style></head><body>{body}</body></html>")
    return result


def render_markdown(r: dict) -> str:
    from ..report import md_code, md_escape  # names and paths are user text: literal in Markdown

    mem = r["memorisation"]
    return "\n".join([
        f"# Synthetic images: {md_escape(r['synthetic']['generator'])} ({r['synthetic']['n']} images at "
        f"{r['synthetic']['size']} px)",
        "",
        f"Real reference: {r['real']['n']} {md_escape(r['real']['label'])} training images of "
        f"{md_code(r['real']['data'])} (at the same size).",
        f"Feature extractor: {md_escape(r['feature_extractor'])}.",
        "",
        "| measure | synthetic vs real | real half vs real half (yardstick) |",
        "|---|---|---|",
        f"| FID ({r['fid']['n_each']} images a side) | {r['fid']['synthetic_vs_real']:.2f} | {r['fid']['real_half_vs_real_half']:.2f} |",
        f"| KID x 1000 | {1000 * r['kid']['synthetic_vs_real'][0]:.2f} ± {1000 * r['kid']['synthetic_vs_real'][1]:.2f} | "
        f"{1000 * r['kid']['real_half_vs_real_half'][0]:.2f} ± {1000 * r['kid']['real_half_vs_real_half'][1]:.2f} |",
        "",
        "Precision {precision:.3f}, recall {recall:.3f}, density {density:.3f}, coverage {coverage:.3f} (k = 5 nearest "
        "neighbours, feature space).".format(**r["manifold_k5"]),
        "",
        f"Memorisation: near copies {100 * mem['near_copies_pixel']:.1f}% in pixel space, "
        f"{100 * mem['near_copies_feature']:.1f}% in feature space ({mem['near_copy_rule']}). "
        f"Median nearest-real distance, pixels: synthetic {mem['pixel_nn_quantiles_synthetic'][2]:.3f} vs real "
        f"{mem['pixel_nn_quantiles_real'][2]:.3f}; features: synthetic {mem['feature_nn_quantiles_synthetic'][2]:.3f} "
        f"vs real {mem['feature_nn_quantiles_real'][2]:.3f}.",
    ]) + "\n"
