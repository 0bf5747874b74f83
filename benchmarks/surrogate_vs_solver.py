"""Surrogate against solver: time per member and statistical agreement at held-out (F, k).

    python benchmarks/surrogate_vs_solver.py --run gray_scott --points 0.036,0.0605 0.040,0.0635 \
        --members 16 --out benchmarks/results/surrogate_vs_solver.jsonl

For each parameter point, the Gray-Scott solver (``sciddpm.data.gray_scott.simulate_batch``, the
run's resolution and solver settings, fresh seeds never used for training) makes ``members`` runs,
and the trained surrogate makes ``members`` members with ``Model.ensemble``; both are timed on this
machine. Agreement per field (``sciddpm.metrics.compare``): RMSE between the two ensemble-mean
fields over the solver's spread, std ratio, power-spectrum ratio in low/mid/high wavenumber bands
and Wasserstein-1 of the marginals. One JSON line per point and field, plus one with the timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np
import torch
import xarray as xr

import sciddpm
from sciddpm.data import gray_scott
from sciddpm.metrics import compare

SEED_OFFSET = 1_000_000  # solver seeds far from the training runs' (which are 0 .. samples-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="gray_scott")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--points", nargs="+", default=["0.036,0.0605", "0.040,0.0635"], help="F,k pairs")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args()

    model = sciddpm.load(args.run, runs_dir=args.runs_dir, device=args.device)
    build = gray_scott.gray_scott_params(**dict(model.config["data"]["kwargs"].get("build") or {}))
    settings = model.sampler_settings()
    common = {"benchmark": "surrogate_vs_solver", "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "size": build["size"],
              "solver_steps": build["steps"], "sampler": settings["method"], "sampler_steps": settings["steps"],
              "members": args.members, "run_step": model.step,
              "network_dtype": model.network_dtype}
    lines = []
    for index, point in enumerate(args.points):
        F, k = (float(v) for v in point.split(","))
        seeds = SEED_OFFSET + index * args.members + np.arange(args.members)
        start = time.perf_counter()
        u, v = gray_scott.simulate_batch([F] * args.members, [k] * args.members, seeds, size=build["size"],
                                         steps=build["steps"])
        solver_s = time.perf_counter() - start
        start = time.perf_counter()
        ens = model.ensemble({"F": [F], "k": [k]}, members=args.members, seed=index, progress=False)
        surrogate_s = time.perf_counter() - start
        ens = ens.isel(case=0, drop=True)
        spatial = [d for d in ens["u"].dims if d != "member"]
        reference = xr.Dataset({"u": (("member", *spatial), u), "v": (("member", *spatial), v)})
        surrogate = ens[["u", "v"]].drop_vars([c for c in ens.coords if c not in ens.dims])
        surrogate = surrogate.drop_vars(list(surrogate.indexes))
        lines.append({**common, "F": F, "k": k, "solver_s_per_run": solver_s / args.members,
                      "surrogate_s_per_member": surrogate_s / args.members,
                      "speedup": solver_s / surrogate_s})
        for name, scores in compare(surrogate, reference).items():
            lines.append({**common, "F": F, "k": k, "field": name, **scores})
    for line in lines:
        print(json.dumps(line))
    if args.out:
        with open(args.out, "a") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
