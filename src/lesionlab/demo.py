"""The demo: the whole flow on the sample shipped inside the package (real HAM10000 images),
prepare -> split -> a sweep of two ratios -> report, in a few minutes on 2 CPU cores."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Callable

from .data.sources import read_source
from .data.splits import make_split, save_split, split_path
from .data.store import Store, prepare
from .errors import LesionLabError
from .experiment import run_experiment
from .report import build_report
from .sweep import plan, run_sweep

DEMO_VAL = (20, 200)
DEMO_TEST = (20, 200)


def demo_files() -> Path:
    return Path(str(resources.files("lesionlab") / "demo_data"))


def run_demo(out: str | Path, epochs: int | None = None, echo: Callable[[str], None] = print,
             on_epoch: Callable[[dict], None] | None = None) -> Path:
    out = Path(out)
    files = demo_files()
    echo(f"demo sample: {files / 'ham10000_sample'} (HAM10000, CC BY-NC 4.0; see SOURCE.md there)")
    data = out / "data"
    src = read_source(files / "ham10000_sample" / "manifest.csv")
    _, state = prepare(src, data, size=128)
    store = Store.open(data)
    echo(f"prepare: {data} ({state}), {store.meta['n']} images at 128x128")
    doc = make_split(store, DEMO_VAL, DEMO_TEST, seed=0)
    save_split(doc, split_path(data))
    c = doc["counts"]
    echo(f"split: val {DEMO_VAL[0]}:{DEMO_VAL[1]}, test {DEMO_TEST[0]}:{DEMO_TEST[1]}, grouped by "
         f"{doc['params']['group_used']}; train pool {c['train']['malignant']}:{c['train']['benign']}")
    planned = plan(files / "demo_sweep.yaml", data=str(data), out=str(out / "runs"),
                   overrides={"epochs": epochs} if epochs else None)
    result = run_sweep(planned, lambda cfg, folder: run_experiment(cfg, folder, on_epoch), echo)
    if result["failed"]:
        raise LesionLabError("demo runs failed: " + "; ".join(f"{f}: {e}" for f, e in result["failed"]))
    report = build_report(out / "runs", out / "report", title="lesionlab demo: SimpleCNN at 1:1 and 1:2")
    return report / "report.html"
