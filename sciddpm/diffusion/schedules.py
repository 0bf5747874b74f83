"""Noise levels: the one place where every schedule becomes a table of sigmas.

Below the public API sciddpm speaks only the noise level sigma of the variance-exploding form
``x = x0 + sigma * eps`` (house rule 1 in docs/architecture.md). This module owns

* the discrete variance-preserving (DDPM) schedules, ``linear`` (Ho et al. 2020) and ``cosine``
  (Nichol & Dhariwal 2021), as a :class:`VPSchedule` holding ``betas``, ``alphas_cumprod`` and
  the equivalent ``sigmas = sqrt((1 - abar) / abar)``, with the forward process in both forms
  (closed form ``q(x_t | x_0)`` and one step ``q(x_t | x_{t-1})``) and the map between sigma and
  a continuous timestep (what an eps/v network trained on a DDPM table takes as its noise input);
* sampling tables: :func:`karras_sigmas` (EDM, Karras et al. 2022, eq. 5) and :func:`sigmas`, which
  turns a schedule name and a step count into a decreasing float64 table ending in 0;
* training noise: :func:`lognormal_sigmas` (EDM's ``ln sigma ~ N(P_mean, P_std^2)``);
* :func:`append_dims`, the rank-agnostic broadcasting helper used throughout ``diffusion/``.

Every sigma table is float64; callers cast to the dtype of their arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sciddpm.registry import Registry

__all__ = [
    "VP_SCHEDULES",
    "VPSchedule",
    "add_noise",
    "append_dims",
    "karras_sigmas",
    "lognormal_sigmas",
    "sigmas",
    "vp_schedule",
]

VP_SCHEDULES = Registry("VP schedule")


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``t`` with trailing singleton axes added until it has ``ndim`` axes.

    A per-sample ``sigma`` of shape [B] becomes [B, 1, ..., 1] and broadcasts against data of any
    rank (1-D audio, 2-D fields, 3-D volumes) - never ``reshape(-1, 1, 1, 1)``.
    """
    missing = ndim - t.ndim
    if missing < 0:
        raise ValueError(
            f"append_dims: the tensor already has {t.ndim} axes (shape {tuple(t.shape)}), more than "
            f"the {ndim} asked for; pass a per-sample tensor of shape [B] or a scalar"
        )
    return t[(...,) + (None,) * missing]


# ------------------------------------------------------------------------------ VP (DDPM) tables
@VP_SCHEDULES.register("linear")
def _linear_betas(T: int, max_beta: float = 0.999) -> np.ndarray:
    # Ho et al. 2020, sec. 4: beta_t from 1e-4 to 0.02, linearly over T=1000 steps. Other T scale
    # both ends by 1000/T (Nichol & Dhariwal 2021's code), so the total noise sum(beta), and with it
    # alphas_cumprod at the last step (sigma_max ~ 157), stays that of T=1000: unscaled, T=50 would
    # end at sigma 0.81 and sample from far too little noise. Clipped like the cosine table.
    scale = 1000.0 / T
    return np.minimum(np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64), max_beta)


@VP_SCHEDULES.register("cosine")
def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2);
    # beta_t = 1 - abar(t)/abar(t-1), clipped at 0.999 to avoid the singularity at t = T.
    f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


@dataclass(frozen=True, eq=False)
class VPSchedule:
    """A discrete DDPM schedule of ``T`` steps, indexed ``t = 0 .. T-1`` (``x_{-1}`` is the data).

    ``betas``, ``alphas_cumprod`` and ``sigmas`` are float64 tensors of shape [T]; ``sigmas[t]``
    is the noise level of ``x_t`` rescaled to the variance-exploding form,
    ``x_t / sqrt(abar_t) = x0 + sigmas[t] * eps``.
    """

    name: str
    T: int
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def _log_sigmas(self, device: torch.device) -> torch.Tensor:
        """log(sigmas) on ``device``, copied there once (no host-to-device copy per denoiser call)."""
        cache = self.__dict__.setdefault("_log_sigma_cache", {})  # frozen dataclass: a plain attribute
        if device not in cache:
            cache[device] = self.sigmas.to(device).log()
        return cache[device]

    # -- sigma <-> continuous timestep, by linear interpolation of log(sigma) (k-diffusion style)
    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Continuous timestep for ``sigma``; table sigmas map to their integer index.

        Sigmas outside ``[sigmas[0], sigmas[-1]]`` are clamped to the ends of the table (a network
        trained on this table has never seen other noise levels). Returned as float64.
        """
        sigma = torch.as_tensor(sigma)
        log_table = self._log_sigmas(sigma.device)
        log_sigma = sigma.to(torch.float64).clamp(min=self.sigma_min, max=self.sigma_max).log()
        high = torch.searchsorted(log_table, log_sigma.contiguous()).clamp(1, self.T - 1)
        low = high - 1
        w = (log_sigma - log_table[low]) / (log_table[high] - log_table[low])
        return (low + w.clamp(0.0, 1.0)).to(torch.float64)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise level at continuous timestep ``t`` in ``[0, T-1]`` (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t < 0) | (t > self.T - 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {self.T - 1}] for this {self.T}-step schedule")
        log_table = self.sigmas.to(t.device).log()
        low = t.floor().long().clamp(max=self.T - 2)
        w = t - low
        return ((1 - w) * log_table[low] + w * log_table[low + 1]).exp()

    # -- the forward process in VP space (Ho et al. 2020, eqs. 2 and 4)
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, a draw from ``q(x_t | x_0)`` (eq. 4)."""
        abar = append_dims(self._at(self.alphas_cumprod, t, x0), x0.ndim)
        return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps``, one step of ``q`` (eq. 2)."""
        beta = append_dims(self._at(self.betas, t, x_prev), x_prev.ndim)
        return ((1 - beta).sqrt() * x_prev + beta.sqrt() * noise).to(x_prev.dtype)

    def to_sigma_space(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """``x_t / sqrt(abar_t)``: a VP sample rewritten as ``x0 + sigmas[t] * eps``."""
        abar = append_dims(self._at(self.alphas_cumprod, t, x_t), x_t.ndim)
        return (x_t / abar.sqrt()).to(x_t.dtype)

    def _at(self, table: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=like.device)
        if t.is_floating_point():
            raise TypeError("q_sample/q_step take integer timesteps; use sigma_to_t for continuous ones")
        if bool(((t < 0) | (t >= self.T)).any()):
            raise ValueError(f"timesteps must lie in 0..{self.T - 1} for this {self.T}-step schedule")
        values = table.to(like.device)[t]
        return values.expand(like.shape[0]) if values.ndim == 0 else values


def vp_schedule(name: str, T: int = 1000) -> VPSchedule:
    """The DDPM schedule ``name`` ("linear" or "cosine") with ``T`` steps, as float64 tables."""
    if isinstance(name, VPSchedule):
        return name
    builder = VP_SCHEDULES.get(name)  # unknown names list the known ones
    if int(T) != T or T < 2:
        raise ValueError(f"a VP schedule needs an integer T >= 2 steps, got T={T}")
    betas = torch.from_numpy(builder(int(T)))
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas_ = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
    return VPSchedule(name, int(T), betas, alphas_cumprod, sigmas_)


# ------------------------------------------------------------------------------ sigma-space tables
def add_noise(x0: torch.Tensor, sigma: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """The closed-form forward process in sigma space: ``x = x0 + sigma * eps``."""
    sigma = torch.as_tensor(sigma, device=x0.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x0.shape[0])
    return (x0 + append_dims(sigma, x0.ndim) * noise).to(x0.dtype)


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max)) or sigma_min <= 0:
        raise ValueError(
            f"sigma_min and sigma_max must be finite and positive, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}"
        )
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min={sigma_min} must be smaller than sigma_max={sigma_max}; swap them or pick "
            "a sigma_max above sigma_min (e.g. sigma_min=0.002, sigma_max=80)"
        )


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got steps={steps!r}")
    return int(steps)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> torch.Tensor:
    """EDM sampling levels (Karras et al. 2022, eq. 5): float64 [steps + 1], decreasing, last 0.

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for
    ``i = 0 .. N-1`` with ``N = steps``, then ``sigma_N = 0``. One step goes straight from
    ``sigma_max`` to 0.
    """
    steps = _check_steps(steps)
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    _check_range(sigma_min, sigma_max)
    if rho <= 0:
        raise ValueError(f"rho must be positive, got rho={rho} (EDM uses 7)")
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    table = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([table, table.new_zeros(1)])


def _vp_sigmas(schedule: VPSchedule, steps: int | None, sigma_min: float | None,
               sigma_max: float | None) -> torch.Tensor:
    table = schedule.sigmas
    if sigma_min is not None or sigma_max is not None:
        lo = table[0].item() if sigma_min is None else float(sigma_min)
        hi = table[-1].item() if sigma_max is None else float(sigma_max)
        _check_range(lo, hi)
        table = table[(table >= lo) & (table <= hi)]
        if len(table) == 0:
            raise ValueError(
                f"no level of the {schedule.name} schedule lies in [{lo}, {hi}]; its sigmas span "
                f"[{schedule.sigma_min:.4g}, {schedule.sigma_max:.4g}]"
            )
    n = len(table)
    steps = n if steps is None else _check_steps(steps)
    if steps > n:
        raise ValueError(
            f"steps={steps} is more than the {n} levels of the {schedule.name} VP schedule; use "
            f"steps <= {n} (steps={n} walks the whole table) or a 'karras' schedule"
        )
    # "Trailing" spacing (Lin et al. 2024, Table 2): start at the largest level, stride n/steps
    # downwards, so the first level is always the table's top and steps=n is the full table.
    index = np.round(n - np.arange(steps) * (n / steps)).astype(np.int64) - 1
    return torch.cat([table[torch.from_numpy(index)], table.new_zeros(1)])


def sigmas(schedule: str | VPSchedule, steps: int | None = None, *, sigma_min: float | None = None,
           sigma_max: float | None = None, rho: float = 7.0, T: int = 1000) -> torch.Tensor:
    """A sampling table: float64 [steps + 1], strictly decreasing, ending in 0.

    ``schedule`` is "karras" (``sigma_min`` default 0.002, ``sigma_max`` default 80, ``rho``), a VP
    name ("linear", "cosine", with ``T`` levels) or a :class:`VPSchedule`. VP tables take ``steps``
    levels evenly spaced from the top (``steps=None`` or ``T`` walks every level); ``sigma_min`` /
    ``sigma_max``, when given, first restrict the table to that range.
    """
    if isinstance(schedule, VPSchedule):
        return _vp_sigmas(schedule, steps, sigma_min, sigma_max)
    if schedule == "karras":
        if steps is None:
            raise ValueError("a karras schedule needs a step count, e.g. sigmas('karras', 32)")
        return karras_sigmas(steps, 0.002 if sigma_min is None else sigma_min,
                             80.0 if sigma_max is None else sigma_max, rho)
    if isinstance(schedule, str) and schedule in VP_SCHEDULES.names():
        return _vp_sigmas(vp_schedule(schedule, T), steps, sigma_min, sigma_max)
    known = ["karras", *VP_SCHEDULES.names()]
    raise ValueError(f"unknown sampling schedule {schedule!r}; known schedules: {', '.join(known)}"
                     " (or pass a VPSchedule)")


def lognormal_sigmas(n: int, p_mean: float = -1.2, p_std: float = 1.2,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """EDM training noise levels: ``ln sigma ~ N(p_mean, p_std^2)`` (Karras et al. 2022, sec. 5).

    Returns float64 [n]. ``generator`` (and ``device``, default the generator's) fix the draw.
    """
    if p_std <= 0:
        raise ValueError(f"p_std must be positive, got {p_std}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    z = torch.randn(int(n), generator=generator, device=device, dtype=torch.float64)
    return (p_mean + p_std * z).exp()
