"""GPU correctness checks that CPU CI cannot make: one JSON line per check, exit status 1 if any fails.

On the device (``--device cuda``, the default), with a tiny audio model trained there:

* ``train_bf16``: training on the GPU runs the network in bf16 (what ``sciddpm.precision`` picks
  for the device) and keeps a finite loss;
* ``train_compiled``: ``trainer.compile=true`` trains too (torch.compile of the loss module);
* ``device_agreement``: float32 samples on the GPU equal those on the CPU from the same seed, to
  TF32 rounding (the per-item noise is drawn on the CPU, so they must);
* ``compiled_sampling/<sampler>/<guidance>``: ``load(..., compile=True)`` (CUDA graphs) gives the
  eager members, for dpmpp_2m (which keeps the previous estimate across calls), heun and guided
  sampling (two halves of one call), on the first call (capture) and the second (replay). Without
  copying each output out of the graph's buffer these would differ by O(1);
* ``sampler_host_syncs``: the sampler loop itself makes no host-device synchronisation
  (``torch.cuda.set_sync_debug_mode("warn")`` counts them).

    python benchmarks/cuda_checks.py                 # on a GPU machine
    python benchmarks/cuda_checks.py --device cpu    # the same logic on a CPU (no sync check)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import sciddpm
from sciddpm.diffusion import sample as run_sampler
from sciddpm.precision import network_dtype_name
from sciddpm.runs import RunDir

TINY = ["data=audio", "data.kwargs.tones_clips=64", "data.kwargs.clip_samples=256", "model=tiny1d",
        "trainer=quick", "trainer.batch_size=16", "trainer.log_every=10", "trainer.warmup_steps=5",
        "trainer.checkpoint_every=1000"]
COND = {"pitch": 440.0}


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


class Checks:
    def __init__(self):
        self.failed = 0

    def record(self, name: str, passed: bool, **figures) -> None:
        self.failed += not passed
        print(json.dumps({"check": name, "passed": bool(passed), **figures}), flush=True)


def train_checks(checks: Checks, runs: Path, device: str) -> None:
    start = time.perf_counter()
    sciddpm.train([*TINY, f"trainer.device={device}", "trainer.steps=60", f"runs_dir={runs}", "name=tiny"])
    metrics = RunDir(runs / "tiny").read_metrics()
    dtypes = sorted({r["network_dtype"] for r in metrics})
    expected = network_dtype_name(torch.device(device))  # bfloat16 on any GPU since Ampere
    checks.record("train_bf16", dtypes == [expected] and all(np.isfinite(r["loss"]) for r in metrics),
                  network_dtype=dtypes, losses=[round(r["loss"], 4) for r in metrics],
                  seconds=round(time.perf_counter() - start, 1))
    start = time.perf_counter()
    sciddpm.train([*TINY, f"trainer.device={device}", "trainer.steps=20", "trainer.compile=true",
                   f"runs_dir={runs}", "name=tiny_compiled"])
    metrics = RunDir(runs / "tiny_compiled").read_metrics()
    checks.record("train_compiled", all(np.isfinite(r["loss"]) for r in metrics),
                  losses=[round(r["loss"], 4) for r in metrics], seconds=round(time.perf_counter() - start, 1))


def sampling_checks(checks: Checks, runs: Path, device: str) -> None:
    on_device = sciddpm.load("tiny", runs_dir=runs, device=device, bf16=False)
    on_cpu = sciddpm.load("tiny", runs_dir=runs, device="cpu", bf16=False)
    a = on_device.sample(8, COND, steps=10, seed=1)["waveform"].values
    b = on_cpu.sample(8, COND, steps=10, seed=1)["waveform"].values
    difference = relative_rms(a, b)
    checks.record("device_agreement", difference < 0.02, relative_rms=difference)

    eager = sciddpm.load("tiny", runs_dir=runs, device=device)
    compiled = sciddpm.load("tiny", runs_dir=runs, device=device, compile=True)
    for sampler in ("dpmpp_2m", "heun"):
        for guidance in (1.0, 2.0):
            options = dict(steps=8, seed=2, sampler=sampler, guidance=guidance)
            reference = eager.sample(8, COND, **options)["waveform"].values
            start = time.perf_counter()
            first = compiled.sample(8, COND, **options)["waveform"].values
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            second = compiled.sample(8, COND, **options)["waveform"].values
            second_s = time.perf_counter() - start
            errors = [relative_rms(first, reference), relative_rms(second, reference)]
            checks.record(f"compiled_sampling/{sampler}/guidance={guidance:g}", max(errors) < 0.03,
                          relative_rms_first_and_replay=errors, network_dtype=compiled.network_dtype,
                          first_call_s=round(first_s, 2), second_call_s=round(second_s, 3))

    if device.startswith("cuda"):
        denoiser = eager._denoiser(1.0, conditional=True)
        cond = eager.spec.cond.encode({"pitch": np.full(8, 440.0)}, batch=8, warn=False).to(eager.device)
        noise = torch.randn(8, len(eager.spec.channels), *eager.spec.shape, device=eager.device)
        run_sampler(denoiser, noise, method="dpmpp_2m", steps=4, denoiser_kwargs={"cond": cond})  # warm-up
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_sampler(denoiser, noise, method="dpmpp_2m", steps=20, denoiser_kwargs={"cond": cond})
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message)]
        checks.record("sampler_host_syncs", not syncs, count=len(syncs), first=syncs[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; run with --device cpu to check the logic on a CPU")
    checks = Checks()
    print(json.dumps({"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                      "torch": torch.__version__}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SCIDDPM_CACHE"] = str(Path(tmp) / "cache")
        runs = Path(tmp) / "runs"
        train_checks(checks, runs, args.device)
        sampling_checks(checks, runs, args.device)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
