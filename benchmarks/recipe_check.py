"""Does a recipe hold where it was not chosen? A recipe (default configs/recommended.yaml, chosen by
benchmarks/quality.py at 64 px) against the notebook baseline as K-fold grouped cross-validations of
HAM10000 at another size (default the seed protocol's 128 px), paired on the same out-of-fold images;
the fold ensembles scored once on the split's test set.

    python benchmarks/recipe_check.py [--work bench-out] [--size 128] [--recipe configs/recommended.yaml]
        [--folds 5] [--n-boot 2000]

Nothing here chooses anything: it checks a choice made elsewhere. Finished folds are reused, so an
interrupted check resumes. Writes docs/results.md (section "recipe-check").
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import ROOT, git_commit, machine, update_section
from lesionlab.compare import compare_runs
from lesionlab.config import load_yaml
from quality import BASELINE, METRICS, cv_arm, cv_table, fmt_ci
from seed_protocol import prepared_ham


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "recommended.yaml"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="training and fold seed")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    started = time.time()
    work = Path(args.work) / f"recipe-check{args.size}"
    data = prepared_ham(Path(args.work), args.size)
    recipe = Path(args.recipe)
    arms = {"baseline": {k: v for k, v in load_yaml(BASELINE).items() if k != "name"},
            recipe.stem: {k: v for k, v in load_yaml(recipe).items() if k != "name"}}
    cvs = {name: cv_arm(name, {**values, "bootstrap": 0}, data, work, args.folds, args.seed)
           for name, values in arms.items()}
    diff = compare_runs([cvs["baseline"]], [cvs[recipe.stem]], metrics=tuple(METRICS), n_boot=args.n_boot)["metrics"]

    lines = ["## Recipe check at another size (`benchmarks/recipe_check.py`)", "",
             f"Command: `python benchmarks/recipe_check.py --size {args.size} --recipe "
             f"{recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe} --folds {args.folds}` "
             f"(code {git_commit()}); machine: {machine()}; wall of this invocation "
             f"{(time.time() - started) / 60:.1f} min.", "",
             f"HAM10000 at {args.size} px, the seed protocol's split (val and test 50:1000 grouped by lesion, split "
             f"seed 0); `lesionlab cv` of the notebook baseline (configs/seed/simple_cnn_1to2.yaml) and of "
             f"`{recipe.name}`, {args.folds} folds grouped by lesion (fold seed {args.seed}), 293 malignant images in "
             "each fold's training draw. The recipe is checked here, not chosen: its file says where it was chosen.", "",
             *cv_table(cvs)]
    o = cvs["baseline"].metrics["oof"]
    lines += ["", f"Paired on the same {o['n_malignant'] + o['n_benign']} OOF images ({o['n_malignant']} malignant), "
              f"{args.n_boot} resamples of whole lesions; {recipe.stem} - baseline: ROC AUC {fmt_ci(diff, 'roc_auc')}, "
              f"AP {fmt_ci(diff, 'average_precision')}, pAUC80 {fmt_ci(diff, 'pauc_80')}."]
    update_section("recipe-check", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
