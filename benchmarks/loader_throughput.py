"""Training-data reads: a batch item by item against the whole batch at once, per modality.

    python benchmarks/loader_throughput.py [--batch 32] [--rounds 6] [--out benchmarks/results/loader_throughput_cpu.jsonl]

The DataLoader asks a dataset for a whole batch (``__getitems__``); the ERA5 and volume adapters
read each variable once per batch there. For each modality's embedded data (tones; the synthetic
64 x 32 ERA5 sample; 64 volume_grf fields of 16^3) this times, alternating in one process, a
batch of ``--batch`` random training items fetched one by one (``__getitems__([i])`` each) and the
same number fetched at once, and prints one JSON line per modality: the medians, their ratio and
the items per second. Compare with the training step's samples/s (``train_throughput.py``) to
see whether loading can hold training back.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from sciddpm.data import build_adapter

ADAPTERS = {
    "audio": lambda: build_adapter("audio"),
    "era5": lambda: build_adapter("era5"),
    "volume": lambda: build_adapter("volume", build={"samples": 64, "size": 16}, workers=1),
}


def fetch(items, indices: list[int], at_once: bool) -> float:
    start = time.perf_counter()
    if at_once and hasattr(items, "__getitems__"):
        items.__getitems__(indices)
    else:
        for i in indices:
            items[i]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modalities", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines (dated) here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for name in args.modalities:
        items = ADAPTERS[name]().dataset("train")
        rng = np.random.default_rng(0)
        fetch(items, rng.choice(len(items), args.batch, replace=False).tolist(), True)  # opens the store
        one_by_one, at_once = [], []
        for _ in range(args.rounds):
            one_by_one.append(fetch(items, rng.choice(len(items), args.batch, replace=False).tolist(), False))
            at_once.append(fetch(items, rng.choice(len(items), args.batch, replace=False).tolist(), True))
        a, b = float(np.median(one_by_one)), float(np.median(at_once))
        record = {"benchmark": "loader_throughput", "modality": name, "batch": args.batch, "rounds": args.rounds,
                  "ms_per_batch_item_by_item": round(1e3 * a, 2), "ms_per_batch_at_once": round(1e3 * b, 2),
                  "ratio": round(a / b, 2), "items_per_s_at_once": round(args.batch / b, 1),
                  "batched_read": hasattr(items, "__getitems__"), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "date": datetime.date.today().isoformat()}
        print(json.dumps(record), flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
