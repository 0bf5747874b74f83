"""Schedules against the published formulas, and the forward process against its closed form."""

import math

import numpy as np
import pytest
import torch

from sciddpm.diffusion import (
    add_noise,
    append_dims,
    karras_sigmas,
    lognormal_sigmas,
    sigmas,
    vp_schedule,
)
from sciddpm.registry import UnknownNameError




def test_linear_schedule_is_ho_et_al():
    s = vp_schedule("linear")
    assert s.T == 1000 and s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(np.diff(s.betas.numpy()), (0.02 - 1e-4) / 999, rtol=1e-9)
    abar = np.cumprod(1 - s.betas.numpy())
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), abar, rtol=1e-12)
    np.testing.assert_allclose(s.sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-12)
    assert s.sigmas.numpy() == pytest.approx(np.sort(s.sigmas.numpy()))  # increasing in t


@pytest.mark.parametrize("T", [50, 250, 4000])
def test_linear_schedule_of_other_lengths_keeps_the_total_noise(T):
    # betas scaled by 1000/T (Nichol & Dhariwal's code): the last level stays of the order of
    # T=1000's sigma 157 (359 at T=50, 153 at 4000); unscaled, T=50 ended at sigma 0.81, far too
    # little noise to start sampling from
    s, reference = vp_schedule("linear", T), vp_schedule("linear")
    assert s.betas[0].item() == pytest.approx(1e-4 * 1000 / T) and s.betas[-1].item() == pytest.approx(0.02 * 1000 / T)
    assert 100 < s.sigmas[-1].item() < 400
    assert s.sigmas[0].item() == pytest.approx(reference.sigmas[0].item() * math.sqrt(1000 / T), rel=0.01)


def test_cosine_schedule_is_nichol_and_dhariwal():
    T = 1000
    s = vp_schedule("cosine", T)
    t = np.arange(T + 1)
    f = np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
    closed_form = f[1:] / f[0]  # abar at the end of step t = 0 .. T-1
    # identical until the clipped last beta (f(T) = 0 would make abar exactly 0)
    np.testing.assert_allclose(s.alphas_cumprod.numpy()[:-1], closed_form[:-1], rtol=1e-10)
    assert s.betas.max().item() == pytest.approx(0.999) and s.betas[-1].item() == pytest.approx(0.999)
    assert (s.betas.numpy()[:-1] < 0.999).all()
    assert math.isfinite(s.sigmas[-1].item()) and s.sigmas[-1].item() > 1e3
    np.testing.assert_allclose(
        s.sigmas.numpy(), np.sqrt((1 - s.alphas_cumprod.numpy()) / s.alphas_cumprod.numpy()), rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sigma_and_timestep_round_trip(name):
    s = vp_schedule(name)
    t = torch.arange(s.T, dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.sigmas), t, rtol=0, atol=1e-8)
    torch.testing.assert_close(s.t_to_sigma(t), s.sigmas, rtol=1e-12, atol=0)
    cont = torch.linspace(0, s.T - 1, 777, dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(cont)), cont, rtol=0, atol=1e-8)
    # log-sigma is interpolated linearly between table entries
    mid = s.t_to_sigma(torch.tensor(10.5, dtype=torch.float64))
    assert mid.item() == pytest.approx(math.sqrt(s.sigmas[10].item() * s.sigmas[11].item()), rel=1e-12)
    # outside the table: clamped to its ends
    assert s.sigma_to_t(torch.tensor([1e-6, 1e9])).tolist() == [0.0, s.T - 1.0]


def test_q_sample_and_q_step_match_the_closed_form():
    s = vp_schedule("linear")
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64).expand(n, 3)
    k = 299
    x_closed = s.q_sample(x0, k, torch.randn(n, 3, generator=g, dtype=torch.float64))
    x = x0.clone()
    for t in range(k + 1):  # q(x_t | x_{t-1}) for t = 0 .. k, starting from x_{-1} = x0
        x = s.q_step(x, t, torch.randn(n, 3, generator=g, dtype=torch.float64))
    abar = s.alphas_cumprod[k].item()
    mean, var = math.sqrt(abar) * x0[0], 1 - abar
    for samples in (x_closed, x):
        se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / n)
        assert ((samples.mean(0) - mean).abs() < 5 * se_mean).all()
        assert ((samples.var(0) - var).abs() < 5 * se_var).all()
    # the noise is independent per coordinate, so the columns stay uncorrelated
    assert torch.cov(x.T)[0, 1].abs() < 5 * var / math.sqrt(n)


def test_vp_and_sigma_space_forward_processes_agree():
    s = vp_schedule("cosine")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    ve = add_noise(x0, s.sigmas[t], noise)
    torch.testing.assert_close(s.to_sigma_space(s.q_sample(x0, t, noise), t), ve, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(add_noise(x0, 0.5, noise), x0 + 0.5 * noise)


def test_karras_sigmas_are_edm_eq5():
    table = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert table.dtype == torch.float64 and table.shape == (19,)
    i = np.arange(18)
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(table[:-1].numpy(), expected, rtol=1e-12)
    assert table[0].item() == pytest.approx(80.0) and table[-2].item() == pytest.approx(0.002)
    assert table[-1].item() == 0.0
    assert karras_sigmas(1).tolist() == [80.0, 0.0]


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_vp_sampling_tables(name):
    full = vp_schedule(name).sigmas
    table = sigmas(name, 1000)
    torch.testing.assert_close(table, torch.cat([full.flip(0), torch.zeros(1, dtype=torch.float64)]))
    for steps in (1, 7, 50, 999):
        table = sigmas(name, steps)
        assert table.shape == (steps + 1,) and table.dtype == torch.float64
        assert table[0] == full[-1] and table[-1] == 0  # trailing: starts at the top of the table
        assert (table[1:] < table[:-1]).all()
        assert torch.isin(table[:-1], full).all()
    # 50 steps of 1000 levels: a stride of 20 timesteps, t = 999, 979, ..., 19
    t = vp_schedule(name).sigma_to_t(sigmas(name, 50)[:-1])
    torch.testing.assert_close(t, torch.arange(999, 0, -20, dtype=torch.float64), rtol=0, atol=1e-6)
    # restricting the range keeps only levels inside it
    clipped = sigmas(name, None, sigma_min=0.1, sigma_max=10.0)
    assert clipped[0] <= 10 and clipped[-2] >= 0.1


def test_schedule_errors_name_the_fix():
    with pytest.raises(UnknownNameError, match="cosine, linear.*Did you mean 'linear'"):
        vp_schedule("linaer")
    with pytest.raises(ValueError, match="karras, cosine, linear"):
        sigmas("exponential", 10)
    with pytest.raises(ValueError, match=r"sigma_min=2\.0 must be smaller than sigma_max=1\.0"):
        karras_sigmas(10, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"sigma_min=80\.0.*sigma_max=80\.0"):
        sigmas("karras", 10, sigma_min=80.0)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            sigmas("karras", steps)
    with pytest.raises(ValueError, match="steps <= 1000"):
        sigmas("linear", 1001)
    with pytest.raises(ValueError, match="no level"):
        sigmas("linear", None, sigma_min=1e-5, sigma_max=1e-4)
    s = vp_schedule("linear")
    with pytest.raises(ValueError, match="0..999"):
        s.q_sample(torch.zeros(2, 3), torch.tensor([0, 1000]), torch.zeros(2, 3))


def test_lognormal_training_sigmas():
    g = torch.Generator().manual_seed(3)
    n = 40000
    log_sigma = lognormal_sigmas(n, -1.2, 1.2, generator=g).log()
    assert log_sigma.dtype == torch.float64
    assert abs(log_sigma.mean().item() + 1.2) < 5 * 1.2 / math.sqrt(n)
    assert abs(log_sigma.std().item() - 1.2) < 5 * 1.2 / math.sqrt(2 * n)
    again = lognormal_sigmas(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, lognormal_sigmas(5, generator=torch.Generator().manual_seed(4)))


def test_append_dims_is_rank_agnostic():
    sigma = torch.arange(3.0)
    for ndim in (1, 2, 3, 5):
        out = append_dims(sigma, ndim)
        assert out.shape == (3,) + (1,) * (ndim - 1)
        assert (out * torch.ones((3,) + (2,) * (ndim - 1))).shape == (3,) + (2,) * (ndim - 1)
    with pytest.raises(ValueError, match="shape \\[B\\]"):
        append_dims(torch.zeros(3, 4), 1)
