"""ERA5 outputs: the source's Dataset layout rebuilt from a run's DataSpec alone, and map plots.

``OutputLayout`` turns physical ``[N, C, lat N->S, lon]`` arrays into the source's variables,
dims, coordinates and attrs (and back), from ``spec.output`` with no data at hand, so a model
loaded from a run writes ensembles that look like the store it was trained on. ``maps_png`` draws
members as lon/lat maps, north up whatever the storage order, NaN in grey.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sciddpm.data.base import close_match
from sciddpm.data.spec import check_output_grid
from sciddpm.data.era5_layouts import (ALIASES, LAT, LEVEL, LON, canonical_dims, channel_name,
                                       parse_channel)
from sciddpm.data.units import check_same_units, check_units
from sciddpm.plots import new_figure, save_png


def _sample_dtype(stored: str) -> np.dtype:
    """A variable's dtype in samples: the store's float precision; float64 for an integer (or
    boolean) store variable, since samples are not whole numbers and NaN marks a level not taken."""
    dtype = np.dtype(stored)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


class OutputLayout:
    """Rebuilds the source's Dataset layout from an era5 ``DataSpec``'s ``output`` alone (no data).

    ``from_channels``/``dataset`` go from physical ``[N, C, lat N->S, lon]`` to the source's
    variables, dims, coordinates and attrs; ``select`` puts a store variable in that form;
    ``to_channels`` is the inverse (any latitude order in, normalised channels out).
    """

    def __init__(self, spec: Any):
        out = spec.output
        try:
            self.variables = list(out["variables"])
            self.coords = {k: dict(v) for k, v in out["coords"].items()}
            self.attrs = dict(out["global_attrs"])
            for var in self.variables:
                var["name"], var["dims"], var["attrs"], var["levels"]  # noqa: B018 - presence check
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed era5 DataSpec output: {err!r} missing or malformed") from None
        check_output_grid(spec, (LAT, LON), self.coords)
        self.spec = spec
        self.lat_descending = bool(out["lat_descending"])
        self.source_names = dict(out.get("source_names") or {})  # e.g. time -> valid_time (new CDS)

    def channel_of(self, name: str, level: Any) -> int:
        return self.spec.channels.index(channel_name(name, level))

    def _coord(self, name: str) -> tuple:
        c = self.coords[name]
        return (name, np.asarray(c["values"], dtype=c["dtype"]), dict(c["attrs"]))

    def from_channels(self, values: np.ndarray, lead: str) -> dict[str, tuple]:
        """Physical ``[N, C, lat N->S, lon]`` -> ``{name: (dims, array)}`` in the source's layout."""
        levels = self.coords.get(LEVEL, {}).get("values", [])
        data = {}
        for var in self.variables:
            if var["levels"] is None:
                block = values[:, self.channel_of(var["name"], None)]
            else:
                block = np.full((len(values), len(levels), *values.shape[2:]), np.nan)
                for lv in var["levels"]:
                    block[:, levels.index(lv)] = values[:, self.channel_of(var["name"], lv)]
            block = block if self.lat_descending else block[..., ::-1, :]
            have = (lead, LAT, LON) if var["levels"] is None else (lead, LEVEL, LAT, LON)
            # the lead dim first, then the store's other dims in its order (level, lon, lat...)
            dims = (lead, *[d for d in var["dims"] if d in have[1:]])
            block = np.transpose(block, [have.index(d) for d in dims])
            data[var["name"]] = (dims, block.astype(_sample_dtype(var["dtype"])))
        return data

    def select(self, da: xr.DataArray, var: dict) -> tuple:
        """A store variable at the output's levels (NaN at the levels not taken), in its own dims."""
        if var["levels"] is not None:
            da = da.sel({LEVEL: self.coords[LEVEL]["values"]})
            missing = [lv for lv in self.coords[LEVEL]["values"] if lv not in var["levels"]]
            if missing:
                da = da.where(~da[LEVEL].isin(missing))
        return tuple(var["dims"]), np.asarray(da.transpose(*var["dims"]).values, dtype=_sample_dtype(var["dtype"]))

    def dataset(self, data: dict[str, tuple], lead: str, lead_values: np.ndarray,
                cond_coords: Mapping[str, tuple]) -> xr.Dataset:
        """The output Dataset of ``data`` (from ``from_channels`` or ``select``) along ``lead``, with
        the conditions' coordinates from ``base.condition_coords``."""
        coords = {lead: (lead, lead_values)}
        for name in self.coords:
            coords[name] = self._coord(name)
        coords.update(cond_coords)
        variables = {v["name"]: xr.Variable(data[v["name"]][0], data[v["name"]][1], dict(v["attrs"]))
                     for v in self.variables}
        ds = xr.Dataset(variables, coords=coords, attrs=dict(self.attrs))
        return ds.rename({k: v for k, v in self.source_names.items() if k in ds.variables})

    def example_dim(self, ds: xr.Dataset) -> str | None:
        """The one dimension besides latitude, longitude and level that the model's variables in
        ``ds`` share (``member``, ``time``...), or None when they have none (a single field)."""
        ds, source = canonical_dims(ds)
        found = {}
        for var in self.variables:
            if var["name"] in ds.data_vars:
                found[var["name"]] = tuple(d for d in ds[var["name"]].dims if d not in (LAT, LON, LEVEL))
        for name, lead in found.items():
            if len(lead) > 1:
                renames = {d: ALIASES[d] for d in lead if d in ALIASES}  # the names the store check knows
                fix = (f"rename them first (ds.rename({', '.join(f'{k}={v!r}' for k, v in renames.items())}))"
                       if renames else "stack the others first")
                raise ValueError(f"{name!r} has dims {ds[name].dims}; expected one leading dim (member or time) "
                                 f"besides latitude, longitude and level; {fix}")
        leads = set(found.values())
        if len(leads) > 1:
            raise ValueError("the Dataset's variables do not share one leading dim: "
                             + ", ".join(f"{k} {ds[k].dims}" for k in found))
        lead = next(iter(leads), ())
        return source.get(lead[0], lead[0]) if lead else None  # under the name the given Dataset has

    def to_channels(self, ds: xr.Dataset) -> np.ndarray:
        """A Dataset in the source layout (leading dim ``member``, ``time``, ...) -> normalised channels."""
        ds = canonical_dims(ds)[0]
        check_units(ds, {var["name"]: var["attrs"] for var in self.variables})
        if LEVEL in ds.coords and LEVEL in self.coords:  # levels in Pa for a model of hPa
            check_same_units("the level coordinate", ds[LEVEL].attrs.get("units"),
                             (self.coords[LEVEL].get("attrs") or {}).get("units"))
        example = self.example_dim(ds)
        lead = [] if example is None else [example]
        out = []
        for name in self.spec.channels:
            var_name, level = parse_channel(name)
            if var_name not in ds.data_vars:
                raise ValueError(f"the Dataset has no variable {var_name!r} (it has {sorted(map(str, ds.data_vars))})"
                                 f"{close_match(var_name, list(map(str, ds.data_vars)))}")
            da = ds[var_name]
            if level is not None:
                if LEVEL not in da.dims or level not in da[LEVEL].values:
                    have = da[LEVEL].values.tolist() if LEVEL in da.coords else "no level dimension"
                    pascal = isinstance(have, list) and any(math.isclose(h, 100 * level) for h in have)
                    raise ValueError(f"{var_name!r} in the Dataset has no level {level} (levels: {have})"
                                     + ("; its levels look like Pa where the model's are hPa: divide them by 100 "
                                        "(ds.assign_coords(level=ds.level / 100))" if pascal else ""))
                da = da.sel({LEVEL: level})
            elif LEVEL in da.dims:
                raise ValueError(f"{var_name!r} in the Dataset has a level dimension but the model takes it "
                                 "at the surface; select its level or drop the dimension")
            da = da.transpose(*lead, LAT, LON)
            array = np.asarray(da.values, dtype=np.float64)
            if not lead:
                array = array[None]
            lat = np.asarray(ds[LAT].values, dtype=np.float64)
            if lat.size > 1 and lat[0] < lat[-1]:
                array, lat = array[:, ::-1], lat[::-1]
            self._check_grid(lat, np.asarray(ds[LON].values, dtype=np.float64))
            out.append(array)
        x = np.stack(out, axis=1)
        return self.spec.normaliser.normalise(x, channel_axis=1)

    def _check_grid(self, lat: np.ndarray, lon: np.ndarray) -> None:
        want_lat = np.sort(np.asarray(self.coords[LAT]["values"], dtype=np.float64))[::-1]
        want_lon = np.asarray(self.coords[LON]["values"], dtype=np.float64)
        if lat.shape != want_lat.shape or lon.shape != want_lon.shape or not (
                np.allclose(lat, want_lat, atol=1e-4) and np.allclose(lon, want_lon, atol=1e-4)):
            def extent(la: np.ndarray, lo: np.ndarray) -> str:
                return (f"{lo.size} longitudes {lo.min():g}..{lo.max():g} x {la.size} latitudes "
                        f"{la.max():g}..{la.min():g}" if la.size and lo.size else "an empty grid")

            same_points = (lat.shape == want_lat.shape and np.allclose(lat, want_lat, atol=1e-4)
                           and lon.shape == want_lon.shape
                           and np.allclose(np.sort(lon % 360), np.sort(want_lon % 360), atol=1e-4))
            fix = ("the same longitudes in another convention: roll them onto the model's with "
                   "ds.assign_coords(longitude=ds.longitude % 360).sortby('longitude')"
                   if same_points and want_lon.min() >= 0 else
                   "the same longitudes in another convention: roll them onto the model's with "
                   "ds.assign_coords(longitude=(ds.longitude + 180) % 360 - 180).sortby('longitude')"
                   if same_points else
                   "it covers part of the model's grid: for gap filling, put it on the whole grid with NaN where "
                   "nothing was observed (ds.reindex(latitude=..., longitude=...) with the latitudes and longitudes "
                   "of any of the model's samples)" if _inside(lat, want_lat) and _inside(lon % 360, want_lon % 360)
                   else "regrid it to the training grid first")
            raise ValueError(f"the Dataset's grid ({extent(lat, lon)}) is not the model's "
                             f"({extent(want_lat, want_lon)}); {fix}")


def _inside(values: np.ndarray, grid: np.ndarray) -> bool:
    """Whether every value is one of the grid's points (to 1e-4 degrees)."""
    grid = np.sort(grid)
    at = np.clip(np.searchsorted(grid, values), 1, max(grid.size - 1, 1))
    nearest = np.minimum(np.abs(values - grid[at - 1]), np.abs(values - grid[np.minimum(at, grid.size - 1)]))
    return bool(values.size) and bool((nearest <= 1e-4).all())


def maps_png(ds: xr.Dataset, channels: list[tuple[str, Any]], path: Path, members: int = 4) -> Path:
    """Maps of the first ``members`` fields of each channel: lon/lat axes, north up, NaN in grey."""
    from matplotlib import colormaps

    lat = np.asarray(ds[LAT].values, dtype=np.float64)
    lon = np.asarray(ds[LON].values, dtype=np.float64)
    order = np.argsort(lat)  # rows south -> north, drawn with origin="lower": north is up
    half_lat = abs(lat[1] - lat[0]) / 2 if lat.size > 1 else 0.5
    half_lon = abs(lon[1] - lon[0]) / 2 if lon.size > 1 else 0.5
    extent = (lon.min() - half_lon, lon.max() + half_lon, lat.min() - half_lat, lat.max() + half_lat)
    cmap = colormaps["viridis"].with_extremes(bad="0.6")
    rows = []
    for name, level in channels:
        da = ds[name] if level is None else ds[name].sel({LEVEL: level})
        lead = [d for d in da.dims if d not in (LAT, LON)]
        maps = np.asarray(da.transpose(*lead, LAT, LON).values, dtype=np.float64).reshape(-1, lat.size, lon.size)
        labels = ["_".join(f"{d}{i}" for d, i in zip(lead, idx)) for idx in np.ndindex(*[da.sizes[d] for d in lead])]
        rows.append((channel_name(name, level), da.attrs.get("units", ""), maps[:members, order], labels[:members]))
    cols = max(len(r[2]) for r in rows)
    fig = new_figure(3.4 * cols + 0.8, 1.9 * len(rows) + 0.4)
    for r, (title, units, maps, labels) in enumerate(rows):
        finite = maps[np.isfinite(maps)]
        vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        for c, (field, label) in enumerate(zip(maps, labels)):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            image = ax.imshow(np.ma.masked_invalid(field), origin="lower", extent=extent, cmap=cmap,
                              vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
            ax.set_title(f"{title} {label}", fontsize=7)
            ax.set_xlabel("longitude [deg E]", fontsize=6)
            ax.set_ylabel("latitude [deg N]", fontsize=6)
            ax.tick_params(labelsize=6)
        fig.colorbar(image, ax=fig.axes[-len(maps):], label=units, shrink=0.9)
    return save_png(fig, path, dpi=90)
