"""Simulated ensemble stores: the zarr layout the volume datasets share, built in parallel and cached.

A store holds ``n`` samples of one or more 3-D fields with dims ``(sample, z, y, x)`` (chunks of
one sample, so reading one item reads one chunk), the physical parameters of each sample as
variables along ``sample``, cell-centre coordinates ``z/y/x`` in box lengths, and attributes that
say how it was made. ``build_store`` writes the skeleton (fields filled with NaN, which zarr does
not even store), then computes the samples in blocks, in ``spawn``-ed worker processes with a tqdm
progress bar; each block is written into its own region by the worker that computed it, so memory
does not grow with ``n``. The store appears under its final name only when every block is in
(``atomic_path``), and a final scan refuses a store with a NaN left in it: nothing is zero-filled.

``ensure_cached`` keeps one store per (recipe, version, parameters) in the dataset cache
(``sciddpm.data.cache``) and builds it on first use.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from sciddpm.data.cache import cache_entry, ensure_built
from sciddpm.data.stores import consolidate
from sciddpm.files import atomic_path

log = logging.getLogger(__name__)

SPATIAL = ("z", "y", "x")

# generate(start, stop, params, **options) -> {field name: float array [stop - start, *shape]}
Generator = Callable[..., Mapping[str, np.ndarray]]


def build_store(out: str | Path, *, shape: tuple[int, ...], fields: Mapping[str, Mapping[str, Any]],
                params: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]], generate: Generator,
                options: Mapping[str, Any], block: int, workers: int | None = None,
                attrs: Mapping[str, Any] | None = None, desc: str = "simulating") -> Path:
    """Write a store of ``len(params values)`` samples to ``out`` (atomically); return ``out``.

    ``fields`` maps each field name to its attrs (units, long_name); ``params`` maps each
    parameter name to (one value per sample, attrs). ``generate`` is a module-level function
    (workers import it by name) called as ``generate(start, stop, params_block, **options)``;
    samples are computed in blocks of ``block``, by ``workers`` processes (default: the CPU
    count; 1 = in this process).
    """
    out = Path(out)
    values = {name: np.asarray(v) for name, (v, _) in params.items()}
    n = len(next(iter(values.values())))
    if any(len(v) != n for v in values.values()) or n < 1:
        raise ValueError(f"every parameter needs one value per sample; got lengths {[len(v) for v in values.values()]}")
    workers = max(1, min(workers or os.cpu_count() or 1, -(-n // block)))
    with atomic_path(out) as tmp:
        _skeleton(tmp, n, shape, fields, params, attrs or {})
        blocks = [(start, min(start + block, n)) for start in range(0, n, block)]
        jobs = [(str(tmp), generate, a, b, {k: v[a:b] for k, v in values.items()}, dict(options)) for a, b in blocks]
        from tqdm.auto import tqdm

        with tqdm(total=n, desc=desc, unit="sample", dynamic_ncols=True) as bar:
            if workers == 1:
                for job in jobs:
                    bar.update(_fill(*job))
            else:
                spawn = multiprocessing.get_context("spawn")  # zarr 3 + fork can deadlock
                with ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=_end_with_parent) as pool:
                    for done in as_completed([pool.submit(_fill, *job) for job in jobs]):
                        bar.update(done.result())
        _check_complete(tmp, list(fields))
    return out


def _skeleton(path: Path, n: int, shape: tuple[int, ...], fields: Mapping[str, Mapping[str, Any]],
              params: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]], attrs: Mapping[str, Any]) -> None:
    dims = ("sample", *SPATIAL[-len(shape):])
    coords = {d: (d, (np.arange(size) + 0.5) / size,
                  {"units": "1", "long_name": f"{d} of the cell centre, in box lengths (periodic box [0, 1))"})
              for d, size in zip(dims[1:], shape)}
    coords["sample"] = ("sample", np.arange(n), {"long_name": "simulation index"})
    data = {name: (dims, np.broadcast_to(np.float32(np.nan), (n, *shape)), dict(a)) for name, a in fields.items()}
    data.update({name: ("sample", np.asarray(v, dtype=np.float64), dict(a)) for name, (v, a) in params.items()})
    encoding = {name: {"chunks": (1, *shape)} for name in fields}
    xr.Dataset(data, coords=coords, attrs=dict(attrs)).to_zarr(path, mode="w", consolidated=False, encoding=encoding)
    consolidate(path)  # the fills that follow write chunks only: the metadata is final


def _end_with_parent() -> None:
    """A worker ends when the process that started it does, a SIGKILLed one included (left alone,
    the workers of a killed build wait on their pipe for ever). Linux only: prctl(PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _fill(path: str, generate: Generator, start: int, stop: int, params: Mapping[str, np.ndarray],
          options: Mapping[str, Any]) -> int:
    """Compute samples [start, stop) and write them into their region of the store."""
    result = generate(start, stop, params, **options)
    group = zarr.open_group(path, mode="r+")
    for name, values in result.items():
        group[name][start:stop] = np.asarray(values, dtype=np.float32)
    return stop - start


def _check_complete(path: Path, fields: list[str]) -> None:
    group = zarr.open_group(path, mode="r")
    for name in fields:
        array = group[name]
        for i in range(array.shape[0]):
            if not np.isfinite(array[i]).all():
                raise RuntimeError(f"sample {i} of {name!r} has NaN/Inf after the build (a block failed "
                                   "or the simulation diverged); the store was not kept")


def ensure_cached(recipe: str, version: int, params: Mapping[str, Any], build: Callable[[Path], Path]) -> Path:
    """The cached store ``<cache>/<recipe>-<hash>.zarr`` for ``params``, built with ``build(path)``
    on first use (``sciddpm.data.cache``)."""
    path = cache_entry(recipe, {"recipe": recipe, "version": version, **params}, ".zarr")
    return ensure_built(path, build, f"the {recipe} dataset", complete=lambda p: (p / "zarr.json").is_file())
