"""predict, ensemble, compare, report, explain, audit and export: the commands that use and judge
trained runs. predict, ensemble and explain take their settings from config models
(config/commands.py), so their flags and errors come as train's do."""
from __future__ import annotations

from pathlib import Path

import click

from ..choices import CAM_METHODS, COMPARE_ON, FORMATS
from ..config.commands import EnsembleConfig, ExplainConfig, PredictConfig
from .group import main
from .options import checked, distinct_ints, model_options
from .output import metric_cell, progress_bar


@main.command()
@click.argument("members", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="ENS_DIR to create")
@model_options(EnsembleConfig, from_file=False)
def ensemble(members: tuple[Path, ...], out: Path, **flags) -> None:
    """Average several runs and/or cv folders (their folds) of one split; judge on its val and test."""
    from ..workflows.ensemble import build_ensemble

    c = checked(EnsembleConfig, flags)
    info = build_ensemble(list(members), out, c.mean, c.tta, c.threshold, c.data, c.n_boot, c.seed, c.name, c.device,
                          c.batch_size)
    m = info["metrics"]
    click.echo(f"{out}: {info['n_members']} member(s), mean of {c.mean}s, TTA {c.tta or 'as each member'}, threshold "
               f"{info['threshold']:.3g} ({info['threshold_rule']}, chosen on val)", err=True)
    for side in ("val", "test"):
        click.echo(f"{side}: " + "; ".join(f"{k} {metric_cell(m[side], k)}"
                                          for k in ("roc_auc", "average_precision", "pauc_80", "f1")))


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
    from ..workflows.report import build_report

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
@click.option("--folds", default=None, help="pair the out-of-fold images of these folds only, e.g. 0,2 (a cv of "
              "one repeat): each is scored by its own fold's models on both sides")
@click.option("--per-fold", is_flag=True, help="out-of-fold: each side's metric is the mean over folds of its value on "
              "the fold's own images (each fold resampled on its own), not one value over all folds' images pooled, "
              "which also counts how alike the fold models' scores run")
@click.option("--json", "json_out", default=None, type=click.Path(path_type=Path), help="also write the result as JSON")
def compare(run_a: Path, run_b: Path, n_boot: int, seed: int, on: str, folds: str | None, per_fold: bool,
            json_out: Path | None) -> None:
    """Paired bootstrap difference B - A on the same images (ROC AUC, AP, pAUC80, F1): out-of-fold
    images when both sides are cv or tabular runs on the same folds, else the split's test images.

    RUN_A and RUN_B are run folders, or folders of runs of one experiment (its seeds)."""
    from ..fileio import write_json
    from ..workflows.compare import compare_runs, format_comparison, load_side

    res = compare_runs(load_side(run_a), load_side(run_b), n_boot=n_boot, seed=seed, on=on,
                       folds=tuple(distinct_ints(folds, "--folds")) if folds is not None else None, per_fold=per_fold)
    for line in format_comparison(res, str(run_a), str(run_b)):
        click.echo(line)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, res)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="CSV to write")
@model_options(PredictConfig, from_file=False)
def predict(run_dir: Path, source: Path, out: Path, **flags) -> None:
    """Score images (a file, folder, manifest, ISIC 2024 pair or release) with a train, cv or ensemble run
    (or an exported model); with a tabular run, the rows of a manifest or an ISIC 2024 pair (their metadata
    columns, and their images when the run is fused with an image model). `--format kaggle` writes the
    ISIC 2024 competition's submission file."""
    from ..workflows.predict import predict as do_predict

    c = checked(PredictConfig, flags)
    bar, update = progress_bar("predict")
    try:
        result = do_predict(run_dir, source, out, c.format, c.skip_bad, c.overwrite, c.workers or None, c.batch_size,
                            c.device, update, max_pixels=c.max_pixels, tta=c.tta, engine=c.engine)
    finally:
        bar.close()
    from ..errors import preview

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
@model_options(ExplainConfig, from_file=False)
def explain(run_dir: Path, source: Path, out: Path, **flags) -> None:
    """Class-activation overlays (where the model sees malignancy) for an image, a folder or a manifest."""
    from ..workflows.explain import explain as do_explain

    c = checked(ExplainConfig, flags)
    bar, update = progress_bar("explain")
    try:
        result = do_explain(run_dir, source, out, c.method, c.target_layer, c.format, c.overwrite, c.batch_size, c.device,
                            update)
    finally:
        bar.close()
    from ..errors import preview

    click.echo(f"{out}: {result['n']} overlay(s) ({c.method} on {', '.join(sorted(set(result['layers'])))}), "
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
@click.option("--method", default="gradcam", show_default=True, type=click.Choice(CAM_METHODS))
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
    from ..audit import AuditSettings
    from ..audit.command import audit_run
    from ..audit.summary import lines

    columns = [c.strip() for c in strata.split(",") if c.strip()] if strata is not None else None
    settings = AuditSettings(frame=frame, method=method, target_layer=target_layer, n_boot=n_boot, seed=seed,
                             batch_size=batch_size, gallery=gallery)
    bar, update = progress_bar("audit")
    try:
        result = audit_run(run_dir, source, out, data=data, fmt=fmt, settings=settings, strata=columns,
                           record_in_run=record, overwrite=overwrite, device=device, skip_bad=skip_bad, progress=update)
    finally:
        bar.close()
    for line in lines(result["block"]):
        click.echo(line)
    where = (f"; recorded in {run_dir / 'metrics.json'} as audit" +
             (" (the earlier audit kept under audit.previous)" if result["replaced"] else "")) if result["recorded"] else ""
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
    from ..workflows.export import export as do_export

    r = do_export(run_dir, fmt, out, overwrite, n_verify)
    click.echo(f"{out}: {fmt}, {r['bytes'] / 1e6:.1f} MB; input uint8 (N, {r['metadata']['size']}, "
               f"{r['metadata']['size']}, 3), output p(malignant), threshold {r['metadata']['threshold']:.3g}; "
               f"max |difference| to torch {r['max_abs_diff']:.1e} on {r['images']}")
