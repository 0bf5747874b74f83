"""The checks of user-given numbers that every layer shares, so that a count or a seed is accepted
or refused the same way wherever it is given (``--n``, ``members=``, ``sampler.steps``, ``seed=``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def is_integer(value: Any) -> bool:
    """An int, numpy integer or whole finite float (2.0 from a YAML file); never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(value) and float(value).is_integer()


def as_count(value: Any, what: str) -> int:
    """``value`` as a count (n, members, steps, batch_size): an integer >= 1, or a named error."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def as_seed(seed: Any) -> int:
    """``None`` draws a fresh seed (recorded in the samples' attributes); else an integer >= 0.
    Every sampling entry point defaults to 0, so the same call gives the same samples."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, ()).item())
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (or None for a fresh one), got {seed!r}")
    return int(seed)


def parse_number(text: str) -> float:
    """A number as written in a table or on a command line: ``float`` without its Python-only
    forms (``3_30`` reads 330 there: a typo, not a number); ValueError otherwise."""
    if "_" in text:
        raise ValueError(f"could not convert string to float: {text!r}")
    return float(text)
