"""Make the demo samples shipped with lesionlab, with their attribution and license.

    # the demo's default: every malignant crop of one institution of the ISIC 2024 permissive release and
    # benign crops of the same institution, in the release's own layout
    python scripts/make_demo_sample.py --dataset isic2024-permissive --source ../shared/data/isic2024-permissive \
        --out src/lesionlab/demo_data/isic2024_permissive_sample
    # the HAM10000 sample: whole lesions drawn from the HAM10000 copy (200x150 JPEG)
    python scripts/make_demo_sample.py --dataset ham10000 --source ../shared/data/ham10000 \
        --out src/lesionlab/demo_data/ham10000_sample

Images are copied as they are (same bytes); the draw is seeded.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

HAM_ATTRIBUTION = """# Demo sample: {n} images from HAM10000

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

PREFIX = "ISIC_2024_Permissive_Training"
SLICE3D = ('Kurtansky N. R. et al., "The SLICE-3D dataset: 400,000 skin lesion image crops extracted from 3D total '
           'body photography", Scientific Data 11, 884 (2024), doi:10.1038/s41597-024-03743-w')
LICENSE_URLS = {"CC-BY": ("Creative Commons Attribution 4.0 International (CC BY 4.0)",
                          "https://creativecommons.org/licenses/by/4.0/", "https://creativecommons.org/licenses/by/4.0/legalcode"),
                "CC-0": ("Creative Commons CC0 1.0 Universal (public domain dedication)",
                         "https://creativecommons.org/publicdomain/zero/1.0/",
                         "https://creativecommons.org/publicdomain/zero/1.0/legalcode")}

PERMISSIVE_SOURCE = """# Demo sample: {n} ISIC 2024 (SLICE-3D) crops from the ISIC 2024 permissive release

{n_m} malignant and {n_b} benign lesion crops from 3D total-body photography, the kind of image the seed
notebook's study used: {what}, drawn with seed {seed} by `scripts/make_demo_sample.py`. The folder is
laid out as the ISIC Archive ships the release (`{prefix}_Input/`, `{prefix}_GroundTruth.csv` with
`malignant` as 1.0 / 0.0, `{prefix}_Supplement.csv`), so `lesionlab prepare` reads it as it would the
full download. Malignant diagnoses (iddx_3): {diagnoses}.

- Upstream: the ISIC 2024 challenge training set (SLICE-3D), International Skin Imaging Collaboration,
  ISIC Archive (https://www.isic-archive.com): {slice3d}.
- Images: the permissive (CC-BY / CC-0) part of that data as committed in the public GitHub repository
  victor-gabryel/isic_2024 (data/ISIC_reduzido, commit 1908a5e30c83ab0c008216a52c38b12ac384a836); supplement
  rows from the official ISIC_2024_Training_Supplement.csv as committed in jnakkash/ISIC-2024-Skin-Cancer-
  (commit 955c339238be9980e63121f050ab36ff75dc21a0). Labels were checked against iddx_1 for every image.
- License and attribution: LICENSE.md here; each image's `attribution` and `copyright_license` are in the
  Supplement. The images are unmodified copies (the same JPEG bytes).
- What this release lacks (and the competition's train-metadata.csv has): patient ids, age, sex, anatomical
  site and the 3D-TBP `tbp_lv_*` columns. `lesion_id`, `iddx_*` and `mel_*` are derived from the diagnosis
  and are never model inputs.
"""

PERMISSIVE_LICENSE = """# License of the images in this folder

The {n} images in `{prefix}_Input/` are licensed by the institutions that made them, not by lesionlab
(lesionlab's code is MIT-licensed separately, see LICENSE at the repository root). Each image's licence
and attribution are in `{prefix}_Supplement.csv` (columns `copyright_license` and `attribution`):

{rows}

Attribution, as the licence asks wherever these images are shipped or shown: the image's `attribution`
above; the ISIC Archive (International Skin Imaging Collaboration, https://www.isic-archive.com), ISIC 2024
challenge data; and {slice3d}.

The images are unmodified (the same JPEG bytes as in the ISIC 2024 permissive release); lesionlab resizes
them only in the prepared data sets it writes. The licensors give the images as-is, without warranties of
any kind (see section 5 of the licence).
"""


def ham10000(source: Path, out: Path, malignant: int, benign: int, seed: int) -> str:
    df = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    lesions = df.groupby("lesion_id")["label"].agg(lambda s: s.iloc[0]).reset_index()
    chosen = []
    for label, want in (("1", malignant), ("0", benign)):
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
    (out / "images").mkdir(parents=True)
    for p in sample["path"]:
        shutil.copyfile(source / p, out / p)
    sample.to_csv(out / "manifest.csv", index=False)
    n_m = int((sample["label"] == "1").sum())
    (out / "SOURCE.md").write_text(HAM_ATTRIBUTION.format(n=len(sample), n_m=n_m, n_b=len(sample) - n_m,
                                                          n_l=sample["lesion_id"].nunique(), seed=seed))
    return f"{len(sample)} images, {n_m} malignant"


def _lines_of(path: Path, ids: set[str]) -> list[str]:
    """The header and the rows of `ids`, byte for byte as the release wrote them (values keep their form:
    1.0 / 0.0, quoted attributions). isic_id is each file's first column."""
    lines = path.read_text().splitlines()
    return [lines[0]] + [line for line in lines[1:] if line.split(",", 1)[0] in ids]


def isic2024_permissive(source: Path, out: Path, institution: str, benign: int, seed: int) -> str:
    truth = pd.read_csv(source / f"{PREFIX}_GroundTruth.csv", dtype=str)
    sup = pd.read_csv(source / f"{PREFIX}_Supplement.csv", dtype=str, keep_default_na=False)
    rows = truth.merge(sup, on="isic_id")
    here = rows[rows["attribution"] == institution]
    if here.empty:
        raise SystemExit(f"--institution: no crop is attributed to '{institution}'; known: "
                         + "; ".join(sorted(rows["attribution"].unique())))
    malignant = here[here["malignant"] == "1.0"]
    benign_ids = here.loc[here["malignant"] == "0.0", "isic_id"].to_numpy()
    rng = np.random.default_rng(seed)
    chosen = set(malignant["isic_id"]) | set(rng.choice(benign_ids, size=min(benign, len(benign_ids)), replace=False))
    sample = rows[rows["isic_id"].isin(chosen)]
    images = out / f"{PREFIX}_Input"
    images.mkdir(parents=True)
    for i in sorted(chosen):
        shutil.copyfile(source / f"{PREFIX}_Input" / f"{i}.jpg", images / f"{i}.jpg")
    for part in ("GroundTruth", "Supplement"):
        name = f"{PREFIX}_{part}.csv"
        (out / name).write_text("\n".join(_lines_of(source / name, chosen)) + "\n")
    n_m = int((sample["malignant"] == "1.0").sum())
    diagnoses = ", ".join(f"{k} {v}" for k, v in sample.loc[sample["malignant"] == "1.0", "iddx_3"].value_counts().items())
    (out / "SOURCE.md").write_text(PERMISSIVE_SOURCE.format(
        n=len(sample), n_m=n_m, n_b=len(sample) - n_m, seed=seed, prefix=PREFIX, diagnoses=diagnoses, slice3d=SLICE3D,
        what=f"every malignant crop of {institution} in the release and {len(sample) - n_m} of its benign crops"))
    licences = []
    for (who, lic), count in sample.groupby(["attribution", "copyright_license"]).size().items():
        name, deed, legal = LICENSE_URLS[lic]
        licences.append(f"- {count} images: `{lic}`, {name}, {deed} (legal code: {legal}); attribution: {who}")
    (out / "LICENSE.md").write_text(PERMISSIVE_LICENSE.format(n=len(sample), prefix=PREFIX, rows="\n".join(licences),
                                                              slice3d=SLICE3D))
    return f"{len(sample)} crops, {n_m} malignant"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="isic2024-permissive", choices=["isic2024-permissive", "ham10000"])
    ap.add_argument("--source", default="", help="default: ../shared/data/DATASET")
    ap.add_argument("--out", default="", help="default: src/lesionlab/demo_data/<dataset>_sample")
    ap.add_argument("--institution", default="Memorial Sloan Kettering Cancer Center",
                    help="isic2024-permissive: whose crops (every malignant one, and --benign benign ones)")
    ap.add_argument("--malignant", type=int, default=140, help="ham10000: malignant images")
    ap.add_argument("--benign", type=int, default=None, help="benign images (default 641 / 640)")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    source = Path(args.source or root.parent / "shared" / "data" / args.dataset)
    out = Path(args.out or root / "src" / "lesionlab" / "demo_data" / f"{args.dataset.replace('-', '_')}_sample")
    if out.exists():
        shutil.rmtree(out)
    if args.dataset == "ham10000":
        what = ham10000(source, out, args.malignant, args.benign or 640, args.seed)
    else:
        what = isic2024_permissive(source, out, args.institution, args.benign or 641, args.seed)
    print(f"{out}: {what}")


if __name__ == "__main__":
    main()
