"""prepare, split and augment-preview: a data set made ready for training."""
from __future__ import annotations

from pathlib import Path

import click

from ..choices import FITS, FORMATS, GROUP_CHOICES, POLICIES
from .group import main
from .options import max_pixels_option
from .output import progress_bar

PREPARE_FORMATS = tuple(f for f in FORMATS if f != "images")  # loose image files carry no labels


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="DATA_DIR to write")
@click.option("--size", default=128, show_default=True, help="side of the square images, in pixels")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(PREPARE_FORMATS), help="layout of SOURCE")
@click.option("--fit", default="stretch", show_default=True, type=click.Choice(FITS),
              help="how non-square images become square")
@click.option("--skip-bad", is_flag=True, help="drop unreadable or missing images (and say how many)")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="decoding processes (0 = one per core)")
@max_pixels_option
def prepare(source: Path, out: Path, size: int, fmt: str, fit: str, skip_bad: bool, workers: int,
            max_pixels: int) -> None:
    """Decode every image of SOURCE once into a prepared data set (DATA_DIR)."""
    import time

    from ..data.sources import read_source
    from ..data.store import Store
    from ..data.store import prepare as do_prepare
    from ..fileio import require_folder_or_absent

    require_folder_or_absent(out)  # before reading SOURCE, which can take a while
    src = read_source(source, fmt)
    click.echo(f"{src.location}: {src.format} layout, {len(src.table)} images "
               f"({int(src.table['label'].sum())} malignant)", err=True)
    bar, update = progress_bar("prepare")
    t0 = time.perf_counter()
    try:
        path, state = do_prepare(src, out, size, fit, skip_bad, workers or None, progress=update,
                                 max_pixels=max_pixels)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    store = Store.open(path)
    skipped = len(store.meta["skipped"])
    verb = {"reused": "already prepared from the same input; reused", "resumed": "resumed and finished",
            "new": "prepared"}[state]
    click.echo(f"{path}: {verb}: {store.meta['n']} images at {size}x{size} "
               f"({store.meta['counts']['malignant']} malignant, {store.meta['counts']['benign']} benign)"
               + (f"; {skipped} unreadable image(s) skipped (listed in store.json)" if skipped else "")
               + (f" in {seconds:.1f} s ({store.meta['n'] / seconds:.0f} img/s)" if state != "reused" else ""))


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--val", default="50:1000", show_default=True, help="validation MALIGNANT:BENIGN image counts")
@click.option("--test", default="50:1000", show_default=True, help="test MALIGNANT:BENIGN image counts")
@click.option("--seed", default=0, show_default=True)
@click.option("--group", default="auto", show_default=True,
              type=click.Choice(GROUP_CHOICES),
              help="keep these groups on one side (auto: patient_id, else lesion_id, else image)")
@click.option("--name", default="", help="save as split-NAME.json beside the default split.json")
@click.option("--overwrite", is_flag=True, help="replace an existing, different split of that name")
def split(data_dir: Path, val: str, test: str, seed: int, group: str, name: str, overwrite: bool) -> None:
    """Fix the validation and test sets of DATA_DIR; the rest is the train pool."""
    from ..data.splits import make_split, parse_counts, save_split, split_path
    from ..data.store import Store

    store = Store.open(data_dir)
    doc = make_split(store, parse_counts(val, "val"), parse_counts(test, "test"), seed, group)
    path = split_path(data_dir, name)
    digest = save_split(doc, path, overwrite)
    c = doc["counts"]
    click.echo(f"{path}: grouped by {doc['params']['group_used']}; "
               + "; ".join(f"{side} {c[side]['malignant']} malignant / {c[side]['benign']} benign"
                           for side in ("train", "val", "test", "excluded") if side != "excluded" or sum(c[side].values()))
               + f" (sha256 {digest[:12]})")


@main.command("augment-preview")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--policy", default="medium", show_default=True, type=click.Choice(POLICIES))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="PNG to write")
@click.option("--rows", default=6, show_default=True, help="images (half malignant) from the train pool")
@click.option("--columns", default=6, show_default=True, help="the original, then augmented versions")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing file")
def augment_preview(data_dir: Path, policy: str, out: Path, rows: int, columns: int, seed: int, overwrite: bool) -> None:
    """A grid of training images as an augmentation policy changes them."""
    from ..data.augment import preview_grid

    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
    preview_grid(data_dir, policy, out, rows, columns, seed)
    click.echo(f"{out}: {rows} images x {columns} ({policy}; first column unchanged)")
