"""Train a generator on the train pool (one class, or both for a class-conditional one), with
checkpoints, sample grids, a running FID estimate and resume; sample from it into a folder that
`prepare` reads like any other source.

Families (--kind): projected (default; a Projected GAN with a FastGAN generator, see projected.py:
the one that learns enough in an hour of a 2-core CPU), gan and ddpm (kept for comparison, one
class only; see nets.py).

GEN_DIR/
  spec.json        what is being trained (kind, classes, size, data set and split hashes, steps)
  checkpoint.pt    the latest state, written atomically every `checkpoint_every` steps
  samples/         a grid of the same 16 latent draws every `sample_every` steps
  progress.csv     step, minutes, losses and the FID estimate every `fid_every` steps
  real_ids.csv     the real images it learned from, with their labels (for the memorisation check)
  watch_ids.csv    the validation images its stop was chosen on (--copy-watch val, copy_watch.py)
  selected.pt      the EMA generator of the stop the copy watch selected (--copy-rule; when every stop copied, the
                   one farthest from copying over the quality bar), which sampling uses
  generator.json   written last: the generator is complete
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import __version__
from ..config.synth import CLASS_POWER
from ..data.splits import load_split
from ..data.store import Store
from ..data.synthetic import real_rows
from ..errors import BadInputError, ExistsError, NotEnoughDataError
from ..fileio import atomic_path, load_checkpoint, read_json, require_folder_or_absent, write_bytes, write_csv, write_json
from . import quality
from .copy_watch import (SNAPSHOT, CopyWatch, copying_in_a_row, load_snapshot, sampled_stop, save_snapshot,
                         selected_stop, write_watch_ids)
from .nets import Z_DIM, Discriminator, Generator, diff_augment, make_schedulers, make_unet

log = logging.getLogger(__name__)
MIN_IMAGES = 16
CLASS_NAMES = ("benign", "malignant")  # label 0, label 1


def real_images(data_dir: str | Path, label: int, n_real: int | None = None, seed: int = 0,
                only_ids: list[str] | None = None) -> tuple[Store, np.ndarray]:
    """Train-pool positions of one class: never a validation or test image, never a synthetic one.
    n_real: only the images a training draw of n_real images of this class takes with this seed
    (the same ones `train --n-malignant n_real --seed seed` uses). only_ids: only these pool images
    (e.g. the training part of a cv fold); an id outside the train pool is refused."""
    store = Store.open(data_dir)
    split = load_split(store)
    table = store.table
    pool = split.positions(table, "train")
    held_out = set(split.ids("val")) | set(split.ids("test"))
    keep = real_rows(table, pool[table["label"].to_numpy()[pool] == label])
    if only_ids is not None:
        outside = sorted(set(only_ids) - set(table["id"].to_numpy()[pool]))
        if outside:
            raise BadInputError(f"{data_dir}: {len(outside)} of the ids to learn from are not in the split's train pool "
                                f"(e.g. {outside[0]})")
        keep = keep[np.isin(table["id"].to_numpy()[keep], list(only_ids))]
    leaked = set(table["id"].to_numpy()[keep]) & held_out
    if leaked:  # cannot happen with a verified split; checked because a leak here is silent
        raise BadInputError(f"{data_dir}: {len(leaked)} evaluation image(s) in the generator's training set")
    name = "malignant" if label == 1 else "benign"
    if n_real is not None:
        if n_real > len(keep):
            raise NotEnoughDataError(f"--n-real {n_real}: the train pool has {len(keep)} {name} images")
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=n_real, replace=False))
    if len(keep) < MIN_IMAGES:
        raise NotEnoughDataError(f"{data_dir}: the train pool has {len(keep)} {name} image(s); a generator needs at "
                                 f"least {MIN_IMAGES}")
    return store, keep


def _as_float(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at the generator's size (area resize)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear", align_corners=None)
    return x.contiguous()


def _symmetries(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and transposes: true symmetries of a dermoscopic image, so they never leak
    into the samples as artefacts."""
    n = x.shape[0]
    for dims in ((3,), (2,)):
        flip = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(dims), x)
    turn = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1)
    return torch.where(turn, x.transpose(2, 3), x)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def grid_png(images: np.ndarray, columns: int = 8) -> bytes:
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = im
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


class _Trainer:
    """One family's models, optimisers and step; state_dict()/load_state_dict() for resume."""

    def __init__(self, kind: str, size: int, lr: float, sample_steps: int = 50):
        self.kind, self.sample_steps = kind, sample_steps
        if kind == "gan":
            self.g, self.d = Generator(size), Discriminator(size)
            self.opt_g = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.5, 0.99))
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=lr, betas=(0.5, 0.99))
            self.net = self.g
        else:
            self.net = make_unet(size)
            self.noise, self.sampler = make_schedulers()
            self.opt_g = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=0.0)
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)

    def step(self, real: torch.Tensor, c: torch.Tensor | None = None) -> dict[str, float]:
        n = real.shape[0]
        if self.kind == "gan":
            z = torch.randn(n, Z_DIM)
            fake = self.g(z)
            loss_d = F.relu(1 - self.d(diff_augment(real))).mean() + F.relu(1 + self.d(diff_augment(fake.detach()))).mean()
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            loss_g = -self.d(diff_augment(fake)).mean()
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            self.ema.update_parameters(self.g)
            return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}
        noise = torch.randn_like(real)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (n,))
        pred = self.net(self.noise.add_noise(real, noise, t), t).sample
        loss = F.mse_loss(pred, noise)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.ema.update_parameters(self.net)
        return {"loss": loss.item()}

    @torch.no_grad()
    def generate(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] from latents z (GAN: (n, Z_DIM); DDPM: the initial noise (n, 3, s, s))."""
        model = self.ema.module
        model.eval()
        if self.kind == "gan":
            return model(z)
        self.sampler.set_timesteps(self.sample_steps)
        x = z
        for t in self.sampler.timesteps:
            x = self.sampler.step(model(x, t).sample, t, x).prev_sample
        return x

    def state_dict(self) -> dict:
        state = {"net": self.net.state_dict(), "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict()}
        if self.kind == "gan":
            state.update({"d": self.d.state_dict(), "opt_d": self.opt_d.state_dict()})
        return state

    def load_state_dict(self, state: dict, for_training: bool = False) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.kind == "gan":
            self.d.load_state_dict(state["d"])
            self.opt_d.load_state_dict(state["opt_d"])


def latents(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "projected":
        from .projected import Z_DIM as PZ

        return torch.randn(n, PZ, generator=g)
    return torch.randn(n, Z_DIM, generator=g) if kind == "gan" else torch.randn(n, 3, size, size, generator=g)


def make_trainer(spec: dict, pretrained: bool = True, bf16: bool = False, device: torch.device | None = None):
    """The family's trainer; device (projected only: gan and ddpm train on the CPU) defaults to the CPU, where
    sampling always runs so that a generator samples the same images everywhere."""
    if spec["kind"] == "projected":
        from .projected import ProjectedTrainer

        return ProjectedTrainer(spec["size"], len(spec["classes"]), spec["lr"], spec["d_res"], pretrained, bf16,
                                device or torch.device("cpu"))
    return _Trainer(spec["kind"], spec["size"], spec["lr"], spec.get("sample_steps", 50))


def class_index(info: dict, label: str, gen_dir: str | Path) -> int:
    """The generator's class index of `label`; refused when it never learned that class."""
    classes = info.get("classes", [info["label"]])
    if label not in classes:
        raise BadInputError(f"{gen_dir}: was trained on {' and '.join(classes)} images only; it cannot sample "
                            f"'{label}' (train a generator with --classes both for that)")
    return classes.index(label)


def generate_batch(trainer, info: dict, n: int, seed: int, label: str = "malignant", gen_dir: str | Path = "") -> np.ndarray:
    """n uint8 images of one class, the same for the same seed: latents and every other random draw
    of the generator (noise injection) come from that seed."""
    z = latents(info["kind"], n, info["size"], seed)
    c = torch.full((n,), class_index(info, label, gen_dir), dtype=torch.long)
    with torch.random.fork_rng(devices=gpu_of(trainer)):
        torch.manual_seed(seed)
        return to_uint8(trainer.generate(z, c))


def gpu_of(trainer) -> list[torch.device]:
    """The trainer's GPU as fork_rng wants it (none on the CPU): sampling there leaves its random stream as it was."""
    device = getattr(trainer, "device", torch.device("cpu"))
    return [device] if device.type == "cuda" else []


def _diff(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k} {old.get(k)!r} (asked {new.get(k)!r})" for k in keys)


def train_generator(data_dir: str | Path, out: str | Path, kind: str = "projected", label: str = "malignant",
                    size: int = 64, steps: int = 2000, batch_size: int = 32, lr: float | None = None, seed: int = 0,
                    sample_every: int = 500, checkpoint_every: int = 250, time_budget: float | None = None,
                    progress: Callable[[int, int, dict], None] | None = None, n_real: int | None = None,
                    draw_seed: int = 0, sample_steps: int = 50, classes: str | None = None, d_res: int = 96,
                    fid_every: int = 500, fid_features: str = "random", fid_n: int = 500,
                    only_ids: list[str] | None = None, pretrained: bool = True, class_power: float = CLASS_POWER,
                    precision: str = "auto", copy_watch: str = "val", copy_patience: int = 2,
                    copy_rule: str = "margin", device: str = "cpu", watch_n: int | None = None) -> dict:
    """Train (or resume) a generator; returns generator.json's content. `time_budget` (seconds)
    stops early at a checkpoint when the budget is spent, recording how far it got.

    classes: "both" (class-conditional on the whole train pool; projected only) or "one" (only
    `label`'s images); default both for projected, one for the others. only_ids: learn only from
    these train-pool images (e.g. a cv fold's training part). fid_every: steps between FID
    estimates on a fixed subset (0: none), measured with `fid_features` (a --features value), each with
    the share of those samples that are near copies of the class's training images (check's rule).
    class_power: with both classes, a step draws class k with probability proportional to n_k ** power
    (class_draw_probabilities). precision: auto (projected: bf16 autocast when a measured step on this
    machine is faster, see training_precision), 32 or bf16. copy_watch: val runs the data-copying test
    against the split's validation images of `label` at every FID estimate (train: against the class's training
    images themselves, each against the other groups', copy_watch.CopyWatch), keeps the stop `copy_rule` selects
    (margin or last, copy_watch.selected_stop; when every stop copied, copy_watch.fallback_stop) for sampling and
    stops once `copy_patience` stops in a row copy
    (copy_watch.copying_in_a_row: stops under the quality bar are passed over); off: the last step is sampled,
    whatever it copies. watch_n: samples the watch tests at each stop (None: the FID estimate's; more are drawn with
    other latents, so the estimate's stay as they were, see _watched_samples). device: where the projected family
    trains (cpu, cuda, cuda:N or auto); sampling runs on the CPU."""
    from ..config import SynthTrainConfig, validated

    # the settings checked by the command's config model: the same one-line errors as the CLI's flags
    validated(SynthTrainConfig, {"kind": kind, "label": label, "size": size, "steps": steps, "classes": classes,
                                 "batch_size": batch_size, "sample_every": sample_every,
                                 "checkpoint_every": checkpoint_every, "sample_steps": sample_steps,
                                 "fid_every": fid_every, "fid_n": fid_n, "class_power": class_power,
                                 "precision": precision, "copy_watch": copy_watch, "copy_patience": copy_patience,
                                 "copy_rule": copy_rule, "watch_n": watch_n})
    classes = classes or ("both" if kind == "projected" else "one")
    if classes == "both" and kind != "projected":
        raise BadInputError(f"--classes both: only --kind projected is class-conditional; {kind} learns one class")
    if class_power and classes != "both":
        raise BadInputError(f"--class-power {class_power:g}: it sets how often each class is drawn, and --classes one "
                            "learns a single class; drop it or use --classes both")
    if precision == "bf16" and kind != "projected":
        raise BadInputError(f"--precision bf16: only --kind projected trains in bf16; {kind} trains in fp32")
    from ..engine.runtime import resolve_runtime

    # names a missing CUDA device before anything is written; on the CPU it also keeps the step's tens-of-MB
    # activations in the heap (tune_allocator, engine/runtime.py measured why)
    dev = resolve_runtime("cpu" if device == "auto" and kind != "projected" else device, "32").device
    if dev.type != "cpu" and kind != "projected":
        raise BadInputError(f"--device {device}: only --kind projected trains on a GPU; {kind} trains on the CPU")
    if copy_watch != "off" and not fid_every:
        raise BadInputError(f"--copy-watch {copy_watch}: the watch tests the samples of each FID estimate, and "
                            "--fid-every 0 makes none; give --fid-every N, or --copy-watch off")
    if watch_n is not None and copy_watch == "off":
        raise BadInputError(f"--watch-n {watch_n}: sets how many samples the copy watch tests, and --copy-watch off "
                            "runs no watch; drop it, or use --copy-watch val or train")
    if kind == "projected" and not 32 <= d_res <= 256:
        raise BadInputError(f"--d-res must be between 32 and 256 pixels, got {d_res}")
    names = list(CLASS_NAMES) if classes == "both" else [label]
    out = Path(out)
    require_folder_or_absent(out)
    parts = [real_images(data_dir, CLASS_NAMES.index(name), n_real if name == label else None, draw_seed, only_ids)
             for name in names]
    store = parts[0][0]
    split = load_split(store)
    spec = {"kind": kind, "label": label, "classes": names, "size": size, "batch_size": batch_size,
            "lr": lr or (2e-4 if kind in ("gan", "projected") else 3e-4), "seed": seed, "n_real_asked": n_real,
            "draw_seed": draw_seed, "sample_steps": sample_steps, "data": str(Path(data_dir).resolve()),
            "store_hash": store.content_hash, "split_sha256": split.sha256,
            "n_real": int(len(parts[names.index(label)][1]) if label in names else 0),
            "n_real_per_class": {name: int(len(p)) for name, (_, p) in zip(names, parts)},
            "only_ids_sha256": hashlib.sha256("\n".join(sorted(only_ids)).encode()).hexdigest() if only_ids else None,
            "class_power": float(class_power) if len(names) > 1 else None,
            "copy_watch": ({"held_out": copy_watch, "patience": copy_patience, "rule": copy_rule, "n": watch_n}
                           if copy_watch != "off" else None)}
    if kind == "projected":
        from .projected import FEATURE_NETWORK

        spec.update({"d_res": d_res, "feature_network": f"{FEATURE_NETWORK}, ImageNet weights, frozen" if pretrained
                     else f"{FEATURE_NETWORK}, random init, frozen (tests only)"})
    done_file = out / "generator.json"
    if done_file.exists():
        info = read_json(done_file)
        if info["steps"] >= steps:
            raise ExistsError(f"{out}: already holds a generator trained for {info['steps']} steps; "
                              "give more --steps to train it further, or another --out")
    if (out / "spec.json").exists():
        old = read_json(out / "spec.json")
        old.setdefault("class_power", 0.0 if len(old.get("classes", [])) > 1 else None)  # folders before the key: balanced
        old.setdefault("copy_watch", None)  # folders before the watch were not watched
        if old["copy_watch"]:
            old["copy_watch"].setdefault("rule", "last")  # the one rule before the margin rule
            old["copy_watch"].setdefault("n", None)  # before --watch-n the watch tested the estimate's samples
        if old != spec:
            raise ExistsError(f"{out}: holds a generator of another kind, data or settings ({_diff(old, spec)}); "
                              "choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise ExistsError(f"{out}: exists and is not a generator folder; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "spec.json", spec)
    positions = np.concatenate([p for _, p in parts])
    class_of = np.concatenate([np.full(len(p), i) for i, (_, p) in enumerate(parts)])
    write_csv(out / "real_ids.csv", pd.DataFrame({"id": store.table["id"].to_numpy()[positions],
                                                  "label": store.table["label"].to_numpy()[positions]}))

    bf16, precision_choice = training_precision(spec, precision, pretrained, dev)
    torch.manual_seed(seed)
    trainer = make_trainer(spec, pretrained, bf16, dev)
    real = torch.from_numpy(quality.resize(store.pixels(positions), size))  # uint8 NHWC at the generator's size
    by_class = [torch.from_numpy(np.flatnonzero(class_of == i)) for i in range(len(names))]
    draw = torch.from_numpy(class_draw_probabilities([len(k) for k in by_class], class_power))
    g = torch.Generator().manual_seed(seed)
    step, seconds = 0, 0.0
    history: list[dict] = []
    if (out / "checkpoint.pt").exists():
        state = _read_checkpoint(out / "checkpoint.pt")
        trainer.load_state_dict(state["trainer"], for_training=True)
        step, seconds = int(state["step"]), float(state["seconds"])
        g.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if (out / "progress.csv").exists():
            history = [r for r in pd.read_csv(out / "progress.csv").to_dict("records") if r["step"] <= step]
        log.info("resumed at step %d", step)
    fixed = latents(kind, 16, size, seed + 1)
    fixed_c = torch.arange(16) % len(names)  # the grid shows every class it learns, in turn
    (out / "samples").mkdir(exist_ok=True)
    fid = _FidEstimate(fid_features, real[by_class[names.index(label)]] if label in names else real, fid_n, seed) \
        if fid_every else None
    fid_label = label if label in names else names[0]  # the class the estimate's (and the watch's) samples are of
    watch = None
    if copy_watch != "off" and fid is not None:
        mine = by_class[names.index(label)].numpy()
        watch = CopyWatch(store, split, CLASS_NAMES.index(label), size, real[mine].numpy(), positions[mine], fid.net,
                          copy_patience, copy_watch, seed)
        if len(watch.ids):
            write_watch_ids(out, watch.ids)

    def copied_out() -> bool:  # the watch's stop: `copy_patience` watched stops in a row copied (a resume counts too)
        return bool(watch) and copying_in_a_row(history) >= copy_patience

    def checkpoint() -> None:
        # tensors and plain values only (RNG states are uint8 tensors): it loads with weights_only=True
        with atomic_path(out / "checkpoint.pt") as tmp:
            torch.save({"step": int(step), "seconds": float(seconds), "trainer": trainer.state_dict(),
                        "rng": g.get_state(), "torch_rng": torch.get_rng_state()}, tmp)
        if history:
            write_csv(out / "progress.csv", pd.DataFrame(history))

    stopped_by_budget = False
    start = time.perf_counter() - seconds
    while step < steps and not copied_out():
        # power 0 draws as torch.randint always did, so a generator trained before the key resumes exactly
        c = (torch.randint(0, len(names), (batch_size,), generator=g) if not class_power
             else torch.multinomial(draw, batch_size, replacement=True, generator=g))
        idx = torch.stack([by_class[k][torch.randint(0, len(by_class[k]), (1,), generator=g)][0] for k in c.tolist()])
        batch = _symmetries(_as_float(real[idx].numpy(), size), g)
        losses = trainer.step(batch, c)
        step += 1
        seconds = time.perf_counter() - start
        if fid and (step % fid_every == 0 or step == steps):
            measured = time.perf_counter()
            images = generate_batch(trainer, spec, fid.n, 10_000 + seed, fid_label, out)
            features = fid.net(images)  # one pass serves the estimate and the watch
            losses = {**losses, "fid": fid.of_features(features), "near_copies": fid.near_copies(images),
                      **fid.manifold(features)}
            if watch:
                losses.update(watch(*_watched_samples(trainer, spec, out, fid, fid_label, images, features, watch_n,
                                                      seed)))
            history.append({"step": step, "minutes": round(seconds / 60, 2), **{k: round(v, 4) for k, v in losses.items()}})
            if watch and sampled_stop(history, copy_rule) == step:
                save_snapshot(out, step, trainer.state_dict()["ema"])
            start += time.perf_counter() - measured  # the estimate's own time is not training time
        if progress:
            progress(step, steps, losses)
        if step % sample_every == 0 or step == steps:
            with torch.random.fork_rng(devices=gpu_of(trainer)):  # the grid leaves the training's random stream as it was
                torch.manual_seed(seed + 1)
                grid = to_uint8(trainer.generate(fixed, fixed_c))
            write_bytes(out / "samples" / f"step-{step:06d}.png", grid_png(grid, 8))
        if step % checkpoint_every == 0 or step == steps:
            checkpoint()
        if time_budget and seconds > time_budget and step % checkpoint_every == 0:
            stopped_by_budget = True
            break
    stopped_by_copying = copied_out()
    checkpoint()
    real_grid = real[torch.randperm(len(real), generator=g)[:16]].numpy()
    write_bytes(out / "samples" / "real.png", grid_png(real_grid, 8))
    snapshot = int(load_snapshot(out)["step"]) if watch and (out / SNAPSHOT).exists() else None
    selected = selected_stop(history, copy_rule) if watch else None
    fallback = snapshot if watch and selected is None else None
    if watch and selected is None:
        log.warning("%s: every watched stop copied its training images; sampling uses %s", out,
                    f"step {fallback}, the one farthest from copying over the quality bar" if fallback is not None
                    else "the last step (no stop reached the quality bar)")
    sampled = snapshot if snapshot is not None else step
    info = {**spec, "steps": step, "steps_asked": steps, "stopped_by_time_budget": stopped_by_budget,
            "sampled_step": sampled,
            "copy_watch_result": watch.summary(history, copy_rule, selected, stopped_by_copying, fallback) if watch else None,
            "train_seconds": round(seconds, 1), "lesionlab_version": __version__,
            "precision": "bf16" if bf16 else "32", "precision_choice": precision_choice, "device": describe_device(dev),
            "feature_weights": getattr(trainer, "weights_origin", None) or None,
            # the estimate of the step that samples (the last one unless the copy watch chose an earlier stop)
            "fid_estimate": ({"features": fid.name, "n": fid.n,
                              "last": next((r["fid"] for r in history if r["step"] == sampled), None)} if fid else None),
            "generator_id": f"{kind}-{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]}-s{sampled}"}
    write_json(done_file, info)
    return info


def describe_device(dev: torch.device) -> str:
    from ..engine.runtime import cpu_name

    return f"{dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_name()})"


def training_precision(spec: dict, precision: str, pretrained: bool = True,
                       device: torch.device = torch.device("cpu")) -> tuple[bool, dict]:
    """(bf16, how it was chosen). The projected family's step is mostly convolutions of the frozen
    feature network, which bf16 speeds up where the CPU computes it natively (40.4 -> 54.5 img/s on a
    2-core AVX512-BF16 CPU at the default settings, docs/results.md); `auto` measures a few steps of each here
    (engine/autotune.py's rule and cache) instead of assuming. gan and ddpm train in fp32 only."""
    if spec["kind"] != "projected":
        return False, {"measured": False, "reason": f"{spec['kind']} trains in fp32"}
    from ..engine import autotune
    from .projected import step_speed

    size, n_classes, d_res, batch = spec["size"], len(spec["classes"]), spec["d_res"], spec["batch_size"]
    bf16, _, choice = autotune.choose(
        f"projected generator, {n_classes} classes, d_res {d_res}", None, device, size, batch, precision,
        "false", measure_one=lambda p, _cl: step_speed(size, n_classes, d_res, batch, p, pretrained, device))
    return bf16, choice


def class_draw_probabilities(counts: list[int], power: float) -> np.ndarray:
    """The chance that a training step's image comes from each class: proportional to n_k ** power.
    Power 0 balances the classes, so each of 175 malignant crops beside 6,000 benign ones is seen 34
    times as often as a benign one, which invites copying them; power 1 draws as the pool holds them
    and starves the rare class; 0.5 (square-root sampling, as in long-tailed recognition) lies between.
    Measured on those crops (docs/results.md), 0.5 copied less but covered the class worse than one balanced
    run; a second balanced run did not copy either, so one run each does not settle it."""
    w = np.asarray(counts, dtype=np.float64) ** power
    return w / w.sum()


def _watched_samples(trainer, spec: dict, out: Path, fid: "_FidEstimate", label: str, images: np.ndarray,
                     features: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The samples the copy watch tests at a stop and their features in the estimate's network: the estimate's
    (`images`, `features`), cut or topped up to `n` (None: as they are). Why more: a stop's few hundred samples
    spread over the test's k-means cells test each cell with little power, and a set sampled later (3,000 images)
    can copy in one cell that the stop's samples passed (docs/results.md). The extra ones come from latents of
    their own seed, in batches of the estimate's size, so the estimate's images do not change with n."""
    if n is None or n <= len(images):
        return (images, features) if n is None else (images[:n], features[:n])
    more = [generate_batch(trainer, spec, min(fid.n, n - start), 20_000 + seed + start, label, out)
            for start in range(len(images), n, fid.n)]
    return (np.concatenate([images, *more]), np.concatenate([features, *(fid.net(m) for m in more)]))


class _FidEstimate:
    """A cheap FID during training: `n` images of the class against a fixed subset of as many real
    ones (drawn once with the run's seed), in a feature space the generator never trains against;
    and how many of those images are near copies of the class's training images (check's rule)."""

    def __init__(self, features: str, real: torch.Tensor, n: int, seed: int):
        from .features import feature_network

        self.net = feature_network(features)
        self.name = self.net.name
        pick = np.sort(np.random.default_rng(seed).choice(len(real), size=min(n, len(real)), replace=False))
        self.n = len(pick)
        self.real = self.net(real[torch.from_numpy(pick)].numpy())
        self.learned = quality.pixels(real.numpy())  # every training image of the class, not only the subset
        self.cut = quality.near_copy_cut(self.learned)

    def __call__(self, images: np.ndarray) -> float:
        return self.of_features(self.net(images))

    def of_features(self, features: np.ndarray) -> float:
        """The estimate from the images' features in self.net."""
        return round(quality.fid(features, self.real), 3)

    def near_copies(self, images: np.ndarray) -> float:
        return round(float(np.mean(quality.nearest(quality.pixels(images), self.learned)[0] < self.cut)), 4)

    def manifold(self, features: np.ndarray) -> dict[str, float]:
        """Recall and coverage of the samples (features in self.net) against the real subset, as synth check
        measures them (k = 5, fewer when the subset is smaller)."""
        scores = quality.manifold_scores(self.real, features, k=min(5, self.n - 1, len(features) - 1))
        return {"recall": scores["recall"], "coverage": scores["coverage"]}


def load_generator(gen_dir: str | Path) -> tuple[_Trainer, dict]:
    gen_dir = Path(gen_dir)
    if not (gen_dir / "generator.json").exists():
        raise BadInputError(f"{gen_dir}: not a trained generator (no generator.json); train one with `lesionlab synth train`")
    info = read_json(gen_dir / "generator.json")
    trainer = make_trainer(info)
    trainer.load_state_dict(_read_checkpoint(gen_dir / "checkpoint.pt")["trainer"])
    if sampled_step(info) != info["steps"]:  # the copy watch chose an earlier stop
        snapshot = load_snapshot(gen_dir)
        if int(snapshot["step"]) != info["sampled_step"]:
            raise BadInputError(f"{gen_dir / SNAPSHOT}: holds step {snapshot['step']}, generator.json names "
                                f"{info['sampled_step']}; the folder was changed after training")
        trainer.ema.load_state_dict(snapshot["ema"])
    return trainer, info


def sampled_step(info: dict) -> int:
    """The step a generator samples from: the copy watch's stop where it chose one, else the last (generator.json
    before the watch has no sampled_step)."""
    return int(info.get("sampled_step", info["steps"]))


CHECKPOINT_KEYS = ("step", "seconds", "trainer", "rng", "torch_rng")


def _read_checkpoint(path: Path) -> dict:
    """A generator checkpoint, loaded safely (tensors and plain values only, see fileio.load_checkpoint)."""
    state = load_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise BadInputError(f"{path}: not a lesionlab generator checkpoint (no {', '.join(missing)})")
    return state
