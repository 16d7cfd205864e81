"""The notebook's synthetic-data experiment on a data set of `--dataset`: a generator trained on the
malignant images of the training draw (HAM10000: 293; the ISIC 2024 permissive release: every malignant
crop of the train pool, 175), 3000 samples, their quality and memorisation check, then SimpleCNN and the
recommended recipe with and without the synthetic images, 3 seeds each, compared pairwise.

    python benchmarks/synthetic.py [--dataset ham10000|isic2024-permissive] [--work bench-out]
        [--budget-min 90] [--pilot-min 10] [--n-synthetic 3000] [--epochs N (a smoke test)]

The generator family is chosen by measured quality: a GAN (DiffAugment) and a DDPM are each trained
for --pilot-min minutes and checked; the one with the lower KID is trained on, up to --budget-min
minutes of CPU in all. Writes docs/results.md (section "synthetic", or "synthetic-DATASET").
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from _datasets import DATASETS, add_dataset_option, pool_counts, prepared
from _results import ROOT, git_commit, machine, update_section
from imbalance import run_arm, val_mean
from lesionlab.compare import COMPARE_METRICS, compare_runs
from lesionlab.config import load_yaml
from lesionlab.data.sources import read_source
from lesionlab.data.store import prepare
from lesionlab.experiment import run_experiment
from lesionlab.fileio import read_json, write_json
from lesionlab.report import md_table, summarise, summary_cell
from lesionlab.runs import is_complete_run
from lesionlab.synth.check import check
from lesionlab.synth.generator import train_generator
from lesionlab.synth.samples import sample

N_SYNTHETIC = 3000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    add_dataset_option(ap)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget-min", type=float, default=90.0, help="CPU minutes for the chosen generator, pilot included")
    ap.add_argument("--pilot-min", type=float, default=10.0)
    ap.add_argument("--pilot-n", type=int, default=300, help="samples each pilot's check compares")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--n-synthetic", type=int, default=N_SYNTHETIC, help="synthetic images sampled and added")
    ap.add_argument("--epochs", type=int, default=None, help="override every classifier's epochs (a smoke test; its runs "
                    "are kept apart from the protocol's)")
    ap.add_argument("--recipes", default="simple_cnn 1:2,recommended",
                    help="comma-separated: 'simple_cnn 1:2' (the notebook's) and/or 'recommended' (configs/recommended.yaml)")
    args = ap.parse_args()
    chosen_recipes = [r.strip() for r in args.recipes.split(",")]
    if unknown := [r for r in chosen_recipes if r not in ("simple_cnn 1:2", "recommended")]:
        raise SystemExit(f"--recipes: unknown {unknown}; known: 'simple_cnn 1:2', 'recommended'")
    ds = DATASETS[args.dataset]
    work, seeds = ds.work(Path(args.work)), [int(s) for s in args.seeds.split(",")]
    started = time.time()
    data = prepared(work, ds)
    if args.epochs or args.n_synthetic != N_SYNTHETIC:  # a smaller run never mixes with the protocol's
        work = work / f"synthetic-e{args.epochs or 'cfg'}-n{args.n_synthetic}"
    syn_work = work / "synthetic"
    syn_work.mkdir(parents=True, exist_ok=True)
    n_syn = args.n_synthetic
    pool_malignant, pool_benign = pool_counts(data)
    n_real = pool_malignant if ds.n_malignant == "all" else int(ds.n_malignant)  # the draw's real malignant images
    epochs = {"epochs": args.epochs} if args.epochs else {}

    # the feature extractor: UpgradedCNN trained on the development data (seed protocol config)
    features = syn_work / "features-upgraded_cnn"
    if not is_complete_run(features):
        from lesionlab.config import build_config

        cfg = build_config({**load_yaml(ROOT / "configs" / "seed" / "upgraded_cnn_1to2.yaml"), "data": str(data),
                            "n_malignant": ds.n_malignant, **epochs}, "features")
        run_experiment(cfg, features)

    # pilots: each family for the same few minutes, checked the same way
    # (kept in pilot-KIND.json: the chosen generator trains on, and a resumed run must still report its pilot)
    pilots = {}
    for kind in ("gan", "ddpm"):
        gen, record = syn_work / f"gen-{kind}", syn_work / f"pilot-{kind}.json"
        if not record.exists():
            if not (gen / "generator.json").exists():
                train_generator(data, gen, kind=kind, size=args.size, steps=10**7, time_budget=args.pilot_min * 60,
                                checkpoint_every=50, sample_every=500, n_real=n_real, draw_seed=0, sample_steps=25)
            result = check(gen, data, features, out=syn_work / f"check-pilot-{kind}", n=args.pilot_n)
            result["steps"] = read_json(gen / "generator.json")["steps"]
            write_json(record, result)
        pilots[kind] = read_json(record)
    chosen = min(pilots, key=lambda k: pilots[k]["kid"]["synthetic_vs_real"][0])
    gen = syn_work / f"gen-{chosen}"
    info = json.loads((gen / "generator.json").read_text())
    remaining = args.budget_min * 60 - info["train_seconds"]
    if remaining > 60 and not info.get("final"):
        info = train_generator(data, gen, kind=chosen, size=args.size, steps=10**7, time_budget=args.budget_min * 60,
                               checkpoint_every=100, sample_every=1000, n_real=n_real, draw_seed=0, sample_steps=25)
        info["final"] = True
        (gen / "generator.json").write_text(json.dumps(info, indent=2) + "\n")
    syn_dir, syn_data = syn_work / f"syn{n_syn}", syn_work / f"syn{n_syn}-data128"
    if not (syn_dir / "manifest.csv").exists():
        shutil.rmtree(syn_dir, ignore_errors=True)
        sample(gen, n_syn, syn_dir, seed=0)
    prepare(read_source(syn_dir / "manifest.csv"), syn_data, size=128)
    quality = check(syn_dir, data, features, n=n_syn)  # into synN/check, where reports look

    # the experiment: without and with the 3000 synthetic images
    base = {k: v for k, v in load_yaml(ROOT / "configs" / "seed" / "simple_cnn_1to2.yaml").items() if k != "name"}
    base["epochs"] = 10
    recipes = {"simple_cnn 1:2": lambda: base,
               "recommended": lambda: {k: v for k, v in load_yaml(ROOT / "configs" / "recommended.yaml").items() if k != "name"}}
    arms = {}
    with_name = f" + {n_syn} synthetic"
    # the notebook drew 6,586 benign images for 293 real + 3,000 synthetic malignant at 1:2; a train pool holds
    # fewer (HAM10000's 5,192, the permissive release's 5,999), so the synthetic arms take every benign image of
    # the pool (ratio natural, the draw's real malignant images)
    for name in chosen_recipes:
        values = {**recipes[name](), "n_malignant": ds.n_malignant, **epochs}
        real_draw = n_real * 3
        syn_draw = n_real + n_syn + pool_benign
        syn_epochs = max(2, math.ceil(2 * values["epochs"] * real_draw / syn_draw))  # >= 2x the images seen without
        with_syn = {**values, "ratio": "natural", "n_malignant": ds.n_malignant, "epochs": syn_epochs,
                    "synthetic": {"data": str(syn_data), "n": n_syn}}
        arms[name] = run_arm(name, values, data, work, seeds)
        arms[name + with_name] = run_arm(name + with_name, with_syn, data, work, seeds)

    header = ["arm", "train draw (real+syn : benign)", "epochs", "val AP", "test AP", "test pAUC80", "test ROC AUC", "test F1"]
    rows = []
    for name, runs in arms.items():
        d = runs[0].info["draw"]
        rows.append([name, f"{d['malignant'] - d.get('synthetic', 0)}+{d.get('synthetic', 0)} : {d['benign']}",
                     str(runs[0].config["epochs"]), f"{val_mean(runs):.3f}"]
                    + [summary_cell(summarise(runs, m)) for m in ("average_precision", "pauc_80", "roc_auc", "f1")])
    c_header = ["with synthetic (B) vs without (A)"] + [f"{m}: B - A [95% CI]" for m in COMPARE_METRICS]
    c_rows = []
    for name in chosen_recipes:
        res = compare_runs(arms[name], arms[name + with_name], n_boot=args.n_boot)["metrics"]
        c_rows.append([name] + [f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" + (" ↑" if d["lo"] > 0 else " ↓" if d["hi"] < 0 else "")
                               for d in (res[m] for m in COMPARE_METRICS)])
    from lesionlab.synth.check import render_markdown

    def pilot_line(kind: str) -> str:
        p = pilots[kind]
        return (f"- {kind}: KID x 1000 {1000 * p['kid']['synthetic_vs_real'][0]:.1f} (real halves "
                f"{1000 * p['kid']['real_half_vs_real_half'][0]:.1f}), FID {p['fid']['synthetic_vs_real']:.1f} (real halves "
                f"{p['fid']['real_half_vs_real_half']:.1f}), precision {p['manifold_k5']['precision']:.2f}, recall "
                f"{p['manifold_k5']['recall']:.2f} after {args.pilot_min:.0f} min ({p['steps']} steps)")

    check_html = syn_dir / "check" / "check.html"
    lines = [f"## Synthetic malignant images on {ds.title} (`benchmarks/synthetic.py`)", "",
             f"Machine: {machine()}; commit {git_commit()}; whole script {(time.time() - started) / 3600:.2f} h."
             + (f" **A scaled run**: classifiers at {args.epochs} epochs, {n_syn} synthetic images (the protocol: the "
                f"configs' epochs, {N_SYNTHETIC})." if args.epochs or n_syn != N_SYNTHETIC else ""), "",
             f"{ds.sentence}, {ds.split_text()}. The generators learn from the {n_real} malignant images of the training "
             f"draw (seed 0) at {args.size} px; features for every measure: UpgradedCNN trained on {ds.title} at 1:2 "
             "(configs/seed), penultimate layer.",
             "", "### Choosing the generator family (pilots of equal CPU time, measured the same way)", "",
             pilot_line("gan"), pilot_line("ddpm"), "",
             f"Chosen: **{chosen}** (lower KID). Final generator: {info['steps']} steps in {info['train_seconds'] / 60:.0f} "
             f"CPU minutes (batch {info['batch_size']}, {args.size} px), sampled {n_syn} times.", "",
             f"### Quality and memorisation of the {n_syn} samples", "", render_markdown(quality).split("\n", 2)[2], "",
             f"Figures: {check_html.relative_to(ROOT) if check_html.is_relative_to(ROOT) else check_html} (samples next "
             "to real images, closest pairs, distance histograms).", "",
             f"### The notebook's experiment, {len(seeds)} seed(s) each", "",
             f"The train pool holds {pool_benign:,} benign images; {n_real} real + {n_syn:,} synthetic malignant images at "
             f"1:2 would need {2 * (n_real + n_syn):,} (as in the notebook)"
             + (", which cannot be drawn" if 2 * (n_real + n_syn) > pool_benign else "")
             + f"; the synthetic arms use every benign image of the pool ({n_real + n_syn:,} : {pool_benign:,}, "
             f"1:{pool_benign / (n_real + n_syn):.2f}). "
             "They train for enough epochs to see at least twice the images of the arm without synthetic data.", "",
             md_table(header, rows, escape=False), "",
             f"Paired comparison on the same {sum(ds.test):,} test images ({args.n_boot} resamples, seed-averaged):", "",
             md_table(c_header, c_rows, escape=False)]
    path = update_section(ds.section("synthetic"), "\n".join(lines))
    print("\n".join(lines))
    print(f"{path}: section {ds.section('synthetic')} written")


if __name__ == "__main__":
    main()
