"""The audio adapter (registered ``"audio"``): fixed-length waveform clips with named conditions.

Sources (``source=``):

* ``"tones"`` (default) - harmonic tones with a known pitch, built on first use by
  ``sciddpm.data.tones`` and cached as a folder + CSV (so the folder reader serves it too).
  Defaults: 8000 Hz, 2048-sample clips, ``tones_clips=2000``, ``tones_seed=0``.
* ``"folder"`` - audio files (anything soundfile reads: WAV, FLAC, ...) in ``path/`` and a CSV
  ``path/metadata.csv`` (``metadata=`` to rename it) with a ``filename`` column and one numeric
  column per condition. Units come from the header, ``pitch[Hz]``, or from ``units={"pitch": "Hz"}``
  for plain headers; a column named ``pitch`` gets a "log" feature, the others "linear", unless
  ``features={"name": "log"|"linear"|"cyclic"}`` says otherwise. ``sample_rate=None`` keeps the
  files' rate (they must agree); clips default to 16384 samples.
* ``"nsynth"`` - the NSynth layout: ``path/examples.json`` (note_str -> {pitch (MIDI), velocity,
  instrument_family_str, ...}) and ``path/audio/<note_str>.wav``. MIDI pitch m becomes Hz,
  440 * 2**((m - 69) / 12), so ``pitch=440`` means A4; ``velocity`` (MIDI, linear) is a second
  condition. Filters: ``instrument_family`` (a name or list) and ``midi_range=(lo, hi)``
  (inclusive). Defaults: 16000 Hz, 16384-sample clips.

Clip policy: a clip is ``clip_samples`` samples starting ``offset_s`` seconds into the file.
Longer files are cropped (logged at INFO with a count); shorter files are zero-padded at the
END only, with a warning naming them; a file with no audio in its clip (empty, or shorter than
``offset_s``) is refused by name. Files are mixed down to mono by averaging their
channels unless ``channels=2`` (stereo files kept as left/right). A file whose rate differs from
``sample_rate`` is resampled with ``torchaudio.functional.resample`` (logged, with a count).

Amplitude: one scale for the whole dataset, the 99.9th percentile of |x| over (up to
``stats_clips``) training clips, stored as the normaliser's std with mean 0, so normalised clips
mostly lie in [-1, 1]; ``sigma_data`` is the measured std of those normalised clips.

Output: ``xr.Dataset`` with variable ``waveform`` (dims member, time; member, channel, time for
stereo), time in seconds, ``sample_rate`` in attrs and the conditions as coordinates with units.
``write`` (``sciddpm.data.audio_output``) rejects NaN/Inf, and does NOT clip: a member whose peak
exceeds full scale is scaled down to peak 0.999 in its WAV, with a warning and the gain recorded in
the stored Dataset's attrs (``wav_rescaled``, ``wav_gains``); the stored Dataset itself keeps the
unscaled values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciddpm.data.audio_io import AudioFile, load_clip, probe, read_folder, read_nsynth, soundfile
from sciddpm.data.audio_output import sample_rate_of, write_clips
from sciddpm.data.base import Adapter, condition_coords, heldout_picks, register_adapter, split_indices
from sciddpm.data.conditioning import CondSchema, CondVar
from sciddpm.data.spec import DataSpec, Normaliser
from sciddpm.data.units import check_units

log = logging.getLogger(__name__)

SOURCES = {"tones": (8000, 2048), "folder": (None, 16384), "nsynth": (16000, 16384)}  # rate, clip
WAV_SUBTYPES = ("FLOAT", "PCM_16")


def is_silent(peak: Any, loudest: float) -> Any:
    """Whether a clip of this peak is silence, not sound: zeros, dither or hiss 60 dB or more under
    ``loudest`` (the loudest clip, or the amplitude scale). Relative only: a quietly recorded data
    set (a hydrophone at -90 dBFS) is sound, not silence."""
    return peak <= 1e-3 * loudest


class AudioClips(torch.utils.data.Dataset):
    """Clips read from files on demand: ``{"x": [C, T] normalised float32, "cond": [D] float32}``.

    Holds only paths, numbers and arrays, so it pickles for DataLoader workers.
    """

    def __init__(self, files: list[AudioFile], cond: np.ndarray, scale: float, sample_rate: int,
                 clip_samples: int, offset_s: float, channels: int):
        self.files, self.cond = files, torch.from_numpy(np.asarray(cond, dtype=np.float32))
        self.scale, self.sample_rate, self.clip_samples = scale, sample_rate, clip_samples
        self.offset_s, self.channels = offset_s, channels
        self._said_silent: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip = load_clip(self.files[i], self.sample_rate, self.clip_samples, self.offset_s, self.channels)
        if is_silent(np.abs(clip).max(), self.scale) and self.files[i].path not in self._said_silent:
            self._said_silent.add(self.files[i].path)
            log.warning("%s is silent from offset_s=%g for the clip's %d samples: it trains as silence under its "
                        "labels (trim its leading silence, or drop it)", self.files[i].path, self.offset_s,
                        self.clip_samples)
        return {"x": torch.from_numpy(clip / np.float32(self.scale)), "cond": self.cond[i]}


@register_adapter("audio")
class AudioAdapter(Adapter):
    """Waveform clips from the embedded tones, a folder + CSV, or NSynth (see the module docstring).

    ``source``/``path``: where the clips come from; ``sample_rate``/``clip_samples``: the model's
    rate and clip length (None: the source's default); ``channels``: 1 (mix down) or 2;
    ``offset_s``: where each clip starts in its file; ``val_fraction``/``split_seed``: the
    deterministic train/val split; ``stats_clips``: how many training clips the amplitude scale
    and sigma_data are measured on; ``metadata``/``units``/``features``/``cond``: folder CSV
    options (``cond``: the columns that are conditions, default all);
    ``instrument_family``/``midi_range``: NSynth filters; ``tones_clips``/``tones_seed``: size and
    seed of the embedded tones; ``wav_subtype``: "FLOAT" (32-bit float) or "PCM_16" WAVs.
    """

    def __init__(self, source: str = "tones", path: str | None = None, sample_rate: int | None = None,
                 clip_samples: int | None = None, channels: int = 1, offset_s: float = 0.0,
                 val_fraction: float = 0.1, split_seed: int = 0, stats_clips: int = 2000,
                 metadata: str = "metadata.csv", units: dict | None = None, features: dict | None = None,
                 cond: list | None = None,
                 instrument_family: str | list | None = None, midi_range: list | tuple | None = None,
                 tones_clips: int | None = None, tones_seed: int | None = None, wav_subtype: str = "FLOAT"):
        if source not in SOURCES:
            raise ValueError(f"unknown audio source {source!r}; choose one of {', '.join(SOURCES)}")
        if source != "tones" and path is None:
            raise ValueError(f"audio source {source!r} needs path= (the data folder)")
        if source == "tones" and path is not None:
            raise ValueError("the tones source builds its own data; drop path= or use source='folder'")
        if source != "tones" and (tones_clips is not None or tones_seed is not None):
            raise ValueError("tones_clips / tones_seed only apply to source='tones'")
        if source != "folder" and (units is not None or features is not None or cond is not None
                                   or metadata != "metadata.csv"):
            raise ValueError("metadata / units / features / cond only apply to source='folder'")
        if source != "nsynth" and (instrument_family is not None or midi_range is not None):
            raise ValueError("instrument_family / midi_range only apply to source='nsynth'")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 (mono mix-down) or 2 (stereo), got {channels!r}")
        if wav_subtype not in WAV_SUBTYPES:
            raise ValueError(f"wav_subtype must be one of {WAV_SUBTYPES}, got {wav_subtype!r}")
        for key, value in (("sample_rate", sample_rate), ("clip_samples", clip_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a positive integer (or None for the source's default), got {value!r}")
        if offset_s < 0 or stats_clips < 1:
            raise ValueError(f"offset_s must be >= 0 and stats_clips >= 1, got {offset_s}, {stats_clips}")
        default_rate, default_clip = SOURCES[source]
        self.source, self.path = source, None if path is None else str(path)
        self.sample_rate = sample_rate or default_rate
        self.clip_samples = int(clip_samples or default_clip)
        if self.clip_samples < 16:
            raise ValueError(f"clip_samples must be at least 16, got {self.clip_samples}")
        self.channels, self.offset_s = channels, float(offset_s)
        self.val_fraction, self.split_seed, self.stats_clips = val_fraction, split_seed, stats_clips
        self.source_kw = {
            "tones": {"n_clips": tones_clips, "seed": tones_seed},
            "folder": {"metadata": metadata, "units": units, "features": features, "cond": cond},
            "nsynth": {"instrument_family": instrument_family, "midi_range": midi_range},
        }[source]
        self.wav_subtype = wav_subtype
        self._spec: DataSpec | None = None
        self._index: tuple[list[AudioFile], dict[str, np.ndarray]] | None = None

    # ------------------------------------------------------------------ training side
    def _files(self) -> tuple[list[AudioFile], dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Every file with its conditioning values and variable descriptions (read once)."""
        if self.source == "tones":
            from sciddpm.data import tones

            soundfile()  # fail early, naming the extra, before building anything
            kw = {"n_clips": self.source_kw["n_clips"], "seed": self.source_kw["seed"],
                  "sample_rate": self.sample_rate, "clip_samples": self.clip_samples}
            folder = tones.ensure_tones(**kw)
            names, values, meta = read_folder(folder, "metadata.csv", None, None)
            meta["pitch"]["description"] = "fundamental frequency of the tone"
            self._note = f"trained on the embedded tones data: {tones.describe(**kw)}"
        elif self.source == "folder":
            names, values, meta = read_folder(Path(self.path), **self.source_kw)
            self._note = f"trained on the folder {self.path} ({len(names)} files)"
        else:
            names, values, meta = read_nsynth(Path(self.path), **self.source_kw)
            self._note = f"trained on NSynth at {self.path} ({len(names)} notes)"
        files = probe(names, self.channels)
        if self.sample_rate is None:
            rates = sorted({f.rate for f in files})
            if len(rates) > 1:
                raise ValueError(f"the files have sample rates {rates} Hz; pass sample_rate= "
                                 f"(data.kwargs.sample_rate={rates[-1]}, say) to resample them to one")
            self.sample_rate = rates[0]
        self._report(files)
        return files, values, meta

    def _report(self, files: list[AudioFile]) -> None:
        by_rate: dict[int, int] = {}
        padded: dict[str, int] = {}  # file -> samples of signal in its clip
        cropped = 0
        for f in files:
            if f.rate != self.sample_rate:
                by_rate[f.rate] = by_rate.get(f.rate, 0) + 1
            available = math.floor(f.frames * self.sample_rate / f.rate) - round(self.offset_s * self.sample_rate)
            if available < self.clip_samples:
                padded[str(f.path)] = max(available, 0)
            cropped += available > self.clip_samples
        empty = [name for name, kept in padded.items() if kept == 0]
        if empty:  # an all-zero clip would train as silence under its file's labels
            raise ValueError(
                f"{len(empty)} file(s) have no audio at offset {self.offset_s:g} s (empty, or shorter than the "
                f"offset), e.g. {', '.join(empty[:3])}; remove them from the data, or lower data.kwargs.offset_s")
        for rate, count in sorted(by_rate.items()):
            log.info("resampling %d file(s) from %d Hz to %d Hz with torchaudio.functional.resample",
                     count, rate, self.sample_rate)
        if padded:
            shortest = min(padded, key=padded.get)
            log.warning("%d of %d file(s) are shorter than offset %.3f s + %d samples and are zero-padded at "
                        "the end, e.g. %s; the shortest, %s, fills %.0f%% of its clip",
                        len(padded), len(files), self.offset_s, self.clip_samples,
                        ", ".join(list(padded)[:3]), shortest, 100 * padded[shortest] / self.clip_samples)
        if cropped:
            log.info("%d of %d file(s) are longer than the clip; cropped to samples [%d, %d)", cropped,
                     len(files), round(self.offset_s * self.sample_rate),
                     round(self.offset_s * self.sample_rate) + self.clip_samples)

    def _split(self, split: str) -> tuple[list[AudioFile], dict[str, np.ndarray]]:
        if self._index is None:
            if self.source is None:
                raise RuntimeError(
                    "this audio adapter was rebuilt from a run's DataSpec and has no data; use "
                    "build_adapter('audio', source=..., path=...) to read data"
                )
            files, values, self._meta = self._files()
            self._index = (files, values)
        files, values = self._index
        idx = split_indices(len(files), split, self.val_fraction, self.split_seed)
        return [files[i] for i in idx], {k: v[idx] for k, v in values.items()}

    def spec(self) -> DataSpec:
        if self._spec is None:
            files, values = self._split("train")
            rng = np.random.default_rng(self.split_seed)
            pick = np.sort(rng.permutation(len(files))[: self.stats_clips])
            clips = np.stack([load_clip(files[i], self.sample_rate, self.clip_samples, self.offset_s,
                                        self.channels) for i in pick]).astype(np.float64)
            peaks = np.abs(clips).reshape(len(pick), -1).max(axis=1)
            silent = [files[i].path for i, peak in zip(pick, peaks) if is_silent(peak, peaks.max())]
            said = (f"{len(silent)} of the {len(pick)} training clips read for statistics are silent (peak 60 dB or "
                    f"more under the loudest clip's) over their {self.clip_samples} samples from "
                    f"offset_s={self.offset_s:g}, e.g. {', '.join(silent[:3])}")
            if peaks.max() == 0:
                raise ValueError(f"all {len(pick)} training clips read for statistics are digital silence (all zeros) "
                                 f"over their {self.clip_samples} samples from offset_s={self.offset_s:g}, e.g. "
                                 f"{files[pick[0]].path}: check the files, or set data.kwargs.offset_s where the "
                                 "sound starts")
            if 2 * len(silent) > len(pick):  # most: leading silence, or one file far louder than the rest
                loudest = files[pick[int(np.argmax(peaks))]].path
                raise ValueError(
                    f"{said}. Either the sound starts later in them (set data.kwargs.offset_s, or trim their leading "
                    f"silence), or the files' levels differ by more than 60 dB: the loudest clip, {loudest}, peaks at "
                    f"{20 * np.log10(peaks.max()):.0f} dBFS and the median clip at "
                    f"{20 * np.log10(max(float(np.median(peaks)), 1e-300)):.0f} dBFS (normalise each file's level, "
                    "or drop the loud ones)")
            if silent:  # a few: deliberate silence, or empty recordings, trained under their labels
                log.warning("%s; they train as silence under their labels (drop them if that is not meant)", said)
            scale = float(np.percentile(np.abs(clips), 99.9))
            cond = CondSchema([CondVar(name, units=m["units"], min=float(values[name].min()),
                                       max=float(values[name].max()), feature=m["feature"],
                                       description=m["description"]) for name, m in self._meta.items()])
            self._spec = DataSpec(
                adapter="audio", dims=1, channels=["waveform"] if self.channels == 1 else ["left", "right"],
                shape=[self.clip_samples], padding=["zeros"],
                normaliser=Normaliser([0.0] * self.channels, [scale] * self.channels), cond=cond,
                sigma_data=float((clips / scale).std()),
                output={"sample_rate": int(self.sample_rate), "units": "1", "variable": "waveform",
                        "wav_subtype": self.wav_subtype, "source": self.source},
                notes=[self._note, f"amplitude scale = 99.9th percentile of |x| over {len(pick)} training clips"],
            )
        return self._spec

    def dataset(self, split: str = "train") -> AudioClips:
        spec = self.spec()
        files, values = self._split(split)
        cond = spec.cond.encode(values, batch=len(files), warn=False).numpy()  # val may leave the train range
        return AudioClips(files, cond, spec.normaliser.std[0], self.sample_rate, self.clip_samples,
                          self.offset_s, self.channels)

    def heldout(self, n: int, seed: int = 0) -> tuple[xr.Dataset, dict]:
        spec = self.spec()
        files, values = self._split("val")
        pick = heldout_picks(n, len(files), seed, "clips", "train with a larger data.kwargs.val_fraction")
        x = np.stack([load_clip(files[i], self.sample_rate, self.clip_samples, self.offset_s, self.channels)
                      for i in pick])
        cond = {k: [float(v) for v in values[k][pick]] for k in spec.cond.names}
        x = spec.normaliser.normalise(torch.from_numpy(x.astype(np.float64)), channel_axis=1).float()
        return self.to_xarray(x, cond), cond

    # ------------------------------------------------------------------ inference side
    @classmethod
    def from_spec(cls, spec: DataSpec) -> AudioAdapter:
        if spec.adapter != "audio" or spec.dims != 1 or len(spec.channels) not in (1, 2):
            raise ValueError(f"not an audio DataSpec (adapter {spec.adapter!r}, dims {spec.dims}, "
                             f"{len(spec.channels)} channels)")
        out = spec.output
        rate, subtype = out.get("sample_rate"), out.get("wav_subtype", "FLOAT")
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0 or subtype not in WAV_SUBTYPES:
            raise ValueError(f"audio DataSpec output needs a positive integer sample_rate and wav_subtype "
                             f"in {WAV_SUBTYPES}; got {rate!r}, {subtype!r}")
        self = cls.__new__(cls)
        self.source, self.path, self.sample_rate = None, None, rate
        self.clip_samples, self.channels, self.wav_subtype = spec.shape[0], len(spec.channels), subtype
        self._spec, self._index = spec, None
        return self

    def to_xarray(self, x: torch.Tensor, cond: Mapping[str, Any]) -> xr.Dataset:
        spec = self.spec()
        x = torch.as_tensor(x).detach().cpu()
        if x.ndim != 3 or x.shape[1] != len(spec.channels):
            raise ValueError(f"expected normalised clips [N, {len(spec.channels)}, T], got shape {tuple(x.shape)}")
        n, _, t = x.shape
        wave = spec.normaliser.denormalise(x.double(), channel_axis=1).numpy().astype(np.float32)
        checked, cond_coords = condition_coords(spec.cond, cond, n)
        coords: dict[str, Any] = {
            "member": ("member", np.arange(n)),
            "time": ("time", np.arange(t) / self.sample_rate, {"units": "s", "long_name": "time from clip start"}),
            **cond_coords,
        }
        if len(spec.channels) > 1:
            coords["channel"] = ("channel", list(spec.channels))
        dims = ("member", *self._clip_dims())
        data = wave[:, 0] if len(spec.channels) == 1 else wave
        waveform = xr.Variable(dims, data, {"units": spec.output.get("units", "1"),
                                            "long_name": "waveform amplitude (full scale = 1)"})
        return xr.Dataset({"waveform": waveform}, coords=coords,
                          attrs={"sample_rate": int(self.sample_rate),
                                 "conditions": " ".join(checked) or "none (unconditional)"})

    def to_tensor(self, ds: xr.Dataset) -> torch.Tensor:
        spec = self.spec()
        if "waveform" not in ds.data_vars:
            raise ValueError(f"expected a Dataset with a 'waveform' variable, got {list(ds.data_vars)}")
        rate = sample_rate_of(ds, self.sample_rate)
        if rate != self.sample_rate:
            raise ValueError(f"the Dataset is at {rate:g} Hz but the model works at {self.sample_rate} Hz; resample it first")
        try:
            check_units(ds, {"waveform": {"units": spec.output.get("units", "1")}})
        except ValueError as error:  # a calibrated recording (Pa) is not converted by a unit table
            raise ValueError(f"{error}. A waveform here is a fraction of full scale (units '1'): divide calibrated "
                             "values by your recorder's full-scale level first") from None
        da = ds["waveform"]
        tail = self._clip_dims()
        if da.ndim != len(tail) + 1 or da.dims[1:] != tail:
            raise ValueError(f"expected waveform dims (<member or clip>, {', '.join(tail)}), got {da.dims}")
        if da.sizes["time"] != self.clip_samples or (len(spec.channels) > 1 and da.sizes["channel"] != len(spec.channels)):
            raise ValueError(f"the clips hold {da.sizes['time']} samples; the model's hold {self.clip_samples} "
                             f"({self.clip_samples / self.sample_rate:g} s at {self.sample_rate} Hz)"
                             f"{'' if len(spec.channels) == 1 else f' in {len(spec.channels)} channels'}: crop or pad "
                             "them to that length first")
        v = da.values.astype(np.float64)
        v = v[:, None] if len(spec.channels) == 1 else v
        return spec.normaliser.normalise(torch.from_numpy(v), channel_axis=1)

    def example_dim(self, ds: xr.Dataset) -> str | None:
        waveform = ds.get("waveform")
        return waveform.dims[0] if waveform is not None and waveform.ndim == len(self._clip_dims()) + 1 else None

    def _clip_dims(self) -> tuple[str, ...]:
        return ("time",) if len(self.spec().channels) == 1 else ("channel", "time")

    def write(self, ds: xr.Dataset, out: str | Path) -> list[Path]:
        return write_clips(ds, out, self.sample_rate, self.wav_subtype)

    def evaluate(self, samples: xr.Dataset, heldout: xr.Dataset, cond: Mapping[str, Any], out: str | Path) -> dict:
        """Audio scores for ``sciddpm evaluate`` (see ``sciddpm.data.audio_eval``)."""
        from sciddpm.data.audio_eval import audio_scores

        pitch_units = self.spec().cond["pitch"].units if "pitch" in self.spec().cond.names else None
        return audio_scores(samples, heldout, cond, out, int(samples.attrs.get("sample_rate", self.sample_rate)),
                            pitch_units=pitch_units)
