"""Periodic Gaussian random fields with a power-law spectrum, and the ``volume_grf`` dataset.

Convention (exact, so tests and benchmarks can use the true distribution). The box is periodic
with length 1 along every axis and ``N = prod(shape)`` cells; ``n`` is the integer wavenumber
vector of a Fourier mode (``np.fft.fftfreq(size, 1/size)`` per axis, i.e. cycles per box) and
``k = |n|``. A field is

    f = ifftn( fftn(w) * sqrt(S) ),     w = white noise N(0, 1) per cell,
    S(n) = A * k**-alpha for k > 0,     S(0) = 0,     A such that mean(S) = 1.

``S = grf_power(shape, alpha)`` is then exactly the eigenvalue spectrum of the field's covariance
(a circulant matrix): with the orthonormal FFT ``F = fftn(f, norm="ortho")``, ``E|F(n)|^2 = S(n)``.
So ``f`` is a stationary zero-mean Gaussian with ensemble variance ``mean(S) = 1`` at every cell,
its spatial mean is exactly zero (the k = 0 mode is removed), and its radially averaged power
spectrum (``sciddpm.metrics.power_spectrum``) has expectation ``S/N`` in every shell, i.e.
slope ``-alpha``. The Nyquist modes of even sizes keep their weight (``|n|`` is symmetric), so
the field is real without discarding anything. Each field's own sample variance fluctuates
around 1, strongly for steep spectra, because a few large-scale modes carry most of the power.
The exact Gaussian denoiser for a field is ``ifftn(S / (S + sigma^2) * fftn(x))`` (Wiener filter).

``volume_grf`` dataset: field ``i`` depends only on (seed, i): alpha_i ~ U[alpha_min, alpha_max]
and its white noise come from ``np.random.default_rng([seed, i])``. ``write_grf_store`` writes the
shared layout of ``sciddpm.data.simstore`` (variable ``field``, parameter ``alpha``);
``ensure_grf_store`` caches it under ``$SCIDDPM_CACHE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sciddpm.data import simstore
from sciddpm.data.cache import recipe_params

GRF_VERSION = 1  # bump when the recipe changes: it is part of the cache key
DEFAULTS = {"samples": 1024, "size": 16, "alpha_min": 1.5, "alpha_max": 3.5, "seed": 0}
BLOCK = 64  # fields per worker job


def wavenumber(shape: tuple[int, ...]) -> np.ndarray:
    """``|n|`` for every mode of an FFT over ``shape`` (cycles per box, float64)."""
    grids = np.meshgrid(*[np.fft.fftfreq(s, d=1.0 / s) for s in shape], indexing="ij")
    return np.sqrt(sum(g**2 for g in grids))


def grf_power(shape: tuple[int, ...], alpha: float) -> np.ndarray:
    """The per-mode variance ``S(n)`` of the fields (the module docstring): ``k**-alpha``, mean 1, S(0) = 0."""
    shape = tuple(int(s) for s in shape)
    if not shape or min(shape) < 2:
        raise ValueError(f"a random field needs at least 2 cells per axis, got shape {shape}")
    k = wavenumber(shape)
    power = np.zeros(shape)
    power[k > 0] = k[k > 0] ** -float(alpha)
    return power * (power.size / power.sum())


def gaussian_random_field(shape: tuple[int, ...], alpha: float, rng: np.random.Generator) -> np.ndarray:
    """One field (float64) with per-mode variance ``grf_power(shape, alpha)`` from ``rng``'s white noise."""
    shape = tuple(int(s) for s in shape)
    # the real FFT holds the same modes as fftn for a real input: half the work, identical field
    half = np.sqrt(grf_power(shape, alpha)[..., : shape[-1] // 2 + 1])
    white = rng.standard_normal(shape)
    axes = tuple(range(len(shape)))
    return np.fft.irfftn(np.fft.rfftn(white) * half, s=shape, axes=axes)


def grf_params(**overrides: Any) -> dict:
    """The full ``volume_grf`` parameter set (defaults + overrides), validated."""
    p = recipe_params("volume_grf", DEFAULTS, overrides)
    if p["samples"] < 2 or p["size"] < 4:
        raise ValueError(f"volume_grf needs samples >= 2 and size >= 4, got samples={p['samples']}, size={p['size']}")
    if not 0 <= p["alpha_min"] <= p["alpha_max"]:
        raise ValueError(f"volume_grf needs 0 <= alpha_min <= alpha_max, got {p['alpha_min']}, {p['alpha_max']}")
    return p


def grf_alphas(samples: int, alpha_min: float, alpha_max: float, seed: int) -> np.ndarray:
    """alpha of field ``i`` for ``i < samples``: the first draw of ``default_rng([seed, i])``."""
    return np.array([np.random.default_rng([seed, i]).uniform(alpha_min, alpha_max) for i in range(samples)])


def grf_block(start: int, stop: int, params: Mapping[str, np.ndarray], *, size: int, seed: int) -> dict:
    """Fields ``start..stop-1`` of the dataset (the ``simstore`` generator)."""
    out = np.empty((stop - start, size, size, size), dtype=np.float32)
    for j, i in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, i])
        rng.uniform()  # the alpha draw (grf_alphas); the noise comes after it
        out[j] = gaussian_random_field((size,) * 3, float(params["alpha"][j]), rng)
    return {"field": out}


def describe(**params: Any) -> str:
    p = grf_params(**params)
    return (f"{p['samples']} periodic Gaussian random fields of {p['size']}^3 cells with power spectrum "
            f"k^-alpha, alpha uniform in [{p['alpha_min']:g}, {p['alpha_max']:g}], seed {p['seed']}")


def write_grf_store(out: str | Path, *, workers: int | None = None, **params: Any) -> Path:
    """Write the ``volume_grf`` store to ``out`` (zarr, atomically); return the path."""
    p = grf_params(**params)
    alpha = grf_alphas(p["samples"], p["alpha_min"], p["alpha_max"], p["seed"])
    return simstore.build_store(
        out, shape=(p["size"],) * 3,
        fields={"field": {"units": "1", "long_name": "Gaussian random field (ensemble variance 1)"}},
        params={"alpha": (alpha, {"units": "1", "long_name": "power-spectrum exponent: P(k) ~ k^-alpha"})},
        generate=grf_block, options={"size": p["size"], "seed": p["seed"]}, block=BLOCK, workers=workers,
        attrs={"title": "volume_grf: periodic Gaussian random fields", "recipe": "sciddpm.data.grf",
               "recipe_version": GRF_VERSION, "description": describe(**p), "periodic": [True, True, True],
               "convention": "f = ifftn(fftn(white) * sqrt(S)), S = k^-alpha scaled to mean 1, S(0) = 0; "
                             "k = |integer wavenumber| in cycles per box"},
        desc="volume_grf")


def ensure_grf_store(*, workers: int | None = None, **params: Any) -> Path:
    """The cached ``volume_grf`` store for ``params`` (built on first use)."""
    p = grf_params(**params)
    return simstore.ensure_cached("volume_grf", GRF_VERSION, p,
                                  lambda path: write_grf_store(path, workers=workers, **p))
