"""Stores of labelled fields, read and written: ``open_store`` and ``write_store``, for every
adapter and the CLI.

A store is a zarr store (a local directory or ``*.zarr``, or a ``gs://``, ``s3://`` or
``http(s)://`` URL), a netCDF file or an HDF5 file. Every one opens lazily with ``chunks=None``
and no dask: each variable stays a lazily indexed backend array, so ``isel`` reads only the
chunks it touches. That is what keeps training memory flat in the length of a store
(docs/climate.md), and what lets DataLoader workers open the store themselves. Several local
files given as one store (a list, or a glob pattern such as ``era5/*.nc``: a year per file, or
the new CDS's instant and accumulated variables apart) open as one with ``xr.open_mfdataset``,
which needs dask to stay lazy (``pip install 'sciddpm[dask]'``). Samples are written as zarr or
netCDF, atomically.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import warnings
from pathlib import Path, PurePosixPath
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
import zarr

from sciddpm.files import atomic_path

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")
REMOTE_PREFIXES = ("gs://", "s3://", "http://", "https://")
WRITTEN_BY = "sciddpm write_store"  # the stamp that lets a later write replace a store


def open_store(path: str | os.PathLike | Sequence[str | os.PathLike], *,
               storage_options: dict[str, Any] | None = None, what: str = "store", hint: str = "") -> xr.Dataset:
    """Open the zarr / netCDF / HDF5 store at ``path`` (a local path or a URL) lazily; a list of
    local files, or a glob pattern, opens as one store (:func:`open_files`).

    ``gs://`` is read anonymously unless ``storage_options`` say otherwise. ``what`` and
    ``hint`` word the error for a missing local path: "no {what} at {path}; {hint}".
    """
    files = store_files(path, what)
    if files is not None:
        return open_store(files[0], storage_options=storage_options, what=what, hint=hint) if len(files) == 1 \
            else open_files(files, what)
    text = str(path)
    remote = text.startswith(REMOTE_PREFIXES)
    options = dict(storage_options or {})
    if text.startswith("gs://"):
        if importlib.util.find_spec("gcsfs") is None:  # fsspec loads it for gs:// itself
            raise ImportError(f"reading {text} needs gcsfs: pip install 'sciddpm[gcs]' (or pip install gcsfs)")
        options.setdefault("token", "anon")
    elif not remote and not os.path.exists(text):
        local = Path(text)
        aside = sorted(local.parent.glob(f".{local.name}.*.old")) if local.name else []
        if aside:  # atomic_path moved it aside, and the process writing its new version was killed
            hint = (f"a write of it was killed between its two renames: its previous version is at {aside[-1]} "
                    f"(move it back, or write {local.name} again, which restores it first)")
        raise FileNotFoundError(f"no {what} at {text}" + (f"; {hint}" if hint else ""))
    suffix = PurePosixPath(text.rstrip("/")).suffix.lower()
    if suffix in NETCDF_SUFFIXES:
        fmt, opener = "netCDF", lambda: xr.open_dataset(text, chunks=None)
    elif suffix in HDF5_SUFFIXES:
        fmt, opener = "HDF5", lambda: _open_hdf5(text)
    elif remote or suffix == ".zarr" or os.path.isdir(text):
        fmt, opener = "zarr", lambda: _open_zarr(text, options)
    else:
        raise ValueError(f"cannot tell the format of {text}: use a zarr directory or *.zarr, netCDF "
                         f"({', '.join(NETCDF_SUFFIXES)}) or HDF5 ({', '.join(HDF5_SUFFIXES)})")
    try:
        return opener()
    except (OSError, ValueError, KeyError) as err:
        if remote and isinstance(err, OSError):
            raise  # the network's own words (permissions, not found) say more
        first_line = str(err).splitlines()[0] if str(err) else ""
        if "decode_times=False" in str(err):  # xarray could not turn the time axis into dates
            raise ValueError(
                f"cannot read the time axis of {text} as dates ({first_line.rstrip('.')}). sciddpm needs dates, "
                "so rewrite it in units it can decode, e.g. for monthly data in 'months since': "
                "ds = xr.open_dataset(path, decode_times=False); ds['time'] = xr.date_range('<first month>', "
                "periods=ds.sizes['time'], freq='MS', use_cftime=True); ds.to_netcdf(new_path)") from None
        raise ValueError(f"cannot read {text} as a {fmt} store ({type(err).__name__}: {first_line}); is it complete "
                         "and in that format?") from None


def store_files(path: Any, what: str = "store") -> list[str] | None:
    """The local files a path names when it names several: a list (or tuple) of paths, or a glob
    pattern (``*`` and ``?``; a ``[`` is taken as written), sorted; None for one store. A pattern that matches nothing, or
    a listed file that is not there, is an error naming it."""
    if isinstance(path, (list, tuple)):
        files = [os.path.expanduser(str(p)) for p in path]
        if not files:
            raise ValueError(f"the {what} is an empty list of files")
        remote = [f for f in files if f.startswith(REMOTE_PREFIXES)]
        if remote and len(files) > 1:
            raise ValueError(f"several files read as one {what} must be local, got {remote[0]} (a remote zarr "
                             "store is one path)")
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"no {what} file at {', '.join(missing[:3])}"
                                    f"{' ...' if len(missing) > 3 else ''} (of the {len(files)} listed)")
        return files
    text = str(path)  # patterns are * and ? ([ is a folder's own name: run[1]/*.nc)
    if text.startswith(REMOTE_PREFIXES) or not ("*" in text or "?" in text) or os.path.exists(text):
        return None
    files = sorted(glob.glob(os.path.expanduser(text).replace("[", "[[]")))
    if not files:
        raise FileNotFoundError(f"no files match the {what} pattern {text}")
    return files


def store_name(path: Any) -> str:
    """How messages name a store: its path, or the first and last of several files and their count."""
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else f"{path[0]} ... {path[-1]} ({len(path)} files)"
    return str(path)


def open_files(files: Sequence[str], what: str = "store") -> xr.Dataset:
    """Several local netCDF/HDF5 files or zarr stores as one lazy Dataset, combined by their
    coordinates (times one after another, variables side by side), through dask."""
    if importlib.util.find_spec("dask") is None:
        raise ImportError(f"reading {len(files)} files as one {what} needs dask to keep them lazy: pip install "
                          "'sciddpm[dask]' (or pip install dask); or combine them into one zarr store first")
    kinds = {"zarr" if f.rstrip("/").lower().endswith(".zarr") or os.path.isdir(f) else "netCDF" for f in files}
    if len(kinds) > 1:
        raise ValueError(f"the {what} files mix zarr stores and netCDF/HDF5 files; give one kind")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
            return xr.open_mfdataset(list(files), combine="by_coords", chunks={}, data_vars="minimal",
                                     coords="minimal", compat="override", join="exact",
                                     engine="zarr" if kinds == {"zarr"} else None)
    except (OSError, ValueError, KeyError, TypeError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"cannot combine the {len(files)} {what} files {files[0]} ... {files[-1]} into one "
                         f"({type(err).__name__}: {first_line}); they must share one grid and follow each other "
                         "in time (or hold other variables at the same times)") from None


def _open_zarr(path: str, options: dict[str, Any]) -> xr.Dataset:
    with warnings.catch_warnings():  # no consolidated metadata is fine, only slower to open
        warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
        return xr.open_zarr(path, chunks=None, consolidated=None, storage_options=options or None)


def _open_hdf5(path: str) -> xr.Dataset:
    # h5netcdf reads any HDF5 (dimensions without scales become phony_dim_N) and needs h5py;
    # without them netCDF4, if installed, reads HDF5 files written the netCDF-4 way.
    if importlib.util.find_spec("h5netcdf") and importlib.util.find_spec("h5py"):
        return xr.open_dataset(path, engine="h5netcdf", phony_dims="access", chunks=None)
    if importlib.util.find_spec("netCDF4"):
        return xr.open_dataset(path, engine="netcdf4", chunks=None)
    raise ImportError(f"reading HDF5 ({PurePosixPath(path).name}) needs h5netcdf and h5py: "
                      "pip install 'sciddpm[hdf5]'")


def names_a_store(path: str | os.PathLike) -> bool:
    """Whether an output path names a store by its suffix, in any case (``x.zarr``, ``x.nc``,
    ``x.NC``, ``x.nc4``, ``x.h5``: netCDF-4 is HDF5) rather than a folder to write into."""
    return Path(path).suffix.lower() in (".zarr", *NETCDF_SUFFIXES, *HDF5_SUFFIXES)


def write_store(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` atomically: a zarr store if ``path`` ends in .zarr, else a netCDF(-4) file.

    netCDF attributes hold only strings, numbers and flat arrays of numbers. So in a netCDF file
    booleans become int8 0/1, e.g. a store's ``periodic = [True, True, True]``, and any other
    value becomes its JSON text: None, a mapping, strings in a list, nested lists. zarr keeps
    every attribute as it is.

    The store is stamped with a ``written_by`` attribute, and an existing ``path`` is replaced
    only when it carries that stamp: a mistyped ``--out`` must not destroy a data store (nor an
    ensemble store, which ``sciddpm.ensembles`` writes by region).
    """
    path = Path(path)
    if path.exists():
        check_replaceable(path)
    ds = ds.assign_attrs(written_by=WRITTEN_BY)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".zarr":
            ds.to_zarr(tmp, mode="w", consolidated=False)
            consolidate(tmp)
        else:
            netcdf_safe(ds).to_netcdf(tmp)
    return path


def check_no_namesake(path: str | os.PathLike) -> None:
    """An error when samples written by sciddpm already sit beside ``path`` under its name in the
    other format (``x.nc`` for ``x.zarr``): the pictures and WAVs named after ``x`` that go beside
    each would overwrite one another's."""
    path = Path(path)
    for suffix in (".zarr", *NETCDF_SUFFIXES):
        other = path.with_suffix(suffix)
        if other != path and other.exists() and _stamp(other) == WRITTEN_BY:
            raise FileExistsError(
                f"{other.name}, samples written earlier, sits beside {path.name}: the files named after "
                f"{path.stem!r} that go with each (WAVs, PNGs) would overwrite one another's; choose another "
                f"name for --out, or remove {other.name} and its files first")


def _stamp(path: Path) -> Any:
    try:
        with open_store(path) as existing:
            return existing.attrs.get("written_by")
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return None


def check_replaceable(path: Path) -> None:
    """An error unless ``path`` holds a store ``write_store`` wrote (its ``written_by`` stamp)."""
    if _stamp(path) != WRITTEN_BY:
        raise FileExistsError(f"{path} exists and was not written as samples by sciddpm; choose another --out, "
                              "or remove it first if it is to be replaced")


def consolidate(path: str | os.PathLike) -> None:
    """Consolidate a zarr store's metadata once it is complete, so that ``xr.open_zarr`` opens it
    in one read and without its "Failed to open Zarr store with consolidated metadata" warning.
    zarr 3 warns that consolidated metadata is not in its specification yet; xarray and the
    WeatherBench2 stores rely on it, so that warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(str(path))


def netcdf_safe(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy of ``ds`` whose attributes netCDF can hold (as :func:`write_store` says), so
    that ``ds.to_netcdf`` works as well as ``ds.to_zarr``; the data is shared, not copied."""
    ds = ds.copy()
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {k: _netcdf_attr(v) for k, v in ds[name].attrs.items()}
    return ds


def _netcdf_attr(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return np.int8(value)
    if isinstance(value, (str, int, float, np.number)):
        return value
    items = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if items is not None and items.ndim == 1 and items.size:
        if items.dtype == bool:
            return items.astype(np.int8)
        if items.dtype.kind in "iuf":
            return items
    return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, default=str)
