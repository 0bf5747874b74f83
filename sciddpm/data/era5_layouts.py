"""What sciddpm knows about ERA5 stores: the WeatherBench2 and ARCO-ERA5 grids, names and attrs.

Facts the adapter (``sciddpm.data.climate``) and the offline writer (``era5_synthetic``) share:

* ``LAYOUTS`` - the public ERA5 zarr layouts, as published in ``gs://weatherbench2/datasets/era5/``
  and ``gs://gcp-public-data-arco-era5/ar/``:

  ========== ============ ================================= ============== =============================
  layout     grid         latitude                          spatial dims   notes
  ========== ============ ================================= ============== =============================
  1440x721   0.25 deg     90 -> -90 (descending, poles)     (lat, lon)     float32 coordinates
  240x121    1.5 deg      -90 -> 90 (ascending, poles)      (lon, lat)     ``..._with_poles_conservative``
  64x32      5.625 deg    -87.1875 -> 87.1875 (no poles)    (lon, lat)     ``..._equiangular_conservative``
  arco       0.25 deg     90 -> -90 (descending, poles)     (lat, lon)     hourly; time padded past the
                                                                           data: use the root attrs
                                                                           ``valid_time_start``/``_stop``
  ========== ============ ================================= ============== =============================

  Longitude is ``0 .. 360 - step`` ascending in all of them; a variable with pressure levels has
  dims ``(time, level, *spatial)`` with ``level`` in hPa (int64, attrs units "millibars").
* ``VARIABLE_ATTRS`` - the per-variable attrs (long_name, short_name, units, ...) those stores
  carry, for the variables the synthetic writer produces.
* ``parse_channel("geopotential@500") -> ("geopotential", 500)`` and ``detect_layout(ds)``, which
  names the layout a Dataset follows (or ``None`` for another regular lat/lon store).
* ``open_era5_store`` (zarr local/``gs://`` anonymous, or netCDF, or several files; lazily), ``canonical_dims``
  (the new CDS's ``valid_time``/``pressure_level`` read as ``time``/``level``), ``StorePlan`` +
  ``read_times`` (which variable/level positions make each channel; one ``isel`` per variable per
  batch of times, oriented ``[C, latitude north->south, longitude]``) and the compact JSON codec of NaN
  masks (``encode_mask``/``decode_mask``). Outputs live in ``era5_output``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from sciddpm.data.base import close_match
from sciddpm.data.spec import plain_json
from sciddpm.data.stores import open_store, store_name

TIME, LEVEL, LAT, LON = "time", "level", "latitude", "longitude"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """One published ERA5 grid: sizes, latitude order, pole rows and the spatial dimension order."""

    name: str
    n_lon: int
    n_lat: int
    lat_descending: bool
    poles: bool
    spatial_dims: tuple[str, str]
    coord_dtype: str
    hours: int  # time step of the published store
    description: str

    def latitudes(self) -> np.ndarray:
        if self.poles:
            lat = np.linspace(-90.0, 90.0, self.n_lat)
        else:  # cell centres of n_lat equal bands
            step = 180.0 / self.n_lat
            lat = -90.0 + step / 2 + step * np.arange(self.n_lat)
        return (lat[::-1] if self.lat_descending else lat).astype(self.coord_dtype)

    def longitudes(self) -> np.ndarray:
        return (np.arange(self.n_lon) * (360.0 / self.n_lon)).astype(self.coord_dtype)


LAYOUTS = {
    "1440x721": Layout("1440x721", 1440, 721, True, True, (LAT, LON), "float32", 6,
                       "WeatherBench2 ERA5 at 0.25 deg (1959-2023_01_10-wb13-6h-1440x721*.zarr)"),
    "240x121": Layout("240x121", 240, 121, False, True, (LON, LAT), "float64", 6,
                      "WeatherBench2 ERA5 at 1.5 deg (*-6h-240x121_equiangular_with_poles_conservative.zarr)"),
    "64x32": Layout("64x32", 64, 32, False, False, (LON, LAT), "float64", 6,
                    "WeatherBench2 ERA5 at 5.625 deg (*-6h-64x32_equiangular_conservative.zarr)"),
    "arco": Layout("arco", 1440, 721, True, True, (LAT, LON), "float32", 1,
                   "ARCO-ERA5 hourly 0.25 deg (gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-*.zarr)"),
}

COORD_ATTRS = {
    LAT: {"long_name": "latitude", "units": "degrees_north"},
    LON: {"long_name": "longitude", "units": "degrees_east"},
    LEVEL: {"long_name": "pressure_level", "units": "millibars"},
}

VARIABLE_ATTRS = {
    "2m_temperature": {"long_name": "2 metre temperature", "short_name": "t2m", "units": "K"},
    "geopotential": {"long_name": "Geopotential", "short_name": "z", "standard_name": "geopotential",
                     "units": "m**2 s**-2"},
    "temperature": {"long_name": "Temperature", "short_name": "t", "standard_name": "air_temperature",
                    "units": "K"},
    "sea_surface_temperature": {"long_name": "Sea surface temperature", "short_name": "sst", "units": "K"},
    "land_sea_mask": {"long_name": "Land-sea mask", "short_name": "lsm", "standard_name": "land_binary_mask",
                      "units": "(0 - 1)"},
    "geopotential_at_surface": {"long_name": "Geopotential", "short_name": "z", "standard_name": "geopotential",
                                "units": "m**2 s**-2"},
}


def parse_channel(text: str) -> tuple[str, int | float | None]:
    """``"geopotential@500"`` -> ``("geopotential", 500)``; ``"2m_temperature"`` -> (name, None)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a variable must be a name such as '2m_temperature' or 'geopotential@500', got {text!r}")
    name, sep, level = text.strip().partition("@")
    if not sep:
        return name, None
    try:
        value = float(level)
    except ValueError:
        raise ValueError(f"{text!r}: the level after '@' must be a number in the store's level units "
                         f"(hPa), e.g. 'geopotential@500'") from None
    return name, int(value) if value == int(value) else value


def channel_name(variable: str, level: Any) -> str:
    return variable if level is None else f"{variable}@{_level_text(level)}"


def _level_text(level: Any) -> str:
    value = float(level)
    return str(int(value)) if value == int(value) else f"{value:g}"


def detect_layout(ds: Any) -> str | None:
    """The ``LAYOUTS`` name ``ds`` follows (grid size, latitude order, spatial dim order), or None.

    ARCO-ERA5 is told from the WeatherBench2 0.25 deg store by its ``valid_time_start`` attribute.
    """
    if LAT not in ds.sizes or LON not in ds.sizes:
        return None
    lat = np.asarray(ds[LAT].values, dtype=np.float64)
    descending = lat.size > 1 and lat[0] > lat[-1]
    spatial = _spatial_order(ds)
    for layout in LAYOUTS.values():
        if (ds.sizes[LON], ds.sizes[LAT]) != (layout.n_lon, layout.n_lat) or descending != layout.lat_descending:
            continue
        if spatial is not None and spatial != layout.spatial_dims:
            continue
        if not np.allclose(lat, layout.latitudes().astype(np.float64), atol=1e-3):
            continue
        if (layout.name == "arco") != ("valid_time_start" in ds.attrs):
            continue
        return layout.name
    return None


def _spatial_order(ds: Any) -> tuple[str, str] | None:
    for var in ds.data_vars.values():
        dims = [d for d in var.dims if d in (LAT, LON)]
        if len(dims) == 2:
            return tuple(dims)
    return None


# --------------------------------------------------------------------------- stores and grids
def open_era5_store(path: str | list[str], storage_options: dict | None = None) -> xr.Dataset:
    """The ERA5 store at ``path``: local zarr/netCDF or a ``gs://`` URL (anonymous by default), or
    several local files (a list or a glob pattern, combined through dask), lazily."""
    return open_store(path, storage_options=storage_options, what="ERA5 store",
                      hint="give a local zarr/netCDF path or a gs:// URL (the sciddpm repository's datasets/era5.py "
                           "subset copies part of a WeatherBench2 store locally)")


def encode_mask(mask: np.ndarray) -> dict:
    """A bool array as plain JSON: shape + base64 of zlib of ``np.packbits`` (a few kB for land)."""
    import base64

    mask = np.asarray(mask, dtype=bool)
    packed = zlib.compress(np.packbits(mask.reshape(-1)).tobytes(), 9)
    return {"shape": list(mask.shape), "packbits_zlib_base64": base64.b64encode(packed).decode("ascii")}


def decode_mask(blob: Any, shape: Sequence[int]) -> np.ndarray:
    """The inverse of ``encode_mask``, for a mask that must be ``shape``. The blob comes from a run
    directory, perhaps a stranger's: its shape is checked, and it is inflated no further than a
    mask of that shape needs (a crafted blob cannot fill the memory)."""
    import base64

    shape = [int(s) for s in shape]
    size = int(np.prod(shape))
    try:
        if [int(s) for s in blob["shape"]] != shape:
            raise ValueError(f"it is shaped {blob['shape']}, the model's fields {shape}")
        inflate = zlib.decompressobj()
        packed = inflate.decompress(base64.b64decode(blob["packbits_zlib_base64"], validate=True), -(-size // 8) + 1)
        if len(packed) != -(-size // 8) or inflate.unconsumed_tail or not inflate.eof:
            raise ValueError(f"it holds other than the {size} bits of its shape")
        bits = np.frombuffer(packed, dtype=np.uint8)
        return np.unpackbits(bits, count=size).astype(bool).reshape(shape)
    except (KeyError, TypeError, ValueError, zlib.error) as err:
        raise ValueError(f"malformed ERA5 DataSpec: the NaN mask does not decode ({err})") from None


# --------------------------------------------------------------------------- reading plan
# The new CDS (since 2024) names ERA5's time and level dims valid_time and pressure_level: such a
# store is read under the names above (canonical_dims) and samples go back under its own names.
CDS_NAMES = {"valid_time": TIME, "pressure_level": LEVEL}
# other names that are only pointed out (CMIP-style files; plev is in Pa, not hPa)
ALIASES = {**CDS_NAMES, "lat": LAT, "lon": LON, "plev": LEVEL, "isobaricInhPa": LEVEL}


def canonical_dims(ds: Any) -> tuple[Any, dict[str, str]]:
    """``ds`` with new-CDS dim names renamed to the ones used here, and ``{name here: name in
    ds}`` for each rename (empty for WeatherBench2/ARCO stores), to name outputs as the source."""
    renames = {cds: name for cds, name in CDS_NAMES.items()
               if cds in ds.variables and name not in ds.variables}
    return (ds.rename(renames) if renames else ds), {name: cds for cds, name in renames.items()}


def check_standard_time(ds: Any, where: str) -> None:
    """Refuse a ``time`` coordinate that is not datetime64: a cftime calendar (360_day, noleap)
    would give other days of the year than its dates say (30 December is day 360 of a 360-day
    year, 364 when read as a standard date)."""
    if ds[TIME].dtype.kind != "M":
        calendar = (getattr(ds.indexes.get(TIME), "calendar", None) or ds[TIME].encoding.get("calendar")
                    or ds[TIME].attrs.get("calendar")
                    or getattr(np.ravel(ds[TIME].values)[0], "calendar", None))  # (a scalar cftime coordinate)
        raise ValueError(f"{where}: time holds {ds[TIME].dtype} values, not datetime64"
                         + (f" (calendar {calendar!r})" if calendar else "")
                         + "; convert it to the standard calendar first, e.g. "
                           "ds.convert_calendar('standard', align_on='date', use_cftime=False)")


def _check_grid_and_time(ds: Any, path: str) -> None:
    """Named errors for a store the adapter would misread: dims under other names, a dimension
    without coordinate values, a non-standard calendar, an unsorted latitude, a repeated meridian."""
    for dim in (TIME, LAT, LON):
        if dim not in ds.dims:
            renames = {alias: name for alias, name in ALIASES.items() if alias in ds.dims and name not in ds.dims}
            fix = ", ".join(f"{alias}={name!r}" for alias, name in renames.items()) or "lat='latitude', lon='longitude'"
            raise ValueError(f"{path} has no {dim!r} dimension (dims: {dict(ds.sizes)}); ERA5 stores have time, "
                             f"[level,] latitude, longitude - rename yours (ds.rename({fix}))")
        if dim not in ds.coords:
            raise ValueError(f"{path}: the {dim!r} dimension has no coordinate values, and the grid and dates come "
                             f"from them; assign them (ds.assign_coords({dim}=...))")
    check_standard_time(ds, path)
    lat = np.asarray(ds[LAT].values, dtype=np.float64)
    lon = np.asarray(ds[LON].values, dtype=np.float64)
    for dim, values in ((LAT, lat), (LON, lon)):
        if not np.isfinite(values).all():
            raise ValueError(f"{path}: {dim} has NaN or infinite values at positions "
                             f"{np.flatnonzero(~np.isfinite(values))[:5].tolist()}; the grid must be complete")
    if np.abs(lat).max(initial=0.0) > 90.0:
        raise ValueError(f"{path}: latitude runs to {np.abs(lat).max():g}, beyond +-90 degrees; is it another "
                         "coordinate (a projection's y)? sciddpm's climate data is on latitude/longitude in degrees")
    if lat.size > 2 and np.abs(lat).max() <= np.pi / 2 + 1e-6 and np.abs(lon).max() <= 2 * np.pi + 1e-6:
        log.warning("%s: latitude spans %.3g and longitude %.3g: in radians? They are read as degrees (area "
                    "weights, the global check); convert with np.degrees if so", path, np.ptp(lat), np.ptp(lon))
    step = np.diff(lat)
    if lat.size > 1 and not ((step > 0).all() or (step < 0).all()):
        repeated = "repeats a value" if (step == 0).any() else "is not strictly monotonic"
        fix = ("drop the repeated rows (ds.drop_duplicates('latitude'))" if (step == 0).any()
               else "sort it first (ds.sortby('latitude'))")
        raise ValueError(f"{path}: latitude {repeated}; {fix}")
    if np.unique(np.round(lon % 360.0, 6)).size < lon.size:
        raise ValueError(f"{path}: longitude names a meridian twice (e.g. both 0 and 360); drop the repeat, "
                         "e.g. ds.isel(longitude=slice(None, -1))")


def spans_the_globe(lon: np.ndarray) -> bool:
    """Whether longitudes in degrees go once round the globe in equal steps, last to first included:
    in either direction and across the date line or the prime meridian (0..360, -180..180, or a
    grid rolled from either), so that the U-Net may pad the longitude axis circularly."""
    if lon.size < 2:
        return False
    steps = np.abs((np.diff(np.append(lon, lon[0])) + 180.0) % 360.0 - 180.0)  # the short way round
    return bool(np.allclose(steps, 360.0 / lon.size, rtol=1e-3, atol=1e-4))  # atol: float32 near 360


@dataclass
class StorePlan:
    """Which store variables and level positions make each channel, and how to orient them.

    Plain data (a path, names, positions), so it pickles into spawned DataLoader workers, which
    ``open()`` the store themselves. Tensor orientation: ``[C, latitude north->south, longitude]``.
    """

    path: str | list[str]  # a store, or several files read as one
    storage_options: dict | None
    channels: list[str]
    sources: list[tuple[str, list[int] | None, list[int]]]  # variable, level positions, channel indices
    level_values: list  # the store's level coordinate values (all of them)
    lat_north_to_south: np.ndarray
    flip_lat: bool
    global_longitude: bool
    n_lon: int
    output: dict  # the source's layout, for spec.output (see _describe)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lat_north_to_south.size, self.n_lon)

    def open(self) -> Any:
        return canonical_dims(open_era5_store(self.path, self.storage_options))[0]

    @classmethod
    def build(cls, ds: Any, source: str | list[str], storage_options: dict | None, channels: list[str],
              static: list[str]) -> StorePlan:
        path = store_name(source)  # (in messages)
        _check_grid_and_time(ds, path)
        known = sorted(str(v) for v in ds.data_vars)
        level_values = ds[LEVEL].values.tolist() if LEVEL in ds.coords else []
        sources: dict[str, tuple[list[int] | None, list[int]]] = {}
        names = []
        for k, text in enumerate(channels):
            name, level = parse_channel(text)
            canonical = channel_name(name, level)
            if canonical in names:
                raise ValueError(f"{text!r} is listed twice in variables")
            names.append(canonical)
            if name not in ds.data_vars:
                raise ValueError(f"variable {name!r} is not in {path}; the store has: {', '.join(known)}"
                                 f"{close_match(name, known)}")
            dims = ds[name].dims
            allowed = {TIME, LAT, LON} | ({LEVEL} if level is not None else set())
            if set(dims) != allowed:
                if level is None and LEVEL in dims:
                    raise ValueError(f"{name!r} has pressure levels {level_values}; choose one per channel as "
                                     f"'{name}@<level>', e.g. '{name}@{level_values[len(level_values) // 2]}'")
                if level is not None and LEVEL not in dims:
                    other = [d for d in dims if ALIASES.get(d) == LEVEL]
                    fix = (f"rename {other[0]!r} to 'level' (ds.rename({other[0]}='level'))" if other
                           else f"drop '@{level}'")
                    raise ValueError(f"{name!r} has no level dimension (dims {dims}); {fix}")
                hint = ("; an old-CDS file mixing ERA5 and ERA5T has an 'expver' dim: merge it first with "
                        "ds.sel(expver=1).combine_first(ds.sel(expver=5))" if "expver" in dims else "")
                raise ValueError(f"{name!r} has dims {dims}; a channel needs (time, [level,] latitude, longitude)"
                                 + hint)
            levels, indices = sources.setdefault(name, ([] if level is not None else None, []))
            if level is not None:
                match = [i for i, v in enumerate(level_values) if np.isclose(float(v), float(level))]
                if not match:
                    raise ValueError(f"level {level} of {name!r} is not in {path}; the store's levels are: "
                                     f"{', '.join(map(str, level_values))}")
                levels.append(match[0])
            indices.append(k)
        for name in static:
            if name not in ds.data_vars:
                raise ValueError(f"static field {name!r} is not in {path}; the store has: {', '.join(known)}"
                                 f"{close_match(name, known)}")
            if set(ds[name].dims) - {TIME, LAT, LON}:
                raise ValueError(f"static field {name!r} has dims {ds[name].dims}; it must be (latitude, longitude)")
        lat = np.asarray(ds[LAT].values, dtype=np.float64)
        lon = np.asarray(ds[LON].values, dtype=np.float64)
        plan_sources = [(n, lv, ix) for n, (lv, ix) in sources.items()]
        return cls(source, storage_options, names, plan_sources, level_values, np.sort(lat)[::-1],
                   bool(lat.size > 1 and lat[0] < lat[-1]), spans_the_globe(lon),
                   lon.size, _describe(ds, plan_sources, level_values))

    def describe(self, layout: str | None) -> dict:
        return {**self.output, "layout": layout}

    def read_static(self, ds: Any, name: str) -> np.ndarray:
        da = ds[name].variable
        if TIME not in da.dims:
            return self._orient(np.asarray(da.transpose(LAT, LON).values, dtype=np.float64))
        # time-invariant by definition, but ARCO and CDS files store it along time: the two ends are
        # read (the axis may be decades long; ARCO pads its tail with NaN after valid_time_stop)
        first, last = (np.asarray(da.isel({TIME: i}).transpose(LAT, LON).values, dtype=np.float64) for i in (0, -1))
        if not np.isfinite(first).all() and np.isfinite(last).all():  # defined at one time only (a merge)
            log.warning("static field %r of %s has NaN at its first time but not at its last; its last time is "
                        "used as the time-invariant input", name, store_name(self.path))
            return self._orient(last)
        if np.isfinite(last).any() and not np.array_equal(first, last, equal_nan=True):
            log.warning("static field %r of %s differs between its first and last time; its first time is "
                        "used as the time-invariant input", name, store_name(self.path))
        return self._orient(first)

    def _orient(self, array: np.ndarray) -> np.ndarray:
        return array[..., ::-1, :] if self.flip_lat else array


def read_time(ds: Any, plan: StorePlan, position: int) -> np.ndarray:
    """The channels at one time position: ``[C, n_lat, n_lon]`` float64 (``read_times`` of one)."""
    return read_times(ds, plan, [position])[0]


def read_times(ds: Any, plan: StorePlan, positions: Sequence[int]) -> np.ndarray:
    """The channels at several time positions: ``[T, C, n_lat, n_lon]`` float64, in the order asked.

    One read per variable for all the times (at their sorted positions: a training batch costs a
    few store calls, not one per item and variable), transposed in numpy afterwards (a lazy
    transpose turns a zarr read into point-wise indexing)."""
    positions = np.asarray(positions, dtype=np.int64)
    order, inverse = np.unique(positions, return_inverse=True)
    out = np.empty((len(order), len(plan.channels), *plan.shape))
    for name, levels, indices in plan.sources:
        var = ds[name].variable
        picked = var.isel({TIME: order} if levels is None else {TIME: order, LEVEL: levels})
        block = np.asarray(picked.values, dtype=np.float64)
        want = (TIME, LAT, LON) if levels is None else (TIME, LEVEL, LAT, LON)
        block = np.transpose(block, [picked.dims.index(d) for d in want])
        out[:, indices] = plan._orient(block[:, None] if levels is None else block)
    out = out[inverse]
    if np.isinf(out).any():  # NaN marks missing data; an infinity is a broken value
        t = int(np.argwhere(np.isinf(out).any(axis=(1, 2, 3)))[0, 0])
        bad = [plan.channels[k] for k in np.flatnonzero(np.isinf(out[t]).any(axis=(1, 2)))]
        raise ValueError(f"{store_name(plan.path)}, time index {positions[t]}: {', '.join(bad)} hold(s) +-inf; NaN marks "
                         "missing values, so replace the infinities first (ds.where(np.isfinite(ds)) makes them NaN)")
    return out


def _describe(ds: Any, sources: list, level_values: list) -> dict:
    """What ``spec.output`` keeps to rebuild the source's layout without the data."""
    taken = sorted({i for _, levels, _ in sources for i in (levels or [])})
    variables = []
    for name, levels, _ in sources:
        da = ds[name]
        variables.append({"name": name, "dims": list(da.dims), "dtype": str(da.dtype), "attrs": plain_json(da.attrs),
                          "levels": None if levels is None else [plain_json(level_values[i]) for i in levels]})
    coords = {}
    for dim in (LAT, LON) + ((LEVEL,) if taken else ()):
        values = ds[dim].values if dim != LEVEL else ds[LEVEL].values[taken]
        coords[dim] = {"values": plain_json(values.tolist()), "dtype": str(values.dtype), "attrs": plain_json(ds[dim].attrs)}
    lat = np.asarray(ds[LAT].values, dtype=np.float64)
    return {"variables": variables, "coords": coords, "global_attrs": plain_json(ds.attrs),
            "lat_descending": bool(lat.size < 2 or lat[0] > lat[-1])}

