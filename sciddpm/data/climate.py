"""The ERA5 adapter (registered ``"era5"``): fields on a latitude/longitude grid from zarr/netCDF.

Source: ``path`` - a WeatherBench2 or ARCO-ERA5 zarr store (local or ``gs://``, anonymous; needs
the ``gcs`` extra), a local copy made by ``datasets/era5.py subset``, or a netCDF file with the
same names, or several files read as one (a list or a glob pattern; needs dask). ``path=None`` trains on the offline synthetic sample (``sciddpm.data.era5_synthetic``,
built on first use under ``$SCIDDPM_CACHE``; options in ``synthetic={...}``) and says so loudly in
the log and in ``spec().notes``. Layouts (``era5_layouts.LAYOUTS``) are detected; ``layout=`` makes
the detection a check. ARCO stores are cut to their ``valid_time_start``/``valid_time_stop``.

Options:

* ``variables`` - long names, one channel each, with the pressure level per variable:
  ``["2m_temperature", "geopotential@500", "temperature@850"]``. Unknown names and levels are
  errors listing what the store has.
* ``static`` - time-independent inputs (``land_sea_mask``, ``geopotential_at_surface``), each
  standardised to mean 0 / std 1 and given to the network as extra input channels (``static_fields``).
* ``cond`` - conditions: ``"dayofyear"`` (cyclic, period 365.25 d, range 1..366), ``"hour"`` (UTC,
  cyclic, 24 h; only for sub-daily stores) and the name of any scalar coordinate or variable along
  ``time`` (linear, its units). Default: dayofyear, plus hour when the store is sub-daily.
* ``units`` - units of scalar conditions whose variable has no ``units`` attribute, e.g.
  ``{co2: ppm}`` (a condition without units is an error).
* ``time_range`` - ``[start, stop]`` of the times used at all, both inclusive at their own precision
  (``["2016", "2018-06"]`` runs from 1 January 2016 to the end of June 2018).
* Train/val split by time, one block: times from ``val_start`` on are validation; else the last
  ``val_fraction`` of the times; by default the last calendar year (the last 10 % when the range
  is within one year).
* ``stats_samples`` - training times, evenly spaced, read once for the NaN-aware per-channel
  mean/std, the NaN masks and ``sigma_data`` (area-weighted std of the normalised sample).
* ``mask`` - give items a ``"mask"``: None = when the sampled times have NaN (then every item
  has one); a NaN met later in a store judged NaN-free is an error naming ``mask=True``.

Tensors: ``[C, n_lat, n_lon]`` with latitude north to south (90 -> -90, whatever the store's
order) and longitude as stored; padding ``["zeros", "circular"]`` (longitude circular when it
spans the globe). Items: ``x`` normalised float32 with NaN where data is missing, ``cond``,
``mask`` (True = valid; see above), ``weight`` ``[1, n_lat, n_lon]`` cell-area weights, mean 1.
Items are read lazily - one ``isel(time=i)`` per variable, the store opened in each process on
first use (spawned DataLoader workers included), no dask - so memory does not grow with the store.

Outputs (``to_xarray``): the source's variable names, attrs, coordinate values/dtypes/attrs,
latitude order and dimension order, a ``level`` dim (the union of the levels taken, NaN where a
variable was not taken at a level), NaN where ``static_mask()`` is False; leading dim ``member``,
or ``time`` when ``cond["time"]`` holds datetimes. Everything needed is in ``spec().output``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciddpm.data.base import (Adapter, close_match, condition_coords, heldout_picks, name_list,
                               register_adapter)
from sciddpm.data.conditioning import CondSchema, CondVar
from sciddpm.data.spec import DataSpec, Normaliser
from sciddpm.data.climate_eval import score_climate_ensemble
from sciddpm.data.era5_layouts import (LAT, LAYOUTS, TIME, StorePlan, canonical_dims, check_standard_time,
                                       decode_mask, detect_layout, encode_mask, open_era5_store, read_time)
from sciddpm.data.era5_output import OutputLayout, maps_png
from sciddpm.data.era5_times import (TIME_CONDS, TIME_READERS, Era5Items, check_time_range, day_of_year,
                                     hour_label, hour_of_day, time_window, train_val_split)
from sciddpm.data.stores import check_no_namesake, names_a_store, store_name, write_store
from sciddpm.data.units import check_same_units
from sciddpm.metrics.ensemble import area_weights as latitude_weights

log = logging.getLogger(__name__)

DEFAULT_VARIABLES = ("2m_temperature", "geopotential@500", "temperature@850")


@register_adapter("era5")
class Era5Adapter(Adapter):
    """ERA5 fields from a WeatherBench2/ARCO store or the synthetic sample (see the module docstring)."""

    def __init__(self, path: str | Sequence[str] | None = None, variables: Sequence[str] = DEFAULT_VARIABLES,
                 static: Sequence[str] | None = (), cond: Sequence[str] | None = None,
                 time_range: Sequence[str] | None = None, val_start: str | None = None,
                 val_fraction: float | None = None, stats_samples: int = 256, mask: bool | None = None,
                 layout: str | None = None, storage_options: dict | None = None, synthetic: dict | None = None,
                 units: Mapping[str, str] | None = None):
        variables = name_list(variables, "data.kwargs.variables", "[2m_temperature,geopotential@500]")
        if not variables:
            raise ValueError("data.kwargs.variables is empty: list the fields to model, e.g. "
                             "[2m_temperature,geopotential@500]")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)} (or None to detect)")
        if val_fraction is not None and not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if isinstance(stats_samples, bool) or not isinstance(stats_samples, int) or stats_samples < 1:
            raise ValueError(f"stats_samples must be a positive integer, got {stats_samples!r}")
        if time_range is not None:
            check_time_range(time_range)
        if path is not None and synthetic:  # the preset always carries them; a real store wins
            log.info("data.kwargs.path is set, so the synthetic-sample options are not used")
            synthetic = None
        self.path, self.variables = path, variables
        self.static_names = name_list([] if static is None else static, "data.kwargs.static",
                                      "[land_sea_mask,geopotential_at_surface]")
        self.cond_names = None if cond is None else name_list(cond, "data.kwargs.cond", "[dayofyear,hour]")
        self.time_range, self.val_start, self.val_fraction = time_range, val_start, val_fraction
        self.stats_samples, self.mask, self.layout = stats_samples, mask, layout
        self.storage_options, self.synthetic = storage_options, dict(synthetic or {})
        self.units = {str(k): str(v) for k, v in (units or {}).items()}
        self._spec: DataSpec | None = None
        self._index: dict | None = None

    # ------------------------------------------------------------------ training side
    def _source(self) -> tuple[str | list[str], list[str]]:
        if self.path is not None:
            source = [str(p) for p in self.path] if isinstance(self.path, (list, tuple)) else str(self.path)
            return source, [f"trained on ERA5 store {store_name(source)}"]
        from sciddpm.data import era5_synthetic

        params = {"variables": self.variables, **self.synthetic}
        store = str(era5_synthetic.ensure_synthetic(**params))
        what = era5_synthetic.describe(**params)
        note = (f"SYNTHETIC DATA, NOT ERA5: data.kwargs.path is null, so this run uses the offline "
                f"{what} at {store}. Point data.kwargs.path at a WeatherBench2/ARCO zarr (e.g. "
                "gs://weatherbench2/datasets/era5/1959-2022-6h-64x32_equiangular_conservative.zarr, or a "
                "local copy made by the sciddpm repository's datasets/era5.py subset) to train on ERA5.")
        log.warning(note)
        return store, [note]

    def _build_index(self) -> dict:
        if self._index is not None:
            return self._index
        if self.variables is None:
            raise RuntimeError("this era5 adapter was rebuilt from a run's DataSpec and has no data; use "
                               "build_adapter('era5', path=...) to read a store")
        source, notes = self._source()
        ds, source_names = canonical_dims(open_era5_store(source, self.storage_options))
        path = store_name(source)  # (in messages and the spec)
        detected = detect_layout(ds)
        if self.layout is not None and detected != self.layout:
            raise ValueError(f"{path} does not follow the {self.layout} layout ({LAYOUTS[self.layout].description}); "
                             f"it looks like {detected or 'no published layout'}; drop layout= to accept it")
        plan = StorePlan.build(ds, source, self.storage_options, self.variables, self.static_names)
        stamps = ds[TIME].values
        if np.isnat(stamps).any():
            missing = np.flatnonzero(np.isnat(stamps))
            raise ValueError(f"the time coordinate of {path} has {missing.size} missing value(s) (NaT) at positions "
                             f"{missing[:5].tolist()}; drop those times (ds.isel(time=~ds.time.isnull()))")
        steps = np.diff(stamps)
        if stamps.size > 1 and not (steps > np.timedelta64(0, "ns")).all():
            repeated = (steps == np.timedelta64(0, "ns")).any()
            raise ValueError(f"the time coordinate of {path} " + ("repeats a time; drop the repeats "
                             "(ds.drop_duplicates('time'))" if repeated else "is not strictly increasing; sort it "
                             "first (ds.sortby('time'))"))
        first, last = time_window(ds, stamps, self.time_range, path)
        train, val = train_val_split(stamps, first, last, self.val_start, self.val_fraction, path)
        notes.append(f"train: {len(train)} times {hour_label(stamps[train[0]])}..{hour_label(stamps[train[-1]])}; validation "
                     f"(one block, held out): {len(val)} times {hour_label(stamps[val[0]])}..{hour_label(stamps[val[-1]])}")
        hours = np.unique(hour_of_day(stamps[train]))
        if source_names:
            notes.append(f"read with the dims {', '.join(f'{v} as {k}' for k, v in source_names.items())}; "
                         "samples carry the store's own names")
        self._index = {"ds": ds, "path": path, "plan": plan, "layout": detected, "train": train, "val": val,
                       "notes": notes, "hours": hours, "stamps": stamps, "source_names": source_names}
        return self._index

    def _schema(self, index: dict) -> CondSchema:
        ds, train, hours = index["ds"], index["train"], index["hours"]
        default = ["dayofyear", "hour"] if len(hours) > 1 else ["dayofyear"]
        names = self.cond_names if self.cond_names is not None else default
        left_out = [name for name in default if name not in names]
        log.info("conditioning on %s%s", ", ".join(names) or "nothing (unconditional)",
                 f" (data.kwargs.cond replaces the default list: {' and '.join(left_out)} left out; list them too, "
                 f"cond=[{','.join(default + [n for n in names if n not in default])}], to keep them)"
                 if left_out else "")
        out = []
        for name in names:
            if name == "dayofyear":  # the days trained on, where they are not the whole year (autumn only, say)
                days = day_of_year(index["stamps"][train])
                span = {} if np.unique(days).size >= 365 else {"min": float(days.min()), "max": float(days.max())}
                out.append(CondVar(name, **{**TIME_CONDS[name], **span}))
            elif name == "hour":
                if len(hours) < 2:
                    raise ValueError(f"{index['path']} has one time of day ({hours[0]:g} h UTC); drop 'hour' from cond")
                out.append(CondVar(name, min=float(hours.min()), max=float(hours.max()), **TIME_CONDS[name]))
            else:
                used = np.concatenate([train, index["val"]])
                values = np.broadcast_to(_scalar_condition(ds, name, index["path"], used=used),
                                         index["stamps"].shape)[train]
                units = self.units.get(name, ds[name].attrs.get("units"))
                if units is None:
                    raise ValueError(f"condition {name!r} in {index['path']} has no 'units' attribute, and conditions "
                                     f"are given in their units; pass units={{{name}: <units>}} "
                                     f"(data.kwargs.units={{{name}: ppm}}, say; '1' if dimensionless)")
                out.append(CondVar(name, units=str(units), min=float(values.min()),
                                   max=float(values.max()), description=str(ds[name].attrs.get("long_name", ""))))
        return CondSchema(out)

    def spec(self) -> DataSpec:
        if self._spec is not None:
            return self._spec
        index = self._build_index()
        ds, plan, train = index["ds"], index["plan"], index["train"]
        picks = train[np.unique(np.linspace(0, len(train) - 1, min(self.stats_samples, len(train))).round().astype(int))]
        c, shape = len(plan.channels), plan.shape
        weight = _area_weights(plan.lat_north_to_south, shape[1])
        # one pass, bounded memory: sums of (x - ref) and its square, plain and area-weighted, where
        # ref is each channel's mean in the first sample (keeps the sums well conditioned)
        sums = np.zeros((2, 3, c))  # [plain | weighted] x [count, sum, sum of squares] x channel
        always_nan, has_nan, ref = np.ones((c, *shape), dtype=bool), False, None
        for position in picks:
            raw = read_time(ds, plan, int(position))
            finite = np.isfinite(raw)
            always_nan &= ~finite
            has_nan |= not finite.all()
            ref = np.nanmean(raw, axis=(1, 2)) if ref is None else ref
            d = np.where(finite, raw - ref[:, None, None], 0.0)
            for k, w in enumerate((finite, finite * weight)):
                sums[k] += [w.sum((1, 2)), (w * d).sum((1, 2)), (w * d**2).sum((1, 2))]
        empty = [plan.channels[k] for k in np.flatnonzero(sums[0, 0] == 0)]
        if empty:
            raise ValueError(f"channel(s) {empty} are NaN everywhere in the {len(picks)} sampled training times; "
                             "check the variable, level and time_range")
        count, first, second = sums[0]
        shift = first / count
        std = np.sqrt(np.maximum(second / count - shift**2, 0.0))
        normaliser = Normaliser((ref + shift).tolist(), std.tolist(), channels=plan.channels)
        w_count, w_first, w_second = sums[1]  # area-weighted E[z^2] of z = (x - mean) / std, all channels
        sigma_data = float(np.sqrt(((w_second - 2 * shift * w_first + shift**2 * w_count) / std**2).sum()
                                   / w_count.sum()))
        with_mask = has_nan if self.mask is None else bool(self.mask)
        statics, static_stats = self._statics(ds, plan)
        index.update(static=statics, with_mask=with_mask)
        cond = self._schema(index)
        notes = index["notes"] + [
            f"per-channel mean/std (NaN-aware) and sigma_data (area-weighted) from {len(picks)} training times",
            "tensor layout [C, latitude (north to south), longitude]; area weights = cell area, mean 1"]
        if has_nan:
            notes.append(f"the data has NaN ({int(always_nan.sum())} cell(s) NaN in every sampled time: the static "
                         "mask); NaNs are masked out of the loss, never zero-filled")
        output = plan.describe(index["layout"])
        output.update(source_names=index["source_names"],
                      nan_mask=encode_mask(~always_nan) if always_nan.any() else None,
                      static_stats=static_stats, with_mask=with_mask,
                      source=index["path"] if self.path is not None else "synthetic:" + index["path"])
        self._spec = DataSpec(
            adapter="era5", dims=2, channels=list(plan.channels), shape=list(shape),
            padding=["zeros", "circular" if plan.global_longitude else "zeros"], normaliser=normaliser,
            cond=cond, sigma_data=sigma_data, output=output, notes=notes, static=list(self.static_names))
        return self._spec

    def _statics(self, ds: xr.Dataset, plan: StorePlan) -> tuple[torch.Tensor | None, dict]:
        if not self.static_names:
            return None, {}
        fields, stats = [], {}
        for name in self.static_names:
            values = plan.read_static(ds, name)
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise ValueError(f"static field {name!r} has NaN/Inf at {bad} of its {values.size} points; static "
                                 "inputs must be finite everywhere: fill them in the store (a land-sea mask's NaN over "
                                 f"the sea: ds[{name!r}].fillna(0)), or leave the field out of static=")
            mean, std = float(values.mean()), float(values.std())
            fields.append((values - mean) / (std if std > 0 else 1.0))
            stats[name] = {"mean": mean, "std": std, "units": str(ds[name].attrs.get("units", ""))}
        return torch.from_numpy(np.stack(fields).astype(np.float32)), stats

    def static_fields(self) -> torch.Tensor | None:
        """``[K, n_lat, n_lon]`` standardised static inputs; training side only (a trained model
        keeps them in its weights, so the inference-side adapter returns None)."""
        if self.variables is None:
            return None
        self.spec()
        return self._index["static"]

    def dataset(self, split: str = "train") -> Era5Items:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        spec, index = self.spec(), self._build_index()
        positions = index[split]
        values = self.cond_from_xarray(index["ds"].isel({TIME: positions}))
        features = spec.cond.encode(values, batch=len(positions), warn=False).numpy()
        return Era5Items(index["plan"], positions, features, spec.normaliser,
                         self.area_weights(), bool(spec.output["with_mask"]))

    def heldout(self, n: int, seed: int = 0) -> tuple[xr.Dataset, dict]:
        spec, index = self.spec(), self._build_index()
        val = index["val"]
        more = "train with an earlier data.kwargs.val_start (or a larger data.kwargs.val_fraction)"
        picks = np.sort(val[heldout_picks(n, len(val), seed, "times", more)])
        sub = index["ds"].isel({TIME: picks})
        cond = {k: v for k, v in self.cond_from_xarray(sub).items() if k in spec.cond.names}
        cond_coords = condition_coords(spec.cond, cond, len(picks), dim=TIME)[1]
        layout = OutputLayout(spec)
        data = {var["name"]: layout.select(sub[var["name"]], var) for var in spec.output["variables"]}
        return layout.dataset(data, TIME, sub[TIME].values, cond_coords), cond

    # ------------------------------------------------------------------ shared (both sides)
    def cond_from_xarray(self, ds: xr.Dataset, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The conditions ``names`` (default: the schema's) of every ``time`` in ``ds``: day of year
        and hour from its time coordinate, the others from the scalar coordinate or variable along
        time of that name."""
        ds = canonical_dims(ds)[0]
        if names is None:
            names = self.spec().cond.names if self._spec is not None else list(TIME_CONDS)
        given = [name for name in names if name in TIME_CONDS and name in ds.variables]  # samples carry them
        dated = [name for name in names if name in TIME_CONDS and name not in given]
        if dated and TIME not in ds.coords:
            raise ValueError(f"the Dataset has no '{TIME}' coordinate to read {' and '.join(dated)} from (coords: "
                             f"{list(ds.coords)}); pass them explicitly (--cond {dated[0]}=VALUE)")
        if TIME in ds.coords:
            count = np.atleast_1d(ds[TIME].values).size
            if dated:  # (a CO2 series in a noleap calendar needs no dates)
                check_standard_time(ds, "the Dataset")
            if ds[TIME].dtype.kind == "M":
                stamps = np.atleast_1d(ds[TIME].values).astype("datetime64[ns]")
        else:
            lead = self.example_dim(ds)
            count = ds.sizes[lead] if lead is not None else 1
        out = {}
        for name in names:
            if name in given:  # a dayofyear coordinate of its own (a sample's, an edited one) is what it says
                out[name] = np.broadcast_to(np.asarray(ds[name].values, dtype=np.float64), (count,)).copy()
                if TIME in ds.coords and ds[TIME].dtype.kind == "M":  # (other calendars: no dates to compare)
                    dates = TIME_READERS[name](stamps)
                    if not np.allclose(dates, out[name]):
                        log.warning("the Dataset's %s coordinate (%s) is not its dates' (%s): the coordinate is used",
                                    name, np.array2string(out[name], precision=4), np.array2string(dates, precision=4))
            elif name in TIME_CONDS:
                out[name] = TIME_READERS[name](stamps)
            else:
                values = _scalar_condition(ds, name, "the Dataset", f"; or pass it explicitly (--cond {name}=VALUE)")
                if self._spec is not None and name in self._spec.cond.names and name not in self.units:
                    # observations for a trained model (units= overrides the store's own attribute)
                    check_same_units(f"condition {name!r}", ds[name].attrs.get("units"),
                                     self._spec.cond[name].units or None)
                out[name] = np.broadcast_to(values, (count,)).astype(np.float64)
        return out

    def static_mask(self) -> torch.Tensor | None:
        blob = self.spec().output.get("nan_mask")
        spec = self.spec()
        return None if blob is None else torch.from_numpy(decode_mask(blob, [len(spec.channels), *spec.shape]))

    def area_weights(self) -> np.ndarray:
        """``[n_lat, n_lon]`` cell-area weights (mean 1) in the tensor's orientation (north first)."""
        spec = self.spec()
        lat = np.asarray(spec.output["coords"][LAT]["values"], dtype=np.float64)
        return _area_weights(np.sort(lat)[::-1], spec.shape[1])

    # ------------------------------------------------------------------ inference side
    @classmethod
    def from_spec(cls, spec: DataSpec) -> Era5Adapter:
        if spec.adapter != "era5" or spec.dims != 2:
            raise ValueError(f"not an era5 DataSpec (adapter {spec.adapter!r}, dims {spec.dims})")
        OutputLayout(spec)  # validates spec.output
        self = cls.__new__(cls)
        self.path = self.variables = None
        self.static_names, self.units = list(spec.static), {}
        self._spec, self._index = spec, None
        return self

    def to_xarray(self, x: torch.Tensor, cond: Mapping[str, Any]) -> xr.Dataset:
        spec = self.spec()
        x = torch.as_tensor(x).detach().cpu()
        if x.ndim != 4 or list(x.shape[1:]) != [len(spec.channels), *spec.shape]:
            raise ValueError(f"expected normalised fields [N, {len(spec.channels)}, {spec.shape[0]}, {spec.shape[1]}], "
                             f"got shape {tuple(x.shape)}")
        values = spec.normaliser.denormalise(x.double(), channel_axis=1).numpy()
        valid = self.static_mask()
        if valid is not None:
            values = np.where(valid.numpy()[None], values, np.nan)
        cond = dict(cond)
        stamps = cond.pop(TIME, None)
        lead, lead_values = ("member", np.arange(len(values))) if stamps is None else (TIME, np.asarray(stamps))
        if len(lead_values) != len(values):
            raise ValueError(f"cond['time'] has {len(lead_values)} values for {len(values)} fields")
        cond_coords = condition_coords(spec.cond, cond, len(values), dim=lead)[1]
        layout = OutputLayout(spec)
        return layout.dataset(layout.from_channels(values, lead), lead, lead_values, cond_coords)

    def to_tensor(self, ds: xr.Dataset) -> torch.Tensor:
        return torch.from_numpy(OutputLayout(self.spec()).to_channels(ds))

    def example_dim(self, ds: xr.Dataset) -> str | None:
        return OutputLayout(self.spec()).example_dim(ds)

    def write(self, ds: xr.Dataset, out: str | Path) -> list[Path]:
        """``out`` ending in .zarr or .nc (.nc4, .h5) is the store; any other path is a directory for samples.zarr."""
        out = Path(out)
        if not names_a_store(out):
            out = out / "samples.zarr"
        check_no_namesake(out)
        write_store(ds, out)
        png = out.with_name(out.stem + "_maps.png")
        channels = [(v["name"], lv) for v in self.spec().output["variables"] for lv in (v["levels"] or [None])]
        maps_png(canonical_dims(ds)[0], channels, png)
        return [out, png]


    def evaluate_ensemble(self, ensemble: xr.Dataset, truth: xr.Dataset, climatology: xr.Dataset | None,
                          out: str | Path) -> dict:
        """WeatherBench2-style scores in physical units, maps, zonal spectra and rank histograms."""
        ensemble, truth = canonical_dims(ensemble)[0], canonical_dims(truth)[0]
        climatology = None if climatology is None else canonical_dims(climatology)[0]
        return score_climate_ensemble(ensemble, truth, climatology, out)


def _area_weights(lat_north_to_south: np.ndarray, n_lon: int) -> np.ndarray:
    return np.repeat(latitude_weights(lat_north_to_south)[:, None], n_lon, axis=1)


def _scalar_condition(ds: xr.Dataset, name: str, where: str, fix: str = "",
                      used: np.ndarray | None = None) -> np.ndarray:
    """The values of a scalar condition along time (or one value), checked to be finite at the
    ``used`` time positions (all by default): a forcing series may start after the store does."""
    if name not in ds.variables or set(ds[name].dims) - {TIME}:
        scalars = sorted(str(k) for k, v in ds.variables.items() if set(v.dims) <= {TIME} and k != TIME)
        raise ValueError(f"condition {name!r} is not a scalar coordinate or a variable along time in {where}; "
                         f"candidates: {', '.join(scalars) or 'none'}, plus dayofyear and hour"
                         f"{close_match(name, scalars)}{fix}")
    if ds[name].dtype.kind not in "biuf":
        raise ValueError(f"condition {name!r} in {where} holds {ds[name].dtype} values, not numbers; a condition is "
                         "a number in its units (encode categories as numbers in a variable of their own)")
    values = np.asarray(ds[name].values, dtype=np.float64)
    along_time = TIME in ds[name].dims
    checked = values[used] if along_time and used is not None else np.atleast_1d(values)
    if not np.isfinite(checked).all():
        bad = np.flatnonzero(~np.isfinite(checked))
        stamps = np.atleast_1d(ds[TIME].values)[used if used is not None else slice(None)]
        when = f" at {', '.join(str(t)[:19] for t in stamps[bad[:3]])}" if along_time else ""
        raise ValueError(f"condition {name!r} in {where} is NaN or infinite{when} ({bad.size} value(s) among the "
                         f"times used); every time needs its value: fill them, or leave them out with "
                         f"time_range{fix}")
    return values
