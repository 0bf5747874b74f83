"""Recipe: ERA5 stores for the era5 adapter - a local subset of WeatherBench2/ARCO, or a synthetic one.

    python datasets/era5.py subset --source gs://weatherbench2/datasets/era5/1959-2022-6h-64x32_equiangular_conservative.zarr \
        --variables 2m_temperature geopotential@500 temperature@850 --static land_sea_mask \
        --start 2019-01-01 --stop 2019-12-31 --out era5_2019.zarr
    python datasets/era5.py synthetic --layout 64x32 --out synthetic.zarr [--variables ... --years 4 --seed 0]

``subset`` copies the chosen variables, the union of their pressure levels (``name@level``), any
static fields and the time range (inclusive dates; ARCO stores are also cut to their
``valid_time_start``/``valid_time_stop``) from a store - ``gs://`` (anonymous; needs gcsfs) or a
local path - into a local zarr, keeping names, dims, coordinates and attrs. It reads and writes
``--block`` time steps at a time, so memory is bounded whatever the range, and the output appears
atomically (written under a temporary name, then renamed). ``synthetic`` writes, offline, a store
with exactly the chosen layout and known statistics (formulas in ``sciddpm.data.era5_synthetic``,
which the adapter also uses to build its embedded sample).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sciddpm.files import atomic_path
from sciddpm.data.era5_layouts import LAYOUTS, LEVEL, TIME, StorePlan, canonical_dims, open_era5_store, parse_channel
from sciddpm.data.era5_synthetic import DEFAULTS, describe, write_synthetic
from sciddpm.data.stores import consolidate


def subset(source: str, variables: list[str], out: str, start: str | None = None, stop: str | None = None,
           static: list[str] = (), block: int = 64, time_chunk: int = 1, storage_options: dict | None = None) -> str:
    """Copy ``variables`` (at their levels), ``static`` fields and ``[start, stop]`` to the zarr ``out``."""
    if not out.endswith(".zarr"):
        raise ValueError(f"--out must end in .zarr, got {out}")
    ds = canonical_dims(open_era5_store(source, storage_options))[0]  # a new-CDS file's valid_time -> time
    StorePlan.build(ds, source, storage_options, list(variables), list(static))  # names/levels, or errors listing them
    lo, hi = start, stop
    if "valid_time_start" in ds.attrs and (lo is None or str(lo) < str(ds.attrs["valid_time_start"])):
        lo = str(ds.attrs["valid_time_start"])
    if "valid_time_stop" in ds.attrs and (hi is None or str(hi) > str(ds.attrs["valid_time_stop"])):
        hi = str(ds.attrs["valid_time_stop"])  # ARCO: past this the time axis holds no data
    names = list(dict.fromkeys(parse_channel(v)[0] for v in variables))
    levels = sorted({lv for _, lv in map(parse_channel, variables) if lv is not None})
    sub = ds[names + list(static)].sel({TIME: slice(lo, _end_of_day(hi))})
    if levels:
        sub = sub.sel({LEVEL: [v for v in ds[LEVEL].values.tolist() if any(np.isclose(v, lv) for lv in levels)]})
    if sub.sizes[TIME] == 0:
        raise ValueError(f"{source} has no times in {lo} .. {hi} (it has {ds[TIME].values[0]} .. {ds[TIME].values[-1]})")
    sub = sub.drop_vars([c for c in sub.coords if c not in sub.dims])
    with atomic_path(out) as tmp:
        for first in range(0, sub.sizes[TIME], block):
            piece = sub.isel({TIME: slice(first, first + block)}).load().drop_encoding()
            if first == 0:
                encoding = {name: {"chunks": (time_chunk, *var.shape[1:])}
                            for name, var in piece.data_vars.items() if var.dims[:1] == (TIME,)}
                piece.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False)
            else:
                piece.drop_vars(list(static)).to_zarr(tmp, append_dim=TIME, consolidated=False)
            print(f"  {min(first + block, sub.sizes[TIME])}/{sub.sizes[TIME]} times", file=sys.stderr)
        consolidate(tmp)
    return out


def _end_of_day(stop: str | None) -> str | None:
    return None if stop is None else (f"{stop}T23:59:59" if len(str(stop)) <= 10 else str(stop))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("subset", help="copy part of a WeatherBench2/ARCO store into a local zarr")
    sub.add_argument("--source", required=True, help="store path or gs:// URL")
    sub.add_argument("--variables", nargs="+", required=True, help="names, name@level for pressure levels")
    sub.add_argument("--static", nargs="*", default=[], help="time-independent fields, e.g. land_sea_mask")
    sub.add_argument("--start", help="first date (inclusive)")
    sub.add_argument("--stop", help="last date (inclusive)")
    sub.add_argument("--block", type=int, default=64, help="time steps read and written at once")
    sub.add_argument("--time-chunk", type=int, default=1, help="time steps per zarr chunk of the copy")
    sub.add_argument("--out", required=True, help="new .zarr path")
    syn = commands.add_parser("synthetic", help="write an offline store with a WeatherBench2/ARCO layout")
    syn.add_argument("--layout", default=DEFAULTS["layout"], choices=sorted(LAYOUTS))
    syn.add_argument("--variables", nargs="+", default=DEFAULTS["variables"])
    syn.add_argument("--static", nargs="*", default=DEFAULTS["static"])
    syn.add_argument("--start", default=DEFAULTS["start"])
    syn.add_argument("--stop", default=None, help=f"exclusive (default {DEFAULTS['stop']})")
    syn.add_argument("--years", type=int, default=None, help="instead of --stop: this many years from --start")
    syn.add_argument("--hours", type=int, default=None, help="time step (default: the layout's)")
    syn.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    syn.add_argument("--length-km", type=float, default=DEFAULTS["length_km"])
    syn.add_argument("--time-chunk", type=int, default=DEFAULTS["time_chunk"])
    syn.add_argument("--out", required=True, help="new .zarr path")
    args = vars(parser.parse_args(argv))
    command, out = args.pop("command"), args.pop("out")
    try:
        if command == "subset":
            print(f"wrote {subset(out=out, **args)}")
        else:
            years = args.pop("years")
            if years is not None:
                if args["stop"] is not None:
                    parser.error("give --stop or --years, not both")
                args["stop"] = f"{int(args['start'][:4]) + years:04d}{args['start'][4:]}"
            write_synthetic(out, **args)
            print(f"wrote {describe(**args)} to {out}")
    except (FileNotFoundError, ValueError, ImportError, TypeError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
