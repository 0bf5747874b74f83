"""The data-layer contract: what every adapter gives the rest of sciddpm, and in what form.

An adapter owns the physics of one modality (house rule 6 in docs/architecture.md): units, statistics,
coordinates, masks, periodic axes and the conditioning schema. Everything below ``data/`` sees
only normalised tensors ``[B, C, *S]`` and an encoded conditioning vector ``[B, D]``. This module
defines the pieces those tensors are made from and described by:

* ``CondVar`` / ``CondSchema`` (defined in ``conditioning``) - named physical parameters (pitch in
  Hz), how each becomes a network feature, and validation that names the fix.
* ``Normaliser`` - per-channel affine standardisation, rank-agnostic.
* ``DataSpec`` - everything a run directory must keep about the data so that a model can be used
  without the data: plain JSON, validated on the way in (it may come from a stranger's run).
* ``Adapter`` - the abstract interface, and the ``ADAPTERS`` registry that names adapters.
"""

from __future__ import annotations

import abc
import difflib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciddpm.checks import is_integer
from sciddpm.data.conditioning import (ConditionRangeWarning, CondSchema, CondVar,  # noqa: F401 (re-exported)
                                       UnknownConditionError, _short)
from sciddpm.data.units import check_same_units
from sciddpm.registry import Registry, check_kwargs

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
        mean, std = [_finite_list(v, what) for v, what in ((mean, "mean"), (std, "std"))]
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


def _finite_list(values: Any, what: str) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise ValueError(f"Normaliser {what} must be a list of numbers, got {_short(values)}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
            raise ValueError(f"Normaliser {what} must hold finite numbers, got {_short(v)}")
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


# --------------------------------------------------------------------------- the adapter
class Adapter(abc.ABC):
    """One modality's bridge between files, tensors and labelled xarray objects.

    Training side: built by ``build_adapter(name, **cfg)``, reads data, ``spec()`` measures the
    statistics. Inference side: ``from_spec(spec)`` needs no data, only the run's ``DataSpec``.
    """

    #: the keyword arguments that name local files or folders: a run saves them absolute, so that
    #: ``sciddpm evaluate`` and a resumed run find the data from any folder (URLs stay as given)
    path_arguments: tuple[str, ...] = ("path",)

    @abc.abstractmethod
    def spec(self) -> DataSpec:
        """The data description; on the training side computed once from the training split."""

    @abc.abstractmethod
    def dataset(self, split: str = "train") -> torch.utils.data.Dataset:
        """Items ``{"x": [C, *S] float32 normalised, "cond": [cond.dim] float32}``, optionally with
        ``"mask"`` (bool ``[C, *S]``, False where the value is missing: left out of the loss) and
        ``"weight"`` (``[*S]``, e.g. ``area_weights()``); every item of a dataset has the same keys."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: DataSpec) -> Adapter:
        """An inference-side adapter that needs no data files."""

    @abc.abstractmethod
    def to_xarray(self, x: torch.Tensor, cond: Mapping[str, Any]) -> Any:
        """Normalised ``[N, C, *S]`` -> ``xr.Dataset`` in physical units with a leading ``member`` dim."""

    @abc.abstractmethod
    def to_tensor(self, ds: Any) -> torch.Tensor:
        """The exact inverse of ``to_xarray``: ``xr.Dataset`` -> normalised ``[N, C, *S]``, float64
        (so that ``to_xarray(to_tensor(ds))`` keeps values to float64 rounding; the network is
        given ``.float()``)."""

    @abc.abstractmethod
    def example_dim(self, ds: Any) -> str | None:
        """The dimension of ``ds`` that ``to_tensor`` stacks its N examples along (``member``,
        ``time``, ``sample``...), or None when ``ds`` is one example without such a dimension."""

    @abc.abstractmethod
    def write(self, ds: Any, out: str | Path) -> list[Path]:
        """Write the modality's natural files atomically; return the paths written."""

    @abc.abstractmethod
    def heldout(self, n: int, seed: int = 0) -> tuple[Any, dict]:
        """``n`` validation examples in physical units and their conditioning values."""

    # Optional hooks: the defaults say "this modality has none of it".
    def static_fields(self) -> torch.Tensor | None:
        """Fixed input fields ``[K, *S]`` (normalised, finite), one per name in ``spec().static``.

        They are stored with the weights and concatenated to the network's input, so sampling
        needs no data. Training side only; ``None`` when the spec lists none.
        """
        return None

    def static_mask(self) -> torch.Tensor | None:
        """Bool ``[C, *S]``, False where the data never has a value (e.g. SST over land), or None."""
        return None

    def area_weights(self) -> np.ndarray | None:
        """Per-cell weights ``[*S]`` with mean 1 for losses and scores (cos latitude), or None."""
        return None

    def evaluate(self, samples: Any, heldout: Any, cond: Mapping[str, Any], out: str | Path) -> dict | None:
        """The modality's own scores of ``samples`` against ``heldout`` drawn at ``cond`` (pitch for
        audio, spectral slopes for volumes) for ``sciddpm evaluate``, with any pictures written under
        ``out`` listed in ``"files"``; None when the modality has none."""
        return None

    def evaluate_ensemble(self, ensemble: Any, truth: Any, climatology: Any, out: str | Path) -> dict | None:
        """Scores in physical units of an ensemble Dataset (dims ``case, member, ...``) against the
        truth of each case and a climatological ensemble, pictures under ``out`` listed in
        ``"files"``; None when the modality adds nothing to the generic CRPS and spread/skill."""
        return None

    def cond_from_xarray(self, ds: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The conditions ``names`` (default: all of the schema) of each example in ``ds``, one value
        per example: here a coordinate or variable of that name, scalar or along the example
        dimension (what ``to_xarray`` writes); adapters that derive conditions (day of year from a
        time coordinate) override it."""
        names = self.spec().cond.names if names is None else list(names)
        lead = self.example_dim(ds)
        count = ds.sizes[lead] if lead is not None else 1
        out = {}
        for name in names:
            if name not in ds.variables:
                raise ValueError(f"the Dataset carries no condition {name!r} (it has {sorted(map(str, ds.variables))}); "
                                 f"pass it explicitly (cond={{{name!r}: ...}} or --cond {name}=VALUE)")
            check_same_units(f"condition {name!r}", ds[name].attrs.get("units"), self.spec().cond[name].units or None)
            values = np.asarray(ds[name].values, dtype=np.float64)
            if ds[name].dims not in ((), (lead,)):
                raise ValueError(f"condition {name!r} has dims {ds[name].dims}; expected a scalar or one value "
                                 f"per {lead or 'example'}")
            out[name] = np.broadcast_to(values, (count,)).copy()
        return out


ADAPTERS = Registry("adapter", entry_point_group="sciddpm.adapters")


def register_adapter(name: str):
    """Decorator: ``@register_adapter("audio")`` above an ``Adapter`` subclass."""
    return ADAPTERS.register(name)


def build_adapter(name: str, **cfg: Any) -> Adapter:
    """A training-side adapter, its keyword arguments checked against its signature."""
    return ADAPTERS.build(name, **cfg)


def adapter_from_config(data: Mapping[str, Any]) -> Adapter:
    """The training-side adapter of a config's ``data`` block (``name``, ``kwargs``): as
    ``build_adapter``, but a missing argument is named as the override that gives it
    (``data.kwargs.path=...``)."""
    name, kwargs = data.get("name"), dict(data.get("kwargs") or {})
    builder = ADAPTERS.get(name)
    check_kwargs(builder, kwargs, what=f"adapter {name!r}", config_key="data.kwargs")
    return builder(**kwargs)


def adapter_from_spec(spec: DataSpec | Mapping[str, Any]) -> Adapter:
    """The inference-side adapter named by ``spec.adapter`` (a dict is validated first)."""
    if not isinstance(spec, DataSpec):
        spec = DataSpec.from_dict(spec)
    cls = ADAPTERS.get(spec.adapter)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"adapter {spec.adapter!r} is registered as {cls!r}, which is not an Adapter subclass")
    return cls.from_spec(spec)


# --------------------------------------------------------------------------- shared helpers
def close_match(name: str, known: Sequence[str]) -> str:
    """" (did you mean 'x'?)" for the nearest of ``known`` to a misspelt ``name``, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def name_list(value: Any, what: str, example: str) -> list[str]:
    """``value`` as a list of names; a lone string is refused, not split into letters (a Hydra
    override ``static=land_sea_mask`` arrives as a string: ``static=[land_sea_mask]`` is the list)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"{what} must be a list of names, e.g. {example}; got {value!r}")
    return [str(v) for v in value]


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


def condition_coords(schema: CondSchema, cond: Mapping[str, Any], n: int, dim: str = "member") -> tuple[dict, dict]:
    """The checked conditions of ``n`` examples (``{}``: unconditional) and their coordinates for
    ``to_xarray``: units and description as attributes, a scalar coordinate where one value was
    given for all examples, else one value along ``dim`` (``member``, or a climate field's ``time``)."""
    checked = schema.validate(cond, batch=n, warn=False, require_all=False)
    coords = {}
    for var in (v for v in schema.vars if v.name in checked):
        attrs = {"units": var.units, "long_name": var.description or var.name}
        scalar = np.ndim(cond[var.name]) == 0
        coords[var.name] = ((), checked[var.name][0], attrs) if scalar else (dim, checked[var.name], attrs)
    return checked, coords


def heldout_picks(n: int, count: int, seed: int, what: str, more: str) -> np.ndarray:
    """``n`` distinct positions in a validation split of ``count`` examples, drawn with ``seed``;
    too many (or too few) is an error naming ``what`` is held out and ``more``, how to hold out more."""
    if not is_integer(n) or not 1 <= n <= count:
        raise ValueError(f"asked for {n!r} held-out {what} but the validation split has {count}; lower n "
                         f"(sciddpm evaluate --n), or {more}")
    return np.random.default_rng(seed).choice(count, size=int(n), replace=False)


READ_BYTES = 256 * 2**20  # the most float64 one batched read of training items holds at once


def read_groups(indices: Sequence[int], values_per_item: int) -> Iterator[list[int]]:
    """``indices`` in consecutive groups that each fit ``READ_BYTES`` of float64 (at least one item
    a group): how ``__getitems__`` reads a batch in few store calls with bounded memory - a batch
    of 32 is one group on a 64 x 32 grid, several on a 0.25-degree grid or of 256^3 volumes."""
    per_read = max(1, READ_BYTES // (8 * values_per_item))
    for start in range(0, len(indices), per_read):
        yield [int(i) for i in indices[start:start + per_read]]


def split_indices(n: int, split: str, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministic train/val split of ``range(n)``: a seeded permutation, val gets at least one."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to split into train and val, got {n}")
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return np.sort(chosen)


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
