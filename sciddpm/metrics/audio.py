"""Audio metrics: fundamental frequency (pitch) of a clip, errors in cents, and a multi-resolution
STFT distance between waveforms.

Pitch is estimated in two stages, one estimate per clip:

1. YIN (de Cheveigné & Kawahara 2002, "YIN, a fundamental frequency estimator for speech and
   music", JASA 111(4)): the difference function d(tau) (their eq. 6), its cumulative-mean
   normalisation d'(tau) (eq. 8), the first dip below an absolute threshold (step 4) followed down
   to its local minimum, and parabolic interpolation (step 5). Working on periodicity rather than on
   the strongest spectral peak makes it insensitive to a weak or missing fundamental, and taking
   the *first* dip below threshold avoids the sub-octave (2x period) error. d'(tau) at the chosen
   lag is the aperiodicity; a clip is voiced when it is below ``voicing``. The clip is first
   upsampled (polyphase, to >= 96 kHz) so that lags are fine enough for high harmonics: at 8 kHz
   they decorrelate between integer lags and a multiple of the period can win, and at 48 kHz bright
   notes above 2 kHz still read an octave low (12 of 60 saws, 2050-6000 Hz, against none at 96 kHz).
2. Refinement of a voiced estimate by the harmonic frequencies: each harmonic's peak in a Hann-
   windowed, 8x zero-padded spectrum is located by quadratic interpolation of the log magnitude
   (J. O. Smith, "Spectral Audio Signal Processing", sec. "Quadratic Interpolation of Spectral
   Peaks"), and f0 is the weighted least-squares fit of f_k = k f0 (weights: harmonic power).
   Averaging over all harmonics roughly halves the error on noisy notes (measured on 200 random
   harmonic tones of 0.256 s at 8 kHz, 10 dB SNR: worst case 3.5 -> 1.5 cents). A note with
   vibrato keeps YIN's estimate, which averages the period over the clip: its harmonics split
   into FM sidebands, and the strongest line is not the mean pitch (``SIDEBAND_RATIO``: 5.5 Hz
   vibrato of +-25/50 cents read up to 49 cents off, now 14 where the sidebands are resolved
   and median 1).

The MR-STFT distance follows Yamamoto et al. 2020 (Parallel WaveGAN, eqs. 4-6): spectral
convergence plus mean absolute log-magnitude difference, averaged over FFT sizes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import resample_poly


def cents(f, f_ref):
    """Interval from ``f_ref`` to ``f`` in cents, ``1200 * log2(f / f_ref)`` (arrays broadcast)."""
    out = 1200.0 * np.log2(np.asarray(f, dtype=np.float64) / np.asarray(f_ref, dtype=np.float64))
    return float(out) if out.ndim == 0 else out


def _as_batch(wave, what: str = "wave") -> tuple[np.ndarray, tuple[int, ...]]:
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().double().numpy()
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{what} must be an array [..., T] with T > 0, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or Inf")
    return x.reshape(-1, x.shape[-1]), x.shape[:-1]


def _cmndf(x: np.ndarray, tau_max: int) -> np.ndarray:
    """YIN's cumulative-mean-normalised difference d'(tau), tau = 0..tau_max, per row of x."""
    n_rows, t = x.shape
    w = t - tau_max  # integration window (YIN eq. 6, W samples compared at every lag)
    n = 1 << int(np.ceil(np.log2(t + w)))
    # r(tau) = sum_{j<W} x_j x_{j+tau} as one FFT cross-correlation (no wrap-around since n >= T + W)
    r = np.fft.irfft(np.conj(np.fft.rfft(x[:, :w], n)) * np.fft.rfft(x, n), n)[:, : tau_max + 1]
    c = np.concatenate([np.zeros((n_rows, 1)), np.cumsum(x * x, axis=1)], axis=1)
    lags = np.arange(tau_max + 1)
    energy_lag = c[:, lags + w] - c[:, lags]
    d = np.maximum(c[:, [w]] + energy_lag - 2.0 * r, 0.0)  # d(tau) = sum (x_j - x_{j+tau})^2
    running = np.cumsum(d[:, 1:], axis=1)
    out = np.ones_like(d)
    ok = running > 1e-12 * np.maximum(c[:, [w]], 1e-300)
    out[:, 1:] = np.where(ok, d[:, 1:] * lags[1:] / np.where(ok, running, 1.0), 1.0)  # YIN eq. 8
    return out


# Harmonic peaks are refined on clips of at least this many periods: on fewer, the Hann window's
# peaks are too broad and the fit drifted by up to 45 cents (2 periods), 4 cents at 3, 1 at 4.
REFINE_PERIODS = 3
# A harmonic is refined from its peak only where the peak stands alone: another local maximum
# within -6 dB of it, further than the window's main lobe (2 bins), is a sideband of vibrato (FM
# splits each harmonic into lines fm apart), and the strongest line is not the mean pitch - the
# fit read 17 cents flat (median, up to 49) under 5.5 Hz vibrato of +-25 and +-50 cents, where
# YIN's period, which averages over the clip, is within 4. Such a note keeps YIN's estimate.
SIDEBAND_RATIO = 0.5


def _parabola(a: float, b: float, c: float) -> float:
    """Offset in [-1/2, 1/2] of the vertex of the parabola through (-1, a), (0, b), (1, c): the
    interpolated position of a dip (YIN's minimum) or of a peak (a harmonic); 0 when collinear."""
    den = a - 2.0 * b + c
    return 0.0 if den == 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def _harmonic_refine(mag: np.ndarray, df: float, f0: float, f_limit: float, lobe: int) -> float | None:
    """Weighted least-squares f0 from interpolated harmonic peaks of one magnitude spectrum, or
    None where a harmonic that counts has sidebands (``lobe``: the main lobe's half-width in bins)."""
    log_mag = np.log(mag + 1e-12 * mag.max() + 1e-300)
    for max_k in (4, 64):  # low harmonics first, then all with the improved f0
        ks, freqs, power, split = [], [], [], []
        for k in range(1, min(max_k, int(f_limit / f0)) + 1):
            lo = max(1, int(np.floor((k - 0.25) * f0 / df)))
            hi = min(len(mag) - 2, int(np.ceil((k + 0.25) * f0 / df)))
            if hi - lo < 2:
                continue
            region = mag[lo : hi + 1]
            i = lo + int(np.argmax(region))
            if i in (lo, hi):  # no interior peak: this harmonic is absent
                continue
            peaks = lo + 1 + np.flatnonzero((region[1:-1] >= region[:-2]) & (region[1:-1] > region[2:]))
            split.append(bool(np.any((np.abs(peaks - i) > lobe) & (mag[peaks] >= SIDEBAND_RATIO * mag[i]))))
            shift = _parabola(log_mag[i - 1], log_mag[i], log_mag[i + 1])
            ks.append(k)
            freqs.append((i + shift) * df)
            power.append(mag[i] ** 2)
        if not ks:
            return f0
        ks, freqs, power, split = map(np.asarray, (ks, freqs, power, split))
        keep = power >= 1e-3 * power.max()  # harmonics within 30 dB of the strongest
        if split[power >= 0.1 * power.max()].any():  # (weaker harmonics may be near the noise's own peaks)
            return None  # lines beside a strong harmonic: a modulated note, whose strongest line is not its pitch
        w = power[keep]
        f0 = float(np.sum(w * ks[keep] * freqs[keep]) / np.sum(w * ks[keep] ** 2))
    return f0


def _outside_range(dp: np.ndarray, tau: int, tau_min: int, tau_max: int) -> bool:
    """Whether the period found at lag ``tau`` stands for one outside the lags searched: the dip
    still falling past either end (``dp`` runs one lag beyond ``tau_max`` to see it), or the
    signal as periodic at a divisor of ``tau`` below ``tau_min`` (a 2500 Hz note seen at 1250 Hz
    with fmax=2000). "As periodic": d' there within 1.2 d'(tau) + 0.04 - true divisors came
    within +0.03 of d'(tau) (0-40 dB SNR, 8-44.1 kHz), a fundamental 14 dB under its octave
    (periodic at tau only) 0.06-0.1 above it; at 20 dB under, the two cannot be told apart, and
    such a note above fmax / 2 is unvoiced rather than read an octave off."""
    if (tau == tau_max and dp[tau + 1] < dp[tau]) or (tau == tau_min and dp[tau - 1] < dp[tau]):
        return True
    divisors = dp[2:min(tau_min, int(tau / 1.5))]
    return bool(divisors.size) and bool(divisors.min() <= 1.2 * dp[tau] + 0.04)


def estimate_pitch(wave, sample_rate: float, fmin: float = 50.0, fmax: float = 2000.0, *,
                   threshold: float = 0.1, voicing: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Fundamental frequency of each clip in ``wave [..., T]``: ``(f0_hz [...], voiced [...])``.

    One estimate per clip (a note, not a pitch track). ``threshold`` is YIN's absolute threshold
    for the first dip of d'(tau); a clip is ``voiced`` when d' at the chosen period is below
    ``voicing`` (white noise gives about 1). ``f0_hz`` is NaN where the clip is unvoiced, so an
    average over clips cannot silently include noise. A note whose pitch lies outside
    ``[fmin, fmax]`` is unvoiced too, never reported as a multiple or a divisor of its period
    (2500 Hz read 1250 Hz with fmax=2000; 45 Hz read 50 Hz with fmin=50): widen the range for
    such notes. Needs T >= 2 * sample_rate / fmin. For a 1-D input the results are 0-d arrays.
    """
    x, lead = _as_batch(wave)
    if not 0 < fmin < fmax:
        raise ValueError(f"need 0 < fmin < fmax, got fmin={fmin}, fmax={fmax}")
    t = x.shape[1]
    if t < 2 * np.ceil(sample_rate / fmin):
        raise ValueError(
            f"clips of {t} samples are too short to find periods down to fmin={fmin:g} Hz at "
            f"{sample_rate:g} Hz (need {2 * int(np.ceil(sample_rate / fmin))}); raise fmin or pass longer clips"
        )
    x = x - x.mean(axis=1, keepdims=True)
    # Evaluate d'(tau) on a finer lag grid: at 8 kHz a high harmonic decorrelates between integer
    # lags, hiding the dip at a non-integer period and letting 2x or 3x the period win.
    up = int(min(8, max(1, np.ceil(96000 / sample_rate))))
    rate = up * sample_rate
    tau_min = max(2, int(np.floor(rate / fmax)))
    tau_max = int(np.ceil(rate / fmin))
    f0 = np.full(len(x), np.nan)
    voiced = np.zeros(len(x), dtype=bool)
    nfft = 1 << int(np.ceil(np.log2(8 * t)))
    window = np.hanning(t)
    for start in range(0, len(x), 64):  # chunks bound the memory of the upsampled FFTs
        chunk = x[start : start + 64]
        fine_x = resample_poly(chunk, up, 1, axis=1) if up > 1 else chunk
        for row, dp in enumerate(_cmndf(fine_x, tau_max + 1), start=start):
            search = dp[tau_min : tau_max + 1]
            # YIN step 4: the first dip under the threshold, at its lowest point: the minimum of
            # the run of lags that stay under it (following the slope down stopped at the first
            # noise ripple). The threshold is relative to the best dip, so a slightly aperiodic
            # note (decay, noise) still takes its period and not a multiple of it.
            under = search < threshold + search.min()
            first = int(np.flatnonzero(under)[0])
            last = first + int(np.argmin(under[first:])) - 1 if not under[first:].all() else len(search) - 1
            tau = tau_min + first + int(np.argmin(search[first : last + 1]))
            if not dp[tau] < voicing:
                continue
            if _outside_range(dp, tau, tau_min, tau_max):
                continue  # the pitch lies outside [fmin, fmax]: no multiple or divisor stands in for it
            shift = _parabola(dp[tau - 1], dp[tau], dp[tau + 1]) if tau < tau_max else 0.0
            coarse = rate / (tau + shift)
            f0[row] = coarse
            voiced[row] = True
            if t * coarse / sample_rate >= REFINE_PERIODS:
                mag = np.abs(np.fft.rfft(x[row] * window, nfft))
                fine = _harmonic_refine(mag, sample_rate / nfft, coarse, 0.95 * sample_rate / 2, lobe=2 * nfft // t)
                if fine is not None and abs(fine / coarse - 1) < 0.03:  # the refinement must agree with YIN
                    f0[row] = fine
    return f0.reshape(lead), voiced.reshape(lead)


def mrstft_distance(a, b, sample_rate: float, fft_sizes=(256, 512, 1024), *, top_db: float = 80.0):
    """Multi-resolution STFT distance between ``a`` and ``b`` (``[..., T]``, broadcast), per clip.

    For each FFT size n (Hann window, hop n/4): spectral convergence ``||S_a| - |S_b||_F /
    ||S_b||_F`` plus the mean of ``|log|S_a| - log|S_b||``; the two terms are summed and averaged over
    sizes. Magnitudes are floored at ``top_db`` below the loudest bin of the pair (as in
    ``librosa.power_to_db``'s ``top_db``) so that leakage far below audibility does not dominate
    the log term. Zero for identical inputs; ``sample_rate`` is only checked (sizes are in samples).
    Returns a float for 1-D inputs, else an array over the leading axes.
    """
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    xa, xb = (np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
              for v in (a, b))
    xa, xb = np.broadcast_arrays(xa, xb)
    lead = xa.shape[:-1]
    xa, _ = _as_batch(xa, "a")
    xb, _ = _as_batch(xb, "b")
    t = xa.shape[1]
    if not fft_sizes or max(fft_sizes) > t:
        raise ValueError(f"fft_sizes {tuple(fft_sizes)} must be non-empty and at most the clip length {t}")
    total = np.zeros(len(xa))
    for n in fft_sizes:
        window = torch.hann_window(n, dtype=torch.float64)
        mags = [torch.stft(torch.from_numpy(v), n, hop_length=n // 4, window=window, center=True,
                           return_complex=True).abs().numpy() for v in (xa, xb)]
        sa, sb = mags
        peak = np.maximum(sa.max(axis=(1, 2)), sb.max(axis=(1, 2)))[:, None, None]
        floor = np.maximum(peak * 10 ** (-top_db / 20), 1e-12)
        num = np.sqrt(np.sum((sa - sb) ** 2, axis=(1, 2)))
        den = np.sqrt(np.sum(sb**2, axis=(1, 2)))
        sc = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, 1.0, 0.0))
        log_l1 = np.mean(np.abs(np.log(np.maximum(sa, floor)) - np.log(np.maximum(sb, floor))), axis=(1, 2))
        total += sc + log_l1
    out = (total / len(fft_sizes)).reshape(lead)
    return float(out) if out.ndim == 0 else out
