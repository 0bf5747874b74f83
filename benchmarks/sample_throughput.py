"""Ensemble sampling throughput: members/s of each benchmark net at a fixed number of denoiser
evaluations (NFE, default 32), through the same path a user's ``sample`` takes.

The net (from ``bench_nets.py``) is wrapped in ``sciddpm.diffusion.Denoiser`` (EDM
preconditioning, as ``sciddpm.assembly.build_denoiser`` does for ``diffusion=edm``) and driven by
``sciddpm.diffusion.sample`` with ``--sampler`` (default dpmpp_2m: one evaluation per step; heun
takes the most steps within the NFE). A member is one sample; members/s = batch / wall time of
one whole ``sample()`` call, median over ``--rounds``. Weights are untrained (speed does not
depend on them).

GPU path: ``--dtype bfloat16`` casts the network's weights to bf16 (the sampler arithmetic stays
float32, house rule 1 in docs/architecture.md); ``--compile`` compiles the network with static shapes, and
``--compile-mode reduce-overhead`` also captures it in CUDA graphs, so each evaluation is one
graph launch; compile time is reported. ``--batch 0`` doubles the batch until memory runs out (or
``--max-batch``) and keeps the largest that fitted. On CUDA the timed rounds run under
``torch.cuda.set_sync_debug_mode("warn")`` and the number of host-device synchronisations per
``sample()`` call is reported (``host_syncs``; the sampler loop itself should add none).

    python benchmarks/sample_throughput.py --nets cifar audio              # CPU, modest batch
    python benchmarks/sample_throughput.py --device cuda --dtype bfloat16 --compile --compile-mode reduce-overhead --batch 0
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import bench_nets
from bench_nets import NETS
from sciddpm.diffusion import Denoiser, sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CPU_BATCH = {"climate": 4, "cifar": 16, "audio": 32, "volume": 2}


def steps_for(method: str, nfe: int) -> int:
    return (nfe + 1) // 2 if method == "heun" else nfe


def build(spec, args, device: torch.device) -> tuple[Denoiser, torch.nn.Module]:
    net = bench_nets.build_ours(spec).to(device=device, dtype=args.torch_dtype).eval()
    compiled = net
    if args.compile:
        compiled = torch.compile(net, mode=args.compile_mode, dynamic=False)
    return Denoiser(compiled, "edm", sigma_data=0.5), net


def draw(spec, args, device: torch.device, denoiser: Denoiser, batch: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(batch, *spec.shape, generator=g, device=device)
    kwargs = {}
    if spec.cond_dim:
        kwargs["denoiser_kwargs"] = {"cond": torch.rand(batch, spec.cond_dim, device=device)}
    with torch.inference_mode():
        return sample(denoiser, noise, method=args.sampler, steps=steps_for(args.sampler, args.nfe),
                      generator=g, **kwargs)


def fits(spec, device, denoiser: Denoiser, batch: int) -> bool:
    """Whether one denoiser evaluation at ``batch`` fits in memory (the sampler adds a few copies
    of x, which are small beside the network's activations)."""
    try:
        x = torch.randn(batch, *spec.shape, device=device)
        cond = torch.rand(batch, spec.cond_dim, device=device) if spec.cond_dim else None
        with torch.inference_mode():
            denoiser(x, torch.ones(batch, device=device), cond=cond)
        bench_nets.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False


def largest_batch(spec, args, device, eager: torch.nn.Module) -> int:
    """Doubling search with the uncompiled net: compiling (and capturing CUDA graphs) at every
    trial size would take minutes."""
    denoiser = Denoiser(eager, "edm", sigma_data=0.5)
    batch, best = 16, None
    while batch <= args.max_batch and fits(spec, device, denoiser, batch):
        best, batch = batch, batch * 2
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if best is None:
        raise SystemExit(f"{spec.name}: even a batch of 16 does not fit; pass --batch")
    return best


def time_net(spec, args, device: torch.device, emit) -> None:
    denoiser, eager = build(spec, args, device)
    start = time.perf_counter()
    if args.batch == 0:
        batch = largest_batch(spec, args, device, eager)
    else:
        batch = args.batch or (CPU_BATCH[spec.name] if device.type == "cpu" else 64)
    draw(spec, args, device, denoiser, batch)  # warm-up, and compilation when asked
    bench_nets.synchronize(device)
    warmup_s = time.perf_counter() - start

    x = torch.randn(batch, *spec.shape, device=device, dtype=args.torch_dtype)
    counter = FlopCounterMode(display=False)
    cond = torch.rand(batch, spec.cond_dim, device=device) if spec.cond_dim else None
    with counter, torch.inference_mode():
        eager(x, torch.zeros(batch, device=device, dtype=args.torch_dtype), cond=cond)
    flops_per_eval = counter.get_total_flops()

    rates, syncs = [], []
    for _ in range(args.rounds):
        bench_nets.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            begin = time.perf_counter()
            draw(spec, args, device, denoiser, batch)
            bench_nets.synchronize(device)
            elapsed = time.perf_counter() - begin
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        rates.append(batch / elapsed)
    rate = statistics.median(rates)
    nfe = 2 * steps_for(args.sampler, args.nfe) - 1 if args.sampler == "heun" else args.nfe
    tflops = flops_per_eval / batch * nfe * rate / 1e12
    peak = bench_nets.peak_tflops(device, args.peak_tflops)
    emit({
        "benchmark": "sample_throughput", "net": spec.name, "shape": list(spec.shape),
        "device": bench_nets.device_name(device), "torch": torch.__version__, "dtype": args.dtype,
        "batch": batch, "params": sum(p.numel() for p in eager.parameters()),
        "sampler": args.sampler, "nfe": nfe, "members_per_s": round(rate, 4),
        "members_per_s_best": round(max(rates), 4), "members_per_s_rounds": [round(r, 4) for r in rates],
        "gflop_per_member": round(flops_per_eval / batch * nfe / 1e9, 2), "tflops": round(tflops, 4),
        "mfu": None if peak is None else round(tflops / peak, 4), "peak_tflops": peak,
        "compile": args.compile and args.compile_mode, "warmup_s": round(warmup_s, 2),
        "host_syncs": syncs[-1] if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "rounds": args.rounds,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="network weights (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--nfe", type=int, default=32)
    parser.add_argument("--batch", type=int, default=None,
                        help="members per sample() call; 0 = as large as fits (default: per net on "
                        "CPU, 64 on CUDA)")
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="reduce-overhead = CUDA graphs on GPU")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", default=None, help="append the JSON lines (dated) to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.torch_dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    date = datetime.date.today().isoformat()
    lines = []

    def emit(row: dict) -> None:
        lines.append(json.dumps({**row, "date": date}))
        print(lines[-1], flush=True)

    for name in args.nets:
        time_net(NETS[name], args, device, emit)
    if args.out:
        bench_nets.append_jsonl(Path(args.out), lines)


if __name__ == "__main__":
    main()
