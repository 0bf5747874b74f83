"""The Denoiser: preconditioning against Karras et al. 2022 Table 1, losses against closed form.

For Gaussian data N(mu, Sigma) the ideal x0 estimate is known, so a "network" that outputs it
must give the smallest expected loss, and its loss has a closed-form expectation at every sigma:
E||D - x0||^2 = sum_k lam_k s^2 / (lam_k + s^2) (the trace of the posterior covariance).
"""

import math

import pytest
import torch
from torch import nn

from sciddpm.diffusion import PARAMETERISATIONS, Denoiser, vp_schedule
from sciddpm.registry import UnknownNameError
from sciddpm.testing import gaussian_denoiser



SD = 0.7  # a sigma_data other than 1, so a forgotten sigma_data shows
SIG = torch.tensor([0.002, 0.05, 0.5, 0.7, 3.0, 80.0], dtype=torch.float64)


def _gaussian(seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(-1, 0, d, dtype=torch.float64) * SD**2 * 2
    return torch.randn(d, generator=g, dtype=torch.float64) * 0.3, Q @ torch.diag(lam) @ Q.T, lam


MU, SIGMA, LAM = _gaussian()


@pytest.mark.parametrize("name", ["edm", "eps", "v", "x0"])
def test_scalings_are_karras_table_1(name):
    s, sd = SIG, SD
    r = (s**2 + sd**2).sqrt()
    expected = {  # (c_skip, c_out, c_in)
        "edm": (sd**2 / r**2, s * sd / r, 1 / r),
        "eps": (torch.ones_like(s), -s, 1 / r),
        "v": (sd**2 / r**2, -s * sd / r, 1 / r),
        "x0": (torch.zeros_like(s), torch.full_like(s, sd), 1 / r),
    }[name]
    c_skip, c_out, c_in, c_noise = Denoiser(nn.Identity(), name, sigma_data=sd).scalings(s)
    for got, want in zip((c_skip, c_out, c_in), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_noise, s.log() / 4)  # no schedule: EDM's c_noise
    # with a VP schedule, eps/v/x0 networks get the DDPM timestep; EDM keeps ln(sigma)/4
    vp = vp_schedule("linear")
    levels = vp.sigmas[[0, 17, 999]]
    c_noise = Denoiser(nn.Identity(), name, sigma_data=sd, schedule=vp).scalings(levels)[3]
    want = torch.tensor([0.0, 17.0, 999.0], dtype=torch.float64) if name != "edm" else levels.log() / 4
    torch.testing.assert_close(c_noise, want, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["edm", "eps", "v", "x0"])
def test_training_target_is_what_reconstructs_x0(name):
    # F* = (x0 - c_skip x) / c_out, written in closed form per parameterisation; a network that
    # outputs F* makes D(x) = x0.
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    s = SIG.reshape(-1, 1, 1)
    x = x0 + s * eps
    param = PARAMETERISATIONS.get(name)
    c_skip, c_out, _ = param.scalings(s, SD)
    target = param.target(x0, eps, s, SD)
    torch.testing.assert_close(target, (x0 - c_skip * x) / c_out, rtol=1e-9, atol=1e-9)

    class Oracle(nn.Module):
        def forward(self, x_in, c_noise):
            return target

    torch.testing.assert_close(Denoiser(Oracle(), name, sigma_data=SD)(x, SIG), x0, rtol=1e-9, atol=1e-9)


class IdealNet(nn.Module):
    """Outputs the F that makes D the Gaussian's exact x0 estimate, perturbed along
    D_a = D + (a - 1)(D - mu) (a = 1: the truth); `stretch` feeds it a wrong sigma."""

    def __init__(self, a=1.0, stretch=1.0):
        super().__init__()
        self.a, self.stretch, self.owner = a, stretch, None
        self.ideal = gaussian_denoiser(MU, SIGMA)

    def forward(self, x_in, c_noise):
        owner = self.owner
        sigma = owner.schedule.t_to_sigma(c_noise) if owner.schedule is not None and \
            owner.parameterisation != "edm" else (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = owner.scalings(sigma)
        x = x_in / c_in.reshape(-1, 1, 1)
        d = self.ideal(x, self.stretch * sigma)
        d = d + (self.a - 1) * (d - MU.reshape(2, 4))
        return (d - c_skip.reshape(-1, 1, 1) * x) / c_out.reshape(-1, 1, 1)


def _denoiser(net, name, schedule, gamma):
    den = Denoiser(net, name, sigma_data=SD, schedule=schedule, min_snr_gamma=gamma)
    net.owner = den
    return den


CONFIGS = [("edm", None, None), ("eps", None, None), ("v", None, None), ("x0", None, None),
           ("eps", "linear", None), ("v", "cosine", 5.0), ("edm", None, 5.0)]


def _x0_weight(name, sigma, gamma):
    snr = SD**2 / sigma**2
    if gamma is not None:
        return snr.clamp(max=gamma)
    return {"eps": snr, "v": snr + 1, "edm": snr + 1, "x0": torch.ones_like(snr)}[name]


@pytest.mark.parametrize("name,schedule,gamma", CONFIGS)
def test_loss_of_the_ideal_denoiser_has_its_closed_form_expectation(name, schedule, gamma):
    n = 20000
    g = torch.Generator().manual_seed(2)
    x0 = (MU + torch.randn(n, 8, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T)
    x0 = x0.reshape(n, 2, 4)
    den = _denoiser(IdealNet(), name, schedule, gamma)
    sigma = den.sample_sigmas(n, generator=g)
    losses = den.loss_per_sample(x0, sigma=sigma, generator=g)
    # x0-space: w(sigma) ||D - x0||^2 / sd^2, averaged over the 8 entries
    trace = (LAM * sigma[:, None] ** 2 / (LAM + sigma[:, None] ** 2)).sum(1)
    expected = _x0_weight(name, sigma, gamma) * trace / (SD**2 * 8)
    ratio = losses / expected
    assert abs(ratio.mean().item() - 1) < 5 * ratio.std().item() / math.sqrt(n)
    # loss() is the mean of these when every entry is valid
    def seeded():
        return torch.Generator().manual_seed(2)

    torch.testing.assert_close(den.loss(x0, sigma=sigma, generator=seeded()),
                               den.loss_per_sample(x0, sigma=sigma, generator=seeded()).mean())


@pytest.mark.parametrize("name,schedule,gamma", CONFIGS)
def test_loss_is_minimised_by_the_ideal_denoiser(name, schedule, gamma):
    # Per sample the loss is quadratic in a; its slope at a = 1 must vanish in expectation
    # (E[x0 | x] minimises any weighted squared error) and be clearly nonzero for a denoiser
    # told the wrong sigma.
    n, h = 20000, 0.1
    g = torch.Generator().manual_seed(3)
    x0 = (MU + torch.randn(n, 8, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T)
    x0 = x0.reshape(n, 2, 4)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = _denoiser(IdealNet(), name, schedule, gamma).sample_sigmas(n, generator=g)

    def slope_z(stretch):
        loss = {a: _denoiser(IdealNet(a, stretch), name, schedule, gamma).loss_per_sample(
            x0, sigma=sigma, noise=noise) for a in (1 - h, 1.0, 1 + h)}
        slope = (loss[1 + h] - loss[1 - h]) / (2 * h)
        curvature = (loss[1 + h] + loss[1 - h] - 2 * loss[1.0]) / h**2
        assert (curvature >= -1e-9).all()
        return slope.mean().item() / (slope.std().item() / math.sqrt(n))

    assert abs(slope_z(1.0)) < 5
    assert abs(slope_z(1.3)) > 5


class Recorder(nn.Module):
    """Records its inputs; returns a fixed nonlinear function of them."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x_in, c_noise, **kwargs):
        self.calls.append((x_in.detach().clone(), c_noise.detach().clone(), kwargs))
        return self.scale * torch.tanh(x_in) * (1 + c_noise.reshape(-1, *([1] * (x_in.ndim - 1))) ** 2).sqrt()


def test_eps_loss_is_exactly_ddpm():
    # Ho et al. 2020, Alg. 1: t ~ U{0..T-1}, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps,
    # loss ||eps - eps_theta(x_t, t)||^2
    net = Recorder().double()
    schedule = vp_schedule("linear")
    den = Denoiser(net, "eps", sigma_data=1.0, schedule=schedule)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(64, 3, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 3, 5, generator=g, dtype=torch.float64)
    sigma = den.sample_sigmas(64, generator=g)
    loss = den.loss(x0, sigma=sigma, noise=noise)
    x_in, c_noise, _ = net.calls[-1]
    t = c_noise.round().long()
    torch.testing.assert_close(c_noise, t.double(), rtol=0, atol=1e-8)
    torch.testing.assert_close(x_in, schedule.q_sample(x0, t, noise), rtol=1e-12, atol=1e-12)
    eps_theta = net(x_in, c_noise)
    torch.testing.assert_close(loss, ((eps_theta - noise) ** 2).mean())
    # training timesteps are uniform over the table
    t_all = schedule.sigma_to_t(den.sample_sigmas(40000, generator=g))
    assert torch.equal(t_all, t_all.round()) and t_all.min() == 0 and t_all.max() == 999
    assert abs(t_all.mean().item() - 499.5) < 5 * 288.7 / math.sqrt(40000)


def _edm_by_hand(net, x0, sigma, noise, sd):
    """EDM's loss written out from the paper, for independent comparison."""
    s = sigma.reshape(-1, 1, 1, 1)
    x = x0 + s * noise
    c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
    F = net(c_in * x, sigma.log() / 4)
    return (F - (x0 - c_skip * x) / c_out) ** 2


def test_masked_loss_ignores_nan_targets():
    g = torch.Generator().manual_seed(5)
    net = Recorder().double()
    den = Denoiser(net, "edm", sigma_data=SD)
    x0 = torch.randn(4, 2, 6, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 1, 6, 8, generator=g) > 0.3  # e.g. land points of an ocean field
    mask[3] = False  # a sample with nothing valid contributes nothing
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 5.0, 2.0], dtype=torch.float64)
    valid = mask.expand_as(x0)
    filled = torch.where(valid, x0, 0.0)
    expected = (_edm_by_hand(net, filled, sigma, noise, SD) * valid).sum() / valid.sum()

    poisoned = torch.where(valid, x0, torch.nan)
    loss = den.loss(poisoned, mask=mask, sigma=sigma, noise=noise)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    # masked entries reach the network as 0 + sigma * noise, not NaN
    other = den.loss(torch.where(valid, x0, 1e6), mask=mask.float(), sigma=sigma, noise=noise)
    torch.testing.assert_close(other, loss, rtol=1e-12, atol=0)
    loss.backward()
    assert torch.isfinite(net.scale.grad)
    per_sample = den.loss_per_sample(poisoned, mask=mask, sigma=sigma, noise=noise)
    assert per_sample[3] == 0 and torch.isfinite(per_sample).all()


def test_weighted_loss_is_a_weighted_mean_over_valid_entries():
    g = torch.Generator().manual_seed(6)
    net = Recorder().double()
    den = Denoiser(net, "edm", sigma_data=SD)
    x0 = torch.randn(3, 2, 6, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 2, 6, 8, generator=g) > 0.2
    lat = torch.linspace(-75, 75, 6, dtype=torch.float64)
    weight = torch.cos(torch.deg2rad(lat)).reshape(1, 1, 6, 1)  # area weights per latitude row
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    err = _edm_by_hand(net, torch.where(mask, x0, 0.0), sigma, noise, SD)
    w = weight * mask
    expected = (err * w).sum() / w.expand_as(err).sum()
    got = den.loss(torch.where(mask, x0, torch.nan), mask=mask, weight=weight, sigma=sigma, noise=noise)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["edm", "eps", "v", "x0"])
def test_min_snr_weighting_matches_hang_et_al(name):
    gamma = 5.0
    g = torch.Generator().manual_seed(7)
    net = Recorder().double()
    den = Denoiser(net, name, sigma_data=SD, min_snr_gamma=gamma)
    x0 = torch.randn(len(SIG), 3, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    got = den.loss_per_sample(x0, sigma=SIG, noise=noise)
    # min(SNR, gamma) ||D - x0||^2 / sd^2 per entry, SNR = sd^2 / sigma^2 (Hang et al. 2023, eq. 6)
    D = den(x0 + SIG.reshape(-1, 1, 1) * noise, SIG)
    snr = SD**2 / SIG**2
    expected = snr.clamp(max=gamma) * ((D - x0) ** 2).mean((1, 2)) / SD**2
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_conditioning_dropout_reaches_the_network():
    net = Recorder()
    den = Denoiser(net, "edm", cond_dropout=0.3)
    g = torch.Generator().manual_seed(8)
    n = 20000
    cond = torch.randn(n, 3, generator=g)
    den.loss(torch.randn(n, 1, 2, generator=g), cond, generator=g)
    kwargs = net.calls[-1][2]
    assert kwargs["cond"] is cond
    drop = kwargs["drop_cond"]
    assert drop.dtype == torch.bool and drop.shape == (n,)
    assert abs(drop.float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    # no condition: nothing to drop, and the network is called without conditioning arguments
    den.loss(torch.randn(8, 1, 2), generator=g)
    assert net.calls[-1][2] == {}
    # no dropout: no drop_cond; forward passes both through as given
    Denoiser(net, "edm", cond_dropout=0.0).loss(torch.randn(8, 1, 2), cond[:8], generator=g)
    assert set(net.calls[-1][2]) == {"cond"}
    rows = torch.tensor([True, False])
    den(torch.randn(2, 1, 2), 1.0, cond=cond[:2], drop_cond=rows)
    assert net.calls[-1][2]["drop_cond"] is rows


def test_forward_dtypes_and_shapes():
    net = Recorder()  # float32 parameters
    den = Denoiser(net, "v", sigma_data=SD)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    out = den(x, torch.tensor([0.1, 1.0, 10.0]))
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert net.calls[-1][0].dtype == torch.float32  # the network runs in its own dtype
    assert den(x.to(torch.bfloat16), 1.0).dtype == torch.float32  # scalar sigma: broadcast, >= fp32
    # scalings broadcast over any rank
    for shape in [(3, 1, 16), (3, 2, 4, 4), (3, 1, 2, 3, 4)]:
        assert den(torch.randn(shape), torch.ones(3)).shape == shape


def test_denoiser_errors_name_the_fix():
    with pytest.raises(UnknownNameError, match="edm, eps, v, x0.*Did you mean 'eps'"):
        Denoiser(nn.Identity(), "epsilon")
    with pytest.raises(ValueError, match="sigma_data must be a positive number"):
        Denoiser(nn.Identity(), sigma_data=0.0)
    with pytest.raises(ValueError, match="cond_dropout"):
        Denoiser(nn.Identity(), cond_dropout=1.5)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        Denoiser(nn.Identity(), min_snr_gamma=-1)
    with pytest.raises(UnknownNameError, match="cosine, linear"):
        Denoiser(nn.Identity(), "eps", schedule="quadratic")
    den = Denoiser(Recorder())
    with pytest.raises(ValueError, match=r"shape \[B\] = \[2\]"):
        den(torch.randn(2, 1, 3), torch.ones(3))

    class Wrong(nn.Module):
        def forward(self, x_in, c_noise):
            return x_in[:, :1]

    with pytest.raises(ValueError, match="out_channels"):
        Denoiser(Wrong())(torch.randn(2, 3, 4), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        den.loss(torch.randn(2, 1, 3), mask=torch.ones(2, 1, 4, dtype=torch.bool))
