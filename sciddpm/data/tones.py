"""The embedded default audio data: harmonic tones with a known pitch, built on first use.

``make_tones`` synthesises the clips deterministically (clip ``i`` depends only on the seed and
``i``, so a larger set starts with the clips of a smaller one); ``write_tones`` stores them in the
folder + CSV layout the audio adapter reads (``tone_00000.wav`` ..., ``metadata.csv`` with columns
``filename,pitch[Hz]``), so one reader serves both; ``ensure_tones`` keeps one such folder per
parameter set under the cache directory (``$SCIDDPM_CACHE`` or ``~/.cache/sciddpm``).

Each clip: pitch f0 log-uniform over [fmin, fmax]; harmonics k = 1..K with every k*f0 below
0.9 x Nyquist (so nothing aliases); amplitudes k**-tilt times a random factor (random spectral
tilt and timbre); random phases; a raised-cosine attack of 2-20 ms then an exponential decay; a
random loudness; white noise at -50 dB relative to the loudness. The default size (2000 clips of
2048 samples at 8 kHz, 0.256 s) is small enough for a 1-D U-Net to learn on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sciddpm.data.cache import cache_entry, ensure_built, recipe_params
from sciddpm.files import atomic_path

TONES_VERSION = 1  # bump when the recipe changes: it is part of the cache key
DEFAULTS = {"n_clips": 2000, "sample_rate": 8000, "clip_samples": 2048, "fmin": 110.0, "fmax": 880.0, "seed": 0}
METADATA = "metadata.csv"
MARKER = "tones.json"  # written last; a folder without it is never used
MAX_HARMONICS = 24


def tone_params(**overrides) -> dict:
    """The full parameter set (defaults + overrides), validated."""
    p = recipe_params("tones", DEFAULTS, overrides)
    if p["n_clips"] < 2 or p["clip_samples"] < 64 or p["sample_rate"] < 1000:
        raise ValueError(f"tones need n_clips >= 2, clip_samples >= 64 and sample_rate >= 1000, got {p}")
    if not 0 < p["fmin"] <= p["fmax"] < 0.45 * p["sample_rate"]:
        raise ValueError(
            f"tones need 0 < fmin <= fmax < 0.45 x sample_rate ({0.45 * p['sample_rate']:g} Hz) so every "
            f"tone has a harmonic below Nyquist; got fmin={p['fmin']:g}, fmax={p['fmax']:g}"
        )
    return p


def make_tones(n_clips: int = 2000, sample_rate: int = 8000, clip_samples: int = 2048,
               fmin: float = 110.0, fmax: float = 880.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms ``[n_clips, clip_samples]`` float32 in [-1, 1] and their pitches in Hz (float64)."""
    p = tone_params(n_clips=n_clips, sample_rate=sample_rate, clip_samples=clip_samples,
                    fmin=fmin, fmax=fmax, seed=seed)
    sr, n = p["sample_rate"], p["clip_samples"]
    t = np.arange(n) / sr
    waves = np.empty((p["n_clips"], n), dtype=np.float32)
    pitch = np.empty(p["n_clips"])
    for i in range(p["n_clips"]):
        rng = np.random.default_rng([p["seed"], i])  # clip i is independent of n_clips
        f0 = float(np.exp(rng.uniform(np.log(p["fmin"]), np.log(p["fmax"]))))
        n_harm = int(min(MAX_HARMONICS, max(1, np.floor(0.9 * (sr / 2) / f0))))
        k = np.arange(1, n_harm + 1)
        amp = k ** -rng.uniform(0.6, 1.8) * rng.uniform(0.2, 1.0, n_harm)
        phase = rng.uniform(0, 2 * np.pi, n_harm)
        s = (amp[:, None] * np.sin(2 * np.pi * f0 * k[:, None] * t + phase[:, None])).sum(0)
        attack, decay = rng.uniform(0.002, 0.02), rng.uniform(0.08, 0.6)
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip(t / attack, 0, 1))
        env = ramp * np.exp(-np.maximum(t - attack, 0) / decay)
        x = s * env
        loud = rng.uniform(0.3, 0.9)
        x = loud * x / np.abs(x).max() + rng.normal(0, loud * 10 ** (-50 / 20), n)
        waves[i], pitch[i] = x, f0
    return waves, pitch


def write_tones(out: str | Path, **params) -> Path:
    """Build the tones and write them as a folder + CSV at ``out`` (created atomically)."""
    p = tone_params(**params)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out directory")
    with atomic_path(out) as tmp:
        _write_folder(tmp, p)
    return out


def _write_folder(folder: Path, p: dict) -> None:
    """Create ``folder`` and write the tones of parameters ``p`` into it, the marker last."""
    import soundfile as sf  # the adapter checks this import and names the extra

    folder.mkdir()
    waves, pitch = make_tones(**p)
    lines = ["filename,pitch[Hz]"]
    for i, (x, f0) in enumerate(zip(waves, pitch)):
        name = f"tone_{i:05d}.wav"
        sf.write(folder / name, x, p["sample_rate"], subtype="FLOAT")
        lines.append(f"{name},{float(f0)!r}")  # repr: round-trips exactly
    (folder / METADATA).write_text("\n".join(lines) + "\n")
    (folder / MARKER).write_text(json.dumps({"version": TONES_VERSION, **p}, indent=1))


def describe(**params) -> str:
    p = tone_params(**params)
    return (f"{p['n_clips']} harmonic tones of {p['clip_samples']} samples at {p['sample_rate']} Hz, "
            f"pitch log-uniform {p['fmin']:g}-{p['fmax']:g} Hz, seed {p['seed']}")


def cache_dir(**params) -> Path:
    """Where the tones for these parameters live: ``<cache>/tones-<hash of params>``."""
    return cache_entry("tones", {"version": TONES_VERSION, **tone_params(**params)})


def ensure_tones(**params) -> Path:
    """The cached tones folder for ``params`` (``sciddpm.data.cache``), built on first use; a folder
    without its marker file (left by a version that wrote in place) is rebuilt."""
    def build(final: Path) -> None:
        with atomic_path(final) as tmp:  # replaces a folder left without its marker
            _write_folder(tmp, tone_params(**params))

    return ensure_built(cache_dir(**params), build, "the tones dataset", complete=lambda p: (p / MARKER).is_file())
