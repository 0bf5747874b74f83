"""Audio files in and out for the audio adapter: the folder + CSV and NSynth readers, probing,
clip loading (mono mix-down, resampling, crop / zero-pad) and spectrograms.

soundfile and torchaudio are optional (house rule 12 in docs/architecture.md): they are imported inside the
functions that use them, and a missing one raises ImportError naming the extra to install.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciddpm.checks import parse_number
from sciddpm.data.base import close_match, name_list
from sciddpm.data.conditioning import read_condition_table, split_header

_EXTRA = "pip install 'sciddpm[audio]'"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus"}  # soundfile's common formats
log = logging.getLogger(__name__)


def soundfile():
    try:
        import soundfile as sf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading and writing audio needs soundfile: {_EXTRA}") from err
    return sf


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    try:
        from torchaudio.functional import resample as _resample
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"resampling audio needs torchaudio: {_EXTRA}") from err
    return _resample(torch.from_numpy(np.ascontiguousarray(x)), src, dst).numpy()


def midi_to_hz(m):
    """MIDI note number -> Hz, equal temperament with A4 = MIDI 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


@dataclass(frozen=True)
class AudioFile:
    """What probing found about one file (soundfile.info): enough to load a clip from it."""

    path: str
    rate: int
    frames: int
    channels: int


def probe(paths: list[Path], channels: int) -> list[AudioFile]:
    """soundfile.info for every file; unreadable files are named with soundfile's reason."""
    sf = soundfile()
    out = []
    for p in paths:
        try:
            info = sf.info(str(p))
        except Exception as err:  # soundfile raises LibsndfileError / RuntimeError subclasses
            raise ValueError(f"cannot read audio file {p}: {err}") from None
        if channels == 2 and info.channels != 2:
            raise ValueError(f"{p} has {info.channels} channel(s) but channels=2 (stereo) was asked for; "
                             "use channels=1 to mix every file down to mono")
        out.append(AudioFile(str(p), int(info.samplerate), int(info.frames), int(info.channels)))
    return out


# A stereo file whose mono mix-down is this much quieter than its channels (-10 dB, a channel
# correlation of -0.8 at equal levels; uncorrelated channels lose 3 dB) is said to partly cancel.
# (Files of more channels, microphone arrays, lose 10 dB by arithmetic alone: not said.)
MIX_LOSS = 10 ** (-10 / 20)


def load_clip(f: AudioFile, sample_rate: int, clip_samples: int, offset_s: float, channels: int) -> np.ndarray:
    """``[channels, clip_samples]`` float32: mixed down, resampled, cropped from the offset, padded at the end."""
    sf = soundfile()
    first = round(offset_s * sample_rate)  # the clip's first sample, at the model's rate
    start = first * f.rate / sample_rate  # ... in the file's samples (between two of them, maybe)
    need = math.ceil(clip_samples * f.rate / sample_rate)
    # Read a margin around the clip so the resampling filter sees real signal at both ends, from a
    # file sample that falls on a model sample (a multiple of `step`), so the clip starts exactly at
    # `first` (rounding its position after resampling moved it up to half a sample)
    margin = 0 if f.rate == sample_rate else 32 * math.ceil(max(f.rate / sample_rate, 1.0))
    step = f.rate // math.gcd(f.rate, sample_rate)
    lo = max(0, math.floor((start - margin) / step) * step)
    hi = min(f.frames, math.ceil(start) + need + margin)
    data = np.zeros((0, f.channels), dtype=np.float32)
    if hi > lo:
        data = sf.read(f.path, start=lo, stop=hi, dtype="float32", always_2d=True)[0]
        if not np.isfinite(data).all():  # float WAV/FLAC can hold them; they would poison the statistics
            raise ValueError(f"{f.path} holds NaN or infinite samples; audio must be finite (fix or drop the file)")
    data = data.T  # [file channels, frames]
    if channels == 1:
        before = float(np.abs(data).max(initial=0.0))
        level = _rms(data) if f.channels == 2 else 0.0  # of the channels (a stereo file's, below)
        data = data.mean(axis=0, keepdims=True)  # mono mix-down by averaging
        after = float(np.abs(data).max(initial=0.0))
        if before > 0 and after < 1e-3 * before:  # would train as silence under its labels
            raise ValueError(f"{f.path}: its {f.channels} channels cancel when mixed down to mono (opposite phase: "
                             f"peak {before:.3g} before, {after:.3g} after); fix the file, drop it, or keep both "
                             "channels with data.kwargs.channels=2")
        mixed = _rms(data)
        if f.channels == 2 and mixed < MIX_LOSS * level:  # partly opposite phase: quieter than it sounds
            warnings.warn(f"{f.path}: its 2 channels partly cancel when mixed down to mono: the mix is "
                          f"{20 * np.log10(max(mixed, 1e-300) / level):.0f} dB under the channels' level (an inverted "
                          "channel, microphones far apart, or a wide stereo image); if that matters, keep both "
                          "channels with data.kwargs.channels=2", stacklevel=2)
    skip = first - lo * sample_rate // f.rate  # exact: lo * sample_rate / f.rate is a whole number
    if f.rate != sample_rate and data.shape[1]:
        data = resample(data, f.rate, sample_rate)
    clip = data[:, skip : skip + clip_samples]
    if clip.shape[1] < clip_samples:  # short file: zero-pad at the end only
        clip = np.pad(clip, ((0, 0), (0, clip_samples - clip.shape[1])))
    return np.ascontiguousarray(clip, dtype=np.float32)


def _rms(data: np.ndarray) -> float:
    """Root-mean-square level of an array of samples (0 for none)."""
    return float(np.sqrt(np.mean(np.square(data, dtype=np.float64)))) if data.size else 0.0


def _number(text: str, column: str, where: str) -> float:
    try:
        value = parse_number(text)
    except ValueError:
        raise ValueError(f"non-numeric value {text!r} in column {column!r} for {where}; a condition is a number "
                         f"(leave label columns out with data.kwargs.cond=[...], the columns that are conditions)"
                         ) from None
    if not math.isfinite(value):
        raise ValueError(f"non-finite value {text!r} in column {column!r} for {where}")
    return value


def read_folder(folder: Path, metadata: str = "metadata.csv", units: Mapping[str, str] | None = None,
                features: Mapping[str, str] | None = None, cond: Sequence[str] | None = None
                ) -> tuple[list[Path], dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Files, per-file condition values and condition descriptions from ``folder/metadata``.

    ``cond`` names the columns that are conditions (None: every column but ``filename``); the
    others (a ``split`` or ``instrument`` label, a duration) are not read. Units come from headers
    like ``pitch[Hz]`` or from ``units`` for plain headers (both for one column must agree; a
    column with neither is a pure number, and said); features default to "log" for ``pitch`` and
    "linear" otherwise.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    table = folder / metadata
    if not table.is_file():
        empty = not any(folder.iterdir())
        raise FileNotFoundError(
            f"{'audio folder ' + str(folder) + ' is empty' if empty else 'no metadata CSV ' + str(table)}; "
            "put audio files there with a CSV whose header is 'filename,<param>[<unit>],...' "
            "(e.g. filename,pitch[Hz])"
        )
    numbered = read_condition_table(table)
    lines, rows = [n for n, _ in numbered], [r for _, r in numbered]
    header = [c.strip() for c in rows[0]] if rows else []
    if "filename" not in [c.lower() for c in header]:
        other = next((sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]), None)
        hint = (f"; its header is one field holding {other!r}: the file is read as comma-separated, so "
                "write it with commas" if other else "")
        raise ValueError(f"{table} needs a header row with a 'filename' column, e.g. filename,pitch[Hz]{hint}")
    try:
        parsed = [split_header(cell) for cell in rows[0]]
    except ValueError as error:
        raise ValueError(f"{table}: {error}") from None
    names = ["filename" if name.lower() == "filename" else name for name, _ in parsed]  # Filename, FILENAME
    head_units = {name: units for name, units in parsed if units is not None}
    columns = [n for n in names if n != "filename"]
    if len(set(names)) != len(names) or not all(columns):
        raise ValueError(f"{table}: header columns must be distinct and named, got {rows[0]}")
    if cond is None:
        params = columns
    else:
        params = name_list(cond, "cond", "[pitch, velocity]")
        unknown = [n for n in params if n not in columns]
        if unknown:
            raise ValueError(f"cond= names column(s) {unknown} that {table} does not have; its columns: {columns}"
                             f"{close_match(unknown[0], columns)}")
        left = [n for n in columns if n not in params]
        if left:
            log.info("%s: column(s) %s are not conditions (cond=%s) and are not read", table, left, params)
    units, features = dict(units or {}), dict(features or {})
    for kw, given in (("units", units), ("features", features)):
        unknown = sorted(set(given) - set(params))
        if unknown:
            raise ValueError(f"{kw}= names column(s) {unknown} that {table} does not have; its columns: {params}")
    meta = {}
    for name in params:
        if name in units and name in head_units and str(units[name]) != head_units[name]:
            raise ValueError(f"column {name!r}: header says [{head_units[name]}] but units= says {units[name]!r}")
        feature = features.get(name, "log" if name == "pitch" else "linear")
        if feature not in ("log", "linear"):
            raise ValueError(f"column {name!r}: audio folder features are 'log' or 'linear', got {feature!r}")
        if name not in units and name not in head_units:  # kept as a pure number ("") as it always was
            log.warning("%s: column %r has no units, so it is taken as a pure number; if it has units, write them "
                        "in the header (%s[Hz], say) or pass 'data.kwargs.units={%s: \"Hz\"}'", table, name, name, name)
        meta[name] = {"units": str(units.get(name, head_units.get(name, ""))), "feature": feature,
                      "description": f"{name} (column of {metadata})"}
    files, values = [], {n: [] for n in params}
    col = {n: names.index(n) for n in names}
    for line, row in zip(lines[1:], rows[1:]):
        if len(row) != len(names):
            raise ValueError(f"{table} line {line} has {len(row)} fields, the header has {len(names)}")
        name = row[col["filename"]].strip()
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{table} line {line} names {name!r}, which is not in {folder}")
        files.append(path)
        for p in params:
            values[p].append(_number(row[col[p]].strip(), p, f"{name!r} ({table.name} line {line})"))
    if not files:
        raise ValueError(f"{table} lists no files; add one row per audio file")
    # one recording under two names (sub/../a.wav, a link to a.wav) would train under two labels
    recordings = Counter(f.resolve() for f in files)
    dupes = sorted(str(f.relative_to(folder)) for f in files if recordings[f.resolve()] > 1)
    if dupes:
        raise ValueError(f"{table} lists one recording more than once (under the names {dupes[:5]})")
    listed = set(recordings)
    unlisted = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                      if p.suffix.lower() in AUDIO_SUFFIXES and p.resolve() not in listed)
    if unlisted:  # the CSV is the index; say what it leaves out
        log.info("%d audio file(s) in %s are not listed in %s and are not used, e.g. %s", len(unlisted), folder,
                 metadata, ", ".join(unlisted[:3]))
    return files, {k: np.asarray(v) for k, v in values.items()}, meta


def read_nsynth(folder: Path, instrument_family: str | list | None = None, midi_range: Any = None
                ) -> tuple[list[Path], dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Notes of an NSynth split folder: ``examples.json`` + ``audio/<note_str>.wav``, pitch in Hz."""
    folder = Path(folder)
    table = folder / "examples.json"
    if not table.is_file():
        raise FileNotFoundError(f"no {table}; an NSynth folder holds examples.json and audio/<note_str>.wav")
    try:
        examples = json.loads(table.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot parse {table}: {err}") from None
    if not isinstance(examples, dict) or not examples:
        raise ValueError(f"{table} must be a non-empty JSON object note_str -> {{pitch, velocity, ...}}")
    for note, ex in examples.items():
        missing = [k for k in ("pitch", "velocity", "instrument_family_str") if not isinstance(ex, dict) or k not in ex]
        if missing:
            raise ValueError(f"{table}: note {note!r} lacks {missing}")
    if instrument_family is not None:
        wanted = [instrument_family] if isinstance(instrument_family, str) else list(instrument_family)
        present = sorted({ex["instrument_family_str"] for ex in examples.values()})
        unknown = sorted(set(wanted) - set(present))
        if unknown:
            raise ValueError(f"instrument_family {unknown} not in {table}; present: {', '.join(present)}")
        examples = {k: ex for k, ex in examples.items() if ex["instrument_family_str"] in wanted}
    if midi_range is not None:
        if (isinstance(midi_range, (str, bytes)) or not isinstance(midi_range, Sequence) or len(midi_range) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in midi_range)
                or not midi_range[0] <= midi_range[1]):
            raise ValueError(f"midi_range must be [lowest, highest] MIDI notes, e.g. [48, 84]; got {midi_range!r}")
        examples = {k: ex for k, ex in examples.items() if midi_range[0] <= ex["pitch"] <= midi_range[1]}
    if not examples:
        raise ValueError(f"no NSynth notes in {table} pass the filters instrument_family={instrument_family!r}, "
                         f"midi_range={midi_range!r}")
    notes = sorted(examples)
    files = [folder / "audio" / f"{n}.wav" for n in notes]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} note(s) of {table} have no audio in {folder / 'audio'}, "
                                f"e.g. {absent[:3]}")
    midi = [_number(str(examples[n]["pitch"]), "pitch", f"note {n!r}") for n in notes]
    velocity = [_number(str(examples[n]["velocity"]), "velocity", f"note {n!r}") for n in notes]
    meta = {"pitch": {"units": "Hz", "feature": "log", "description": "fundamental frequency (NSynth MIDI pitch)"},
            "velocity": {"units": "MIDI velocity", "feature": "linear", "description": "MIDI note velocity"}}
    return files, {"pitch": midi_to_hz(midi), "velocity": np.asarray(velocity)}, meta


def spectrogram_db(clip: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Power spectrogram in dB ``[freq, frame]`` with a ~32 ms Hann window, for plots."""
    n_fft = int(min(len(clip), max(64, 2 ** round(math.log2(0.032 * rate)))))
    x = torch.from_numpy(np.asarray(clip, dtype=np.float64))
    spec = torch.stft(x, n_fft, hop_length=max(1, n_fft // 4), window=torch.hann_window(n_fft, dtype=torch.float64),
                      center=True, return_complex=True).abs() ** 2
    return (10 * torch.log10(spec + 1e-12)).numpy(), n_fft
