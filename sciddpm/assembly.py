"""Builds a denoiser (backbone + preconditioning) from a config and a data spec.

The one place where training and sampling agree on what a model is: the backbone comes from the
registry by name, with its dimensionality, channel count, conditioning size and per-axis padding
taken from the data's spec (so a config cannot contradict the data), and the diffusion section of
the config picks the parameterisation, noise schedule and loss options.
"""

from __future__ import annotations

from typing import Any, Mapping

from sciddpm.data import DataSpec
from sciddpm.diffusion import Denoiser, vp_schedule
from sciddpm.nn import build_backbone


def build_denoiser(config: Mapping[str, Any], spec: DataSpec) -> Denoiser:
    model_cfg = config["model"]
    diffusion_cfg = dict(config["diffusion"])
    net = build_backbone(
        model_cfg["backbone"],
        in_channels=len(spec.channels),
        cond_dim=spec.cond.dim,
        padding=list(spec.padding),
        **dict(model_cfg.get("kwargs") or {}),
    )
    if getattr(net, "dims", spec.dims) != spec.dims:
        raise ValueError(
            f"backbone {model_cfg['backbone']!r} is {net.dims}-D but the data "
            f"({spec.adapter}) is {spec.dims}-D with shape {list(spec.shape)}; pick a "
            f"model preset with a {spec.dims}-D backbone (e.g. unet{spec.dims}d)"
        )
    schedule_name = diffusion_cfg.pop("schedule", None)
    return Denoiser(
        net,
        schedule=vp_schedule(schedule_name) if schedule_name else None,
        sigma_data=float(spec.sigma_data),
        **diffusion_cfg,
    )
