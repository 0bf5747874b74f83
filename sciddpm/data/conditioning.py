"""Conditioning: named physical parameters, how each becomes a network feature, and validation.

A ``CondVar`` is one parameter in the units the data declares (pitch in Hz, day of year), with the
range seen in training; a ``CondSchema`` is the ordered list a model takes. ``encode`` turns
physical values into the network's conditioning tensor ``[B, dim]``; errors name the fix
(unknown names list every known one with units and training range), and values outside the
training range warn rather than being clamped (house rule 8 in docs/architecture.md).
"""

from __future__ import annotations

import csv
import difflib
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


FEATURES = ("linear", "log", "cyclic")
_NAME_RE = re.compile(r"^[^\s=,\[\]]+$")  # usable as `--cond name=value` on a command line


class UnknownConditionError(KeyError, ValueError):
    """A conditioning name the schema does not know; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the sentence as written
        return str(self.args[0])


class ConditionRangeWarning(UserWarning):
    """A conditioning value outside the range seen in training: the model is extrapolating."""


_HEADER_RE = re.compile(r"^\s*([^\[\]]*?)\s*(?:\[([^\[\]]*)\])?\s*$")  # "pitch[Hz]" -> pitch, Hz
_PARENTHESES_RE = re.compile(r"^(.*?)\s*\(([^()]*)\)$")  # "pitch (Hz)" -> pitch, Hz


def split_header(cell: str) -> tuple[str, str | None]:
    """A CSV column header ``name``, ``name[units]`` or ``name (units)`` -> (name, units or None)
    (``velocity (0-127)`` gives units "0-127": a label, compared as written); a header with
    parentheses inside its parentheses stays a whole name (a column of notes). Anything else
    (``pitch[Hz``, ``a[b][c]``) is an error quoting it."""
    match = _HEADER_RE.match(cell)
    if match is None or not match.group(1):
        raise ValueError(f"column header {cell!r} is not 'name' or 'name[units]', e.g. pitch[Hz]")
    name, units = match.group(1), match.group(2)
    inside = _PARENTHESES_RE.match(name) if units is None else None
    if inside and inside.group(1) and "(" not in inside.group(1):
        return inside.group(1), inside.group(2).strip()
    return name, None if units is None else units.strip()


def read_condition_table(path: str | Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV of conditions (header first), each with its line in the file as
    an editor counts it; a spreadsheet's byte-order mark is dropped (``utf-8-sig``). A file in
    another encoding (Excel's cp1252 "CSV") is refused, naming it and the fix."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            return [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        data = Path(path).read_bytes()  # the reader decodes in chunks: find the byte in the whole file
        where = _first_non_utf8(data)
        line = data[:where].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text (byte {data[where]:#04x} on line {line}; "
                         "a spreadsheet's legacy 'CSV' encoding?): save it as UTF-8 (in Excel: 'CSV UTF-8')") from None


def _first_non_utf8(data: bytes) -> int:
    """The position of the first byte of ``data`` that is not UTF-8 (0 if it all decodes)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return 0


def _num(x: float) -> str:
    return f"{x:g}"


def _dimensionless(units: str) -> bool:
    return units in ("", "1")  # "1": the CF/UDUNITS spelling of a pure number


@dataclass(frozen=True)
class CondVar:
    """One named physical parameter, in the units the data declares (e.g. pitch in Hz).

    ``feature`` says what the network sees before standardisation: ``"linear"`` -> value,
    ``"log"`` -> log(value) (for scale-like quantities such as frequency), ``"cyclic"`` ->
    (sin, cos) of 2*pi*value/period (day of year, hour). Linear and log features are then mapped
    affinely so that the training range [min, max] becomes [-1, 1]; sin/cos are already O(1).
    """

    name: str
    units: str
    min: float
    max: float
    feature: str = "linear"
    period: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"condition name {self.name!r} must be a non-empty string without spaces, "
                "'=', ',' or brackets (it is typed as name=value on the command line); from a CSV header, write "
                "it as name[units], or leave the column out of the conditions (data.kwargs.cond=[...])"
            )
        if not isinstance(self.units, str) or not isinstance(self.description, str):
            raise ValueError(f"condition {self.name!r}: units and description must be strings")
        for key in ("min", "max"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"condition {self.name!r}: {key} must be a finite number, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.min > self.max:
            raise ValueError(f"condition {self.name!r}: min {self.min:g} is above max {self.max:g}")
        if self.feature not in FEATURES:
            raise ValueError(
                f"condition {self.name!r}: feature {self.feature!r} is not one of {', '.join(FEATURES)}"
            )
        if self.feature == "log" and self.min <= 0:
            raise ValueError(
                f"condition {self.name!r}: a 'log' feature needs positive values, but the range "
                f"starts at {self.min:g}; use feature='linear' (data.kwargs.features={{{self.name}: linear}})"
            )
        if self.feature == "cyclic":
            p = self.period
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
                raise ValueError(
                    f"condition {self.name!r}: a 'cyclic' feature needs a positive period "
                    f"(e.g. 365.25 for day of year), got {p!r}"
                )
            object.__setattr__(self, "period", float(p))
        elif self.period is not None:
            raise ValueError(f"condition {self.name!r}: period is only used with feature='cyclic'")

    @property
    def width(self) -> int:
        """Number of network feature columns this variable takes."""
        return 2 if self.feature == "cyclic" else 1

    def describe(self) -> str:
        """``pitch [Hz, trained 110–880]``: how error messages show this variable."""
        units = "dimensionless" if _dimensionless(self.units) else self.units
        return f"{self.name} [{units}, trained {_num(self.min)}–{_num(self.max)}]"

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Feature columns ``[B, width]`` (float64) for already-validated physical values ``[B]``."""
        if self.feature == "cyclic":
            phase = 2.0 * np.pi * values / self.period
            return np.stack([np.sin(phase), np.cos(phase)], axis=-1)
        f = np.log if self.feature == "log" else (lambda v: v)
        lo, hi = f(self.min), f(self.max)
        half = (hi - lo) / 2.0 or 1.0  # a single training value: centre it, keep unit slope
        return ((f(values) - (lo + hi) / 2.0) / half)[:, None]


class CondSchema:
    """The conditioning a model takes: an ordered list of ``CondVar``.

    ``encode`` turns a mapping of physical values into the network's conditioning tensor
    ``[B, dim]`` float32 after validating names and values; an empty schema gives ``[B, 0]``.
    """

    def __init__(self, vars: Sequence[CondVar] = ()):  # noqa: A002 - the contract's name
        vars = list(vars)
        if not all(isinstance(v, CondVar) for v in vars):
            raise TypeError("CondSchema takes a list of CondVar")
        names = [v.name for v in vars]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"condition name(s) {', '.join(duplicated)} appear more than once")
        self.vars = vars

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.vars]

    @property
    def dim(self) -> int:
        return sum(v.width for v in self.vars)

    def __getitem__(self, name: str) -> CondVar:
        for v in self.vars:
            if v.name == name:
                return v
        raise UnknownConditionError(self._unknown_message(name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CondSchema) and self.vars == other.vars

    def __repr__(self) -> str:
        return f"CondSchema: {self.describe()}"

    def describe(self) -> str:
        return ", ".join(v.describe() for v in self.vars) or "(none: this model takes no conditions)"

    def _unknown_message(self, name: str) -> str:
        message = f"unknown condition {name!r}; known: {self.describe()}"
        close = difflib.get_close_matches(str(name), self.names, n=1)
        return message + (f" (did you mean {close[0]!r}?)" if close else "")

    def validate(self, values: Mapping[str, Any], batch: int | None = None, *, warn: bool = True,
                 require_all: bool = True) -> dict[str, np.ndarray]:
        """Check ``values`` against the schema; return each as a float64 array of length B.

        Scalars (and length-1 sequences) broadcast to ``batch``; with ``batch=None`` the batch is
        the common length of the sequences given, or 1. Unknown names raise
        ``UnknownConditionError``, a missing name (unless ``require_all=False``) or a non-finite
        value raises ``ValueError``, and a value outside the training range warns
        (``ConditionRangeWarning``).
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"conditioning must be a mapping name -> value, got {type(values).__name__}")
        for name in values:
            if name not in self.names:
                raise UnknownConditionError(self._unknown_message(name))
        missing = [v.describe() for v in self.vars if v.name not in values]
        if missing and require_all:
            raise ValueError(f"missing condition(s): {', '.join(missing)}; pass a value for each")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        arrays = {name: _as_vector(name, value) for name, value in values.items()}
        lengths = {len(a) for a in arrays.values() if len(a) != 1}
        if batch is None:
            if len(lengths) > 1:
                raise ValueError(f"conditioning sequences have different lengths {sorted(lengths)}")
            batch = lengths.pop() if lengths else 1
        if lengths - {batch}:
            raise ValueError(
                f"conditioning sequences have length(s) {sorted(lengths)} but the batch is {batch}; "
                "pass one value per member or a single value for all"
            )
        out = {}
        for var in (v for v in self.vars if v.name in arrays):
            a = np.broadcast_to(arrays[var.name], (batch,)).astype(np.float64)
            if var.feature == "log" and np.any(a <= 0):
                raise ValueError(f"condition {var.describe()} must be positive, got {a[a <= 0][0]:g}")
            slack = 1e-6 * max(var.max - var.min, abs(var.max), 1e-12)  # float round-off in JSON
            if var.feature == "cyclic" and var.max - var.min < var.period:  # dayofyear=400 wrapped to 34.75
                beyond = a[(a < var.max - var.period - slack) | (a > var.min + var.period + slack)]
                if beyond.size:
                    raise ValueError(f"condition {var.describe()} is cyclic with period {_num(var.period)}, and "
                                     f"{beyond[0]:g} is more than a period from the values trained on; give it "
                                     f"within {_num(var.max - var.period)}–{_num(var.min + var.period)}")
            seen = var.min + (a - var.min) % var.period if var.feature == "cyclic" else a  # hour 24 is hour 0
            outside = a[(seen < var.min - slack) | (seen > var.max + slack)]
            if warn and outside.size:
                units = "" if _dimensionless(var.units) else f" {var.units}"
                shown = np.unique(outside)
                values = ", ".join(f"{v:g}" for v in shown[:6]) + (f" and {shown.size - 6} more" if shown.size > 6 else "")
                warnings.warn(
                    f"condition {var.name}={values}{units} {'is' if shown.size == 1 else 'are'} outside the "
                    f"training range {_num(var.min)}–{_num(var.max)}{units}; the model is extrapolating",
                    ConditionRangeWarning, stacklevel=3,
                )
            out[var.name] = a
        return out

    def encode(self, values: Mapping[str, Any], batch: int | None = None, *, warn: bool = True) -> torch.Tensor:
        """Network conditioning ``Tensor[B, dim]`` float32 from physical values (see ``validate``)."""
        checked = self.validate(values, batch, warn=warn)
        b = len(next(iter(checked.values()))) if checked else (batch or 1)
        cols = [v.encode(checked[v.name]) for v in self.vars]
        feats = np.concatenate(cols, axis=1) if cols else np.zeros((b, 0))
        return torch.from_numpy(feats.astype(np.float32))

    def to_dict(self) -> dict:
        return {"vars": [
            {"name": v.name, "units": v.units, "min": v.min, "max": v.max, "feature": v.feature,
             "period": v.period, "description": v.description} for v in self.vars
        ]}

    @classmethod
    def from_dict(cls, d: Any) -> CondSchema:
        if not isinstance(d, Mapping) or set(d) != {"vars"} or not isinstance(d["vars"], list):
            raise ValueError(f"a conditioning schema must be {{'vars': [...]}}, got {_short(d)}")
        fields = {"name", "units", "min", "max", "feature", "period", "description"}
        out = []
        for i, item in enumerate(d["vars"]):
            if not isinstance(item, Mapping) or not {"name", "units", "min", "max"} <= set(item) <= fields:
                raise ValueError(
                    f"conditioning variable #{i} must be a dict with keys name, units, min, max "
                    f"(optional feature, period, description), got {_short(item)}"
                )
            out.append(CondVar(**item))
        return cls(out)


def _as_vector(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)):
        kinds = [value]
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        kinds = []  # numbers throughout: no need to look at each
    else:
        kinds = np.asarray(value, dtype=object).ravel()
    if any(isinstance(v, (str, bytes, bool, np.bool_)) for v in kinds):  # "2.0", True: a slip, not a number
        raise ValueError(f"condition {name!r} must be numeric, got {_short(value)} (a number, not text or a bool)")
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"condition {name!r} must be numeric, got {_short(value)}") from None
    if a.ndim > 1:
        raise ValueError(f"condition {name!r} must be a number or a 1-D sequence, got shape {a.shape}")
    a = a.reshape(-1)
    if a.size == 0:
        raise ValueError(f"condition {name!r} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"condition {name!r} must be finite, got {a[~np.isfinite(a)][0]}")
    return a


def _short(x: Any, n: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= n else text[: n - 3] + "..."
