"""Builds a denoiser (backbone + preconditioning) from a config and a data spec.

The one place where training and sampling agree on what a model is: the backbone comes from the
registry by name, with its dimensionality, channel count, conditioning size and per-axis padding
taken from the data's spec (so a config cannot contradict the data), and the diffusion section of
the config picks the parameterisation, noise schedule and loss options. Static input fields
(land-sea mask, orography: ``spec.static``) are held by :class:`WithStaticInputs` as a buffer, so
they travel inside ``model.safetensors`` and sampling needs no data files.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from sciddpm.data import DataSpec
from sciddpm.diffusion import Denoiser, vp_schedule
from sciddpm.nn import BACKBONES, build_backbone
from sciddpm.registry import check_kwargs


class WithStaticInputs(torch.nn.Module):
    """A backbone that sees ``[x, static fields]`` stacked along channels and predicts x's channels."""

    def __init__(self, net: torch.nn.Module, fields: torch.Tensor):
        super().__init__()
        self.net = net
        self.dims = getattr(net, "dims", fields.ndim - 1)
        self.register_buffer("fields", fields.to(torch.float32).clone())

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: torch.Tensor | None = None,
                drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        fields = self.fields.to(x.dtype).expand(x.shape[0], *self.fields.shape)
        return self.net(torch.cat([x, fields], dim=1), noise_level, cond=cond, drop_cond=drop_cond)


_PRESET_FOR_DIMS = {1: "model=audio or ", 2: "model=climate or ", 3: "model=volume or "}


def _check_dims(dims: int, backbone: str, spec: DataSpec) -> None:
    if dims != spec.dims:
        raise ValueError(
            f"backbone {backbone!r} is {dims}-D but the data ({spec.adapter}) is {spec.dims}-D with "
            f"shape {list(spec.shape)}; pick a model preset with a {spec.dims}-D backbone "
            f"({_PRESET_FOR_DIMS.get(spec.dims, '')}model.backbone=unet{spec.dims}d)")


def build_denoiser(config: Mapping[str, Any], spec: DataSpec,
                   static_fields: torch.Tensor | None = None) -> Denoiser:
    """The denoiser a run describes. ``static_fields`` ``[K, *S]`` fill the static-input buffer on
    the training side; when loading a run they come from its weights (zeros until then)."""
    model_cfg = config["model"]
    diffusion_cfg = dict(config["diffusion"])
    channels, n_static = len(spec.channels), len(spec.static)
    _check_dims(getattr(BACKBONES.get(model_cfg["backbone"]), "dims", spec.dims), model_cfg["backbone"], spec)
    net = build_backbone(
        model_cfg["backbone"],
        in_channels=channels + n_static,
        **({"out_channels": channels} if n_static else {}),
        cond_dim=spec.cond.dim,
        padding=list(spec.padding),
        **dict(model_cfg.get("kwargs") or {}),
    )
    _check_dims(getattr(net, "dims", spec.dims), model_cfg["backbone"], spec)  # plugins say it once built
    if n_static:
        expected = (n_static, *spec.shape)
        if static_fields is None:
            static_fields = torch.zeros(expected)
        if tuple(static_fields.shape) != expected:
            raise ValueError(f"static fields {spec.static} should be shaped {list(expected)}, "
                             f"got {list(static_fields.shape)}")
        if not torch.isfinite(static_fields).all():
            raise ValueError(f"static fields {spec.static} hold NaN/Inf; fill or drop them before training")
        net = WithStaticInputs(net, static_fields)
    elif static_fields is not None:
        raise ValueError("static fields were given but the data spec lists none (spec.static is empty)")
    check_kwargs(Denoiser, {"net": net, "sigma_data": spec.sigma_data, **diffusion_cfg},
                 what="the diffusion config (diffusion.*)")
    schedule_name = diffusion_cfg.pop("schedule", None)
    return Denoiser(
        net,
        schedule=vp_schedule(schedule_name) if schedule_name else None,
        sigma_data=float(spec.sigma_data),
        **diffusion_cfg,
    )
