"""The notebook's "+3000 synthetic malignant images", answered with evidence on one prepared data set.

    python benchmarks/synthetic.py [--dataset ham10000|isic2024-permissive] [--size 64] [--work bench-out]
        [--gen-min 60] [--gan-min 26] [--folds 5] [--epochs-scale 1] [--n-synthetic 1000,3000] [--n-boot 2000]
        [--fold-gen-min M] [--fold-gen-steps S] [--same-epochs simple_cnn=3000]
        [--quality-only | --no-quality | --copying-only | --trajectory-every N]
    python benchmarks/synthetic.py --data DATA_DIR --name NAME ...   (any prepared data set with a split)

1. Quality: the projected generator (Projected GAN + FastGAN, class-conditional on both classes of
   the split's train pool) trained for --gen-min CPU minutes; 3,000 malignant samples checked against
   the pool's real malignant crops with three feature networks (an UpgradedCNN trained on the data
   set, a never-trained VGG-11, and the discriminator's own ImageNet EfficientNet-Lite0, flagged).
   Beside it the earlier DCGAN (--kind gan) on the same malignant crops for --gan-min minutes, checked
   the same way (0: skipped).
2. The experiment: 5-fold grouped cv of the notebook baseline (configs/seed/simple_cnn_1to2.yaml)
   and of configs/recommended.yaml, each without synthetic images and with 1,000 and 3,000, paired on
   the same out-of-fold images. Each fold's synthetic images come from a generator trained on that
   fold's training part only (--fold-gen-min minutes), so no held-out image ever shaped a synthetic
   one; synthetic images join training draws only (never inner validation, OOF or test).
   Beside OOF, the test set as a check: each fold model's ROC AUC, how alike the fold models rank the
   test images, and the fold ensembles' paired difference.
3. --copying-only: the data-copying test (Meehan et al. 2020) on each fold's synthetic set exactly as
   part 2's arms drew it, against the images that fold's generator learned and the real ones it never
   saw, with new real images in place of the synthetic ones as the control.
4. --trajectory-every N: part 1's generator (same recipe and seed) trained again within --gen-min,
   stopped every N steps and checked at each stop as part 1 checks the end (classifier features and
   pixels): how recall, coverage and copying move with training steps.

Everything is resumable: finished generators (generator.json), samples, prepared sets and cv folds are
reused by the same command. Writes docs/results.md (section "synthetic", "synthetic-isic2024-permissive" or
"synthetic-NAME"); --quality-only runs part 1 alone and writes it to that section's name + "-quality";
--no-quality runs part 2 alone, its section pointing to that one for the generator's quality; --copying-only
writes part 3 to that section's name + "-copying", --trajectory-every part 4 to "-trajectory". The
smallest run, to check the script: --smoke (2 folds, 1 epoch, generators of 4 steps, 20 and 40 synthetic images).
"""
from __future__ import annotations

import argparse
import math
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from lesionlab.benchmarking.arms import BASELINE, cv_arm
from lesionlab.benchmarking.datasets import DATASETS, add_dataset_option, pool_counts, prepared
from lesionlab.benchmarking.results import ROOT, command_line, git_commit, machine, shown, update_section
from lesionlab.config import build_config, load_yaml
from lesionlab.config.synth import CLASS_POWER
from lesionlab.data.sources import read_source
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store, prepare
from lesionlab.fileio import read_json, write_json
from lesionlab.runs import Run, is_complete_run
from lesionlab.synth import quality as synth_quality
from lesionlab.synth.check import (check, copying_text, group_halves, learned_images, learned_positions, unseen_images,
                                   watched_images, z_text)
from lesionlab.synth.generator import train_generator
from lesionlab.synth.samples import sample
from lesionlab.workflows.compare import compare_runs, difference_cell
from lesionlab.workflows.cv import prepare_cv
from lesionlab.workflows.train import train_process

RECOMMENDED = ROOT / "configs" / "recommended.yaml"
NOTEBOOK = "test F1 0.455 without synthetic images, 0.273 with 3,000 (SimpleCNN 1:2, ISIC 2024 crops, one run each)"
GOAL = {"recall": 0.3, "coverage": 0.5}  # the issue's, against the pool's real malignant crops
PAIRED = ("roc_auc", "average_precision", "pauc_80")


def precision_text(info: dict) -> str:
    """How the generator's step computed: fp32 or bf16, and the measured speeds behind an automatic choice."""
    if "precision" not in info:
        return "fp32 (before the precision setting)"
    choice = info.get("precision_choice") or {}
    speeds = ", ".join(f"{k} {v:g}" for k, v in choice.get("img_s", {}).items())
    return ("bf16" if info["precision"] == "bf16" else "fp32") + (f" (measured img/s: {speeds})" if speeds else "")


def _values(path: Path) -> dict:
    return {k: v for k, v in load_yaml(path).items() if k != "name"}


def generator(data: Path, out: Path, minutes: float, smoke: bool, max_steps: int | None = None, fid_every: int = 250,
              **kw) -> dict:
    """Train (or resume, or reuse) a generator for a CPU budget, or up to max_steps, whichever ends first (steps
    make a run independent of the machine's load); a finished one is kept as it is."""
    if (out / "generator.json").exists() and read_json(out / "generator.json").get("benchmark_final"):
        return read_json(out / "generator.json")
    steps = 4 if smoke else max_steps or 10**7
    if (out / "generator.json").exists() and read_json(out / "generator.json")["steps"] >= steps:
        info = read_json(out / "generator.json")
    else:
        print(f"[generator] {out.name}: {minutes:g} min", flush=True)
        info = train_generator(data, out, steps=steps, time_budget=minutes * 60, checkpoint_every=2 if smoke else 100,
                               sample_every=2 if smoke else 500, fid_every=2 if smoke else fid_every,
                               fid_n=32 if smoke else 500, **({"batch_size": 8} if smoke else {}), **kw)
    info["benchmark_final"] = True
    write_json(out / "generator.json", info)
    return info


def synthetic_store(gen: Path, n: int, size: int, out: Path, data: Path) -> Path:
    """n malignant samples, prepared at the classifier's size (reused when complete), with sample's copy filter:
    none a near copy of an image `gen` learned from `data`, none that the training leak guard would call a copy of
    an image it never saw (validation, test, this fold's OOF), so every arm's draw passes the guard."""
    raw = out.parent / f"{out.name}-png"
    if not (raw / "manifest.csv").exists():
        shutil.rmtree(raw, ignore_errors=True)
        sample(gen, n, raw, seed=0, drop_near_copies=data)
    held = read_json(raw / "synthetic.json")["n"]
    if held < n:  # a set sampled by an earlier, smaller run: its arms would silently draw fewer images than named
        raise SystemExit(f"{raw}: holds {held} synthetic images, this run asks for {n}; move that folder and "
                         f"{out} aside (or delete them) to sample them again")
    prepare(read_source(raw / "manifest.csv"), out, size=size)
    return out


def draw_settings(values: dict, n_syn: int, min_benign: int, same_epochs: bool = False) -> dict:
    """The recipe with n_syn synthetic images: its ratio counting real + synthetic malignant images when
    every fold's pool has the benign images for it, else every benign image of the fold's pool; epochs
    scaled so that the arm sees about as many images as the recipe without synthetic images (same_epochs:
    the recipe's own, so that its real images are seen as often as without)."""
    if not n_syn:
        return values
    k = float(values["ratio"].split(":")[1]) if ":" in str(values["ratio"]) else None
    n_mal = int(values["n_malignant"])
    fits = k is not None and round((n_mal + n_syn) * k) <= min_benign
    before = n_mal * (1 + k) if k else n_mal + min_benign
    after = (n_mal + n_syn) * (1 + k) if fits else n_mal + n_syn + min_benign
    epochs = values["epochs"] if same_epochs else max(2, math.ceil(values["epochs"] * before / after))
    return {**values, "ratio": values["ratio"] if fits else "natural", "epochs": epochs}


def experiment(args, data: Path, work: Path, size: int, counts: list[int], fold_min: float, gen_kw: dict):
    """Part 2: folds as the cv arms will draw them (same fold seed, same inner validation), each fold's
    generator and synthetic images, and every arm's cv. Returns (pairs: (recipe, what its synthetic arm adds,
    that arm), cvs, settings, smallest benign and malignant counts of a fold's pool)."""
    base_values = _values(BASELINE)
    # (a plan of its own folder: the arms' cv folders hold their own configs)
    plan = prepare_cv(build_config({**base_values, "data": str(data), "seed": args.fold_seed}, "folds"),
                      work / "fold-plan", args.folds, 1, args.fold_seed)
    ids = Store.open(data).table["id"].astype(str).to_numpy()
    min_benign = min(p.info["counts"]["train_pool"]["benign"] for p in plan.plans.values())
    # a small data set (e.g. ISIC 2024's permissive crops) may hold fewer malignant images in a fold's pool than
    # a recipe's draw: then every arm draws as many as the smallest fold's pool holds
    min_malignant = min(p.info["counts"]["train_pool"]["malignant"] for p in plan.plans.values())
    # --same-epochs recipe=n: that recipe + n synthetic images at its own epochs, beside the equal-images arm
    same = {}
    for pair in filter(str.strip, args.same_epochs.split(",")):
        key, _, n = pair.partition("=")
        if not n.strip().isdigit() or not int(n):
            raise SystemExit(f"--same-epochs {pair}: expected RECIPE=N with N > 0, e.g. simple_cnn=3000")
        same[key.strip()] = int(n)
    if counts:
        for folder, fold_plan in plan.plans.items():
            fold = folder.name
            gen = work / "fold-generators" / fold
            generator(data, gen, fold_min, args.smoke, args.fold_gen_steps, args.fid_every, kind="projected",
                      only_ids=ids[fold_plan.pool].tolist(), **gen_kw)
            synthetic_store(gen, max(counts + list(same.values())), size, work / "fold-synthetic" / fold, data)
    recipes = {"simple_cnn 1:2": base_values, "recommended": _values(RECOMMENDED)}
    unknown = sorted(set(same) - {recipe.split()[0] for recipe in recipes})
    if unknown:
        raise SystemExit(f"--same-epochs: {', '.join(unknown)}: expected simple_cnn or recommended")
    cvs, settings, pairs = {}, {}, []
    for recipe, values in recipes.items():
        values = {**values, "epochs": max(1, round(values["epochs"] * args.epochs_scale)), "bootstrap": 0,
                  "n_malignant": min(int(values["n_malignant"]), min_malignant, 10 if args.smoke else min_malignant)}
        arms = [(n, False) for n in [0] + counts] + ([(same[recipe.split()[0]], True)] if recipe.split()[0] in same else [])
        for n, same_epochs in arms:
            name = recipe if n == 0 else f"{recipe} + {n} synthetic" + (f", {values['epochs']} epochs" if same_epochs else "")
            arm = draw_settings(values, n, min_benign, same_epochs)
            if n:
                arm["synthetic"] = {"data": str(work / "fold-synthetic" / "{fold}"), "n": n}
                pairs.append((recipe, f"{n}" + (f", {arm['epochs']} epochs" if same_epochs else ""), name))
            settings[name] = arm
            cvs[name] = cv_arm(name, arm, data, work, args.folds, args.fold_seed)
    return pairs, cvs, settings, min_benign, min_malignant


def goal_met(checked: dict) -> bool:
    """The issue's quality goal on one check: recall and coverage in the first (classifier's) features, no near
    copies in pixels, and no data copying in either space."""
    first = checked["feature_networks"][0]["manifold_k5"]
    copying = checked["memorisation"].get("data_copying")
    return (all(first[k] >= v for k, v in GOAL.items()) and checked["memorisation"]["near_copies_pixel"] == 0
            and copying is not None and not (copying["pixel"]["copying"] or copying["feature"]["copying"]))


def measuring_network(args, data: Path, work: Path) -> Path:
    """The network the checks measure in: UpgradedCNN at 1:2 (configs/seed), trained on this data set's split."""
    features = work / "features-upgraded_cnn"
    if not is_complete_run(features):
        values = _values(ROOT / "configs" / "seed" / "upgraded_cnn_1to2.yaml")
        # as many malignant images as the train pool holds, up to the config's (the ISIC 2024 permissive pool
        # holds fewer than 293)
        values["n_malignant"] = min(int(values["n_malignant"]), pool_counts(data)[0])
        if args.smoke:
            values.update(epochs=1, n_malignant=20)
        train_process(build_config({**values, "data": str(data), "bootstrap": 0}, "features"), features)
    return features


def trajectory(args, data: Path, work: Path, gen_kw: dict) -> list[str]:
    """Part 4: the quality generator's recipe and seed trained again in stages of --trajectory-every steps, within
    the same --gen-min, and checked at every stop as part 1 checks the end (the classifier's features and pixels):
    how recall, coverage and copying move with training. Resuming is exact, so the stops are one run's states."""
    features = measuring_network(args, data, work)
    gen, checks_dir = work / "trajectory-projected", work / "trajectory-checks"
    every = 2 if args.smoke else args.trajectory_every
    rows = ["| step | CPU minutes | FID (yardstick) | recall | coverage | near copies, pixels | data copying, pixels: "
            "Z_U / C_T / worst cell (cut) | features: Z_U / C_T / worst cell (cut) | goal |", "|---|---|---|---|---|---|---|---|---|"]
    stop = 0
    while True:
        stop += every
        info = read_json(gen / "generator.json") if (gen / "generator.json").exists() else None
        if info is None or info["steps"] < stop and not info["stopped_by_time_budget"]:
            print(f"[trajectory] training to step {stop}", flush=True)
            info = train_generator(data, gen, kind="projected", steps=stop, time_budget=args.gen_min * 60,
                                   checkpoint_every=2 if args.smoke else 100, sample_every=every,
                                   fid_every=2 if args.smoke else 500, fid_n=32 if args.smoke else 500,
                                   **({"batch_size": 8} if args.smoke else {}),
                                   **{**gen_kw, "copy_watch": "off"})  # the unwatched course, every stop kept
        record = checks_dir / f"step-{info['steps']:06d}.json"
        if not record.exists():
            write_json(record, check(gen, data, [str(features)], out=checks_dir / f"step-{info['steps']:06d}",
                                     n=args.n_check))
        c = read_json(record)
        net, mem = c["feature_networks"][0], c["memorisation"]
        cop = mem["data_copying"]

        def z(space: str) -> str:
            d = cop[space]
            return (f"{z_text(d['z_u'])} / {z_text(d['c_t'])} / {z_text(d['worst_cell_z'])} ({d['cell_cut']:+.2f})"
                    + (" **copying**" if d["copying"] else ""))

        rows.append(f"| {info['steps']} | {info['train_seconds'] / 60:.1f} | {net['fid']['synthetic_vs_real']:.2f} "
                    f"({net['fid']['real_half_vs_real_half']:.2f}) | {net['manifold_k5']['recall']:.3f} | "
                    f"{net['manifold_k5']['coverage']:.3f} | {100 * mem['near_copies_pixel']:.1f}% | {z('pixel')} | "
                    f"{z('feature')} | {'met' if goal_met(c) else 'not met'} |")
        if info["steps"] < stop or (args.smoke and stop >= 4):
            break
    return [f"The projected generator of part 1 ({info['precision']} step, seed {info['seed']}, class power "
            f"{info.get('class_power') or 0:g}), trained again within {args.gen_min:g} CPU minutes and stopped every "
            f"{every} steps; at each stop `synth check` of {args.n_check} malignant samples in the features of "
            f"{features.relative_to(ROOT) if features.is_relative_to(ROOT) else features} and in 32x32 pixels, against "
            f"the pool's {info['n_real']} real malignant crops (recall, coverage, near copies) and the real malignant "
            "images the generator never saw (the data-copying test). Goal as in part 1.", "", *rows]


def quality(args, data: Path, work: Path, gen_kw: dict) -> list[str]:
    """Part 1: the projected generator on the whole pool (and the earlier DCGAN beside it), checked with three
    feature networks; returns the section's lines on them."""
    features = measuring_network(args, data, work)
    networks = [str(features), "random", "lite0-imagenet"]

    checks = {}
    pool_gen = work / "gen-projected"
    # the FID estimate and copy watch in the checks' own first network, which the generator never trains against
    info = generator(data, pool_gen, args.gen_min, args.smoke, fid_every=args.fid_every, kind="projected",
                     fid_features=str(features), **gen_kw)
    gens = {"projected": (pool_gen, info)}
    if args.gan_min > 0:
        gan = work / "gen-gan"
        gens["gan"] = (gan, generator(data, gan, args.gan_min, args.smoke, kind="gan", size=args.gen_size,
                                      fid_features="random"))
    for kind, (gen, gen_info) in gens.items():
        record = work / f"check-{kind}.json"
        if not record.exists():
            result = check(gen, data, networks, out=work / f"check-{kind}", n=args.n_check)
            write_json(record, result)
        checks[kind] = read_json(record)
    # the set a user trains with: the generator's samples after sample's copy filter (the experiment's sets are made
    # so, fold by fold); checked the same way, so that the goal can be read on what reaches a training draw
    sampled = work / "quality-sampled"
    if not (sampled / "synthetic.json").exists():
        shutil.rmtree(sampled, ignore_errors=True)
        sample(pool_gen, args.n_check, sampled, seed=0, drop_near_copies=data)
    if not (work / "check-sampled.json").exists():
        write_json(work / "check-sampled.json", check(sampled, data, networks, out=work / "check-sampled",
                                                      n=args.n_check))
    checks["projected, as sampled"] = read_json(work / "check-sampled.json")
    drawn = read_json(sampled / "synthetic.json")

    def net_rows(kind: str) -> list[str]:
        rows = []
        for net in checks[kind]["feature_networks"]:
            f, ms = net["fid"], net["manifold_k5"]
            name = net["network"].replace(f"{ROOT}/", "")  # a trained network's folder, as shown() records paths
            rows.append(f"| {kind} | {name}{' (seen by the generator)' if net['seen_by_generator'] else ''} | "
                        f"{f['synthetic_vs_real']:.2f} | {f['real_half_vs_real_half']:.2f} | "
                        f"{f['synthetic_vs_real'] / max(f['real_half_vs_real_half'], 1e-9):.1f}x | {ms['precision']:.3f} | "
                        f"{ms['recall']:.3f} | {ms['density']:.3f} | {ms['coverage']:.3f} |")
        return rows

    p = checks["projected"]
    copying = p["memorisation"].get("data_copying")
    return [f"Projected generator: {info['steps']} steps in {info['train_seconds'] / 60:.1f} minutes on "
             f"{info.get('device', 'the CPU')} (batch "
             f"{info['batch_size']}, discriminator features at {info.get('d_res')} px, classes "
             f"{' + '.join(info['classes'])}, {info['n_real_per_class']} real images, a step's class drawn with "
             f"probability proportional to its count to the power {info.get('class_power') or 0:g}, training step in "
             f"{precision_text(info)})."
             + (f" DCGAN (the earlier family): {gens['gan'][1]['steps']} steps in "
                f"{gens['gan'][1]['train_seconds'] / 60:.1f} minutes." if "gan" in gens else ""), "",
             "| generator | feature network | FID | yardstick (real half vs half) | FID / yardstick | precision | recall "
             "| density | coverage |", "|---|---|---|---|---|---|---|---|---|",
             *[row for kind in checks for row in net_rows(kind)], "",
             f"Goal (recall >= 0.3 and coverage >= 0.5 in the classifier's features, no near copies, no data "
             "copying): "
             f"**{'met' if goal_met(p) else 'not met'}**. Memorisation (projected): near copies "
             f"{100 * p['memorisation']['near_copies_pixel']:.1f}% in pixel space, "
             f"{100 * p['memorisation']['near_copies_feature']:.1f}% in the classifier's feature space "
             f"({p['memorisation']['near_copy_rule']}); the same rule flags "
             f"{unseen_rate(p['memorisation'])} of the real malignant crops the generator never saw (pixel space), the "
             "rate of genuinely new images. For reference, the earlier DCGAN as recorded on HAM10000 "
             "(section synthetic as of commit 3e145d3: 2,900 steps on 293 images): FID 22.95 against a yardstick of 0.16, recall 0.000, "
             "coverage 0.017." + (f" The flagged samples are nearest to {p['memorisation']['near_copy_targets_pixel']} "
                                  "distinct real image(s)." if p["memorisation"].get("near_copy_targets_pixel") else ""),
             "", copying_text(copying, "malignant") if copying else "Data-copying test: not measured by this check.", "",
             *sampled_text(checks["projected, as sampled"], drawn),
             *watch_text(info),
             *near_copies_while_training(pool_gen, info),
             "Full checks: " + ", ".join(f"{shown(work / f'check-{kind}' / 'check.html')}"
                                         for kind in [*gens, "sampled"]) + "."]


def sampled_text(checked: dict, drawn: dict) -> list[str]:
    """The goal on the set a user trains with: `synth sample --drop-near-copies` of the same generator."""
    mem = checked["memorisation"]
    copying = mem.get("data_copying")
    return [f"The set as a user trains with it (row \"projected, as sampled\": `synth sample --drop-near-copies`, "
            f"which dropped and redrew {drawn['near_copies_dropped']} near copies of its training images and "
            f"{drawn['guard_copies_dropped']} copies of images it never saw among {drawn['drawn']} drawn): near copies "
            f"{100 * mem['near_copies_pixel']:.1f}% in pixels (the filter's own rule, so 0 by construction), "
            f"{100 * mem['near_copies_feature']:.1f}% in the classifier's features. "
            + (copying_text(copying, "malignant") if copying else "Data-copying test: not measured.")
            + f" Goal on this set: **{'met' if goal_met(checked) else 'not met'}**.", ""]


def fold_copying(work: Path, data: Path) -> tuple[list[str], dict[int, bool]]:
    """Part 3: the data-copying test in pixel space on each fold's synthetic set as the arms drew it (after sample's
    copy filter), against the malignant images its generator learned and the real ones it never saw; and controls,
    real images the generator never learned tested as if generated: half of the new real images (whole groups)
    against the other half, and for a watched generator synth check's control, the watch's validation images.
    Returns the text and each fold's verdict (copying or not)."""
    rows, watched, verdicts = [], False, {}
    for info_path in sorted((work / "fold-generators").glob("*/generator.json")):
        gen, fold = info_path.parent, info_path.parent.name
        used = work / "fold-synthetic" / fold
        if not (used / "store.json").exists():
            raise SystemExit(f"{used}: no synthetic set; run part 2 (without --copying-only) first")
        store = Store.open(used)
        syn = store.pixels(np.arange(len(store.table)))
        learned = synth_quality.pixels(learned_images(gen, data, "malignant", store.size))
        new_images, groups = unseen_images(gen, data, "malignant", store.size)
        new = synth_quality.pixels(new_images)
        # each reference is clustered and measured once, then tests every set that is compared with it
        against_new = synth_quality.CopyingReference(learned, new, held_groups=groups)
        r = against_new.test(synth_quality.pixels(syn))
        # --copy-watch train's reference: the learned images, each against the other groups'; the new real images
        # tested against it show whether it stands where new images stand
        real, at = learned_positions(gen, data, "malignant")
        against_learned = synth_quality.CopyingReference(learned, None, train_groups=load_split(real).group_keys(real.table)[at])
        against_training = [against_learned.test(x) for x in (synth_quality.pixels(syn), new)]
        half = group_halves(groups)
        controls = [synth_quality.data_copying(learned, new[~half], new[half], held_groups=groups[~half])["z_u"]]
        watch_control = watched_images(gen, data, store.size)
        if watch_control is not None:  # the watch's images against every new image, as synth check's control
            watched = True
            controls.append(against_new.test(synth_quality.pixels(watch_control))["z_u"])
        verdicts[int(fold)] = bool(r["copying"])
        rows.append(f"| {fold} | {len(syn)} | {len(learned)} | {len(new)} | {z_text(r['z_u'])} | {z_text(r['c_t'])} | "
                    f"{r['cells_tested']} of {r['cells']} | {z_text(r['worst_cell_z'])} ({r['cell_cut']:+.2f}) | "
                    f"{'**yes**' if r['copying'] else 'no'} | " + " | ".join(map(z_text, controls)) + " | "
                    + " | ".join(f"{z_text(t['z_u'])}, worst cell {z_text(t['worst_cell_z'])}: "
                                 f"{'**yes**' if t['copying'] else 'no'}" for t in against_training) + " |")
        cut = r["cut"]
    if not rows:
        raise SystemExit(f"{work / 'fold-generators'}: no fold generators; run part 2 (without --copying-only) first")
    return [*(["The data-copying test (Meehan, Chaudhuri and Dasgupta, AISTATS 2020) on each fold's synthetic set as "
            "the arms drew it: are its images closer (32x32 pixels, L2) to the malignant images the fold's generator "
            "learned than real malignant images it never saw (test, the fold's OOF part, and validation unless the "
            "copy watch chose the generator's stop on it) are? Their "
            "patients or lesions hold several images each, so the z scores come from resamples of whole groups. Z "
            "below the "
            f"one-sided 5% point ({cut:+.2f}) is copying, above 0 lies farther than new real images. C_T "
            "averages the test within k-means cells of the learned images; a cell below its Bonferroni cut is copying "
            "too. Controls (Z_U), real images the generator never learned tested as if generated, which read what a "
            "generator that copies nothing scores on these images: half of the new real images (whole groups) "
            "against the other half"
            + ("; and synth check's control, the validation images the copy watch chose the stop on, against every "
               "new real image" if watched else "") + ". The last two columns use no new real image as the "
            "reference: the learned images themselves, each against the images of the other patients or lesions "
            "(`synth train --copy-watch train`'s reference): the synthetic set tested against it (Z_U, the worst cell, "
            "and the verdict by the same cuts), and the new real images tested against it as if generated, which "
            "read as no copying where that reference stands where new images stand.", "",
            "| fold | synthetic images | learned | new real | Z_U | C_T | cells tested | worst cell (cut) | copying "
            "| control Z_U: half vs half |" + (" control Z_U: the watch's images |" if watched else "")
            + " against the learned images by group | new real images against them |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if watched else ""), *rows])], verdicts


def by_copying(work: Path, verdicts: dict[int, bool], n_boot: int) -> list[str]:
    """Part 3's second table: each synthetic arm against its recipe without, paired on each fold's OOF images (scored
    by that fold's models, trained with that fold's set) and on the folds whose sets copy and those whose sets are
    clean, pooled: do clean sets lose as copying ones do?"""
    arms = {path.name: Run.load(path) for path in sorted((work / "cv").glob("*")) if is_complete_run(path)}
    pairs = [(name.split(" + ")[0], name) for name in arms if " + " in name and name.split(" + ")[0] in arms]
    if not pairs:
        return ["No cv arm with synthetic images beside its recipe without (run part 2 first)."]
    clean = tuple(f for f, copying in sorted(verdicts.items()) if not copying)
    copying = tuple(f for f, copying in sorted(verdicts.items()) if copying)
    groups = [(f"fold {f}", (f,), "**yes**" if verdicts[f] else "no") for f in sorted(verdicts)]
    # a pooled row of one fold would repeat that fold's row
    groups += [(f"clean sets' folds ({', '.join(map(str, clean))})", clean, "no")] if len(clean) > 1 else []
    groups += [(f"copying sets' folds ({', '.join(map(str, copying))})", copying, "**yes**")] if len(copying) > 1 else []
    rows = []
    for recipe, arm in pairs:
        oof = arms[recipe].oof()  # read once: each row counts its images from it
        for label, folds, verdict in groups:
            d = compare_runs([arms[recipe]], [arms[arm]], metrics=PAIRED, n_boot=n_boot, folds=folds)
            part = oof[oof["fold"].isin(folds)]
            rows.append(f"| {recipe} | {arm.split(' + ', 1)[1]} | {label} | {verdict} | {len(part)} "
                        f"({int(part['label'].sum())}) | " + " | ".join(difference_cell(d["metrics"][m]) for m in PAIRED)
                        + " |")
    return ["Each synthetic arm (B) against its recipe without (A), paired on the OOF images of one fold, which that "
            "fold's models scored (B's trained with that fold's synthetic set), and on the folds whose sets the table "
            f"above calls copying and clean, pooled ({n_boot} resamples of whole groups). A single fold holds few "
            "malignant images, so its interval is wide. A pooled row ranks images across its folds' models, as the "
            "OOF table does, so it also measures how alike those models score, and can lie above or below every one "
            "of its folds.", "",
            "| recipe | synthetic | OOF images of | set copies | images (malignant) | "
            + " | ".join(f"{m}: B - A [95% CI]" for m in PAIRED) + " |", "|---|---|---|---|---|" + "---|" * len(PAIRED),
            *rows]


def fold_watch_text(fold_gens: list[dict]) -> str:
    """Which stop the copy watch sampled in each fold generator, with what its FID estimate and watch measured
    there (empty when the fold generators were not watched)."""
    watched = [g["copy_watch_result"] for g in fold_gens if g.get("copy_watch_result")]
    if not watched:
        return ""
    chosen = []
    for w in watched:
        steps = ", ".join(str(s["step"]) for s in w["stops"])
        sampled = w["selected_step"] if w["selected_step"] is not None else w.get("fallback_step")
        stop = next((s for s in w["stops"] if s["step"] == sampled), None)
        measured = (f"recall {stop['recall']:.2f}, coverage {stop['coverage']:.2f}, Z_U {stop['copy_z_pixel']:+.2f} / "
                    f"{stop['copy_z_feature']:+.2f}" if stop else "")
        if w["selected_step"] is not None:
            chosen.append(f"step {sampled} of {steps} ({measured})")
        elif stop:
            chosen.append(f"step {sampled}, since every stop of {steps} copied and it copied least over the quality "
                          f"bar ({measured})")
        else:
            chosen.append(f"the last step, {w['stops'][-1]['step']}, since every stop of {steps} copied")
    return (f" The copy watch (rule {watched[0].get('rule', 'last')}, against {watched[0]['held_out']}, "
            f"{watched[0]['n']} images; {watch_samples(watched[0])} samples a stop; recall and coverage of the FID "
            f"estimate's samples against the fold's training images, Z_U in pixels / in the estimate's features) "
            f"sampled, fold by fold: {'; '.join(chosen)}.")


def watch_samples(watch: dict, default: int | str = "the FID estimate's") -> str:
    """How many samples the watch tested at a stop (generators before --watch-n did not record it: the FID
    estimate's, `default`)."""
    n = sorted({int(s["copy_n"]) for s in watch["stops"] if "copy_n" in s})
    return "/".join(map(str, n)) if n else str(default)


def watch_text(info: dict) -> list[str]:
    """What synth train's copy watch saw at each FID stop and which stop it chose (none when unwatched)."""
    watch = info.get("copy_watch_result")
    if not watch:
        return ["Copy watch: off (the last step is sampled).", ""]
    rule = watch.get("rule", "last")  # generators before the margin rule
    stops = ", ".join(f"{s['step']}: {z_text(s['copy_z_pixel'])} / {z_text(s['copy_z_feature'])}"
                      + (f" (recall {s['recall']:.2f}, coverage {s['coverage']:.2f})" if "recall" in s else "")
                      + (" copying" if s["copying"] else "") for s in watch["stops"])
    how = ("the last stop without copying" if rule == "last" else
           f"by the margin rule (among the stops without copying whose samples reach recall "
           f"{watch['quality_bar']['recall']} and coverage {watch['quality_bar']['coverage']}, the largest Z_U, the "
           "worse of the two spaces; without one, the last stop without copying)")
    chosen = (f"it samples step {watch['selected_step']}, {how}" if watch["selected_step"] is not None
              else f"every stop copied, so it samples step {watch['fallback_step']}, the one farthest from copying "
                   "over the quality bar" if watch.get("fallback_step") is not None
              else "every stop copied, so it samples the last step")
    on_val = watch.get("reference", "val") == "val"  # generators before --copy-watch train were watched on val
    return [f"Copy watch (`synth train --copy-watch {'val' if on_val else 'train'}`): at every FID estimate the "
            f"data-copying test of {watch_samples(watch, info['fid_estimate']['n'])} samples against {watch['held_out']} "
            f"({watch['n']} images, {watch['groups']} groups), Z_U in pixels / in {info['fid_estimate']['features'].split(':')[0]} features"
            + (" (with the samples' recall and coverage against as many of the class's training images, in those "
               "features)" if rule == "margin" else "") + ", by step: "
            f"{stops}. Training " + ("stopped after " + str(watch["patience"]) + " copying stops in a row"
                                     if watch["stopped_by_copying"] else "ran to its budget")
            + f"; {chosen}." + (" The check above leaves those validation images out of its new real images."
                                 if on_val else ""), ""]


def unseen_rate(memorisation: dict) -> str:
    """check's near-copy rate of real images the generator never saw, as text (checks before it: not measured)."""
    rate = memorisation.get("near_copies_pixel_unseen_real")
    n = memorisation.get("n_unseen_real", 0)
    return "(not measured)" if rate is None else f"{100 * rate:.1f}% ({round(rate * n)} of {n})"


def near_copies_while_training(gen: Path, info: dict) -> list[str]:
    """The share of near copies among the FID estimate's malignant samples at each estimate of the training
    (progress.csv; generators trained before the monitor have no such column)."""
    progress = gen / "progress.csv"
    table = pd.read_csv(progress) if progress.exists() else pd.DataFrame()
    if "near_copies" not in table:
        return []
    steps = ", ".join(f"{int(r.step)}: {100 * r.near_copies:.1f}%" for r in table.itertuples())
    return [f"Near copies among the running FID estimate's {info['fid_estimate']['n']} malignant samples, by step: {steps}.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_option(ap)
    ap.add_argument("--size", type=int, default=64, help="pixels of the --dataset store the classifiers train on")
    ap.add_argument("--data", default="", help="instead of --dataset: a prepared data set with a split")
    ap.add_argument("--name", default="", help="with --data: the data set's name in the section title")
    ap.add_argument("--work", default=str(ROOT / "bench-out"))
    ap.add_argument("--gen-size", type=int, default=64, help="the generator's pixels")
    ap.add_argument("--gen-min", type=float, default=60.0, help="CPU minutes of the quality generator")
    ap.add_argument("--fold-gen-min", type=float, default=None, help="CPU minutes of each fold's generator "
                    "(default --gen-min)")
    ap.add_argument("--fold-gen-steps", type=int, default=None, help="steps of each fold's generator, if fewer "
                    "than --fold-gen-min allows: the same generators whatever else runs on the machine")
    ap.add_argument("--gan-min", type=float, default=26.0, help="CPU minutes of the earlier DCGAN for comparison (0: none)")
    ap.add_argument("--d-res", type=int, default=96)
    ap.add_argument("--class-power", type=float, default=CLASS_POWER, help="synth train's --class-power for every "
                    "projected generator (0: classes balanced)")
    ap.add_argument("--copy-watch", choices=("val", "train", "off"), default="val", help="synth train's --copy-watch "
                    "for every projected generator but part 4's (val: sample the FID stop --copy-rule selects among "
                    "those without data copying against the split's validation images; its folders and sections end "
                    "in -watched, and -watched-margin under the margin rule; train: the same against the training "
                    "images by group, -watched-train and -watched-train-margin)")
    ap.add_argument("--copy-rule", choices=("margin", "last"), default="margin", help="synth train's --copy-rule")
    ap.add_argument("--watch-n", type=int, default=None, help="synth train's --watch-n: samples the copy watch tests "
                    "at each stop (default the FID estimate's); folders and sections gain -nN")
    ap.add_argument("--device", default="cpu", help="where the projected generators train (synth train --device); "
                    "the classifiers' and checks' own settings are unchanged")
    ap.add_argument("--fid-every", type=int, default=250, help="steps between FID estimates (and copy-watch stops)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every recipe's epochs")
    ap.add_argument("--n-synthetic", default="1000,3000")
    ap.add_argument("--same-epochs", default="", help="RECIPE=N[,...] (simple_cnn, recommended): that recipe + N "
                    "synthetic images also at its own epochs, so its real images are seen as often as without")
    ap.add_argument("--n-check", type=int, default=3000, help="synthetic images in the quality check")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="the tiniest run: 2 folds, 1 epoch, a generator of 4 steps")
    ap.add_argument("--quality-only", action="store_true", help="part 1 alone (the generators and their checks), "
                    "written to its own section (SECTION-quality), so the last full run's section stays")
    ap.add_argument("--copying-only", action="store_true", help="part 3 alone: the data-copying test on the fold "
                    "sets part 2 made, written to SECTION-copying")
    ap.add_argument("--trajectory-every", type=int, default=0, help="part 4 alone: part 1's generator trained "
                    "again in stages of this many steps within --gen-min, each stop checked; written to SECTION-trajectory")
    ap.add_argument("--no-quality", action="store_true", help="part 2 alone (the fold generators and the cv arms); "
                    "the section points to SECTION-quality, which --quality-only writes, for the generator's quality")
    args = ap.parse_args()
    if args.quality_only + args.no_quality + args.copying_only + bool(args.trajectory_every) > 1:
        raise SystemExit("--quality-only, --no-quality, --copying-only, --trajectory-every: choose one (part 1, 2, 3 "
                         "or 4 alone)")
    command = command_line("synthetic", args, ap)  # as typed, before --smoke and --dataset fill in the rest
    if args.smoke:
        args.folds, args.epochs_scale, args.n_check, args.n_boot, args.n_synthetic = 2, 0.0, 64, 50, "20,40"
    started = time.time()
    if args.data:
        if not args.name:
            raise SystemExit("--data needs --name (the data set's name in the section title)")
        data, section = Path(args.data).resolve(), f"synthetic-{args.name}"
        work = Path(args.work) / section
    else:
        ds = DATASETS[args.dataset]
        args.name, section = ds.key, ds.section("synthetic")
        data = prepared(ds.work(Path(args.work)), ds, args.size).resolve()
        work = ds.work(Path(args.work)) / f"synthetic{args.size}"
    if args.class_power != CLASS_POWER:  # a generator of another class draw: its own folders and section
        tag = f"-class-power-{args.class_power:g}"
        section, work = section + tag, work.with_name(work.name + tag)
    if args.gen_size != 64:  # generators of another size: their own section (the work folder names the store's size)
        section += f"-{args.gen_size}px"
    if args.copy_watch != "off" and not args.trajectory_every:  # part 4 is the unwatched course by design
        tag = "-watched" + ("-train" if args.copy_watch == "train" else "") + ("-margin" if args.copy_rule == "margin"
                                                                               else "")
        tag += f"-n{args.watch_n}" if args.watch_n else ""
        section, work = section + tag, work.with_name(work.name + tag)
    elif args.watch_n:
        raise SystemExit(f"--watch-n {args.watch_n}: sets the copy watch's samples; with --copy-watch off or "
                         "--trajectory-every no generator is watched")
    work.mkdir(parents=True, exist_ok=True)
    size = Store.open(data).size
    fold_min = args.fold_gen_min if args.fold_gen_min is not None else args.gen_min
    counts = sorted({int(n) for n in args.n_synthetic.split(",") if n.strip()})
    gen_kw = {"size": args.gen_size, "d_res": args.d_res, "class_power": args.class_power, "copy_watch": args.copy_watch,
              "copy_rule": args.copy_rule, "device": args.device, "watch_n": args.watch_n}

    def head() -> list[str]:
        return [f"## Synthetic malignant images on {args.name} (`benchmarks/synthetic.py`)", "",
                f"Command: `{command}` "
                f"(code {git_commit()}); machine: {machine()}; wall of this invocation "
                f"{(time.time() - started) / 3600:.2f} h.", "",
                f"Data: {data.name} at {size} px, {len(ids)} images; generators at {args.gen_size} px. The notebook's "
                f"own result: {NOTEBOOK}.", ""]

    ids = Store.open(data).table["id"].astype(str).to_numpy()
    # each part's body before head(), whose wall time must include it
    if args.copying_only:
        copying_lines, verdicts = fold_copying(work, data)
        body = ["### Are the experiment's synthetic images copies?", "", *copying_lines, "",
                "### Do clean sets lose as copying ones do?", "", *by_copying(work, verdicts, args.n_boot)]
        return finish(section + "-copying", head() + body)
    if args.trajectory_every:
        body = ["### Quality and copying along one generator's training", "", *trajectory(args, data, work, gen_kw)]
        return finish(section + "-trajectory", head() + body)
    # 1. quality (unless --no-quality), 2. the experiment (unless --quality-only)
    quality_text = ([f"Not run by this invocation (--no-quality); section {section}-quality (`--quality-only`) holds "
                     "the generator's quality."] if args.no_quality else quality(args, data, work, gen_kw))
    if not args.quality_only:
        pairs, cvs, settings, min_benign, min_malignant = experiment(args, data, work, size, counts, fold_min, gen_kw)

    # 3. the section
    lines = [*head(),
             "### Generator quality (3,000 malignant samples against the train pool's real malignant crops)", "",
             *quality_text, "",
             "### The notebook's experiment as cross-validation, paired on out-of-fold images", ""]
    if args.quality_only:
        lines.append("Not run by this invocation (--quality-only); the section without \"-quality\" holds the last "
                     "full run.")
        return finish(section + "-quality", lines)
    fold_gens = [read_json(path) for path in sorted((work / "fold-generators").glob("*/generator.json"))]
    budget = f"up to {fold_min:g} CPU minutes" + (f" or {args.fold_gen_steps} steps" if args.fold_gen_steps else "")
    reached = ", ".join(f"{g['steps']} steps in {g['train_seconds'] / 60:.1f} min" for g in fold_gens)
    drawn = [read_json(path) for path in sorted((work / "fold-synthetic").glob("*-png/synthetic.json"))]
    dropped = ", ".join(f"{d['near_copies_dropped']} + {d['guard_copies_dropped']} of {d['drawn']}" for d in drawn)
    lines += [
             f"{args.folds}-fold grouped cv of the train pool (fold seed {args.fold_seed}); each fold's synthetic images "
             f"come from its own generator ({budget}: {reached}; trained on that fold's training part only) and "
             "join its training draws only. With synthetic images a recipe keeps its ratio (real + synthetic malignant "
             f"against benign) where every fold's pool holds the benign images for it (the smallest holds {min_benign}), "
             "else takes every benign image of the fold's pool; its epochs shrink so that it sees about as many images "
             "as without (an arm named with its epochs keeps the recipe's: --same-epochs). Real malignant images a "
             f"draw: the recipe's, at most the {min_malignant} of the smallest fold's pool. `synth sample "
             "--drop-near-copies` dropped and redrew near copies of the fold generator's training images + copies of "
             f"images it never saw (the leak guard's rule), fold by fold: {dropped}." + fold_watch_text(fold_gens), "",
             "| arm | draw | epochs | OOF ROC AUC | OOF AP | OOF pAUC80 | fold models' test ROC AUC (mean ± sd) | "
             "fold models' agreement on test (Spearman) | fold-ensemble test ROC AUC | test F1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in cvs.items():
        o, te, s = run.metrics["oof"], run.metrics["test"], settings[name]
        each, agreement = fold_models_on_test(run.path)
        lines.append(f"| {name} | {s['ratio']}, {s['n_malignant']} real + {s.get('synthetic', {}).get('n', 0)} synthetic | "
                     f"{s['epochs']} | {o['roc_auc']:.3f} | {o['average_precision']:.3f} | {o['pauc_80']:.4f} | "
                     f"{statistics.mean(each):.3f} ± {statistics.stdev(each):.3f} | {agreement:.2f} | "
                     f"{te['roc_auc']:.3f} | {te['f1']:.3f} |")
    o = cvs["simple_cnn 1:2"].metrics["oof"]
    t = cvs["simple_cnn 1:2"].metrics["test"]
    lines += ["", f"With synthetic (B) against without (A), on the same {o['n_malignant'] + o['n_benign']} OOF images "
              f"({args.n_boot} resamples of whole groups); in the last column the fold ensembles on the "
              f"{t['n_malignant']}:{t['n_benign']} test set, paired the same way (a check, with far fewer malignant "
              "images than OOF):", "",
              "| recipe | synthetic | " + " | ".join(f"{m}: B - A [95% CI]" for m in PAIRED)
              + " | test roc_auc: B - A [95% CI] |", "|---|---|" + "---|" * (len(PAIRED) + 1)]

    for recipe, what, arm_name in pairs:
        d = compare_runs([cvs[recipe]], [cvs[arm_name]], metrics=PAIRED, n_boot=args.n_boot)["metrics"]
        on_test = compare_runs([cvs[recipe]], [cvs[arm_name]], metrics=("roc_auc",), n_boot=args.n_boot, on="test")
        lines.append(f"| {recipe} | {what} | " + " | ".join(difference_cell(d[m]) for m in PAIRED)
                     + f" | {difference_cell(on_test['metrics']['roc_auc'])} |")
    finish(section, lines)


def fold_models_on_test(cv_dir: Path) -> tuple[list[float], float]:
    """Each fold model's own test ROC AUC, and how alike the fold models rank the test images (mean pairwise
    Spearman correlation): an ensemble can gain from members that differ while each member loses, so the section
    shows both."""
    folders = [cv_dir / "folds" / fold["folder"] for fold in read_json(cv_dir / "cv.json")["per_fold"]]
    aucs = [read_json(folder / "metrics.json")["test"]["roc_auc"] for folder in folders]
    scores = []
    for folder in folders:
        table = pd.read_csv(folder / "predictions.csv")
        scores.append(table[table["split"] == "test"].sort_values("id")["prob"].to_numpy())
    pairs = [spearmanr(a, b).statistic for i, a in enumerate(scores) for b in scores[i + 1:]]
    return aucs, float(np.mean(pairs))


def finish(section: str, lines: list[str]) -> None:
    update_section(section, "\n".join(lines))
    print("\n".join(lines))
    print(f"docs/results.md: section {section} written")


if __name__ == "__main__":
    main()
