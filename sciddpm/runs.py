"""The run-directory format, and the one place that reads and writes it.

A run directory holds everything needed to sample from a trained model, and nothing that can run
code when loaded::

    runs/<name>/
      config.yaml          the resolved config: registry names + plain keyword arguments
      data_spec.json       normalisation statistics, channels, output coordinates, conditioning schema
      model.safetensors    the latest complete weights ("model.*" and "ema.*" tensors)
      metrics.jsonl        one JSON object per logged step
      checkpoints/step_00001000/{model.safetensors,train_state.pt}   the last two, for resume

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``; a checkpoint is a directory renamed into place only once all of its files are
written, so a run killed at any instant leaves only complete checkpoints behind.

Loading never unpickles (weights are safetensors; training state goes through
``torch.load(weights_only=True)``) and never imports a dotted path: a config carrying Hydra's
``_target_`` (or any other ``_..._`` instantiation key) is refused outright.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sciddpm.files import HeldElsewhere, atomic_path, atomic_write_text, follow_umask, fsync_file, hold

CONFIG = "config.yaml"
DATA_SPEC = "data_spec.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
TRAIN_STATE = "train_state.pt"
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
log = logging.getLogger("sciddpm")

_STEP_DIR = re.compile(r"^step_(\d{8})$")
UNREADABLE = ".unreadable"  # suffix of a checkpoint that did not load, set aside and kept
# Keys Hydra's instantiate() would act on. We never call instantiate, but a config carrying them
# is either crafted or meant for another tool: refuse it rather than guess.
_FORBIDDEN_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class RunError(RuntimeError):
    """A run directory that is missing, incomplete or unsafe; the message says which and why."""


# ------------------------------------------------------------------------------------ config safety
class _PlainYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases. The configs sciddpm writes have none, and in a file from
    someone else a few lines of nested aliases expand to billions of nodes (seconds to hours)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in a run config",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def assert_safe_config(node: Any, where: str = "config", at: str = "") -> None:
    """Refuse configs that ask for code to be imported (``_target_`` and friends), at any depth.
    ``where`` names the config (a file) in the error, ``at`` is the key path inside it."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            inner = f"{at}.{key}" if at else str(key)
            if key in _FORBIDDEN_KEYS:
                raise RunError(
                    f"{where} contains {key!r} at '{at or '(top level)'}'. sciddpm never imports code named "
                    "in a config: configs hold registry names and plain keyword arguments "
                    "(e.g. `backbone: unet2d`). Remove the key, or register your class with "
                    "sciddpm.nn.register_backbone / sciddpm.data.register_adapter and name it."
                )
            assert_safe_config(value, where, inner)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            assert_safe_config(value, where, f"{at}[{index}]")


# --------------------------------------------------------------------------------------- run paths
def resolve_run(name_or_path: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Path:
    """A run name (looked up under ``runs_dir``) or a path -> the run directory, checked to be complete."""
    candidate = Path(name_or_path)
    if not (candidate / CONFIG).exists():
        named = Path(runs_dir) / str(name_or_path)
        if (named / CONFIG).exists():
            candidate = named
        else:
            available = list_runs(runs_dir)
            if candidate.is_dir() or len(candidate.parts) > 1:  # a path, not a name
                raise RunError(f"{candidate} is not a run directory (it has no {CONFIG}); give the folder that "
                               f"`sciddpm train` printed, or a run name under '{runs_dir}/': "
                               f"{', '.join(available) or '(none there)'}")
            raise RunError(
                f"no run {str(name_or_path)!r}: neither a run directory nor a name under "
                f"'{runs_dir}/'. Runs there: {', '.join(available) or '(none)'}. Train one with "
                f"`sciddpm train data=... name={name_or_path}`, or give the run directory's path."
            )
    if not (candidate / WEIGHTS).exists():
        saved = RunDir(candidate).checkpoint_steps()
        raise RunError(
            f"run '{candidate}' has no {WEIGHTS}" + (
                f", though it holds checkpoint(s) up to step {max(saved)} (the run was stopped or copied before "
                f"publishing them). Rerun its `sciddpm train` command: resuming publishes the last complete one."
                if saved else ": it has not finished its first checkpoint yet. Rerun the same `sciddpm train` "
                "command to resume it."))
    return candidate


def list_runs(runs_dir: str | os.PathLike = "runs") -> list[str]:
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG).exists())


# ------------------------------------------------------------------------------------- the run dir
class RunDir:
    """Reads and writes one run directory (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._checked: tuple[int, tuple[dict, dict, dict]] | None = None  # usable_checkpoint's load, kept once

    # config and data spec ----------------------------------------------------------------------
    def save_config(self, config: Mapping[str, Any]) -> None:
        assert_safe_config(config)
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(_plain(config), sort_keys=False))

    def load_config(self) -> dict[str, Any]:
        path = self.path / CONFIG
        try:
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=_PlainYamlLoader)
        except FileNotFoundError:
            raise RunError(f"'{self.path}' is not a run directory: it has no {CONFIG}") from None
        except yaml.YAMLError as error:  # python/object tags and aliases included
            raise RunError(f"{path} is not plain YAML ({error}); refusing to load it") from None
        if not isinstance(config, dict):
            raise RunError(f"{path} must hold a mapping, found {type(config).__name__}")
        assert_safe_config(config, where=str(path))
        return config

    def save_data_spec(self, spec: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / DATA_SPEC, json.dumps(spec, indent=2, allow_nan=False))

    def load_data_spec(self) -> dict[str, Any]:
        path = self.path / DATA_SPEC
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(f"run '{self.path}' has no {DATA_SPEC}") from None
        except json.JSONDecodeError as error:
            raise RunError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(spec, dict):
            raise RunError(f"{path} must hold a JSON object")
        return spec

    # metrics -----------------------------------------------------------------------------------
    def append_metrics(self, record: Mapping[str, Any]) -> None:
        # Appending one short line is atomic enough: a torn last line is skipped by read_metrics.
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(dict(record)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records logged after ``after_step`` (they belong to work a resume will redo)."""
        kept = [r for r in self.read_metrics() if int(r.get("step", 0)) <= after_step]
        atomic_write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))

    # one writer --------------------------------------------------------------------------------
    def lock(self) -> Any:
        """Hold the run for this process (``sciddpm.files.hold``): a second ``sciddpm train`` into the
        same run gets an error naming the first one's pid."""
        try:
            return hold(self.path, "sciddpm train")
        except HeldElsewhere as error:
            raise RunError(f"run directory {self.path} is in use by {error.holder}; wait for it to finish (or stop "
                           "it), or train under another name=") from None

    # checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        step: int,
        model: Mapping[str, torch.Tensor],
        ema: Mapping[str, torch.Tensor],
        train_state: Mapping[str, Any],
        provenance: Mapping[str, str] | None = None,
    ) -> Path:
        """Write a complete checkpoint for ``step``, publish its weights, keep the last two.
        ``provenance`` (what trained it: versions, plugins) goes into the weights' metadata."""
        root = self.path / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step_{step:08d}"
        staging = follow_umask(Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=root)))
        try:
            tensors = {**{f"model.{k}": v for k, v in model.items()}, **{f"ema.{k}": v for k, v in ema.items()}}
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                      staging / WEIGHTS, metadata={**dict(provenance or {}), "step": str(step)})
            follow_umask(staging / WEIGHTS)
            torch.save(dict(train_state), staging / TRAIN_STATE)
            for name in (WEIGHTS, TRAIN_STATE):
                fsync_file(staging / name)
            if final.exists():  # a checkpoint of this step from an earlier attempt: replace it
                shutil.rmtree(final)
            os.replace(staging, final)
        except (OSError, RuntimeError) as error:  # torch.save says a full disk as "unexpected pos ..."
            shutil.rmtree(staging, ignore_errors=True)
            free = shutil.disk_usage(root).free
            raise RunError(f"writing the checkpoint of step {step} into {root} failed ({error}); {free / 2**20:.0f} MiB "
                           "are free there: make room (or set runs_dir= elsewhere) and run the same command again to "
                           "resume from the last complete checkpoint") from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.publish(step)
        return final

    def publish(self, step: int) -> None:
        """Make checkpoint ``step`` the run's weights (``model.safetensors``, a copy of its file)
        and keep only the last two checkpoints. Resuming calls it too: a process killed between
        a checkpoint and its publication leaves the older weights published."""
        root = self.path / CHECKPOINTS
        with atomic_path(self.path / WEIGHTS) as tmp:
            shutil.copyfile(root / f"step_{step:08d}" / WEIGHTS, tmp)
            follow_umask(tmp)
            fsync_file(tmp)
        oldest_kept = self.checkpoint_steps()[-KEEP_CHECKPOINTS:][0]
        for entry in root.iterdir():  # older ones, and any a kill left half deleted (not complete, so not listed)
            match = _STEP_DIR.match(entry.name)
            if match and int(match.group(1)) < oldest_kept:
                shutil.rmtree(entry, ignore_errors=True)

    def usable_checkpoint(self) -> int:
        """The newest checkpoint that loads (0 if none). One that does not - cut short by a crash
        or a full disk - is moved aside with a warning, and the one before it is used."""
        for step in reversed(self.checkpoint_steps()):
            try:
                self._checked = (step, self.load_checkpoint(step))  # the resume that follows takes it
                return step
            except (RunError, OSError) as error:
                folder = self.path / CHECKPOINTS / f"step_{step:08d}"
                aside = folder.with_name(f".step_{step:08d}{UNREADABLE}")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(folder, aside)
                log.warning("checkpoint %s does not load (%s); moved to %s, resuming from the one before",
                            folder, error, aside.name)
        return 0

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints present, ascending (staging leftovers ignored)."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        steps = []
        for entry in root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / WEIGHTS).exists() and (entry / TRAIN_STATE).exists():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def clean_staging(self) -> None:
        """Remove half-written checkpoints and temp files left by a killed process."""
        root = self.path / CHECKPOINTS
        for leftover in root.glob(".step_*") if root.is_dir() else ():
            if not leftover.name.endswith(UNREADABLE):  # kept for inspection (usable_checkpoint)
                shutil.rmtree(leftover, ignore_errors=True)
                log.warning("removed %s, a checkpoint left half-written by a process killed while writing it",
                            leftover)
        for leftover in self.path.glob(".*.tmp"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def load_checkpoint(self, step: int) -> tuple[dict, dict, dict]:
        """(model state, EMA state, training state) of the checkpoint at ``step``."""
        checked, self._checked = self._checked, None
        if checked is not None and checked[0] == step:
            return checked[1]
        folder = self.path / CHECKPOINTS / f"step_{step:08d}"
        model, ema = split_weights(read_safetensors(folder / WEIGHTS))
        try:
            state = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:  # anything beyond tensors and plain data
            raise RunError(
                f"{folder / TRAIN_STATE} holds more than tensors and plain data ({error}); "
                "refusing to load it"
            ) from None
        except Exception as error:  # noqa: BLE001 - an empty or truncated file: torch's many ways to say it
            raise RunError(f"{folder / TRAIN_STATE} cannot be read ({type(error).__name__}: {error}); it is "
                           "empty or cut short") from None
        return model, ema, state

    def load_weights(self) -> tuple[dict, dict, int]:
        """(model state, EMA state, step) from the published ``model.safetensors``."""
        path = self.path / WEIGHTS
        tensors, metadata = read_safetensors(path, with_metadata=True)
        model, ema = split_weights(tensors)
        step = str(metadata.get("step", 0))
        if not step.isdigit():
            raise RunError(f"{path}: its metadata gives step {step!r}, not a step number; refusing to load it")
        return model, ema, int(step)


    def provenance(self) -> dict[str, str]:
        """What trained the published weights, from their metadata (``sciddpm``, ``torch``,
        ``plugins``: a JSON object of plugin -> distribution); {} where unreadable or absent."""
        try:
            with safe_open(self.path / WEIGHTS, framework="pt") as handle:
                return {k: v for k, v in (handle.metadata() or {}).items() if k != "step"}
        except (FileNotFoundError, SafetensorError, OSError, ValueError):
            return {}


def read_safetensors(path: Path, *, with_metadata: bool = False):
    """Load a safetensors file; anything else (a pickle, a truncated file) is refused clearly."""
    try:
        with safe_open(path, framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise RunError(
            f"{path} is not a valid safetensors file ({error}): truncated by an interrupted copy, or not "
            "safetensors at all. Copy it again from the run it came from; sciddpm only loads weights in "
            "safetensors format and never unpickles (re-export other weights with safetensors)."
        ) from None
    return (tensors, metadata) if with_metadata else tensors


def split_weights(tensors: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    if not model:
        raise RunError("the weights file holds no 'model.*' tensors: not a sciddpm checkpoint")
    return model, ema or dict(model)


def _plain(node: Any) -> Any:
    """Mappings/sequences -> dicts/lists, so yaml.safe_dump writes no python tags."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node

