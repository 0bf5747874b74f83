"""Figures and scores for volumes: central-slice PNGs and fitted spectral slopes.

``slices_png`` draws, per channel, the slices through the centre of a few volumes normal to each
axis, labelled with their conditions (the picture ``VolumeAdapter.write`` adds to a store);
``slope_scores`` fits the slope of each volume's radially averaged power spectrum over k in
[1, N/2] for samples and held-out data (``VolumeAdapter.evaluate``), and for the ``grf`` source
compares them with the requested -alpha.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from sciddpm.data.spec import DataSpec
from sciddpm.plots import new_figure, save_png
from sciddpm.metrics.spectra import power_spectrum, spectral_slope


def slices_png(ds: xr.Dataset, spec: DataSpec, path: Path, members: int = 4) -> Path:
    """Central slices (normal to each axis) of the first ``members`` volumes, per channel."""
    dims = list(spec.output["dims"])
    first = ds[spec.channels[0]]
    lead = [d for d in first.dims if d not in dims]
    items = list(np.ndindex(*[ds.sizes[d] for d in lead]))[:members]
    fig = new_figure(2.2 * 3 * len(spec.channels), 2.2 * len(items))
    for c, name in enumerate(spec.channels):
        da = ds[name].transpose(*lead, *dims)
        lo, hi = np.percentile(da.values, [1, 99])
        for r, index in enumerate(items):
            vol = da.values[index]
            at = dict(zip(lead, index))
            label = " ".join([f"{d}{i}" for d, i in at.items()] + [  # with its conditions
                f"{v}={float(ds[v].isel({d: i for d, i in at.items() if d in ds[v].dims})):.4g}"
                for v in spec.cond.names if v in ds.coords])
            for a, axis in enumerate(dims):  # the slice through the centre, normal to each axis
                ax = fig.add_subplot(len(items), 3 * len(spec.channels), r * 3 * len(spec.channels) + 3 * c + a + 1)
                ax.imshow(np.take(vol, vol.shape[a] // 2, axis=a), cmap="viridis", vmin=lo, vmax=hi,
                          origin="lower", interpolation="nearest")
                ax.set_title(f"{name} {label}\n{axis}={vol.shape[a] // 2}", fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
    return save_png(fig, path, dpi=90)


def slope_scores(samples: xr.Dataset, heldout: xr.Dataset, cond: Mapping[str, Any], spec: DataSpec,
                 out: Path) -> dict:
    """Fitted spectral slopes per channel (k in [1, N/2]); for ``grf``, against the requested -alpha."""
    dims = list(spec.output["dims"])
    metrics: dict = {"spectral_slope": {}}
    slopes = {}
    for name in spec.channels:
        s, h = (_slopes(d[name].transpose(..., *dims).values) for d in (samples, heldout))
        slopes[name] = (s, h)
        metrics["spectral_slope"][name] = {
            "samples_mean": float(s.mean()), "samples_std": float(s.std()),
            "heldout_mean": float(h.mean()), "heldout_std": float(h.std()),
        }
    if spec.output.get("source") == "grf" and "alpha" in cond:
        alpha = np.broadcast_to(np.asarray(cond["alpha"], dtype=float), slopes["field"][0].shape)
        s, h = slopes["field"]
        metrics["spectral_slope"]["field"].update(
            samples_mean_abs_error_vs_alpha=float(np.abs(s + alpha).mean()),
            heldout_mean_abs_error_vs_alpha=float(np.abs(h + alpha).mean()))
    caveats = _spectrum_caveats(spec)
    if caveats:
        metrics["spectral_slope"]["caveat"] = caveats
    metrics["files"] = [str(_slopes_png(slopes, cond, spec, out / "spectral_slopes.png"))]
    return metrics


def _spectrum_caveats(spec: DataSpec) -> str | None:
    """What makes the FFT slopes a weak summary of this grid, in words (None when nothing does):
    the spectrum treats every axis as periodic and in grid-index wavenumbers."""
    dims = list(spec.output["dims"])
    notes = []
    open_axes = [d for d, pad in zip(dims, spec.padding) if pad != "circular"]
    if open_axes:
        notes.append(f"axes {open_axes} are not periodic, so their edges and any mean gradient add power")
    spacings = {}
    for d in dims:
        values = ((spec.output["coords"].get(d) or {}).get("values"))
        if values is not None and len(values) > 1:
            spacings[d] = float(np.median(np.diff(np.asarray(values, dtype=float))))
    steps = [abs(v) for v in spacings.values()]
    if steps and not np.allclose(steps, steps[0], rtol=1e-6):  # offsets of 1e5 leave 1e-12 of rounding
        notes.append(f"grid spacings differ ({', '.join(f'{d}: {v:g}' for d, v in spacings.items())}) but "
                     "wavenumbers are counted per grid index")
    if not notes:
        return None
    return ("spectral slopes assume a periodic box with equal spacing on every axis; here " + "; ".join(notes)
            + " - compare samples with held-out data, not with a theoretical slope")


def _slopes_png(slopes: dict, cond: Mapping[str, Any], spec: DataSpec, path: Path) -> Path:
    name = spec.cond.names[0] if spec.cond.names else None
    fig = new_figure(4 * len(slopes), 3.4)
    for c, (channel, (s, h)) in enumerate(slopes.items()):
        ax = fig.add_subplot(1, len(slopes), c + 1)
        x = np.broadcast_to(np.asarray(cond[name], dtype=float), s.shape) if name in cond else np.arange(len(s))
        ax.scatter(x, h, label="held-out data", color="black", s=14)
        ax.scatter(x, s, label="samples", color="tab:red", marker="x", s=14)
        if spec.output.get("source") == "grf" and name == "alpha":
            grid = np.linspace(x.min(), x.max(), 2)
            ax.plot(grid, -grid, color="grey", lw=1, label="requested (-alpha)")
        ax.set(title=channel, xlabel=name or "member", ylabel="fitted spectral slope")
        ax.legend(fontsize=7)
    return save_png(fig, path)


def _slopes(volumes: np.ndarray) -> np.ndarray:
    """Fitted slope of each volume's radially averaged power spectrum over k in [1, N/2]."""
    flat = volumes.reshape(-1, *volumes.shape[-3:])
    return np.array([spectral_slope(*power_spectrum(v, dims=3)) for v in flat])
