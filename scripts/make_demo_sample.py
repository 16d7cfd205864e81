"""Make the demo sample shipped with lesionlab: whole lesions drawn from the HAM10000 copy in
../shared/data/ham10000 (seeded), copied as they are (200x150 JPEG), with the attribution.

    python scripts/make_demo_sample.py --source ../shared/data/ham10000 --out src/lesionlab/demo_data/ham10000_sample
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

ATTRIBUTION = """# Demo sample: {n} images from HAM10000

{n_m} malignant and {n_b} benign dermoscopic images ({n_l} lesions), drawn by whole lesion with seed {seed}
by `scripts/make_demo_sample.py` from the 200x150 resize of HAM10000. Columns of manifest.csv as in
the source (label 1 = ISIC 2019 diagnosis MEL, BCC or SCC).

- Upstream: HAM10000, Tschandl P., Rosendahl C., Kittler H., "The HAM10000 dataset, a large collection of
  multi-source dermatoscopic images of common pigmented skin lesions", Sci. Data 5, 180161 (2018),
  doi:10.1038/sdata.2018.161; Harvard Dataverse doi:10.7910/DVN/DBW86T.
- License: CC BY-NC 4.0 (https://creativecommons.org/licenses/by-nc/4.0/): attribution required,
  non-commercial use only. The images keep this license wherever they are copied; lesionlab's code
  is licensed separately.
- Copy used: the 200x150 JPEG resize in the public GitHub repository mmalek06/bounding-box-detection-ham1000
  (data/images), commit fcf5ea80af329997639e3bdb65bd3bf80a0571d7.
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="../shared/data/ham10000")
    ap.add_argument("--out", default="src/lesionlab/demo_data/ham10000_sample")
    ap.add_argument("--malignant", type=int, default=140)
    ap.add_argument("--benign", type=int, default=640)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    src, out = Path(args.source), Path(args.out)
    df = pd.read_csv(src / "manifest.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(args.seed)
    lesions = df.groupby("lesion_id")["label"].agg(lambda s: s.iloc[0]).reset_index()
    chosen = []
    for label, want in (("1", args.malignant), ("0", args.benign)):
        ids = lesions.loc[lesions["label"] == label, "lesion_id"].to_numpy()
        got = 0
        for lesion in rng.permutation(ids):
            size = int((df["lesion_id"] == lesion).sum())
            if got + size > want:
                continue
            chosen.append(lesion)
            got += size
            if got == want:
                break
    sample = df[df["lesion_id"].isin(chosen)].sort_values("path")
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    for p in sample["path"]:
        shutil.copyfile(src / p, out / p)
    sample.to_csv(out / "manifest.csv", index=False)
    n_m = int((sample["label"] == "1").sum())
    (out / "SOURCE.md").write_text(ATTRIBUTION.format(n=len(sample), n_m=n_m, n_b=len(sample) - n_m,
                                                      n_l=sample["lesion_id"].nunique(), seed=args.seed))
    print(f"{out}: {len(sample)} images, {n_m} malignant")


if __name__ == "__main__":
    main()
