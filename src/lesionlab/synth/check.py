"""`lesionlab synth check`: quality and memorisation of a generator or a synthetic folder against
the real training images of its class; writes check.json, check.md, a self-contained check.html
and figures.

Every quality number names the feature network that measured it (features.py): one network the
generator never saw is the least a reader should accept, two of different kinds (a lesion classifier
and the never-trained random network, say) are what the output asks for, and the projected
discriminator's own ImageNet network is shown only flagged as flattering."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..data.images import decode_resize
from ..data.sources import read_source
from ..data.splits import load_split
from ..data.store import Store
from ..data.synthetic import real_rows
from ..errors import BadInputError
from ..fileio import csv_restore, read_json, write_bytes, write_json, write_text
from . import quality
from .copy_watch import watch_ids
from .features import feature_network
from .generator import CLASS_NAMES, generate_batch, grid_png, load_generator, real_images
from .quality import NEAR_COPY_RULE, near_copy_cut_of

MIN_UNSEEN = 10  # real images the generator never saw, the fewest the data-copying test is run on


def learned_ids(source: Path) -> set[str] | None:
    """The ids of the real images a generator learned from (its real_ids.csv); None when `source` has none."""
    if not (source / "real_ids.csv").exists():
        return None
    return set(csv_restore(pd.read_csv(source / "real_ids.csv", dtype=str, keep_default_na=False))["id"])


def learned_positions(source: Path, data_dir: str | Path, label: str) -> tuple[Store, np.ndarray]:
    """The store and positions of the train-pool images of `label` that a generator learned from (all of the class
    when `source` has no real_ids.csv, e.g. an imported folder)."""
    store, positions = real_images(data_dir, CLASS_NAMES.index(label))
    ids = learned_ids(source)
    if ids is not None:  # exactly the images the generator learned from
        learned = np.isin(store.table["id"].to_numpy()[positions], list(ids))
        if not learned.any():
            raise BadInputError(f"--data {data_dir}: holds none of the {label} images the generator learned from; "
                                "check it against the data set it was trained on")
        positions = positions[learned]
    return store, positions


def learned_images(source: Path, data_dir: str | Path, label: str, size: int) -> np.ndarray:
    """The images of learned_positions at `size` px: what a generator's samples are compared against."""
    store, positions = learned_positions(source, data_dir, label)
    if store.size < size:
        raise BadInputError(f"--data {data_dir}: prepared at {store.size} px, smaller than the {size} px synthetic "
                            f"images; compare against a data set prepared at {size} px or more (real images "
                            "enlarged to the synthetic size would be blurred, not real)")
    # compare at the synthetic images' resolution: real images pass through the same size
    return quality.resize(store.pixels(positions), size)


def never_learned(store: Store, learned: set[str]) -> np.ndarray:
    """Positions of the real images of `store` whose ids are not in `learned`; never a synthetic one, since
    another generator's images are no one's evaluation images."""
    return real_rows(store.table, np.flatnonzero(~store.table["id"].astype(str).isin(learned).to_numpy()))


def unseen_images(source: Path, data_dir: str | Path, label: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Real images of `label` in data_dir that the generator never learned from (validation and test, and
    the pool's images outside its draw or cv fold) nor had its stop chosen on, at `size` px, and their groups (patients or lesions, by the
    split's rule): how often the near-copy rule flags genuinely new real images is the yardstick of the
    synthetic rate, and they are the data-copying test's new images."""
    store, pool = real_images(data_dir, CLASS_NAMES.index(label))
    table = store.table
    ids = learned_ids(source)
    if ids is None:  # a folder: it may have learned from any of the class's train-pool images
        ids = set(table["id"].astype(str).to_numpy()[pool])
    # the images the copy watch chose the generator's stop on are no longer new to it
    positions = never_learned(store, ids | watch_ids(source))
    positions = positions[table["label"].to_numpy()[positions] == CLASS_NAMES.index(label)]
    groups = load_split(store).group_keys(table)[positions]
    return quality.resize(store.pixels(positions), size), groups


def group_halves(groups: np.ndarray) -> np.ndarray:
    """A mask of about half the images, by whole groups (every other group), so that no patient stands on both
    sides of the control below."""
    return np.isin(groups, np.unique(groups)[::2])


def watched_images(source: Path, data_dir: str | Path, size: int) -> np.ndarray | None:
    """The validation images the copy watch chose the generator's stop on, at `size` px (None when unwatched)."""
    ids = watch_ids(source)
    if not ids:
        return None
    store = Store.open(data_dir)
    positions = np.flatnonzero(store.table["id"].astype(str).isin(ids).to_numpy())
    return quality.resize(store.pixels(positions), size)


def real_control(source: Path, data_dir: str | Path, size: int, unseen: np.ndarray,
                 groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The data-copying test's control: real images of the class the generator never learned, tested as if they
    were its samples. They are new draws of the real distribution, so they score what a generator that copies
    nothing would, on these very images; a few dozen held-out images can sit farther from the training images than
    the distribution's typical image does, and then even new real images read as copying.

    Returns (control images, the mask of the new real images held out against them, what the control is): the
    images the copy watch chose the stop on, against every new real image, when the generator was watched; else
    half of the new real images (whole groups) against the other half. A mask, so that the caller reuses the new
    images' pixels and features."""
    watched = watched_images(source, data_dir, size)
    if watched is not None:
        return watched, np.ones(len(unseen), bool), "the validation images the copy watch chose the stop on"
    half = group_halves(groups)
    return unseen[half], ~half, "half of the new real images (whole groups), against the other half"


def _synthetic_images(source: Path, n: int, seed: int, label: str | None, data_size: int) -> tuple[np.ndarray, dict]:
    if (source / "generator.json").exists():
        trainer, info = load_generator(source)
        label = label or ("malignant" if "malignant" in info.get("classes", [info["label"]]) else info["label"])
        images = np.concatenate([generate_batch(trainer, info, min(64, n - s), 10_000 + seed + s, label, source)
                                 for s in range(0, n, 64)])
        return images, {"source": "generator", "generator": info["generator_id"], "kind": info["kind"],
                        "size": info["size"], "label": label, "data": info.get("data")}
    if (source / "manifest.csv").exists():
        meta = read_json(source / "synthetic.json") if (source / "synthetic.json").exists() else {}
        size = int(meta.get("size", data_size))  # imported images: compared at the data set's size
        src = read_source(source / "manifest.csv")
        rows = src.table.sample(n=min(n, len(src.table)), random_state=seed) if len(src.table) > n else src.table
        images = np.stack([decode_resize(src.reader.read(loc), size) for loc in rows["locator"]])
        if label and label != meta.get("label", "malignant"):
            raise BadInputError(f"{source}: holds {meta.get('label', 'malignant')} images, not {label}")
        return images, {"source": "folder", "generator": meta.get("generator", "?"), "kind": meta.get("kind", "?"),
                        "size": size, "label": meta.get("label", "malignant")}
    raise BadInputError(f"{source}: neither a generator folder (generator.json) nor a synthetic folder (manifest.csv)")


def _embed(path: Path) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"


def _measures(net, syn: np.ndarray, real: np.ndarray, syn_m: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
              seed: int, kind: str) -> dict:
    f_syn, f_real = net(syn), net(real)
    kid_syn = quality.kid(f_syn[syn_m], f_real[half_a], seed=seed)
    kid_real = quality.kid(f_real[half_b], f_real[half_a], seed=seed)
    # the discriminator of a projected generator judged exactly these ImageNet features
    seen = bool(getattr(net, "seen_by_projected", False) and kind == "projected")
    return {"network": net.name, "seen_by_generator": seen,
            "fid": {"synthetic_vs_real": quality.fid(f_syn[syn_m], f_real[half_a]),
                    "real_half_vs_real_half": quality.fid(f_real[half_b], f_real[half_a]), "n_each": int(len(half_b)),
                    # every synthetic image against every real one: the usual FID (not size-matched to the yardstick)
                    "synthetic_all_vs_real_all": quality.fid(f_syn, f_real)},
            "kid": {"synthetic_vs_real": list(kid_syn), "real_half_vs_real_half": list(kid_real)},
            "manifold_k5": quality.manifold_scores(f_real, f_syn), "_f": (f_syn, f_real)}


def check(source: str | Path, data_dir: str | Path, features_run, out: str | Path | None = None,
          n: int = 1000, seed: int = 0, label: str | None = None) -> dict:
    """features_run: one --features value or several (train run folders or built-in names); the
    first is the primary network (feature-space memorisation and the top-level numbers)."""
    source = Path(source)
    out = Path(out) if out else source / "check"
    specs = [features_run] if isinstance(features_run, (str, Path)) else list(features_run)
    if not specs:
        raise BadInputError("--features: give at least one feature network (a train run folder, or random)")
    from ..config import SynthCheckConfig, validated

    # the CLI's checks and one-line errors
    validated(SynthCheckConfig, {"data": str(data_dir), "features": [str(s) for s in specs], "n": n, "seed": seed,
                                 "label": label})
    syn, meta = _synthetic_images(source, n, seed, label, Store.open(data_dir).size)
    nets = [feature_network(s) for s in specs]
    real = learned_images(source, data_dir, meta["label"], meta["size"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    half_a, half_b = order[: len(real) // 2], order[len(real) // 2:]
    m = len(half_b)
    syn_m = rng.choice(len(syn), size=min(m, len(syn)), replace=False)
    measured = [_measures(net, syn, real, syn_m, half_a, half_b, seed, meta["kind"]) for net in nets]
    f_syn, f_real = measured[0].pop("_f")
    for r in measured[1:]:
        r.pop("_f")
    independent = [r["network"] for r in measured if not r["seen_by_generator"]]
    p_syn, p_real = quality.pixels(syn), quality.pixels(real)
    d_pix, nn_pix = quality.nearest(p_syn, p_real)
    d_pix_rr, _ = quality.nearest(p_real, p_real, exclude_self=True)
    d_feat, nn_feat = quality.nearest(f_syn, f_real)
    d_feat_rr, _ = quality.nearest(f_real, f_real, exclude_self=True)
    # one pairwise pass over the real images serves both their distance quantiles and the rule's cut
    pix_cut, feat_cut = near_copy_cut_of(d_pix_rr), near_copy_cut_of(d_feat_rr)
    unseen, unseen_groups = unseen_images(source, data_dir, meta["label"], meta["size"])
    p_unseen = quality.pixels(unseen)
    d_unseen = quality.nearest(p_unseen, p_real)[0] if len(unseen) else np.array([])
    # the data-copying test needs new real images to compare with; a handful is too few for a rank test
    copying = None
    if len(unseen) >= MIN_UNSEEN:
        f_unseen = nets[0](unseen)
        copying = {"pixel": quality.data_copying(p_real, p_unseen, p_syn, seed, held_groups=unseen_groups),
                   "feature": quality.data_copying(f_real, f_unseen, f_syn, seed, held_groups=unseen_groups)}
        control, held, what = real_control(source, data_dir, meta["size"], unseen, unseen_groups)
        if min(len(control), held.sum()) >= MIN_UNSEEN:
            copying["control"] = {
                "images": what, "n": int(len(control)),
                "pixel": quality.data_copying(p_real, p_unseen[held], quality.pixels(control), seed,
                                              held_groups=unseen_groups[held]),
                "feature": quality.data_copying(f_real, f_unseen[held], nets[0](control), seed,
                                                held_groups=unseen_groups[held])}
    first = measured[0]
    result = {
        "synthetic": {**{k: v for k, v in meta.items() if k != "data"}, "n": int(len(syn)), "path": str(source)},
        "real": {"data": str(data_dir), "n": int(len(real)), "label": meta["label"]},
        "feature_extractor": first["network"],
        "fid": first["fid"], "kid": first["kid"], "manifold_k5": first["manifold_k5"],
        "feature_networks": measured,
        "independent_networks": len(independent),
        "memorisation": {
            "pixel_space": "32x32 RGB in [0, 1], L2",
            "feature_space": first["network"],
            "pixel_nn_quantiles_synthetic": np.quantile(d_pix, [0.01, 0.05, 0.5]).tolist(),
            "pixel_nn_quantiles_real": np.quantile(d_pix_rr, [0.01, 0.05, 0.5]).tolist(),
            "feature_nn_quantiles_synthetic": np.quantile(d_feat, [0.01, 0.05, 0.5]).tolist(),
            "feature_nn_quantiles_real": np.quantile(d_feat_rr, [0.01, 0.05, 0.5]).tolist(),
            "near_copy_rule": NEAR_COPY_RULE,
            "near_copies_pixel": float(np.mean(d_pix < pix_cut)),
            "near_copies_feature": float(np.mean(d_feat < feat_cut)),
            # the same rule on real images the generator never saw (None: the data set holds none)
            "near_copies_pixel_unseen_real": float(np.mean(d_unseen < pix_cut)) if len(unseen) else None,
            "n_unseen_real": int(len(unseen)),
            # how many training images the flagged samples are near: a few plain crops that many images sit close
            # to ("hubs") flag new real images too, a memorised set flags many distinct ones
            "near_copy_targets_pixel": int(len(np.unique(nn_pix[d_pix < pix_cut]))),
            "data_copying": copying,
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


def _network_note(r: dict) -> str:
    k = r.get("independent_networks", 1)
    seen = [n["network"] for n in r.get("feature_networks", []) if n["seen_by_generator"]]
    note = (f"Measured with {k} feature network(s) the generator never saw"
            + (f"; the numbers of {', '.join(seen)} flatter it (its discriminator judged those very features, "
               "Kynkäänniemi et al. 2023) and are shown for reference only" if seen else "") + ".")
    if k < 2:
        note += (" One independent network is a single point of view: add a second --features (e.g. `random`, a "
                 "never-trained network, beside a classifier run) before trusting these numbers.")
    return note


def render_markdown(r: dict) -> str:
    from ..workflows.report import md_code, md_escape  # names and paths are user text: literal in Markdown

    mem = r["memorisation"]
    networks = r.get("feature_networks") or [{"network": r["feature_extractor"], "seen_by_generator": False,
                                              "fid": r["fid"], "kid": r["kid"], "manifold_k5": r["manifold_k5"]}]
    lines = [
        f"# Synthetic images: {md_escape(r['synthetic']['generator'])} ({r['synthetic']['n']} images at "
        f"{r['synthetic']['size']} px)",
        "",
        f"Real reference: {r['real']['n']} {md_escape(r['real']['label'])} training images of "
        f"{md_code(r['real']['data'])} (at the same size).",
        _network_note(r),
        "",
        "| feature network | FID (yardstick: real half vs half) | FID, all synthetic vs all real | KID x 1000 (yardstick) "
        "| precision | recall | density | coverage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for net in networks:
        ms, f, k = net["manifold_k5"], net["fid"], net["kid"]
        flag = " (seen by the generator: flatters it)" if net["seen_by_generator"] else ""
        lines.append(f"| {md_escape(net['network'])}{flag} | {f['synthetic_vs_real']:.2f} ({f['real_half_vs_real_half']:.2f}) "
                     f"| {f.get('synthetic_all_vs_real_all', float('nan')):.2f} "
                     f"| {1000 * k['synthetic_vs_real'][0]:.2f} ± {1000 * k['synthetic_vs_real'][1]:.2f} "
                     f"({1000 * k['real_half_vs_real_half'][0]:.2f} ± {1000 * k['real_half_vs_real_half'][1]:.2f}) "
                     f"| {ms['precision']:.3f} | {ms['recall']:.3f} | {ms['density']:.3f} | {ms['coverage']:.3f} |")
    lines += [
        "",
        f"FID beside its yardstick with {networks[0]['fid']['n_each']} images a side (half the real images against the "
        "other half, and as many synthetic ones against the first half); precision/recall (Kynkäänniemi et al. 2019) and "
        "density/coverage (Naeem et al. 2020) with k = 5 nearest neighbours in each network's feature space.",
        "",
        f"Memorisation: near copies {100 * mem['near_copies_pixel']:.1f}% in pixel space, "
        f"{100 * mem['near_copies_feature']:.1f}% in feature space ({mem['near_copy_rule']}). "
        + (f"The same rule flags {100 * mem['near_copies_pixel_unseen_real']:.1f}% of the {mem['n_unseen_real']} real "
           f"{md_escape(r['real']['label'])} images the generator never saw (pixel space): the rate of new images. "
           if mem.get("near_copies_pixel_unseen_real") is not None else "")
        + (f"The flagged samples are nearest to {mem['near_copy_targets_pixel']} distinct real image(s). "
           if mem.get("near_copy_targets_pixel") is not None and mem["near_copies_pixel"] else "")
        + f"Median nearest-real distance, pixels: synthetic {mem['pixel_nn_quantiles_synthetic'][2]:.3f} vs real "
        f"{mem['pixel_nn_quantiles_real'][2]:.3f}; features: synthetic {mem['feature_nn_quantiles_synthetic'][2]:.3f} "
        f"vs real {mem['feature_nn_quantiles_real'][2]:.3f}.",
    ]
    if mem.get("data_copying"):
        lines += ["", copying_text(mem["data_copying"], r["real"]["label"])]
    elif "data_copying" in mem:  # measured by a check that knows the test, but too few new real images for it
        lines += ["", f"Data-copying test: not run; it needs {MIN_UNSEEN} real {md_escape(r['real']['label'])} images "
                      f"the generator never saw, the data set holds {mem['n_unseen_real']}."]
    return "\n".join(lines) + "\n"


def z_text(z: float | None) -> str:
    """A data-copying z score as text; None (no cell held enough synthetic images to test) as n/a."""
    return "n/a" if z is None else f"{z:+.2f}"


def copying_text(copying: dict, label: str) -> str:
    """check.md's sentence on the data-copying test, in pixel and feature space."""
    from ..workflows.report import md_escape

    def one(space: str, c: dict) -> str:
        return (f"{space}: Z_U {z_text(c['z_u'])}, C_T {z_text(c['c_t'])} over {c['cells_tested']} of {c['cells']} "
                f"cell(s), worst cell {z_text(c['worst_cell_z'])} (cut {c['cell_cut']:+.2f}): "
                f"{'copying' if c['copying'] else 'no copying'}")

    pixel, feature, control = copying["pixel"], copying["feature"], copying.get("control")
    return (f"Data-copying test (Meehan et al. 2020): are the synthetic images closer to the training images than "
            f"the {pixel['n_held_out']} real {md_escape(label)} images the generator never saw"
            + (f" ({pixel['held_out_groups']} groups, resampled whole)" if pixel.get("held_out_groups") else "")
            + "? Z below "
            f"{pixel['cut']:+.2f} (one-sided 5%) is copying, above 0 lies farther than new real images. "
            f"{one('Pixels', pixel)}; {one('features', feature)}."
            + (f" Control, real images the generator never learned tested as if generated ({control['n']}: "
               f"{md_escape(control['images'])}), what a generator that copies nothing scores here: pixels Z_U "
               f"{z_text(control['pixel']['z_u'])} ({'copying' if control['pixel']['copying'] else 'no copying'}), "
               f"features Z_U {z_text(control['feature']['z_u'])} "
               f"({'copying' if control['feature']['copying'] else 'no copying'})." if control else ""))
