"""lesionlab synth: train a generator, sample, import and check synthetic images. Each subcommand's
settings are a config model (config/synth.py), so their flags and errors come as train's do."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config.synth import SynthCheckConfig, SynthImportConfig, SynthSampleConfig, SynthTrainConfig
from ..fileio import read_json
from .group import main
from .options import checked, model_options
from .output import make_bar, progress_bar


@main.group()
def synth() -> None:
    """Synthetic images: train a generator, sample, import, check quality and copies."""


@synth.command("train")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="GEN_DIR")
@model_options(SynthTrainConfig, from_file=False)
def synth_train(data_dir: Path, out: Path, **flags) -> None:
    """Train a generator on the train pool (never on val/test); resumes where it stopped."""
    from ..synth.generator import train_generator

    c = checked(SynthTrainConfig, flags)
    bar = make_bar(f"synth {c.kind}", "step", c.steps, mininterval=1)
    shown: dict = {}

    def progress(step: int, total: int, losses: dict) -> None:
        if "fid" in losses:  # a line of its own, above a terminal's bar
            line = (f"step {step}: FID estimate {losses['fid']:.2f} ({c.fid_n} {c.label} images a side, "
                    f"{c.fid_features} features); near copies of its training images "
                    f"{100 * losses['near_copies']:.1f}%; recall {losses['recall']:.2f}, coverage {losses['coverage']:.2f}"
                    + (f"; data copying of {losses['copy_n']:.0f} samples against "
                       f"{'validation' if c.copy_watch == 'val' else 'training, by group'}: Z_U {losses['copy_z_pixel']:+.2f} pixels, "
                       f"{losses['copy_z_feature']:+.2f} features, {'copying' if losses['copying'] else 'no copying'}"
                       if "copying" in losses else ""))
            if hasattr(bar, "write"):
                bar.write(line, file=sys.stderr)
            else:
                click.echo(line, err=True)
        shown.update(losses)
        bar.n = step
        bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
        bar.refresh()

    try:
        info = train_generator(data_dir, out, c.kind, c.label, c.size, c.steps, c.batch_size, None, c.seed, c.sample_every,
                               c.checkpoint_every, c.time_budget * 60 if c.time_budget else None, progress, c.n_real,
                               c.draw_seed, c.sample_steps, c.classes, c.d_res, c.fid_every, c.fid_features, c.fid_n,
                               class_power=c.class_power, precision=c.precision, copy_watch=c.copy_watch,
                               copy_patience=c.copy_patience, copy_rule=c.copy_rule, device=c.device,
                               watch_n=c.watch_n)
    finally:
        bar.close()
    learned = ", ".join(f"{k} {v}" for k, v in info["n_real_per_class"].items())
    click.echo(f"{out}: {info['generator_id']}, {info['steps']} steps on real images ({learned}) in "
               f"{info['train_seconds'] / 60:.1f} min" + (" (stopped by the time budget)" if info["stopped_by_time_budget"] else "")
               + (f"; FID estimate {info['fid_estimate']['last']:.2f}" if (info.get("fid_estimate") or {}).get("last")
                  is not None else "")
               + sampled_text(info, c.copy_rule)
               + ("; stopped: the watch found copying" if (info.get("copy_watch_result") or {}).get("stopped_by_copying")
                  else ""))


def sampled_text(info: dict, rule: str) -> str:
    """Which stop sampling uses, where the copy watch chose one; and when every stop copied, say so."""
    watch = info.get("copy_watch_result") or {}
    if watch and watch.get("selected_step") is None:
        return (f"; every stop copied: samples from step {info['sampled_step']}, the one farthest from copying over "
                "the quality bar" if watch.get("fallback_step") is not None else
                "; every stop copied, none reached the quality bar: samples from the last step")
    return (f"; samples from step {info['sampled_step']}, the stop the copy watch selected ({rule} rule)"
            if info["sampled_step"] != info["steps"] else "")


@synth.command("sample")
@click.argument("gen_dir", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="SYN_DIR")
@model_options(SynthSampleConfig, from_file=False)
def synth_sample(gen_dir: Path, out: Path, **flags) -> None:
    """Sample N images and a manifest (synthetic=1) that `prepare` reads."""
    from ..synth.samples import sample

    c = checked(SynthSampleConfig, flags)
    bar, update = progress_bar("sample")
    try:
        sample(gen_dir, c.n, out, c.seed, progress=update, label=c.label, drop_near_copies=c.drop_near_copies)
    finally:
        bar.close()
    meta = read_json(out / "synthetic.json")
    dropped = (f" ({meta['near_copies_dropped']} near copies of training images and {meta['guard_copies_dropped']} "
               "copies of images the generator never saw dropped)") if c.drop_near_copies else ""
    click.echo(f"{out}: {c.n} images{dropped}; next: lesionlab prepare {out} --out SYN_DATA_DIR --size 128")


@synth.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="SYN_DIR")
@model_options(SynthImportConfig, from_file=False)
def synth_import(folder: Path, out: Path, **flags) -> None:
    """Import synthetic images made elsewhere (e.g. StyleGAN2-ADA), treated like lesionlab's own."""
    from ..synth.samples import import_folder

    c = checked(SynthImportConfig, flags)
    import_folder(folder, out, c.label, c.generator)
    click.echo(f"{out}: imported; next: lesionlab prepare {out} --out SYN_DATA_DIR --size 128")


@synth.command("check")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path), help="default: SOURCE/check")
@model_options(SynthCheckConfig, from_file=False)
def synth_check(source: Path, out: Path | None, **flags) -> None:
    """FID/KID, precision/recall, density/coverage (each named by its feature network) and memorisation of
    GEN_DIR or SYN_DIR."""
    from ..synth.check import check, render_markdown

    c = checked(SynthCheckConfig, flags)
    result = check(source, c.data, c.features, out, c.n, c.seed, c.label)
    click.echo(render_markdown(result))
    click.echo(f"check: {(Path(out) if out else source / 'check') / 'check.html'}")
