"""Sample quality against the number of denoiser evaluations (NFE), on two problems with known truth.

Each problem comes with its exact denoiser, so what is measured is the sampler's own error
(discretisation, plus the noise of a finite ensemble), not a network's:

* ``gaussian``: data ``N(mu, Sigma)`` in ``d`` dimensions with a dense covariance (eigenvalues
  log-spaced in ``--eigenvalues``, random eigenbasis), denoised by
  ``sciddpm.testing.gaussian_denoiser``. Metric: the relative Frobenius error of the whitened
  sample covariance, ``||Sigma^-1/2 C Sigma^-1/2 - I||_F / sqrt(d)`` (the whitened mean's error
  ``|mean_w| / sqrt(d)`` is reported beside it).
* ``grf``: a periodic Gaussian random field on ``n^dims`` points with power ``P(k) = k^-alpha``
  (zero mode removed; scaled to unit variance per point). With the orthonormal FFT every Fourier
  mode is independent with variance ``P(k)``, so the exact denoiser is a Wiener filter diagonal in
  Fourier space, ``D(x, s) = IFFT(P / (P + s^2) FFT(x))``. Metric: the log-spectral distance
  (``sciddpm.metrics.spectra.log_spectral_distance``: RMS of log10 ratios over |k| shells) between
  the samples' radially averaged power spectrum and the exact one.

Every sampler in ``sciddpm.diffusion.SAMPLERS`` runs with the schedule and options of its config
(``sciddpm/configs/sampler/<name>.yaml``) at NFE = 5, 10, 20, 35, 50, 100 (heun costs ``2 steps - 1``
evaluations, so it runs the largest step count within each NFE), and DDPM at 1000 as the
reference. Every figure is the mean over ``--replicates`` independent ensembles (seeds shared by
all samplers), with its standard deviation. The *noise level* is the same metric for exact samples
of the same count: a sampler whose error differs from DDPM-1000's by less than it is
indistinguishable from DDPM-1000 at this ensemble size ("matches within noise").

    python benchmarks/nfe_quality.py --out benchmarks/results/nfe_quality.jsonl   # ~10 min, 2 cores
    python benchmarks/nfe_quality.py --samplers dpmpp_2m heun euler --rho 1000 --sigma-min 0.03 \
        --plot benchmarks/results/nfe_quality_candidate.png     # try a candidate Karras table
    python benchmarks/nfe_quality.py --problems gaussian --replicates 2 --no-plot

Prints one JSON line per (problem, sampler, NFE), per noise level and per recommendation; with
``--out`` appends them (dated) to a JSONL file; the plot goes to ``--plot`` (PNG).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sciddpm.diffusion import SAMPLERS, sample
from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum
from sciddpm.testing import gaussian_denoiser

NFE_TARGETS = (5, 10, 20, 35, 50, 100)
REFERENCE = ("ddpm", 1000)
SAMPLER_CONFIGS = Path(__file__).resolve().parents[1] / "sciddpm" / "configs" / "sampler"


# Overrides of the Karras table's sigma_min / rho (--sigma-min, --rho), for trying a candidate
# default; empty = the configs as they are. DDPM-1000 (linear table) is never affected.
KARRAS_OVERRIDES: dict[str, float] = {}


def sampler_settings(method: str) -> dict:
    """Schedule and options of ``method`` from its config (karras and no options if none)."""
    path = SAMPLER_CONFIGS / f"{method}.yaml"
    config = yaml.safe_load(path.read_text()) if path.exists() else {}
    settings = {"schedule": config.get("schedule", "karras"), "opts": dict(config.get("opts") or {})}
    if settings["schedule"] == "karras":
        settings.update(KARRAS_OVERRIDES)
    return settings


def steps_for(method: str, nfe: int) -> int:
    """The most steps whose evaluations fit in ``nfe`` (heun: 2 per step, none after the last)."""
    return (nfe + 1) // 2 if method == "heun" else nfe


def evaluations(method: str, steps: int) -> int:
    return 2 * steps - 1 if method == "heun" else steps


class GaussianProblem:
    """``N(mu, Sigma)`` in ``d`` dimensions and its closed-form denoiser."""

    name = "gaussian"
    metric = "whitened_cov_rel_frobenius"

    def __init__(self, d: int, eigenvalues: tuple[float, float], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.logspace(math.log10(eigenvalues[0]), math.log10(eigenvalues[1]), d,
                             dtype=torch.float64)
        mu = torch.randn(d, generator=g, dtype=torch.float64)
        self.mu, self.sigma = 0.5 * mu / mu.norm(), basis @ torch.diag(lam) @ basis.T
        self.sqrt = basis @ torch.diag(lam.sqrt()) @ basis.T
        self.whiten = basis @ torch.diag(lam.rsqrt()) @ basis.T
        self.shape = (d,)
        self.dtype = torch.float64  # cheap, and keeps round-off far below the sampling noise
        self.denoiser = gaussian_denoiser(self.mu, self.sigma)
        self.description = {"d": d, "eigenvalues": list(eigenvalues)}

    def exact(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, *self.shape, generator=generator, dtype=self.dtype)
        return self.mu + z @ self.sqrt

    def errors(self, x: torch.Tensor) -> dict[str, float]:
        white = (x.to(torch.float64) - self.mu) @ self.whiten
        d = white.shape[1]
        cov = torch.cov(white.T)
        eye = torch.eye(d, dtype=torch.float64)
        return {"error": float(torch.linalg.matrix_norm(cov - eye) / math.sqrt(d)),
                "mean_error": float(white.mean(0).norm() / math.sqrt(d))}


class GRFProblem:
    """Periodic Gaussian random field with ``P(k) = k^-alpha`` and its Fourier-diagonal denoiser."""

    name = "grf"
    metric = "log_spectral_distance"

    def __init__(self, dims: int, n: int, alpha: float):
        self.dims, self.shape, self.dtype = dims, (n,) * dims, torch.float32
        self.axes = tuple(range(1, dims + 1))
        freqs = torch.meshgrid(*[torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)] * dims,
                               indexing="ij")
        k = torch.sqrt(sum(f**2 for f in freqs))
        power = torch.where(k > 0, k.clamp(min=1.0) ** -alpha, torch.zeros_like(k))
        power = power / power.mean()  # Parseval: mean power per mode = variance per point = 1
        self.power = power[..., : n // 2 + 1]  # the rfft half
        self.true_spectrum = self._shell_mean(power.numpy() / power.numel())
        self.description = {"dims": dims, "n": n, "alpha": alpha}

    def _shell_mean(self, modes: np.ndarray) -> np.ndarray:
        # Expected output of power_spectrum(): its mode normalisation |FFT|^2 / N^2 is P(k) / N
        # for a field with orthonormal-FFT variance P(k); averaged over the same |k| shells.
        n = self.shape[0]
        grids = np.meshgrid(*[np.fft.fftfreq(n, d=1.0 / n)] * self.dims, indexing="ij")
        shell = np.rint(np.sqrt(sum(g**2 for g in grids))).astype(int).ravel()
        counts = np.bincount(shell, minlength=n // 2 + 1)[1 : n // 2 + 1]
        sums = np.bincount(shell, weights=modes.ravel(), minlength=n // 2 + 1)[1 : n // 2 + 1]
        return sums / np.maximum(counts, 1)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfftn(x, dim=self.axes, norm="ortho")
        s2 = sigma.to(torch.float64).reshape(-1, *[1] * self.dims) ** 2
        wiener = (self.power / (self.power + s2)).to(spectrum.real.dtype)  # Wiener filter
        return torch.fft.irfftn(spectrum * wiener, s=self.shape, dim=self.axes, norm="ortho")

    def exact(self, count: int, generator: torch.Generator) -> torch.Tensor:
        white = torch.randn(count, *self.shape, generator=generator, dtype=self.dtype)
        spectrum = torch.fft.rfftn(white, dim=self.axes, norm="ortho")
        amplitude = self.power.sqrt().to(spectrum.real.dtype)
        return torch.fft.irfftn(spectrum * amplitude, s=self.shape, dim=self.axes, norm="ortho")

    def errors(self, x: torch.Tensor) -> dict[str, float]:
        _, spectrum = power_spectrum(x.numpy(), dims=self.dims)
        return {"error": log_spectral_distance(spectrum, self.true_spectrum)}


def run_sampler(problem, method: str, steps: int, count: int, seed: int) -> torch.Tensor:
    settings = sampler_settings(method)
    noise = torch.randn(count, *problem.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=problem.dtype)
    table = {k: settings[k] for k in ("sigma_min", "rho") if k in settings}
    return sample(problem.denoiser, noise, method=method, steps=steps,
                  schedule=settings["schedule"], generator=torch.Generator().manual_seed(seed + 1),
                  **{**settings["opts"], **table})  # --sigma-min/--rho win over the config's opts


def summarise(per_replicate: list[dict[str, float]]) -> dict:
    out = {}
    for key in per_replicate[0]:
        values = [r[key] for r in per_replicate]
        out[key] = statistics.fmean(values)
        out[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        if key == "error":
            out["errors"] = [round(v, 6) for v in values]
    return out


def study(problem, count: int, replicates: int, methods: list[str], emit) -> list[dict]:
    seeds = [1000 * (r + 1) for r in range(replicates)]
    base = {"benchmark": "nfe_quality", "problem": problem.name, "metric": problem.metric,
            "n_samples": count, "replicates": replicates, **problem.description}
    rows = []
    exact = [problem.errors(problem.exact(count, torch.Generator().manual_seed(s + 7))) for s in seeds]
    rows.append(emit({**base, "sampler": "exact", "nfe": 0, **summarise(exact)}))
    runs = [(m, steps_for(m, nfe), nfe) for m in methods for nfe in NFE_TARGETS]
    runs.append((REFERENCE[0], REFERENCE[1], REFERENCE[1]))
    for method, steps, target in runs:
        start = time.perf_counter()
        results = [problem.errors(run_sampler(problem, method, steps, count, s)) for s in seeds]
        rows.append(emit({**base, "sampler": method, **sampler_settings(method), "steps": steps,
                          "nfe": evaluations(method, steps), "nfe_target": target,
                          "reference": (method, steps) == REFERENCE, **summarise(results),
                          "seconds": round(time.perf_counter() - start, 2)}))
    return rows


def recommend(rows: list[dict], methods: list[str]) -> list[dict]:
    """Per sampler, the fewest NFE whose error is within the noise level of DDPM-1000's on every
    problem studied (None when no NFE tried qualifies)."""
    problems = sorted({r["problem"] for r in rows})
    threshold = {}
    for p in problems:
        noise = next(r for r in rows if r["problem"] == p and r["sampler"] == "exact")
        ref = next(r for r in rows if r["problem"] == p and r.get("reference"))
        threshold[p] = {"ddpm1000": ref["error"], "noise": noise["error"],
                        "limit": ref["error"] + noise["error"]}
    out = []
    for method in methods:
        ok = []
        for nfe_target in NFE_TARGETS:
            found = [r for r in rows if r["sampler"] == method and r.get("nfe_target") == nfe_target
                     and not r.get("reference")]
            if found and all(r["error"] <= threshold[r["problem"]]["limit"] for r in found) \
                    and {r["problem"] for r in found} == set(problems):
                ok.append(found[0]["nfe"])
        out.append({"benchmark": "nfe_quality", "recommendation": method,
                    "fewest_nfe_matching_ddpm1000": min(ok) if ok else None,
                    "steps": steps_for(method, min(ok)) if ok else None,
                    "rule": "error <= DDPM-1000 error + noise level (exact samples, same count), "
                            "on every problem", "thresholds": threshold,
                    "karras_overrides": dict(KARRAS_OVERRIDES)})
    return out


def plot(rows: list[dict], methods: list[str], paths: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sciddpm.files import atomic_path

    problems = [p for p in ("gaussian", "grf") if any(r["problem"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(problems), figsize=(6.2 * len(problems), 4.6), squeeze=False)
    titles = {"gaussian": "Gaussian N(mu, Sigma): whitened covariance error",
              "grf": "Gaussian random field: log-spectral distance"}
    for ax, problem in zip(axes[0], problems):
        mine = [r for r in rows if r["problem"] == problem]
        noise = next(r for r in mine if r["sampler"] == "exact")
        ref = next(r for r in mine if r.get("reference"))
        for method in methods:
            pts = sorted((r["nfe"], r["error"], r["error_sd"]) for r in mine
                         if r["sampler"] == method and not r.get("reference"))
            nfe, err, sd = (np.array(v) for v in zip(*pts))
            ax.errorbar(nfe, err, yerr=sd, marker="o", ms=4, capsize=2, label=method)
        ax.axhline(ref["error"], color="k", ls="--", lw=1.2, label="DDPM, 1000 NFE")
        ax.axhline(ref["error"] + noise["error"], color="k", ls=":", lw=1,
                   label="DDPM-1000 + noise level (match limit)")
        low, high = noise["error"] - 2 * noise["error_sd"], noise["error"] + 2 * noise["error_sd"]
        ax.axhspan(max(low, 1e-9), high, color="0.8", alpha=0.6,
                   label="exact samples (noise), mean +/- 2 sd")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(NFE_TARGETS)
        ax.set_xticklabels([str(n) for n in NFE_TARGETS])
        ax.set_xlabel("denoiser evaluations (NFE)")
        ax.set_ylabel(mine[0]["metric"].replace("_", " "))
        desc = {k: mine[0][k] for k in ("d", "eigenvalues", "dims", "n", "alpha") if k in mine[0]}
        ax.set_title(f"{titles[problem]}\n{desc}, {mine[0]['n_samples']} samples x "
                     f"{mine[0]['replicates']} ensembles", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if KARRAS_OVERRIDES:
        fig.suptitle(f"Karras tables with {KARRAS_OVERRIDES} (configs otherwise)", fontsize=10)
    fig.tight_layout()
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", choices=["gaussian", "grf"], default=["gaussian", "grf"])
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    parser.add_argument("--replicates", type=int, default=3, help="independent ensembles per figure")
    parser.add_argument("--gaussian-d", type=int, default=16)
    parser.add_argument("--eigenvalues", type=float, nargs=2, default=(0.2, 2.0),
                        help="range of Sigma's eigenvalues (as tests/test_samplers.py)")
    parser.add_argument("--gaussian-samples", type=int, default=65536)
    parser.add_argument("--grf-dims", type=int, choices=[2, 3], default=3)
    parser.add_argument("--grf-n", type=int, default=32, help="grid points per axis")
    parser.add_argument("--alpha", type=float, default=2.5, help="spectral index: P(k) = k^-alpha")
    parser.add_argument("--grf-samples", type=int, default=64)
    parser.add_argument("--sigma-min", type=float, default=None,
                        help="override sigma_min of Karras tables (default: each sampler preset's, "
                             "e.g. 0.03 for dpmpp_2m, else 0.002)")
    parser.add_argument("--rho", type=float, default=None,
                        help="override rho of Karras tables (default: each sampler preset's, e.g. 1000 for "
                             "dpmpp_2m, else 7; large = log-uniform)")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines (dated) here")
    parser.add_argument("--plot", type=Path, nargs="*", default=None,
                        help="PNG path(s); default benchmarks/results/nfe_quality.png and "
                        "docs/img/nfe_quality.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.replicates < 2:
        parser.error("--replicates must be >= 2 (the noise level needs a spread)")

    methods = args.samplers or list(SAMPLERS.names())
    KARRAS_OVERRIDES.update({k: v for k, v in (("sigma_min", args.sigma_min), ("rho", args.rho))
                             if v is not None})
    date = datetime.date.today().isoformat()
    lines: list[str] = []

    def emit(row: dict) -> dict:
        line = json.dumps({**row, "date": date, "torch": torch.__version__,
                           "threads": torch.get_num_threads()})
        print(line, flush=True)
        lines.append(line)
        return row

    rows: list[dict] = []
    for name in args.problems:
        if name == "gaussian":
            problem = GaussianProblem(args.gaussian_d, tuple(args.eigenvalues))
            rows += study(problem, args.gaussian_samples, args.replicates, methods, emit)
        else:
            problem = GRFProblem(args.grf_dims, args.grf_n, args.alpha)
            rows += study(problem, args.grf_samples, args.replicates, methods, emit)
    for row in recommend(rows, methods):
        emit(row)
    if args.out is not None:
        from bench_nets import append_jsonl

        append_jsonl(args.out, lines)
    if not args.no_plot:
        root = Path(__file__).resolve().parents[1]
        paths = args.plot or [root / "benchmarks/results/nfe_quality.png",
                              root / "docs/img/nfe_quality.png"]
        plot(rows, methods, paths)


if __name__ == "__main__":
    main()
