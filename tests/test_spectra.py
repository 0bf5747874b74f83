"""Power spectra against fields whose spectrum is known."""

import numpy as np
import pytest

from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum, spectral_slope


def _power_law_field(shape, alpha, rng):
    grids = np.meshgrid(*[np.fft.fftfreq(n, d=1.0 / n) for n in shape], indexing="ij")
    k = np.sqrt(sum(g**2 for g in grids))
    amplitude = np.where(k > 0, k, np.inf) ** (-alpha / 2)
    noise = np.fft.fftn(rng.standard_normal(shape))
    return np.real(np.fft.ifftn(noise * amplitude))


@pytest.mark.parametrize("shape", [(4096,), (128, 128), (32, 32, 32)])
def test_slope_of_power_law_fields(shape):
    rng = np.random.default_rng(0)
    alpha = 3.0
    fields = np.stack([_power_law_field(shape, alpha, rng) for _ in range(4)])
    k, p = power_spectrum(fields, dims=len(shape))
    assert abs(spectral_slope(k, p, 2, k.max() / 2) + alpha) < 0.1


def test_white_noise_is_flat_and_obeys_parseval():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 256, 256)) * 2.0
    k, p = power_spectrum(x, dims=2)
    # white noise of variance 4 spreads 4 evenly over 256*256 modes
    assert np.allclose(p, 4.0 / 256**2, rtol=0.1)
    assert abs(spectral_slope(k, p)) < 0.05
    assert log_spectral_distance(p, p) == 0.0
    assert log_spectral_distance(p, 10 * p) == pytest.approx(1.0)


def test_a_wavelength_lands_in_one_shell_whichever_way_it_points_on_a_non_square_grid():
    # 32 x 64 cells of one spacing: a wave of 8 cells along y and one along x are both at
    # 32 / 8 = 4 cycles per short side (in cycles per domain along each axis they were 4 and 8)
    y, x = np.meshgrid(np.arange(32), np.arange(64), indexing="ij")
    # (a diagonal one, 8 cells a step along both, has a wavelength of 8 / sqrt(2) cells: 5.66 -> shell 6)
    for wave, shell in ((np.cos(2 * np.pi * y / 8), 4), (np.cos(2 * np.pi * x / 8), 4),
                        (np.cos(2 * np.pi * (x + y) / 8), 6)):
        k, p = power_spectrum(wave, dims=2)
        assert int(np.argmax(p)) + 1 == shell
    # one cycle along the long side (0.5 cycles per short side) is the largest scale, in shell 1,
    # with all its power (it was binned with the mean and dropped); 1.5 and 2.5 go to shells 2
    # and 3 (np.rint sent both to shell 2)
    for cycles, shell in ((1, 1), (3, 2), (5, 3)):
        k, p = power_spectrum(np.cos(2 * np.pi * cycles * x / 64), dims=2)
        assert int(np.argmax(p)) + 1 == shell and p.sum() > 0
    k, p = power_spectrum(np.cos(2 * np.pi * x / 64), dims=2)
    counts = np.bincount(np.floor(np.hypot(*np.meshgrid(np.fft.fftfreq(32) * 32, np.fft.fftfreq(64) * 32,
                                                        indexing="ij")) + 0.5).astype(int).ravel())
    assert p[0] * max(counts[1], 1) == pytest.approx(0.5)  # its whole mean square, in shell 1
    # and a power-law field isotropic in space keeps its slope
    rng = np.random.default_rng(3)
    grids = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(64), indexing="ij")
    radius = np.sqrt(grids[0] ** 2 + grids[1] ** 2)
    amplitude = np.where(radius > 0, radius, np.inf) ** -1.5
    fields = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal((64, 32, 64)), axes=(1, 2)) * amplitude, axes=(1, 2)))
    k, p = power_spectrum(fields, dims=2)
    assert abs(spectral_slope(k, p, 2, 12) + 3.0) < 0.1


def test_log_spectral_distance_counts_a_missing_shell_as_far_off():
    reference = np.array([1.0, 0.5, 0.1, 0.01])
    assert log_spectral_distance(reference, reference * [1, 1, 1, 0]) > 2  # was 0: the empty shell was skipped
    assert log_spectral_distance(np.zeros(4), np.zeros(4)) == 0.0  # two constant fields: no NaN
    # a tone's spectrum (a few shells over 100 dB of nothing) 6 dB down is 0.6 B off, whatever
    # its empty shells: they were counted as matches and it read 0.075 B
    tone = np.r_[1.0, 0.3, 0.1, np.full(60, 1e-14)]
    assert log_spectral_distance(tone, tone * 10 ** -0.6) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="same"):
        log_spectral_distance(reference, reference[:3])


def test_bad_input():
    with pytest.raises(ValueError, match="finite"):
        power_spectrum(np.array([1.0, np.nan, 2.0]), dims=1)
    with pytest.raises(ValueError, match="dims"):
        power_spectrum(np.zeros((4, 4)), dims=3)
    with pytest.raises(TypeError, match="dims"):  # no default: a member axis must not join the FFT silently
        power_spectrum(np.zeros((2, 4, 4)))
