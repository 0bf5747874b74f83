"""Summaries of surrogate ensembles, and their comparison with reference (solver) ensembles.

``summarise`` reduces the member dim of an ensemble Dataset to a new leading dim ``statistic``
labelled ``mean``, ``std`` (ddof=1) and ``q<quantile>`` (``q0.05``, ``q0.5``, ...). Every
statistic has the variable's units, so each variable keeps its name, attributes and other dims,
and ``summary.sel(statistic="std")`` reads like the data. Variables without the member dim
(static fields) are carried over unchanged; per-member flags that are not numbers (an ensemble
store's ``done``) are left out, so the summary has no member dim left. A store whose ``done``
flags say members are missing (a run still going, or killed) is refused, by ``compare`` too: its
empty members would turn every statistic of their case into NaN.

``compare`` answers "does the surrogate reproduce the solver at these parameters?" per variable,
as plain JSON-able numbers: the RMSE between the two ensemble-mean fields (absolute and over the
reference's spread, with the value a perfect surrogate would score, ``sqrt(1/M_ens + 1/M_ref)``,
beside it: two ensembles of the same distribution differ by their sampling noise), the ratio of
the ensembles' standard deviations (root of the mean
within-case member variance), the ratio of radially averaged power spectra of the fields
(``sciddpm.metrics.spectra.power_spectrum``, full fields, the k = 0 mean left out) summed over
wavenumber bands, and the Wasserstein-1 distance between the pooled marginal distributions.
Both ensembles must be at the same cases: coordinates along ``case`` that both carry (the
parameters) must agree. Non-finite results are written as ``None``, so ``json.dumps`` gives strict JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from scipy.stats import wasserstein_distance

from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum

BAND_NAMES = {1: ("all",), 2: ("low", "high"), 3: ("low", "mid", "high")}


def summarise(ens: xr.Dataset, member_dim: str = "member",
              quantiles: Sequence[float] = (0.05, 0.5, 0.95)) -> xr.Dataset:
    """Mean, std (ddof=1) and quantiles over ``member_dim``, stacked along a new dim ``statistic``."""
    if not isinstance(ens, xr.Dataset):
        raise TypeError(f"summarise needs an xarray Dataset, got {type(ens).__name__} (use da.to_dataset())")
    quantiles = [float(q) for q in quantiles]
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    if member_dim not in ens.dims:
        raise ValueError(f"member dim {member_dim!r} not among the dataset's dims {tuple(ens.dims)}; pass member_dim=")
    m = ens.sizes[member_dim]
    if m < 2:
        raise ValueError(f"summarise needs at least 2 members for a standard deviation, got {m}")
    _check_complete(ens)
    labels = ["mean", "std", *[f"q{q:g}" for q in quantiles]]
    out = {}
    for name, da in ens.data_vars.items():
        if member_dim not in da.dims:
            out[name] = da
            continue
        if not _is_number(da):  # a per-member flag: nothing to summarise
            continue
        parts = [da.mean(member_dim, skipna=False), da.std(member_dim, ddof=1, skipna=False)]
        if quantiles:
            q = da.quantile(quantiles, dim=member_dim, skipna=False).drop_vars("quantile")
            parts += [q.isel(quantile=i) for i in range(len(quantiles))]
        stacked = xr.concat(parts, dim="statistic", coords="minimal", compat="override")
        out[name] = stacked.assign_attrs(da.attrs)
    summary = xr.Dataset(out, attrs={**ens.attrs, "members_summarised": m})
    return summary.assign_coords(statistic=labels)


def compare(ens: xr.Dataset, reference: xr.Dataset, member_dim_ens: str = "member",
            member_dim_ref: str = "member", spatial_dims: Sequence[str] | None = None,
            bands: int | Mapping[str, tuple[float, float]] = 3) -> dict[str, dict[str, Any]]:
    """Per variable of ``ens``: moments, band power ratios and Wasserstein-1 against ``reference``.

    ``spatial_dims`` (default: every dim but the member dim and ``case``) are the axes of the power
    spectrum. ``bands`` is a number of equal slices of the wavenumber shells (3: low/mid/high) or
    a mapping name -> (k_min, k_max) of shells, inclusive: shell k holds the modes whose |k|
    (cycles per length of the shortest axis) rounds to k, as in :func:`power_spectrum`. A band's
    ratio is that of the sums over its shells of the mean power per mode, so each shell counts
    alike however many modes it holds (not the ratio of the band's variances). Cases (and any other
    non-spatial dims) must have the same coordinates in both datasets; member counts may differ.
    """
    ens, reference = (d.to_dataset() if isinstance(d, xr.DataArray) else d for d in (ens, reference))
    names = [v for v, da in ens.data_vars.items() if _is_number(da)]  # not flags such as a store's done
    missing = [v for v in names if v not in reference.data_vars]
    if missing:
        raise ValueError(f"reference lacks variables {missing}; it has {sorted(map(str, reference.data_vars))}")
    _check_complete(ens)
    _check_same_cases(ens, reference)
    return {str(name): _compare_variable(ens[name], reference[name], member_dim_ens, member_dim_ref,
                                         spatial_dims, bands) for name in names}


def _check_complete(ens: xr.Dataset) -> None:
    """An ensemble store whose ``done`` flags say members are missing is refused: its empty members
    would turn the statistics of their cases into NaN."""
    done = ens.data_vars.get("done")
    if done is not None and done.dtype == bool and not bool(done.all()):
        raise ValueError(f"the ensemble store holds {int(done.sum())} of {done.size} members (its 'done' flags); "
                         "finish it by running the same `sciddpm sample --cases` command again, or use the "
                         "cases that are complete: ens.isel(case=ens.done.all('member').values)")


def _is_number(da: xr.DataArray) -> bool:
    return da.dtype.kind in "fiuc"


def _check_same_cases(ens: xr.Dataset, reference: xr.Dataset) -> None:
    """Coordinates along ``case`` that both carry (e.g. F, k) must agree: scores against solver
    runs at other parameters would be numbers about nothing."""
    if "case" not in ens.dims or "case" not in reference.dims:
        return
    if ens.sizes["case"] != reference.sizes["case"]:
        raise ValueError(f"the ensemble has {ens.sizes['case']} cases and the reference {reference.sizes['case']}; "
                         "compare them at the same cases")
    for name, coord in ens.coords.items():
        if coord.dims != ("case",) or name == "case" or name not in reference.coords:
            continue
        mine, theirs = np.asarray(coord.values), np.asarray(reference[name].values)
        same = np.allclose(mine, theirs, rtol=1e-9) if mine.dtype.kind in "fiu" and theirs.dtype.kind in "fiu" \
            else np.array_equal(mine, theirs)
        if not same:
            raise ValueError(f"the ensemble and the reference are at different {name!r} per case ({mine.tolist()} "
                             f"vs {theirs.tolist()}); put them in the same case order first, e.g. "
                             "reference.sortby(...) or reference.isel(case=[...])")


def _compare_variable(ens: xr.DataArray, ref: xr.DataArray, member_ens: str, member_ref: str,
                      spatial_dims: Sequence[str] | None, bands: Any) -> dict[str, Any]:
    for da, dim, which in ((ens, member_ens, "ensemble"), (ref, member_ref, "reference")):
        if dim not in da.dims:
            raise ValueError(f"{ens.name}: {which} has no member dim {dim!r} (dims {tuple(da.dims)}); "
                             f"pass member_dim_{'ens' if which == 'ensemble' else 'ref'}=")
    spatial = tuple(spatial_dims) if spatial_dims is not None else tuple(
        d for d in ens.dims if d not in (member_ens, "case"))
    for d in spatial:
        if d not in ens.dims or d not in ref.dims or ens.sizes[d] != ref.sizes[d]:
            raise ValueError(f"{ens.name}: spatial dim {d!r} must be in both datasets with one size; ensemble "
                             f"has {dict(ens.sizes)}, reference {dict(ref.sizes)}")
    if not 1 <= len(spatial) <= 3:
        raise ValueError(f"{ens.name}: power spectra need 1 to 3 spatial dims, got {spatial}; pass spatial_dims=")
    try:
        mean_ens, mean_ref = xr.align(ens.mean(member_ens, skipna=False), ref.mean(member_ref, skipna=False),
                                      join="exact")
    except ValueError as err:
        raise ValueError(f"{ens.name}: ensemble and reference are not on the same cases/grid ({err})") from None
    var_ens = float(ens.var(member_ens, ddof=1, skipna=False).mean())  # cells the means see, no others
    var_ref = float(ref.var(member_ref, ddof=1, skipna=False).mean())
    diff = (mean_ens - mean_ref).values
    values_ens, values_ref = ens.values[np.isfinite(ens.values)], ref.values[np.isfinite(ref.values)]
    ref_std = float(values_ref.std())
    w1 = float(wasserstein_distance(values_ens, values_ref))
    result = {
        "mean_rmse": float(np.sqrt(np.nanmean(diff**2))),
        "mean_rmse_over_ref_spread": float(np.sqrt(np.nanmean(diff**2) / var_ref)),
        "mean_rmse_over_ref_spread_if_perfect": float(np.sqrt(1 / ens.sizes[member_ens] + 1 / ref.sizes[member_ref])),
        "std_ensemble": float(np.sqrt(var_ens)),
        "std_reference": float(np.sqrt(var_ref)),
        "std_ratio": float(np.sqrt(var_ens / var_ref)),
        "wasserstein1": w1,
        "wasserstein1_over_ref_std": w1 / ref_std,
        "members": {"ensemble": int(ens.sizes[member_ens]), "reference": int(ref.sizes[member_ref])},
        "spatial_dims": list(map(str, spatial)),
    }
    result.update(_band_power(ens, ref, spatial, bands))
    return {key: _json_number(v) for key, v in result.items()}


def _band_power(ens: xr.DataArray, ref: xr.DataArray, spatial: tuple, bands: Any) -> dict[str, Any]:
    fields = [da.transpose(..., *spatial).values for da in (ens, ref)]
    if not all(np.isfinite(f).all() for f in fields):
        return {"power_ratio": None, "power_ratio_note": "fields hold NaN (masked); the radially averaged "
                "spectrum needs complete fields, so no power ratio is given"}
    (k, p_ens), (_, p_ref) = (power_spectrum(f, dims=len(spatial)) for f in fields)
    shells = np.arange(1, k.size + 1)  # power_spectrum's shells 1..k_max (k holds their mean |k|)
    if isinstance(bands, Mapping):
        ranges = {str(name): (float(lo), float(hi)) for name, (lo, hi) in bands.items()}
    else:
        n = int(bands)
        if not 1 <= n <= k.size:
            raise ValueError(f"bands={bands}: need between 1 and {k.size} bands (the number of wavenumber shells)")
        names = BAND_NAMES.get(n, tuple(f"band{i}" for i in range(n)))
        edges = np.linspace(0, k.size, n + 1).round().astype(int)
        ranges = {name: (float(shells[a]), float(shells[b - 1])) for name, a, b in zip(names, edges[:-1], edges[1:])}
    ratios = {}
    for name, (lo, hi) in ranges.items():
        inside = (shells >= lo) & (shells <= hi)
        if not inside.any():
            raise ValueError(f"band {name!r} = [{lo:g}, {hi:g}] holds no wavenumber shell; the shells are "
                             f"1..{shells[-1]}")
        ratios[name] = {"k_min": lo, "k_max": hi, "ratio": float(p_ens[inside].sum() / p_ref[inside].sum())}
    return {"power_ratio": ratios, "log_spectral_distance": log_spectral_distance(p_ens, p_ref)}


def _json_number(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
