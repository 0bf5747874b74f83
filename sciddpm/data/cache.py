"""Where the embedded datasets live once built: one entry per (recipe, version, parameters) under
``$SCIDDPM_CACHE`` (default ``~/.cache/sciddpm``), named by a hash of them and built on first use.

Every builder writes through ``sciddpm.files.atomic_path``, so an entry that is there is complete;
a killed build leaves only a hidden temporary, which the next build of the same entry removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sciddpm.checks import is_integer

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("SCIDDPM_CACHE") or Path.home() / ".cache" / "sciddpm")


def cache_entry(name: str, key: Mapping[str, Any], suffix: str = "") -> Path:
    """``<cache>/<name>-<12 hex digits of the hash of key><suffix>``; ``key`` holds the recipe's
    version and parameters, plain JSON."""
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / f"{name}-{digest}{suffix}"


def ensure_built(path: Path, build: Callable[[Path], Any], what: str,
                 complete: Callable[[Path], bool] = Path.exists) -> Path:
    """``path``, built with ``build(path)`` first when ``complete(path)`` is false. One process
    builds an entry at a time: a second one (another training started meanwhile, a DDP rank)
    waits for it and then finds the entry complete, rather than replacing it under its readers."""
    if complete(path):
        return path
    with _one_builder(path, what):
        if not complete(path):
            log.warning("building %s (first use) at %s", what, path)
            build(path)
    return path


@contextlib.contextmanager
def _one_builder(path: Path, what: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<entry>.lock`` beside the entry, for the duration of a build."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent first uses build twice, each atomically
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process that is building %s at %s", what, path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def recipe_params(recipe: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A recipe's full parameter set: ``defaults`` with ``overrides`` on top (None keeps a default).
    Unknown names list the known ones; a parameter whose default is an int must be an integer
    (2.0 reads as 2) and one whose default is a float a number, else a named error. The recipe
    then checks ranges itself."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"unknown {recipe} parameter(s) {unknown}; known: {sorted(defaults)}")
    params = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    for key, default in defaults.items():
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        value = params[key]
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
            and math.isfinite(value)
        if isinstance(default, int) and not is_integer(value):
            raise ValueError(f"{recipe} parameter {key} must be an integer, got {value!r} (default {default})")
        if not number:
            raise ValueError(f"{recipe} parameter {key} must be a number, got {value!r} (default {default:g})")
        params[key] = type(default)(value)
    return params
