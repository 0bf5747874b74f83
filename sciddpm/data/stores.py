"""Opening the stores data comes in: one function, ``open_store``, for every adapter and the CLI.

A store is a zarr store (a local directory or ``*.zarr``, or a ``gs://``, ``s3://`` or
``http(s)://`` URL), a netCDF file or an HDF5 file. Every one opens lazily with ``chunks=None``
and no dask: each variable stays a lazily indexed backend array, so ``isel`` reads only the
chunks it touches. That is what keeps training memory flat in the length of a store
(docs/climate.md), and what lets DataLoader workers open the store themselves.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import PurePosixPath
from typing import Any

import xarray as xr

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")
REMOTE_PREFIXES = ("gs://", "s3://", "http://", "https://")


def open_store(path: str | os.PathLike, *, storage_options: dict[str, Any] | None = None,
               what: str = "store", hint: str = "") -> xr.Dataset:
    """Open the zarr / netCDF / HDF5 store at ``path`` (a local path or a URL) lazily.

    ``gs://`` is read anonymously unless ``storage_options`` say otherwise. ``what`` and
    ``hint`` word the error for a missing local path: "no {what} at {path}; {hint}".
    """
    text = str(path)
    remote = text.startswith(REMOTE_PREFIXES)
    options = dict(storage_options or {})
    if text.startswith("gs://"):
        if importlib.util.find_spec("gcsfs") is None:  # fsspec loads it for gs:// itself
            raise ImportError(f"reading {text} needs gcsfs: pip install 'sciddpm[gcs]' (or pip install gcsfs)")
        options.setdefault("token", "anon")
    elif not remote and not os.path.exists(text):
        raise FileNotFoundError(f"no {what} at {text}" + (f"; {hint}" if hint else ""))
    suffix = PurePosixPath(text.rstrip("/")).suffix.lower()
    if suffix in NETCDF_SUFFIXES:
        return xr.open_dataset(text, chunks=None)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(text)
    if remote or suffix == ".zarr" or os.path.isdir(text):
        with warnings.catch_warnings():  # no consolidated metadata is fine, only slower to open
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*", category=RuntimeWarning)
            return xr.open_zarr(text, chunks=None, consolidated=None, storage_options=options or None)
    raise ValueError(f"cannot tell the format of {text}: use a zarr directory or *.zarr, netCDF "
                     f"({', '.join(NETCDF_SUFFIXES)}) or HDF5 ({', '.join(HDF5_SUFFIXES)})")


def _open_hdf5(path: str) -> xr.Dataset:
    # h5netcdf reads any HDF5 (dimensions without scales become phony_dim_N) and needs h5py;
    # without them netCDF4, if installed, reads HDF5 files written the netCDF-4 way.
    if importlib.util.find_spec("h5netcdf") and importlib.util.find_spec("h5py"):
        return xr.open_dataset(path, engine="h5netcdf", phony_dims="access", chunks=None)
    if importlib.util.find_spec("netCDF4"):
        return xr.open_dataset(path, engine="netcdf4", chunks=None)
    raise ImportError(f"reading HDF5 ({PurePosixPath(path).name}) needs h5netcdf and h5py: "
                      "pip install 'sciddpm[hdf5]'")
