"""The Python face of a trained model: ``load(run) -> Model``; ``sample``, ``ensemble``, ``infill``.

A Model is adapter + denoiser (EMA weights) + sampler settings, all rebuilt from a run directory
by ``sciddpm.runs`` (no pickle, no imported paths). Samples come back as ``xarray.Dataset`` in the
data's physical units and coordinates, with a ``member`` dimension (and ``case`` for ensembles over
several conditions). The command line calls exactly these methods.

Reproducibility: every generated item (case ``i``, member ``j``) starts from its own noise, drawn
from a generator seeded by ``sciddpm.cases.item_seed(seed, i, j)``, and items are sampled in fixed batches of
consecutive items. So a seed gives the same starting noise on any device, the same members on
any machine of one kind, and an ensemble split over ranks or resumed after a crash
(``sciddpm.ensembles``) equals one sampled in a single go. Across kinds of machine the members
agree to the network's arithmetic: bf16 where the device has it natively, float32 elsewhere
(``sciddpm.precision``; ``load(..., bf16=False)`` for float32 everywhere), which moved same-seed
samples by 0.02-0.9% of their RMS in docs/performance.md. ``compile=True`` changes the kernels,
and so the members, by the network's rounding (0.01-0.6% RMS in bf16), so a resumed ensemble store
must keep it as it was begun (both are recorded in each sample's attributes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from sciddpm import __version__
from sciddpm.assembly import build_denoiser
from sciddpm.cases import case_table, item_seed
from sciddpm.checks import as_count, as_seed
from sciddpm.config import preset_settings
from sciddpm.data import Adapter, CondSchema, DataSpec, adapter_from_spec
from sciddpm.data.stores import netcdf_safe
from sciddpm.diffusion import guided
from sciddpm.diffusion import sample as run_sampler
from sciddpm.diffusion.guidance import forwards_drop_cond
from sciddpm.diffusion.samplers import check_settings
from sciddpm.distributed import local_rank
from sciddpm.infill import fill_gaps
from sciddpm.precision import network_dtype_name, resolve_device
from sciddpm.registry import UnknownNameError
from sciddpm.runs import RunDir, resolve_run

log = logging.getLogger("sciddpm")


def load(run: str | Path, *, runs_dir: str | Path = "runs", device: str = "auto", ema: bool = True,
         bf16: bool | None = None, compile: bool = False) -> "Model":
    """Load a trained model from a run name (under ``runs_dir``) or a run directory path, onto
    ``device``: auto (CUDA where visible, else the CPU), cpu, cuda or cuda:N.

    ``bf16``: run the network in bf16 autocast where the device computes bf16 natively (CUDA, CPUs
    with AVX512-BF16/AMX; see :mod:`sciddpm.precision`); False keeps it in float32 everywhere;
    None (the default) follows the run: float32 when it was trained with ``trainer.bf16=false``.

    ``compile``: run the denoiser through ``torch.compile`` with static shapes, and on CUDA also
    capture it in CUDA graphs (one launch per denoiser call). Each new batch shape compiles once
    (25-40 s on a 2-core CPU), so it pays for large ensembles only: there it made sampling
    1.1-1.5x faster (docs/performance.md; ``benchmarks/compiled_sampling.py`` measures a run).
    Samples agree with the uncompiled ones to the network's rounding, not bit for bit."""
    torch_device = resolve_device(device, local_rank=local_rank())  # under torchrun, each rank its own GPU
    path = resolve_run(run, runs_dir)
    folder = RunDir(path)
    config = folder.load_config()
    if bf16 is None:
        bf16 = bool((config.get("trainer") or {}).get("bf16", True))
    spec = DataSpec.from_dict(folder.load_data_spec())
    try:
        adapter = adapter_from_spec(spec)  # checks the output layout against the shape first
        denoiser = build_denoiser(config, spec)
    except UnknownNameError as error:  # a plugin that is not installed here: say which one trained the run
        raise UnknownNameError(f"{error}{_trained_with_plugins(folder)}") from None
    model_state, ema_state, step = folder.load_weights()
    try:
        denoiser.net.load_state_dict(ema_state if ema else model_state)
    except RuntimeError as err:
        raise ValueError(f"the weights in {path} do not fit the network that its config.yaml and "
                         f"data_spec.json describe (edited, or files from different runs): {err}") from None
    return Model(path, config, spec, denoiser.to(torch_device).eval(), step=step, bf16=bf16,
                 compile=compile, adapter=adapter)


def sampler_preset(name: str) -> dict:
    """What ``sampler=<name>`` sets (``configs/sampler/<name>.yaml``, or one's own preset), or {}
    for a sampler without a preset (a plugin's method, used with its defaults)."""
    return preset_settings("sampler", name) or {}


class Model:
    """A trained model ready to sample; build it with :func:`sciddpm.load`."""

    def __init__(self, path: Path, config: Mapping[str, Any], spec: DataSpec, denoiser: torch.nn.Module,
                 *, step: int = 0, bf16: bool = True, compile: bool = False, adapter: Adapter | None = None):
        self.path = Path(path)
        self.name = self.path.name
        self.config = dict(config)
        self.spec = spec
        self.adapter = adapter if adapter is not None else adapter_from_spec(spec)
        self.denoiser = denoiser
        self.step = step
        self.bf16 = bf16  # network in bf16 where native (sciddpm.precision)
        self.compiled = compile  # through torch.compile: same members to the network's rounding
        self._network = _compiled(denoiser, self.device) if compile else denoiser
        valid = self.adapter.static_mask()  # bool [C, *S]: False where the data never has values
        self.valid = None if valid is None else torch.as_tensor(valid, dtype=torch.bool)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def network_dtype(self) -> str:
        """What the network computes in here: "bfloat16" or "float32" (:mod:`sciddpm.precision`)."""
        return network_dtype_name(self.device, self.bf16)

    def weights_digest(self) -> str:
        """SHA-256 of the network's weights (names and values), which tells two models apart that
        share a run name and step (a run trained again under its old name, a copy from elsewhere)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.denoiser.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @property
    def conditions(self) -> CondSchema:
        """The conditioning schema: names, units and training ranges."""
        return self.spec.cond

    def __repr__(self) -> str:
        names = ", ".join(v.describe() for v in self.spec.cond.vars) or "none"
        return (f"Model({self.name!r}, adapter={self.spec.adapter}, shape={list(self.spec.shape)}, "
                f"channels={list(self.spec.channels)}, conditions: {names}, step={self.step})")

    # ------------------------------------------------------------------------------ public API
    def sample(self, n: int = 1, cond: Mapping[str, float] | None = None, *, steps: int | None = None,
               sampler: str | None = None, seed: int | None = 0, guidance: float | None = None,
               batch_size: int | None = None) -> xr.Dataset:
        """``n`` samples as a Dataset with a ``member`` dimension.

        ``cond`` maps condition names to values in the data's units (see ``.conditions``): one
        value for all members, or a sequence of ``n`` values (one per member); leave it out for
        unconditional samples. Member ``j`` starts from the noise of case 0, member ``j`` of an
        ensemble with the same ``seed``: the same on any device and with any ``batch_size``.
        ``seed`` is 0 by default, as for ``ensemble``, ``infill`` and the CLI, so a call repeats
        its samples; draw new ones with another seed, or ``seed=None`` for a fresh one (every
        sample set records its seed in ``attrs["seed"]``).
        """
        n = as_count(n, "n")
        seed = as_seed(seed)
        cond = dict(cond or {})
        if not cond and self.spec.cond.dim:
            log.info("no conditions given: sampling unconditionally (the null condition)")
        table = case_table(cond, self.spec.cond) if cond else {}
        rows = len(next(iter(table.values()))) if table else 1
        if rows not in (1, n):
            raise ValueError(f"conditions have {rows} values for n={n} members; give one value for all "
                             "members or one per member")
        settings = self.sampler_settings(sampler, steps, guidance)
        samples = self.generate(table, [(0, j) for j in range(n)], seed=seed, settings=settings,
                                batch_size=batch_size, rows=[j if rows > 1 else 0 for j in range(n)])
        shown = {k: (v if rows > 1 else float(v[0])) for k, v in table.items()}
        return self.labelled(samples, shown, settings, seed)

    def ensemble(self, cases: Any, members: int = 16, *, steps: int | None = None, sampler: str | None = None,
                 seed: int = 0, guidance: float | None = None, batch_size: int | None = None,
                 progress: bool = True) -> xr.Dataset:
        """Ensembles for several cases, as a Dataset with dims ``("case", "member", ...)``.

        ``cases`` maps condition names to a list of values (one per case; a single value is shared)
        or is a pandas DataFrame with one row per case. Each condition becomes a coordinate along
        ``case``. Member ``j`` of case ``i`` starts from noise seeded by ``item_seed(seed, i, j)``.
        """
        members = as_count(members, "members")
        seed = as_seed(seed)
        table = case_table(cases, self.spec.cond)
        count = len(next(iter(table.values()))) if table else 1
        settings = self.sampler_settings(sampler, steps, guidance)
        items = [(i, j) for i in range(count) for j in range(members)]
        samples = self.generate(table, items, seed=seed, settings=settings, batch_size=batch_size,
                                progress=progress)
        per_case = [self.labelled(samples[i * members:(i + 1) * members],
                                   {k: float(v[i]) for k, v in table.items()}, settings, seed)
                    for i in range(count)]
        ds = xr.concat(per_case, dim="case", coords="different", compat="equals",
                       combine_attrs="drop_conflicts")
        for name, values in table.items():
            ds = ds.assign_coords({name: ("case", values, dict(ds[name].attrs) if name in ds else {})})
        return ds.assign_coords(case=np.arange(count))

    def infill(self, observed: xr.Dataset, n: int = 8, cond: Mapping[str, float] | None = None, *,
               steps: int | None = None, sampler: str | None = None, seed: int = 0,
               guidance: float | None = None, batch_size: int | None = None,
               iterations: int = 32) -> xr.Dataset:
        """Fill the gaps (NaN) of observed fields with ``n`` members consistent with the rest.

        ``observed`` is in the data's layout and units (a variable whose ``units`` attribute names
        another unit, degC for K, is refused: ``sciddpm.data.units.check_units``), one example or
        several along a leading dimension (e.g. ``time``), read as the adapter reads data (climate
        fields by their coordinates, clips and volumes by position: where their coordinates are
        not the model's, a warning says so); its observed values come back as given (to float64 rounding), and NaN where the data never has values (the static mask, e.g.
        land for SST) stays NaN. Each condition comes from
        ``cond`` where given there, else from the observations themselves (their dates, or a
        coordinate of that name). Returns dims ``(<example dim>, "member", ...)``, the example dim
        keeping its coordinate; an example dim named ``member`` becomes ``case``.
        """
        return fill_gaps(self, observed, n, cond, steps=steps, sampler=sampler, seed=seed, guidance=guidance,
                         batch_size=batch_size, iterations=iterations)

    def write(self, ds: xr.Dataset, out: str | Path) -> list[Path]:
        """Write samples as the modality's natural files (WAV, netCDF/zarr, PNG); returns paths."""
        return self.adapter.write(ds, out)

    # ---------------------------------------------------------------------- the sampling engine
    def generate(self, table: Mapping[str, np.ndarray], items: Sequence[tuple[int, int]], *, seed: int,
                 settings: Mapping[str, Any], batch_size: int | None = None, progress: bool = False,
                 wrap: Callable | None = None, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Normalised samples ``[len(items), C, *S]`` for (case, member) ``items``.

        ``table`` holds validated conditions, one row per case: item ``n`` takes row ``rows[n]``
        (default: its case). ``wrap``, if given, wraps the denoiser (e.g. inpainting). Batches are runs of ``batch_size``
        consecutive items; :mod:`sciddpm.ensembles` relies on that to split work over ranks.
        """
        batch = len(items) if batch_size is None else as_count(batch_size, "batch_size")
        pieces = []
        with _progress(len(items), progress) as bar:
            for start in range(0, len(items), batch):
                pieces.append(self.generate_batch(
                    table, items[start:start + batch], seed=seed, settings=settings, wrap=wrap,
                    rows=None if rows is None else rows[start:start + batch]))
                bar.update(len(pieces[-1]))
        return torch.cat(pieces)

    @torch.no_grad()  # every sample, ensemble, store and infill is drawn here: never an autograd graph
    def generate_batch(self, table: Mapping[str, np.ndarray], items: Sequence[tuple[int, int]], *,
                       seed: int, settings: Mapping[str, Any], wrap: Callable | None = None,
                       rows: Sequence[int] | None = None) -> torch.Tensor:
        """One batch of :meth:`generate`; its result depends only on its items, never on the rank."""
        shape = (len(self.spec.channels), *self.spec.shape)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(item_seed(seed, i, j)))
                             for i, j in items])
        kwargs = {}
        if table:
            picked = list(rows) if rows is not None else [i for i, _ in items]
            kwargs["cond"] = self.spec.cond.encode({k: v[picked] for k, v in table.items()},
                                                   batch=len(items), warn=False).to(self.device)
        denoiser = self._denoiser(settings["guidance"], conditional=bool(table))
        if wrap is not None:
            denoiser = wrap(denoiser)
        # stochastic samplers (ddpm, ddim eta > 0, heun with churn) draw each item's step noise from
        # its own generator, so that an item does not depend on the items batched with it either
        step_generators = [torch.Generator(self.device).manual_seed(item_seed(seed, i, j) ^ 0x5DEECE66D)
                           for i, j in items]
        out = run_sampler(denoiser, noise.to(self.device), method=settings["method"], steps=settings["steps"],
                          schedule=settings["schedule"], generator=step_generators, denoiser_kwargs=kwargs,
                          **settings["opts"]).float().cpu()
        if not torch.isfinite(out if self.valid is None else out[:, self.valid]).all():
            raise FloatingPointError(
                f"the sampler produced non-finite values ({settings['method']}, {settings['steps']} steps); "
                "try more steps or another sampler")
        return out

    def labelled(self, samples: torch.Tensor, cond: Mapping[str, float], settings: Mapping[str, Any],
                 seed: int) -> xr.Dataset:
        """Normalised samples of one case -> the adapter's Dataset, with the sampling recorded."""
        ds = self.adapter.to_xarray(samples, cond)
        ds.attrs.update({"sciddpm_run": self.name, "sciddpm_step": self.step, "sciddpm_version": __version__,
                         "sampler": settings["method"],
                         "sampler_steps": settings["steps"] or "default", "guidance": settings["guidance"],
                         "sampler_schedule": str(settings["schedule"] or "default"),
                         "sampler_opts": json.dumps(settings["opts"], sort_keys=True) if settings["opts"] else "none",
                         "seed": seed,
                         "network_dtype": self.network_dtype, "compiled": self.compiled})
        return netcdf_safe(ds)  # so that a user's ds.to_netcdf works as well as ds.to_zarr

    def sampler_settings(self, method: str | None = None, steps: int | None = None,
                         guidance: float | None = None) -> dict:
        """The run's configured sampler, with any of method/steps/guidance replaced."""
        configured = dict(self.config.get("sampler") or {})
        if not (method or configured.get("method")):
            raise ValueError(f"the run {self.path} names no sampler in its config.yaml; choose one, e.g. "
                             "--sampler dpmpp_2m (sampler='dpmpp_2m' from Python)")
        settings = {"method": configured.get("method"), "steps": configured.get("steps"),
                    "schedule": configured.get("schedule"), "opts": dict(configured.get("opts") or {}),
                    "guidance": configured.get("guidance", 1.0) if guidance is None else guidance}
        if method is not None and method != settings["method"]:
            # another sampler: its preset (configs/sampler/<name>.yaml or one's own), not this run's
            preset = sampler_preset(method)
            settings.update(method=preset.get("method", method), steps=preset.get("steps"),
                            schedule=preset.get("schedule"), opts=dict(preset.get("opts") or {}))
        if steps is not None:
            settings["steps"] = as_count(steps, "steps")
        try:
            check_settings(settings["method"], settings["steps"], settings["guidance"], settings["opts"])
        except UnknownNameError as error:  # a plugin sampler that is not installed here
            raise UnknownNameError(f"{error}{_trained_with_plugins(RunDir(self.path))}") from None
        settings["guidance"] = float(settings["guidance"])
        if settings["steps"] is not None:
            settings["steps"] = int(settings["steps"])  # 20.0 from a YAML file
        return settings

    def _denoiser(self, guidance: float, *, conditional: bool):
        denoiser = network = self._network
        if self.network_dtype == "bfloat16":
            def network_in_bf16(x, sigma, **kwargs):  # only the network runs in bf16 (house rule 1)
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return network(x, sigma, **kwargs).float()
            denoiser = forwards_drop_cond(network_in_bf16, network)
        if self.valid is not None:
            denoiser = _zero_outside(denoiser, self.valid.to(self.device))
        if conditional and guidance != 1.0:
            denoiser = guided(denoiser, guidance)
        return denoiser


# ------------------------------------------------------------------------------------- helpers
def _trained_with_plugins(folder: RunDir) -> str:
    """The plugins a run's weights record having been trained with (``runs.provenance``), as a
    sentence for an error; empty when it records none."""
    try:
        plugins = json.loads(folder.provenance().get("plugins", "{}"))
    except ValueError:
        return ""
    if not isinstance(plugins, dict) or not plugins:
        return ""
    listed = ", ".join(f"{what} from {dist}" for what, dist in plugins.items())
    pins = " ".join(sorted({"==".join(str(dist).split(" ", 1)) for dist in plugins.values()}))
    return f". The run was trained with {listed}: install that here (pip install {pins}, or its source checkout)"


def _compiled(denoiser: torch.nn.Module, device: torch.device) -> Callable:
    """``denoiser`` through torch.compile with static shapes; on CUDA in CUDA graphs too."""
    log.info("the network is compiled on its first call at each batch shape (tens of seconds)")
    if device.type != "cuda":
        return torch.compile(denoiser, dynamic=False)  # guided() looks through it to the Denoiser
    graphed = torch.compile(denoiser, dynamic=False, mode="reduce-overhead")

    def graphed_denoiser(x, sigma, **kwargs):
        # a graph's output lives in a buffer that its next replay overwrites, while samplers and
        # guidance keep earlier estimates (dpmpp_2m's previous x0, the two halves of guidance)
        return graphed(x, sigma, **kwargs).clone()
    return forwards_drop_cond(graphed_denoiser, denoiser)


def _zero_outside(denoiser: Callable, valid: torch.Tensor) -> Callable:
    """Where the data never has values (``valid`` False, e.g. land for SST) the denoised value is
    0, the value such points had in training, so they stay noise-free and cannot disturb the rest."""
    def masked_denoiser(x, sigma, **kwargs):
        return torch.where(valid, denoiser(x, sigma, **kwargs), torch.zeros((), dtype=x.dtype, device=x.device))
    return forwards_drop_cond(masked_denoiser, denoiser)


def _progress(total: int, show: bool) -> tqdm:
    return tqdm(total=total, desc="sampling", unit="member", disable=None if show else True)
