"""Denoiser -> denoiser wrappers: classifier-free guidance and inpainting (house rule 4 in docs/architecture.md).

Each wrapper takes a denoiser ``D(x, sigma, **kwargs) -> x0_hat`` and returns another, so it
works with every sampler without touching one, and wrappers compose:
``guided(inpainting(D, known, mask), 2.0)``.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable

import torch

from sciddpm.diffusion.schedules import append_dims

__all__ = ["guided", "inpainting", "forwards_drop_cond"]

DenoiserFn = Callable[..., torch.Tensor]
_DROP_COND = "_sciddpm_takes_drop_cond"  # set on our wrappers: may this one get `drop_cond`?


def _takes_drop_cond(denoiser: DenoiserFn) -> bool:
    """Whether ``denoiser`` accepts a ``drop_cond`` argument (rows that use the null condition)."""
    seen = set()
    while id(denoiser) not in seen:  # a module wrapped by torch.compile or (Distributed)DataParallel
        seen.add(id(denoiser))       # takes what the module inside takes
        flag = getattr(denoiser, _DROP_COND, None)
        if flag is not None:
            return bool(flag)
        inner = getattr(denoiser, "_orig_mod", None)
        if inner is None and isinstance(denoiser, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            inner = denoiser.module
        if inner is None:
            break
        denoiser = inner
    try:
        call = denoiser.forward if isinstance(denoiser, torch.nn.Module) else denoiser
        parameters = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False
    # Only an explicit drop_cond counts: a function that merely takes **kwargs may ignore it, and
    # then both halves of a batched call would run conditionally (guidance silently off).
    return "drop_cond" in parameters


def forwards_drop_cond(wrapper: DenoiserFn, inner: DenoiserFn) -> DenoiserFn:
    """Mark ``wrapper``, a ``(x, sigma, **kwargs)`` function that hands its keyword arguments on to
    ``inner``, as taking ``drop_cond`` exactly when ``inner`` does, so that :func:`guided` can run
    both of its branches as one batch through it (a bare ``**kwargs`` is not taken as a promise).

    The mark is an attribute of ``wrapper``, so it must be a function of its own (a fresh closure
    per ``inner``, as the wrappers here are), not a bound method or one shared by several inners."""
    # a mark copied by functools.wraps (with __wrapped__) is not a second marking
    if inspect.ismethod(wrapper) or (hasattr(wrapper, _DROP_COND) and not hasattr(wrapper, "__wrapped__")):
        raise TypeError(f"forwards_drop_cond needs a fresh wrapper function per inner denoiser, got {wrapper!r}, "
                        "which is a bound method or already marked")
    setattr(wrapper, _DROP_COND, _takes_drop_cond(inner))
    return wrapper


def _twice(value: Any, batch: int) -> Any:
    """``value`` repeated along the batch axis if it is a per-sample tensor, else unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return torch.cat([value, value])
    return value


def guided(denoiser: DenoiserFn, scale: float) -> DenoiserFn:
    """Classifier-free guidance (Ho & Salimans 2022): ``D_u + scale (D_c - D_u)``.

    ``D_c = denoiser(x, sigma, cond=cond)`` and ``D_u = denoiser(x, sigma, cond=None)``, the
    network's null condition learnt through conditioning dropout. ``scale = 1`` is the plain
    conditional denoiser, ``0`` the unconditional one, ``> 1`` sharpens towards the condition.
    When the wrapped denoiser takes ``drop_cond`` (a :class:`Denoiser` does, and wrappers marked
    with :func:`forwards_drop_cond`) both branches run as one batch of 2B rows with ``drop_cond``
    marking the unconditional half; otherwise two calls.
    Calls without ``cond`` pass straight through.
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"the guidance scale must be a finite number (1 = no guidance), got {scale}")
    batched = _takes_drop_cond(denoiser)

    def guided_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None,
                        **kwargs: Any) -> torch.Tensor:
        if cond is None:
            return denoiser(x, sigma, **kwargs)
        if scale == 1.0:
            return denoiser(x, sigma, cond=cond, **kwargs)
        if scale == 0.0:
            return denoiser(x, sigma, **kwargs)
        batch = x.shape[0]
        if batched:
            drop = kwargs.pop("drop_cond", None)
            drop = torch.zeros(batch, dtype=torch.bool, device=x.device) if drop is None else drop
            drop = torch.cat([drop.to(torch.bool), torch.ones_like(drop, dtype=torch.bool)])
            both = denoiser(torch.cat([x, x]), _twice(torch.as_tensor(sigma, device=x.device), batch),
                            cond=_twice(cond, batch), drop_cond=drop,
                            **{k: _twice(v, batch) for k, v in kwargs.items()})
            conditional, unconditional = both[:batch], both[batch:]
        else:
            conditional = denoiser(x, sigma, cond=cond, **kwargs)
            unconditional = denoiser(x, sigma, **kwargs)
        return unconditional + scale * (conditional - unconditional)

    setattr(guided_denoiser, _DROP_COND, False)  # it spends the condition itself
    return guided_denoiser


def _per_row(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """``t`` [N, ...] matched to a batch of ``batch`` rows: broadcast N = 1, tile N | batch (the
    2B rows of a batched guidance call are [cond; uncond], i.e. the N rows twice)."""
    if t.shape[0] in (1, batch):
        return t
    if batch % t.shape[0] == 0:
        return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))
    raise ValueError(f"{what} has {t.shape[0]} rows but the sampler's batch has {batch}; give one "
                     f"row per sample (or a single row for all)")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over all but the batch axis, [B]."""
    return (a * b).flatten(1).sum(1)


def inpainting(denoiser: DenoiserFn, known: torch.Tensor, mask: torch.Tensor, *,
               iterations: int = 32, tol: float = 1e-4) -> DenoiserFn:
    """A denoiser for the data conditioned on ``x0 = known`` where ``mask`` is True.

    ``known`` and ``mask`` have the samples' shape [B, C, *S] (or a leading 1 for all rows);
    values of ``known`` where the mask is False are ignored (NaN allowed). Every sampler then
    returns ``known`` exactly on the mask (its last step lands on the denoiser's output).

    The unknown part is estimated as ``E[x0_u | x_u, x0_k = known]``, not just the joint
    denoiser's ``E[x0_u | x]`` (the replacement method of Song et al. 2021, which leaves the fill
    nearly blind to the known values; ``iterations=0`` gives exactly that). Tweedie's formula
    makes the posterior covariance ``Cov[x0 | x] = sigma^2 dD/dx``, so conditioning the posterior
    on ``x0_k = known`` is the same as moving the noisy known values ``x_k`` until
    ``D_k(x) = known``: then ``D_u`` is the conditional mean - exactly so for Gaussian data, to
    first order otherwise. The wrapper solves ``J_kk dx_k = known - D_k(x)`` by conjugate
    gradients and returns ``D(x) + J dx`` (one Newton step), each Jacobian product a denoiser
    call at ``x + tau p`` with ``tau p`` scaled to sigma (see :func:`_condition`). Cost:
    at most ``iterations + 1`` denoiser calls per call, fewer once the residual has dropped by
    the factor ``tol``. CG is exact after as many iterations as ``J_kk`` has distinct
    eigenvalues; smooth fields (ill-conditioned covariances) need the most, so the default is
    generous - lower it to trade faithfulness for speed. The products are finite differences: a
    network run in bf16 makes them noisy, so prefer float32 there.
    """
    mask = torch.as_tensor(mask).to(torch.bool)
    if not isinstance(known, torch.Tensor) or known.ndim != mask.ndim:
        raise ValueError(f"known and mask must be tensors of the same rank, the samples' [B, C, *S]; "
                         f"got known {tuple(getattr(known, 'shape', ()))} and mask {tuple(mask.shape)}")
    if isinstance(iterations, bool) or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0 (0: plain replacement), got {iterations!r}")
    known = torch.where(mask, known, torch.zeros((), dtype=known.dtype, device=known.device))

    def inpainting_denoiser(x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        keep = torch.broadcast_to(_per_row(mask, x.shape[0], "mask").to(x.device), x.shape)
        values = _per_row(known, x.shape[0], "known").to(device=x.device, dtype=x.dtype)
        x0 = denoiser(x, sigma, **kwargs).to(x.dtype)
        if iterations > 0 and bool(keep.any()):
            x0 = _condition(functools.partial(denoiser, **kwargs), x, sigma, x0, keep, values,
                            iterations, tol)
        return torch.where(keep, values, x0)

    return forwards_drop_cond(inpainting_denoiser, denoiser)


def _condition(denoiser: DenoiserFn, x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor,
               keep: torch.Tensor, values: torch.Tensor, iterations: int, tol: float) -> torch.Tensor:
    """``x0 + J dx`` with ``J_kk dx = known - D_k(x)`` solved by conjugate gradients, per row.

    Every Jacobian product is a finite difference ``(D(x + tau p) - D(x)) / tau`` with the probe
    ``tau p`` scaled to an RMS step of sigma per known value, so the denoiser only ever sees
    inputs as noisy as the ones it was trained on; for a linear D (Gaussian data) it is exact.
    The full products ``J p`` are accumulated alongside ``dx``, so no further call is needed.
    """
    def rows(t: torch.Tensor) -> torch.Tensor:
        return append_dims(t, x.ndim)

    m = keep.to(x.dtype)
    level = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    count = m.flatten(1).sum(1).clamp(min=1)
    r = m * (values - x0)  # residual of D_k(x) = known, zero off the mask
    p, correction = r, torch.zeros_like(x)  # correction accumulates J dx
    rr = rr0 = _dot(r, r)
    for _ in range(iterations):
        if bool((rr <= tol**2 * rr0).all()):
            break
        norm = _dot(p, p).sqrt()
        tau = torch.where(norm > 0, level * count.sqrt() / norm.clamp(min=1e-30), torch.ones_like(norm))
        Jp = (denoiser(x + rows(tau) * p, sigma).to(x.dtype) - x0) / rows(tau)
        Ap = m * Jp
        pAp = _dot(p, Ap)
        # a non-positive curvature (possible for a network's Jacobian) ends that row's solve
        alpha = torch.where(pAp > 0, rr / pAp.clamp(min=1e-30), torch.zeros_like(pAp))
        correction = correction + rows(alpha) * Jp
        r = r - rows(alpha) * Ap
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp(min=1e-30), torch.zeros_like(rr))
        p, rr = r + rows(beta) * p, rr_new
    # keep the correction only where the (linearised) residual really went down
    return torch.where(rows(rr <= rr0), x0 + correction, x0)
