"""The projected generator (Projected GAN + FastGAN): training, resume, seeded sampling, the frozen
feature network, DiffAugment on both sides, and the bad inputs around it; synth check on two copies
of one set. Tiny images (32 px) and a few steps; the feature network is randomly initialised here
(pretrained=False): these tests check the machinery, not ImageNet weights."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import cli
from lesionlab.data.splits import load_split
from lesionlab.data.store import Store
from lesionlab.errors import BadInputError, ExistsError
from lesionlab.synth import projected, quality
from lesionlab.synth.generator import _FidEstimate, class_draw_probabilities, train_generator
from lesionlab.synth.samples import sample

TINY = dict(kind="projected", size=32, batch_size=8, d_res=32, fid_every=0, sample_every=100, pretrained=False,
            precision="32", copy_watch="off")


@pytest.fixture(scope="module")
def projected_gen(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("proj") / "g"
    train_generator(small_data, out, steps=3, checkpoint_every=3, **TINY)
    return out


def test_projected_trains_on_both_classes_of_the_pool_only(projected_gen, small_data):
    info = json.loads((projected_gen / "generator.json").read_text())
    assert info["kind"] == "projected" and info["classes"] == ["benign", "malignant"] and info["steps"] == 3
    store = Store.open(small_data)
    split = load_split(store)
    used = pd.read_csv(projected_gen / "real_ids.csv", dtype=str)
    assert not set(used["id"]) & (set(split.ids("val")) | set(split.ids("test")))
    assert set(used["label"]) == {"0", "1"}
    assert info["n_real_per_class"] == {"benign": int((used["label"] == "0").sum()),
                                        "malignant": int((used["label"] == "1").sum())}


@pytest.mark.slow
def test_interrupted_projected_training_resumes_where_it_stopped(small_data, tmp_path):
    """Stopped after 2 steps and resumed to 4, it ends exactly where 4 uninterrupted steps end."""
    first = train_generator(small_data, tmp_path / "a", steps=4, checkpoint_every=2, time_budget=1e-9, **TINY)
    assert first["stopped_by_time_budget"] and first["steps"] == 2
    resumed = train_generator(small_data, tmp_path / "a", steps=4, checkpoint_every=2, **TINY)
    assert resumed["steps"] == 4 and not resumed["stopped_by_time_budget"]
    train_generator(small_data, tmp_path / "b", steps=4, checkpoint_every=2, **TINY)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["trainer"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["trainer"]
    for part in ("ema", "d"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_sampling_is_deterministic_by_seed(projected_gen, tmp_path):
    def images(folder):
        return np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "images").iterdir())])

    sample(projected_gen, 6, tmp_path / "s0", seed=0, batch=4)
    sample(projected_gen, 6, tmp_path / "s0again", seed=0, batch=4)
    sample(projected_gen, 6, tmp_path / "s1", seed=1, batch=4)
    assert np.array_equal(images(tmp_path / "s0"), images(tmp_path / "s0again"))
    assert not np.array_equal(images(tmp_path / "s0"), images(tmp_path / "s1"))
    cli("synth", "sample", projected_gen, "--n", "3", "--out", tmp_path / "ben", "--label", "benign")
    assert (pd.read_csv(tmp_path / "ben" / "manifest.csv")["label"] == 0).all()


def test_near_copies_of_training_and_held_out_images_are_dropped_and_redrawn(projected_gen, small_data, tmp_path,
                                                                             monkeypatch):
    """A generator whose every third sample is a training image and every third a validation or test image 10%
    brighter: with --drop-near-copies none of them reaches the folder (which then passes the training leak
    guard), others are drawn in their place, and synthetic.json counts both kinds."""
    from lesionlab.data.copy_guard import check_no_leak, find_copies
    from lesionlab.synth import samples
    from lesionlab.synth.check import learned_images

    learned = learned_images(projected_gen, small_data, "malignant", 32)
    store = Store.open(small_data)
    split = load_split(store)
    held_out = store.pixels(np.concatenate([split.positions(store.table, "val"), split.positions(store.table, "test")]))

    def copying(trainer, info, k, seed, label, gen_dir):
        """Sample number `seed + i` (sample() seeds a batch by the samples drawn before it): a training image when
        it is 0 modulo 3, a brightened held-out one when 1."""
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8)
        kind = (seed + np.arange(k)) % 3
        images[kind == 0] = learned[rng.integers(0, len(learned), int((kind == 0).sum()))]
        brighter = held_out[rng.integers(0, len(held_out), int((kind == 1).sum()))] * 1.1
        images[kind == 1] = np.clip(brighter, 0, 255).astype(np.uint8)
        return images

    monkeypatch.setattr(samples, "generate_batch", copying)

    def stored(folder):
        return np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "images").iterdir())])

    def copies(folder):
        return sum(any(np.array_equal(im, r) for r in learned) for im in stored(folder))

    sample(projected_gen, 6, tmp_path / "kept", seed=0, batch=4)
    # what the filter has to remove
    assert copies(tmp_path / "kept") == 2 and len(find_copies(stored(tmp_path / "kept"), held_out)) == 2
    said = cli("synth", "sample", projected_gen, "--n", "6", "--out", tmp_path / "dropped", "--drop-near-copies",
               small_data).output
    assert "near copies of training images and" in said and f"lesionlab prepare {tmp_path / 'dropped'}" in said
    kept = stored(tmp_path / "dropped")
    assert len(kept) == 6 and copies(tmp_path / "dropped") == 0
    check_no_leak(kept, [f"s{i}" for i in range(6)], held_out, [f"h{i}" for i in range(len(held_out))], "held-out")
    meta = json.loads((tmp_path / "dropped" / "synthetic.json").read_text())
    assert meta["near_copies_dropped"] >= 2 and meta["guard_copies_dropped"] >= 1
    assert meta["drawn"] == 6 + meta["near_copies_dropped"] + meta["guard_copies_dropped"] >= 10
    # the filtered images depend on the seed alone
    sample(projected_gen, 6, tmp_path / "again", drop_near_copies=small_data)
    assert np.array_equal(stored(tmp_path / "dropped"), stored(tmp_path / "again"))


def test_feature_network_is_frozen_and_only_the_heads_learn():
    torch.manual_seed(0)
    trainer = projected.ProjectedTrainer(32, 2, 2e-4, 32, pretrained=False)
    real, c = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(0, 2, (8,))
    trainer.step(real, c)  # builds the discriminator
    before = {k: v.clone() for k, v in trainer.d.state_dict().items()}
    trainer.step(real, c)
    after = trainer.d.state_dict()
    features = [k for k in before if k.startswith("features.")]
    heads = [k for k in before if k.startswith("heads.") and k.endswith("weight_orig")]
    assert features and heads
    assert all(torch.equal(before[k], after[k]) for k in features)  # weights and BatchNorm statistics alike
    assert any(not torch.equal(before[k], after[k]) for k in heads)
    assert not any(p.requires_grad for p in trainer.d.features.parameters())
    assert not trainer.d.features.training  # eval mode even while the discriminator trains


def test_diffaugment_sees_real_and_generated_batches(monkeypatch):
    torch.manual_seed(0)
    trainer = projected.ProjectedTrainer(32, 2, 2e-4, 32, pretrained=False)
    seen = []
    monkeypatch.setattr(projected, "augment", lambda x: seen.append(x.detach().clone()) or projected.diff_augment(x))
    generated = []
    trainer.g.register_forward_hook(lambda mod, inp, out: generated.append(out.detach().clone()))
    real, c = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(0, 2, (8,))
    trainer.step(real, c)
    assert len(generated) == 1 and len(seen) == 3  # D on real, D on generated, G through D
    assert sum(torch.equal(x, real) for x in seen) == 1
    assert sum(torch.equal(x, generated[0]) for x in seen) == 2
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert not torch.equal(projected.augment(x), x)


def test_generator_folder_of_another_size_or_class_set_is_refused(projected_gen, small_data, tmp_path):
    import shutil

    gen = tmp_path / "g"
    shutil.copytree(projected_gen, gen)
    with pytest.raises(ExistsError, match=r"size 32 \(asked 64\)"):
        train_generator(small_data, gen, steps=5, **{**TINY, "size": 64})
    with pytest.raises(ExistsError, match=r"classes \['benign', 'malignant'\] \(asked \['malignant'\]\)"):
        train_generator(small_data, gen, steps=5, classes="one", **TINY)


def test_sampling_a_class_the_generator_never_learned_is_refused(small_data, tmp_path):
    train_generator(small_data, tmp_path / "mal", steps=1, classes="one", **TINY)
    r = cli("synth", "sample", tmp_path / "mal", "--n", "2", "--out", tmp_path / "s", "--label", "benign", ok=False)
    assert r.exit_code == 2 and "trained on malignant images only; it cannot sample 'benign'" in r.output
    assert not (tmp_path / "s").exists()
    with pytest.raises(BadInputError, match="only --kind projected is class-conditional"):
        train_generator(small_data, tmp_path / "gan", kind="gan", size=32, steps=1, classes="both")


def test_check_against_a_data_set_of_another_size_is_refused(small_data, tmp_path):
    train_generator(small_data, tmp_path / "g64", steps=1, **{**TINY, "size": 64})
    r = cli("synth", "check", tmp_path / "g64", "--data", small_data, "--features", "random", "--n", "8", ok=False)
    assert r.exit_code == 2 and "prepared at 32 px, smaller than the 64 px synthetic images" in r.output


@pytest.mark.slow
def test_check_of_two_copies_of_one_set(small_data, tmp_path):
    """The real malignant pool images, imported as a synthetic folder: FID about 0, recall and
    coverage 1, in each feature network; the output names each network."""
    from lesionlab.synth.generator import real_images

    store, pos = real_images(small_data, 1)
    folder = tmp_path / "copies"
    folder.mkdir()
    for k, im in enumerate(store.pixels(pos)):
        Image.fromarray(im).save(folder / f"{k:04d}.png")
    cli("synth", "import", folder, "--out", tmp_path / "syn")
    r = cli("synth", "check", tmp_path / "syn", "--data", small_data, "--features", "random", "--features", "random",
            "--n", str(len(pos)), "--out", tmp_path / "chk")
    result = json.loads((tmp_path / "chk" / "check.json").read_text())
    assert result["synthetic"]["n"] == result["real"]["n"] == len(pos)
    for net in result["feature_networks"]:
        assert net["fid"]["synthetic_all_vs_real_all"] == pytest.approx(0, abs=1e-6)
        assert net["manifold_k5"]["recall"] == 1.0 and net["manifold_k5"]["coverage"] == 1.0
        assert net["manifold_k5"]["precision"] == 1.0 and "VGG-11, random init" in net["network"]
    assert result["independent_networks"] == 2 and "never saw" in r.output
    assert result["memorisation"]["near_copies_pixel"] == 1.0  # every image is a copy of a real one
    # the yardstick: the same rule on the 10 validation + 10 test malignant images, and those the split set aside
    # with their lesions' groups, which no generator learned
    mem = result["memorisation"]
    split = load_split(store)
    held = [p for side in ("val", "test", "excluded") for p in split.positions(store.table, side)
            if store.table["label"].iloc[p] == 1]
    d = quality.nearest(quality.pixels(store.pixels(np.array(held))), quality.pixels(store.pixels(pos)))[0]
    assert mem["n_unseen_real"] == len(held) >= 20
    assert mem["near_copies_pixel_unseen_real"] == np.mean(d < quality.near_copy_cut(quality.pixels(store.pixels(pos))))
    assert "real malignant images the generator never saw" in (tmp_path / "chk" / "check.md").read_text()
    # the data-copying test: copies lie far closer to the training images than the held-out ones do
    copying = mem["data_copying"]
    assert copying["pixel"]["n_held_out"] == copying["feature"]["n_held_out"] == len(held)
    for space in ("pixel", "feature"):
        assert copying[space]["copying"] and copying[space]["z_u"] < -3
    assert "Pixels: Z_U" in (tmp_path / "chk" / "check.md").read_text()


def test_leak_guard_catches_smooth_copies_of_evaluation_images(small_data, tmp_path):
    """Copies a generator might make of validation images: smooth (a quarter of the side, enlarged
    again), colour-shifted, with noise. Neither the same bytes nor ids; the texture signature alone
    lets several through, the shape signature stops them all, and training refuses them by name."""
    from lesionlab.data.copy_guard import NEAR_COPY, find_copies, signatures
    from lesionlab.data.sources import read_source
    from lesionlab.data.splits import make_split, save_split, split_path
    from lesionlab.data.store import prepare

    data = tmp_path / "data64"  # the guard's thresholds were measured at 64 px and more
    prepare(read_source(small_data.parent / "raw" / "manifest.csv"), data, size=64, workers=1)
    store = Store.open(data)
    save_split(make_split(store, (10, 40), (10, 40), seed=0), split_path(data))
    split = load_split(store)
    val_ids = split.ids("val")[:8]
    originals = np.stack([store.pixels(np.flatnonzero(store.table["id"] == v))[0] for v in val_ids])
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    copies = []
    for k, im in enumerate(originals):
        smooth = Image.fromarray(im).resize((16, 16), Image.BOX).resize((64, 64), Image.BICUBIC)
        copy = (np.asarray(smooth) * [1.04, 0.98, 1.0] + 4 + rng.normal(0, 3, im.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(copy).save(raw / "images" / f"c{k}.png")
        copies.append(copy)
    copies = np.stack(copies)
    texture = (signatures(copies) * signatures(originals)).sum(1)
    assert (texture < NEAR_COPY).sum() >= 3  # what the texture signature alone would miss
    hits = find_copies(copies, originals)
    assert sorted(i for i, _, _ in hits) == list(range(8)) and all(i == j for i, j, _ in hits)
    pd.DataFrame([{"path": f"images/c{k}.png", "label": 1, "id": f"gen{k}", "synthetic": 1}
                  for k in range(8)]).to_csv(raw / "manifest.csv", index=False)
    cli("prepare", raw, "--out", tmp_path / "near", "--size", "64")
    r = cli("train", "--data", data, "--out", tmp_path / "r", "--epochs", "1", "--n-malignant", "20",
            "--synthetic", tmp_path / "near", ok=False)
    assert r.exit_code == 2 and "8 synthetic image(s) are copies of validation or test images" in r.output
    assert f"gen0 ~ {val_ids[0]}" in r.output and not (tmp_path / "r").exists()


def test_class_draw_probabilities_by_hand():
    assert np.allclose(class_draw_probabilities([100, 400], 0.0), [0.5, 0.5])
    assert np.allclose(class_draw_probabilities([100, 400], 1.0), [0.2, 0.8])
    assert np.allclose(class_draw_probabilities([100, 400], 0.5), [10 / 30, 20 / 30])  # sqrt: 10 and 20


@pytest.mark.parametrize("power", [0.0, 1.0])
def test_a_step_draws_each_class_as_the_power_says(small_data, tmp_path, monkeypatch, power):
    """The small train pool holds about a quarter malignant images: balanced (power 0) half the draws are
    malignant, as the pool holds them (power 1) their share of the pool; 2,000 draws put 0.03 beyond 3 sd."""
    drawn = []

    def step(self, real, c):
        drawn.append(c.clone())
        return {"loss_d": 0.0, "loss_g": 0.0}

    monkeypatch.setattr(projected.ProjectedTrainer, "step", step)
    info = train_generator(small_data, tmp_path / "g", steps=250, checkpoint_every=250, class_power=power,
                           **{**TINY, "sample_every": 1000})
    n = info["n_real_per_class"]
    assert info["class_power"] == power and n["malignant"] < n["benign"] / 2
    share = torch.cat(drawn).float().mean().item()
    assert abs(share - (0.5 if power == 0 else n["malignant"] / (n["malignant"] + n["benign"]))) < 0.03, share


def test_a_class_power_for_a_one_class_generator_is_refused(small_data, tmp_path):
    with pytest.raises(BadInputError, match="--class-power 0.5.*--classes one"):
        train_generator(small_data, tmp_path / "g", steps=1, classes="one", class_power=0.5, **TINY)
    assert not (tmp_path / "g").exists()


def test_a_generator_folder_from_before_the_class_power_key_resumes_balanced(small_data, tmp_path):
    out = tmp_path / "g"
    train_generator(small_data, out, steps=2, checkpoint_every=2, **TINY)
    spec = json.loads((out / "spec.json").read_text())
    del spec["class_power"]
    (out / "spec.json").write_text(json.dumps(spec))
    (out / "generator.json").unlink()
    assert train_generator(small_data, out, steps=3, checkpoint_every=3, **TINY)["steps"] == 3
    with pytest.raises(ExistsError, match="class_power"):
        train_generator(small_data, out, steps=4, checkpoint_every=4, class_power=0.5, **TINY)


def test_training_records_near_copies_of_its_images_beside_the_fid_estimate(small_data, tmp_path):
    """The running estimate's near-copy share is check's rule: the training images themselves are all
    near copies, black images none."""
    out = tmp_path / "g"
    train_generator(small_data, out, steps=2, checkpoint_every=2, **{**TINY, "fid_every": 1}, fid_n=8)
    progress = pd.read_csv(out / "progress.csv")
    assert list(progress["step"]) == [1, 2] and progress["near_copies"].between(0, 1).all()
    real = torch.from_numpy(Store.open(small_data).pixels(np.arange(8)))
    estimate = _FidEstimate("random", real, n=8, seed=0)
    assert estimate.near_copies(real.numpy()) == 1.0
    assert estimate.near_copies(np.zeros((4, 32, 32, 3), np.uint8)) == 0.0


def test_bf16_step_computes_the_discriminator_in_bf16_and_keeps_fp32_weights_and_losses():
    torch.manual_seed(0)
    trainer = projected.ProjectedTrainer(32, 2, 2e-4, 32, pretrained=False, bf16=True)
    real, c = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(0, 2, (8,))
    trainer.step(real, c)  # builds the discriminator
    dtypes = []
    trainer.d.features.stages[0].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    losses = trainer.step(real, c)
    assert dtypes == [torch.bfloat16] * 3  # D on real, D on generated, G through D
    assert all(np.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in [*trainer.g.parameters(), *trainer.ema.parameters(), *trainer.d.parameters()])
    assert trainer.generate(torch.randn(2, projected.Z_DIM), torch.tensor([0, 1])).dtype == torch.float32


@pytest.mark.parametrize("native, speeds, chosen", [(True, {True: 90.0, False: 60.0}, "bf16"),
                                                    (True, {True: 40.0, False: 60.0}, "32"),
                                                    (False, {True: 90.0, False: 60.0}, "32")])
def test_auto_precision_keeps_the_faster_measured_step(monkeypatch, tmp_path, small_data, native, speeds, chosen):
    """bf16 only where the CPU computes it natively, and then only when a measured step is faster."""
    from lesionlab.engine import autotune

    monkeypatch.setenv("LESIONLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "cpu_has_native_bf16", lambda: native)
    measured = []
    monkeypatch.setattr(projected, "step_speed", lambda *a, **k: measured.append(a[4]) or speeds[a[4]])
    info = train_generator(small_data, tmp_path / "g", steps=1, **{**TINY, "precision": "auto"})
    assert info["precision"] == chosen
    assert sorted(measured) == ([False, True] if native else [])
    if native:
        assert info["precision_choice"]["img_s"] == {"fp32": speeds[False], "bf16": speeds[True]}


def test_bf16_is_refused_for_the_fp32_only_families(small_data, tmp_path):
    with pytest.raises(BadInputError, match="--precision bf16: only --kind projected"):
        train_generator(small_data, tmp_path / "gan", kind="gan", size=32, steps=1, precision="bf16")
    assert not (tmp_path / "gan").exists()  # refused before anything is written


def _samples_new_then_learned(small_data, monkeypatch) -> tuple:
    """Makes the FID stops' samples new real images (the validation images) at the first two stops, then the
    generator's own training images; returns the store, both image sets and the list of sampling calls."""
    from lesionlab.synth import generator as gen_module
    from lesionlab.synth.copy_watch import watch_positions
    from lesionlab.synth.generator import real_images

    store = Store.open(small_data)
    new = store.pixels(watch_positions(store, load_split(store), 1))
    learned = store.pixels(real_images(small_data, 1)[1])
    calls = []

    def fake_samples(trainer, info, n, seed, label="malignant", gen_dir=""):
        calls.append(n)
        pool = new if len(calls) <= 2 else learned
        return pool[np.arange(n) % len(pool)]

    monkeypatch.setattr(gen_module, "generate_batch", fake_samples)
    return store, new, learned, calls


def test_copy_watch_against_the_training_images_uses_no_validation_image(small_data, tmp_path, monkeypatch):
    """--copy-watch train: new real images (the validation images) as samples pass, the generator's own training
    images copy and stop it after two stops; no validation image is recorded as used, so check keeps them all as
    new images, and the summary names the reference."""
    from lesionlab.synth.check import unseen_images
    from lesionlab.synth.copy_watch import WATCH_IDS

    store, _, learned, _ = _samples_new_then_learned(small_data, monkeypatch)
    out = tmp_path / "g"
    info = train_generator(small_data, out, steps=8, checkpoint_every=1, fid_n=10,
                           **{**TINY, "fid_every": 1, "copy_watch": "train"})
    result = info["copy_watch_result"]
    assert [s["copying"] for s in result["stops"]] == [0, 0, 1, 1] and info["steps"] == 4
    assert [s["copying_pixel"] for s in result["stops"]] == [0, 0, 1, 1]  # the space that made the verdict
    assert info["sampled_step"] == result["selected_step"] in (1, 2)
    assert result["reference"] == "train" and result["held_out"].startswith("the class's training images")
    assert result["n"] == len(learned)
    assert json.loads((out / "spec.json").read_text())["copy_watch"]["held_out"] == "train"
    assert not (out / WATCH_IDS).exists()
    unseen, _ = unseen_images(out, small_data, "malignant", 32)
    assert len(unseen) == int((store.table["label"] == 1).sum()) - len(learned)  # validation images included


@pytest.mark.parametrize("rule, kept", [("last", 2), ("margin", 1)])
def test_copy_watch_keeps_the_selected_stop_and_stops_after_patience(small_data, tmp_path, monkeypatch, rule, kept):
    """Samples that are new real images (the validation images themselves) at the first two FID stops, then the
    generator's own training images: the watch keeps the EMA generator of the stop its rule selects for sampling
    (last: step 2; margin: the two clean stops tie, the earlier wins), stops at step 4 (two copying stops in a row),
    stays stopped when asked to train on, and check leaves the watched images out of its new real images."""
    from lesionlab.synth.check import real_control, unseen_images
    from lesionlab.synth.copy_watch import SNAPSHOT, watch_ids, watch_positions
    from lesionlab.synth.generator import load_generator

    store, new, learned, calls = _samples_new_then_learned(small_data, monkeypatch)
    out = tmp_path / "g"
    info = train_generator(small_data, out, steps=8, checkpoint_every=1, fid_n=8,
                           **{**TINY, "fid_every": 1, "copy_watch": "val", "copy_rule": rule})
    assert info["steps"] == 4 and info["sampled_step"] == kept
    result = info["copy_watch_result"]
    assert result["stopped_by_copying"] and result["selected_step"] == kept and result["rule"] == rule
    assert [s["copying"] for s in result["stops"]] == [0, 0, 1, 1]
    snapshot = torch.load(out / SNAPSHOT, weights_only=True)
    last = torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["ema"]
    trainer, _ = load_generator(out)
    for k, v in snapshot["ema"].items():
        assert torch.equal(trainer.ema.state_dict()[k], v)
    assert any(not torch.equal(snapshot["ema"][k], last[k]) for k in last)
    again = train_generator(small_data, out, steps=8, checkpoint_every=1, fid_n=8,
                            **{**TINY, "fid_every": 1, "copy_watch": "val", "copy_rule": rule})
    assert again["steps"] == 4 and len(calls) == 4
    watched = watch_ids(out)
    assert watched == set(store.table["id"].astype(str).to_numpy()[watch_positions(store, load_split(store), 1)])
    unseen, groups = unseen_images(out, small_data, "malignant", 32)
    assert len(groups) == int((store.table["label"] == 1).sum()) - len(learned) - len(watched)
    # check's control for a watched generator: the watched validation images, against every new real image
    control, held, what = real_control(out, small_data, 32, unseen, groups)
    assert np.array_equal(control, new) and len(held) == len(unseen) and held.all() and "copy watch" in what


def _stop(step, z_pixel, z_feature, copying=0, recall=0.6, coverage=0.9):
    return {"step": step, "copy_z_pixel": z_pixel, "copy_z_feature": z_feature, "copying": copying, "recall": recall,
            "coverage": coverage}


def test_copy_rules_select_the_stop_by_hand():
    from lesionlab.synth.copy_watch import selected_stop

    history = [{"step": 1, "fid": 9.0},  # a stop the watch did not see (no "copying")
               _stop(2, 3.0, 2.5, recall=0.1),  # the widest margin, but under the quality bar: underfit
               _stop(3, 1.5, 0.4),  # margin 0.4
               _stop(4, 0.9, 1.2),  # margin 0.9: the widest of the good stops
               _stop(5, -2.5, 0.3, copying=1),
               _stop(6, 0.9, 2.0),  # margin 0.9 too, but later: the tie goes to the earlier stop
               _stop(7, 0.2, 0.1, coverage=0.4)]  # the last clean stop, under the coverage bar
    assert selected_stop(history, "margin") == 4
    assert selected_stop(history, "last") == 7
    assert selected_stop([history[1], history[6]], "margin") == 7  # none reaches the bar: the last clean one
    assert selected_stop([_stop(2, -3.0, -2.0, copying=1)], "margin") is None


def test_when_every_stop_copies_the_fallback_is_the_stop_farthest_from_copying_over_the_bar():
    from lesionlab.synth.copy_watch import fallback_stop, sampled_stop

    history = [_stop(1, 3.0, -1.9, copying=1, recall=0.1),  # the widest margin, but under the bar: never sampled
               _stop(2, -2.5, -1.0, copying=1),  # margin -2.5
               _stop(3, -0.5, -1.8, copying=1),  # margin -1.8: the widest over the bar
               _stop(4, -1.8, 0.5, copying=1)]   # margin -1.8 too, but later
    assert fallback_stop(history) == 3
    assert sampled_stop(history, "margin") == sampled_stop(history, "last") == 3
    assert sampled_stop(history + [_stop(5, 0.1, 0.2)], "margin") == 5  # a clean stop is always preferred
    assert fallback_stop(history[:1]) is None  # none over the bar: the last step is sampled


def test_a_generator_that_copies_at_every_stop_samples_the_fallback_stop(small_data, tmp_path, monkeypatch):
    """The generator's own training images as samples at every stop: each stop copies, training stops after two;
    the stops tie, so the earlier, step 1, is sampled from its snapshot, and the record says it is a fallback."""
    from lesionlab.synth import generator as gen_module
    from lesionlab.synth.copy_watch import SNAPSHOT
    from lesionlab.synth.generator import load_generator, real_images

    learned = Store.open(small_data).pixels(real_images(small_data, 1)[1])
    monkeypatch.setattr(gen_module, "generate_batch",
                        lambda trainer, info, n, seed, label="malignant", gen_dir="": learned[np.arange(n) % len(learned)])
    out = tmp_path / "g"
    info = train_generator(small_data, out, steps=8, checkpoint_every=1, fid_n=10,
                           **{**TINY, "fid_every": 1, "copy_watch": "train"})
    result = info["copy_watch_result"]
    assert [s["copying"] for s in result["stops"]] == [1, 1] and info["steps"] == 2
    assert result["selected_step"] is None and result["fallback_step"] == info["sampled_step"] == 1
    snapshot = torch.load(out / SNAPSHOT, weights_only=True)
    trainer, _ = load_generator(out)
    assert snapshot["step"] == 1 and all(torch.equal(trainer.ema.state_dict()[k], v) for k, v in snapshot["ema"].items())


def test_copying_stops_under_the_quality_bar_do_not_end_the_training():
    from lesionlab.synth.copy_watch import copying_in_a_row

    immature = [_stop(1, 2.0, -1.7, copying=1, recall=0.18), _stop(2, 0.6, -4.4, copying=1, recall=0.19)]
    assert copying_in_a_row(immature) == 0  # crowding before the class is learned: training goes on
    later = immature + [_stop(3, -2.0, -2.5, copying=1)]
    assert copying_in_a_row(later) == 1
    under_coverage = _stop(4, -1.0, -2.0, copying=1, coverage=0.3)
    assert copying_in_a_row(later + [under_coverage, _stop(5, -3.0, -3.0, copying=1)]) == 2
    assert copying_in_a_row(later + [_stop(4, 1.0, 1.0)]) == 0  # a clean stop over the bar breaks the row
    old = [{"step": s, "copy_z_pixel": -3.0, "copy_z_feature": -3.0, "copying": 1} for s in (1, 2)]
    assert copying_in_a_row(old) == 2  # stops recorded before recall was: counted as before


def test_the_watch_summary_leaves_out_what_a_resumed_stop_did_not_record():
    """A generator resumed across a new key: progress.csv holds its earlier stops with that column blank, and
    generator.json must stay plain JSON."""
    import io
    from types import SimpleNamespace

    from lesionlab.synth.copy_watch import CopyWatch

    csv = "step,copy_z_pixel,copy_z_feature,copying,copying_pixel,recall,coverage\n250,2.0,-1.0,1,,0.18,0.29\n" \
          "500,1.4,0.4,0,0,0.83,0.89\n"
    history = pd.read_csv(io.StringIO(csv)).to_dict("records")
    watch = SimpleNamespace(held_out="train", groups=np.array(["a", "b"]), patience=2)
    summary = CopyWatch.summary(watch, history, "margin", 500, False)
    json.dumps(summary, allow_nan=False)
    assert "copying_pixel" not in summary["stops"][0] and summary["stops"][1]["copying_pixel"] == 0


def test_copy_watch_needs_fid_estimates(small_data, tmp_path):
    with pytest.raises(BadInputError, match="--fid-every"):
        train_generator(small_data, tmp_path / "g", steps=1, **{**TINY, "copy_watch": "val"})
    assert not (tmp_path / "g").exists()
    with pytest.raises(BadInputError, match="--watch-n 20: .*--copy-watch off"):
        train_generator(small_data, tmp_path / "g", steps=1, watch_n=20, **{**TINY, "fid_every": 1})
    assert not (tmp_path / "g").exists()


def test_watch_n_tests_more_samples_and_leaves_the_fid_estimate_as_it_was(small_data, tmp_path, monkeypatch):
    """--watch-n 25 with an estimate of 8 samples: the watch tests the estimate's 8 and 17 others of their own
    latents at each stop, records how many, and the estimate's images and FID are those of a run without it."""
    from lesionlab.synth.copy_watch import CopyWatch

    tested = []
    real_call = CopyWatch.__call__

    def spy(self, images, features):
        tested.append(images.copy())
        assert len(features) == len(images)
        return real_call(self, images, features)

    monkeypatch.setattr(CopyWatch, "__call__", spy)
    runs = {}
    for n in (None, 25):
        info = train_generator(small_data, tmp_path / f"g{n}", steps=2, checkpoint_every=2, fid_n=8, watch_n=n,
                               **{**TINY, "fid_every": 1, "copy_watch": "train"})
        runs[n] = (info, pd.read_csv(tmp_path / f"g{n}" / "progress.csv"), tested[-2:])
    (plain, plain_progress, plain_images), (more, more_progress, more_images) = runs[None], runs[25]
    assert [len(x) for x in plain_images] == [8, 8] and [len(x) for x in more_images] == [25, 25]
    assert [s["copy_n"] for s in more["copy_watch_result"]["stops"]] == [25, 25]
    assert [s["copy_n"] for s in plain["copy_watch_result"]["stops"]] == [8, 8]
    for few, many in zip(plain_images, more_images):
        assert np.array_equal(many[:8], few)  # the estimate's own samples
        assert not any(np.array_equal(many[i], many[j]) for i in range(8, 25) for j in range(8))  # new latents
    assert plain_progress["fid"].tolist() == more_progress["fid"].tolist()
    assert json.loads((tmp_path / "g25" / "spec.json").read_text())["copy_watch"]["n"] == 25


def test_a_gpu_that_is_not_there_is_refused_before_anything_is_written(small_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(BadInputError, match="no CUDA device"):
        train_generator(small_data, tmp_path / "g", steps=1, **{**TINY, "device": "cuda"})
    assert not (tmp_path / "g").exists()
