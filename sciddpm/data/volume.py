"""The volume adapter (registered ``"volume"``): 3-D fields of simulations, conditioned on their parameters.

Sources (``source=``):

* ``"grf"`` (default) - periodic Gaussian random fields with spectrum k^-alpha, conditioned on
  alpha (``sciddpm.data.grf``), built on first use and cached; ``build={samples, size, alpha_min,
  alpha_max, seed}`` sets the recipe (default 1024 fields of 16^3).
* ``"gray_scott"`` - 3-D Gray-Scott reaction-diffusion runs over (F, k) from random initial
  conditions (``sciddpm.data.gray_scott``), built on first use and cached; ``build={...}`` as in
  ``gray_scott.DEFAULTS``.
* ``"store"`` - any store xarray reads at ``path``: zarr (a directory or ``*.zarr``), netCDF
  (``*.nc``) or HDF5 (``*.h5``/``*.hdf5``: through h5netcdf when h5py is installed, where plain
  HDF5 without dimension scales gets dims ``phony_dim_0`` ... to name with ``dims``/``sample_dim``;
  else through netCDF4, which reads HDF5 files written the netCDF-4 way).

Layout: each field in ``fields`` (the channels) is a variable with dims ``sample_dim`` and
``dims`` (any order; transposed to ``(sample, *dims)``). Each name in ``params`` (the
conditioning) is a 1-D variable or coordinate along ``sample_dim``, or a dataset attribute
(a number shared by all samples, or a list with one value per sample). Units come from the
variable's ``units`` attribute (for attributes: ``<name>_units``) or ``units={"name": ...}``;
``features={"name": "log"}`` picks the network feature (default linear). ``periodic`` is a bool
or one per axis of ``dims`` (circular padding in the U-Net, else zeros); by default the simulated
sources are periodic and a store is periodic where its ``periodic`` attribute says so (one per axis
of the store's own dims, in its first field's order).

Statistics: per-channel mean and standard deviation over (up to ``stats_samples``) training
samples, saved in the run; ``sigma_data`` is therefore 1 (the standard deviation of the
standardised training samples). Items are read lazily: the store is opened once per process on first access
and one sample is read per item (``isel``, no dask), so memory does not grow with the store.

Output: ``xr.Dataset`` with one variable per channel, dims ``(member, *dims)``, the source's
variable and dataset attributes and dimension coordinates (values, dtype and attrs kept in the
spec, so a model needs no data), and the conditions as coordinates (scalar when shared, else
along ``member``) with their units. ``write`` stores zarr or netCDF plus a PNG of the central
slices; ``evaluate`` adds fitted spectral slopes (against the requested alpha for ``grf``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciddpm.data.base import (Adapter, condition_coords, heldout_picks, name_list, read_groups,
                               register_adapter, split_indices)
from sciddpm.data.conditioning import CondSchema, CondVar
from sciddpm.data.spec import DataSpec, Normaliser, check_output_grid, plain_json
from sciddpm.data.stores import check_no_namesake, names_a_store, open_store, write_store
from sciddpm.data.units import check_units
from sciddpm.data.volume_eval import slices_png, slope_scores

log = logging.getLogger(__name__)

SOURCES = {"grf": (["field"], ["alpha"]), "gray_scott": (["u", "v"], ["F", "k"]), "store": (None, None)}


def open_volume_store(path: str | Path) -> xr.Dataset:
    """The volume store at ``path`` (zarr, netCDF or HDF5), opened lazily."""
    return open_store(path, what="volume store", hint="check path= (or build one with the sciddpm repository's datasets/*.py)")


class VolumeItems(torch.utils.data.Dataset):
    """``{"x": [C, *S] normalised float32, "cond": [D] float32}`` read from the store on demand.

    Holds the store path, not an open handle, so it pickles for (spawned) DataLoader workers;
    each process opens the store on its first item.
    """

    def __init__(self, path: str, fields: list[str], sample_dim: str, dims: list[str], indices: np.ndarray,
                 normaliser: Normaliser, cond: np.ndarray):
        self.path, self.fields, self.sample_dim, self.dims = path, fields, sample_dim, dims
        self.indices, self.normaliser = np.asarray(indices), normaliser
        self.cond = torch.from_numpy(np.asarray(cond, dtype=np.float32))
        self._store: xr.Dataset | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int) -> np.ndarray:
        """Sample ``i`` of this split in physical units, ``[C, *S]`` float64."""
        return self.raws([i])[0]

    def raws(self, items: Sequence[int]) -> np.ndarray:
        """Samples ``items`` of this split, ``[N, C, *S]`` float64: one read per field for all of
        them (sorted positions, transposed in numpy), not one per sample and field."""
        if self._store is None:
            self._store = open_volume_store(self.path)
        wanted = self.indices[np.asarray(items, dtype=np.int64)]
        order, inverse = np.unique(wanted, return_inverse=True)
        fields = []
        for f in self.fields:
            picked = self._store[f].variable.isel({self.sample_dim: order})
            block = np.asarray(picked.values, dtype=np.float64)
            fields.append(np.transpose(block, [picked.dims.index(d) for d in (self.sample_dim, *self.dims)]))
        x = np.stack(fields, axis=1)[inverse]
        finite = np.isfinite(x).reshape(len(x), len(self.fields), -1).all(axis=2)
        if not finite.all():
            n, c = np.argwhere(~finite)[0]
            raise ValueError(f"{self.path}: sample {wanted[n]} of {[self.fields[c]]} holds NaN/Inf; volumes must be "
                             "finite (drop or repair that sample)")
        return x

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch (the DataLoader asks for a whole one at once), read a few samples per call: at
        most 256 MB of float64 at once, so a batch of 256^3 volumes does not double its memory."""
        if self._store is None:
            self._store = open_volume_store(self.path)
        size = len(self.fields) * int(np.prod([self._store.sizes[d] for d in self.dims]))
        out = []
        for group in read_groups(items, size):
            x = self.normaliser.normalise(self.raws(group), channel_axis=1).astype(np.float32)
            out += [{"x": torch.from_numpy(xi), "cond": self.cond[i]} for i, xi in zip(group, x)]
        return out


@register_adapter("volume")
class VolumeAdapter(Adapter):
    """3-D fields + simulation parameters from a simulated dataset or a store (see the module docstring).

    ``source``/``path``: where the data comes from; ``build``: recipe parameters of a simulated
    source; ``workers``: processes that build it (default: all cores); ``fields``: the channels;
    ``params``: the conditions; ``units``/``features``: per-condition units and feature;
    ``dims``/``sample_dim``: dimension names; ``periodic``: per-axis periodicity;
    ``val_fraction``/``split_seed``: the deterministic split; ``stats_samples``: how many training
    samples the statistics are measured on.
    """

    def __init__(self, source: str = "grf", path: str | None = None, build: Mapping[str, Any] | None = None,
                 workers: int | None = None, fields: Sequence[str] | None = None,
                 params: Sequence[str] | None = None, units: Mapping[str, str] | None = None,
                 features: Mapping[str, str] | None = None, dims: Sequence[str] = ("z", "y", "x"),
                 sample_dim: str = "sample", periodic: bool | Sequence[bool] | None = None,
                 val_fraction: float = 0.1, split_seed: int = 0, stats_samples: int = 256):
        if source not in SOURCES:
            raise ValueError(f"unknown volume source {source!r}; choose one of {', '.join(SOURCES)}")
        if source == "store" and path is None:
            raise ValueError("volume source 'store' needs path= (a zarr, netCDF or HDF5 store)")
        if source != "store" and path is not None:
            raise ValueError(f"the {source} source builds its own data; drop path= or use source='store'")
        if source == "store" and build is not None:
            raise ValueError("build= sets the recipe of a simulated source (grf, gray_scott), not of a store; "
                             "train on a store with data=volume_store data.kwargs.path=... (or data.kwargs.build=null)")
        dims = name_list(dims, "data.kwargs.dims", "[z,y,x]")
        if len(dims) != 3 or len(set(dims)) != 3 or sample_dim in dims:
            raise ValueError(f"dims must name 3 distinct spatial dims other than sample_dim={sample_dim!r}, got {dims}")
        if isinstance(stats_samples, bool) or not isinstance(stats_samples, int) or stats_samples < 1:
            raise ValueError(f"stats_samples must be a positive integer, got {stats_samples!r}")
        default_fields, default_params = SOURCES[source]
        self.source, self.path = source, None if path is None else str(path)
        self.build, self.workers = dict(build or {}), workers
        self.fields = default_fields if fields is None else name_list(fields, "data.kwargs.fields", "[rho,T]")
        self.params = default_params if params is None else name_list(params, "data.kwargs.params", "[mach]")
        self.units, self.features = dict(units or {}), dict(features or {})
        self.dims, self.sample_dim = dims, sample_dim
        self.periodic = periodic
        self.val_fraction, self.split_seed, self.stats_samples = val_fraction, split_seed, stats_samples
        self._spec: DataSpec | None = None
        self._table: dict | None = None

    # ------------------------------------------------------------------ training side
    def _store_path(self) -> str:
        if self.source == "grf":
            from sciddpm.data import grf

            self._note = f"trained on the embedded volume_grf data: {grf.describe(**self.build)}"
            return str(grf.ensure_grf_store(workers=self.workers, **self.build))
        if self.source == "gray_scott":
            from sciddpm.data import gray_scott

            self._note = f"trained on the embedded gray_scott data: {gray_scott.describe(**self.build)}"
            return str(gray_scott.ensure_gray_scott_store(workers=self.workers, **self.build))
        self._note = f"trained on the store {self.path}"
        return self.path

    def _read_table(self) -> dict:
        """The store's layout, checked: fields, parameter values and their descriptions (read once)."""
        if self._table is not None:
            return self._table
        if self.source is None:
            raise RuntimeError("this volume adapter was rebuilt from a run's DataSpec and has no data; use "
                               "build_adapter('volume', source=..., path=...) to read data")
        path = self._store_path()
        ds = open_volume_store(path)
        # sorted: a store lists its members in no fixed order, and the channel order must not vary
        volumes = sorted(n for n, v in ds.data_vars.items() if set(self.dims) <= set(v.dims))
        fields = self.fields if self.fields is not None else volumes
        missing = [f for f in fields if f not in ds.data_vars]
        if missing or not fields:
            if not volumes:  # nothing is over dims: the names are what is wrong, not the fields
                shapes = ", ".join(f"{n} {tuple(v.dims)}" for n, v in sorted(ds.data_vars.items()))
                raise ValueError(f"{path}: no variable is over the dims {self.dims} (sample_dim={self.sample_dim!r}); "
                                 f"the variables are {shapes}; name the store's dims with dims=[...] and "
                                 "sample_dim=... (a volume is 3-D: sample_dim plus three spatial dims)")
            raise ValueError(f"{path}: no field(s) {missing or '(none chosen)'}; the store's 3-D variables over "
                             f"{self.dims} are {volumes} (all variables: {sorted(ds.data_vars)}); "
                             "pass fields=[...]")
        want = {self.sample_dim, *self.dims}
        for f in fields:
            if set(ds[f].dims) != want:
                raise ValueError(f"{path}: field {f!r} has dims {ds[f].dims}, expected {sorted(want)}; "
                                 "name them with sample_dim= and dims=")
        n = ds.sizes[self.sample_dim]
        params = self.params if self.params is not None else [
            name for name, v in ds.variables.items() if v.dims == (self.sample_dim,) and name not in fields
            and name != self.sample_dim and np.issubdtype(v.dtype, np.number)]
        if self.params is None:
            log.info("%s: conditioning on every numeric variable along %s: %s (params=[...] chooses)", path,
                     self.sample_dim, ", ".join(params) or "none")
        values, meta = {}, {}
        for name in params:
            values[name], meta[name] = self._param(ds, path, name, n)
        unknown = sorted(set(self.units) - set(params)) + sorted(set(self.features) - set(params))
        if unknown:
            raise ValueError(f"units/features given for {unknown}, which are not among the conditions {params}")
        self.fields = fields
        self._table = {
            "path": path, "n": n, "values": values, "meta": meta,
            "shape": [int(ds.sizes[d]) for d in self.dims],
            "variables": {f: plain_json(ds[f].attrs, f"{f}.attrs") for f in fields},
            "dtypes": {f: "float64" if ds[f].dtype == np.float64 else "float32" for f in fields},
            "coords": {d: ({"values": ds[d].values.tolist(), "dtype": str(ds[d].dtype),
                            "attrs": plain_json(ds[d].attrs, f"{d}.attrs")} if d in ds.coords else None)
                       for d in self.dims},
            "attrs": plain_json(ds.attrs, "attrs"),
            "periodic": self._periodic(ds.attrs.get("periodic"), [d for d in ds[fields[0]].dims if d != self.sample_dim]),
        }
        return self._table

    def _param(self, ds: xr.Dataset, path: str, name: str, n: int) -> tuple[np.ndarray, dict]:
        if name in ds.variables and ds[name].dims == (self.sample_dim,):
            v, attrs, units_key = ds[name].values, ds[name].attrs, "units"
        elif name in ds.attrs and np.size(ds.attrs[name]) in (1, n):
            v, attrs, units_key = np.broadcast_to(ds.attrs[name], (n,)), ds.attrs, f"{name}_units"
        else:
            along = [k for k, v in ds.variables.items() if v.dims == (self.sample_dim,) and k != self.sample_dim]
            raise ValueError(f"{path}: no parameter {name!r}; variables along {self.sample_dim!r}: {along or 'none'}, "
                             f"dataset attributes: {sorted(ds.attrs)}; pass params=[...]")
        try:
            v = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: parameter {name!r} is not numeric") from None
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: parameter {name!r} has NaN/Inf for some samples; repair or drop them")
        units = self.units.get(name, attrs.get(units_key))
        if units is None:
            raise ValueError(f"{path}: parameter {name!r} has no {units_key!r} attribute; pass "
                             f"units={{{name!r}: '...'}} ('1' for a dimensionless number)")
        return v, {"units": str(units), "feature": self.features.get(name, "linear"),
                   "description": str(attrs.get("long_name", "")) if units_key == "units" else ""}

    def _periodic(self, stored: Any, store_dims: Sequence[str] = ()) -> list[bool]:
        """One flag per axis of ``dims``: ``periodic=`` as given (in the order of ``dims``), else the
        store's ``periodic`` attribute, whose per-axis list is in the order of the store's own dims
        (``store_dims``, those of the first field) and is put in the order of ``dims`` here."""
        given, order = self.periodic, list(self.dims)
        if given is None:
            given = True if self.source != "store" else (stored if stored is not None else False)
            if self.source == "store" and stored is None:
                log.info("the store declares no 'periodic' attribute: zero padding on every axis "
                         "(pass periodic=true for a periodic box)")
            elif self.source == "store" and sorted(store_dims) == sorted(self.dims):
                order = list(store_dims)
        # booleans, or 0/1 as netCDF stores them (it has no boolean attributes)
        flags = np.asarray(given).reshape(-1).tolist()
        flags = flags * 3 if len(flags) == 1 else flags
        if len(flags) != 3 or not all(isinstance(f, (bool, int)) and f in (0, 1) for f in flags):
            raise ValueError(f"periodic must be a bool (or 0/1) or one per axis {order}, got {given!r}")
        by_dim = dict(zip(order, flags))
        if order != list(self.dims) and len(set(flags)) > 1:
            log.info("the store's periodic attribute %s is per axis of its own dims %s: periodic along %s",
                     given, tuple(order), ", ".join(d for d in self.dims if by_dim[d]) or "none")
        return [bool(by_dim[d]) for d in self.dims]

    def _items(self, split: str, normaliser: Normaliser, cond: np.ndarray | None = None) -> VolumeItems:
        table = self._read_table()
        idx = split_indices(table["n"], split, self.val_fraction, self.split_seed)
        cond = np.zeros((len(idx), 0)) if cond is None else cond
        return VolumeItems(table["path"], self.fields, self.sample_dim, self.dims, idx, normaliser, cond)

    def spec(self) -> DataSpec:
        if self._spec is None:
            table = self._read_table()
            identity = Normaliser([0.0] * len(self.fields), [1.0] * len(self.fields))
            train = self._items("train", identity)
            pick = np.sort(np.random.default_rng(self.split_seed).permutation(len(train))[: self.stats_samples])
            # One sample in memory at a time. Each sample's mean and centred variance are exact
            # (two passes over it), and the law of total variance combines them: E[x^2] - E[x]^2
            # would cancel away the fluctuations of a field far from zero (1e5 Pa +- 1e-4 Pa).
            means, variances = [], []
            for i in pick:
                x = train.raw(i).reshape(len(self.fields), -1).astype(np.float64)
                means.append(x.mean(1))
                variances.append(((x - means[-1][:, None]) ** 2).mean(1))
            means, variances = np.array(means), np.array(variances)
            mean = means.mean(0)
            std = np.sqrt(variances.mean(0) + ((means - mean) ** 2).mean(0))
            normaliser = Normaliser(mean.tolist(), std.tolist(), channels=self.fields)
            values = {k: v[train.indices] for k, v in table["values"].items()}
            cond = CondSchema([CondVar(name, units=m["units"], min=float(values[name].min()),
                                       max=float(values[name].max()), feature=m["feature"],
                                       description=m["description"]) for name, m in table["meta"].items()])
            self._spec = DataSpec(
                adapter="volume", dims=3, channels=list(self.fields), shape=table["shape"],
                padding=["circular" if p else "zeros" for p in table["periodic"]],
                normaliser=normaliser, cond=cond, sigma_data=1.0,  # standardised per channel
                output={"dims": list(self.dims), "variables": table["variables"], "dtypes": table["dtypes"],
                        "coords": table["coords"], "attrs": table["attrs"], "source": self.source},
                notes=[self._note, f"per-channel mean/std over {len(pick)} training samples"],
            )
        return self._spec

    def dataset(self, split: str = "train") -> VolumeItems:
        spec = self.spec()
        table = self._read_table()
        idx = split_indices(table["n"], split, self.val_fraction, self.split_seed)
        values = {k: v[idx] for k, v in table["values"].items()}
        cond = spec.cond.encode(values, batch=len(idx), warn=False).numpy()  # val may leave the train range
        return self._items(split, spec.normaliser, cond)

    def heldout(self, n: int, seed: int = 0) -> tuple[xr.Dataset, dict]:
        spec = self.spec()
        val = self._items("val", spec.normaliser)
        pick = heldout_picks(n, len(val), seed, "volumes", "train with a larger data.kwargs.val_fraction")
        x = val.raws(pick)
        index = val.indices[pick]
        cond = {k: [float(v) for v in self._read_table()["values"][k][index]] for k in spec.cond.names}
        x = spec.normaliser.normalise(torch.from_numpy(x), channel_axis=1)  # in the store's precision
        return self.to_xarray(x, cond), cond

    # ------------------------------------------------------------------ inference side
    @classmethod
    def from_spec(cls, spec: DataSpec) -> VolumeAdapter:
        if spec.adapter != "volume" or spec.dims != 3:
            raise ValueError(f"not a volume DataSpec (adapter {spec.adapter!r}, dims {spec.dims})")
        out = spec.output
        if not isinstance(out.get("dims"), list) or not isinstance(out.get("coords"), dict):
            raise ValueError("malformed volume DataSpec: output needs a list of dims and a dict of coords")
        check_output_grid(spec, out["dims"], out["coords"])
        dtypes = out.get("dtypes") or {}
        if not isinstance(dtypes, dict) or set(dtypes) - set(spec.channels) or set(dtypes.values()) - {"float32", "float64"}:
            raise ValueError(f"malformed volume DataSpec: output dtypes must map channels to float32 or float64, "
                             f"got {dtypes!r}")
        adapter = cls.__new__(cls)
        adapter.source, adapter.path, adapter._table = None, None, None
        adapter.fields, adapter.dims, adapter._spec = list(spec.channels), list(spec.output["dims"]), spec
        return adapter

    def to_xarray(self, x: torch.Tensor | np.ndarray, cond: Mapping[str, Any]) -> xr.Dataset:
        spec = self.spec()
        x = torch.as_tensor(x)
        if x.ndim != 5 or list(x.shape[1:]) != [len(spec.channels), *spec.shape]:
            raise ValueError(f"expected normalised volumes [N, {len(spec.channels)}, {', '.join(map(str, spec.shape))}], "
                             f"got shape {tuple(x.shape)}")
        n = x.shape[0]
        values = spec.normaliser.denormalise(x.double(), channel_axis=1).numpy()
        out = spec.output
        dims = ("member", *out["dims"])
        coords: dict[str, Any] = {"member": ("member", np.arange(n))}
        for d, c in out["coords"].items():
            if c is not None:
                coords[d] = (d, np.asarray(c["values"], dtype=c["dtype"]), dict(c["attrs"]))
        checked, cond_coords = condition_coords(spec.cond, cond, n)
        coords.update(cond_coords)
        dtypes = out.get("dtypes") or {}  # the store's float64 fields stay float64 (an offset of 1e5 Pa needs it)
        data = {name: xr.Variable(dims, values[:, c].astype(dtypes.get(name, "float32")), dict(out["variables"][name]))
                for c, name in enumerate(spec.channels)}
        attrs = {**out["attrs"], "conditions": " ".join(checked) or "none (unconditional)"}
        if "periodic" in attrs:  # the store's was per axis of its own dims, or overridden by periodic=
            attrs["periodic"] = [padding == "circular" for padding in spec.padding]  # per axis of these dims
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def to_tensor(self, ds: xr.Dataset) -> torch.Tensor:
        spec = self.spec()
        missing = [c for c in spec.channels if c not in ds.data_vars]
        if missing:
            raise ValueError(f"the Dataset lacks field(s) {missing}; it has {sorted(ds.data_vars)}")
        check_units(ds, {name: spec.output["variables"].get(name) for name in spec.channels})
        dims = list(spec.output["dims"])
        lead = self.example_dim(ds)
        arrays = []
        for name in spec.channels:
            da = ds[name]
            if da.ndim != 4 or da.dims[0] != lead or list(da.dims[1:]) != dims or list(da.shape[1:]) != list(spec.shape):
                raise ValueError(f"field {name!r} must have dims ({lead or '<member or sample>'}, {', '.join(dims)}) "
                                 f"and shape (N, {', '.join(map(str, spec.shape))}); got {da.dims} {da.shape}")
            arrays.append(np.asarray(da.values, dtype=np.float64))
        x = torch.from_numpy(np.stack(arrays, axis=1))
        return spec.normaliser.normalise(x, channel_axis=1)

    def example_dim(self, ds: xr.Dataset) -> str | None:
        field = ds.get(self.spec().channels[0])
        return field.dims[0] if field is not None and field.ndim == len(self.spec().shape) + 1 else None

    def write(self, ds: xr.Dataset, out: str | Path) -> list[Path]:
        spec = self.spec()
        missing = [c for c in spec.channels if c not in ds.data_vars]
        if missing:
            raise ValueError(f"the Dataset lacks field(s) {missing} (expected the output of to_xarray)")
        for name in spec.channels:
            finite = np.isfinite(ds[name].values)
            if not finite.all():
                raise ValueError(f"{name!r} has NaN/Inf at {np.argwhere(~finite)[0].tolist()} {ds[name].dims}; "
                                 "nothing was written (a diverged sampler? try more steps)")
        out = Path(out)
        if names_a_store(out):
            store, png = out, out.with_name(f"{out.stem}_slices.png")
        else:
            store, png = out / "samples.zarr", out / "slices.png"
        check_no_namesake(store)
        return [write_store(ds, store), slices_png(ds, spec, png)]

    def evaluate(self, samples: xr.Dataset, heldout: xr.Dataset, cond: Mapping[str, Any], out: str | Path) -> dict:
        """Fitted spectral slopes per channel (k in [1, N/2]); for ``grf``, against the requested -alpha."""
        return slope_scores(samples, heldout, cond, self.spec(), Path(out))
