"""The `lesionlab` command: a thin layer over the library; the only place that prints.

Built on click so that `train` can offer every config key as a flag, generated from the
config model itself (a key added there is a flag here with no second list to keep in step).
"""
from __future__ import annotations

import logging
import sys
import typing
from pathlib import Path

import click

from . import __version__
from .errors import LesionLabError


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LesionLabError as e:
            _fail(e)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lesionlab")
@click.option("-v", "--verbose", is_flag=True, help="log what the library does")
def main(verbose: bool) -> None:
    """Train and judge skin-lesion classifiers when malignant cases are rare."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


# ---------------------------------------------------------------- prepare / split


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="DATA_DIR to write")
@click.option("--size", default=128, show_default=True, help="side of the square images, in pixels")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "manifest", "isic2024", "isic-csv", "folders"]), help="layout of SOURCE")
@click.option("--fit", default="stretch", show_default=True, type=click.Choice(["stretch", "crop", "pad"]),
              help="how non-square images become square")
@click.option("--skip-bad", is_flag=True, help="drop unreadable or missing images (and say how many)")
@click.option("--workers", default=0, help="decoding processes (0 = one per core)")
def prepare(source: Path, out: Path, size: int, fmt: str, fit: str, skip_bad: bool, workers: int) -> None:
    """Decode every image of SOURCE once into a prepared data set (DATA_DIR)."""
    import time

    from .data.sources import read_source
    from .data.store import Store, prepare as do_prepare

    src = read_source(source, fmt)
    click.echo(f"{src.location}: {src.format} layout, {len(src.table)} images "
               f"({int(src.table['label'].sum())} malignant)", err=True)
    bar, update = _progress_bar("prepare")
    t0 = time.perf_counter()
    try:
        path, state = do_prepare(src, out, size, fit, skip_bad, workers or None, progress=update)
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
              type=click.Choice(["auto", "patient_id", "lesion_id", "none"]),
              help="keep these groups on one side (auto: patient_id, else lesion_id, else image)")
@click.option("--name", default="", help="save as split-NAME.json beside the default split.json")
@click.option("--overwrite", is_flag=True, help="replace an existing, different split of that name")
def split(data_dir: Path, val: str, test: str, seed: int, group: str, name: str, overwrite: bool) -> None:
    """Fix the validation and test sets of DATA_DIR; the rest is the train pool."""
    from .data.splits import make_split, parse_counts, save_split, split_path
    from .data.store import Store

    store = Store.open(data_dir)
    doc = make_split(store, parse_counts(val, "val"), parse_counts(test, "test"), seed, group)
    path = split_path(data_dir, name)
    digest = save_split(doc, path, overwrite)
    c = doc["counts"]
    click.echo(f"{path}: grouped by {doc['params']['group_used']}; "
               + "; ".join(f"{side} {c[side]['malignant']} malignant / {c[side]['benign']} benign"
                           for side in ("train", "val", "test", "excluded") if side != "excluded" or sum(c[side].values()))
               + f" (sha256 {digest[:12]})")


# ---------------------------------------------------------------- train


# flags that may be given bare: `--pretrained` (= true) or `--pretrained PATH`; `--ema` or `--ema 0.99`
_BARE_FLAG_VALUES = {"pretrained": "true", "ema": "0.999"}


def _config_options(func):
    """One flag per config key, from the config model's fields and descriptions."""
    from .config import ExperimentConfig

    for key, field in reversed(list(ExperimentConfig.model_fields.items())):
        ann = field.annotation
        kind: typing.Any = str
        if ann is int:
            kind = int
        elif ann is float and key not in _BARE_FLAG_VALUES:
            kind = float
        elif typing.get_origin(ann) is typing.Literal:
            kind = click.Choice([str(a) for a in typing.get_args(ann)])
        help_text = (field.description or "").replace("%%", "%") + f" [config default: {field.default}]"
        extra = {"is_flag": False, "flag_value": _BARE_FLAG_VALUES[key]} if key in _BARE_FLAG_VALUES else {}
        func = click.option(f"--{key.replace('_', '-')}", key, type=kind, default=None, help=help_text, **extra)(func)
    return func


def _given(values: dict) -> dict:
    out = {}
    for k, v in values.items():
        if v is None:
            continue
        if k == "n_malignant" and str(v).isdigit():
            v = int(v)
        out[k] = v
    return out


def _epoch_echo(total: int):
    def echo(row: dict) -> None:
        click.echo(f"epoch {row['epoch']:>3}/{total}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                   f"val AP {row['val_average_precision']:.3f}  val pAUC80 {row['val_pauc_80']:.4f}  "
                   f"{row['train_img_s']:.0f} img/s", err=True)
    return echo


def _print_result(info: dict, out: Path) -> None:
    from .report import notebook_line

    m = info["metrics"]
    s = info["speed"]
    click.echo(f"{out}: best epoch {info['best_epoch']} on {info['monitor']}, threshold {info['threshold']:.3g} "
               f"({info['threshold_rule']}); {s['train_img_s']:.0f} img/s training, "
               f"{s['compute_img_s']:.0f} img/s pure compute ({s['loop_vs_compute']:.2f})", err=True)
    click.echo(notebook_line("Val", m["val"]))
    click.echo(notebook_line("Test", m["test"]))


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"expected distinct integers such as 0,1,2, got '{text}'", param_hint="--seeds")
    return seeds


@main.command()
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="RUN_DIR to create")
@click.option("--seeds", default=None, help="train once per seed (e.g. 0,1,2) into RUN_DIR/seed-N; the report "
              "shows mean ± sd")
@_config_options
def train(config_file: Path | None, out: Path, seeds: str | None, **flags) -> None:
    """Train one experiment (CONFIG.yaml and/or flags) into RUN_DIR."""
    from .config import resolve
    from .experiment import run_experiment
    from .runs import is_complete_run

    cfg = resolve(config_file, _given(flags))
    if not seeds:
        info = run_experiment(cfg, out, on_epoch=_epoch_echo(cfg.epochs))
        _print_result(info, out)
        return
    if not cfg.name:
        cfg = cfg.model_copy(update={"name": out.name})
    for seed in _parse_seeds(seeds):
        folder = out / f"seed-{seed}"
        if is_complete_run(folder):
            click.echo(f"{folder}: complete, skipped", err=True)
            continue
        click.echo(f"{folder}: seed {seed}", err=True)
        info = run_experiment(cfg.model_copy(update={"seed": seed}), folder, on_epoch=_epoch_echo(cfg.epochs))
        _print_result(info, folder)


# ---------------------------------------------------------------- sweep / report / predict


@main.command()
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="DATA_DIR for every run (overrides the file)")
@click.option("--out", "out", default=None, help="RUNS_DIR (overrides the file's 'out')")
@click.option("--epochs", default=None, type=int, help="override every run's epochs")
@click.option("--dry-run", is_flag=True, help="list the runs and whether each is complete")
def sweep(sweep_file: Path, data: str | None, out: str | None, epochs: int | None, dry_run: bool) -> None:
    """Run a grid of experiments, skipping those already complete."""
    from .experiment import run_experiment
    from .runs import is_complete_run
    from .sweep import plan, run_sweep

    planned = plan(sweep_file, data, out, {"epochs": epochs} if epochs else None)
    if dry_run:
        for p in planned:
            click.echo(f"{'complete' if is_complete_run(p.folder) else 'to run  '}  {p.folder}")
        return

    def run(cfg, folder):
        info = run_experiment(cfg, folder, on_epoch=_epoch_echo(cfg.epochs))
        _print_result(info, folder)

    result = run_sweep(planned, run, echo=lambda s: click.echo(s, err=True))
    click.echo(f"sweep: {len(result['done'])} run(s) done, {len(result['skipped'])} already complete, "
               f"{len(result['failed'])} failed", err=True)
    if result["failed"]:
        sys.exit(1)


@main.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="REPORT_DIR")
@click.option("--title", default="lesionlab report", show_default=True)
@click.option("--baseline", default=None, help="experiment name to compare every other experiment against "
              "(paired bootstrap on the same test images)")
@click.option("--n-boot", default=2000, show_default=True, help="bootstrap resamples of the paired comparisons")
def report(runs_dir: Path, out: Path, title: str, baseline: str | None, n_boot: int) -> None:
    """Write report.md and a self-contained report.html for every run under RUNS_DIR."""
    from .report import build_report

    path = build_report(runs_dir, out, title, baseline=baseline, n_boot=n_boot)
    click.echo(f"report: {path / 'report.html'} (and report.md)")


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--n-boot", default=2000, show_default=True, help="bootstrap resamples")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_out", default=None, type=click.Path(path_type=Path), help="also write the result as JSON")
def compare(run_a: Path, run_b: Path, n_boot: int, seed: int, json_out: Path | None) -> None:
    """Paired bootstrap difference B - A on the same test images (ROC AUC, AP, pAUC80, F1).

    RUN_A and RUN_B are run folders, or folders of runs of one experiment (its seeds)."""
    from .compare import compare_runs, format_comparison, load_side
    from .fileio import write_json

    res = compare_runs(load_side(run_a), load_side(run_b), n_boot=n_boot, seed=seed)
    for line in format_comparison(res, str(run_a), str(run_b)):
        click.echo(line)
    if json_out:
        write_json(json_out, res)


@main.command("augment-preview")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--policy", default="medium", show_default=True, type=click.Choice(["none", "light", "medium", "heavy"]))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="PNG to write")
@click.option("--rows", default=6, show_default=True, help="images (half malignant) from the train pool")
@click.option("--columns", default=6, show_default=True, help="the original, then augmented versions")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="replace an existing file")
def augment_preview(data_dir: Path, policy: str, out: Path, rows: int, columns: int, seed: int, overwrite: bool) -> None:
    """A grid of training images as an augmentation policy changes them."""
    from .data.augment import preview_grid

    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
    preview_grid(data_dir, policy, out, rows, columns, seed)
    click.echo(f"{out}: {rows} images x {columns} ({policy}; first column unchanged)")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="CSV to write")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "images", "manifest", "isic2024", "isic-csv", "folders"]))
@click.option("--skip-bad", is_flag=True, help="skip unreadable images instead of stopping")
@click.option("--overwrite", is_flag=True, help="replace an existing output file")
@click.option("--workers", default=0, help="decoding processes (0 = one per core)")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
def predict(run_dir: Path, source: Path, out: Path, fmt: str, skip_bad: bool, overwrite: bool, workers: int,
            batch_size: int, device: str) -> None:
    """Score images (a file, folder, manifest or ISIC 2024 pair) with a trained run."""
    from .predict import predict as do_predict

    bar, update = _progress_bar("predict")
    try:
        result = do_predict(run_dir, source, out, fmt, skip_bad, overwrite, workers or None, batch_size, device, update)
    finally:
        bar.close()
    click.echo(f"{out}: {result['n']} image(s) scored at threshold {result['threshold']:.3g}"
               + (f", {result['skipped']} unreadable skipped" if result["skipped"] else "")
               + f" ({result['img_s']:.0f} img/s)")


@main.command()
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=None, type=int, help="override the demo's 8 epochs")
def demo(out: Path, epochs: int | None) -> None:
    """Run the whole flow on the sample shipped with lesionlab and write a report."""
    from .demo import run_demo
    from .report import notebook_line
    from .runs import find_runs

    html_path = run_demo(out, epochs, echo=lambda s: click.echo(s, err=True), on_epoch=_epoch_echo(epochs or 8))
    for run in find_runs(out / "runs"):
        click.echo(f"{run.name} (seed {run.seed})")
        click.echo("  " + notebook_line("Val", run.metrics["val"]))
        click.echo("  " + notebook_line("Test", run.metrics["test"]))
    click.echo(f"report: {html_path.resolve()}")


@main.command("models")
def models_cmd() -> None:
    """List the model names the registry knows."""
    from .models import get_spec, list_models

    for name in list_models():
        click.echo(f"{name:20s} {get_spec(name).description}")


if __name__ == "__main__":  # pragma: no cover
    main()
