"""The training loop, in one file read top to bottom: set-up, resume, the step, EMA, checkpoints.

One process or many under ``torchrun`` (DDP: NCCL on CUDA, gloo on CPU). Determinism is by
construction rather than by saving RNG states: the data order is a function of (seed, epoch)
(``sciddpm.data.batches``) and every step reseeds its noise from (seed, step, rank), so a run
killed at any moment and resumed from its last complete checkpoint ends with exactly the weights
of an uninterrupted run (on the same device and thread count).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist

from sciddpm import __version__
from sciddpm.assembly import build_denoiser
from sciddpm.checks import is_integer
from sciddpm.config import as_config
from sciddpm.data import ADAPTERS, Adapter, DataSpec
from sciddpm.data.base import adapter_from_config
from sciddpm.data.batches import training_batches
from sciddpm.diffusion.samplers import SAMPLERS, check_settings
from sciddpm.distributed import local_rank, process_group
from sciddpm.nn import BACKBONES
from sciddpm.precision import network_autocast, network_dtype_name, resolve_device
from sciddpm.runs import CONFIG, WEIGHTS, RunDir, RunError

log = logging.getLogger("sciddpm.training")

# Config sections that define what the model *is*: a resumed run must not change them.
_IDENTITY_KEYS = ("data", "model", "diffusion", "seed")
UNUSED_WITH_SCHEDULE = ("p_mean", "p_std")  # EDM's log-normal training noise; a DDPM table replaces it


def train(config: Mapping[str, Any] | Iterable[str] | None = None) -> Path:
    """Train (or resume) the run described by ``config``; returns the run directory.

    ``config`` is a composed config or a list of Hydra overrides, e.g.
    ``sciddpm.train(["data=audio", "trainer=quick"])``.
    """
    cfg = _with_absolute_data_paths(as_config(config))
    trainer = cfg["trainer"]
    on_cuda = trainer["device"] != "cpu" and torch.cuda.is_available()
    with process_group(on_cuda) as (rank, world), contextlib.ExitStack() as held:
        return _train(cfg, trainer, rank, world, local_rank(), held)


def _with_absolute_data_paths(cfg: dict) -> dict:
    """The adapter's ``path_arguments`` (``data.kwargs.path``...) made absolute where they are
    local, so that the saved config finds the data again from any folder (``sciddpm evaluate``, a
    resumed run); URLs (``gs://...``) stay as given. The caller's config is left as it was."""
    data = cfg.get("data") or {}
    builder = ADAPTERS.get(data.get("name"))  # an unknown name lists the known ones
    takes = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values())
    path_arguments = getattr(builder, "path_arguments", Adapter.path_arguments)
    if path_arguments is Adapter.path_arguments:  # the inherited default: `path`, where the adapter takes one
        path_arguments = tuple(key for key in path_arguments if key in takes or takes_any)
    elif not takes_any:
        unknown = [key for key in path_arguments if key not in takes]
        if unknown:
            raise TypeError(f"adapter {data.get('name')!r} lists path_arguments {unknown} that it does not take; "
                            f"it takes: {', '.join(takes)}")
    kwargs = dict(data.get("kwargs") or {})
    if not any(key in kwargs for key in path_arguments):
        return cfg  # nothing to change: the config stays exactly as given (resume compares it)

    def absolute(value: Any) -> Any:  # a local path, or a list of them
        if isinstance(value, (list, tuple)):
            return [absolute(v) for v in value]
        return str(Path(value).expanduser().resolve()) if isinstance(value, str) and "://" not in value else value

    for key in path_arguments:
        if key in kwargs:
            kwargs[key] = absolute(kwargs[key])
    return {**cfg, "data": {**data, "kwargs": kwargs}}


def _provenance(cfg: dict) -> dict[str, str]:
    """What trains the run, for its weights' metadata: sciddpm's and torch's versions and the
    distributions of the plugins it names, so that loading it without them can say what to install.
    Computed once, before the first step; the names were resolved when the run was built."""
    named = (("adapter", ADAPTERS, cfg["data"]["name"]), ("backbone", BACKBONES, cfg["model"]["backbone"]),
             ("sampler", SAMPLERS, (cfg.get("sampler") or {}).get("method")))
    plugins = {f"{kind} {name}": registry.provider(name) for kind, registry, name in named
               if name and registry.provider(name)}
    return {"sciddpm": __version__, "torch": torch.__version__, "plugins": json.dumps(plugins, sort_keys=True)}


def _train(cfg: dict, trainer: dict, rank: int, world: int, local_rank: int, held: contextlib.ExitStack) -> Path:
    _check_trainer(trainer)
    if rank == 0:
        _warn_unused_noise_settings(cfg)
    sampler = dict(cfg.get("sampler") or {})  # what sampling from this run will use: checked now
    check_settings(sampler.get("method", "heun"), sampler.get("steps"), sampler.get("guidance", 1.0),
                   sampler.get("opts"))
    device = resolve_device(trainer["device"], flag="trainer.device", local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed = cfg.get("seed")
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r} (e.g. seed=1)")
    seed = int(seed)
    if trainer["batch_size"] % world:
        raise ValueError(
            f"trainer.batch_size={trainer['batch_size']} is the global batch and must divide "
            f"evenly over {world} ranks; use a multiple of {world}"
        )
    batch_per_rank = trainer["batch_size"] // world

    run = _hold_run_dir(cfg, rank, world, held)
    adapter, spec = _read_data(cfg, rank, world)

    # --- model (checked against the data before the run directory is claimed), EMA, optimiser ---
    torch.manual_seed(seed)  # identical initial weights on every rank
    denoiser = build_denoiser(cfg, spec, adapter.static_fields() if spec.static else None).to(device)
    start_step = _prepare_run_dir(run, cfg, spec, rank, world)
    if start_step >= int(trainer["steps"]):
        if rank == 0:
            log.info("%s is already trained to step %d (trainer.steps=%d): nothing to do; raise trainer.steps "
                     "to train on", run.path, start_step, trainer["steps"])
        return run.path
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=trainer["lr"],
                                  weight_decay=trainer["weight_decay"], fused=True)  # ~4x faster step on CPU
    ema = _restore(run, start_step, denoiser, optimizer, rank)
    ema = {k: v.to(device) for k, v in ema.items()}

    loss_module = _LossModule(denoiser)
    if trainer.get("compile"):
        loss_module = torch.compile(loss_module)
    if world > 1:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = adapter.dataset("train")
    batches = training_batches(dataset, batch_per_rank, seed=seed, rank=rank, world=world,
                               start_step=start_step, num_workers=trainer["num_workers"])
    autocast = network_autocast(device, trainer.get("bf16", True))
    compute_dtype = network_dtype_name(device, trainer.get("bf16", True))
    if rank == 0:
        log.info("network computes in %s on %s", compute_dtype, device)
        if start_step:
            _warn_if_precision_changed(run, start_step, compute_dtype, device)
    total_steps = int(trainer["steps"])
    provenance = _provenance(cfg) if rank == 0 else {}
    progress = held.enter_context(_progress(rank, start_step, total_steps, run.path.name))
    board = _tensorboard(run.path) if rank == 0 else None
    if board is not None:
        held.callback(board.close)  # flushed however training ends (an error, Ctrl-C)
    window_loss = torch.zeros((), device=device)  # summed on device: no host sync per step
    window_steps, window_start = 0, time.perf_counter()

    # --- the loop --------------------------------------------------------------------------------
    for step in range(start_step, total_steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        # Noise and dropout depend only on (seed, step, rank): no RNG state to save for resume.
        step_seed = (seed * 1_000_003 + step) * 8191 + rank
        torch.manual_seed(step_seed)
        generator = torch.Generator(device).manual_seed(step_seed)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, trainer)

        with autocast:
            loss = loss_module(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(denoiser.parameters(), trainer["grad_clip"])
        optimizer.step()
        _update_ema(ema, denoiser.net, _ema_decay(step, trainer["ema_decay"]))

        window_loss += loss.detach().float()
        window_steps += 1
        done = step + 1
        if done % trainer["log_every"] == 0 or done == total_steps:
            mean_loss = _all_mean(window_loss.item() / window_steps, world, device)
            elapsed = time.perf_counter() - window_start
            record = {"step": done, "loss": mean_loss, "lr": _learning_rate(step, trainer),
                      "grad_norm": float(grad_norm),
                      "samples_per_s": window_steps * batch_per_rank * world / elapsed,
                      "time": time.time(), "network_dtype": compute_dtype}
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"training loss became {mean_loss} at step {done}; lower trainer.lr or check "
                    f"the data for NaN/Inf (run: {run.path})")
            if rank == 0:
                run.append_metrics(record)
                progress.set_postfix(loss=f"{mean_loss:.4f}", samples_per_s=f"{record['samples_per_s']:.0f}")
                if board is not None:
                    for key in ("loss", "lr", "grad_norm", "samples_per_s"):
                        board.add_scalar(f"train/{key}", record[key], done)
            window_loss.zero_()
            window_steps, window_start = 0, time.perf_counter()
        progress.update(1)
        if done % trainer["checkpoint_every"] == 0 or done == total_steps:
            if rank == 0:
                run.save_checkpoint(done, denoiser.net.state_dict(), ema,
                                    {"step": done, "optimizer": optimizer.state_dict()}, provenance)
            _barrier(world)
    if rank == 0:
        log.info("finished %d steps; run directory %s", total_steps, run.path)
    return run.path


def _hold_run_dir(cfg: dict, rank: int, world: int, held: contextlib.ExitStack) -> RunDir:
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
    path, refusal = _broadcast((path, refusal), rank, world)  # every rank stops, none waits at a barrier
    if refusal is not None:
        raise RunError(refusal)
    return RunDir(path)


def _read_data(cfg: dict, rank: int, world: int) -> tuple[Any, DataSpec]:
    """The adapter and its spec: rank 0 builds any embedded data first, the others then read it."""
    adapter = adapter_from_config(cfg["data"])
    if rank == 0:
        spec = adapter.spec()
        for note in spec.notes:
            log.warning("data: %s", note)
    _barrier(world)
    if rank != 0:
        spec = adapter.spec()
    return adapter, spec


def _restore(run: RunDir, start_step: int, denoiser: torch.nn.Module, optimizer: torch.optim.Optimizer,
             rank: int) -> dict[str, torch.Tensor]:
    """Load checkpoint ``start_step`` into the network and optimiser (nothing at step 0); returns
    the EMA weights to continue from (at step 0, a copy of the initial weights)."""
    if not start_step:
        return {k: v.detach().clone() for k, v in denoiser.net.state_dict().items()}
    model_state, ema_state, train_state = run.load_checkpoint(start_step)
    denoiser.net.load_state_dict(model_state)
    optimizer.load_state_dict(train_state["optimizer"])
    if rank == 0:
        log.info("resuming %s from step %d", run.path, start_step)
    return ema_state


class _LossModule(torch.nn.Module):
    """The training objective as a module, so DDP sees a forward pass to synchronise on."""

    def __init__(self, denoiser: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.denoiser.loss(batch["x"], batch.get("cond"), mask=batch.get("mask"),
                                  weight=batch.get("weight"), generator=generator)


# ------------------------------------------------------------------------------- run-dir decisions
def _run_path(cfg: dict) -> str:
    name = cfg.get("name") or cfg["model"].get("preset") or cfg["data"]["name"]
    return str(Path(cfg["runs_dir"]) / name)


def _prepare_run_dir(run: RunDir, cfg: dict, spec: DataSpec, rank: int, world: int) -> int:
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
    verdict = _broadcast(verdict, rank, world)
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
        run.truncate_metrics(start_step)
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(cfg)
    run.save_data_spec(spec.to_dict())
    return start_step


def _check_same_run(run: RunDir, cfg: dict, spec: DataSpec) -> None:
    previous = run.load_config()
    for key in _IDENTITY_KEYS:
        if _identity(previous, key) != _identity(cfg, key):
            changes = _differences(_identity(previous, key), _identity(cfg, key), key)
            shown = "; ".join(f"{name}: {old!r} there, {new!r} now" for name, old, new in changes[:6])
            more = f" (and {len(changes) - 6} more)" if len(changes) > 6 else ""
            raise RunError(
                f"run directory {run.path} already holds a run with other '{key}' settings - {shown}{more}. "
                f"Resume it with the same settings, or start a new run with name=<new name>.")
    if run.load_data_spec() != json.loads(json.dumps(spec.to_dict())):
        raise RunError(
            f"the data's statistics/schema differ from those saved in {run.path}: the data "
            f"changed since the run started. Start a new run with name=<new name>.")


def _identity(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg[key]`` as far as it defines the model: with a DDPM table, p_mean/p_std (EDM's training
    noise) change nothing, and runs saved when the ddpm/vpred presets still carried them resume;
    absent, null and empty ``data.kwargs`` are the same."""
    value = cfg.get(key)
    if key == "diffusion" and isinstance(value, Mapping) and value.get("schedule"):
        value = {k: v for k, v in value.items() if k not in UNUSED_WITH_SCHEDULE}
    if key == "data" and isinstance(value, Mapping):  # no kwargs, null and {} all mean the adapter's defaults
        value = {**value, "kwargs": dict(value.get("kwargs") or {})}
    return value


def _warn_unused_noise_settings(cfg: Mapping[str, Any]) -> None:
    diffusion = cfg.get("diffusion") or {}
    given = {k: diffusion[k] for k in UNUSED_WITH_SCHEDULE if diffusion.get(k) is not None}
    if diffusion.get("schedule") and given:
        log.warning("%s shape EDM's continuous training noise only (a data preset may set them); with "
                    "diffusion.schedule=%s training draws timesteps uniformly from the table, so they are not used",
                    ", ".join(f"diffusion.{k}={v}" for k, v in given.items()), diffusion["schedule"])


def _differences(old: Any, new: Any, where: str) -> list[tuple[str, Any, Any]]:
    """The dotted keys at which two configs differ, with both values ("(absent)" for a missing key)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{where}.{key}")
        return found
    return [] if old == new else [(where, old, new)]


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _warn_if_precision_changed(run: RunDir, start_step: int, compute_dtype: str, device: torch.device) -> None:
    """A run resumed on another kind of machine may continue in another network dtype (bf16 follows
    the hardware, sciddpm.precision): allowed - the weights are float32 either way - but said."""
    before = [r["network_dtype"] for r in run.read_metrics() if "network_dtype" in r]
    if before and before[-1] != compute_dtype:
        why = ("trainer.bf16=false keeps float32" if compute_dtype == "bfloat16"
               else f"{device} has no native bf16, or trainer.bf16=false was set")
        log.warning("%s trained in %s up to step %d and continues in %s on %s (%s); metrics.jsonl "
                    "records the dtype of every window", run.path, before[-1], start_step, compute_dtype,
                    device, why)


# ----------------------------------------------------------------------------- small loop helpers
# trainer.<key>: (integer?, smallest value, is the smallest allowed?, bound it stays below or None, example)
_TRAINER_LIMITS = {
    "steps": (True, 1, True, None, 1000), "batch_size": (True, 1, True, None, 32),
    "lr": (False, 0, False, None, 2e-4), "warmup_steps": (True, 0, True, None, 100),
    "weight_decay": (False, 0, True, None, 0), "grad_clip": (False, 0, False, None, 1.0),
    "ema_decay": (False, 0, True, 1, 0.999), "checkpoint_every": (True, 1, True, None, 500),
    "log_every": (True, 1, True, None, 50), "num_workers": (True, 0, True, None, 2),
}


def _check_trainer(trainer: Mapping[str, Any]) -> None:
    """Every number of the trainer group in its range, before anything is built or written."""
    for key, (integer, low, low_allowed, high, example) in _TRAINER_LIMITS.items():
        value = trainer.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        valid = number and (not integer or float(value).is_integer()) and (
            value >= low if low_allowed else value > low) and (high is None or value < high)
        if not valid:
            kind = "an integer" if integer else "a number"
            bounds = f"{'>=' if low_allowed else '>'} {low}" + (f" and < {high}" if high is not None else "")
            raise ValueError(f"trainer.{key} must be {kind} {bounds}, got {value!r} (e.g. trainer.{key}={example})")


def _learning_rate(step: int, trainer: Mapping[str, Any]) -> float:
    warmup = max(1, int(trainer["warmup_steps"]))
    return float(trainer["lr"]) * min(1.0, (step + 1) / warmup)


def _ema_decay(step: int, decay: float) -> float:
    # Warm-up so early EMA weights are not dominated by the random initialisation.
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def _update_ema(ema: dict[str, torch.Tensor], net: torch.nn.Module, decay: float) -> None:
    for name, value in net.state_dict().items():
        if value.dtype.is_floating_point:
            ema[name].lerp_(value, 1.0 - decay)
        else:
            ema[name].copy_(value)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl always has everything
        return None
    return SummaryWriter(log_dir=str(path / "tensorboard"))


def _progress(rank: int, start: int, total: int, name: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=f"train {name}", unit="step",
                disable=rank != 0, dynamic_ncols=True)


# ---------------------------------------------------------------------------------- distributed
def _broadcast(value: Any, rank: int, world: int) -> Any:
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)  # between our own ranks only, never from disk
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _all_mean(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / world
