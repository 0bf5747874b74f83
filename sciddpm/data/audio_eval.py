"""Audio scores for ``sciddpm evaluate``: the pitch sweep and spectral distance to held-out clips.

The held-out clips' pitches span the training range, and one sample is drawn at each of them, so
"requested vs measured" over those pairs is a pitch sweep: it is written as JSON (every pair) and as
a log-log scatter with the identity line and +-50 cent bands. Unvoiced samples count as misses.
A ``pitch`` condition is read in its own units (kHz, MIDI note numbers) and compared in Hz; the
estimator's search range covers the requested pitches, so a high note is not read as its octave.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from sciddpm.data.audio_io import midi_to_hz
from sciddpm.data.units import read_units, says_nothing
from sciddpm.plots import new_figure, save_png
from sciddpm.metrics.audio import cents, estimate_pitch, mrstft_distance

log = logging.getLogger(__name__)


def pitch_in_hz(values: Any, units: str | None) -> np.ndarray | None:
    """A pitch condition's values in Hz from its units (Hz, kHz, MIDI note numbers); None, with
    a warning, where the units are not a frequency this can convert (no pitch sweep then)."""
    values = np.asarray(values, dtype=np.float64)
    if says_nothing(units):
        log.warning("the pitch condition has no units: its values are taken as Hz for the pitch sweep")
        return values
    if str(units).strip().lower() in ("midi", "midi note", "midi notes", "midi note number", "midi number"):
        return midi_to_hz(values)
    read = read_units(units)
    if read is None or read[0] != (("T", -1),):
        log.warning("the pitch condition is in %r, which is not a frequency sciddpm can convert to Hz (Hz, kHz, "
                    "MIDI): no pitch sweep", units)
        return None
    return values * read[1]


def audio_scores(samples: xr.Dataset, heldout: xr.Dataset, cond: Mapping[str, Any], out: str | Path,
                 rate: int, pitch_units: str | None = "Hz") -> dict:
    mono = {k: (d.waveform.mean("channel") if "channel" in d.waveform.dims else d.waveform)
            .transpose(..., "time").values for k, d in (("samples", samples), ("heldout", heldout))}
    length = mono["samples"].shape[-1]
    scores: dict[str, Any] = {"files": []}
    requested = pitch_in_hz(cond["pitch"], pitch_units) if "pitch" in cond else None
    if requested is not None:
        requested = np.broadcast_to(requested, mono["samples"].shape[:-1])
        # the search range covers every requested pitch (a note above fmax read as its octave):
        # down to two periods in a clip, up to just under the Nyquist frequency
        fmin = max(min(50.0, 0.8 * requested.min()), 2.02 * rate / length)
        fmax = max(fmin * 1.5, min(max(2000.0, 1.25 * requested.max()), 0.45 * rate))
        measured = {}
        for key, wave in mono.items():
            f0, voiced = estimate_pitch(wave, rate, fmin=fmin, fmax=fmax)
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
