"""Which run directory a training config writes, and whether it may: one writer holds it, a new
run starts there, or the same model resumes from its last checkpoint. A resume that would change
what the model *is* (``IDENTITY_KEYS``) is refused with the settings that differ; the config saved
with the run finds its data again from any folder (local data paths made absolute)."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from sciddpm.data import ADAPTERS, Adapter, DataSpec
from sciddpm.diffusion.denoiser import UNUSED_WITH_SCHEDULE
from sciddpm.distributed import broadcast
from sciddpm.runs import CONFIG, WEIGHTS, RunDir, RunError

log = logging.getLogger("sciddpm.training")

# Config sections that define what the model *is*: a resumed run must not change them.
IDENTITY_KEYS = ("data", "model", "diffusion", "seed")


def with_absolute_data_paths(cfg: dict) -> dict:
    """The adapter's ``path_arguments`` (``data.kwargs.path``...) made absolute where they are
    local, so that the saved config finds the data again from any folder (``sciddpm evaluate``, a
    resumed run); URLs (``gs://...``) stay as given. The caller's config is left as it was."""
    data = cfg.get("data") or {}
    path_arguments = _path_arguments(data.get("name"))  # an unknown adapter lists the known ones
    kwargs = dict(data.get("kwargs") or {})
    if not any(key in kwargs for key in path_arguments):
        return cfg  # nothing to change: the config stays exactly as given (resume compares it)
    # (links kept as given: a moved data set is resumed through a link at its old path)
    absolute = _local_paths_mapped(kwargs, path_arguments, lambda p: os.path.abspath(os.path.expanduser(p)))
    return {**cfg, "data": {**data, "kwargs": absolute}}


def _local_paths_mapped(kwargs: Mapping[str, Any], keys: Sequence[str], change: Callable[[str], str]) -> dict:
    """``kwargs`` with ``change`` applied to each local path its ``keys`` name (a path, or each
    of a list of them); URLs (``gs://...``) and other values stay as they are."""
    def one(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [one(v) for v in value]
        return change(value) if isinstance(value, str) and "://" not in value else value

    return {key: one(value) if key in keys else value for key, value in kwargs.items()}


def _known_path_arguments(adapter: Any) -> tuple[str, ...]:
    """:func:`_path_arguments`, or none for an adapter not registered here (a saved config's)."""
    try:
        return _path_arguments(adapter)
    except (KeyError, ValueError, TypeError):
        return ()


def _path_arguments(adapter: str | None) -> tuple[str, ...]:
    """The keyword arguments of the adapter registered as ``adapter`` that name local data."""
    builder = ADAPTERS.get(adapter)  # an unknown name lists the known ones
    takes = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values())
    path_arguments = getattr(builder, "path_arguments", Adapter.path_arguments)
    if path_arguments is Adapter.path_arguments:  # the inherited default: `path`, where the adapter takes one
        return tuple(key for key in path_arguments if key in takes or takes_any)
    unknown = [key for key in path_arguments if key not in takes]
    if unknown and not takes_any:
        raise TypeError(f"adapter {adapter!r} lists path_arguments {unknown} that it does not take; "
                        f"it takes: {', '.join(takes)}")
    return tuple(path_arguments)


def hold_run_dir(cfg: dict, rank: int, world: int, held: contextlib.ExitStack) -> RunDir:
    """The run directory: rank 0 names it and holds it (one writer per run) until training ends,
    before any data is built, so a run in use is refused at once; every rank gets the verdict."""
    path, refusal = None, None
    if rank == 0:
        path = _run_path(cfg)
        try:
            lock = RunDir(path).lock()
            if lock is not None:
                held.enter_context(lock)  # released when training ends, however it ends
        except RunError as error:
            refusal = str(error)
    path, refusal = broadcast((path, refusal), world)  # every rank stops, none waits at a barrier
    if refusal is not None:
        raise RunError(refusal)
    return RunDir(path)


def _run_path(cfg: dict) -> str:
    name = cfg.get("name") or cfg["model"].get("preset") or cfg["data"]["name"]
    return str(Path(cfg["runs_dir"]) / name)


def prepare_run_dir(run: RunDir, cfg: dict, spec: DataSpec, rank: int, world: int) -> int:
    """Create a fresh run or check that an existing one is the same model; returns the start step.

    Rank 0 does the work; its verdict (a step or an error message) goes to every rank, so a
    refused resume stops all ranks instead of leaving them waiting at a barrier.
    """
    verdict: int | str = 0
    if rank == 0:
        try:
            verdict = _claim_run_dir(run, cfg, spec)
        except RunError as error:
            verdict = str(error)
    verdict = broadcast(verdict, world)
    if isinstance(verdict, str):
        raise RunError(verdict)
    return int(verdict)


def _claim_run_dir(run: RunDir, cfg: dict, spec: DataSpec) -> int:
    """The start step: 0 for a new run, the last checkpoint's step when resuming the same run. A
    directory whose run stopped before its first checkpoint holds nothing to protect, so it starts
    afresh under the new settings (say, after fixing the model that made the first try fail)."""
    start_step = 0
    if (run.path / CONFIG).exists():
        if run.checkpoint_steps() or (run.path / WEIGHTS).exists():
            _check_same_run(run, cfg, spec)
        else:
            log.info("%s holds no trained weights yet: starting it afresh", run.path)
        run.clean_staging()
        start_step = run.usable_checkpoint()
        if start_step:
            run.publish(start_step)  # a kill between checkpoint and publication left older weights
        if start_step and start_step >= int(cfg["trainer"]["steps"]):
            return start_step  # nothing to train: the run and its config stay as they are
        if start_step:
            _say_if_trainer_changed(run.load_config(), cfg, start_step)
        run.truncate_metrics(start_step)
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config({**cfg, "name": run.path.name})  # the name it was resolved to (model preset or data name)
    run.save_data_spec(spec.to_dict())
    return start_step


def _check_same_run(run: RunDir, cfg: dict, spec: DataSpec) -> None:
    """Refuse a resume that would change the model or its data. A data path that differs is
    refused too, even when only the data moved: the statistics in the spec cannot tell a copy
    from other data with the same ranges (relabelled files), so the refusal says how to point
    the old path at the moved data instead."""
    previous = run.load_config()
    for key in IDENTITY_KEYS:
        if identity(previous, key) != identity(cfg, key):
            changes = differences(identity(previous, key), identity(cfg, key), key)
            moved = key == "data" and all(_is_path_argument(name, cfg) and isinstance(old, str) and isinstance(new, str)
                                          for name, old, new in changes)  # (no link stands in for None)
            raise RunError(
                f"run directory {run.path} already holds a run with other '{key}' settings - {_shown(changes)}. "
                + ("If the same data only moved, make its old path lead to it (ln -s NEW OLD) and resume with the "
                   "old path; else resume" if moved else "Resume")
                + " it with the same settings, or start a new run with name=<new name>.")
    # statistics agree to rounding: the same data summed in another order (a newer sciddpm) resumes;
    # a path named in the spec's notes counts as the place it leads to (the same data, another path)
    trained_on = _with_real_paths(run.load_data_spec(), previous)
    now = _with_real_paths(json.loads(json.dumps(spec.to_dict())), cfg)
    changes = differences(trained_on, now, "data_spec", rel_tol=1e-9)
    if changes:
        raise RunError(
            f"the data as read now differs from what {run.path} was trained on - {_shown(changes)}. The data, or "
            f"how it is read, changed since the run started. Start a new run with name=<new name>.")


def _with_real_paths(spec: Any, cfg: Mapping[str, Any]) -> Any:
    """A data spec (plain JSON) with the local data paths ``cfg`` names, as typed, replaced by the
    places they lead to."""
    data = cfg.get("data") or {}
    typed: list[str] = []

    def collect(path: str) -> str:
        typed.append(path)
        return path

    _local_paths_mapped(data.get("kwargs") or {}, _known_path_arguments(data.get("name")), collect)
    for path in typed:
        spec = _replaced(spec, path, os.path.realpath(path))
    return spec


def _replaced(value: Any, before: str, after: str) -> Any:
    """``value`` (plain JSON) with ``before`` replaced by ``after`` in every string."""
    if isinstance(value, Mapping):
        return {k: _replaced(v, before, after) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, before, after) for v in value]
    return value.replace(before, after) if isinstance(value, str) and before != after else value


def _is_path_argument(dotted: str, cfg: Mapping[str, Any]) -> bool:
    """Whether ``data.kwargs.<name>`` (``dotted``, maybe with ``[i]``) names local data."""
    parts = dotted.split(".")
    if len(parts) < 3 or parts[1] != "kwargs":
        return False
    return parts[2].split("[")[0] in _known_path_arguments((cfg.get("data") or {}).get("name"))


# trainer settings that change how a run goes on, not only how it is watched or when it stops
_QUIET_TRAINER_KEYS = {"steps", "log_every", "checkpoint_every", "num_workers", "device", "compile"}


def _say_if_trainer_changed(previous: Mapping[str, Any], cfg: Mapping[str, Any], start_step: int) -> None:
    """A resume may change the trainer (a larger batch on a bigger machine): allowed, but said,
    since config.yaml then records the new settings for the whole run."""
    changes = [change for change in differences(previous.get("trainer") or {}, cfg.get("trainer") or {}, "trainer")
               if change[0].split(".")[1].split("[")[0] not in _QUIET_TRAINER_KEYS]
    if changes:
        log.warning("resuming at step %d with other trainer settings - %s; config.yaml records the new ones from "
                    "now on (metrics.jsonl keeps what the steps before it did)", start_step, _shown(changes))


def _shown(changes: list[tuple[str, Any, Any]]) -> str:
    changes = sorted(changes, key=lambda change: change[0].count("."))  # data.name before data.kwargs.*
    shown = "; ".join(f"{name}: {_short(old)} there, {_short(new)} now" for name, old, new in changes[:6])
    return shown + (f" (and {len(changes) - 6} more)" if len(changes) > 6 else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def identity(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg[key]`` as far as it defines the model: with a DDPM table, p_mean/p_std (EDM's training
    noise) change nothing, and runs saved when the ddpm/vpred presets still carried them resume;
    absent, null and empty ``data.kwargs`` are the same, and an argument left out means the
    adapter's default (a preset that came to name a new option, ``cond: null``, resumes old runs)."""
    value = cfg.get(key)
    if key == "diffusion" and isinstance(value, Mapping) and value.get("schedule"):
        value = {k: v for k, v in value.items() if k not in UNUSED_WITH_SCHEDULE}
    if key == "data" and isinstance(value, Mapping):  # no kwargs, null and {} all mean the adapter's defaults
        kwargs = {**_defaults(value.get("name")), **dict(value.get("kwargs") or {})}
        # a path through a link is the place it leads to
        value = {**value, "kwargs": _local_paths_mapped(kwargs, _known_path_arguments(value.get("name")),
                                                        os.path.realpath)}
    return value


def _defaults(adapter: Any) -> dict:
    """The keyword defaults of the adapter registered as ``adapter`` ({} where it is unknown here)."""
    try:
        builder = ADAPTERS.get(adapter)
    except (KeyError, ValueError):
        return {}
    return {name: list(p.default) if isinstance(p.default, tuple) else p.default  # as YAML keeps them
            for name, p in inspect.signature(builder).parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}


def differences(old: Any, new: Any, where: str, rel_tol: float = 0.0) -> list[tuple[str, Any, Any]]:
    """The dotted keys (``[i]`` for list items) at which two configs differ, with both values
    ("(absent)" for a missing key); numbers within ``rel_tol`` of each other count as equal."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += differences(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{where}.{key}", rel_tol)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [change for i, (a, b) in enumerate(zip(old, new)) for change in differences(a, b, f"{where}[{i}]", rel_tol)]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    same = math.isclose(old, new, rel_tol=rel_tol) if numbers and rel_tol else old == new
    return [] if same else [(where, old, new)]


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def warn_if_precision_changed(run: RunDir, start_step: int, compute_dtype: str, device: torch.device) -> None:
    """A run resumed on another kind of machine may continue in another network dtype (bf16 follows
    the hardware, sciddpm.precision): allowed - the weights are float32 either way - but said."""
    before = [r["network_dtype"] for r in run.read_metrics() if "network_dtype" in r]
    if before and before[-1] != compute_dtype:
        why = ("trainer.bf16=false keeps float32" if compute_dtype == "bfloat16"
               else f"{device} has no native bf16, or trainer.bf16=false was set")
        log.warning("%s trained in %s up to step %d and continues in %s on %s (%s); metrics.jsonl "
                    "records the dtype of every window", run.path, before[-1], start_step, compute_dtype,
                    device, why)
