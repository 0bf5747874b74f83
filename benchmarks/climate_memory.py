"""Peak memory of one training epoch over an ERA5 store of T and 10 T times: it must stay flat.

    python benchmarks/climate_memory.py [--times 876] [--out benchmarks/results/climate_memory.jsonl]

Builds two synthetic 64x32 stores (6-hourly, 2m_temperature + geopotential@500 + temperature@850)
of T and 10 T times, then, each case in a fresh interpreter, builds the era5 adapter (64 statistics
samples), iterates one epoch of its training split through a DataLoader (batch 32, shuffled,
``num_workers`` 0 and 2 with spawned workers) and reads the peak resident set size (VmHWM of
/proc/self/status; workers: RUSAGE_CHILDREN's largest maxrss). Prints one JSON line per case, then
per worker count the ratio 10 T / T of the peak and of its growth over the post-import baseline.
The adapter reads one ``isel`` per variable per batch (at most 256 MB at once) and holds O(T)
small arrays only (time positions, encoded conditions), so the ratio should be ~1 (< 1.1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CASE = r"""
import json, resource, sys, time
import torch
def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
from sciddpm.data import build_adapter
path, workers = sys.argv[1], int(sys.argv[2])
baseline = vm("VmRSS")
start = time.perf_counter()
adapter = build_adapter("era5", path=path, stats_samples=64, val_fraction=0.1)
data = adapter.dataset("train")
loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, num_workers=workers,
                                     multiprocessing_context="spawn" if workers else None)
items = sum(len(batch["x"]) for batch in loader)
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"items": items, "baseline_rss_mb": baseline, "peak_rss_mb": vm("VmHWM"),
                  "worker_peak_rss_mb": children if workers else None,
                  "epoch_s": time.perf_counter() - start}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=876, help="T: time steps of the small store (6-hourly)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    from sciddpm.data.era5_synthetic import write_synthetic

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for times in (args.times, 10 * args.times):
            stop = np.datetime64("2000-01-01T00", "h") + np.timedelta64(6 * times, "h")
            store = write_synthetic(Path(tmp) / f"t{times}.zarr", start="2000-01-01", stop=str(stop), static=[])
            for workers in (0, 2):
                run = subprocess.run([sys.executable, "-c", CASE, str(store), str(workers)], capture_output=True,
                                     text=True, check=True)
                case = json.loads(run.stdout.strip().splitlines()[-1])
                case.update(figure="climate_epoch_peak_rss", store_times=times, num_workers=workers)
                results[times, workers] = case
                lines.append(case)
                print(json.dumps(case), flush=True)
        for workers in (0, 2):
            small, big = results[args.times, workers], results[10 * args.times, workers]
            growth = lambda c: c["peak_rss_mb"] - c["baseline_rss_mb"]  # noqa: E731
            ratio = {"figure": "climate_epoch_peak_rss_ratio_10x", "num_workers": workers,
                     "peak_ratio": big["peak_rss_mb"] / small["peak_rss_mb"],
                     "growth_ratio": growth(big) / growth(small),
                     "growth_mb": [growth(small), growth(big)]}
            if workers:
                ratio["worker_peak_ratio"] = big["worker_peak_rss_mb"] / small["worker_peak_rss_mb"]
            lines.append(ratio)
            print(json.dumps(ratio), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
