"""Recipe: write the volume_grf dataset (periodic 3-D Gaussian random fields, spectrum k^-alpha) as zarr.

    python datasets/volume_grf.py --out data/volume_grf.zarr [--samples 1024 --size 16
                                  --alpha-min 1.5 --alpha-max 3.5 --seed 0 --workers N]

The store has dims (sample, z, y, x): variable ``field`` (ensemble variance 1), parameter
``alpha`` along ``sample``, cell-centre coordinates in box lengths; the exact convention is in
``sciddpm.data.grf`` (this recipe only calls it), so ``build_adapter("volume", source="store",
path=...)`` reading this store sees the same fields as the embedded ``source="grf"``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sciddpm.data.grf import DEFAULTS, describe, write_grf_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the zarr store to write (must not exist)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    for key, default in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=type(default), default=default,
                            help=f"default {default}")
    args = vars(parser.parse_args(argv))
    out, workers = Path(args.pop("out")), args.pop("workers")
    if out.exists():
        parser.error(f"{out} exists; choose a new --out")
    start = time.perf_counter()
    try:
        write_grf_store(out, workers=workers, **args)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {describe(**args)} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
