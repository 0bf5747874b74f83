"""What a run directory keeps about its data, so that a model can be used without the data.

* ``Normaliser`` - per-channel affine standardisation ``(x - mean) / std``, rank-agnostic.
* ``DataSpec`` - the channels, grid, padding, statistics, conditioning schema and output labels
  of one run: plain JSON, validated field by field on the way in (it may come from a stranger's
  run directory, so nothing in it is imported or evaluated).
* ``check_output_grid`` / ``plain_json`` - the checks and conversions adapters use to put their
  output coordinates and attributes into a spec.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sciddpm.data.conditioning import CondSchema, _short

PADDINGS = ("zeros", "circular", "reflect")
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- normalisation
class Normaliser:
    """Per-channel ``(x - mean) / std`` for ``[B, C, *S]`` or ``[C, *S]`` tensors of any rank.

    The channel axis is 1 when ``x.shape[1] == C``, else 0; pass ``channel_axis`` to say which
    when both could hold (an unbatched ``[C, *S]`` whose first spatial size equals C).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, channels: Sequence[str] | None = None):
        """``channels``: the channels' names, for the error about a constant one (not stored)."""
        mean, std = [_finite_list(v, what, channels) for v, what in ((mean, "mean"), (std, "std"))]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"Normaliser needs one mean and one std per channel, got {len(mean)} and {len(std)}")
        for i, s in enumerate(std):
            if s <= 0:
                name = f"{channels[i]!r}" if channels is not None and i < len(channels) else str(i)
                raise ValueError(
                    f"Normaliser: channel {name} has std {s:g} in the training data; a constant or empty "
                    "channel cannot be standardised - drop it, or check the training data"
                )
        self.mean, self.std = mean, std

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Normaliser) and (self.mean, self.std) == (other.mean, other.std)

    def __repr__(self) -> str:
        return f"Normaliser(mean={self.mean}, std={self.std})"

    def _stats(self, x: Any, channel_axis: int | None) -> tuple[Any, Any]:
        c = len(self.mean)
        if channel_axis is None:
            channel_axis = 1 if x.ndim >= 2 and x.shape[1] == c else 0
        if x.ndim < 2 or channel_axis >= x.ndim or x.shape[channel_axis] != c:
            raise ValueError(
                f"Normaliser has {c} channel(s): expected [B, {c}, *S] or [{c}, *S], got shape {tuple(x.shape)}"
            )
        shape = (c,) + (1,) * (x.ndim - channel_axis - 1)  # broadcast over the trailing axes
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            as_t = lambda v: torch.tensor(v, dtype=torch.float64).to(x.device, dtype).reshape(shape)  # noqa: E731
            return as_t(self.mean), as_t(self.std)
        return np.reshape(self.mean, shape), np.reshape(self.std, shape)

    def normalise(self, x: Any, channel_axis: int | None = None) -> Any:
        mean, std = self._stats(x, channel_axis)
        return (x - mean) / std

    def denormalise(self, x: Any, channel_axis: int | None = None) -> Any:
        mean, std = self._stats(x, channel_axis)
        return x * std + mean

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Any) -> Normaliser:
        if not isinstance(d, Mapping) or set(d) != {"mean", "std"}:
            raise ValueError(f"a normaliser must be {{'mean': [...], 'std': [...]}}, got {_short(d)}")
        return cls(d["mean"], d["std"])


def _finite_list(values: Any, what: str, channels: Sequence[str] | None) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"Normaliser {what} must be a list of numbers, got {_short(values)}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise ValueError(f"Normaliser {what} must hold numbers, got {_short(v)}")
        if not math.isfinite(v):
            name = f"{channels[i]!r}" if channels is not None and i < len(channels) else str(i)
            raise ValueError(f"Normaliser: channel {name} has {what} {v}: the training data has NaN or Inf there. "
                             "Measure the statistics over the valid values (np.nanmean / np.nanstd) and give the "
                             "items a \"mask\" (False where a value is missing) so the loss leaves them out")
        out.append(float(v))
    return out


# --------------------------------------------------------------------------- the spec
@dataclass
class DataSpec:
    """What a run directory keeps about its data: enough to use the model without the data.

    Plain JSON through ``to_dict``/``from_dict``; ``from_dict`` validates every field and never
    imports or evaluates anything named in the dict.
    """

    adapter: str
    dims: int
    channels: list[str]
    shape: list[int]
    padding: list[str]
    normaliser: Normaliser
    cond: CondSchema
    sigma_data: float
    output: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    static: list[str] = field(default_factory=list)  # fixed input fields (land-sea mask, orography)

    def __post_init__(self) -> None:
        bad = lambda what: ValueError(f"malformed DataSpec: {what}")  # noqa: E731
        if not isinstance(self.adapter, str) or not self.adapter:
            raise bad(f"adapter must be a registry name (a string), got {_short(self.adapter)}")
        if isinstance(self.dims, bool) or self.dims not in (1, 2, 3):
            raise bad(f"dims must be 1, 2 or 3, got {_short(self.dims)}")
        if not _is_list_of(self.channels, str) or not self.channels:
            raise bad(f"channels must be a non-empty list of names, got {_short(self.channels)}")
        if not _is_list_of(self.shape, int) or len(self.shape) != self.dims or min(self.shape) < 1:
            raise bad(f"shape must list {self.dims} positive integer size(s), got {_short(self.shape)}")
        if not _is_list_of(self.padding, str) or len(self.padding) != self.dims or set(self.padding) - set(PADDINGS):
            raise bad(f"padding must list {self.dims} of {PADDINGS}, got {_short(self.padding)}")
        if not isinstance(self.normaliser, Normaliser) or len(self.normaliser.mean) != len(self.channels):
            raise bad(f"normaliser must be a Normaliser with one mean/std per channel ({len(self.channels)})")
        if not isinstance(self.cond, CondSchema):
            raise bad("cond must be a CondSchema")
        s = self.sigma_data
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise bad(f"sigma_data must be a positive finite number, got {_short(s)}")
        self.sigma_data = float(s)
        if not isinstance(self.output, dict):
            raise bad(f"output must be a dict, got {_short(self.output)}")
        _check_plain_json(self.output, "output")
        if not _is_list_of(self.notes, str):
            raise bad(f"notes must be a list of strings, got {_short(self.notes)}")
        if not _is_list_of(self.static, str):
            raise bad(f"static must be a list of field names, got {_short(self.static)}")

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter, "dims": self.dims, "channels": list(self.channels),
            "shape": list(self.shape), "padding": list(self.padding),
            "normaliser": self.normaliser.to_dict(), "cond": self.cond.to_dict(),
            "sigma_data": self.sigma_data, "output": _copy_json(self.output), "notes": list(self.notes),
            **({"static": list(self.static)} if self.static else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> DataSpec:
        if not isinstance(d, Mapping):
            raise ValueError(f"malformed DataSpec: expected a JSON object, got {_short(d)}")
        required = {"adapter", "dims", "channels", "shape", "padding", "normaliser", "cond", "sigma_data"}
        known = required | {"output", "notes", "static"}
        if required - set(d) or set(d) - known:
            raise ValueError(
                f"malformed DataSpec: missing {sorted(required - set(d))}, unknown {sorted(set(d) - known)}; "
                f"expected keys {sorted(known)}"
            )
        try:
            normaliser = Normaliser.from_dict(d["normaliser"])
            cond = CondSchema.from_dict(d["cond"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"malformed DataSpec: {err}") from None
        rest = {k: d[k] for k in known - {"normaliser", "cond"} if k in d}
        return cls(normaliser=normaliser, cond=cond, **_copy_json(rest))


def _is_list_of(x: Any, kind: type) -> bool:
    return isinstance(x, list) and all(isinstance(i, kind) and not isinstance(i, bool) for i in x)


def _check_plain_json(x: Any, where: str) -> None:
    if x is None or isinstance(x, (str, bool, int)):
        return
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"malformed DataSpec: {where} holds a non-finite number")
        return
    if isinstance(x, list):
        for i, item in enumerate(x):
            _check_plain_json(item, f"{where}[{i}]")
        return
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"malformed DataSpec: {where} has a non-string key {k!r}")
            _check_plain_json(v, f"{where}.{k}")
        return
    raise ValueError(f"malformed DataSpec: {where} holds {type(x).__name__}, not a plain JSON value")


def _copy_json(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy_json(v) for v in x]
    return x


def check_output_grid(spec: DataSpec, dims: Sequence[str], coords: Mapping[str, Any]) -> None:
    """Refuse a spec whose output coordinates do not fit its ``shape``, one spatial dim each.

    ``coords`` maps a dim name to ``{"values": [...], ...}`` or None (no coordinate). Only an
    edited ``data_spec.json`` or a mix of two runs' files can disagree; without this check the
    model would sample at the edited size and fail when labelling, or label the wrong points.
    """
    if len(dims) != len(spec.shape) or not all(isinstance(d, str) for d in dims):
        raise ValueError(f"malformed DataSpec: output dims {_short(list(dims))} do not name the "
                         f"{len(spec.shape)} axes of shape {spec.shape}")
    for dim, size in zip(dims, spec.shape):
        coord = coords.get(dim)
        if coord is None:
            continue
        try:
            count = len(coord["values"])
        except (KeyError, TypeError):
            raise ValueError(f"malformed DataSpec: output coordinate {dim!r} has no list of values") from None
        if count != size:
            raise ValueError(
                f"malformed DataSpec: shape {spec.shape} gives {dim!r} {size} points but its output "
                f"coordinate has {count}; data_spec.json was edited or comes from another run - "
                "use the data_spec.json the run was trained with")


def plain_json(value: Any, where: str = "attrs") -> Any:
    """Attributes (or coordinate values) as plain JSON for a DataSpec or zarr attrs.

    numpy scalars and arrays become Python numbers and lists, dicts and lists are converted item
    by item; anything else - an object, a NaN or infinity, which JSON cannot hold - becomes its
    string, with a warning naming where it was, so nothing disappears silently.
    """
    if isinstance(value, Mapping):
        return {str(k): plain_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    log.warning("%s = %r is not a plain JSON value; kept as its string", where, value)
    return str(value)
