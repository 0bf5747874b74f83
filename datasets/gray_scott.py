"""Recipe: simulate the gray_scott dataset (3-D Gray-Scott reaction-diffusion over F, k) as zarr.

    python datasets/gray_scott.py --out data/gray_scott.zarr [--samples 512 --size 32 --steps 3000
                                  --F-min 0.026 --F-max 0.042 --k-min 0.059 --k-max 0.065
                                  --seed 0 --workers N]

The store has dims (sample, z, y, x): variables ``u`` and ``v`` (dimensionless concentrations),
parameters ``F`` and ``k`` along ``sample``, cell-centre coordinates in box lengths. The solver
and its conventions live in ``sciddpm.data.gray_scott`` (this recipe only calls it); use
``gray_scott.simulate(F, k, seed=...)`` to run it at any other parameters from Python.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sciddpm.data.gray_scott import DEFAULTS, describe, write_gray_scott_store


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
        write_gray_scott_store(out, workers=workers, **args)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {describe(**args)} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
