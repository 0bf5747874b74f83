"""Samplers: pure functions that walk a sigma table down to 0, and the one entry point ``sample``.

Every sampler has the signature ``fn(denoiser, x, sigmas, *, generator=None, callback=None,
**opts) -> x`` (house rule 2 in docs/architecture.md): ``x`` is already at noise level ``sigmas[0]``, ``sigmas``
is a float64 table decreasing to 0, and ``denoiser(x, sigma) -> x0_hat`` (``sigma`` of shape [B])
is all a sampler knows of the model. No state survives a call; all randomness comes from
``generator`` (a ``torch.Generator``, or a list of them, one per batch row, so that each row's
noise does not depend on the rows batched with it); the update arithmetic runs in the dtype of
``x`` (at least float32, chosen by the caller) and denoiser outputs are cast to it. ``callback(i, sigma, x, x0_hat)``, if given, sees
each state before its update together with the denoiser's estimate there.

A new sampler is built from ``sigma_levels`` (the checked table), ``denoise_at`` (one denoiser
call at a float sigma) and ``noise_like`` (noise from either kind of ``generator``).

The last step of every sampler lands on sigma = 0, where each update rule reduces to the
denoiser's estimate; samplers return that estimate exactly, so a denoiser wrapper that fixes
values of ``x0_hat`` (inpainting) fixes them in the result bit for bit.

Registered in ``SAMPLERS`` (plugins: entry-point group ``sciddpm.samplers``):
``ddpm`` (ancestral, Ho et al. 2020), ``ddim`` (Song et al. 2021), ``euler``, ``heun``
(Karras et al. 2022, Alg. 2) and ``dpmpp_2m`` (Lu et al. 2022).
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any, Callable, Sequence

import torch

from sciddpm.diffusion import schedules
from sciddpm.diffusion.schedules import VPSchedule
from sciddpm.checks import is_integer
from sciddpm.registry import Registry

__all__ = ["SAMPLERS", "check_settings", "ddim", "ddpm", "denoise_at", "dpmpp_2m", "euler", "heun", "noise_like",
           "register_sampler", "sample", "sigma_levels"]

SAMPLERS = Registry("sampler", entry_point_group="sciddpm.samplers")

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


def register_sampler(name: str):
    """Decorator: ``@register_sampler("my_sampler")`` above a sampler function."""
    return SAMPLERS.register(name)


def denoise_at(denoiser: Callable[..., torch.Tensor], x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The denoiser's estimate of x0 from ``x`` at noise level ``sigma`` (a float, given to the
    denoiser as a ``[B]`` tensor), checked to be shaped like ``x`` and cast to its dtype."""
    x0 = denoiser(x, x.new_full((x.shape[0],), sigma))
    if x0.shape != x.shape:
        raise ValueError(
            f"the denoiser returned shape {tuple(x0.shape)} for input {tuple(x.shape)}; a denoiser "
            "must return an x0 estimate shaped like its input"
        )
    return x0.to(x.dtype)


def noise_like(x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` from ``generator``: one ``torch.Generator``, or a list
    of them with one per batch row (what ``Model.sample`` passes), each row drawn from its own."""
    if isinstance(generator, (list, tuple)):  # one per row: a row's noise is its own, whatever the batch
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}; give one per row")
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype)
                            for g in generator])
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def sigma_levels(sigmas: torch.Tensor) -> list[float]:
    """The sigma table as Python floats, checked to decrease strictly to 0."""
    levels = [float(s) for s in sigmas]
    if len(levels) < 2 or levels[-1] != 0 or any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(
            "a sampler needs a strictly decreasing sigma table that ends in 0; build one with "
            "sciddpm.diffusion.sigmas(schedule, steps)"
        )
    return levels


@register_sampler("euler")
def euler(denoiser, x, sigmas, *, generator=None, callback=None):
    """First-order Euler steps of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma))/sigma``
    (Karras et al. 2022, eq. 1 with sigma(t) = t). Deterministic; ``generator`` is unused."""
    levels = sigma_levels(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        x0 = denoise_at(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, x0)
        # x + (s_next - s) * (x - x0) / s, written so that s_next = 0 returns x0 exactly
        x = x0 if s_next == 0 else x0 + (s_next / s) * (x - x0)
    return x


@register_sampler("heun")
def heun(denoiser, x, sigmas, *, generator=None, callback=None, S_churn=0.0, S_tmin=0.0,
         S_tmax=float("inf"), S_noise=1.0):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): optional churn, then an Euler step
    with a second-order Heun correction (skipped on the final step to sigma = 0).

    ``S_churn = 0`` (default) is the deterministic 2nd-order ODE solver, ``2N - 1`` evaluations.
    """
    levels = sigma_levels(sigmas)
    n = len(levels) - 1
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        # Alg. 2 lines 4-6: raise the noise level by gamma, adding the matching fresh noise
        gamma = min(S_churn / n, math.sqrt(2.0) - 1.0) if S_tmin <= s <= S_tmax else 0.0
        s_hat = s * (1.0 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * S_noise * noise_like(x, generator)
        x0 = denoise_at(denoiser, x, s_hat)
        if callback is not None:
            callback(i, s_hat, x, x0)
        if s_next == 0:  # Alg. 2 line 8 (Euler) to sigma = 0 lands exactly on x0
            x = x0
            continue
        d = (x - x0) / s_hat
        x_euler = x + (s_next - s_hat) * d
        # Heun correction, Alg. 2 lines 9-11: average the slopes at both ends of the step
        d_next = (x_euler - denoise_at(denoiser, x_euler, s_next)) / s_next
        x = x + (s_next - s_hat) * 0.5 * (d + d_next)
    return x


@register_sampler("ddim")
def ddim(denoiser, x, sigmas, *, generator=None, callback=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12) in sigma space: with ``eps_hat = (x - x0)/sigma``,
    ``x' = x0 + sqrt(s'^2 - c^2) eps_hat + c z`` and ``c = eta * s' * sqrt(1 - s'^2/s^2)``
    (eq. 16's sigma_t divided by sqrt(abar_{t-1})). ``eta = 0``: deterministic; ``eta = 1``: the
    DDPM posterior."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM), got eta={eta}")
    levels = sigma_levels(sigmas)
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        x0 = denoise_at(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, x0)
        if s_next == 0:
            x = x0
            continue
        c = min(eta * s_next * math.sqrt(1.0 - (s_next / s) ** 2), s_next)
        eps = (x - x0) / s
        x = x0 + math.sqrt(s_next**2 - c**2) * eps
        if c > 0:
            x = x + c * noise_like(x, generator)
    return x


@register_sampler("ddpm")
def ddpm(denoiser, x, sigmas, *, generator=None, callback=None):
    """Ancestral sampling (Ho et al. 2020, Alg. 2) in sigma space: draw ``x'`` from the posterior
    ``q(x_{s'} | x_s, x0_hat)`` of the chain ``x_s = x_{s'} + sqrt(s^2 - s'^2) z``, i.e. mean
    ``x0 + (s'^2/s^2)(x - x0)``, variance ``s'^2 (1 - s'^2/s^2)`` - DDPM's beta-tilde posterior
    (eqs. 6-7) divided by abar_{t-1}. On a VP table with every level this is the T-step DDPM loop.
    That posterior is exactly DDIM's update with eta = 1, so the arithmetic lives there once."""
    return ddim(denoiser, x, sigmas, generator=generator, callback=callback, eta=1.0)


@register_sampler("dpmpp_2m")
def dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), multistep 2nd order in log-sigma, one evaluation
    per step. With ``lambda = -log(sigma)`` and ``h`` the step in lambda, ``x' = (s'/s) x +
    (1 - s'/s) D`` where ``D`` extrapolates the last two x0 estimates by ``r = h_prev/h``."""
    levels = sigma_levels(sigmas)
    x0_prev, h_prev = None, None
    for i, (s, s_next) in enumerate(zip(levels, levels[1:])):
        x0 = denoise_at(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, x0)
        if s_next == 0:  # the final step is first order and lands on x0 (as in the paper's code)
            x = x0
            continue
        h = math.log(s / s_next)
        if x0_prev is None:
            d = x0  # first step: DPM-Solver++(1), i.e. DDIM
        else:
            r = h_prev / h
            d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
        x = (s_next / s) * x - math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


# -------------------------------------------------------------------------------- the entry point
# Defaults per method: (schedule, steps); steps=None walks every level of a VP table.
#  * ddpm: the classic loop, all 1000 levels of the linear table (Ho et al. 2020).
#  * ddim: 50 trailing-spaced levels of the same table, Song et al.'s common setting.
#  * heun: 18 Karras levels = 35 evaluations, EDM's setting for CIFAR-10 (Karras et al. 2022).
#  * euler, dpmpp_2m: 32 levels = 32 evaluations, about the same cost as heun; dpmpp_2m is
#    2nd order at that cost, euler is the 1st-order baseline.
_DEFAULTS: dict[str, tuple[str, int | None]] = {
    "ddpm": ("linear", None),
    "ddim": ("linear", 50),
    "euler": ("karras", 32),
    "heun": ("karras", 18),
    "dpmpp_2m": ("karras", 32),
}
_RESERVED = ("denoiser", "x", "sigmas", "generator", "callback")
# The start x = sigma_max * noise leaves out the data's variance: for data of std 1 it misses a
# fraction 1 / (1 + sigma_max^2) of the variance at the first level, 0.25% at 20, 20% at 2.
_SMALLEST_START = 20.0


def _check_options(fn: Callable[..., Any], method: str, opts: dict[str, Any]) -> None:
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY
                and p.name not in _RESERVED]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise TypeError(
            f"sampler {method!r} got unknown option(s) {', '.join(map(repr, unknown))}; it accepts: "
            f"{', '.join(accepted) or '(no options)'}"
        )


def check_settings(method: Any, steps: Any = None, guidance: Any = 1.0, opts: Any = None) -> None:
    """Named errors for a sampler config (``sampler.*``) before anything runs: an unknown method
    (listing the known ones), steps that are not a positive integer, a guidance that is not a
    finite number, options the method does not take."""
    fn = SAMPLERS.get(str(method))
    if steps is not None and (not is_integer(steps) or steps < 1):
        raise ValueError(f"sampler.steps must be a positive integer (or null for the method's default), got {steps!r}")
    try:
        finite = math.isfinite(float(guidance))
    except (TypeError, ValueError):
        finite = False
    if isinstance(guidance, bool) or not finite:
        raise ValueError(f"sampler.guidance must be a finite number (1 = no guidance), got {guidance!r}")
    if opts is not None and not isinstance(opts, dict):
        raise ValueError(f"sampler.opts must be a mapping of option: value, got {opts!r}")
    table = ("sigma_min", "sigma_max", "rho")  # options of the sigma table, taken by sample() itself
    _check_options(fn, str(method), {k: v for k, v in (opts or {}).items() if k not in table})


def sample(denoiser: Callable[..., torch.Tensor], noise: torch.Tensor, *, method: str = "heun",
           steps: int | None = None, schedule: str | VPSchedule | None = None,
           sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
           generator: torch.Generator | Sequence[torch.Generator] | None = None, callback: Callback | None = None,
           denoiser_kwargs: dict[str, Any] | None = None, **opts: Any) -> torch.Tensor:
    """Draw samples: build the sigma table, scale ``noise`` to its first level, run ``method``.

    ``noise`` is standard normal in the output's shape [B, ...]; ``method`` names a sampler in
    ``SAMPLERS``; ``schedule`` is "karras", "linear", "cosine" or a VPSchedule; unset ``steps`` /
    ``schedule`` take the method's defaults (ddpm: linear, all 1000 levels; ddim: linear, 50;
    euler: karras, 32; heun: karras, 18; dpmpp_2m: karras, 32). Karras tables span ``sigma_min``
    (0.002) to ``sigma_max`` (80) with exponent ``rho``. ``denoiser_kwargs`` (e.g. ``cond``) go to
    every denoiser call and ``opts`` to the sampler (``eta`` for ddim; ``S_churn``, ``S_tmin``,
    ``S_tmax``, ``S_noise`` for heun). ``generator``: the step noise of the stochastic samplers,
    one generator or one per row of ``noise``. Arithmetic runs in noise's dtype, promoted to float32.
    """
    fn = SAMPLERS.get(method)  # unknown methods list the known ones
    _check_options(fn, method, opts)
    default_schedule, default_steps = _DEFAULTS.get(method, ("karras", 32))
    schedule = default_schedule if schedule is None else schedule
    is_vp = isinstance(schedule, VPSchedule) or schedule in schedules.VP_SCHEDULES.names()
    if steps is None:
        steps = default_steps if (is_vp or default_steps is not None) else 1000
    table = schedules.sigmas(schedule, steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.ndim < 1:
        raise TypeError("noise must be a floating-point tensor [B, ...] of standard normal draws, "
                        "e.g. torch.randn(n, channels, *shape)")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise contains NaN or infinite values; pass finite standard normal draws "
                         "(torch.randn) - masks belong to an inpainting wrapper, not to the noise")
    if float(table[0]) < _SMALLEST_START:
        warnings.warn(
            f"the sigma table starts at {float(table[0]):.3g}: sampling starts from noise of that std alone "
            f"(EDM's convention), as if the data's own spread were negligible next to it; for normalised data "
            f"(std ~1) the samples then come out with too little variance. Start at sigma_max >= "
            f"{_SMALLEST_START:g} (the default is 80).", stacklevel=2)
    x = noise.to(torch.promote_types(noise.dtype, torch.float32)) * float(table[0])
    if denoiser_kwargs:
        denoiser = functools.partial(denoiser, **denoiser_kwargs)
    return fn(denoiser, x, table, generator=generator, callback=callback, **opts)
