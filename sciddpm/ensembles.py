"""Large ensembles straight into one zarr store, split over ``torchrun`` ranks and resumable.

    torchrun --nproc_per_node=4 -m sciddpm sample model=volume --cases cases.csv --members 64 --out ens.zarr

The work is the list of (case, member) items in case-major order, cut into fixed batches of
``batch_size`` consecutive items. Each item's noise comes from ``item_seed(seed, case, member)``
(``sciddpm.api``) and each batch is sampled on its own, so a batch's result does not depend on
which rank ran it: 1 rank and N ranks write identical stores.

The protocol: rank 0 creates the store (coordinates, empty arrays chunked 1 x 1 along case and
member, a ``done`` flag per item, and the settings it was made with) while the others wait at a
barrier; every rank then reads ``done``, takes every ``world``-th unfinished batch and writes each
finished item into its own chunks, data first and its ``done`` flag last. Ranks never write the same
chunk. An error flag is all-reduced before the final barrier, so one failing rank makes all of them
stop with an error rather than hang, and rank 0 consolidates the metadata. Running the same command
again after a crash samples only the items whose ``done`` flag is not set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from sciddpm.api import Model
from sciddpm.cases import case_table
from sciddpm.checks import as_count, as_seed
from sciddpm.data.spec import plain_json
from sciddpm.data.stores import consolidate
from sciddpm.distributed import process_group
from sciddpm.files import HeldElsewhere, atomic_path, hold

log = logging.getLogger("sciddpm")

DONE = "done"  # bool (case, member): the item's data is fully written


def write_ensemble(model: Model, cases: Any, members: int, out: str | Path, *, steps: int | None = None,
                   sampler: str | None = None, seed: int = 0, guidance: float | None = None,
                   batch_size: int = 8, progress: bool = True) -> dict:
    """Sample ``members`` members for every case into the zarr store ``out``; returns a summary.

    ``cases`` is what :meth:`Model.ensemble` takes (mapping name -> values, or a DataFrame). Under
    ``torchrun`` (``WORLD_SIZE`` > 1) the work is split over the ranks. The summary says how many
    items this call sampled (``sampled``), how many were already done (``skipped``) and where.
    """
    members, batch_size = as_count(members, "members"), as_count(batch_size, "batch_size")
    if seed is None:
        raise ValueError("an ensemble store needs a fixed seed: it is how a rerun finds the members still "
                         "to draw; pass seed= (--seed)")
    seed = as_seed(seed)
    out = Path(out)
    table = case_table(cases, model.spec.cond)
    count = len(next(iter(table.values()))) if table else 1
    settings = model.sampler_settings(sampler, steps, guidance)
    items = [(i, j) for i in range(count) for j in range(int(members))]
    batches = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
    fingerprint = {"run": model.name, "step": model.step, "seed": int(seed), "members": int(members),
                   "batch_size": int(batch_size), "sampler": settings,
                   "cases": {k: v.tolist() for k, v in table.items()},
                   "network_dtype": model.network_dtype, "compiled": model.compiled,
                   "weights": model.weights_digest()}

    with process_group(model.device.type == "cuda") as (rank, world):
        return _fill(model, out, table, items, batches, int(members), int(seed), settings, fingerprint,
                     rank, world, progress)


def _fill(model: Model, out: Path, table: dict, items: list, batches: list, members: int, seed: int,
          settings: dict, fingerprint: dict, rank: int, world: int, progress: bool) -> dict:
    """Create the store (rank 0) or find it, then sample this rank's share of what is not done."""
    # phase 1: rank 0 holds the store for this job (one writer) and creates it or finds it; the
    # all-reduce doubles as the barrier
    failure, held = None, None
    if rank == 0:
        try:
            held = _hold_store(out)
            _open_or_create(model, out, table, members, settings, seed, fingerprint)
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            failure = err
    try:
        return _sample_pending(model, out, table, items, batches, seed, settings, fingerprint, rank, world,
                               progress, failure)
    finally:
        if held is not None:
            held.close()


def _hold_store(out: Path) -> Any:
    """The one-writer hold on an ensemble store (``sciddpm.files.hold``): a second job writing the
    same store, begun before the first has finished, would mix its members into the first's."""
    try:
        return hold(out, "sciddpm sample")
    except HeldElsewhere as error:
        raise ValueError(f"{out} is being written by {error.holder}; wait for it to finish (the same command "
                         "then has nothing left to do), or choose another --out") from None


def _sample_pending(model: Model, out: Path, table: dict, items: list, batches: list, seed: int, settings: dict,
                    fingerprint: dict, rank: int, world: int, progress: bool, failure: Exception | None) -> dict:
    """Every rank samples its share of the items not yet done (after rank 0's ``failure``, if any)."""
    _agree(failure, world, model.device, f"creating {out} failed on rank 0")

    # phase 2: every rank samples its share of the unfinished batches
    sampled, skipped = 0, 0
    try:
        _check_fingerprint(out, fingerprint)
        done = zarr.open_array(str(out / DONE), mode="r")[...]
        pending = [b for b in batches if not all(done[i, j] for i, j in b)]
        skipped = len(items) - sum(len(b) for b in pending)
        if rank == 0 and skipped:
            log.info("%s: %d of %d items already written; sampling the other %d", out, skipped, len(items),
                     len(items) - skipped)
        mine = pending[rank::world]
        with _bar(sum(len(b) for b in mine), progress and rank == 0) as bar:
            for batch in mine:
                samples = model.generate_batch(table, batch, seed=seed, settings=settings)
                _write_batch(model, out, table, batch, samples, settings, seed)
                sampled += len(batch)
                bar.update(len(batch))
    except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
        failure = err
    _agree(failure, world, model.device, f"ensemble sampling failed on at least one rank; {out} keeps the "
                                         "items that finished - run the same command again to complete it")
    if rank == 0:
        consolidate(out)
    _agree(None, world, model.device, "")
    return {"out": str(out), "items": len(items), "sampled": sampled, "skipped": skipped,
            "rank": rank, "world": world}


# --------------------------------------------------------------------------------- the store
def _open_or_create(model: Model, out: Path, table: dict, members: int, settings: dict, seed: int,
                    fingerprint: dict) -> None:
    if out.exists():
        return  # _check_fingerprint, on every rank, says whether it is the same ensemble
    count = len(next(iter(table.values()))) if table else 1
    first = {k: float(v[0]) for k, v in table.items()}
    template = model.labelled(torch.zeros(1, len(model.spec.channels), *model.spec.shape), first, settings, seed)
    template = template.transpose("member", ...)
    coords = template.drop_vars(list(template.data_vars))
    coords = coords.drop_vars([name for name, c in coords.coords.items()
                               if "member" in c.dims or name in table])
    coords = coords.assign_coords(case=np.arange(count), member=np.arange(members))
    for name, values in table.items():
        attrs = dict(template[name].attrs) if name in template.coords else {"units": model.spec.cond[name].units}
        coords = coords.assign_coords({name: ("case", values, attrs)})
    coords.attrs = {**template.attrs, "sciddpm_ensemble": json.dumps(fingerprint)}
    with atomic_path(out) as tmp:
        coords.to_zarr(tmp, mode="w", consolidated=False)
        group = zarr.open_group(str(tmp), mode="a")
        for name, var in template.data_vars.items():
            rest = var.shape[1:]
            group.create_array(name, shape=(count, members, *rest), chunks=(1, 1, *rest), dtype=var.dtype,
                               fill_value=np.nan if var.dtype.kind == "f" else 0,
                               dimension_names=("case", *var.dims), attributes=plain_json(var.attrs, f"{name}.attrs"))
        group.create_array(DONE, shape=(count, members), chunks=(1, 1), dtype="bool", fill_value=False,
                           dimension_names=("case", "member"),
                           attributes={"long_name": "member written completely"})


def _check_fingerprint(out: Path, fingerprint: dict) -> None:
    try:
        stored = json.loads(zarr.open_group(str(out), mode="r").attrs["sciddpm_ensemble"])
    except (KeyError, FileNotFoundError, ValueError, TypeError) as err:
        raise ValueError(f"{out} exists but is not an ensemble store written by sciddpm ({err}); "
                         "choose another --out or remove it") from None
    expected = json.loads(json.dumps(fingerprint))
    if "weights" not in stored:  # begun by sciddpm before stores recorded the weights: run and step only
        expected.pop("weights")
    if stored != expected:
        changed = [_changed(key, stored.get(key), expected[key])
                   for key in sorted(k for k in expected if stored.get(k) != expected[k])]
        raise ValueError(f"{out} holds an ensemble made with different {'; '.join(changed)}; rerun with the same "
                         "settings to complete it, or choose another --out")


def _changed(key: str, before: Any, now: Any) -> str:
    """One setting of an ensemble store that differs from this call's, with its value there."""
    if isinstance(before, dict) and isinstance(now, dict) and key != "cases":  # sampler.steps, not "sampler"
        return ", ".join(f"{key}.{sub} ({before.get(sub)!r} there, {now.get(sub)!r} now)"
                         for sub in sorted(set(before) | set(now)) if before.get(sub) != now.get(sub))
    if key == "network_dtype":  # bf16 follows the hardware (sciddpm.precision)
        return (f"network_dtype (its network ran in {before}, here it would run in {now}: --fp32 / "
                "load(..., bf16=False) or the same kind of machine)")
    if key == "batch_size":  # a batch's kernels may round with its size: members stay bit for bit
        return f"batch_size (it was begun with --batch-size {before}; pass the same)"
    if key == "compiled":  # compiled kernels round differently (Model.compiled)
        return f"compiled (it was begun {'with' if before else 'without'} --compile / load(..., compile=True); pass the same)"
    if key == "weights":
        return ("weights (the run has the same name and step but other weights: trained again under its name, or "
                "a copy of another run)")
    if key == "seed":
        return f"seed (it was begun with --seed {before}; this call has {now})"
    if key == "cases":
        count = lambda table: len(next(iter(table.values()), [])) if isinstance(table, dict) and table else 1  # noqa: E731
        return f"cases (another case table: {count(before)} case(s) there, {count(now)} now)"
    return f"{key} ({before!r} there, {now!r} now)"


def _write_batch(model: Model, out: Path, table: dict, batch: list, samples: torch.Tensor, settings: dict,
                 seed: int) -> None:
    """Each case's run of members: data into its chunks first, then the members' done flags."""
    group = zarr.open_group(str(out), mode="a")
    start = 0
    while start < len(batch):
        case = batch[start][0]
        stop = start
        while stop < len(batch) and batch[stop][0] == case:
            stop += 1
        first, last = batch[start][1], batch[stop - 1][1] + 1
        ds = model.labelled(samples[start:stop], {k: float(v[case]) for k, v in table.items()}, settings, seed)
        for name, var in ds.data_vars.items():
            group[name][case, first:last] = var.transpose("member", ...).values
        group[DONE][case, first:last] = True
        start = stop


# ----------------------------------------------------------------------------------- ranks
def _agree(failure: Exception | None, world: int, device: torch.device, message: str) -> None:
    """A barrier that also tells every rank whether any rank failed; then all raise together.
    ``device``: the rank's model device, where an NCCL group's tensors must be."""
    if world > 1:
        on_gpu = torch.distributed.get_backend() == "nccl"
        flag = torch.tensor([failure is not None], dtype=torch.int32, device=device if on_gpu else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and failure is None:
            raise RuntimeError(message)
    if failure is not None:
        raise failure


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ensemble", unit="member", disable=None if show else True)
