"""The demo: the whole flow on a sample shipped inside the package, prepare -> split -> a sweep of
two ratios -> report, in a few minutes on 2 CPU cores. The default sample is the seed study's own kind
of image (real ISIC 2024 / SLICE-3D crops from the ISIC Archive's permissive release, in its layout);
real HAM10000 dermoscopy is the other."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

from ..choices import DEMO_SAMPLES
from ..data.sources import read_source
from ..data.splits import make_split, save_split, split_path
from ..data.store import Store, prepare
from ..errors import BadInputError, LesionLabError
from .report import build_report
from .sweep import read_sweep, run_sweep
from .train import train_process

DEMO_VAL = (20, 200)
DEMO_TEST = (20, 200)
# sample name -> (folder under demo_data, what it is, the file lesionlab reads)
SAMPLES = {
    "isic2024-permissive": ("isic2024_permissive_sample",
                            "ISIC 2024 (SLICE-3D) crops of the ISIC Archive's permissive release, CC BY 4.0; "
                            "attribution in SOURCE.md and LICENSE.md there", ""),
    "ham10000": ("ham10000_sample", "HAM10000 dermoscopy, CC BY-NC 4.0; see SOURCE.md there", "manifest.csv"),
}
TITLES = {"isic2024-permissive": "ISIC 2024 (SLICE-3D) crops", "ham10000": "HAM10000"}


def demo_files() -> Path:
    return Path(str(resources.files("lesionlab") / "demo_data"))


def sample_path(sample: str = DEMO_SAMPLES[0]) -> Path:
    """The folder of a shipped sample."""
    if sample not in SAMPLES:
        raise BadInputError(f"--sample must be one of {', '.join(DEMO_SAMPLES)}, got '{sample}'")
    return demo_files() / SAMPLES[sample][0]


def run_demo(out: str | Path, epochs: int | None = None, echo: Callable[[str], None] = print,
             on_epoch: Callable[[dict], None] | None = None, sample: str = DEMO_SAMPLES[0]) -> Path:
    out = Path(out)
    folder = sample_path(sample)
    _, what, entry = SAMPLES[sample]
    echo(f"demo sample: {folder} ({what})")
    data = out / "data"
    src = read_source(folder / entry if entry else folder)
    _, state = prepare(src, data, size=128)
    store = Store.open(data)
    echo(f"prepare: {data} ({state}), {store.meta['n']} images at 128x128 ({src.format} layout)")
    doc = make_split(store, DEMO_VAL, DEMO_TEST, seed=0)
    save_split(doc, split_path(data))
    c = doc["counts"]
    echo(f"split: val {DEMO_VAL[0]}:{DEMO_VAL[1]}, test {DEMO_TEST[0]}:{DEMO_TEST[1]}, grouped by "
         f"{doc['params']['group_used']}; train pool {c['train']['malignant']}:{c['train']['benign']}")
    planned = read_sweep(demo_files() / "demo_sweep.yaml", data=str(data), out=str(out / "runs"),
                   overrides={"epochs": epochs} if epochs else None)
    result = run_sweep(planned, lambda cfg, folder: train_process(cfg, folder, on_epoch), echo)
    if result["failed"]:
        raise LesionLabError("demo runs failed: " + "; ".join(f"{f}: {e}" for f, e in result["failed"]))
    report = build_report(out / "runs", out / "report",
                          title=f"lesionlab demo: SimpleCNN at 1:1 and 1:2 on {TITLES[sample]}")
    return report / "report.html"
