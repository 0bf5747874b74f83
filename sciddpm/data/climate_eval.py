"""Climate ensemble scores and pictures for ``sciddpm evaluate``, the WeatherBench2 way.

``score_climate_ensemble`` scores an ensemble (dims ``case, member`` and latitude/longitude in
any order and storage direction, optionally ``level``) against the truth of each case, channel
by channel (``2m_temperature``, ``temperature@850``): area-weighted RMSE of the ensemble mean,
fair CRPS, spread/skill ratio and rank-histogram counts (definitions in
``sciddpm.metrics.ensemble``). Given a climatological ensemble for the same cases (members
drawn from the training data, e.g. on the same day of year) it scores that too and reports the
CRPS skill score ``1 - CRPS / CRPS_climatology`` (> 0: the model beats climatology).

Pictures, each written atomically under ``out``:

* ``maps_<variable>.png`` - the first case: truth, ensemble mean, spread (member std) and up to
  three members, one row per level, north up whatever the storage order, NaN (masked) grey;
  truth, mean and members share one colour scale per row.
* ``zonal_spectra.png`` - zonal power spectra between 60S and 60N (poleward circles are too
  short to say much), truth against every member, averaged over cases.
* ``rank_histogram.png`` - rank frequencies per channel against the flat line of a calibrated
  ensemble.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sciddpm.plots import new_figure, save_png
from sciddpm.metrics.ensemble import area_weights, crps, rank_histogram, rmse, spread_skill, zonal_power_spectrum

SPECTRUM_BAND = (-60.0, 60.0)
MAP_MEMBERS = 3


def score_climate_ensemble(ens: xr.Dataset, truth: xr.Dataset, climatology: xr.Dataset | None, out: str | Path,
                           lat: str = "latitude", lon: str = "longitude") -> dict[str, Any]:
    """Scores per channel and the three kinds of PNG; returns ``{"scores": {...}, "files": [paths]}``."""
    out = Path(out)
    _check_inputs(ens, truth, climatology, lat, lon)
    weights = area_weights(ens[lat])
    scores: dict[str, Any] = {}
    ranks, spectra = {}, {}
    for channel, variable, where in _channels(ens):
        e, t = ens[variable].sel(where), truth[variable].sel(where)
        entry = {"units": ens[variable].attrs.get("units"), **_scores(e, t, weights)}
        ranks[channel] = entry["rank_histogram"]
        if climatology is not None:
            entry["climatology"] = _scores(climatology[variable].sel(where), t, weights)
            reference = entry["climatology"]["crps"]
            entry["crps_skill_score"] = _finite(1.0 - entry["crps"] / reference) if reference else None
        scores[channel] = entry
        spectra[channel] = (zonal_power_spectrum(t, lon, lat, SPECTRUM_BAND).mean("case"),
                            zonal_power_spectrum(e, lon, lat, SPECTRUM_BAND).mean("case"))
    files = [_maps_png(ens, truth, variable, lat, lon, out / f"maps_{variable}.png") for variable in ens.data_vars]
    files.append(_spectra_png(spectra, out / "zonal_spectra.png"))
    files.append(_rank_png(ranks, out / "rank_histogram.png"))
    return {"scores": {"cases": int(ens.sizes["case"]), "members": int(ens.sizes["member"]), "channels": scores},
            "files": files}


def _check_inputs(ens: xr.Dataset, truth: xr.Dataset, climatology: xr.Dataset | None, lat: str, lon: str) -> None:
    for name, ds, dims in (("ensemble", ens, ("case", "member", lat, lon)), ("truth", truth, ("case", lat, lon)),
                           ("climatology", climatology, ("case", "member", lat, lon))):
        if ds is None:
            continue
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"the {name} must be an xarray Dataset, got {type(ds).__name__}")
        for variable, da in ds.data_vars.items():
            lacking = [d for d in dims if d not in da.dims]
            if lacking:
                raise ValueError(f"{name} variable {variable!r} has dims {tuple(da.dims)}, lacking {lacking}; "
                                 f"expected {dims} (pass lat=/lon= for other names)")
    for name, ds in (("truth", truth), ("climatology", climatology)):
        if ds is None:
            continue
        missing = [v for v in ens.data_vars if v not in ds.data_vars]
        if missing:
            raise ValueError(f"the {name} lacks variables {missing}; it has {sorted(map(str, ds.data_vars))}")
    if not ens.data_vars:
        raise ValueError("the ensemble holds no variables")


def _channels(ens: xr.Dataset) -> list[tuple[str, str, dict]]:
    """(channel name, variable, selection): one per variable, or per level as ``variable@level``."""
    channels = []
    for variable, da in ens.data_vars.items():
        if "level" in da.dims:
            # a level where the variable is all NaN was not generated (another variable's level)
            channels += [(f"{variable}@{_level_label(level)}", str(variable), {"level": level})
                         for level in da["level"].values if bool(da.sel(level=level).notnull().any())]
        else:
            channels.append((str(variable), str(variable), {}))
    return channels


def _level_label(level: Any) -> str:
    """``850`` for 850.0, ``0.5`` for 0.5: the channel names the climate adapter uses."""
    if not np.issubdtype(np.asarray(level).dtype, np.number):
        return str(level)
    value = float(level)
    return str(int(value)) if value == int(value) else f"{value:g}"


def _scores(ens: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray) -> dict[str, Any]:
    return {
        "rmse": _finite(float(rmse(ens, truth, weights, "member"))),
        "crps": _finite(float(crps(ens, truth, "member", weights))),
        "spread_skill": _finite(float(spread_skill(ens, truth, "member", weights))),
        "rank_histogram": [int(c) for c in rank_histogram(ens, truth, "member").values],
    }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# --------------------------------------------------------------------------- pictures
def _north_up(da: xr.DataArray, lat: str, lon: str) -> tuple[np.ndarray, list[float]]:
    """(values [lat, lon] with latitude ascending, imshow extent) for any storage order."""
    da = da.sortby([lat, lon]).transpose(lat, lon)
    la, lo = da[lat].values.astype(float), da[lon].values.astype(float)
    half_lat = (la[-1] - la[0]) / max(la.size - 1, 1) / 2
    half_lon = (lo[-1] - lo[0]) / max(lo.size - 1, 1) / 2
    return da.values, [lo[0] - half_lon, lo[-1] + half_lon, la[0] - half_lat, la[-1] + half_lat]


def _maps_png(ens: xr.Dataset, truth: xr.Dataset, variable: str, lat: str, lon: str, path: Path) -> Path:
    import matplotlib

    members = ens[variable].isel(case=0)
    observed = truth[variable].isel(case=0)
    levels = list(members["level"].values) if "level" in members.dims else [None]
    shown = min(MAP_MEMBERS, members.sizes["member"])
    titles = ["truth", "ensemble mean", "spread (member std)", *[f"member {i}" for i in range(shown)]]
    fig = new_figure(2.9 * len(titles), 2.1 * len(levels) + 0.8)
    axes = fig.subplots(len(levels), len(titles), squeeze=False, sharex=True, sharey=True)
    field_cmap = matplotlib.colormaps["RdYlBu_r"].with_extremes(bad="0.6")
    spread_cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.6")
    units = ens[variable].attrs.get("units", "")
    for row, level in zip(axes, levels):
        where = {} if level is None else {"level": level}
        m, t = members.sel(where), observed.sel(where)
        panels = [t, m.mean("member", skipna=False), m.std("member", ddof=1, skipna=False),
                  *[m.isel(member=i) for i in range(shown)]]
        pictures = [_north_up(p, lat, lon) for p in panels]
        shared = np.concatenate([pictures[i][0].ravel() for i in (0, 1, *range(3, len(pictures)))])
        shared = shared[np.isfinite(shared)]
        vmin, vmax = (shared.min(), shared.max()) if shared.size else (0.0, 1.0)
        for i, (ax, (values, extent)) in enumerate(zip(row, pictures)):
            spread = i == 2
            image = ax.imshow(np.ma.masked_invalid(values), origin="lower", extent=extent, aspect="auto",
                              cmap=spread_cmap if spread else field_cmap,
                              **({} if spread else {"vmin": vmin, "vmax": vmax}))
            if spread or i == len(pictures) - 1:
                fig.colorbar(image, ax=ax, shrink=0.9, label=units)
        label = variable if level is None else f"{variable}@{_level_label(level)}"
        row[0].set_ylabel(f"{label}\nlatitude")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("longitude")
    fig.suptitle(f"{variable}, case 0", fontsize=10)
    return save_png(fig, path)


def _spectra_png(spectra: dict, path: Path) -> Path:
    fig = new_figure(4.0 * len(spectra), 3.4)
    axes = fig.subplots(1, len(spectra), squeeze=False)[0]
    for ax, (channel, (observed, members)) in zip(axes, spectra.items()):
        k = observed["zonal_wavenumber"].values[1:]
        drawn = False
        for i in range(members.sizes["member"]):
            p = members.isel(member=i).values[1:]
            if np.isfinite(p).all():
                ax.loglog(k, p, color="tab:red", alpha=0.35, lw=0.8, label="members" if not drawn else None)
                drawn = True
        if np.isfinite(observed.values[1:]).all():
            ax.loglog(k, observed.values[1:], color="black", lw=1.6, label="truth")
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no complete latitude circle\n(masked field)", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set(title=channel, xlabel="zonal wavenumber (cycles per circle)",
               ylabel=f"power [{observed.attrs.get('units', 'units^2')}]")
        ax.title.set_fontsize(9)
    fig.suptitle(f"zonal spectra, {SPECTRUM_BAND[0]:g} to {SPECTRUM_BAND[1]:g} degrees latitude, mean over cases",
                 fontsize=10)
    return save_png(fig, path)


def _rank_png(ranks: dict[str, list[int]], path: Path) -> Path:
    fig = new_figure(3.6 * len(ranks), 3.0)
    axes = fig.subplots(1, len(ranks), squeeze=False)[0]
    for ax, (channel, counts) in zip(axes, ranks.items()):
        counts = np.asarray(counts, dtype=float)
        frequency = counts / max(counts.sum(), 1.0)
        ax.bar(np.arange(counts.size), frequency, width=1.0, color="tab:blue", edgecolor="white")
        ax.axhline(1.0 / counts.size, color="black", ls="--", lw=1, label="calibrated")
        ax.set(title=channel, xlabel="rank of truth among members", ylabel="frequency")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    return save_png(fig, path)
