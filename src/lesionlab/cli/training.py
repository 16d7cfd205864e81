"""train, cv, sweep, tune, pretrain and tabular: the commands that train models. train and cv
offer every experiment config key as a flag, generated from the config model (options.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .group import main
from .options import config_options, distinct_ints, given, model_options
from .output import epoch_echo, make_bar, metric_cell

if TYPE_CHECKING:  # runs/ imports torch, which the CLI loads only for a command that needs it
    from ..runs.records import CvResult, RunResult


def _print_result(info: RunResult, out: Path) -> None:
    from ..workflows.report import notebook_line

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
        from ..audit.summary import headline

        click.echo(f"Shortcut audit (test): {headline(m['audit'])}")


@main.command()
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="RUN_DIR to create")
@click.option("--seeds", default=None, help="train once per seed (e.g. 0,1,2) into RUN_DIR/seed-N; the report "
              "shows mean ± sd")
@config_options
def train(config_file: Path | None, out: Path, seeds: str | None, **flags) -> None:
    """Train one experiment (CONFIG.yaml and/or flags) into RUN_DIR."""
    from ..config import resolve
    from ..runs import is_complete_run
    from ..workflows.train import train as do_train

    cfg = resolve(config_file, given(flags))
    if not seeds:
        info = do_train(cfg, out, on_epoch=epoch_echo(cfg.epochs))
        _print_result(info, out)
        return
    if not cfg.name:
        cfg = cfg.model_copy(update={"name": out.name})
    for seed in distinct_ints(seeds, "--seeds"):
        folder = out / f"seed-{seed}"
        if is_complete_run(folder):
            click.echo(f"{folder}: complete, skipped", err=True)
            continue
        click.echo(f"{folder}: seed {seed}", err=True)
        info = do_train(cfg.model_copy(update={"seed": seed}), folder, on_epoch=epoch_echo(cfg.epochs))
        _print_result(info, folder)


def _print_cv(res: CvResult, out: Path) -> None:
    if not res.get("complete"):
        click.echo(f"{out}: {len(res['left'])} fold(s) left to train (by other workers or a later call)", err=True)
        return
    info, m = res["run"], res["run"]["metrics"]
    unit = m["oof"].get("ci95_unit", "image")
    click.echo(f"{out}: {info['folds']}-fold cv x {info['repeats']} repeat(s), grouped by {info['group_rule']}, "
               f"fold hash {info['fold_sha256'][:12]}; intervals resample whole {unit} groups", err=True)
    for side, label in (("oof", f"OOF ({m['oof']['n_malignant']} malignant / {m['oof']['n_benign']} benign)"),
                        ("val", "fold ensemble, val"), ("test", "fold ensemble, test")):
        click.echo(f"{label}: " + "; ".join(f"{k} {metric_cell(m[side], k)}"
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
@config_options
def cv(config_file: Path | None, out: Path, n_folds: int, repeats: int, fold_seed: int | None, workers: int, claim: bool,
       task_index: int | None, task_count: int | None, no_finish: bool, **flags) -> None:
    """Grouped, stratified K-fold cross-validation of one config over the split's train pool.

    Each fold trains as `train` does, on the other folds (with an inner validation part drawn from
    them); CV_DIR gets out-of-fold predictions and metrics, and the fold ensemble's val and test
    metrics. A finished fold is never retrained, so the same command resumes."""
    from ..config import resolve
    from ..workflows.cv import run_cv, start_local_workers

    cfg = resolve(config_file, given(flags))
    if task_count is None and task_index is not None:
        raise click.UsageError("--task-index needs --task-count")
    if workers > 1:
        code = start_local_workers(cfg, out, n_folds, repeats, fold_seed, workers)
        if code:
            sys.exit(code)
    res = run_cv(cfg, out, n_folds, repeats, fold_seed, on_epoch=epoch_echo(cfg.epochs),
                 echo=lambda t: click.echo(t, err=True), task_index=task_index or 0, task_count=task_count or 1,
                 claim=claim, finish=not no_finish)
    _print_cv(res, out)


def _tabular_options(func):
    from ..config import TabularConfig

    return model_options(TabularConfig, skip=("data",))(func)


@main.command()
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="DATA_DIR (prepared, with a split)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="RUN_DIR to create")
@_tabular_options
def tabular(data: Path, out: Path, **flags) -> None:
    """A gradient-boosted model on the metadata columns (optionally fused with an image model) into RUN_DIR."""
    from ..config import build_tabular_config
    from ..tabular.command import tabular_run
    from ..workflows.report import notebook_line

    cfg = build_tabular_config({"data": str(data), **given(flags)}, "flags")
    info = tabular_run(cfg, out, echo=lambda s: click.echo(s, err=True))
    m, folds = info["metrics"], info["folds"]
    click.echo(f"{out}: {folds['k'] if isinstance(folds, dict) else folds} folds, threshold {info['threshold']:.3g} ({info['threshold_rule']}); "
               f"out of fold ROC AUC {m['oof']['roc_auc']:.4f}, pAUC80 {m['oof']['pauc_80']:.4f}", err=True)
    click.echo(notebook_line("Val", m["val"]))
    click.echo(notebook_line("Test", m["test"]))
    click.echo(f"Test ROC AUC: {m['test']['roc_auc']:.4f} | pAUC80: {m['test']['pauc_80']:.4f} | "
               f"AP: {m['test']['average_precision']:.4f}")


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
    from ..runs import is_complete_run
    from ..workflows.sweep import read_sweep, run_local_workers, run_sweep
    from ..workflows.train import train as do_train

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
        info = do_train(cfg, folder, on_epoch=epoch_echo(cfg.epochs))
        _print_result(info, folder)

    result = run_sweep(planned, run, echo=lambda s: click.echo(s, err=True), task_index=task_index or 0,
                       task_count=task_count or 1, claim=claim)
    click.echo(f"sweep: {len(result['done'])} run(s) done, {len(result['skipped'])} already complete, "
               f"{len(result['failed'])} failed" + (f", {len(result['elsewhere'])} taken by other workers"
                                                     if result["elsewhere"] else ""), err=True)
    if result["failed"]:
        sys.exit(1)


def _pretrain_epoch_echo(total: int):
    def echo(row: dict) -> None:
        scores = "  ".join(f"{k.replace('_', ' ')} {row[k]:.3f}" for k in ("knn_roc_auc", "knn_pauc_80", "probe_roc_auc",
                                                                            "probe_pauc_80") if row.get(k) is not None)
        loss = f"loss {row['loss']:.4f}  {row['img_s']:.0f} img/s  " if row.get("loss") is not None else "before training  "
        click.echo(f"epoch {row['epoch']:>3}/{total}  {loss}{scores}", err=True)

    return echo


def _pretrain_options(func):
    from ..config import PretrainConfig

    return model_options(PretrainConfig, skip=("data",))(func)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="ENC_DIR to create")
@click.option("--fresh", is_flag=True, help="discard a saved interrupted pretraining of ENC_DIR and start over")
@_pretrain_options
def pretrain(data_dir: Path, out: Path, fresh: bool, **flags) -> None:
    """Self-supervised pretraining of a model's encoder on DATA_DIR's train pool (lightly).

    Then: lesionlab train ... --pretrained ENC_DIR (or cv). Interrupted? The same command resumes."""
    from ..config import build_pretrain_config
    from ..workflows.pretrain import pretrain as do_pretrain

    cfg = build_pretrain_config({"data": str(data_dir), **given(flags)}, "flags")
    bar = make_bar("pretrain", "step", leave=False)

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
    from ..workflows.tune import load_search, open_storage, open_study, run_local_workers, write_summary
    from ..workflows.tune import tune as do_tune

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
