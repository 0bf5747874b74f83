"""Ensemble scores on labelled fields, with WeatherBench2's definitions.

What this module owns, and the definition each function follows:

* ``area_weights`` - WeatherBench2's latitude weights (``metrics.get_lat_weights``): the area of
  each latitude band between the midpoints of neighbouring grid latitudes (on a global grid the
  outermost bands reach the poles; on a regional one they end half a spacing beyond the last
  rows), ``sin(upper) - sin(lower)``, normalised to mean 1 over the latitudes. On a
  regular grid this is cos(latitude) up to O(dlat^2), and it keeps a non-zero weight for the
  polar rows of the 721-point grid, where cos(latitude) is 0.
* ``crps`` - the ensemble CRPS ``E|X - y| - 1/2 E|X - X'|`` (Gneiting & Raftery 2007). The fair
  (unbiased, Ferro 2014) form estimates ``E|X - X'|`` with the ``M (M - 1)`` distinct pairs; the
  pair sum is computed from the sorted members, ``sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1)
  x_(i)`` (Zamo & Naveau 2018, as in WeatherBench2's ``CRPSSpread``): O(M log M) per point.
* ``spread_skill`` - WeatherBench-X's ``UnbiasedSpreadSkillRatio``: ``sqrt(mean var / mean
  unbiased MSE)`` where ``var`` is the member variance (ddof=1) and the unbiased MSE of the
  ensemble mean is ``(mean - y)^2 - var / M``. A perfect M-member ensemble has ratio 1 in
  expectation; it equals in expectation Fortin et al. (2014)'s correction of spread / RMSE by
  ``sqrt((M + 1) / M)``. ``debiased=False`` gives the plain ratio sqrt(mean var) / RMSE, which
  is ``sqrt(M / (M + 1))`` for a perfect ensemble.
* ``rmse`` - ``sqrt`` of the area-weighted mean squared error over all reduced dims (cases
  included: WeatherBench2 recommends averaging MSE over time before the root), of the ensemble
  mean when given an ensemble.
* ``rank_histogram`` - counts of the truth's rank among the members, M + 1 bins, ties broken at
  random (seeded) so that discrete or clipped fields do not pile up in the lowest bin.
* ``zonal_power_spectrum`` - WeatherBench2's ``ZonalEnergySpectrum`` per latitude circle,
  ``S[0] = |F[0]|^2``, ``S[k] = 2 |F[k]|^2`` with ``F = DFT / L``, averaged over a latitude band.

Conventions: inputs are xarray (DataArray or Dataset, dims by name; a Dataset is scored per
variable) or numpy arrays (``member_dim`` is then the member axis, default 0). Points where the
truth is NaN are excluded from every mean (their weight is zero, never a zero score); pointwise
NaN in an ensemble at a point where the truth is finite propagates into the result, as in
WeatherBench2, so a broken forecast cannot hide. ``reduce_dims=None`` averages over all dims;
pass e.g. ``("latitude", "longitude")`` to keep one score per case. Only numpy and xarray here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

EARTH_RADIUS_KM = 6371.0  # WeatherBench2's schema.EARTH_RADIUS_M / 1000
Labelled = xr.DataArray | xr.Dataset


# --------------------------------------------------------------------------- weights
def area_weights(latitude: Any) -> np.ndarray | xr.DataArray:
    """Cell-area weights for grid latitudes in degrees (any order), mean 1 over the latitudes.

    A DataArray of latitudes gives a DataArray on the same dim (so it broadcasts by name);
    anything else gives a numpy array in the input's order.
    """
    lat = np.asarray(latitude, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2 or not np.isfinite(lat).all() or np.abs(lat).max() > 90:
        raise ValueError(f"area_weights needs a 1-D array of at least two finite latitudes in [-90, 90] degrees, "
                         f"got shape {lat.shape} with range [{np.nanmin(lat):g}, {np.nanmax(lat):g}]")
    order = np.argsort(lat)
    ascending = np.deg2rad(lat[order])
    if (np.diff(ascending) <= 0).any():
        raise ValueError("area_weights: latitudes repeat; each grid row needs its own latitude")
    half_south, half_north = (ascending[1] - ascending[0]) / 2, (ascending[-1] - ascending[-2]) / 2
    south, north = ascending[0] - half_south, ascending[-1] + half_north
    # a grid whose last row lies within a spacing of the pole is global there: its band reaches the
    # pole (WeatherBench2's rule, exact for grids with pole rows and for equiangular ones)
    south = -np.pi / 2 if south - half_south <= -np.pi / 2 else south
    north = np.pi / 2 if north + half_north >= np.pi / 2 else north
    bounds = np.concatenate([[south], (ascending[:-1] + ascending[1:]) / 2, [north]])
    weights = np.empty_like(lat)
    weights[order] = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    weights /= weights.mean()
    if isinstance(latitude, xr.DataArray):
        return xr.DataArray(weights, dims=latitude.dims, coords=latitude.coords, name="area_weight")
    return weights


# --------------------------------------------------------------------------- input handling
def _labelled_pair(ensemble: Any, truth: Any, member_dim: str | int | None):
    """(ensemble, truth, member_dim, numpy_input): numpy arrays become DataArrays on axis_<i> dims."""
    if isinstance(ensemble, (xr.DataArray, xr.Dataset)):
        if not isinstance(truth, (xr.DataArray, xr.Dataset)):
            raise TypeError(f"ensemble is {type(ensemble).__name__} but truth is {type(truth).__name__}; "
                            "pass both as xarray or both as numpy arrays")
        return ensemble, truth, member_dim, False
    ens, y = np.asarray(ensemble, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    dims = tuple(f"axis_{i}" for i in range(y.ndim))
    if member_dim is None:  # deterministic prediction (rmse)
        if ens.shape != y.shape:
            raise ValueError(f"prediction shape {ens.shape} differs from truth shape {y.shape}")
        return xr.DataArray(ens, dims=dims), xr.DataArray(y, dims=dims), None, True
    axis = 0 if isinstance(member_dim, str) else int(member_dim)
    ens = np.moveaxis(ens, axis, 0)
    if ens.shape[1:] != y.shape:
        raise ValueError(f"ensemble shape without the member axis {axis} is {ens.shape[1:]}, truth shape is "
                         f"{y.shape}; they must match (pass member_dim=<axis> for another member axis)")
    return xr.DataArray(ens, dims=("member", *dims)), xr.DataArray(y, dims=dims), "member", True


def _labelled_weights(weights: Any, truth: xr.DataArray | xr.Dataset, numpy_input: bool):
    if weights is None:
        return None
    if numpy_input:
        shape = tuple(truth.shape)
        try:
            return xr.DataArray(np.broadcast_to(np.asarray(weights, dtype=np.float64), shape), dims=truth.dims)
        except ValueError:
            raise ValueError(f"weights of shape {np.shape(weights)} do not broadcast to truth shape {shape}") from None
    if not isinstance(weights, xr.DataArray):
        raise TypeError("weights for xarray inputs must be a DataArray with named dims, e.g. "
                        "area_weights(truth.latitude)")
    return weights


def _reduce_names(reduce_dims: Any, numpy_input: bool) -> tuple | None:
    if reduce_dims is None:
        return None
    names = (reduce_dims,) if isinstance(reduce_dims, (str, int)) else tuple(reduce_dims)
    if numpy_input:
        return tuple(f"axis_{int(d)}" if not isinstance(d, str) else d for d in names)
    return names


def _per_variable(fn: Callable[..., xr.DataArray], ens: Labelled, truth: Labelled, *args) -> Labelled:
    """Apply ``fn(ens_da, truth_da, *args)`` to a DataArray pair, or to each variable of a Dataset."""
    if isinstance(ens, xr.DataArray):
        if not isinstance(truth, xr.DataArray):
            raise TypeError("ensemble is a DataArray, truth is not; pass truth[name]")
        return fn(ens, truth, *args)
    if not isinstance(truth, xr.Dataset):
        raise TypeError("ensemble is a Dataset, truth is not; pass both as Datasets")
    missing = [v for v in ens.data_vars if v not in truth.data_vars]
    if missing:
        raise ValueError(f"truth lacks variables {missing}; it has {sorted(map(str, truth.data_vars))}")
    return xr.Dataset({name: fn(ens[name], truth[name], *args) for name in ens.data_vars})


def _check_pair(ens: xr.DataArray, truth: xr.DataArray, member_dim: str | None) -> None:
    name = ens.name if ens.name is not None else "field"
    if member_dim is not None and member_dim not in ens.dims:
        raise ValueError(f"{name}: member dim {member_dim!r} not among ensemble dims {tuple(ens.dims)}; "
                         "pass member_dim=")
    if member_dim is not None and member_dim in truth.dims:
        raise ValueError(f"{name}: truth has the member dim {member_dim!r}; truth is one field per point")
    extra = set(truth.dims) - set(ens.dims)
    if extra:
        raise ValueError(f"{name}: truth has dims {sorted(map(str, extra))} that the ensemble lacks")
    try:
        xr.align(ens, truth, join="exact")
    except ValueError as err:
        raise ValueError(f"{name}: ensemble and truth coordinates differ ({err}); put the truth on the "
                         "ensemble's grid first, e.g. truth.reindex_like(ensemble)") from None


def _weighted_mean(score: xr.DataArray, valid: xr.DataArray, weights: xr.DataArray | None,
                   reduce_dims: tuple | None) -> xr.DataArray:
    """Weighted mean of ``score`` over ``reduce_dims`` where ``valid``; NaN in valid points propagates."""
    dims = tuple(score.dims) if reduce_dims is None else tuple(reduce_dims)
    unknown = [d for d in dims if d not in score.dims]
    if unknown:  # a mistyped name must not quietly leave that dim unreduced
        raise ValueError(f"reduce_dims {[str(d) for d in unknown]} not among the score's dims {tuple(score.dims)}")
    valid = valid.broadcast_like(score)
    if weights is None:
        w = xr.ones_like(score, dtype=np.float64)
    else:
        outside = set(weights.dims) - set(score.dims)
        if outside:
            raise ValueError(f"weights have dims {sorted(map(str, outside))} that the score lacks {tuple(score.dims)}")
        for d in (d for d in weights.dims if d in weights.indexes and d in score.indexes):
            have, want = weights.indexes[d], score.indexes[d]
            if not have.equals(want):  # other order: matched by label; fewer labels: named
                missing = want.difference(have)
                if len(missing):
                    raise ValueError(f"weights have no value at {d} {', '.join(map(str, missing[:5]))}"
                                     f"{' ...' if len(missing) > 5 else ''}; give one for every {d} of the score "
                                     f"(e.g. area_weights(score.{d}))")
                weights = weights.sel({d: want})
        w = weights.astype(np.float64).broadcast_like(score)
    w = w.where(valid, 0.0)
    total = (score.where(valid, 0.0) * w).sum(dims, skipna=False)
    return total / w.sum(dims)


# --------------------------------------------------------------------------- scores
def _pointwise_crps(ens: xr.DataArray, truth: xr.DataArray, member_dim: str, fair: bool) -> xr.DataArray:
    m = ens.sizes[member_dim]
    if fair and m < 2:
        raise ValueError("the fair CRPS needs at least 2 members; use fair=False for a single member (the MAE)")
    coefficient = 2.0 * np.arange(1, m + 1) - m - 1  # sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)
    pairs = m * (m - 1) if fair else m * m

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        skill = np.abs(x - y[..., None]).mean(axis=-1)
        half_pair_sum = (np.sort(x, axis=-1) * coefficient).sum(axis=-1)  # NaN sorts last and propagates
        return skill - half_pair_sum / pairs

    return xr.apply_ufunc(kernel, ens, truth, input_core_dims=[[member_dim], []], join="exact")


def crps(ensemble: Any, truth: Any, member_dim: str | int = "member", weights: Any = None, fair: bool = True,
         reduce_dims: Sequence | str | int | None = None) -> Any:
    """Ensemble CRPS (fair by default), area-weighted mean over ``reduce_dims`` (default: all dims).

    ``reduce_dims=()`` returns the pointwise score (NaN where the truth is NaN).
    """
    ens, y, member_dim, numpy_input = _labelled_pair(ensemble, truth, member_dim)
    weights = _labelled_weights(weights, y, numpy_input)
    dims = _reduce_names(reduce_dims, numpy_input)

    def score(e: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        _check_pair(e, t, member_dim)
        pointwise = _pointwise_crps(e, t, member_dim, fair)
        if dims == ():
            return pointwise.where(t.notnull())
        return _weighted_mean(pointwise, t.notnull(), weights, dims)

    result = _per_variable(score, ens, y)
    return result.values if numpy_input else result


def spread_skill(ensemble: Any, truth: Any, member_dim: str | int = "member", weights: Any = None,
                 reduce_dims: Sequence | str | int | None = None, debiased: bool = True) -> Any:
    """Spread/skill ratio: sqrt(mean member variance) over the skill of the ensemble mean (see module doc).

    Debiased, it is NaN when the unbiased MSE estimate is not positive: over too few points the
    ensemble mean's error cannot be told apart from its sampling noise.
    """
    ens, y, member_dim, numpy_input = _labelled_pair(ensemble, truth, member_dim)
    weights = _labelled_weights(weights, y, numpy_input)
    dims = _reduce_names(reduce_dims, numpy_input)

    def score(e: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        _check_pair(e, t, member_dim)
        m = e.sizes[member_dim]
        if m < 2:
            raise ValueError("spread/skill needs at least 2 members (the spread of one member is undefined)")
        variance = e.var(member_dim, ddof=1, skipna=False)
        squared_error = (e.mean(member_dim, skipna=False) - t) ** 2
        if debiased:
            squared_error = squared_error - variance / m
        valid = t.notnull()
        return np.sqrt(_weighted_mean(variance, valid, weights, dims)
                       / _weighted_mean(squared_error, valid, weights, dims))

    result = _per_variable(score, ens, y)
    return result.values if numpy_input else result


def rmse(prediction: Any, truth: Any, weights: Any = None, member_dim: str | int | None = "member",
         reduce_dims: Sequence | str | int | None = None) -> Any:
    """Area-weighted RMSE; of the ensemble mean when ``prediction`` has the member dim (axis).

    For numpy inputs the prediction is an ensemble when it has one axis more than the truth.
    """
    if not isinstance(prediction, (xr.DataArray, xr.Dataset)) and np.ndim(prediction) == np.ndim(truth):
        member_dim = None
    ens, y, member_dim, numpy_input = _labelled_pair(prediction, truth, member_dim)
    weights = _labelled_weights(weights, y, numpy_input)
    dims = _reduce_names(reduce_dims, numpy_input)

    def score(p: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        ensemble_member_dim = member_dim if member_dim in p.dims else None
        _check_pair(p, t, ensemble_member_dim)
        if ensemble_member_dim is not None:
            p = p.mean(ensemble_member_dim, skipna=False)
        return np.sqrt(_weighted_mean((p - t) ** 2, t.notnull(), weights, dims))

    result = _per_variable(score, ens, y)
    return result.values if numpy_input else result


def rank_histogram(ensemble: Any, truth: Any, member_dim: str | int = "member", seed: int = 0) -> Any:
    """Counts of the truth's rank among the M members (M + 1 bins), over all points with finite truth.

    A tie between the truth and k members puts the truth at a uniformly drawn one of the k + 1
    tied positions (``numpy.random.default_rng(seed)``). Returns a numpy array for numpy input, a
    DataArray on dim ``rank`` for a DataArray, a Dataset of those for a Dataset.
    """
    ens, y, member_dim, numpy_input = _labelled_pair(ensemble, truth, member_dim)
    rng = np.random.default_rng(seed)

    def counts(e: xr.DataArray, t: xr.DataArray) -> xr.DataArray:
        _check_pair(e, t, member_dim)
        m = e.sizes[member_dim]
        valid = t.notnull().broadcast_like(e.isel({member_dim: 0}, drop=True))
        broken = int((e.isnull().any(member_dim) & valid).sum())
        if broken:
            raise ValueError(f"{e.name or 'ensemble'}: members are NaN at {broken} points where the truth is "
                             "finite; a rank is undefined there")
        below = (e < t).sum(member_dim).transpose(*valid.dims).values
        ties = (e == t).sum(member_dim).transpose(*valid.dims).values
        rank = below + np.floor(rng.random(below.shape) * (ties + 1)).astype(np.int64)
        hist = np.bincount(rank[valid.values], minlength=m + 1)
        return xr.DataArray(hist, dims="rank", coords={"rank": np.arange(m + 1)})

    result = _per_variable(counts, ens, y)
    return result.values if numpy_input else result


# --------------------------------------------------------------------------- spectra
def _circle_power(x: np.ndarray) -> np.ndarray:
    """One-sided power along the last axis; sums to the mean square of the circle (Parseval)."""
    n = x.shape[-1]
    power = np.abs(np.fft.rfft(x, axis=-1, norm="forward")) ** 2
    power[..., 1:] *= 2.0  # +k and -k
    if n % 2 == 0:
        power[..., -1] /= 2.0  # the Nyquist mode has no partner
    return power


def zonal_power_spectrum(field: Labelled, lon_dim: str = "longitude", lat_dim: str = "latitude",
                         lat_band: tuple[float, float] | None = None, energy: bool = False) -> Labelled:
    """Zonal spectrum per latitude circle, averaged over the circles in ``lat_band`` (degrees, inclusive).

    Wavenumber ``zonal_wavenumber`` k = 0..L//2 in cycles per circle; coord ``wavelength_km`` is the
    band's mean circumference / k. The power sums over k to the circle's mean square
    (Parseval; WeatherBench2 counts the Nyquist mode twice, we count it once). ``energy=True``
    multiplies by the circumference in metres, WeatherBench2's ``ZonalEnergySpectrum`` (units m x
    field units^2), so that the sum is the integral of f^2 along the circle. Circles holding NaN
    (masked fields) are left out of the average; ``attrs["latitude_circles"]`` says how many were
    averaged at most. Other dims (case, member, level) are kept.
    """
    if isinstance(field, xr.Dataset):
        return xr.Dataset({name: zonal_power_spectrum(field[name], lon_dim, lat_dim, lat_band, energy)
                           for name in field.data_vars})
    if not isinstance(field, xr.DataArray):
        raise TypeError("zonal_power_spectrum needs an xarray DataArray/Dataset with latitude and longitude dims; "
                        "wrap numpy arrays with xr.DataArray(x, dims=..., coords={'latitude': ...})")
    for dim in (lon_dim, lat_dim):
        if dim not in field.dims:
            raise ValueError(f"{dim!r} is not a dim of the field {tuple(field.dims)}; pass lon_dim=/lat_dim=")
    if lon_dim in field.coords and field.sizes[lon_dim] > 1:
        lon = np.asarray(field[lon_dim], dtype=np.float64)
        step = np.diff(lon)
        if np.abs(step - step[0]).max() > 1e-3 or abs(abs(step[0]) * lon.size - 360.0) > 1e-3:
            raise ValueError("zonal_power_spectrum needs longitudes evenly spaced around the full circle; "
                             f"got {lon.size} longitudes from {lon[0]:g} to {lon[-1]:g}")
    if lat_band is not None:
        lo, hi = sorted(lat_band)
        field = field.isel({lat_dim: (field[lat_dim].values >= lo) & (field[lat_dim].values <= hi)})
        if field.sizes[lat_dim] == 0:
            raise ValueError(f"no latitude of the field lies in lat_band={lat_band}")
    n = field.sizes[lon_dim]
    power = xr.apply_ufunc(_circle_power, field, input_core_dims=[[lon_dim]],
                           output_core_dims=[["zonal_wavenumber"]])
    circumference_km = 2 * np.pi * EARTH_RADIUS_KM * np.cos(np.deg2rad(field[lat_dim].astype(np.float64)))
    if energy:
        power = power * circumference_km * 1000.0
    spectrum = power.mean(lat_dim, skipna=True)
    k = np.arange(n // 2 + 1)
    with np.errstate(divide="ignore"):
        wavelength = float(circumference_km.mean()) / k
    units = field.attrs.get("units")
    spectrum = spectrum.assign_coords(zonal_wavenumber=k, wavelength_km=("zonal_wavenumber", wavelength))
    spectrum.attrs = {"latitude_circles": int(field.sizes[lat_dim]),
                      "long_name": f"zonal {'energy' if energy else 'power'} spectrum of {field.name or 'field'}"}
    if units:
        squared = f"{units}^2" if str(units).isalnum() else f"({units})^2"
        spectrum.attrs["units"] = f"m {squared}" if energy else squared
    return spectrum.rename(field.name)
