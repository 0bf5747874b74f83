"""Guidance and inpainting wrappers against Gaussian truth.

For Gaussian data the guided and the inpainted distributions are both known in closed form:
* classifier-free guidance between N(m_u, Sigma) and N(m_c, Sigma) is exactly the denoiser of
  N(m_u + w (m_c - m_u), Sigma), because the ideal denoiser is affine in the mean;
* holding x0_k = y fixed must give the Gaussian conditional
  N(mu_u + S_uk S_kk^-1 (y - mu_k), S_uu - S_uk S_kk^-1 S_ku) for the unknown part.
"""

import functools
import math

import pytest
import torch
from torch import nn

from sciddpm.diffusion import SAMPLERS, Denoiser, guided, inpainting, sample
from sciddpm.diffusion.guidance import forwards_drop_cond
from sciddpm.testing import gaussian_denoiser



D_DIM = 8


def _gaussian(seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D_DIM, D_DIM, generator=g, dtype=torch.float64))
    lam = torch.logspace(math.log10(0.05), math.log10(2.0), D_DIM, dtype=torch.float64)
    return 0.3 * torch.randn(D_DIM, generator=g, dtype=torch.float64), Q @ torch.diag(lam) @ Q.T


MU, SIGMA = _gaussian()
ZERO_MEAN = gaussian_denoiser(torch.zeros(D_DIM), SIGMA)


def conditional_gaussian(x, sigma, cond=None, drop_cond=None):
    """Ideal denoiser for N(m, Sigma) where m = cond (per row) or MU for the null condition."""
    m = MU.expand(x.shape[0], D_DIM)
    if cond is not None:
        m = cond if drop_cond is None else torch.where(drop_cond[:, None], MU, cond)
    return m + ZERO_MEAN(x - m, sigma)


def two_call_gaussian(x, sigma, cond=None):
    """The same denoiser without drop_cond: guidance must fall back to two calls."""
    return conditional_gaussian(x, sigma, cond)


def _counting(fn):
    calls = []

    def wrapped(x, sigma, **kwargs):
        calls.append((x.shape[0], kwargs))
        return fn(x, sigma, **kwargs)

    return forwards_drop_cond(wrapped, fn), calls


def whitened_error(x, mean, cov):
    """(max |whitened mean|, max |whitened cov - I|) of samples x [N, k]."""
    lam, V = torch.linalg.eigh(cov)
    white = (x - mean) @ (V @ torch.diag(lam.rsqrt()) @ V.T)
    eye = torch.eye(len(mean), dtype=torch.float64)
    return white.mean(0).abs().max().item(), (torch.cov(white.T) - eye).abs().max().item()


def test_guidance_scale_zero_is_unconditional_and_one_conditional():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, D_DIM, generator=g, dtype=torch.float64)
    sigma = torch.full((5,), 0.7, dtype=torch.float64)
    cond = torch.randn(5, D_DIM, generator=g, dtype=torch.float64)
    d_u, d_c = conditional_gaussian(x, sigma), conditional_gaussian(x, sigma, cond)
    assert not torch.allclose(d_u, d_c)
    for base in (conditional_gaussian, two_call_gaussian):
        torch.testing.assert_close(guided(base, 0.0)(x, sigma, cond=cond), d_u)
        torch.testing.assert_close(guided(base, 1.0)(x, sigma, cond=cond), d_c)
        torch.testing.assert_close(guided(base, 3.0)(x, sigma, cond=cond), d_u + 3.0 * (d_c - d_u))
        torch.testing.assert_close(guided(base, 3.0)(x, sigma), d_u)  # no condition: nothing to guide
    # drop_cond-aware denoisers get one call of 2B rows, others two calls of B rows
    counted, calls = _counting(conditional_gaussian)
    guided(counted, 2.0)(x, sigma, cond=cond)
    assert [n for n, _ in calls] == [10]
    assert calls[0][1]["drop_cond"].tolist() == [False] * 5 + [True] * 5
    counted, calls = _counting(two_call_gaussian)
    guided(counted, 2.0)(x, sigma, cond=cond)
    assert [n for n, _ in calls] == [5, 5]


def test_a_denoiser_that_takes_but_ignores_extra_keywords_is_still_guided():
    # a user's function with **kwargs that never looks at drop_cond: batching both branches through
    # it would make both conditional (guidance silently off), so it gets two calls
    def loose(x, sigma, cond=None, **ignored):
        return conditional_gaussian(x, sigma, cond)

    g = torch.Generator().manual_seed(5)
    x, cond = torch.randn(4, D_DIM, generator=g, dtype=torch.float64), torch.randn(4, D_DIM, generator=g, dtype=torch.float64)
    sigma = torch.full((4,), 1.3, dtype=torch.float64)
    d_u, d_c = conditional_gaussian(x, sigma), conditional_gaussian(x, sigma, cond)
    torch.testing.assert_close(guided(loose, 4.0)(x, sigma, cond=cond), d_u + 4.0 * (d_c - d_u))


def test_guided_sampling_gives_the_extrapolated_gaussian():
    n, w = 16384, 2.5
    m_c = MU + torch.linspace(-0.5, 0.5, D_DIM, dtype=torch.float64)
    noise = torch.randn(n, D_DIM, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = sample(guided(conditional_gaussian, w), noise, method="heun", steps=100,
               denoiser_kwargs={"cond": m_c.expand(n, D_DIM)})
    mean_err, cov_err = whitened_error(x, MU + w * (m_c - MU), SIGMA)
    assert mean_err < 5 / math.sqrt(n) + 2.0 / 80  # |mean| / sigma_max: the start at sigma_max * eps
    assert cov_err < 5 * math.sqrt(2 / n) + 0.01


class CondNet(nn.Module):
    """A backbone with a learnt null condition, honouring cond=None and drop_cond rows."""

    def __init__(self):
        super().__init__()
        self.null = nn.Parameter(torch.tensor([0.5, -0.5]))
        self.calls = []

    def forward(self, x_in, c_noise, cond=None, drop_cond=None):
        self.calls.append((x_in.shape[0], drop_cond))
        c = self.null.expand(x_in.shape[0], 2) if cond is None else cond
        if drop_cond is not None:
            c = torch.where(drop_cond[:, None], self.null, c)
        return torch.tanh(x_in) * c[:, :, None] + c_noise[:, None, None]


def test_guided_denoiser_module_runs_one_batch():
    net = CondNet()
    den = Denoiser(net, "edm")
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(4, 2, 3, generator=g), torch.randn(4, 2, generator=g)
    sigma = torch.tensor([0.1, 1.0, 2.0, 10.0])
    with torch.no_grad():
        out = guided(den, 1.7)(x, sigma, cond=cond)
        d_u, d_c = den(x, sigma), den(x, sigma, cond=cond)
    assert net.calls[0][0] == 8 and net.calls[0][1].tolist() == [False] * 4 + [True] * 4
    torch.testing.assert_close(out, d_u + 1.7 * (d_c - d_u))


def _inpainting_problem(seed=4):
    known_idx, unknown_idx = torch.tensor([0, 2, 4, 6]), torch.tensor([1, 3, 5, 7])
    g = torch.Generator().manual_seed(seed)
    S_kk = SIGMA[known_idx][:, known_idx]
    y = MU[known_idx] + 1.5 * torch.linalg.cholesky(S_kk) @ torch.randn(4, generator=g, dtype=torch.float64)
    known = torch.full((1, D_DIM), float("nan"), dtype=torch.float64)  # unknown values: ignored
    known[0, known_idx] = y
    mask = torch.zeros(1, D_DIM, dtype=torch.bool)
    mask[0, known_idx] = True
    S_uk = SIGMA[unknown_idx][:, known_idx]
    cond_mean = MU[unknown_idx] + S_uk @ torch.linalg.solve(S_kk, y - MU[known_idx])
    cond_cov = SIGMA[unknown_idx][:, unknown_idx] - S_uk @ torch.linalg.solve(S_kk, S_uk.T)
    return known, mask, unknown_idx, cond_mean, cond_cov


def test_inpainting_samples_the_gaussian_conditional():
    known, mask, u, cond_mean, cond_cov = _inpainting_problem()
    n = 16384
    noise = torch.randn(n, D_DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    denoiser = gaussian_denoiser(MU, SIGMA)
    x = sample(inpainting(denoiser, known, mask), noise, method="heun", steps=100)
    assert torch.equal(x[:, mask[0]], known[:, mask[0]].expand(n, 4))
    mean_err, cov_err = whitened_error(x[:, u], cond_mean, cond_cov)
    # Tolerance: 5 standard errors of the whitened mean / covariance entries for n samples, plus
    # |mean| / sigma_max for the start at sigma_max * eps and 0.01 for Heun's discretisation at
    # 100 steps. CG on the 4 known values is exact after 4 iterations, so nothing else is allowed.
    assert mean_err < 5 / math.sqrt(n) + float(cond_mean.norm()) / 80, mean_err
    assert cov_err < 5 * math.sqrt(2 / n) + 0.01, cov_err
    # Plain replacement (iterations=0) is measurably far from the conditional: the check has teeth.
    x0 = sample(inpainting(denoiser, known, mask, iterations=0), noise, method="heun", steps=100)
    replace_mean_err, replace_cov_err = whitened_error(x0[:, u], cond_mean, cond_cov)
    assert replace_mean_err > 20 / math.sqrt(n) and replace_cov_err > 0.2


def test_inpainting_fills_gaps_in_a_smooth_field():
    """A 64-point Gaussian random field (squared-exponential covariance, length 4: badly
    conditioned, the hard case for CG) with two gaps; the default settings must reach the
    conditional mean within sampling error."""
    d, n = 64, 1024
    grid = torch.arange(d, dtype=torch.float64)
    Sigma = torch.exp(-0.5 * ((grid[:, None] - grid[None, :]) / 4) ** 2)
    Sigma = Sigma + 1e-3 * torch.eye(d, dtype=torch.float64)  # jitter: condition number ~1e4
    truth = torch.linalg.cholesky(Sigma) @ torch.randn(d, generator=torch.Generator().manual_seed(10),
                                                       dtype=torch.float64)
    mask = torch.ones(1, d, dtype=torch.bool)
    mask[0, 20:36] = mask[0, 50:54] = False
    k, u = mask[0].nonzero()[:, 0], (~mask[0]).nonzero()[:, 0]
    S_uk = Sigma[u][:, k]
    cond_mean = S_uk @ torch.linalg.solve(Sigma[k][:, k], truth[k])
    cond_cov = Sigma[u][:, u] - S_uk @ torch.linalg.solve(Sigma[k][:, k], S_uk.T)
    se = math.sqrt(cond_cov.trace().item() / n)  # E|mean error|^2 = tr(cond_cov) / n
    noise = torch.randn(n, d, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    denoiser = gaussian_denoiser(torch.zeros(d), Sigma)
    known = torch.where(mask, truth, torch.nan)
    x = sample(inpainting(denoiser, known, mask), noise, method="heun")
    assert torch.equal(x[:, k], truth[k].expand(n, len(k)))
    assert (x[:, u].mean(0) - cond_mean).norm() < 4 * se + cond_mean.norm() / 80
    replaced = sample(inpainting(denoiser, known, mask, iterations=0), noise, method="heun")
    assert (replaced[:, u].mean(0) - cond_mean).norm() > 10 * se


@pytest.mark.parametrize("method", SAMPLERS.names())
def test_every_sampler_keeps_known_values_exactly(method):
    known, mask, _, _, _ = _inpainting_problem()
    noise = torch.randn(64, D_DIM, generator=torch.Generator().manual_seed(6))  # float32 samples
    x = sample(inpainting(gaussian_denoiser(MU, SIGMA), known.float(), mask), noise, method=method,
               steps=12, generator=torch.Generator().manual_seed(7))
    assert torch.equal(x[:, mask[0]], known.float()[:, mask[0]].expand(64, 4))
    assert torch.isfinite(x).all()


def test_wrappers_compose_and_keep_known_values():
    known, mask, u, _, _ = _inpainting_problem()
    n, w = 512, 2.0
    m_c = MU + 0.4
    cond = m_c.expand(n, D_DIM)
    noise = torch.randn(n, D_DIM, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    counted, calls = _counting(conditional_gaussian)
    outer = sample(guided(inpainting(counted, known, mask, tol=1e-12), w), noise, method="heun",
                   steps=20, denoiser_kwargs={"cond": cond})
    assert {b for b, _ in calls} == {2 * n}  # one batch of 2B rows, known values tiled to it
    inner = sample(inpainting(guided(conditional_gaussian, w), known, mask, tol=1e-12), noise,
                   method="heun", steps=20, denoiser_kwargs={"cond": cond})
    for x in (outer, inner):
        assert torch.equal(x[:, mask[0]], known[:, mask[0]].expand(n, 4))
    # both orders are the conditional of N(MU + w (m_c - MU), Sigma): linear maps agree
    torch.testing.assert_close(outer, inner, rtol=1e-8, atol=1e-8)


def test_per_row_known_values_and_errors():
    denoiser = gaussian_denoiser(MU, SIGMA)
    g = torch.Generator().manual_seed(9)
    known = torch.randn(3, D_DIM, generator=g, dtype=torch.float64)
    mask = torch.rand(3, D_DIM, generator=g) > 0.5
    x = sample(inpainting(denoiser, known, mask), torch.randn(3, D_DIM, dtype=torch.float64), steps=8)
    assert torch.equal(x[mask], known[mask])
    with pytest.raises(ValueError, match="3 rows but the sampler's batch has 4"):
        sample(inpainting(denoiser, known, mask), torch.randn(4, D_DIM, dtype=torch.float64), steps=4)
    with pytest.raises(ValueError, match="same rank"):
        inpainting(denoiser, known, mask[0])
    with pytest.raises(ValueError, match="iterations"):
        inpainting(denoiser, known, mask, iterations=-1)
    with pytest.raises(ValueError, match="finite"):
        guided(denoiser, float("nan"))


def test_a_compiled_or_data_parallel_denoiser_still_runs_one_batch():
    # their forward is (*args, **kwargs); what counts is the module inside
    net = CondNet()
    den = Denoiser(net, "edm")
    g = torch.Generator().manual_seed(6)
    x, cond = torch.randn(4, 2, 3, generator=g), torch.randn(4, 2, generator=g)
    sigma = torch.full((4,), 0.5)
    for wrapped in (torch.nn.DataParallel(den), torch.compile(den, backend="eager")):
        net.calls.clear()
        with torch.no_grad():
            out = guided(wrapped, 3.0)(x, sigma, cond=cond)
        assert [n for n, _ in net.calls] == [8]
        torch.testing.assert_close(out, den(x, sigma) + 3.0 * (den(x, sigma, cond=cond) - den(x, sigma)))


def test_a_wrapper_that_wraps_itself_does_not_loop():
    class Odd(torch.nn.Module):
        def forward(self, x, sigma, cond=None):
            return x

    odd = Odd()
    odd._orig_mod = odd
    x = torch.zeros(2, 3)
    torch.testing.assert_close(guided(odd, 2.0)(x, torch.ones(2), cond=torch.ones(2, 1)), x)


def test_a_wrapper_is_marked_for_one_inner_denoiser_only():
    def takes(x, sigma, cond=None, drop_cond=None):
        return x

    def ignores(x, sigma, cond=None):
        return x

    def shared(x, sigma, **kwargs):
        return x

    forwards_drop_cond(shared, takes)
    with pytest.raises(TypeError, match="fresh wrapper function per inner denoiser"):
        forwards_drop_cond(shared, ignores)  # would have overwritten the first mark

    @functools.wraps(shared)  # copies the mark along with __wrapped__: still a wrapper of its own
    def wrapped(x, sigma, **kwargs):
        return shared(x, sigma, **kwargs)

    assert forwards_drop_cond(wrapped, ignores) is wrapped
