"""The `lesionlab` command: a thin layer over the library; the only place that prints.

Built on click so that `train` can offer every config key as a flag, generated from the
config model itself (a key added there is a flag here with no second list to keep in step).
"""
from __future__ import annotations

import logging
import sys
import time
import types
import typing
from pathlib import Path

import click

from . import __version__
from .choices import COMPARE_ON, DEMO_SAMPLES, ENSEMBLE_MEANS, FITS, FORMATS, GROUP_CHOICES, POLICIES, PREDICT_FORMATS, TTA_MODES
from .errors import LesionLabError

PREPARE_FORMATS = tuple(f for f in FORMATS if f != "images")  # loose image files carry no labels


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LesionLabError as e:
            _fail(e)
        except OSError as e:
            # a read-only or full filesystem met anywhere (not only in fileio's write helpers, which
            # say so themselves): these errors can only come from writing, so they name where
            from .fileio import WRITE_ONLY_ERRNOS, unwritable

            err = unwritable(e) if e.errno in WRITE_ONLY_ERRNOS else None
            if err is None:
                raise
            _fail(err)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="lesionlab")
@click.option("-v", "--verbose", is_flag=True, help="log what the library does")
def main(verbose: bool) -> None:
    """Train and judge skin-lesion classifiers when malignant cases are rare."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class _LineProgress:
    """The part of tqdm's interface used here, written as a plain line every EVERY seconds (and one
    at the end) instead of a bar: when stderr is a log file or a pipe, tqdm's carriage-return
    updates would fill it with hundreds of partial lines."""

    EVERY = 5.0

    def __init__(self, desc: str, unit: str, total: int = 0):
        self.desc, self.unit, self.total, self.n = desc, unit, total or 0, 0
        self.postfix = ""
        self._last = time.monotonic()
        self._shown = ""

    def _line(self) -> str:
        if self.total:
            return f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%){self.postfix}"
        return f"{self.desc}: {self.n} {self.unit}{self.postfix}"

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.EVERY:
            line = self._line()
            if line != self._shown and (self.n or self.total):
                click.echo(line, err=True)
                self._shown = line
            self._last = now

    def update(self, k: int = 1) -> None:
        self.n += k
        self.refresh()

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total or 0

    def set_postfix(self, values: dict, refresh: bool = True) -> None:
        self.postfix = "  " + "  ".join(f"{k} {v}" for k, v in values.items())
        if refresh:
            self.refresh()

    def clear(self) -> None:
        pass

    def close(self) -> None:
        self.refresh(force=True)


def _bar(desc: str, unit: str = "img", total: int = 0, leave: bool = True, mininterval: float = 0.5):
    """A tqdm bar on a terminal, else a line every few seconds (_LineProgress)."""
    if not sys.stderr.isatty():
        return _LineProgress(desc, unit, total)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=mininterval,
                leave=leave)


def _progress_bar(desc: str):
    bar = _bar(desc)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


# ---------------------------------------------------------------- prepare / split


def _max_pixels_option(func):
    from .data.images import DEFAULT_MAX_PIXELS

    return click.option(
        "--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(min=1),
        help="images whose header states more pixels (width x height) are unreadable, refused before decoding "
             "(a decompression bomb); raise it for huge images you trust")(func)


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
@_max_pixels_option
def prepare(source: Path, out: Path, size: int, fmt: str, fit: str, skip_bad: bool, workers: int,
            max_pixels: int) -> None:
    """Decode every image of SOURCE once into a prepared data set (DATA_DIR)."""
    import time

    from .data.sources import read_source
    from .data.store import Store
    from .data.store import prepare as do_prepare
    from .fileio import require_folder_or_absent

    require_folder_or_absent(out)  # before reading SOURCE, which can take a while
    src = read_source(source, fmt)
    click.echo(f"{src.location}: {src.format} layout, {len(src.table)} images "
               f"({int(src.table['label'].sum())} malignant)", err=True)
    bar, update = _progress_bar("prepare")
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


def _model_options(model_cls, skip: tuple[str, ...] = ()):
    """One flag per field of a pydantic config model, from its fields and descriptions (a key added
    there is a flag here with no second list to keep in step). Flags not given stay None (or an
    empty tuple for a list), and _given leaves them out, so a config file's values stand."""

    def wrap(func):
        for key, field in reversed(list(model_cls.model_fields.items())):
            if key in skip:
                continue
            if key == "synthetic":  # a mapping in the config, two flags here
                func = click.option("--synthetic-n", "synthetic_n", type=int, default=None,
                                    help="how many synthetic images to add (default: all)")(func)
                func = click.option("--synthetic", "synthetic", default=None,
                                    help="SYN_DATA_DIR: a prepared data set of synthetic malignant images, added to "
                                         "the training draw only")(func)
                continue
            ann, flag = field.annotation, key.replace("_", "-")
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
                ann = args[0]  # Optional[X]: a flag of type X, None when not given
            default = "[]" if field.default_factory is list else field.default
            help_text = (field.description or "").replace("%%", "%") + f" [config default: {default}]"
            if ann is bool:  # --key / --no-key
                func = click.option(f"--{flag}/--no-{flag}", key, default=None, help=help_text)(func)
                continue
            if typing.get_origin(ann) is list:  # repeatable
                func = click.option(f"--{flag}", key, multiple=True, help=help_text + " (repeatable)")(func)
                continue
            kind: typing.Any = str
            if ann is int:
                kind = int
            elif ann is float and key not in _BARE_FLAG_VALUES:
                kind = float
            elif typing.get_origin(ann) is typing.Literal:
                kind = click.Choice([str(a) for a in typing.get_args(ann)])
            extra = {"is_flag": False, "flag_value": _BARE_FLAG_VALUES[key]} if key in _BARE_FLAG_VALUES else {}
            func = click.option(f"--{flag}", key, type=kind, default=None, help=help_text, **extra)(func)
        return func

    return wrap


def _config_options(func):
    from .config import ExperimentConfig

    return _model_options(ExperimentConfig)(func)


def _given(values: dict) -> dict:
    out = {}
    syn_data, syn_n = values.pop("synthetic", None), values.pop("synthetic_n", None)
    if syn_data is not None or syn_n is not None:
        if syn_data is None:
            raise click.UsageError("--synthetic-n needs --synthetic SYN_DATA_DIR")
        out["synthetic"] = {"data": syn_data, "n": syn_n}
    for k, v in values.items():
        if v is None or v == ():  # not given (a repeatable flag gives an empty tuple)
            continue
        if k == "n_malignant" and str(v).isdigit():
            v = int(v)
        out[k] = v
    return out


def _epoch_echo(total: int):
    from .workflows.train import epoch_line

    return lambda row: click.echo(epoch_line(row, total), err=True)


def _print_result(info: dict, out: Path) -> None:
    from .workflows.report import notebook_line

    if not info:  # a torchrun process other than rank 0: rank 0 reports
        return
    m = info["metrics"]
    s = info["speed"]
    compute = (f", {s['compute_img_s']:.0f} img/s pure compute ({s['loop_vs_compute']:.2f})"
               if s.get("compute_img_s") else "")
    click.echo(f"{out}: best epoch {info['best_epoch']} on {info['monitor']}, threshold {info['threshold']:.3g} "
               f"({info['threshold_rule']}); {s['train_img_s']:.0f} img/s training{compute}", err=True)
    click.echo(notebook_line("Val", m["val"]))
    click.echo(notebook_line("Test", m["test"]))
    if m.get("audit"):
        from .audit.summary import headline

        click.echo(f"Shortcut audit (test): {headline(m['audit'])}")


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
    from .workflows.train import train as do_train
    from .runs import is_complete_run

    cfg = resolve(config_file, _given(flags))
    if not seeds:
        info = do_train(cfg, out, on_epoch=_epoch_echo(cfg.epochs))
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
        info = do_train(cfg.model_copy(update={"seed": seed}), folder, on_epoch=_epoch_echo(cfg.epochs))
        _print_result(info, folder)


# ---------------------------------------------------------------- cv / ensemble


def _metric_cell(m: dict, key: str) -> str:
    ci = m.get("ci95", {}).get(key)
    return f"{m[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _print_cv(res: dict, out: Path) -> None:
    if not res.get("complete"):
        click.echo(f"{out}: {len(res['left'])} fold(s) left to train (by other workers or a later call)", err=True)
        return
    info, m = res["run"], res["run"]["metrics"]
    unit = m["oof"].get("ci95_unit", "image")
    click.echo(f"{out}: {info['folds']}-fold cv x {info['repeats']} repeat(s), grouped by {info['group_rule']}, "
               f"fold hash {info['fold_sha256'][:12]}; intervals resample whole {unit} groups", err=True)
    for side, label in (("oof", f"OOF ({m['oof']['n_malignant']} malignant / {m['oof']['n_benign']} benign)"),
                        ("val", "fold ensemble, val"), ("test", "fold ensemble, test")):
        click.echo(f"{label}: " + "; ".join(f"{k} {_metric_cell(m[side], k)}"
                                            for k in ("roc_auc", "average_precision", "pauc_80", "f1")))


@main.command()
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="CV_DIR to create or resume")
@click.option("--folds", "n_folds", default=5, show_default=True, help="K: folds over the split's train pool")
@click.option("--repeats", default=1, show_default=True, help="repeat the K folds with reshuffled assignments")
@click.option("--fold-seed", default=None, type=int, help="seed of the fold assignment (default: --seed)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="claiming processes to train folds on this machine")
@click.option("--claim", is_flag=True, help="take folds through lock files (workers sharing CV_DIR)")
@click.option("--task-index", default=None, type=click.IntRange(min=0),
              help="job array: this task's index; task i trains folds i, i+N, ...")
@click.option("--task-count", default=None, type=click.IntRange(min=1), help="job array: number of tasks")
@click.option("--no-finish", "no_finish", is_flag=True, hidden=True, help="train folds only (a worker)")
@_config_options
def cv(config_file: Path | None, out: Path, n_folds: int, repeats: int, fold_seed: int | None, workers: int, claim: bool,
       task_index: int | None, task_count: int | None, no_finish: bool, **flags) -> None:
    """Grouped, stratified K-fold cross-validation of one config over the split's train pool.

    Each fold trains as `train` does, on the other folds (with an inner validation part drawn from
    them); CV_DIR gets out-of-fold predictions and metrics, and the fold ensemble's val and test
    metrics. A finished fold is never retrained, so the same command resumes."""
    from .config import resolve
    from .workflows.cv import run_cv, start_local_workers

    cfg = resolve(config_file, _given(flags))
    if task_count is None and task_index is not None:
        raise click.UsageError("--task-index needs --task-count")
    if workers > 1:
        code = start_local_workers(cfg, out, n_folds, repeats, fold_seed, workers)
        if code:
            sys.exit(code)
    res = run_cv(cfg, out, n_folds, repeats, fold_seed, on_epoch=_epoch_echo(cfg.epochs),
                 echo=lambda t: click.echo(t, err=True), task_index=task_index or 0, task_count=task_count or 1,
                 claim=claim, finish=not no_finish)
    _print_cv(res, out)


@main.command()
@click.argument("members", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="ENS_DIR to create")
@click.option("--mean", default="prob", show_default=True, type=click.Choice(ENSEMBLE_MEANS),
              help="average the probabilities, or the logits (a geometric mean of the odds)")
@click.option("--tta", default=None, type=click.Choice(TTA_MODES),
              help="test-time augmentation for every member (default: each member's own)")
@click.option("--threshold", default=None, help="rule for the ensemble's threshold, chosen on val (default: the first member's)")
@click.option("--data", default=None, type=click.Path(path_type=Path), help="DATA_DIR, if it moved since the members were trained")
@click.option("--name", default="", help="name in reports (default: ENS_DIR's name)")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(min=0),
              help="bootstrap resamples for the 95% intervals (0 = none)")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
def ensemble(members: tuple[Path, ...], out: Path, mean: str, tta: str | None, threshold: str | None, data: Path | None,
             name: str, n_boot: int, seed: int, device: str, batch_size: int) -> None:
    """Average several runs and/or cv folders (their folds) of one split; judge on its val and test."""
    from .workflows.ensemble import build_ensemble

    info = build_ensemble(list(members), out, mean, tta, threshold, data, n_boot, seed, name, device, batch_size)
    m = info["metrics"]
    click.echo(f"{out}: {info['n_members']} member(s), mean of {mean}s, TTA {tta or 'as each member'}, threshold "
               f"{info['threshold']:.3g} ({info['threshold_rule']}, chosen on val)", err=True)
    for side in ("val", "test"):
        click.echo(f"{side}: " + "; ".join(f"{k} {_metric_cell(m[side], k)}"
                                          for k in ("roc_auc", "average_precision", "pauc_80", "f1")))


# ---------------------------------------------------------------- tabular


def _tabular_options(func):
    from .config import TabularConfig

    return _model_options(TabularConfig, skip=("data",))(func)


@main.command()
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="DATA_DIR (prepared, with a split)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="RUN_DIR to create")
@_tabular_options
def tabular(data: Path, out: Path, **flags) -> None:
    """A gradient-boosted model on the metadata columns (optionally fused with an image model) into RUN_DIR."""
    from .config import build_tabular_config
    from .workflows.report import notebook_line
    from .tabular.command import tabular_run

    cfg = build_tabular_config({"data": str(data), **_given(flags)}, "flags")
    info = tabular_run(cfg, out, echo=lambda s: click.echo(s, err=True))
    m = info["metrics"]
    click.echo(f"{out}: {info['folds']['k']} folds, threshold {info['threshold']:.3g} ({info['threshold_rule']}); "
               f"out of fold ROC AUC {m['oof']['roc_auc']:.4f}, pAUC80 {m['oof']['pauc_80']:.4f}", err=True)
    click.echo(notebook_line("Val", m["val"]))
    click.echo(notebook_line("Test", m["test"]))
    click.echo(f"Test ROC AUC: {m['test']['roc_auc']:.4f} | pAUC80: {m['test']['pauc_80']:.4f} | "
               f"AP: {m['test']['average_precision']:.4f}")


# ---------------------------------------------------------------- sweep / report / predict


@main.command()
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="DATA_DIR for every run (overrides the file)")
@click.option("--out", "out", default=None, help="RUNS_DIR (overrides the file's 'out')")
@click.option("--epochs", default=None, type=int, help="override every run's epochs")
@click.option("--dry-run", is_flag=True, help="list the runs and whether each is complete")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="claiming workers to start on this machine")
@click.option("--claim", is_flag=True, help="take runs through claim files, so that several workers (or machines "
              "sharing RUNS_DIR) can share one sweep")
@click.option("--task-index", default=None, type=click.IntRange(min=0),
              help="job array: this task's index (e.g. $SLURM_ARRAY_TASK_ID)")
@click.option("--task-count", default=None, type=click.IntRange(min=1),
              help="job array: number of tasks; task i takes runs i, i+N, ...")
def sweep(sweep_file: Path, data: str | None, out: str | None, epochs: int | None, dry_run: bool, workers: int,
          claim: bool, task_index: int | None, task_count: int | None) -> None:
    """Run a grid of experiments, skipping those already complete.

    Several workers: `--workers K` here, or a job array on a cluster with one task per run
    (`--task-index $SLURM_ARRAY_TASK_ID --task-count N`), or any number of `--claim` workers on
    machines that share RUNS_DIR."""
    from .workflows.train import train as do_train
    from .runs import is_complete_run
    from .workflows.sweep import read_sweep, run_local_workers, run_sweep

    planned = read_sweep(sweep_file, data, out, {"epochs": epochs} if epochs else None)
    if dry_run:
        for p in planned:
            click.echo(f"{'complete' if is_complete_run(p.folder) else 'to run  '}  {p.folder}")
        return
    if workers > 1:
        passed = [a for flag, v in (("--data", data), ("--out", out), ("--epochs", epochs)) if v is not None
                  for a in (flag, str(v))]
        code = run_local_workers(sweep_file, workers, passed)
        left = [p.folder for p in planned if not is_complete_run(p.folder)]
        click.echo(f"sweep: {workers} workers finished; {len(planned) - len(left)} of {len(planned)} runs complete", err=True)
        sys.exit(code or (1 if left else 0))
    if task_count is None and task_index is not None:
        raise click.UsageError("--task-index needs --task-count")

    def run(cfg, folder):
        info = do_train(cfg, folder, on_epoch=_epoch_echo(cfg.epochs))
        _print_result(info, folder)

    result = run_sweep(planned, run, echo=lambda s: click.echo(s, err=True), task_index=task_index or 0,
                       task_count=task_count or 1, claim=claim)
    click.echo(f"sweep: {len(result['done'])} run(s) done, {len(result['skipped'])} already complete, "
               f"{len(result['failed'])} failed" + (f", {len(result['elsewhere'])} taken by other workers"
                                                     if result["elsewhere"] else ""), err=True)
    if result["failed"]:
        sys.exit(1)


@main.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="REPORT_DIR")
@click.option("--title", default="lesionlab report", show_default=True)
@click.option("--baseline", default=None, help="experiment name to compare every other experiment against "
              "(paired bootstrap on the same test images)")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(min=1),
              help="bootstrap resamples of the paired comparisons")
def report(runs_dir: Path, out: Path, title: str, baseline: str | None, n_boot: int) -> None:
    """Write report.md and a self-contained report.html for every run under RUNS_DIR."""
    from .workflows.report import build_report

    skipped: list = []
    path = build_report(runs_dir, out, title, baseline=baseline, n_boot=n_boot, skipped=skipped)
    if skipped:
        click.echo(f"report: {len(skipped)} damaged run(s) skipped (named in the report): "
                   + "; ".join(f"{folder} ({reason})" for folder, reason in skipped[:5])
                   + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else ""), err=True)
    click.echo(f"report: {path / 'report.html'} (and report.md)")


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(min=1), help="bootstrap resamples")
@click.option("--seed", default=0, show_default=True)
@click.option("--on", "on", default="auto", show_default=True, type=click.Choice(COMPARE_ON),
              help="images to pair on: out-of-fold (cv and tabular runs on the same folds) or test; auto = "
                   "out-of-fold where both sides have it")
@click.option("--json", "json_out", default=None, type=click.Path(path_type=Path), help="also write the result as JSON")
def compare(run_a: Path, run_b: Path, n_boot: int, seed: int, on: str, json_out: Path | None) -> None:
    """Paired bootstrap difference B - A on the same images (ROC AUC, AP, pAUC80, F1): out-of-fold
    images when both sides are cv or tabular runs on the same folds, else the split's test images.

    RUN_A and RUN_B are run folders, or folders of runs of one experiment (its seeds)."""
    from .workflows.compare import compare_runs, format_comparison, load_side
    from .fileio import write_json

    res = compare_runs(load_side(run_a), load_side(run_b), n_boot=n_boot, seed=seed, on=on)
    for line in format_comparison(res, str(run_a), str(run_b)):
        click.echo(line)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, res)


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
    from .data.augment import preview_grid

    if out.exists() and not overwrite:
        raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
    preview_grid(data_dir, policy, out, rows, columns, seed)
    click.echo(f"{out}: {rows} images x {columns} ({policy}; first column unchanged)")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="CSV to write")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(PREDICT_FORMATS),
              help="layout of SOURCE; kaggle: SOURCE is any layout with ISIC ids (the competition's test-metadata.csv "
                   "+ test-image.hdf5) and the CSV is the competition's submission file, isic_id,target")
@click.option("--skip-bad", is_flag=True, help="skip unreadable images instead of stopping")
@click.option("--overwrite", is_flag=True, help="replace an existing output file")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="decoding processes (0 = one per core)")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
@_max_pixels_option
@click.option("--tta", default=None, type=click.Choice(TTA_MODES),
              help="test-time augmentation (default: what the run recorded)")
@click.option("--engine", default="torch", show_default=True, type=click.Choice(["torch", "onnxruntime"]),
              help="onnxruntime: RUN_DIR is a MODEL.onnx from `lesionlab export`, scored without torch")
def predict(run_dir: Path, source: Path, out: Path, fmt: str, skip_bad: bool, overwrite: bool, workers: int,
            batch_size: int, device: str, max_pixels: int, tta: str | None, engine: str) -> None:
    """Score images (a file, folder, manifest, ISIC 2024 pair or release) with a train, cv or ensemble run
    (or an exported model); with a tabular run, the rows of a manifest or an ISIC 2024 pair (their metadata
    columns, and their images when the run is fused with an image model). `--format kaggle` writes the
    ISIC 2024 competition's submission file."""
    from .workflows.predict import predict as do_predict

    bar, update = _progress_bar("predict")
    try:
        result = do_predict(run_dir, source, out, fmt, skip_bad, overwrite, workers or None, batch_size, device, update,
                            max_pixels=max_pixels, tta=tta, engine=engine)
    finally:
        bar.close()
    from .errors import preview

    unit = result.get("unit", "image")
    scored = (f"the competition's submission (isic_id,target) of {result['n']} {unit}(s)" if result.get("kaggle")
              else f"{result['n']} {unit}(s) scored at threshold {result['threshold']:.3g}")
    click.echo(f"{out}: {scored}"
               + f" ({result['img_s']:.0f} {'img' if unit == 'image' else unit}/s)")
    if result["skipped"]:
        click.echo(f"{out}: {result['skipped']} unreadable skipped: {preview(result['skipped_ids'], 3)}; all listed "
                   f"with the reason in {result['skipped_file']}", err=True)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="DIR for the overlays and index")
@click.option("--method", default="gradcam", show_default=True, type=click.Choice(["gradcam", "gradcam++", "scorecam"]))
@click.option("--target-layer", default=None, help="module path of the layer the CAM weighs (default: the model "
              "registry's, e.g. relu1 for simple_cnn, features.14 for upgraded_cnn, layer4 for resnet18)")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(FORMATS), help="layout of SOURCE")
@click.option("--overwrite", is_flag=True, help="replace an earlier explain output in DIR (nothing else is replaced)")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
def explain(run_dir: Path, source: Path, out: Path, method: str, target_layer: str | None, fmt: str, overwrite: bool,
            batch_size: int, device: str) -> None:
    """Class-activation overlays (where the model sees malignancy) for an image, a folder or a manifest."""
    from .workflows.explain import explain as do_explain

    bar, update = _progress_bar("explain")
    try:
        result = do_explain(run_dir, source, out, method, target_layer, fmt, overwrite, batch_size, device, update)
    finally:
        bar.close()
    from .errors import preview

    click.echo(f"{out}: {result['n']} overlay(s) ({method} on {', '.join(sorted(set(result['layers'])))}), "
               f"index.csv and index.html" + (f"; {len(result['skipped'])} unreadable skipped: {preview(result['skipped'], 3)}"
                                              if result["skipped"] else ""))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="AUDIT_DIR to create")
@click.option("--data", default=None, type=click.Path(path_type=Path),
              help="DATA_DIR of the run's test set, when it is no longer where run.json says")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(FORMATS), help="INPUT's layout")
@click.option("--frame", default=0.15, show_default=True, type=float, help="the outer frame's width, a share of each side")
@click.option("--method", default="gradcam", show_default=True, type=click.Choice(["gradcam", "gradcam++", "scorecam"]))
@click.option("--target-layer", default=None, help="module path of the CAM's layer (default: the model registry's)")
@click.option("--strata", default=None, help="metadata columns to split the metrics by, comma-separated "
              "(default: attribution, ISIC 2024's institution, where the data has it)")
@click.option("--gallery", default=4, show_default=True, type=click.IntRange(min=0),
              help="images per outcome (TP, FP, FN, TN) in the gallery of the most evidence off the lesion")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(min=0), help="bootstrap resamples")
@click.option("--seed", default=0, show_default=True)
@click.option("--record/--no-record", default=True, show_default=True,
              help="with the run's test set, record the audit in the run's metrics.json (the one it replaces is kept "
                   "under audit.previous)")
@click.option("--overwrite", is_flag=True, help="replace an earlier audit in AUDIT_DIR (nothing else is replaced)")
@click.option("--skip-bad", is_flag=True, help="skip unreadable INPUT images instead of stopping")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="CAM batch size")
@click.option("--device", default="auto", show_default=True)
def audit(run_dir: Path, source: Path | None, out: Path, data: Path | None, fmt: str, frame: float, method: str,
          target_layer: str | None, strata: str | None, gallery: int, n_boot: int, seed: int, record: bool,
          overwrite: bool, skip_bad: bool, batch_size: int, device: str) -> None:
    """Is the model looking at the lesion? CAM mass in the outer frame and off the lesion, what hiding them
    does to the probabilities and ROC AUC, and metrics with and without artifacts (and per institution), for
    a train, cv or ensemble run on its test set (INPUT left out) or on INPUT: an image, folder, manifest or
    ISIC 2024 pair."""
    from .audit import AuditSettings
    from .audit.command import audit_run
    from .audit.summary import lines

    columns = [c.strip() for c in strata.split(",") if c.strip()] if strata is not None else None
    settings = AuditSettings(frame=frame, method=method, target_layer=target_layer, n_boot=n_boot, seed=seed,
                             batch_size=batch_size, gallery=gallery)
    bar, update = _progress_bar("audit")
    try:
        result = audit_run(run_dir, source, out, data=data, fmt=fmt, settings=settings, strata=columns,
                           record_in_run=record, overwrite=overwrite, device=device, skip_bad=skip_bad, progress=update)
    finally:
        bar.close()
    for line in lines(result["block"]):
        click.echo(line)
    where = (f"; recorded in {run_dir / 'metrics.json'} as audit" +
             (f" (the earlier audit kept under audit.previous)" if result["replaced"] else "")) if result["recorded"] else ""
    click.echo(f"{out}: audit.json, audit.csv, audit.md, figures/{where}"
               + (f"; {len(result['skipped'])} unreadable skipped" if result["skipped"] else ""))


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx", "torchscript"]))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="FILE to write (.onnx or .pt)")
@click.option("--overwrite", is_flag=True, help="replace an existing file")
@click.option("--verify", "n_verify", default=64, show_default=True, type=click.IntRange(min=1),
              help="images checked against the torch model (at least 1: an export is always checked)")
def export_cmd(run_dir: Path, fmt: str, out: Path, overwrite: bool, n_verify: int) -> None:
    """Export a run (or an ensemble) with its preprocessing and decision rule in one file."""
    from .workflows.export import export as do_export

    r = do_export(run_dir, fmt, out, overwrite, n_verify)
    click.echo(f"{out}: {fmt}, {r['bytes'] / 1e6:.1f} MB; input uint8 (N, {r['metadata']['size']}, "
               f"{r['metadata']['size']}, 3), output p(malignant), threshold {r['metadata']['threshold']:.3g}; "
               f"max |difference| to torch {r['max_abs_diff']:.1e} on {r['images']}")


@main.command()
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=None, type=int, help="override the demo's 8 epochs")
@click.option("--sample", default=DEMO_SAMPLES[0], show_default=True, type=click.Choice(DEMO_SAMPLES),
              help="the shipped sample: real ISIC 2024 (SLICE-3D) crops, the seed study's kind of image, or HAM10000 "
                   "dermoscopy")
def demo(out: Path, epochs: int | None, sample: str) -> None:
    """Run the whole flow on a sample shipped with lesionlab and write a report."""
    from .workflows.demo import run_demo
    from .workflows.report import notebook_line
    from .runs import find_runs

    html_path = run_demo(out, epochs, echo=lambda s: click.echo(s, err=True), on_epoch=_epoch_echo(epochs or 8),
                         sample=sample)
    for run in find_runs(out / "runs"):
        click.echo(f"{run.name} (seed {run.seed})")
        click.echo("  " + notebook_line("Val", run.metrics["val"]))
        click.echo("  " + notebook_line("Test", run.metrics["test"]))
    click.echo(f"report: {html_path.resolve()}")


@main.group()
def synth() -> None:
    """Synthetic images: train a generator, sample, import, check quality and copies."""


@synth.command("train")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="GEN_DIR")
@click.option("--kind", default="projected", show_default=True, type=click.Choice(["projected", "gan", "ddpm"]),
              help="projected: Projected GAN (frozen ImageNet EfficientNet-Lite0 discriminator features, FastGAN "
                   "generator, DiffAugment); gan: DCGAN with DiffAugment; ddpm: diffusers UNet2DModel with DDPM/DDIM")
@click.option("--classes", default=None, type=click.Choice(["both", "one"]),
              help="both: class-conditional on the whole train pool (projected only; the default there); one: only "
                   "--label's images (the default of gan and ddpm)")
@click.option("--label", default="malignant", show_default=True, type=click.Choice(["malignant", "benign"]),
              help="the class to learn (--classes one) or to estimate FID on")
@click.option("--size", default=64, show_default=True, type=click.Choice(["32", "64", "128"]), help="pixels")
@click.option("--steps", default=4000, show_default=True, help="training steps (more continues a finished generator)")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--sample-every", default=500, show_default=True, help="steps between sample grids")
@click.option("--checkpoint-every", default=250, show_default=True, help="steps between checkpoints")
@click.option("--time-budget", default=None, type=float, help="minutes: stop at a checkpoint once spent")
@click.option("--n-real", default=None, type=int, help="learn only from the images a training draw of this many "
              "takes (e.g. 293 = the notebook's draw; default: the whole train pool of the class)")
@click.option("--draw-seed", default=0, show_default=True, help="the seed of that training draw")
@click.option("--sample-steps", default=50, show_default=True, help="ddpm: DDIM steps per sample")
@click.option("--d-res", default=96, show_default=True,
              help="projected: pixels at which the discriminator's frozen network sees each image (the paper: 224)")
@click.option("--fid-every", default=500, show_default=True, help="steps between FID estimates (0: none)")
@click.option("--fid-features", default="random", show_default=True,
              help="network of the FID estimate: random (a never-trained VGG-11) or RUN_DIR of a trained classifier")
@click.option("--fid-n", default=500, show_default=True, help="images a side in the FID estimate (a fixed subset)")
def synth_train(data_dir: Path, out: Path, kind: str, classes: str | None, label: str, size: str, steps: int,
                batch_size: int, seed: int, sample_every: int, checkpoint_every: int, time_budget: float | None,
                n_real: int | None, draw_seed: int, sample_steps: int, d_res: int, fid_every: int, fid_features: str,
                fid_n: int) -> None:
    """Train a generator on the train pool (never on val/test); resumes where it stopped."""
    from .synth.generator import train_generator

    bar = _bar(f"synth {kind}", "step", steps, mininterval=1)
    shown: dict = {}

    def progress(step: int, total: int, losses: dict) -> None:
        if "fid" in losses:  # a line of its own, above a terminal's bar
            line = f"step {step}: FID estimate {losses['fid']:.2f} ({fid_n} {label} images a side, {fid_features} features)"
            if hasattr(bar, "write"):
                bar.write(line, file=sys.stderr)
            else:
                click.echo(line, err=True)
        shown.update(losses)
        bar.n = step
        bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
        bar.refresh()

    try:
        info = train_generator(data_dir, out, kind, label, int(size), steps, batch_size, None, seed, sample_every,
                               checkpoint_every, time_budget * 60 if time_budget else None, progress, n_real, draw_seed,
                               sample_steps, classes, d_res, fid_every, fid_features, fid_n)
    finally:
        bar.close()
    learned = ", ".join(f"{k} {v}" for k, v in info["n_real_per_class"].items())
    click.echo(f"{out}: {info['generator_id']}, {info['steps']} steps on real images ({learned}) in "
               f"{info['train_seconds'] / 60:.1f} min" + (" (stopped by the time budget)" if info["stopped_by_time_budget"] else "")
               + (f"; FID estimate {info['fid_estimate']['last']:.2f}" if info.get("fid_estimate") else ""))


@synth.command("sample")
@click.argument("gen_dir", type=click.Path(path_type=Path))
@click.option("--n", "n", default=3000, show_default=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="SYN_DIR")
@click.option("--seed", default=0, show_default=True)
@click.option("--label", default="malignant", show_default=True, type=click.Choice(["malignant", "benign"]),
              help="the class to sample (one the generator learned)")
def synth_sample(gen_dir: Path, n: int, out: Path, seed: int, label: str) -> None:
    """Sample N images and a manifest (synthetic=1) that `prepare` reads."""
    from .synth.samples import sample

    bar, update = _progress_bar("sample")
    try:
        sample(gen_dir, n, out, seed, progress=update, label=label)
    finally:
        bar.close()
    click.echo(f"{out}: {n} images; next: lesionlab prepare {out} --out SYN_DATA_DIR --size 128")


@synth.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="SYN_DIR")
@click.option("--label", default="malignant", show_default=True, type=click.Choice(["malignant", "benign"]))
@click.option("--generator", default="external", show_default=True, help="a name for the generator that made them")
def synth_import(folder: Path, out: Path, label: str, generator: str) -> None:
    """Import synthetic images made elsewhere (e.g. StyleGAN2-ADA), treated like lesionlab's own."""
    from .synth.samples import import_folder

    import_folder(folder, out, label, generator)
    click.echo(f"{out}: imported; next: lesionlab prepare {out} --out SYN_DATA_DIR --size 128")


@synth.command("check")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="DATA_DIR with the real images")
@click.option("--features", "features_run", required=True, multiple=True,
              help="a feature network, repeatable: RUN_DIR of a trained lesionlab classifier (its penultimate layer), "
                   "random (a never-trained VGG-11) or lite0-imagenet (the projected discriminator's own network, "
                   "flagged as flattering); the first one also measures copies in feature space")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path), help="default: SOURCE/check")
@click.option("--n", "n", default=1000, show_default=True, help="synthetic images to compare")
@click.option("--seed", default=0, show_default=True)
@click.option("--label", default=None, type=click.Choice(["malignant", "benign"]),
              help="the class to check (default: malignant when the generator learned it)")
def synth_check(source: Path, data_dir: Path, features_run: tuple[str, ...], out: Path | None, n: int, seed: int,
                label: str | None) -> None:
    """FID/KID, precision/recall, density/coverage (each named by its feature network) and memorisation of
    GEN_DIR or SYN_DIR."""
    from .synth.check import check, render_markdown

    result = check(source, data_dir, list(features_run), out, n, seed, label)
    click.echo(render_markdown(result))
    click.echo(f"check: {(Path(out) if out else source / 'check') / 'check.html'}")


# ---------------------------------------------------------------- pretrain / tune


def _pretrain_epoch_echo(total: int):
    def echo(row: dict) -> None:
        scores = "  ".join(f"{k.replace('_', ' ')} {row[k]:.3f}" for k in ("knn_roc_auc", "knn_pauc_80", "probe_roc_auc",
                                                                            "probe_pauc_80") if row.get(k) is not None)
        loss = f"loss {row['loss']:.4f}  {row['img_s']:.0f} img/s  " if row.get("loss") is not None else "before training  "
        click.echo(f"epoch {row['epoch']:>3}/{total}  {loss}{scores}", err=True)

    return echo


def _pretrain_options(func):
    from .config import PretrainConfig

    return _model_options(PretrainConfig, skip=("data",))(func)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="ENC_DIR to create")
@click.option("--fresh", is_flag=True, help="discard a saved interrupted pretraining of ENC_DIR and start over")
@_pretrain_options
def pretrain(data_dir: Path, out: Path, fresh: bool, **flags) -> None:
    """Self-supervised pretraining of a model's encoder on DATA_DIR's train pool (lightly).

    Then: lesionlab train ... --pretrained ENC_DIR (or cv). Interrupted? The same command resumes."""
    from .config import build_pretrain_config
    from .workflows.pretrain import pretrain as do_pretrain

    cfg = build_pretrain_config({"data": str(data_dir), **_given(flags)}, "flags")
    bar = _bar("pretrain", "step", leave=False)

    def step(done: int, total: int) -> None:
        if done == 1:
            bar.reset(total=total)
        bar.update(1)

    echo = _pretrain_epoch_echo(cfg.epochs)

    def epoch_done(row: dict) -> None:
        bar.clear()
        echo(row)

    try:
        info = do_pretrain(cfg, out, on_epoch=epoch_done, on_step=step, fresh=fresh)
    finally:
        bar.close()
    q, q0 = info["metrics"]["quality"], info["metrics"]["quality_at_start"]
    click.echo(f"{out}: {cfg.method} {cfg.model} encoder at {info['image_size']} px, {info['epochs_run']} epochs on "
               f"{info['source']['n_images']} images; inner-val kNN ROC AUC {q['knn_roc_auc']:.3f} "
               f"(before: {q0['knn_roc_auc']:.3f}), linear probe {q['probe_roc_auc']:.3f} (before: {q0['probe_roc_auc']:.3f})")
    click.echo(f"next: lesionlab train --data {data_dir} --model {cfg.model} --pretrained {out} --out RUN_DIR")


@main.command()
@click.argument("search_file", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="DATA_DIR every trial trains on")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="TUNE_DIR (trials, journal, best.yaml)")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1), help="trials in the study in all (counted in the storage, so "
              "the same command resumes, and several workers share the budget)")
@click.option("--storage", default=None, help="where the study lives: journal:PATH (a journal file; default "
              "TUNE_DIR/journal.log) or an RDB URL such as sqlite:///tune.db or postgresql://USER@HOST/DB")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="worker processes on this machine sharing the storage")
@click.option("--seed", default=0, show_default=True, help="seed of the sampler (each worker adds its index)")
@click.option("--worker-index", default=0, show_default=True, help="this worker's index, distinct per worker when "
              "starting workers on several machines (it varies the sampler's seed)")
@click.option("--no-summary", is_flag=True, help="do not write best.yaml and the report (for extra workers)")
def tune(search_file: Path, data: str, out: Path, trials: int, storage: str | None, workers: int, seed: int,
         worker_index: int, no_summary: bool) -> None:
    """Search config keys with Optuna (SEARCH.yaml: base, space, objective, metric); best trial -> TUNE_DIR/best.yaml."""
    from .workflows.tune import load_search, open_storage, open_study, run_local_workers, write_summary
    from .workflows.tune import tune as do_tune

    search = load_search(search_file, data)
    echo = lambda s: click.echo(s, err=True)  # noqa: E731
    if workers > 1:
        study = open_study(search, open_storage(storage, out, echo), 0, seed)  # created once, before the workers race
        args = ["--data", data, "--out", str(out), "--trials", str(trials), "--seed", str(seed)]
        args += ["--storage", storage] if storage else []
        code = run_local_workers(search_file, workers, args)
        result = write_summary(study, search, out, trials)
    else:
        code = 0
        result = do_tune(search, data, out, trials, storage, worker_index, seed, echo, summary=not no_summary)
    if "best" in result:
        best = result["best"]
        click.echo(f"{out}: {result['trials']} trials ({result['complete']} complete, {result['pruned']} pruned, "
                   f"{result['failed']} failed)" + (f"; best trial {best['number']}: {search.metric} "
                                                    f"{best['value']:.4f} -> {best['config']}" if best else ""))
    sys.exit(code)


@main.command("models")
def models_cmd() -> None:
    """List the model names the registry knows."""
    from .models import get_spec, list_models

    for name in list_models():
        click.echo(f"{name:20s} {get_spec(name).description}")


if __name__ == "__main__":  # pragma: no cover
    main()
