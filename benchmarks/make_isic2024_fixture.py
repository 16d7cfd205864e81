"""Write a stand-in for the ISIC 2024 training data in its exact layout: train-metadata.csv with all
55 columns and plausible values (~1,000 patients, ~400 positives) and train-image.hdf5 holding one
small JPEG crop (about 130 px, varying) per isic_id.

    python benchmarks/make_isic2024_fixture.py --n 401059 --out DIR [--workers 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lesionlab.data.parallel import cpu_count

# the writer of the official layout is test data: it lives with the tests, outside the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from isic2024_fixture import write_isic2024  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=401059)
    ap.add_argument("--out", required=True)
    ap.add_argument("--patients", type=int, default=1042)
    ap.add_argument("--positives", type=int, default=393)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=cpu_count())
    ap.add_argument("--crop-px", default="110:151", help="MIN:MAX side of the crops in pixels (the metadata do not "
                    "depend on it; smaller crops are quicker to write and decode)")
    args = ap.parse_args()
    out = Path(args.out)
    if (out / "train-metadata.csv").exists():
        sys.exit(f"{out}: already holds train-metadata.csv; choose another --out")
    t0 = time.time()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.time() - last[0] > 10 or done == total:
            last[0] = time.time()
            print(f"{done}/{total} crops, {done / (time.time() - t0):.0f} crops/s", flush=True)

    write_isic2024(out, n=args.n, n_patients=args.patients, n_positive=args.positives, seed=args.seed,
                   size_range=tuple(int(v) for v in args.crop_px.split(":")), workers=args.workers, progress=progress)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
    print(f"{out}: {args.n} crops in {time.time() - t0:.0f} s, {size:.2f} GiB")


if __name__ == "__main__":
    main()
