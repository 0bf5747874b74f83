"""Audio scores for ``sciddpm evaluate``: the pitch sweep and spectral distance to held-out clips.

The held-out clips' pitches span the training range, and one sample is drawn at each of them, so
"requested vs measured" over those pairs is a pitch sweep: it is written as JSON (every pair) and as
a log-log scatter with the identity line and +-50 cent bands. Unvoiced samples count as misses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from sciddpm.plots import new_figure, save_png
from sciddpm.metrics.audio import cents, estimate_pitch, mrstft_distance


def audio_scores(samples: xr.Dataset, heldout: xr.Dataset, cond: Mapping[str, Any], out: str | Path,
                 rate: int) -> dict:
    mono = {k: (d.waveform.mean("channel") if "channel" in d.waveform.dims else d.waveform)
            .transpose(..., "time").values for k, d in (("samples", samples), ("heldout", heldout))}
    length = mono["samples"].shape[-1]
    scores: dict[str, Any] = {"files": []}
    if "pitch" in cond:
        requested = np.broadcast_to(np.asarray(cond["pitch"], dtype=np.float64), mono["samples"].shape[:-1])
        fmin = max(50.0, 2.02 * rate / length)  # the lowest pitch with two periods in a clip
        measured = {}
        for key, wave in mono.items():
            f0, voiced = estimate_pitch(wave, rate, fmin=fmin)
            measured[key] = np.where(voiced, f0, np.nan)
            err = np.abs(cents(f0[voiced], requested[voiced])) if voiced.any() else np.zeros(0)
            scores[f"pitch_{key}"] = {
                "voiced_fraction": float(voiced.mean()),
                "median_abs_cents": float(np.median(err)) if err.size else None,
                "within_50_cents": float((err <= 50).sum() / voiced.size),
                "within_100_cents": float((err <= 100).sum() / voiced.size),
            }
        scores["pitch_sweep"] = [
            {"requested_hz": float(r), "measured_hz": None if np.isnan(m) else round(float(m), 3)}
            for r, m in zip(requested.ravel(), measured["samples"].ravel())]
        scores["files"].append(_sweep_png(requested.ravel(), measured["samples"].ravel(), Path(out) / "pitch_sweep.png"))
    sizes = tuple(n for n in (256, 512, 1024) if n <= length) or (length,)
    scores["mrstft_samples_vs_heldout"] = float(np.mean(mrstft_distance(mono["samples"], mono["heldout"], rate, sizes)))
    return scores


def _sweep_png(requested: np.ndarray, measured: np.ndarray, path: Path) -> Path:
    fig = new_figure(4.5, 4.2)
    ax = fig.add_subplot()
    line = np.geomspace(requested.min() * 0.9, requested.max() * 1.1, 50)
    ax.fill_between(line, line * 2 ** (-50 / 1200), line * 2 ** (50 / 1200), color="0.85", label="+-50 cents")
    ax.plot(line, line, color="0.4", lw=0.8)
    voiced = np.isfinite(measured)
    ax.scatter(requested[voiced], measured[voiced], s=14, color="tab:red", label="samples")
    if (~voiced).any():
        ax.scatter(requested[~voiced], np.full((~voiced).sum(), line[0]), marker="x", color="k",
                   label=f"unvoiced ({(~voiced).sum()})")
    ax.set(xscale="log", yscale="log", xlabel="requested pitch [Hz]", ylabel="measured pitch [Hz]",
           title="pitch sweep")
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    # ticks an octave apart on the A's (55, 110, 220... Hz), or at the ends of a narrower range
    octaves = 55.0 * 2.0 ** np.arange(-3, 10)
    ticks = octaves[(octaves >= line[0]) & (octaves <= line[-1])]
    ticks = ticks if len(ticks) >= 2 else np.round(line[[0, -1]], 1)
    for axis in (ax.xaxis, ax.yaxis):  # plain Hz labels, not 3x10^2
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8)
    return save_png(fig, path, dpi=110)
