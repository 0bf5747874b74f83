"""Helpers for testing sciddpm and its plugins against known truth.

Public for contributors and plugin authors: a new sampler, backbone or adapter can be checked with
the same oracles the project's own tests use, instead of golden numbers.

* :func:`gaussian_denoiser` - the exact denoiser for Gaussian data, so a sampler driven by it must
  return that Gaussian (mean and covariance) up to sampling error and its own discretisation error.
* :func:`assert_roundtrip` - an adapter's promise that ``to_xarray(to_tensor(ds), cond)`` gives
  back ``ds``: values to the tensor's precision, and coordinates, attributes and dimension order exactly;
  and that ``to_tensor`` refuses a variable labelled in other units than the model's.
* :func:`check_backbone` - the contract a registered backbone must keep for training, sampling,
  guidance and ensembles: shapes on odd grids, ``cond=None`` and ``drop_cond``, rows independent of
  each other, a gradient for every parameter, per-axis circular padding. The project's own tests
  run it over every registered name, plugins included.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["assert_roundtrip", "check_backbone", "gaussian_denoiser"]


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


def assert_roundtrip(adapter, ds, cond=None, *, rtol: float = 1e-6, atol: float = 1e-8,
                     read: Sequence[str] | None = None) -> None:
    """Assert that ``adapter.to_xarray(adapter.to_tensor(ds), cond)`` reproduces ``ds``.

    Data variables must match to ``rtol``/``atol`` (float64 tensors, as the built-in adapters give,
    round-trip to float64 rounding; float32 ones to 1e-7); everything else -
    coordinates, attributes (of the Dataset and of each variable), dimension names and order -
    must be identical. ``cond`` holds the conditioning values the samples carry (``{}`` for none).
    Each variable ``to_tensor`` reads (``read``; default: every data variable - name the others,
    such as a fixed field carried along for show) is then relabelled in units of another quantity
    (kg, or s) and in its own units scaled by 1000 (``1000 m``, as cm for m is), and ``to_tensor``
    must refuse each with a ValueError rather than read the values as the model's units.
    """
    import xarray as xr

    from sciddpm.data.units import read_units, same_units, says_nothing

    back = adapter.to_xarray(adapter.to_tensor(ds), dict(cond or {}))
    assert set(back.data_vars) == set(ds.data_vars), (
        f"variables differ: round trip gave {sorted(back.data_vars)}, expected {sorted(ds.data_vars)}")
    for name, original in ds.data_vars.items():
        again = back[name]
        assert again.dims == original.dims, f"{name}: dims {again.dims} != {original.dims}"
        np.testing.assert_equal(again.attrs, original.attrs, err_msg=f"{name}: attrs")  # values may be arrays
        np.testing.assert_allclose(again.values, original.values, rtol=rtol, atol=atol, err_msg=name)
    xr.testing.assert_identical(back.drop_vars(list(ds.data_vars)), ds.drop_vars(list(ds.data_vars)))
    for name in ds.data_vars if read is None else read:  # values are never converted: other units refused
        units = ds[name].attrs.get("units")
        if says_nothing(units) or read_units(units) is None:
            continue
        # another quantity, and the same quantity at another scale (cm for m: the slip a dimension check misses)
        for other in ("kg" if same_units(units, "kg") is False else "s", f"1000 {units}"):
            if same_units(units, other) is not False:  # (a spelling units.py cannot tell apart: not a test)
                continue
            try:
                adapter.to_tensor(ds.assign({name: ds[name].assign_attrs(units=other)}))
            except ValueError:
                continue
            raise AssertionError(f"{name}: to_tensor took values labelled {other!r} as the model's {units!r}; refuse "
                                 "other units (sciddpm.data.units.check_units against the training data's attrs)")


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)


def check_backbone(name: str, *, dims: int | None = None, shape: Sequence[int] | None = None,
                   in_channels: int = 2, out_channels: int | None = None, cond_dim: int = 3,
                   padding: Sequence[str] | None = None, **kwargs) -> None:
    """Assert that the backbone registered as ``name`` keeps the contract sciddpm relies on.

    It is built as :func:`sciddpm.assembly.build_denoiser` builds it: ``in_channels``,
    ``cond_dim`` (0 = unconditional data), ``padding`` as a list with one mode per spatial axis,
    ``out_channels`` only when given (the package passes it when static input fields ride along as
    extra channels), and ``kwargs`` for the backbone's own settings (``model.kwargs``). ``dims``
    comes from the builder's ``dims`` attribute unless given (or from ``len(shape)``); ``shape``
    defaults to an odd grid (13, 22, 9)[:dims]; ``padding`` to circular in 1-D, else zeros on the
    first axis and circular on the others. The net is cast to float64 and its all-zero parameters
    (zero-initialised output layers) get random values, so that no check passes trivially. Then,
    on a batch of 3 rows called as the Denoiser calls it, ``net(x, noise_level, cond=...,
    drop_cond=...)`` with the keywords left out when None (float64, tolerance 1e-9 relative):

    * the output is finite and shaped ``[B, out_channels (default in_channels), *shape]``, and the
      noise level changes it; the attributes ``dims`` (which the package reads), ``in_channels``,
      ``out_channels`` and ``cond_dim`` agree with the arguments where the net has them;
    * with ``cond_dim > 0``: leaving ``cond`` out works and differs from the conditional output,
      and rows with ``drop_cond=True`` equal the ``cond``-less output while the other rows equal the
      conditional one (classifier-free guidance runs both branches as one batch this way);
    * each row gives the same output alone as in the batch, in eval mode (sampling: members must
      not change with the batch size) and in train mode with dropout modules off (no BatchNorm);
    * an MSE on the output (train mode) gives every parameter a non-zero gradient (DDP fails on
      unused parameters);
    * on every circular axis, rolling the input rolls the output. Shifts are by the net's
      ``downsampling_factor`` (1 if it has none), on a grid whose circular axes are rounded up to
      multiples of it.

    Raises AssertionError saying what the contract requires and what came back.
    """
    from sciddpm.nn import BACKBONES, build_backbone

    declared = getattr(BACKBONES.get(name), "dims", None)
    if dims is None:
        dims = declared if declared is not None else None if shape is None else len(shape)
    if not dims:
        raise ValueError(f"backbone {name!r} does not say how many spatial dims it has: give its class a "
                         "`dims` attribute (dims = 2), which sciddpm reads before building it, or pass dims=")
    if declared not in (None, dims):
        raise ValueError(f"backbone {name!r} declares dims={declared}; pass dims (or shape) that "
                         f"agree with it, got dims={dims}")
    shape = tuple((13, 22, 9, 7, 5)[:dims] if shape is None else shape)
    padding = [padding] * dims if isinstance(padding, str) else list(
        padding or (["circular"] if dims == 1 else ["zeros"] + ["circular"] * (dims - 1)))
    if len(shape) != dims or len(padding) != dims:
        raise ValueError(f"shape {shape} and padding {padding} need one entry per axis ({dims})")
    out = in_channels if out_channels is None else out_channels
    contract = {"in_channels": in_channels, "cond_dim": cond_dim, "padding": padding}
    contract.update({} if out_channels is None else {"out_channels": out_channels})

    def require(ok, what: str) -> None:
        if not ok:
            raise AssertionError(f"backbone {name!r}: {what}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_backbone(name, **contract, **kwargs)
        require(isinstance(net, nn.Module), f"must build a torch.nn.Module, got {type(net).__name__}")
        net = net.double()
        with torch.no_grad():
            for p in net.parameters():
                if not p.any():
                    p.normal_(0.0, 0.3)
    for attr, want in {"dims": dims, "in_channels": in_channels, "out_channels": out,
                       "cond_dim": cond_dim}.items():
        got = getattr(net, attr, want)
        require(got == want, f"net.{attr} is {got!r} but it was built with {attr}={want!r}")

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, in_channels, *shape, generator=generator, dtype=torch.float64)
    level = torch.tensor([-1.2, 0.3, 1.5], dtype=torch.float64)
    cond = torch.randn(3, cond_dim, generator=generator, dtype=torch.float64) if cond_dim else None
    drop = torch.tensor([True, False, True]) if cond_dim else None

    def run(x, level, cond=None, drop=None, training=False):
        net.train(training)
        for module in net.modules():
            if isinstance(module, _DROPOUTS):
                module.eval()
        extra = {k: v for k, v in (("cond", cond), ("drop_cond", drop)) if v is not None}
        return net(x, level, **extra)

    def close(got, want, what: str) -> None:
        error = (got - want).abs().max().item() if want.numel() else 0.0
        tol = 1e-9 * (1 + want.abs().max().item())
        require(error <= tol, f"{what}; they differ by up to {error:.3g} (tolerance {tol:.1g})")

    def differs(a, b) -> bool:
        return (a - b).abs().max().item() > 1e-6 * (1 + b.abs().max().item())

    with torch.no_grad():
        y = run(x, level, cond)
        want = (3, out, *shape)
        require(tuple(y.shape) == want, f"returned shape {tuple(y.shape)} for x of shape "
                f"{tuple(x.shape)}; it must be [B, out_channels, *grid] = {want} on any grid")
        require(torch.isfinite(y).all(), "returned NaN/Inf for finite inputs")
        require(differs(run(x, level + 0.5, cond), y), "the noise level does not change the output")
        # rows first: a net that mixes the batch would fail the drop_cond checks below for that reason
        for training in (False, True):
            batch = run(x, level, cond, drop, training) if training else run(x, level, cond, drop)
            for i in range(3):
                row = slice(i, i + 1)
                alone = run(x[row], level[row], None if cond is None else cond[row],
                            None if drop is None else drop[row], training)
                close(alone, batch[row], f"row {i} run alone differs from the same row in a batch of 3 "
                      f"({'train' if training else 'eval'} mode): a row's output must not depend "
                      "on the other rows (no BatchNorm or mixing over the batch dimension)")
        if cond_dim:
            y_none = run(x, level)
            require(differs(y, y_none), "leaving cond out gives the conditional output: the "
                    "condition has no effect, so guidance would do nothing")
            mixed = run(x, level, cond, drop)
            close(mixed[drop], y_none[drop], f"rows with drop_cond=True (of {drop.tolist()}) must "
                  "give exactly the output without cond (classifier-free guidance relies on it)")
            close(mixed[~drop], y[~drop], "rows with drop_cond=False must give the conditional output")

    net.zero_grad(set_to_none=True)
    y = run(x, level, cond, drop, training=True)
    (y - torch.randn(y.shape, generator=generator, dtype=y.dtype)).square().mean().backward()
    dead = [n for n, p in net.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.any())]
    require(not dead, f"no gradient reaches {dead} from an MSE on the output (drop_cond="
            f"{None if drop is None else drop.tolist()}); every parameter must be used (DDP fails "
            "on unused ones)")

    factor = int(getattr(net, "downsampling_factor", 1))
    circular = [axis for axis, mode in enumerate(padding) if mode == "circular"]
    grid = [max(2, -(-n // factor)) * factor if axis in circular else n for axis, n in enumerate(shape)]
    x = torch.randn(3, in_channels, *grid, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = run(x, level, cond) if circular else None
        for axis in circular:
            close(run(x.roll(factor, 2 + axis), level, cond), y.roll(factor, 2 + axis),
                  f"axis {axis} is circular but rolling the input by {factor} along it does not roll "
                  f"the output (grid {grid}); a periodic axis must commute with shifts by the "
                  "net's downsampling_factor (1 if it does not say)")
