"""Helpers for testing sciddpm and its plugins against known truth.

Public for contributors and plugin authors: a new sampler, backbone or adapter can be checked with
the same oracles the project's own tests use, instead of golden numbers.

* :func:`gaussian_denoiser` - the exact denoiser for Gaussian data, so a sampler driven by it must
  return that Gaussian (mean and covariance) up to sampling error and its own discretisation error.
* :func:`assert_roundtrip` - an adapter's promise that ``to_xarray(to_tensor(ds), cond)`` gives
  back ``ds``: values to float32 precision, and coordinates, attributes and dimension order exactly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["assert_roundtrip", "gaussian_denoiser"]


def gaussian_denoiser(mu, Sigma) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The ideal denoiser for data ``x0 ~ N(mu, Sigma)`` in ``d`` dimensions.

    Returns ``D(x, sigma) = E[x0 | x0 + sigma * eps = x] = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu)``
    for ``x`` of shape [B, d] (or [B, *S] with prod(S) = d, flattened row-major) and ``sigma`` a
    scalar or of shape [B]. ``Sigma = V diag(lam) V^T`` is decomposed once; each call then costs two
    [B, d] x [d, d] products, because ``Sigma (Sigma + s^2 I)^-1 = V diag(lam / (lam + s^2)) V^T``.
    Arithmetic is float64; the result comes back in ``x``'s dtype and on its device.
    """
    mu = torch.as_tensor(np.asarray(mu, dtype=np.float64))
    Sigma = torch.as_tensor(np.asarray(Sigma, dtype=np.float64))
    if mu.ndim != 1 or Sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"gaussian_denoiser needs mu of shape [d] and Sigma of shape [d, d]; got mu "
            f"{tuple(mu.shape)} and Sigma {tuple(Sigma.shape)}"
        )
    if not torch.allclose(Sigma, Sigma.T, rtol=1e-10, atol=1e-12):
        raise ValueError("Sigma must be symmetric; pass (Sigma + Sigma.T) / 2 if it is only "
                         "asymmetric by rounding")
    lam, V = torch.linalg.eigh(Sigma)
    if float(lam.min()) < -1e-10 * max(float(lam.max()), 1.0):
        raise ValueError(f"Sigma must be positive semi-definite; its smallest eigenvalue is "
                         f"{float(lam.min()):.3g}")
    lam = lam.clamp(min=0.0)
    d = mu.shape[0]

    def denoise(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != d:
            raise ValueError(f"this Gaussian denoiser is for {d}-dimensional data; got x of shape "
                             f"{tuple(x.shape)} ({flat.shape[1]} values per sample)")
        z = flat.to(torch.float64)
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1) ** 2
        lam_ = lam.to(x.device)
        V_ = V.to(x.device)
        mu_ = mu.to(x.device)
        # coordinates in Sigma's eigenbasis shrink by lam / (lam + sigma^2) (Wiener filter)
        total = lam_ + s2
        shrink = torch.where(total > 0, lam_ / total.clamp(min=1e-300), torch.ones_like(total))
        coords = (z - mu_) @ V_ * shrink
        return (mu_ + coords @ V_.T).reshape(x.shape).to(x.dtype)

    return denoise


def assert_roundtrip(adapter, ds, cond=None, *, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """Assert that ``adapter.to_xarray(adapter.to_tensor(ds), cond)`` reproduces ``ds``.

    Data variables must match to ``rtol``/``atol`` (the tensor side is float32); everything else -
    coordinates, attributes (of the Dataset and of each variable), dimension names and order -
    must be identical. ``cond`` holds the conditioning values the samples carry (``{}`` for none).
    """
    import xarray as xr

    back = adapter.to_xarray(adapter.to_tensor(ds), dict(cond or {}))
    assert set(back.data_vars) == set(ds.data_vars), (
        f"variables differ: round trip gave {sorted(back.data_vars)}, expected {sorted(ds.data_vars)}")
    for name, original in ds.data_vars.items():
        again = back[name]
        assert again.dims == original.dims, f"{name}: dims {again.dims} != {original.dims}"
        assert again.attrs == original.attrs, f"{name}: attrs {again.attrs} != {original.attrs}"
        np.testing.assert_allclose(again.values, original.values, rtol=rtol, atol=atol, err_msg=name)
    xr.testing.assert_identical(back.drop_vars(list(ds.data_vars)), ds.drop_vars(list(ds.data_vars)))
