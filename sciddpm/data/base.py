"""The data-layer contract: the ``Adapter`` interface every modality implements, the
``ADAPTERS`` registry that names adapters, and the small helpers adapters share.

An adapter owns the physics of one modality (house rule 6 in docs/architecture.md): units, statistics,
coordinates, masks, periodic axes and the conditioning schema. Everything below ``data/`` sees
only normalised tensors ``[B, C, *S]`` and an encoded conditioning vector ``[B, D]``. The pieces
those tensors are described by live beside it: ``CondVar`` / ``CondSchema`` in ``conditioning``
(named physical parameters and their validation), ``Normaliser`` / ``DataSpec`` in ``spec`` (what
a run directory keeps about its data).
"""

from __future__ import annotations

import abc
import difflib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciddpm.checks import is_integer
from sciddpm.data.conditioning import CondSchema
from sciddpm.data.spec import DataSpec
from sciddpm.data.units import check_same_units
from sciddpm.registry import Registry, check_kwargs

log = logging.getLogger(__name__)


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
