"""Radially averaged power spectra in 1, 2 and 3 dimensions, and spectral slopes.

The isotropic spectrum P(k) bins |FFT|^2 into integer shells of wavenumber |k|, the standard
diagnostic for turbulence, cosmology and Gaussian random fields with P(k) ~ k^-alpha. |k| is in
cycles per length of the grid's shortest axis (cycles per domain on a square or cubic grid), with
one grid spacing along every axis: so a wave of one wavelength lands in one shell whichever way it
points, also on a 32 x 64 grid. Only numpy: metrics must not depend on the rest of sciddpm.
"""

from __future__ import annotations

import numpy as np


def power_spectrum(field: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, P(k)) of ``field`` averaged over its leading axes and over shells of |k|.

    ``field`` has shape [..., *spatial] with ``dims`` spatial axes, the last ones (required: with
    a default of "every axis" a member or case axis would silently join the FFT). ``k`` holds
    the mean |k| of the modes in shells 1..k_max (shell n: n - 1/2 <= |k| < n + 1/2, shell 1 from
    just above 0), in cycles per length of the shortest axis,
    k_max being half its points (the mean, k=0, is left out, and so are the modes beyond k_max in
    the corners of the grid: these shells hold 60-80% of white noise's variance); ``P`` the mean
    power per mode in each shell, normalised so that the sum over all modes equals the field's
    mean square (Parseval).
    """
    field = np.asarray(field, dtype=np.float64)
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 1 <= dims <= field.ndim:
        raise ValueError(f"dims (the number of trailing spatial axes) must be between 1 and field.ndim={field.ndim}, "
                         f"got {dims!r}")
    if not np.isfinite(field).all():
        raise ValueError("power_spectrum needs finite values; mask or fill NaNs explicitly first")
    spatial = field.shape[field.ndim - dims:]
    axes = tuple(range(field.ndim - dims, field.ndim))
    modes = np.abs(np.fft.fftn(field, axes=axes)) ** 2 / float(np.prod(spatial)) ** 2
    modes = modes.reshape(-1, *spatial).mean(axis=0)
    shortest = min(spatial)
    grids = np.meshgrid(*[np.fft.fftfreq(n) * shortest for n in spatial], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    # shells [n - 1/2, n + 1/2), halves rounded up (np.rint rounds them to even: on a 32 x 64 grid
    # |k| = 1.5 and 2.5 both went to shell 2); only the mean is shell 0: a wave longer than the
    # shortest side (|k| = 0.5 on a 32 x 64 grid) is the largest scale there is, in shell 1
    shell = np.floor(radius + 0.5).astype(int).ravel()
    shell[(shell == 0) & (radius.ravel() > 0)] = 1
    k_max = shortest // 2
    counts = np.bincount(shell, minlength=k_max + 1)[1:k_max + 1]
    power = np.bincount(shell, weights=modes.ravel(), minlength=k_max + 1)[1:k_max + 1]
    # the shell's mean |k|, not its integer label: less bias for steep spectra on small grids
    radius_sum = np.bincount(shell, weights=radius.ravel(), minlength=k_max + 1)[1:k_max + 1]
    counts = np.maximum(counts, 1)
    return radius_sum / counts, power / counts


def spectral_slope(k: np.ndarray, power: np.ndarray, k_min: float | None = None,
                   k_max: float | None = None) -> float:
    """Least-squares slope of log P against log k over [k_min, k_max] (e.g. -alpha for k^-alpha)."""
    k, power = np.asarray(k, dtype=float), np.asarray(power, dtype=float)
    keep = (k > 0) & (power > 0)
    if k_min is not None:
        keep &= k >= k_min
    if k_max is not None:
        keep &= k <= k_max
    if keep.sum() < 2:
        raise ValueError("need at least two positive (k, P) points in the fitting range")
    slope, _ = np.polyfit(np.log(k[keep]), np.log(power[keep]), 1)
    return float(slope)


def log_spectral_distance(power_a: np.ndarray, power_b: np.ndarray, top_db: float = 80.0) -> float:
    """Root-mean-square difference of log10 spectra, in bels (0 when identical; 1 = a factor 10
    off; 10x it is the same in dB), over the shells where either spectrum has power within
    ``top_db`` of the pair's strongest shell. Power below that floor is raised to it (as in
    :func:`sciddpm.metrics.mrstft_distance`), so a shell that one spectrum lacks counts as 8
    factors of 10 off, not as a match; shells below it in both are left out, so that a tone's
    spectrum 6 dB down reads 0.6 B, not a tenth of it diluted by its empty shells; two all-zero
    spectra are 0 apart."""
    a, b = np.asarray(power_a, dtype=float), np.asarray(power_b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two spectra of the same non-zero length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and (a >= 0).all() and (b >= 0).all()):
        raise ValueError("spectra must be finite and non-negative")
    peak = max(a.max(), b.max())
    if peak == 0:
        return 0.0
    floor = peak * 10 ** (-top_db / 10)
    heard = (a > floor) | (b > floor)
    a, b = np.maximum(a[heard], floor), np.maximum(b[heard], floor)
    return float(np.sqrt(np.mean((np.log10(a) - np.log10(b)) ** 2)))
