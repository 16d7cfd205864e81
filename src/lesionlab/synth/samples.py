"""Synthetic image folders with a manifest that `prepare` reads like any other source:
sampled from a lesionlab generator, or imported from a generator run elsewhere.

SYN_DIR/
  images/*.png
  manifest.csv   path,label,id,synthetic,generator,generator_step,source_id
  synthetic.json provenance (generator, seed, count)
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..data.copy_guard import find_copies, index_store
from ..data.images import IMAGE_SUFFIXES, DecodeError, decode_resize
from ..data.store import Store
from ..errors import BadInputError, ExistsError, preview
from ..fileio import require_folder_or_absent, write_bytes, write_csv, write_json
from . import quality
from .check import learned_ids, learned_images, never_learned
from .copy_watch import watch_ids, write_watch_ids
from .generator import CLASS_NAMES, class_index, generate_batch, load_generator, sampled_step
from .quality import NEAR_COPY_RULE, near_copy_cut


def _fresh(out: Path) -> None:
    require_folder_or_absent(out)
    if out.exists() and any(out.iterdir()):
        raise ExistsError(f"{out}: exists and is not empty; choose a new folder for the synthetic images")
    (out / "images").mkdir(parents=True, exist_ok=True)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def sample(gen_dir: str | Path, n: int, out: str | Path, seed: int = 0, batch: int = 64,
           progress: Callable[[int, int], None] | None = None, label: str = "malignant",
           drop_near_copies: str | Path | None = None) -> Path:
    """n images of class `label` (one the generator learned); the same seed gives the same images.
    drop_near_copies: the data set the generator learned from; a sample is dropped and another drawn in its place
    when it is nearer to one of the images the generator learned than 99% of them are to their nearest other one
    (check's near-copy rule, 32x32 pixels), so that no training image returns in a training draw as a synthetic
    one, or when the training leak guard would call it a copy of an image of that data set the generator never
    saw (validation, test, pool images outside its training part such as a cv fold's held-out images), so that
    every training draw of these images passes the guard."""
    from ..config import SynthSampleConfig, validated

    validated(SynthSampleConfig, {"n": n, "seed": seed, "label": label,
                                  "drop_near_copies": None if drop_near_copies is None else str(drop_near_copies)})
    out = Path(out)
    trainer, info = load_generator(gen_dir)
    class_index(info, label, gen_dir)  # refused before anything is written
    copies = _copy_filter(Path(gen_dir), drop_near_copies, label, info["size"]) if drop_near_copies else None
    _fresh(out)
    y = CLASS_NAMES.index(label)
    step = sampled_step(info)
    rows: list[dict] = []
    drawn, dropped = 0, {"near_copies_dropped": 0, "guard_copies_dropped": 0}
    while len(rows) < n:
        # a batch's seed counts the samples drawn before it (dropped ones too): the images depend on the seed alone
        images = generate_batch(trainer, info, min(batch, n - len(rows)), seed * 1_000_003 + drawn, label, gen_dir)
        drawn += len(images)
        if copies is not None:
            memorised, guarded = copies(images)
            dropped["near_copies_dropped"] += int(memorised.sum())
            dropped["guard_copies_dropped"] += int((guarded & ~memorised).sum())
            images = images[~(memorised | guarded)]
            if drawn >= 10 * n + 1000 and len(rows) + len(images) < n:
                raise BadInputError(f"--drop-near-copies {drop_near_copies}: {dropped['near_copies_dropped']} of "
                                    f"{drawn} samples were near copies of training images and "
                                    f"{dropped['guard_copies_dropped']} copies of images the generator never saw; "
                                    "this generator memorises its images")
        for image in images[: n - len(rows)]:
            name = f"{info['generator_id']}{'' if y else '_benign'}_seed{seed}_{len(rows):06d}"
            write_bytes(out / "images" / f"{name}.png", _png(image))
            rows.append({"path": f"images/{name}.png", "label": y, "id": f"syn_{name}", "synthetic": 1,
                         "generator": info["generator_id"], "generator_step": step, "source_id": ""})
        if progress:
            progress(len(rows), n)
    watched = watch_ids(Path(gen_dir))
    if watched:  # check of this folder leaves out the images its stop was chosen on, as of gen_dir
        write_watch_ids(out, np.array(sorted(watched)))
    write_csv(out / "manifest.csv", pd.DataFrame(rows))
    write_json(out / "synthetic.json", {"generator": info["generator_id"], "generator_dir": str(Path(gen_dir).resolve()),
                                        "kind": info["kind"], "steps": step, "seed": seed, "n": n,
                                        "label": label, "size": info["size"],
                                        "classes": info.get("classes", [info["label"]]),
                                        **({**dropped, "drawn": drawn, "near_copy_rule": NEAR_COPY_RULE,
                                            "guard_copy_rule": "the training leak guard's (data/copy_guard.py)",
                                            "near_copies_of": str(Path(drop_near_copies).resolve())}
                                           if drop_near_copies else {})})
    return out


def _copy_filter(gen_dir: Path, data_dir: str | Path, label: str,
                 size: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A function of a batch of samples: (near copies of the images gen_dir learned, by check's rule; copies, by
    the training leak guard's signatures, of an image of data_dir that gen_dir never learned), as two masks."""
    real = quality.pixels(learned_images(gen_dir, data_dir, label, size))
    cut = near_copy_cut(real)
    store = Store.open(data_dir)
    references = index_store(store, never_learned(store, learned_ids(gen_dir) or set()), size)

    def masks(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        guarded = np.zeros(len(images), bool)
        guarded[[i for i, _, _ in find_copies(images, references)]] = True
        return quality.nearest(quality.pixels(images), real)[0] < cut, guarded

    return masks


def import_folder(folder: str | Path, out: str | Path, label: str = "malignant", generator: str = "external",
                  check_size: int = 64) -> Path:
    """Copy a folder of images made elsewhere (e.g. StyleGAN2-ADA) into a synthetic folder; every
    image is decoded once first, so an unreadable one stops the import with its name."""
    folder, out = Path(folder), Path(out)
    from ..config import SynthImportConfig, validated

    validated(SynthImportConfig, {"label": label, "generator": generator})  # the CLI's checks and one-line errors
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    bad = []
    for f in files:
        try:
            decode_resize(f.read_bytes(), check_size)
        except DecodeError as e:
            bad.append(f"{f.relative_to(folder)} ({e})")
    if bad:
        raise BadInputError(f"{folder}: {len(bad)} of {len(files)} image(s) cannot be read: {preview(bad)}")
    _fresh(out)
    rows = []
    for i, f in enumerate(files):
        name = f"{generator}_{i:06d}{f.suffix.lower()}"
        shutil.copyfile(f, out / "images" / name)
        rows.append({"path": f"images/{name}", "label": int(label == "malignant"), "id": f"syn_{generator}_{i:06d}",
                     "synthetic": 1, "generator": generator, "generator_step": "", "source_id": str(f.relative_to(folder))})
    write_csv(out / "manifest.csv", pd.DataFrame(rows))  # generator names and source paths are user text
    write_json(out / "synthetic.json", {"generator": generator, "imported_from": str(folder.resolve()), "n": len(rows),
                                        "label": label})
    return out
