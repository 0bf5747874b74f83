"""The Python face of a trained model: ``load(run) -> Model``; ``Model.sample`` / ``Model.ensemble``.

A Model is adapter + denoiser (EMA weights) + sampler settings, all rebuilt from a run directory
by ``sciddpm.runs`` (no pickle, no imported paths). Samples come back as ``xarray.Dataset`` in the
data's physical units and coordinates, with a ``member`` dimension (and ``case`` for ensembles over
several conditions). The command line calls exactly these methods.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from sciddpm.assembly import build_denoiser
from sciddpm.data import CondSchema, DataSpec, adapter_from_spec
from sciddpm.diffusion import guided
from sciddpm.diffusion import sample as run_sampler
from sciddpm.runs import RunDir, resolve_run

log = logging.getLogger("sciddpm")


def load(run: str | Path, *, runs_dir: str | Path = "runs", device: str = "auto", ema: bool = True) -> "Model":
    """Load a trained model from a run name (under ``runs_dir``) or a run directory path."""
    path = resolve_run(run, runs_dir)
    folder = RunDir(path)
    config = folder.load_config()
    spec = DataSpec.from_dict(folder.load_data_spec())
    denoiser = build_denoiser(config, spec)
    model_state, ema_state, step = folder.load_weights()
    denoiser.net.load_state_dict(ema_state if ema else model_state)
    torch_device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                else "cpu" if device == "auto" else device)
    return Model(path, config, spec, denoiser.to(torch_device).eval(), step=step)


class Model:
    """A trained model ready to sample; build it with :func:`sciddpm.load`."""

    def __init__(self, path: Path, config: Mapping[str, Any], spec: DataSpec, denoiser: torch.nn.Module,
                 *, step: int = 0):
        self.path = Path(path)
        self.name = self.path.name
        self.config = dict(config)
        self.spec = spec
        self.adapter = adapter_from_spec(spec)
        self.denoiser = denoiser
        self.step = step

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def conditions(self) -> CondSchema:
        """The conditioning schema: names, units and training ranges."""
        return self.spec.cond

    def __repr__(self) -> str:
        names = ", ".join(f"{v.name} [{v.units}]" for v in self.spec.cond.vars) or "none"
        return (f"Model({self.name!r}, adapter={self.spec.adapter}, shape={list(self.spec.shape)}, "
                f"channels={list(self.spec.channels)}, conditions: {names}, step={self.step})")

    @torch.no_grad()
    def sample(self, n: int = 1, cond: Mapping[str, float] | None = None, *, steps: int | None = None,
               sampler: str | None = None, seed: int | None = None, guidance: float | None = None,
               batch_size: int | None = None) -> xr.Dataset:
        """``n`` samples for one set of conditions, as a Dataset with a ``member`` dimension.

        ``cond`` maps condition names to values in the data's units (see ``.conditions``); leave it
        out for unconditional samples. The same ``seed`` gives the same samples on any device
        and with any ``batch_size`` (deterministic samplers).
        """
        if int(n) < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        n = int(n)
        settings = self._sampler_settings(sampler, steps, guidance)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        cond = dict(cond or {})
        features = self.spec.cond.encode(cond, batch=n) if cond else None
        if features is None and self.spec.cond.dim:
            log.info("no conditions given: sampling unconditionally (the null condition)")

        shape = (n, len(self.spec.channels), *self.spec.shape)
        # Noise from a CPU generator, so a seed means the same samples on CPU and GPU.
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        step_generator = torch.Generator(self.device).manual_seed(seed + 1)
        batch = int(batch_size or n)
        pieces = []
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            kwargs = {"cond": features[start:stop].to(self.device)} if features is not None else {}
            pieces.append(run_sampler(
                self._denoiser(settings["guidance"], conditional=features is not None),
                noise[start:stop].to(self.device), method=settings["method"], steps=settings["steps"],
                schedule=settings["schedule"], generator=step_generator, denoiser_kwargs=kwargs,
                **settings["opts"]).float().cpu())
        samples = torch.cat(pieces)
        if not torch.isfinite(samples).all():
            raise FloatingPointError(
                f"the sampler produced non-finite values ({settings['method']}, {settings['steps']} steps); "
                "try more steps or another sampler")
        ds = self.adapter.to_xarray(samples, cond)
        ds.attrs.update({"sciddpm_run": self.name, "sciddpm_step": self.step, "sampler": settings["method"],
                         "sampler_steps": settings["steps"] or "default", "guidance": settings["guidance"],
                         "seed": seed})
        return ds

    def ensemble(self, cond: Mapping[str, float | Sequence[float]], members: int = 16, *,
                 seed: int = 0, **sample_options: Any) -> xr.Dataset:
        """Ensembles for several cases: ``cond`` maps names to one value or a list (one per case).

        Returns a Dataset with dims ``("case", "member", ...)`` and one coordinate along ``case``
        per condition. Case ``i`` uses seed ``seed + i``.
        """
        columns = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in cond.items()}
        cases = max((len(v) for v in columns.values()), default=1)
        for name, values in columns.items():
            if len(values) not in (1, cases):
                raise ValueError(
                    f"condition {name!r} has {len(values)} values but others have {cases}; give one "
                    "value (shared by every case) or one per case")
        datasets = []
        for i in range(cases):
            values = {k: float(v[0] if len(v) == 1 else v[i]) for k, v in columns.items()}
            datasets.append(self.sample(members, values, seed=seed + i, **sample_options))
        ds = xr.concat(datasets, dim="case", combine_attrs="drop_conflicts")
        for name, values in columns.items():
            ds = ds.assign_coords({name: ("case", np.broadcast_to(values, (cases,)).copy())})
        return ds

    def write(self, ds: xr.Dataset, out: str | Path) -> list[Path]:
        """Write samples as the modality's natural files (WAV, netCDF/zarr, PNG); returns paths."""
        return self.adapter.write(ds, out)

    # ---------------------------------------------------------------------------------- internals
    def _sampler_settings(self, method: str | None, steps: int | None, guidance: float | None) -> dict:
        configured = dict(self.config.get("sampler") or {})
        settings = {"method": configured.get("method", "heun"), "steps": configured.get("steps"),
                    "schedule": configured.get("schedule"), "opts": dict(configured.get("opts") or {}),
                    "guidance": float(configured.get("guidance", 1.0))}
        if method is not None and method != settings["method"]:
            # another sampler: its own defaults, not the configured sampler's steps and options
            settings.update(method=method, steps=None, schedule=None, opts={})
        if steps is not None:
            settings["steps"] = int(steps)
        if guidance is not None:
            settings["guidance"] = float(guidance)
        return settings

    def _denoiser(self, guidance: float, *, conditional: bool):
        denoiser = self.denoiser
        if self.device.type == "cuda":
            def network_in_bf16(x, sigma, **kwargs):  # only the network runs in bf16 (house rule 1)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return self.denoiser(x, sigma, **kwargs).float()
            denoiser = network_in_bf16
        if conditional and guidance != 1.0:
            denoiser = guided(denoiser, guidance)
        return denoiser

