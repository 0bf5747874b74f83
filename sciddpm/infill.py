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
    if bool(torch.isinf(exact).any()):
        raise ValueError("the observations hold +-inf; only NaN marks a gap to fill. Make them gaps with "
                         "observed.where(np.isfinite(observed)) if that is what they are")
    known = torch.isfinite(exact)
    if model.valid is not None:
        known &= model.valid
    gaps = (~known) if model.valid is None else (~known & model.valid)
    if not bool(gaps.any()):
        raise ValueError("the observations have no gaps (NaN) to fill outside the data's own mask")
    _warn_if_unobserved(known, observed, model.adapter.example_dim(observed))
    given = dict(cond or {})
    unread = [name for name in model.spec.cond.names if name not in given]
    read = model.adapter.cond_from_xarray(observed, unread) if unread else {}
    _warn_if_overriding(model.adapter, model.spec.cond.names, observed, given)
    table = case_table({**read, **given}, model.spec.cond)
    examples = exact.shape[0]
    if any(len(v) not in (1, examples) for v in table.values()):
        raise ValueError(f"the observations hold {examples} example(s); give each condition one value "
                         "for all of them or one per example")
    table = {k: np.broadcast_to(v, (examples,)) for k, v in table.items()}
    settings = model.sampler_settings(sampler, steps, guidance)
    filled = []
    for i in range(examples):  # the network sees float32
        known_i, mask_i = exact[i:i + 1].float().to(model.device), known[i:i + 1].to(model.device)
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
    _compare_with_observations(ds, observed if lead != "member" else observed.rename(member="case"))
    # the observations' scalar coordinates (the date of one field picked with ds.sel(time=...)) stay
    return ds.assign_coords({k: v for k, v in observed.coords.items() if v.ndim == 0 and k not in ds.coords})


def _warn_if_unobserved(known: torch.Tensor, observed: xr.Dataset, lead: str | None) -> None:
    """An example with no observed value at all is filled with plain samples of the model, which
    is what inpainting does with nothing to condition on: said, since it is usually a wrong subset
    or a wrong variable (all NaN), not a wish."""
    empty = np.flatnonzero(~known.flatten(1).any(dim=1).cpu().numpy())
    if empty.size == 0:
        return
    labels = observed[lead].values[empty] if lead is not None and lead in observed.coords else empty
    which = "the observations" if known.shape[0] == 1 else (
        f"{empty.size} of {known.shape[0]} observed examples ({lead or 'position'} "
        f"{', '.join(map(str, labels[:5]))}{', ...' if empty.size > 5 else ''})")
    log.warning("%s hold no observed value (all NaN): their members are unconditioned samples of the model, "
                "not gap fills; check the variables and the region the observations were cut from", which)


def _compare_with_observations(ds: xr.Dataset, observed: xr.Dataset) -> None:
    """Warn where an observed value is not found at its own coordinates in the result (and, via
    ``_say_if_dropped``, where observed values have no place in it at all): the
    adapter read the observations by position (a clip cut from a longer recording keeps times that
    do not start at 0; a volume's axis may run the other way) and the result carries the model's
    coordinates, so comparing the two by label would pair the wrong points."""
    for name in [v for v in ds.data_vars if v in observed.data_vars]:
        result = ds[name].isel(member=0) if "member" in ds[name].dims else ds[name]
        given = observed[name]
        if not bool(given.notnull().any()):
            continue
        shared = {d: result.indexes[d] for d in given.dims if d in result.indexes and d in given.indexes}
        try:
            aligned = given.reset_coords(drop=True)
            for dim, labels in shared.items():
                tolerance = _label_tolerance(labels)
                aligned = (aligned.reindex({dim: labels}, method="nearest", tolerance=tolerance) if tolerance
                           else aligned.reindex({dim: labels}))
        except (ValueError, KeyError, TypeError):  # repeated or unordered labels: no match by label at all
            aligned = None
        if aligned is not None and set(aligned.dims) != set(result.dims):
            continue  # (a dim the result does not have: nothing to compare point by point)
        if aligned is not None:
            both = aligned.notnull() & result.notnull()  # (levels the model does not take drop out)
            if bool(both.any()) and np.allclose(result.where(both).values,
                                                aligned.where(both).transpose(*result.dims).values,
                                                rtol=1e-6, atol=0, equal_nan=True):
                _say_if_dropped(name, int(given.notnull().sum()), aligned.notnull() & ~both, both, given, result)
                continue
        differ = [d for d in shared if not np.array_equal(np.asarray(shared[d]), np.asarray(given.indexes[d]))]
        log.warning("the observations of %r were read by position, and their coordinates%s are not the model's: the "
                    "filled fields carry the model's, so compare them with the observations by position (or give "
                    "the observations the model's coordinates first)", name,
                    f" ({', '.join(map(str, differ))})" if differ else "")
        return


def _say_if_dropped(name: str, observed: int, dropped: xr.DataArray, kept: xr.DataArray, given: xr.DataArray,
                    result: xr.DataArray) -> None:
    """Warn where observed values have no place in the result, which has no values there: a level
    the model was not trained at (z observed at 500 and 850 hPa for a model of z@500), its static
    mask (SST over land) - the docs promise observations back as given, so their loss is said,
    with the labels (levels, latitude rows) whose every observation was lost."""
    lost = observed - int(kept.sum())
    if lost <= 0:
        return
    whole = []
    for d in (d for d in given.dims if d in given.indexes and d in result.indexes):
        labels = np.asarray(given.indexes[d])
        found = np.asarray(result.indexes[d])
        tolerance = _label_tolerance(found)
        if tolerance and labels.dtype.kind == "f":
            absent = labels[np.abs(labels[:, None].astype(np.float64) - found[None, :]).min(axis=1) > tolerance]
        else:
            absent = labels[~np.isin(labels, found)]
        others = [o for o in dropped.dims if o != d]
        emptied = np.asarray(dropped[d].values)[(dropped.any(others) & ~kept.any(others)).values] if d in dropped.dims \
            else np.array([])
        shown = [*absent.tolist(), *emptied.tolist()]
        if shown:
            whole.append(f"{d} {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in shown[:5])}"
                         f"{' ...' if len(shown) > 5 else ''}")
    log.warning("%d of the %d observed values of %r have no place in the filled fields, where the model's output has "
                "no values (a level it was not trained on, or its static mask)%s; they are not in the result",
                lost, observed, name, f": every one at {'; '.join(whole)}" if whole else "")


def _label_tolerance(labels: Any) -> float:
    """How far float coordinate labels may be from the model's and still be the same points: a
    thousandth of their step (float32 copies of float64 labels); 0 (exact) for other labels."""
    values = np.asarray(labels)
    if values.dtype.kind != "f" or values.size < 2:
        return 0.0
    return 1e-3 * float(np.abs(np.diff(values.astype(np.float64))).min())


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
