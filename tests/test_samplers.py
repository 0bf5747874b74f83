"""Samplers against closed-form truth: Gaussian data N(mu, Sigma) and its exact denoiser.

For Gaussian data the ideal denoiser is known in closed form (sciddpm.testing.gaussian_denoiser),
so every sampler driven by it must return N(mu, Sigma) up to Monte-Carlo error and its own
discretisation error. The checks whiten the samples with Sigma^-1/2 (truth: mean 0, covariance I)
and allow, per entry, 5 standard errors of the sample mean / covariance (1/sqrt(N) for the mean
and off-diagonal entries, sqrt(2/N) on the diagonal) plus a stated discretisation allowance per
sampler; separate tests show that this check rejects deliberately broken samplers.
"""

import math

import pytest
import torch

from sciddpm.diffusion import SAMPLERS, karras_sigmas, sample, sigmas
from sciddpm.registry import UnknownNameError
from sciddpm.testing import gaussian_denoiser



D_DIM = 8
N = 32768  # samples per sampler: 5 SE of a whitened variance = 5 sqrt(2/N) = 0.039


def _gaussian(seed=0, lam_range=(0.2, 2.0)):
    """mu, Sigma with log-spaced eigenvalues in lam_range and a random (dense) eigenbasis."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D_DIM, D_DIM, generator=g, dtype=torch.float64))
    lam = torch.logspace(math.log10(lam_range[0]), math.log10(lam_range[1]), D_DIM, dtype=torch.float64)
    mu = torch.randn(D_DIM, generator=g, dtype=torch.float64)
    return 0.5 * mu / mu.norm(), Q @ torch.diag(lam) @ Q.T


MU, SIGMA = _gaussian()


def gaussian_mismatch(x, mu, Sigma, *, allowance=0.0, mean_allowance=0.0, z=5.0):
    """Worst whitened mean / covariance entry error relative to its tolerance (<= 1 passes)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    n = x.shape[0]
    lam, V = torch.linalg.eigh(Sigma)
    white = (x - mu) @ (V @ torch.diag(lam.rsqrt()) @ V.T)
    mean = white.mean(0)
    cov = torch.cov(white.T)
    eye = torch.eye(len(mu), dtype=torch.float64)
    mean_tol = z / math.sqrt(n) + mean_allowance
    cov_tol = z * ((1 + eye) / n).sqrt() + allowance
    return max((mean.abs() / mean_tol).max().item(), ((cov - eye).abs() / cov_tol).max().item())


def assert_gaussian(x, mu, Sigma, **tolerances):
    worst = gaussian_mismatch(x, mu, Sigma, **tolerances)
    assert worst <= 1.0, f"samples differ from N(mu, Sigma) by {worst:.2f} x the tolerance"


# (method, sample() options, allowance on whitened covariance entries). Allowances are the
# discretisation bias each sampler really has on this Gaussian (eigenvalues 0.2..2), measured
# exactly by propagating the linear maps, with margin:
#  * first order (euler, ddim = Euler in sigma) at 100 steps: variance low by ~6-8% (log-std
#    error ~ -h/4 per unit of log-sigma step h, here h ~ 0.1) -> 0.09;
#  * ddpm, 1000 linear steps: the DDPM posterior ignores Var[x0|x_t], ~1.5% low -> 0.02;
#  * 2nd order (heun, dpmpp_2m) at 100 steps: < 0.3% -> 0.01;
#  * heun with churn at 100 steps: ~2% -> 0.03.
CASES = {
    "ddpm": ({"steps": 1000, "schedule": "linear"}, 0.02),
    "ddim": ({"steps": 100}, 0.09),
    "euler": ({"steps": 100}, 0.09),
    "heun": ({"steps": 100}, 0.01),
    "dpmpp_2m": ({"steps": 100}, 0.01),
}


def _noise(seed=1, n=N):
    return torch.randn(n, 2, D_DIM // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("method", SAMPLERS.names())
def test_every_sampler_returns_the_gaussian(method):
    options, allowance = CASES.get(method, ({"steps": 100}, 0.09))  # plugins: first-order budget
    denoiser = gaussian_denoiser(MU, SIGMA)
    x = sample(denoiser, _noise(), method=method, generator=torch.Generator().manual_seed(2), **options)
    assert x.shape == (N, 2, D_DIM // 2) and x.dtype == torch.float64
    # starting at sigma_max * eps instead of x0 + sigma_max * eps biases the mean by <= |mu|/sigma_max
    sigma_max = 157.0 if options.get("schedule") == "linear" else 80.0
    assert_gaussian(x, MU, SIGMA, allowance=allowance, mean_allowance=float(MU.norm()) / sigma_max)


def test_heun_with_churn_returns_the_gaussian():
    x = sample(gaussian_denoiser(MU, SIGMA), _noise(), method="heun", steps=100, S_churn=40.0,
               generator=torch.Generator().manual_seed(3))
    assert_gaussian(x, MU, SIGMA, allowance=0.03, mean_allowance=float(MU.norm()) / 80)


# ----------------------------------------------------------------- the check has teeth
def _ddpm_noise_off(denoiser, x, sigmas_, *, generator=None, callback=None):
    """The ancestral sampler with its fresh noise 10% too large."""
    levels = sigmas_.tolist()
    for s, s_next in zip(levels, levels[1:]):
        x0 = denoiser(x, x.new_full((x.shape[0],), s))
        if s_next == 0:
            return x0
        ratio = (s_next / s) ** 2
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x0 + ratio * (x - x0) + 1.1 * s_next * math.sqrt(1 - ratio) * noise
    return x


def test_the_gaussian_check_rejects_broken_samplers():
    denoiser = gaussian_denoiser(MU, SIGMA)
    n = 8192
    tol = {"allowance": 0.02, "mean_allowance": float(MU.norm()) / 80}
    # the right sampler at this sample size passes ...
    good = sample(denoiser, _noise(4, n), method="heun", steps=100)
    assert gaussian_mismatch(good, MU, SIGMA, **tol) <= 1
    # ... initial noise scaled 10% too high (deterministic samplers carry it to the end)
    assert gaussian_mismatch(sample(denoiser, 1.1 * _noise(4, n), method="heun", steps=100), MU, SIGMA,
                             **tol) > 1
    # ... a denoiser told the wrong noise level (sigma off by 10%)
    def wrong_sigma(x, s):
        return denoiser(x, 1.1 * s)

    assert gaussian_mismatch(sample(wrong_sigma, _noise(4, n), method="heun", steps=100), MU, SIGMA,
                             **tol) > 1
    # ... ancestral noise 10% too large
    table = sigmas("linear", 1000)
    broken = _ddpm_noise_off(denoiser, _noise(4, n) * table[0].item(), table,
                             generator=torch.Generator().manual_seed(5))
    assert gaussian_mismatch(broken, MU, SIGMA, **tol) > 1
    # ... and even the loosest (first-order) allowance at the full sample size catches 10% noise
    loose = {"allowance": CASES["euler"][1], "mean_allowance": float(MU.norm()) / 80}
    assert gaussian_mismatch(sample(denoiser, 1.1 * _noise(), method="euler", steps=100), MU, SIGMA,
                             **loose) > 1


@pytest.mark.parametrize("method", SAMPLERS.names())
def test_last_step_returns_the_final_estimate_exactly(method):
    """Every sampler must end on the denoiser's last x0 estimate, bit for bit (no skipped step:
    inpainting relies on it to return the known values exactly)."""
    seen = []
    x = sample(gaussian_denoiser(MU, SIGMA), _noise(6, 64), method=method, steps=10,
               callback=lambda i, s, x, x0: seen.append((i, s, x0)))
    assert [i for i, _, _ in seen] == list(range(10))
    levels = [s for _, s, _ in seen]
    assert all(b < a for a, b in zip(levels, levels[1:]))
    assert torch.equal(x, seen[-1][2])


def _shrink(lam):
    """Gaussian denoiser with mu = 0 in its eigenbasis: the exact map is known per coordinate."""
    def denoise(x, sigma):
        return x * (lam / (lam + sigma.reshape(-1, 1) ** 2))
    return denoise


@pytest.mark.parametrize("method,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_deterministic_samplers_converge_at_their_order(method, order):
    # The probability-flow ODE maps x(sigma_max) to x(0) = x(sigma_max) sqrt(lam/(lam + sigma_max^2))
    # per eigen-coordinate; doubling the steps must divide the error by 2^order.
    lam = torch.logspace(math.log10(0.2), math.log10(2.0), 8, dtype=torch.float64)
    errors = []
    for steps in (25, 50, 100, 200):
        table = karras_sigmas(steps)
        x = torch.ones(1, 8, dtype=torch.float64) * table[0]
        out = SAMPLERS.get(method)(_shrink(lam), x, table)
        exact = table[0] * (lam / (lam + table[0] ** 2)).sqrt()
        errors.append((out[0] / exact - 1).abs().max().item())
    rates = [errors[i] / errors[i + 1] for i in range(3)]
    assert all(0.8 * 2**order < r < 1.4 * 2**order for r in rates), (errors, rates)
    assert errors[-1] < (0.02 if order == 1 else 0.001)


# ------------------------------------------------------------------------------- contracts
def test_ddim_with_eta_one_is_the_ddpm_posterior():
    denoiser = gaussian_denoiser(MU, SIGMA)
    table = sigmas("linear", 40)
    x = _noise(7, 256) * table[0].item()
    a = SAMPLERS.get("ddim")(denoiser, x, table, eta=1.0, generator=torch.Generator().manual_seed(8))
    b = SAMPLERS.get("ddpm")(denoiser, x, table, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", SAMPLERS.names())
def test_samplers_are_pure_and_seeded(method):
    denoiser = gaussian_denoiser(MU, SIGMA)
    noise = _noise(9, 32)
    runs = [sample(denoiser, noise, method=method, steps=8, generator=torch.Generator().manual_seed(10))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # same seed, same result: no state between calls
    # the arithmetic runs in noise's dtype promoted to float32; denoiser output is cast to it
    half = sample(denoiser, noise.to(torch.float16), method=method, steps=8)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


@pytest.mark.parametrize("method", SAMPLERS.names())
def test_per_row_generators_make_a_row_independent_of_its_batch(method):
    # Model.sample passes one generator per row: a member must not change with the batch it is in
    denoiser = gaussian_denoiser(MU, SIGMA)
    noise = _noise(9, 6)
    rows = lambda n: [torch.Generator().manual_seed(100 + k) for k in range(n)]  # noqa: E731
    whole = sample(denoiser, noise, method=method, steps=6, generator=rows(6))
    part = sample(denoiser, noise[:2], method=method, steps=6, generator=rows(2))
    torch.testing.assert_close(part, whole[:2], rtol=1e-12, atol=1e-12)


def test_defaults_and_denoiser_kwargs():
    calls = []

    def denoiser(x, sigma, cond=None):
        calls.append((float(sigma[0]), cond))
        return torch.zeros_like(x)

    sample(denoiser, torch.randn(2, 3), denoiser_kwargs={"cond": "c"})  # heun: 18 levels -> 35 calls
    assert len(calls) == 35 and {c for _, c in calls} == {"c"}
    assert calls[0][0] == pytest.approx(80.0)
    calls.clear()
    sample(denoiser, torch.randn(2, 3), method="ddpm")
    assert len(calls) == 1000 and calls[0][0] == pytest.approx(sigmas("linear")[0].item())
    calls.clear()
    sample(denoiser, torch.randn(2, 3), method="ddim")
    assert len(calls) == 50


def test_sample_errors_name_the_problem():
    denoiser = gaussian_denoiser(MU, SIGMA)
    noise = _noise(11, 4)
    with pytest.raises(UnknownNameError, match="dpmpp_2m.*euler.*heun"):
        sample(denoiser, noise, method="huen")
    with pytest.raises(ValueError, match="steps"):
        sample(denoiser, noise, steps=0)
    with pytest.raises(ValueError, match=r"sigma_min=5\.0.*sigma_max=1\.0"):
        sample(denoiser, noise, sigma_min=5.0, sigma_max=1.0)
    bad = noise.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sample(denoiser, bad)
    with pytest.raises(TypeError, match="S_churn"):
        sample(denoiser, noise, method="heun", churn=1.0)
    with pytest.raises(ValueError, match="more than the 1000 levels"):
        sample(denoiser, noise, method="ddim", steps=1001)
    with pytest.warns(UserWarning, match=r"starts at 2: .*too little variance.*sigma_max >= 20"):
        sample(denoiser, noise, sigma_max=2.0, steps=4)


def test_a_bad_sampler_config_is_refused_before_training_starts(tmp_path):
    from sciddpm.training import train

    base = ["data=audio", "trainer=quick", "trainer.device=cpu", f"runs_dir={tmp_path}", "name=bad"]
    for override, message in [("sampler.guidance=abc", r"sampler\.guidance must be a finite number"),
                              ("sampler.method=foo", r"unknown sampler 'foo'; known samplers: ddim, ddpm"),
                              ("sampler.steps=0", r"sampler\.steps must be a positive integer"),
                              ("+sampler.opts.etta=1", r"sampler 'dpmpp_2m' got unknown option\(s\) 'etta'")]:
        with pytest.raises((ValueError, TypeError, UnknownNameError), match=message):
            train([*base, override])
    assert not (tmp_path / "bad").exists()
