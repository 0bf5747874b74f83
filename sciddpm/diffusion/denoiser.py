"""The Denoiser: a backbone wrapped in the preconditioning of Karras et al. 2022, and its losses.

The network never knows the noise schedule (house rule 3 in docs/architecture.md). A backbone maps
``net(x_in, c_noise, cond=None, drop_cond=None) -> F`` shaped like ``x_in``; :class:`Denoiser`
turns it into an x0 estimate,

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),

and owns everything else that depends on sigma: the parameterisation ("eps", "v", "x0", "edm"),
``sigma_data`` (measured on the training set by the data layer), the noise levels drawn for
training and the loss weights. Each parameterisation trains F against its natural target with
unit weight, which in x0 terms is ``w(sigma) ||D - x0||^2 / sigma_data^2`` with, for
``SNR = sigma_data^2 / sigma^2``:

==========  ====================  ==========================  ========================
name        F predicts            c_skip, c_out               x0-space weight w(sigma)
==========  ====================  ==========================  ========================
eps         the noise eps         1, -sigma                   SNR   (DDPM's eps-MSE)
v           v (Salimans & Ho)     sd^2/(s^2+sd^2), -s sd/r    SNR + 1
x0          x0 / sigma_data       0, sigma_data               1
edm         EDM's F               sd^2/(s^2+sd^2), s sd/r     SNR + 1 (EDM's lambda)
==========  ====================  ==========================  ========================

(``r = sqrt(s^2 + sd^2)``; ``c_in = 1/r`` for all four, so the network input has unit variance.)
``min_snr_gamma`` replaces ``w`` by ``min(SNR, gamma)`` (Hang et al. 2023).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from sciddpm.diffusion.schedules import VPSchedule, append_dims, lognormal_sigmas, vp_schedule
from sciddpm.registry import Registry

__all__ = ["PARAMETERISATIONS", "Denoiser", "UNUSED_WITH_SCHEDULE"]

# Denoiser arguments that shape EDM's log-normal training noise only: with a DDPM ``schedule`` the
# timesteps are drawn from its table and these are not used (a resume may change them freely).
UNUSED_WITH_SCHEDULE = ("p_mean", "p_std")

PARAMETERISATIONS = Registry("parameterisation")

# Each entry maps (sigma, sigma_data) -> (c_skip, c_out, c_in) and (x0, eps, sigma, sigma_data)
# -> the network's training target F* = (x0 - c_skip x) / c_out, written out in closed form so
# that small sigmas lose no precision to cancellation (eps: x0 - (x0 + sigma eps) would).


class _Parameterisation:
    def __init__(self, scalings: Callable[..., tuple], target: Callable[..., torch.Tensor]):
        self.scalings, self.target = scalings, target


def _r(s: torch.Tensor, sd: float) -> torch.Tensor:
    return (s**2 + sd**2).sqrt()


PARAMETERISATIONS.register("edm")(_Parameterisation(
    # Karras et al. 2022, Table 1, "Ours" column
    lambda s, sd: (sd**2 / (s**2 + sd**2), s * sd / _r(s, sd), 1 / _r(s, sd)),
    lambda x0, eps, s, sd: (s / sd * x0 - sd * eps) / _r(s, sd),
))
PARAMETERISATIONS.register("eps")(_Parameterisation(
    # Ho et al. 2020: x0_hat = x - sigma * eps_hat; c_in makes c_in x the VP sample when sd = 1
    lambda s, sd: (torch.ones_like(s), -s, 1 / _r(s, sd)),
    lambda x0, eps, s, sd: eps,
))
PARAMETERISATIONS.register("v")(_Parameterisation(
    # Salimans & Ho 2022, v = alpha eps - sigma_vp x0, generalised to sigma_data (k-diffusion)
    lambda s, sd: (sd**2 / (s**2 + sd**2), -s * sd / _r(s, sd), 1 / _r(s, sd)),
    lambda x0, eps, s, sd: (sd * eps - s / sd * x0) / _r(s, sd),
))
PARAMETERISATIONS.register("x0")(_Parameterisation(
    lambda s, sd: (torch.zeros_like(s), torch.full_like(s, sd), 1 / _r(s, sd)),
    lambda x0, eps, s, sd: x0 / sd,
))


class Denoiser(nn.Module):
    """``D(x, sigma) -> x0_hat`` around a backbone ``net``; see the module docstring.

    ``schedule`` (a VPSchedule or its name) makes training draw DDPM timesteps uniformly from
    its table and, for eps/v/x0, feeds the network the continuous timestep as ``c_noise`` (DDPM
    compatibility); without one, training draws ``ln sigma ~ N(p_mean, p_std^2)`` (EDM; None
    means Karras et al.'s -1.2 and 1.2) and ``c_noise = ln(sigma)/4``. ``cond_dropout`` is the
    probability that a training row uses the null condition (classifier-free guidance).
    """

    def __init__(self, net: Callable[..., torch.Tensor], parameterisation: str = "edm",
                 sigma_data: float = 1.0, schedule: VPSchedule | str | None = None,
                 min_snr_gamma: float | None = None, p_mean: float | None = None, p_std: float | None = None,
                 cond_dropout: float = 0.0):
        super().__init__()
        self.net = net
        self._param = PARAMETERISATIONS.get(parameterisation)  # unknown names list the known ones
        self.parameterisation = parameterisation
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number (the data's standard deviation "
                             f"as the network sees it), got {sigma_data!r}")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive (Hang et al. use 5) or None, got "
                             f"{min_snr_gamma!r}")
        if not 0.0 <= cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout is a probability in [0, 1], got {cond_dropout!r}")
        if p_std is not None and not p_std > 0:
            raise ValueError(f"p_std must be positive, got {p_std!r}")
        if schedule is not None and not isinstance(schedule, VPSchedule):
            schedule = vp_schedule(schedule)
        self.sigma_data = float(sigma_data)
        self.schedule = schedule
        self.min_snr_gamma = None if min_snr_gamma is None else float(min_snr_gamma)
        self.p_mean = -1.2 if p_mean is None else float(p_mean)
        self.p_std = 1.2 if p_std is None else float(p_std)
        self.cond_dropout = float(cond_dropout)

    def extra_repr(self) -> str:
        schedule = self.schedule.name if self.schedule is not None else None
        return (f"parameterisation={self.parameterisation!r}, sigma_data={self.sigma_data:.4g}, "
                f"schedule={schedule!r}, min_snr_gamma={self.min_snr_gamma}")

    # ------------------------------------------------------------------------ preconditioning
    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(c_skip, c_out, c_in, c_noise)`` for a float64 tensor of noise levels."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        c_skip, c_out, c_in = self._param.scalings(sigma, self.sigma_data)
        if self.schedule is not None and self.parameterisation != "edm":
            c_noise = self.schedule.sigma_to_t(sigma)  # the DDPM timestep the network expects
        else:
            c_noise = sigma.log() / 4  # Karras et al. 2022, Table 1
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None,
                drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The x0 estimate for ``x`` [B, C, *S] at noise levels ``sigma`` ([B] or a scalar),
        returned in ``x``'s dtype promoted to at least float32."""
        sigma = self._per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F = self._net(x, c_in, c_noise, cond, drop_cond)
        return append_dims(c_skip.to(F.dtype), x.ndim) * x.to(F.dtype) + append_dims(
            c_out.to(F.dtype), x.ndim) * F

    def _per_sample(self, sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a scalar or have shape [B] = [{x.shape[0]}] (one level "
                             f"per sample), got shape {tuple(sigma.shape)}")
        return sigma

    def _net(self, x: torch.Tensor, c_in: torch.Tensor, c_noise: torch.Tensor,
             cond: torch.Tensor | None, drop_cond: torch.Tensor | None) -> torch.Tensor:
        """``F(c_in x, c_noise)`` in x's dtype (>= float32), whatever dtype the network ran in."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        net_dtype = _parameter_dtype(self.net) or dtype
        x_in = (append_dims(c_in.to(dtype), x.ndim) * x.to(dtype)).to(net_dtype)
        kwargs: dict[str, Any] = {}
        if cond is not None:
            kwargs["cond"] = cond
        if drop_cond is not None:
            kwargs["drop_cond"] = drop_cond
        # the noise level goes in at >= float32 even when the network runs in bf16 (no rounding)
        F = self.net(x_in, c_noise.to(torch.promote_types(net_dtype, torch.float32)), **kwargs)
        if F.shape != x.shape:
            raise ValueError(
                f"the backbone returned shape {tuple(F.shape)} for input {tuple(x.shape)}; a "
                "backbone must return a tensor shaped like its input (check out_channels)"
            )
        return F.to(dtype)

    # ------------------------------------------------------------------------------- training
    def sample_sigmas(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """Training noise levels, float64 [n]: uniform DDPM timesteps with a schedule, else EDM's
        log-normal."""
        if self.schedule is None:
            return lognormal_sigmas(n, self.p_mean, self.p_std, generator=generator, device=device)
        t = torch.randint(0, self.schedule.T, (n,), generator=generator, device=device)
        return self.schedule.sigmas.to(t.device)[t]

    def loss(self, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
             mask: torch.Tensor | None = None, weight: torch.Tensor | None = None,
             generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss: a scalar, the weighted mean over valid entries of the batch.

        ``mask`` (broadcastable to x0, bool or 0/1) marks valid entries: others (NaN allowed) are
        set to 0 in the network input and contribute nothing. ``weight`` (broadcastable) weights
        entries, e.g. by grid-cell area; the mean divides by the summed weight of valid entries.
        ``sigma`` [B] and ``noise`` (like x0) may be given to fix the draw; by default both come
        from ``generator``, as does the conditioning dropout.
        """
        num, den = self._loss_terms(x0, cond, mask, weight, generator, sigma, noise)
        return num.sum() / den.sum().clamp(min=torch.finfo(den.dtype).tiny)

    def loss_per_sample(self, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
                        mask: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                        generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
        """Like :meth:`loss` but one weighted mean per sample, [B] (0 where nothing is valid)."""
        num, den = self._loss_terms(x0, cond, mask, weight, generator, sigma, noise)
        return num / den.clamp(min=torch.finfo(den.dtype).tiny)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample factor on the native F-space MSE (1 unless ``min_snr_gamma`` is set)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.min_snr_gamma is None:
            return torch.ones_like(sigma)
        # x0-space weight min(SNR, gamma), SNR = sd^2/s^2 (Hang et al. 2023, eq. 6), moved to F
        # space: ||D - x0||^2 / sd^2 = (c_out / sd)^2 ||F - F*||^2.
        _, c_out, _ = self._param.scalings(sigma, self.sigma_data)
        snr = self.sigma_data**2 / sigma**2
        return snr.clamp(max=self.min_snr_gamma) * (c_out / self.sigma_data) ** 2

    def _loss_terms(self, x0, cond, mask, weight, generator, sigma, noise):
        dtype = torch.promote_types(x0.dtype, torch.float32)
        batch, device = x0.shape[0], x0.device
        if mask is None:
            valid = torch.ones_like(x0, dtype=torch.bool)
        else:
            valid = _expand(torch.as_tensor(mask), x0, "mask")
            valid = valid if valid.dtype == torch.bool else valid != 0
        # NaN (missing) targets enter the network as 0 and leave the loss through `valid`
        x0 = torch.where(valid, x0.to(dtype), torch.zeros((), dtype=dtype, device=device))
        if sigma is None:
            sigma = self.sample_sigmas(batch, generator, device)
        sigma = self._per_sample(sigma, x0)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
        noise = noise.to(dtype)
        drop_cond = None
        if cond is not None and self.cond_dropout > 0:
            drop_cond = torch.rand(batch, generator=generator, device=device) < self.cond_dropout
        x = x0 + append_dims(sigma.to(dtype), x0.ndim) * noise
        _, _, c_in, c_noise = self.scalings(sigma)
        F = self._net(x, c_in, c_noise, cond, drop_cond)
        target = self._param.target(x0, noise, append_dims(sigma.to(dtype), x0.ndim), self.sigma_data)
        w = valid.to(dtype)
        if weight is not None:
            w = w * _expand(torch.as_tensor(weight, device=device), x0, "weight").to(dtype)
        dims = tuple(range(1, x0.ndim))
        num = (w * (F - target) ** 2).sum(dims) * self.loss_weight(sigma).to(dtype)
        return num, w.sum(dims)


def _expand(t: torch.Tensor, x0: torch.Tensor, what: str) -> torch.Tensor:
    try:
        return torch.broadcast_to(t.to(x0.device), x0.shape)
    except RuntimeError:
        raise ValueError(f"{what} of shape {tuple(t.shape)} does not broadcast to the data's shape "
                         f"{tuple(x0.shape)}; give it the data's shape or size-1 axes") from None


def _parameter_dtype(net: Any) -> torch.dtype | None:
    if isinstance(net, nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.dtype
    return None
