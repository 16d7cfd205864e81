"""demo and models: a first look (the whole flow on a shipped sample; the registry's model names)."""
from __future__ import annotations

from pathlib import Path

import click

from ..choices import DEMO_SAMPLES
from .group import main
from .output import epoch_echo


@main.command()
@click.option("--out", "out", default="demo-out", show_default=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=None, type=int, help="override the demo's 8 epochs")
@click.option("--sample", default=DEMO_SAMPLES[0], show_default=True, type=click.Choice(DEMO_SAMPLES),
              help="the shipped sample: real ISIC 2024 (SLICE-3D) crops, the seed study's kind of image, or HAM10000 "
                   "dermoscopy")
def demo(out: Path, epochs: int | None, sample: str) -> None:
    """Run the whole flow on a sample shipped with lesionlab and write a report."""
    from ..runs import find_runs
    from ..workflows.demo import run_demo
    from ..workflows.report import notebook_line

    html_path = run_demo(out, epochs, echo=lambda s: click.echo(s, err=True), on_epoch=epoch_echo(epochs or 8),
                         sample=sample)
    for run in find_runs(out / "runs"):
        click.echo(f"{run.name} (seed {run.seed})")
        click.echo("  " + notebook_line("Val", run.metrics["val"]))
        click.echo("  " + notebook_line("Test", run.metrics["test"]))
    click.echo(f"report: {html_path.resolve()}")


@main.command("models")
def models_cmd() -> None:
    """List the model names the registry knows."""
    from ..models import get_spec, list_models

    for name in list_models():
        click.echo(f"{name:20s} {get_spec(name).description}")
