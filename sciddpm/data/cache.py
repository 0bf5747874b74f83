"""Where the embedded datasets live once built: one entry per (recipe, version, parameters) under
``$SCIDDPM_CACHE`` (default ``~/.cache/sciddpm``), named by a hash of them and built on first use.

Every builder writes through ``sciddpm.files.atomic_path``, so an entry that is there is complete;
a killed build leaves only a hidden temporary, which the next build of the same entry removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
    """``path``, built with ``build(path)`` first when ``complete(path)`` is false."""
    if not complete(path):
        log.warning("building %s (first use) at %s", what, path)
        build(path)
    return path
