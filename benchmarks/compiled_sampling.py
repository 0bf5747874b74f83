"""Does ``sciddpm.load(run, compile=True)`` (``sciddpm sample --compile``) pay for a trained run?

Loads the run twice, once compiled, and draws the same members alternately with each through
``Model.sample`` (the run's own sampler settings, the precision the device picks: bf16 where
native), after an untimed first call that compiles. Prints one JSON line per run: compile time
(the first call, compiling included), median seconds per ``sample`` call of each, their ratio,
and how far the compiled members are from the eager ones (RMS of the difference over RMS).

    python benchmarks/compiled_sampling.py RUN [RUN ...] --n 16 --rounds 4
    python benchmarks/compiled_sampling.py runs/climate --cond dayofyear=180 --cond hour=12
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import bench_nets
import sciddpm
from sciddpm.checks import parse_number


def timed_sample(model: sciddpm.Model, args: argparse.Namespace, cond: dict, seed: int):
    start = time.perf_counter()
    ds = model.sample(args.n, cond, seed=seed, batch_size=args.batch_size)
    bench_nets.synchronize(model.device)
    return time.perf_counter() - start, ds


def measure(run: str, args: argparse.Namespace) -> dict:
    eager = sciddpm.load(run, device=args.device)
    compiled = sciddpm.load(run, device=args.device, compile=True)
    unknown = sorted(set(args.cond) - set(eager.conditions.names))
    if unknown:  # (a misspelt condition would otherwise be timed at the middle of its range)
        raise SystemExit(f"{run} has no condition {', '.join(map(repr, unknown))}; its conditions: "
                         f"{', '.join(eager.conditions.names) or 'none'} (time runs with other conditions apart)")
    cond = dict(args.cond)
    cond.update({v.name: (v.min + v.max) / 2 for v in eager.conditions.vars if v.name not in cond})
    compile_s, _ = timed_sample(compiled, args, cond, seed=0)
    timed_sample(eager, args, cond, seed=0)  # warm-up
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        order = ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")
        for name in order:
            times[name].append(timed_sample(eager if name == "eager" else compiled, args, cond, seed=1)[0])
    _, a = timed_sample(eager, args, cond, seed=2)
    _, b = timed_sample(compiled, args, cond, seed=2)
    differences = [float(np.sqrt(np.mean((a[v].values - b[v].values) ** 2) / np.mean(a[v].values ** 2)))
                   for v in a.data_vars]
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"benchmark": "compiled_sampling", "run": Path(run).name, "device": bench_nets.device_name(eager.device),
            "torch": torch.__version__, "network_dtype": eager.network_dtype, "members": args.n,
            "batch": args.batch_size or args.n, "sampler": eager.sampler_settings()["method"],
            "first_call_compiling_s": round(compile_s, 2), "eager_s": round(eager_s, 4),
            "compiled_s": round(compiled_s, 4), "speedup": round(eager_s / compiled_s, 3),
            "eager_rounds": [round(t, 4) for t in times["eager"]],
            "compiled_rounds": [round(t, 4) for t in times["compiled"]],
            "relative_rms_difference": max(differences), "threads": torch.get_num_threads(),
            "rounds": args.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (or names under ./runs)")
    parser.add_argument("--n", type=int, default=16, help="members per sample call")
    parser.add_argument("--batch-size", type=int, default=None, help="members per batch (default: all)")
    parser.add_argument("--cond", action="append", default=[], metavar="NAME=VALUE",
                        help="a condition (others: the middle of their training range)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="append the JSON lines (dated) to this file")
    args = parser.parse_args()
    if any("=" not in item for item in args.cond):
        parser.error(f"--cond takes NAME=VALUE, got {[item for item in args.cond if '=' not in item]}")
    try:
        args.cond = {k.strip(): parse_number(v) for k, v in (item.split("=", 1) for item in args.cond)}
    except ValueError as error:
        parser.error(f"--cond: {error}")
    date = datetime.date.today().isoformat()
    lines = []
    for run in args.runs:
        line = json.dumps({**measure(run, args), "date": date})
        print(line, flush=True)
        lines.append(line)
    if args.out:
        bench_nets.append_jsonl(Path(args.out), lines)


if __name__ == "__main__":
    main()
