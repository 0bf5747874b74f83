"""An offline ERA5-like store with exactly a WeatherBench2/ARCO layout and known statistics.

The embedded default of ``sciddpm train data=climate_era5`` and the fixture of the climate tests:
``ensure_synthetic(**params)`` builds the store on first use under ``$SCIDDPM_CACHE`` (default
``~/.cache/sciddpm``) as ``era5-<layout>-<hash>.zarr``, written under a temporary name and renamed
into place; ``write_synthetic(out, **params)`` writes one anywhere (``datasets/era5.py synthetic``).

Layout (``sciddpm.data.era5_layouts.LAYOUTS``): the chosen grid's latitude/longitude values,
latitude order and dimension order (``(time, [level,] latitude, longitude)`` for 1440x721/arco,
``(time, [level,] longitude, latitude)`` for 240x121/64x32), ``level`` int64 in hPa, float32 data,
the stores' variable and coordinate attrs. ``arco`` also gets ``valid_time_start``/``valid_time_stop``
root attrs and ``arco_pad_steps`` extra time steps after ``valid_time_stop`` filled with NaN, the way
the real store's time axis runs past its data.

Fields (phi latitude in radians, lam longitude in degrees east, d = day of year 1..366 of the time
stamp, h = UTC hour, g = 9.80665 m s^-2, s(d) = cos(2 pi (d - 200) / 365.25), +1 in mid July,
H(p) = 8000 m * ln(1013.25 / p) the height of pressure level p hPa):

* ``2m_temperature`` [K] = 288 - 40 sin^2 phi + 15 s(d) sin phi + 3 cos phi cos(2 pi (h + lam/15 - 15) / 24)
  + 3 a (the last term is the diurnal cycle, warmest at 15 local solar time);
* ``geopotential`` at p [m^2 s^-2] = g [H(p) - r(p) (350 sin^2 phi - 60 s(d) sin phi)] + 60 g r(p) a,
  r(p) = H(p) / 5650 m (so about 5.5e4 at 500 hPa);
* ``temperature`` at p [K] = 288 - 0.0065 H(p) - 35 sin^2 phi + 12 s(d) sin phi + 2.5 a;
* ``sea_surface_temperature`` [K] = 300 - 28 sin^2 phi + 3 s(d) sin phi + 0.6 a, NaN over land;
* ``land_sea_mask`` (static, 0/1) = 1 where a smooth random field exceeds its 70th percentile
  (30 % land); ``geopotential_at_surface`` (static) = g * 800 m * max(1 + b, 0) over land, 0 over sea.

``a`` is a unit-variance anomaly, one sequence per variable (shared by its levels): AR(1) in time,
a_t = rho a_{t-1} + sqrt(1 - rho^2) e_t with rho = exp(-step / 48 h), a_0 = e_0, where each e_t is
white noise smoothed by a Gaussian kernel of ``length_km`` (1200 km) along latitude (truncated at
the edges) and circularly along longitude (in degrees of the equator, so "sphere-ish"), each
kernel scaled to unit sum of squares: every grid point then has exactly unit variance. ``b`` is
the same kind of field (2500 km) without time. So the mean given (d, h) is known exactly
(``climatology``) and a model conditioned on day of year and hour can beat climatology. Everything
is a pure function of the parameters and ``seed``.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import xarray as xr

from sciddpm.checks import is_integer
from sciddpm.data.base import name_list
from sciddpm.data.cache import cache_entry, ensure_built, recipe_params
from sciddpm.data.era5_layouts import (COORD_ATTRS, LAT, LAYOUTS, LEVEL, LON, TIME, VARIABLE_ATTRS,
                                       parse_channel)
from sciddpm.data.stores import consolidate
from sciddpm.files import atomic_path

SYNTHETIC_VERSION = 1  # part of the cache key: bump when a formula changes
G = 9.80665
DEFAULTS = {
    "layout": "64x32", "variables": ["2m_temperature", "geopotential@500", "temperature@850"],
    "static": ["land_sea_mask", "geopotential_at_surface"], "start": "2016-01-01", "stop": "2020-01-01",
    "hours": None, "seed": 0, "length_km": 1200.0, "time_chunk": 4, "arco_pad_steps": 24,
}
LEVELLED = {"geopotential", "temperature"}
SURFACE = {"2m_temperature", "sea_surface_temperature"}
STATIC = {"land_sea_mask", "geopotential_at_surface"}
ANOMALY_STD = {"2m_temperature": 3.0, "temperature": 2.5, "sea_surface_temperature": 0.6}
BLOCK = 512  # time steps generated and appended at once: memory stays bounded for long stores


def synthetic_params(**overrides) -> dict:
    """The full, validated parameter set (``DEFAULTS`` + overrides; None keeps a default)."""
    p = recipe_params("synthetic ERA5", DEFAULTS, overrides)
    if p["layout"] not in LAYOUTS:
        raise ValueError(f"unknown layout {p['layout']!r}; choose one of {', '.join(LAYOUTS)}")
    if p["hours"] is None:
        p["hours"] = LAYOUTS[p["layout"]].hours
    elif not is_integer(p["hours"]) or p["hours"] < 1:
        raise ValueError(f"synthetic ERA5 parameter hours (time step) must be an integer >= 1, got {p['hours']!r}")
    p["hours"] = int(p["hours"])
    if p["time_chunk"] < 1 or p["arco_pad_steps"] < 0 or not p["length_km"] > 0:
        raise ValueError(f"synthetic ERA5 needs time_chunk >= 1, arco_pad_steps >= 0 and length_km > 0; got "
                         f"{p['time_chunk']}, {p['arco_pad_steps']}, {p['length_km']}")
    p["variables"] = name_list(p["variables"], "synthetic ERA5 variables", "[2m_temperature,geopotential@500]")
    p["static"] = name_list(p["static"], "synthetic ERA5 static", "[land_sea_mask]")
    for text in p["variables"]:
        name, level = parse_channel(text)
        if name not in LEVELLED | SURFACE:
            raise ValueError(f"the synthetic store cannot make {name!r}; it makes "
                             f"{', '.join(sorted(LEVELLED | SURFACE))} (levelled ones as name@level)")
        if (name in LEVELLED) != (level is not None):
            raise ValueError(f"{text!r}: " + (f"{name} needs a pressure level, e.g. {name}@500" if name in LEVELLED
                                               else f"{name} has no pressure levels; drop '@{level}'"))
        if level is not None and not 1 <= level <= 1000:
            raise ValueError(f"{text!r}: pressure levels are 1..1000 hPa")
    bad = sorted(set(p["static"]) - STATIC)
    if bad:
        raise ValueError(f"unknown static field(s) {bad}; the synthetic store makes {sorted(STATIC)}")
    if "sea_surface_temperature" in p["variables"] and "land_sea_mask" not in p["static"]:
        p["static"] = ["land_sea_mask", *p["static"]]  # SST is NaN over the land of this mask
    if len(times(p)) < 2:
        raise ValueError(f"start {p['start']} .. stop {p['stop']} at {p['hours']} h gives fewer than 2 times")
    return p


def times(p: dict) -> np.ndarray:
    """The valid time stamps: ``start`` inclusive to ``stop`` exclusive every ``hours``."""
    start, stop = np.datetime64(p["start"], "h"), np.datetime64(p["stop"], "h")
    return np.arange(start, stop, np.timedelta64(p["hours"], "h")).astype("datetime64[ns]")


def climatology(name: str, level: float | None, lat: np.ndarray, lon: np.ndarray, dayofyear: np.ndarray,
                hour: np.ndarray) -> np.ndarray:
    """The exact mean of a variable given the time: broadcast ``[T, n_lat, n_lon]`` (float64)."""
    phi = np.deg2rad(np.asarray(lat, dtype=np.float64))[None, :, None]
    lam = np.asarray(lon, dtype=np.float64)[None, None, :]
    d = np.asarray(dayofyear, dtype=np.float64)[:, None, None]
    h = np.asarray(hour, dtype=np.float64)[:, None, None]
    season = np.cos(2 * np.pi * (d - 200) / 365.25)
    s2, s1 = np.sin(phi) ** 2, np.sin(phi)
    if name == "2m_temperature":
        diurnal = 3 * np.cos(phi) * np.cos(2 * np.pi * (h + lam / 15 - 15) / 24)
        return 288 - 40 * s2 + 15 * season * s1 + diurnal
    if name == "sea_surface_temperature":
        return 300 - 28 * s2 + 3 * season * s1 + 0 * lam
    height = 8000.0 * np.log(1013.25 / float(level))
    if name == "geopotential":
        return G * (height - height / 5650.0 * (350 * s2 - 60 * season * s1)) + 0 * lam
    if name == "temperature":
        return 288 - 0.0065 * height - 35 * s2 + 12 * season * s1 + 0 * lam
    raise ValueError(f"no climatology for {name!r}")


def anomaly_std(name: str, level: float | None) -> float:
    if name == "geopotential":
        return 60 * G * (8000.0 * np.log(1013.25 / float(level))) / 5650.0
    return ANOMALY_STD[name]


class _SmoothNoise:
    """Unit-variance Gaussian-smoothed white noise on a (lat, lon) grid (see the module docstring)."""

    def __init__(self, lat: np.ndarray, n_lon: int, length_km: float):
        step_lat = abs(float(lat[1] - lat[0])) if lat.size > 1 else 180.0
        s_lat = max(length_km / (111.2 * step_lat), 1e-6)
        s_lon = max(length_km / (111.2 * 360.0 / n_lon), 1e-6)
        i = np.arange(lat.size)
        kernel = np.exp(-0.5 * ((i[:, None] - i[None, :]) / s_lat) ** 2)
        self.lat_filter = kernel / np.sqrt((kernel**2).sum(1, keepdims=True))
        m = np.arange(n_lon)
        circular = np.minimum(m, n_lon - m)
        h = np.exp(-0.5 * (circular / s_lon) ** 2)
        self.lon_transfer = np.fft.rfft(h / np.sqrt((h**2).sum()))
        self.n_lon = n_lon

    def __call__(self, white: np.ndarray) -> np.ndarray:  # [..., n_lat, n_lon]
        along_lon = np.fft.irfft(np.fft.rfft(white, axis=-1) * self.lon_transfer, n=self.n_lon, axis=-1)
        return np.einsum("ij,...jk->...ik", self.lat_filter, along_lon)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _static_fields(p: dict, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    shape = (lat.size, lon.size)
    smooth = _SmoothNoise(lat, lon.size, 2500.0)
    b = smooth(_rng(p["seed"], "land").standard_normal(shape))
    land = (b > np.quantile(b, 0.7)).astype(np.float64)
    relief = smooth(_rng(p["seed"], "relief").standard_normal(shape))
    return {"land_sea_mask": land, "geopotential_at_surface": G * 800.0 * np.maximum(1 + relief, 0) * land}


def synthetic_blocks(**params):
    """Yield the store as ``xr.Dataset`` blocks along time (the first also holds the static fields)."""
    p = synthetic_params(**params)
    layout = LAYOUTS[p["layout"]]
    lat, lon = layout.latitudes(), layout.longitudes()
    stamps = times(p)
    valid_stop = stamps[-1]
    if layout.name == "arco":  # the real store's time axis runs on past its data
        stamps = np.concatenate([stamps, stamps[-1] + np.arange(1, p["arco_pad_steps"] + 1)
                                 * np.timedelta64(p["hours"], "h")])
    names = list(dict.fromkeys(parse_channel(text)[0] for text in p["variables"]))
    all_levels = sorted({level for _, level in map(parse_channel, p["variables"]) if level is not None})
    levels = {name: all_levels if name in LEVELLED else [] for name in names}  # like WB2: every level
    statics = _static_fields(p, lat.astype(np.float64), lon.astype(np.float64))
    smooth = _SmoothNoise(lat.astype(np.float64), lon.size, p["length_km"])
    rho = float(np.exp(-p["hours"] / 48.0))
    rngs = {name: _rng(p["seed"], name) for name in levels}
    state: dict[str, np.ndarray] = {}
    spatial = layout.spatial_dims
    to_store = (lambda a: a) if spatial == (LAT, LON) else (lambda a: np.swapaxes(a, -1, -2))
    for start in range(0, stamps.size, BLOCK):
        block = stamps[start:start + BLOCK]
        doy = block.astype("datetime64[D]")
        dayofyear = (doy - doy.astype("datetime64[Y]")).astype(int) + 1
        hour = (block - doy).astype("timedelta64[h]").astype(int)
        padded = block > valid_stop
        data_vars = {}
        for name, lvs in levels.items():
            a = np.empty((block.size, lat.size, lon.size))
            for k, e in enumerate(smooth(rngs[name].standard_normal(a.shape))):
                state[name] = e if name not in state else rho * state[name] + np.sqrt(1 - rho**2) * e
                a[k] = state[name]
            fields = [climatology(name, lv, lat, lon, dayofyear, hour) + anomaly_std(name, lv) * a
                      for lv in (lvs or [None])]
            values = np.stack(fields, axis=1) if lvs else fields[0]
            if name == "sea_surface_temperature":
                values = np.where(statics["land_sea_mask"] > 0.5, np.nan, values)
            values[padded] = np.nan
            dims = (TIME, LEVEL, *spatial) if lvs else (TIME, *spatial)
            data_vars[name] = (dims, to_store(values).astype(np.float32), dict(VARIABLE_ATTRS[name]))
        coords = {TIME: block}
        if start == 0:
            coords.update({LAT: (LAT, lat, dict(COORD_ATTRS[LAT])), LON: (LON, lon, dict(COORD_ATTRS[LON]))})
            if all_levels:
                coords[LEVEL] = (LEVEL, np.asarray(all_levels, dtype=np.int64), dict(COORD_ATTRS[LEVEL]))
            for name in p["static"]:
                data_vars[name] = (spatial, to_store(statics[name]).astype(np.float32), dict(VARIABLE_ATTRS[name]))
        ds = xr.Dataset(data_vars, coords=coords)
        if start == 0:
            ds.attrs = _global_attrs(p, layout.name, stamps[0], valid_stop)
        yield ds


def _global_attrs(p: dict, layout: str, first: np.datetime64, valid_stop: np.datetime64) -> dict:
    attrs = {"title": f"sciddpm synthetic ERA5-like sample, {LAYOUTS[layout].description} layout",
             "source": "sciddpm.data.era5_synthetic: NOT ERA5; analytic climatology + smoothed AR(1) "
                       "anomalies, formulas in the module docstring",
             "sciddpm_synthetic": json.dumps({"version": SYNTHETIC_VERSION, **p}, sort_keys=True)}
    if layout == "arco":
        attrs.update(valid_time_start=str(first.astype("datetime64[D]")),
                     valid_time_stop=str(valid_stop.astype("datetime64[D]")))
    return attrs


def write_synthetic(out: str | Path, **params) -> Path:
    """Write the synthetic store at ``out`` (a ``.zarr`` directory, replaced atomically)."""
    p = synthetic_params(**params)
    out = Path(out)
    if out.suffix != ".zarr":
        raise ValueError(f"the synthetic store is a zarr directory: give a path ending in .zarr, got {out}")
    with atomic_path(out) as tmp:
        for k, block in enumerate(synthetic_blocks(**p)):
            if k == 0:
                encoding = {name: {"chunks": (min(p["time_chunk"], block.sizes[TIME]), *var.shape[1:])}
                            for name, var in block.data_vars.items() if TIME in var.dims}
                block.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False)
            else:
                block.to_zarr(tmp, append_dim=TIME, consolidated=False)
        consolidate(tmp)
    return out


def describe(**params) -> str:
    p = synthetic_params(**params)
    return (f"synthetic ERA5-like {p['layout']} store ({', '.join(p['variables'])}; static "
            f"{', '.join(p['static']) or 'none'}) {p['start']} .. {p['stop']} every {p['hours']} h, seed {p['seed']}")


def ensure_synthetic(**params) -> Path:
    """The cached store for ``params`` (``sciddpm.data.cache``), built on first use."""
    p = synthetic_params(**params)
    path = cache_entry(f"era5-{p['layout']}", {"version": SYNTHETIC_VERSION, **p}, ".zarr")
    return ensure_built(path, lambda out: write_synthetic(out, **params), "the synthetic ERA5 sample")
