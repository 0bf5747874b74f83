"""Gap filling: members that fill the NaN of observed fields consistently with what was observed.

``Model.infill`` is the way in; this module owns what it does. The observations go through the
adapter into the network's normalised space (which refuses other units and +-inf), the conditions
come from ``cond`` or from the observations themselves, and the core's ``inpainting`` conditions the
denoiser on the known values, so that each observed example gets its own ``n`` members. The
network's tensors are float32, so the known values come out of the sampler rounded; the observed
values are then put back in float64 at the positions ``to_tensor`` read them from, so that a user's
``filled.where(observed.notnull()) == observed`` holds to float64 rounding (exactly for float32 data).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from sciddpm.cases import case_table
from sciddpm.checks import as_count, as_seed
from sciddpm.diffusion import inpainting

log = logging.getLogger("sciddpm")


def fill_gaps(model: Any, observed: xr.Dataset, n: int, cond: Mapping[str, float] | None, *,
              steps: int | None, sampler: str | None, seed: int, guidance: float | None,
              batch_size: int | None, iterations: int) -> xr.Dataset:
    """What ``Model.infill`` returns (see its docstring); ``model`` is a :class:`sciddpm.api.Model`."""
    n = as_count(n, "n")
    seed = as_seed(seed)
    exact = model.adapter.to_tensor(observed).double()  # refuses observations in other units
    x = exact.float()  # what the network sees
    if bool(torch.isinf(x).any()):
        raise ValueError("the observations hold +-inf; only NaN marks a gap to fill. Make them gaps with "
                         "observed.where(np.isfinite(observed)) if that is what they are")
    known = torch.isfinite(x)
    if model.valid is not None:
        known &= model.valid
    gaps = (~known) if model.valid is None else (~known & model.valid)
    if not bool(gaps.any()):
        raise ValueError("the observations have no gaps (NaN) to fill outside the data's own mask")
    given = dict(cond or {})
    unread = [name for name in model.spec.cond.names if name not in given]
    read = model.adapter.cond_from_xarray(observed, unread) if unread else {}
    _warn_if_overriding(model.adapter, model.spec.cond.names, observed, given)
    table = case_table({**read, **given}, model.spec.cond)
    if any(len(v) not in (1, x.shape[0]) for v in table.values()):
        raise ValueError(f"the observations hold {x.shape[0]} example(s); give each condition one value "
                         "for all of them or one per example")
    table = {k: np.broadcast_to(v, (x.shape[0],)) for k, v in table.items()}
    settings = model.sampler_settings(sampler, steps, guidance)
    filled = []
    for i in range(x.shape[0]):
        known_i, mask_i = x[i:i + 1].to(model.device), known[i:i + 1].to(model.device)
        fill = lambda d: inpainting(d, known_i, mask_i, iterations=iterations)  # noqa: E731
        samples = model.generate(table, [(i, j) for j in range(n)],
                                 seed=seed, settings=settings, batch_size=batch_size, wrap=fill)
        # the observed values as given, not via the network's float32: where each one is, the
        # adapter's own to_tensor said (so to_xarray puts it back where it was read from)
        samples = torch.where(known[i:i + 1], exact[i:i + 1], samples.double())
        filled.append(model.labelled(samples, {k: float(v[i]) for k, v in table.items()}, settings, seed))
    lead = model.adapter.example_dim(observed)
    if lead is None:
        ds = filled[0]
    else:
        name = "case" if lead == "member" else lead
        ds = xr.concat(filled, dim=name, coords="different", compat="equals", combine_attrs="drop_conflicts")
        ds = ds.assign_coords({name: observed[lead].values})
    # the observations' scalar coordinates (the date of one field picked with ds.sel(time=...)) stay
    return ds.assign_coords({k: v for k, v in observed.coords.items() if v.ndim == 0 and k not in ds.coords})


def _warn_if_overriding(adapter: Any, names: list[str], observed: xr.Dataset, given: Mapping[str, Any]) -> None:
    """A condition given for observations that carry their own (their dates give dayofyear)
    replaces it: allowed, a counterfactual, but said, since it is usually a slip."""
    for name in (n for n in given if n in names):
        try:
            own = np.asarray(adapter.cond_from_xarray(observed, [name])[name], dtype=float)
        except (KeyError, ValueError):
            continue  # the observations do not carry it
        try:
            wanted = np.asarray(given[name], dtype=float)
            differs = own.shape != np.broadcast_shapes(own.shape, wanted.shape) or not np.allclose(own, wanted)
        except ValueError:  # not one value per observation: case_table says so, in its own words
            continue
        if differs:
            log.warning("%s=%s replaces the observations' own %s (%s): the gaps are filled as if at the former",
                        name, np.array2string(wanted, precision=6), name, np.array2string(own, precision=6))
