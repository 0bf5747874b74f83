"""Audio outputs: a Dataset of clips written as WAV files, a spectrogram PNG and the Dataset itself.

The rate of a Dataset's clips is read from its ``sample_rate`` attribute and its ``time``
coordinate, which must agree (``sample_rate_of``). ``write_clips`` refuses NaN/Inf and does not
clip: a member whose peak exceeds full scale is scaled down to peak 0.999 in its WAV, with a
warning and the gain recorded in the stored Dataset's attrs (``wav_rescaled``, ``wav_gains``).
A rewrite into the same folder removes the earlier set's WAVs that this one does not have.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from sciddpm.data.audio_io import soundfile, spectrogram_db
from sciddpm.data.stores import check_no_namesake, check_replaceable, names_a_store, write_store
from sciddpm.data.units import read_units, says_nothing
from sciddpm.files import atomic_path
from sciddpm.plots import new_figure, save_png

log = logging.getLogger(__name__)


def write_clips(ds: xr.Dataset, out: str | Path, default_rate: int, wav_subtype: str) -> list[Path]:
    """Write ``ds``'s clips as one WAV each (named by ``clip_labels``), a spectrogram PNG and the
    Dataset itself (``samples.nc`` in the folder ``out``, or the store ``out`` with the WAVs beside
    it); returns the paths written. ``default_rate``: the model's rate, used when ``ds`` says none."""
    sf = soundfile()
    if "waveform" not in ds.data_vars or "time" not in ds["waveform"].dims:
        raise ValueError("expected a Dataset with a 'waveform' variable over 'time' (from to_xarray)")
    da = ds["waveform"]
    tail = ("channel", "time") if "channel" in da.dims else ("time",)
    da = da.transpose(..., *tail)
    lead = da.dims[: da.ndim - len(tail)]
    values = np.asarray(da.values, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad.reshape(*values.shape[: len(lead)], -1).any(-1))[0]
        raise ValueError(f"waveform has NaN/Inf at {dict(zip(lead, where.tolist()))}; nothing was written "
                         "(a diverged sampler? try more steps or check the model)")
    rate = sample_rate_of(ds, default_rate)
    if not float(rate).is_integer() or rate <= 0:  # a WAV header holds whole Hz
        raise ValueError(f"the Dataset's sample rate is {rate!r} Hz; WAV files need a whole number of Hz")
    rate = int(rate)
    out = Path(out)
    if names_a_store(out):
        folder, prefix, store = out.parent, out.stem + "_", out
    elif out.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3") or out.is_file():
        raise ValueError(f"{out} names a file, but audio samples are written as one WAV per clip: give "
                         "a folder (or a .nc / .zarr path, the WAVs going beside it)")
    else:
        folder, prefix, store = out, "", out / "samples.nc"
    check_no_namesake(store)
    folder.mkdir(parents=True, exist_ok=True)
    labels = clip_labels(da, lead)
    if store.exists():  # samples.nc is written last: while it is missing the set is incomplete
        check_replaceable(store)
        shutil.rmtree(store) if store.is_dir() else store.unlink()
    written, rescaled, gains = [], [], []
    for index, label in zip(np.ndindex(*values.shape[: len(lead)]), labels):
        clip = values[index]
        peak = float(np.abs(clip).max())
        if peak > 1.0:  # scale this member down rather than clip it (module docstring)
            rescaled.append(label)
            gains.append(0.999 / peak)
            clip = clip * gains[-1]
        path = folder / f"{prefix}{label}.wav"
        with atomic_path(path) as tmp:
            sf.write(tmp, np.asarray(clip, dtype=np.float32).T, rate, subtype=wav_subtype, format="WAV")
        written.append(path)
    if rescaled:
        log.warning("%d clip(s) exceed full scale; their WAVs were scaled down to peak 0.999 (not clipped): %s",
                    len(rescaled), ", ".join(f"{l} x{g:.3f}" for l, g in zip(rescaled, gains)))
    ours = re.compile(rf"{re.escape(prefix)}(?:(?:{'|'.join({'case', 'member', *lead})})\d{{3,}}_?)+\.wav")
    removed = sorted(path for path in folder.glob(f"{prefix}*.wav") if ours.fullmatch(path.name)
                     and path.stem[len(prefix):] not in labels)
    for path in removed:  # a clip named as ours beside this set's samples.nc must be one of its clips
        path.unlink()
    if removed:
        log.warning("removed %d WAV(s) of an earlier sample set in %s, which this one does not have: %s",
                    len(removed), folder, ", ".join(p.name for p in removed))
    written.append(spectrogram_png(values, lead, labels, rate, folder / f"{prefix}spectrogram.png"))
    stored = ds.copy()
    if rescaled:
        stored.attrs.update(wav_rescaled=" ".join(rescaled), wav_gains=gains)
    return written + [write_store(stored, store)]


def spectrogram_png(values: np.ndarray, lead: tuple, labels: list[str], rate: int, path: Path) -> Path:
    """Spectrograms of the first 16 clips of ``values`` (leading dims ``lead``), titled by ``labels``."""
    clips = values.reshape(-1, *values.shape[len(lead):])
    clips = clips.mean(axis=1) if clips.ndim == 3 else clips  # stereo: show the mid signal
    shown = clips[:16]
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig = new_figure(3 * cols, 2.2 * rows)
    for k, clip in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        db, n_fft = spectrogram_db(clip, rate)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(0, len(clip) / rate, 0, rate / 2 / 1000))
        ax.set_title(labels[k], fontsize=8)
        ax.set_xlabel("time [s]", fontsize=7)
        ax.set_ylabel("kHz", fontsize=7)
        ax.tick_params(labelsize=6)
    if len(clips) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(clips)} clips", fontsize=9)
    return save_png(fig, path)


def sample_rate_of(ds: xr.Dataset, default: int) -> float:
    """The rate of ``ds``'s clips: its ``sample_rate`` attribute and its ``time`` coordinate (in
    seconds, or in the time unit its ``units`` attribute names) must agree - a Dataset subsampled
    with ``isel(time=slice(None, None, 2))`` keeps the attribute and would be written at twice its
    speed. Without either, the model's ``default``."""
    said = ds.attrs.get("sample_rate")
    if said is not None and (isinstance(said, bool) or not isinstance(said, (int, float, np.number))):
        raise ValueError(f"the Dataset's sample_rate attribute is {said!r}, not a number of Hz")
    time = ds.coords.get("time")
    if time is None or time.size < 2 or time.dtype.kind != "f":  # (integers: sample numbers, not seconds)
        return default if said is None else float(said)
    units = time.attrs.get("units")
    to_seconds = 1.0
    if not says_nothing(units):
        if str(units).strip().lower() in ("sample", "samples", "index", "1"):  # sample numbers: no rate in them
            return default if said is None else float(said)
        read = read_units(units)
        if read is None or read[0] != (("T", 1),):
            raise ValueError(f"the Dataset's time coordinate is in {units!r}, which is not a time sciddpm reads (s, "
                             "ms, us); give it in seconds (or as sample numbers, units 'samples')")
        to_seconds = read[1]  # ms: 1e-3
    seconds = np.asarray(time.values, dtype=np.float64) * to_seconds
    step = (seconds[-1] - seconds[0]) / (seconds.size - 1)  # (float32 times are uneven by their rounding)
    if not step > 0 or np.abs(np.diff(seconds) - step).max() > 0.5 * step:  # (a gap is a whole step)
        raise ValueError("the Dataset's time coordinate is not evenly spaced and increasing, so it has no sample rate; "
                         "give the clips a time coordinate of i / sample_rate seconds")
    measured = 1.0 / step
    if said is None:
        return float(round(measured)) if abs(measured - round(measured)) < 1e-4 * measured else measured
    if not math.isclose(measured, float(said), rel_tol=1e-4):
        raise ValueError(f"the Dataset's sample_rate attribute says {float(said):g} Hz but its time coordinate steps "
                         f"{step:.6g} s ({measured:.6g} Hz): was it subsampled or resampled? Set "
                         "ds.attrs['sample_rate'] to the rate its time steps give (or resample the clips)")
    return float(said)


def clip_labels(da: xr.DataArray, lead: Sequence[str]) -> list[str]:
    """WAV names of the clips of ``da`` along its leading dims ``lead``: member003, case001_member002,
    numbered by each dim's integer coordinate (a selection of members keeps their names), else by
    position."""
    numbers = [da[d].values if d in da.coords and da[d].dtype.kind in "iu" else np.arange(da.sizes[d])
               for d in lead]
    return ["_".join(f"{d}{int(numbers[k][i]):03d}" for k, (d, i) in enumerate(zip(lead, index))) or "clip"
            for index in np.ndindex(*[da.sizes[d] for d in lead])]


