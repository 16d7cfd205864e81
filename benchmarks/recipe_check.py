"""Does a recipe hold where it was not chosen? A recipe (default configs/recommended.yaml; its
file says where it was chosen) against the notebook baseline as K-fold grouped cross-validations
at another size (default the seed protocol's 128 px) or on another data set (--dataset isic2024-permissive:
real ISIC 2024 crops, the release's train pool), paired on the same out-of-fold images; the fold ensembles
scored once on the split's test set.

    python benchmarks/recipe_check.py [--dataset ham10000|isic2024-permissive] [--work bench-out] [--size 128]
        [--recipe configs/recommended.yaml] [--folds 5] [--n-boot 2000]

Both arms train on the data set's draws (HAM10000: 293 malignant images; the permissive release: every
malignant crop a fold holds). Nothing here chooses anything: it checks a choice made elsewhere. Finished
folds are reused, so an interrupted check resumes. Writes docs/results.md (section "recipe-check", or
"recipe-check-DATASET" for another data set than HAM10000).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lesionlab.benchmarking.arms import BASELINE, METRICS, cv_arm, cv_table, fmt_ci
from lesionlab.benchmarking.datasets import DATASETS, add_dataset_option, prepared
from lesionlab.benchmarking.results import ROOT, git_commit, machine, shown, update_section
from lesionlab.config import load_yaml
from lesionlab.workflows.compare import compare_runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    add_dataset_option(ap)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "recommended.yaml"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="training and fold seed")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=None, help="override both arms' epochs (a smoke test; the check is "
                    "of the recipe as written)")
    args = ap.parse_args()
    started = time.time()
    ds = DATASETS[args.dataset]
    base_work = ds.work(Path(args.work))
    work = base_work / (f"recipe-check{args.size}" + (f"-e{args.epochs}" if args.epochs else ""))
    data = prepared(base_work, ds, args.size)
    recipe = Path(args.recipe)
    arms = {"baseline": {k: v for k, v in load_yaml(BASELINE).items() if k != "name"},
            recipe.stem: {k: v for k, v in load_yaml(recipe).items() if k != "name"}}
    overrides = {"bootstrap": 0, "n_malignant": ds.n_malignant, **({"epochs": args.epochs} if args.epochs else {})}
    cvs = {name: cv_arm(name, {**values, **overrides}, data, work, args.folds, args.seed)
           for name, values in arms.items()}
    draws = {name: sorted({(r.info["draw"]["malignant"], r.info["draw"]["benign"])
                           for r in run.fold_runs()})
             for name, run in cvs.items()}
    diff = compare_runs([cvs["baseline"]], [cvs[recipe.stem]], metrics=tuple(METRICS), n_boot=args.n_boot)["metrics"]

    o = cvs["baseline"].metrics["oof"]
    lines = [f"## Recipe check on {ds.title} (`benchmarks/recipe_check.py`)", "",
             f"Command: `python benchmarks/recipe_check.py --dataset {args.dataset} --size {args.size} --recipe "
             f"{shown(recipe)} --folds {args.folds}"
             + (f" --epochs {args.epochs}" if args.epochs else "") + f"` (code {git_commit()}); machine: {machine()}; "
             f"wall of this invocation {(time.time() - started) / 60:.1f} min."
             + (f" **A smoke test, not the check**: both arms at {args.epochs} epochs." if args.epochs else ""), "",
             f"{ds.sentence} at {args.size} px, the seed protocol's split ({ds.split_text()}); `lesionlab cv` of the "
             f"notebook baseline (configs/seed/simple_cnn_1to2.yaml) and of `{recipe.name}`, {args.folds} folds grouped "
             f"the same way (fold seed {args.seed}); training draws of {ds.draw} (malignant:benign per fold: "
             + "; ".join(f"{n} " + ", ".join(f"{m}:{b}" for m, b in d) for n, d in draws.items()) + "). "
             "The recipe is checked here, not chosen: its file says where it was chosen.", "",
             *cv_table(cvs)]
    lines += ["", f"Paired on the same {o['n_malignant'] + o['n_benign']} OOF images ({o['n_malignant']} malignant), "
              f"{args.n_boot} resamples of whole groups ({ds.groups}); {recipe.stem} - baseline: ROC AUC "
              f"{fmt_ci(diff, 'roc_auc')}, AP {fmt_ci(diff, 'average_precision')}, pAUC80 {fmt_ci(diff, 'pauc_80')}."]
    update_section(ds.section("recipe-check"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
