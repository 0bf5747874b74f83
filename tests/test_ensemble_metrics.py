"""Ensemble scores against closed forms and brute force; summaries; the climate evaluation pictures."""

import json

import numpy as np
import pytest
import xarray as xr
from scipy.stats import chisquare, norm

from sciddpm.data.climate_eval import _north_up, score_climate_ensemble
from sciddpm.metrics import area_weights, crps, power_spectrum, rank_histogram, rmse, spread_skill, zonal_power_spectrum
from sciddpm.metrics.summary import compare, summarise


def gaussian_crps(mu, sigma, y):
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


def brute_force_crps(ens, y, fair):
    m = ens.shape[0]
    skill = np.abs(ens - y).mean(axis=0)
    pairs = np.abs(ens[:, None] - ens[None, :]).sum(axis=(0, 1))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def within_sampling_error(estimates, expected, sigmas=5.0):
    """|mean(estimates) - expected| below `sigmas` standard errors of the mean."""
    err = np.asarray(estimates).std(ddof=1) / np.sqrt(np.size(estimates))
    return abs(np.mean(estimates) - expected) < sigmas * err


# --------------------------------------------------------------------------- CRPS
def test_fair_crps_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    n, m, sigma = 20000, 16, 2.0
    y = rng.normal(0.0, 3.0, n)
    ens = rng.normal(0.5, sigma, (m, n))
    pointwise = crps(ens, y, reduce_dims=())
    exact = gaussian_crps(0.5, sigma, y)
    assert within_sampling_error(pointwise - exact, 0.0)
    assert crps(ens, y) == pytest.approx(pointwise.mean(), rel=1e-12)


@pytest.mark.parametrize("fair", [True, False])
def test_crps_matches_brute_force_pairs(fair):
    rng = np.random.default_rng(1)
    ens, y = rng.standard_normal((7, 5, 3)), rng.standard_normal((5, 3))
    ens[2, 1, 1] = ens[4, 1, 1]  # ties change nothing
    expected = brute_force_crps(ens, y, fair)
    assert np.allclose(crps(ens, y, fair=fair, reduce_dims=()), expected, atol=1e-12, rtol=0)
    # numpy with another member axis, and xarray with the member dim anywhere
    assert np.allclose(crps(np.moveaxis(ens, 0, 2), y, member_dim=2, fair=fair, reduce_dims=()), expected,
                       atol=1e-12, rtol=0)
    da = xr.DataArray(np.moveaxis(ens, 0, 1), dims=("x", "member", "y"))
    pointwise = crps(da, xr.DataArray(y, dims=("x", "y")), fair=fair, reduce_dims=())
    assert np.allclose(pointwise.transpose("x", "y").values, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("m", [2, 4])
def test_fair_crps_unbiased_for_small_ensembles_and_plain_crps_biased_high(m):
    rng = np.random.default_rng(m)
    n = 200000
    y = rng.standard_normal(n)
    ens = rng.standard_normal((m, n))
    exact = gaussian_crps(0.0, 1.0, y)
    fair = crps(ens, y, reduce_dims=()) - exact
    plain = crps(ens, y, fair=False, reduce_dims=()) - exact
    assert within_sampling_error(fair, 0.0)
    # the plain estimator over-states CRPS by E|X - X'| / (2M) = sigma / (M sqrt(pi))
    assert within_sampling_error(plain, 1.0 / (m * np.sqrt(np.pi)))
    assert plain.mean() > 10 * plain.std() / np.sqrt(n)


def test_crps_weights_nan_truth_and_datasets():
    rng = np.random.default_rng(2)
    lat = np.array([-60.0, -20.0, 20.0, 60.0])
    ens = xr.DataArray(rng.standard_normal((3, 6, 4, 8)), dims=("case", "member", "latitude", "longitude"),
                       coords={"latitude": lat})
    truth = xr.DataArray(rng.standard_normal((3, 4, 8)), dims=("case", "latitude", "longitude"),
                         coords={"latitude": lat})
    truth[:, 0, :3] = np.nan  # e.g. land in an SST field
    w = area_weights(truth.latitude)
    pointwise = crps(ens, truth, reduce_dims=())
    assert pointwise.isnull().sum() == 9 and np.isfinite(pointwise.values[:, 1:]).all()
    valid = truth.notnull()
    manual = float((pointwise.fillna(0) * w * valid).sum() / (w * valid).sum())
    assert float(crps(ens, truth, weights=w)) == pytest.approx(manual, rel=1e-12)  # excluded, not zero
    per_case = crps(ens, truth, weights=w, reduce_dims=("latitude", "longitude"))
    assert per_case.dims == ("case",)
    with pytest.raises(ValueError, match=r"reduce_dims \['longitdue'\] not among the score's dims"):
        crps(ens, truth, weights=w, reduce_dims=("latitude", "longitdue"))  # not a per-longitude score
    # a NaN member at a point where the truth is finite is not hidden
    broken = ens.copy()
    broken[0, 0, 2, 2] = np.nan
    assert np.isnan(float(crps(broken, truth, weights=w)))
    ds = xr.Dataset({"sst": ens, "t2m": ens * 2})
    scores = crps(ds, xr.Dataset({"sst": truth, "t2m": truth * 2}), weights=w)
    assert float(scores["sst"]) == pytest.approx(manual, rel=1e-12)
    with pytest.raises(ValueError, match=r"truth lacks variables \['t2m'\]; it has \['sst'\]"):
        crps(ds, xr.Dataset({"sst": truth}))
    with pytest.raises(ValueError, match="member dim 'ensemble' not among"):
        crps(ens, truth, member_dim="ensemble")
    with pytest.raises(ValueError, match="at least 2 members"):
        crps(ens.isel(member=[0]), truth)


# --------------------------------------------------------------------------- spread/skill, RMSE
def test_spread_skill_calibrated_and_under_dispersive():
    rng = np.random.default_rng(3)
    n, m = 50000, 5
    centre, scale = rng.normal(0, 5, n), rng.uniform(0.5, 2.0, n)
    truth = centre + scale * rng.standard_normal(n)
    members = centre + scale * rng.standard_normal((m, n))
    assert spread_skill(members, truth) == pytest.approx(1.0, abs=0.03)
    # without the finite-ensemble correction a perfect ensemble reads sqrt(M / (M + 1))
    assert spread_skill(members, truth, debiased=False) == pytest.approx(np.sqrt(m / (m + 1)), abs=0.03)
    narrow = centre + 0.5 * (members - centre)
    assert spread_skill(narrow, truth) < 0.6


def test_rmse_of_ensemble_mean_is_area_weighted():
    lat = xr.DataArray([-45.0, 0.0, 45.0], dims="latitude")
    truth = xr.DataArray(np.zeros((3, 2)), dims=("latitude", "longitude"), coords={"latitude": lat})
    ens = xr.DataArray(np.stack([np.full((3, 2), v) for v in (1.0, 3.0)]), dims=("member", "latitude", "longitude"),
                       coords={"latitude": lat})
    ens[:, 1] = 0.0  # only the two 45-degree rows are wrong, by 2 on average
    w = area_weights(lat)
    expected = np.sqrt(4 * (w[0] + w[2]) / w.sum())
    assert float(rmse(ens, truth, w)) == pytest.approx(float(expected), rel=1e-12)
    assert float(rmse(ens.mean("member"), truth, w)) == pytest.approx(float(expected), rel=1e-12)
    assert rmse(ens.values, truth.values, w.values[:, None]) == pytest.approx(float(expected), rel=1e-12)
    # weights in another latitude order are matched by label (an xarray AlignmentError before);
    # weights for some rows only are refused, naming the rows they lack
    w = w.assign_coords(latitude=lat)
    assert float(rmse(ens, truth, w.sortby("latitude", ascending=False))) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(ValueError, match=r"weights have no value at latitude 45\.0; give one for every latitude"):
        rmse(ens, truth, w.isel(latitude=[0, 1]))


# --------------------------------------------------------------------------- weights
def test_area_weights():
    lat = np.linspace(-87.1875, 87.1875, 32)  # 64x32 WeatherBench2 grid, no poles
    w = area_weights(lat)
    assert w.mean() == pytest.approx(1.0) and np.allclose(w, w[::-1])
    assert np.allclose(area_weights(lat[::-1]), w[::-1])  # storage order does not matter
    assert np.allclose(w / w.max(), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).max(), atol=2e-3)
    poles = area_weights(np.linspace(90, -90, 721))
    assert poles.mean() == pytest.approx(1.0) and 0 < poles[0] == poles[-1] < poles[1]
    labelled = area_weights(xr.DataArray(lat, dims="latitude", coords={"latitude": lat}))
    assert labelled.dims == ("latitude",) and np.allclose(labelled.values, w)
    with pytest.raises(ValueError, match="repeat"):
        area_weights([0.0, 10.0, 10.0])
    # a regional grid's edge rows are bands of one spacing too, not bands reaching the poles
    regional = np.arange(20.0, 61.0)
    edges = np.deg2rad(np.concatenate([[19.5], regional[:-1] + 0.5, [60.5]]))
    cells = np.diff(np.sin(edges))
    np.testing.assert_allclose(area_weights(regional), cells / cells.mean(), rtol=1e-12)


# --------------------------------------------------------------------------- rank histogram
def test_rank_histogram_flat_when_calibrated_and_u_shaped_when_narrow():
    rng = np.random.default_rng(4)
    n, m = 40000, 9
    centre = rng.normal(0, 3, n)
    truth = centre + rng.standard_normal(n)
    members = centre + rng.standard_normal((m, n))
    counts = rank_histogram(members, truth)
    assert counts.shape == (m + 1,) and counts.sum() == n
    assert chisquare(counts).pvalue > 1e-3
    narrow = rank_histogram(centre + 0.4 * (members - centre), truth)
    assert narrow[0] > 2 * narrow[3:7].mean() and narrow[-1] > 2 * narrow[3:7].mean()
    # discrete data: ties broken at random keep a calibrated histogram flat
    ties = rank_histogram(np.round(members / 2), np.round(truth / 2), seed=1)
    assert chisquare(ties).pvalue > 1e-3
    assert (rank_histogram(members, truth, seed=7) == rank_histogram(members, truth, seed=7)).all()


def test_rank_histogram_skips_nan_truth_and_rejects_nan_members():
    rng = np.random.default_rng(5)
    members, truth = rng.standard_normal((4, 50)), rng.standard_normal(50)
    truth[:10] = np.nan
    assert rank_histogram(members, truth).sum() == 40
    members[0, 20] = np.nan
    with pytest.raises(ValueError, match="NaN at 1 points where the truth is finite"):
        rank_histogram(members, truth)


# --------------------------------------------------------------------------- zonal spectrum
@pytest.mark.parametrize("n_lon", [64, 45])
def test_zonal_spectrum_of_a_cosine_and_parseval(n_lon):
    lon = np.arange(n_lon) * 360.0 / n_lon
    lat = np.array([-60.0, -30.0, 0.0, 30.0, 60.0])
    wave = 3.0 * np.cos(np.deg2rad(lon) * 5 + 0.3)
    field = xr.DataArray(np.tile(wave, (5, 1)), dims=("latitude", "longitude"),
                         coords={"latitude": lat, "longitude": lon}, attrs={"units": "K"})
    spectrum = zonal_power_spectrum(field)
    assert int(spectrum.argmax("zonal_wavenumber")) == 5
    assert float(spectrum.sum()) == pytest.approx(4.5)  # mean square of 3 cos
    assert spectrum.sizes["zonal_wavenumber"] == n_lon // 2 + 1 and spectrum.attrs["units"] == "K^2"
    noise = field.copy(data=np.random.default_rng(6).standard_normal(field.shape))
    per_circle = zonal_power_spectrum(noise.expand_dims(circle=1), lat_band=(0, 0)).sum("zonal_wavenumber")
    assert per_circle.dims == ("circle",)  # other dims are kept
    assert float(per_circle[0]) == pytest.approx(float((noise.sel(latitude=0) ** 2).mean()))
    energy = zonal_power_spectrum(field, lat_band=(0, 0), energy=True)
    assert float(energy.sum()) == pytest.approx(4.5 * 2 * np.pi * 6371e3)
    assert float(spectrum.wavelength_km[5]) == pytest.approx(
        2 * np.pi * 6371 * np.cos(np.deg2rad(lat)).mean() / 5)
    masked = field.copy()
    masked[0, 3] = np.nan  # a masked circle leaves the average
    assert float(zonal_power_spectrum(masked).sum()) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="full circle"):
        zonal_power_spectrum(field.isel(longitude=slice(0, 10)))


# --------------------------------------------------------------------------- summaries
def _grf(rng, shape, alpha=3.0):
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape[-2:]], indexing="ij")))
    amplitude = np.where(k > 0, k, np.inf) ** (-alpha / 2)
    return np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * amplitude)) * 10


def _ensemble(values, units="m/s"):
    return xr.Dataset({"u": (("case", "member", "x", "y"), values, {"units": units})},
                      coords={"case": np.arange(values.shape[0]), "alpha": ("case", [2.0, 3.0][:values.shape[0]])},
                      attrs={"source": "test"})


def test_summarise_statistics_and_attrs():
    rng = np.random.default_rng(7)
    ens = _ensemble(rng.standard_normal((2, 11, 4, 5)))
    ens["mask"] = (("x", "y"), np.ones((4, 5)))
    summary = summarise(ens, quantiles=(0.1, 0.5))
    assert list(summary.statistic.values) == ["mean", "std", "q0.1", "q0.5"]
    assert summary.u.dims == ("statistic", "case", "x", "y") and summary.u.attrs["units"] == "m/s"
    assert summary.attrs["source"] == "test" and summary.attrs["members_summarised"] == 11
    values = ens.u.values
    assert np.allclose(summary.u.sel(statistic="std"), values.std(axis=1, ddof=1))
    assert np.allclose(summary.u.sel(statistic="q0.5"), np.median(values, axis=1))
    assert "statistic" not in summary.mask.dims  # static fields pass through
    with pytest.raises(ValueError, match="member dim 'member'"):
        summarise(ens.isel(member=0))


def test_compare_same_distribution_and_scaled():
    rng = np.random.default_rng(8)
    shape = (2, 24, 48, 48)
    a, b = _ensemble(_grf(rng, shape)), _ensemble(_grf(rng, shape))
    same = compare(a, b)["u"]
    assert same["std_ratio"] == pytest.approx(1.0, abs=0.08)
    assert set(same["power_ratio"]) == {"low", "mid", "high"}
    assert all(band["ratio"] == pytest.approx(1.0, abs=0.25) for band in same["power_ratio"].values())
    assert same["wasserstein1_over_ref_std"] < 0.1
    doubled = compare(a * 2, a, spatial_dims=("x", "y"))["u"]
    assert doubled["std_ratio"] == pytest.approx(2.0, rel=1e-9)
    assert all(band["ratio"] == pytest.approx(4.0, rel=1e-9) for band in doubled["power_ratio"].values())
    other = compare(b * 2, a)["u"]
    assert other["std_ratio"] == pytest.approx(2.0, rel=0.08)
    assert other["wasserstein1_over_ref_std"] > 0.3
    json.dumps(other, allow_nan=False)
    bands = compare(a, b, bands={"large": (1, 4)})["u"]["power_ratio"]
    assert list(bands) == ["large"]
    # a band is whole shells: (1, 2) + (3, 4) is (1, 4), whatever the shells' mean |k|
    split = compare(a * 2, a + 0, bands={"low": (1, 2), "high": (3, 4), "all": (1, 4)})["u"]["power_ratio"]
    k, p_a = power_spectrum(a.u.values, dims=2)
    _, p_b = power_spectrum(b.u.values, dims=2)
    halves = compare(a, b, bands={"low": (1, 2), "high": (3, 4)})["u"]["power_ratio"]
    assert halves["low"]["ratio"] == pytest.approx(p_a[:2].sum() / p_b[:2].sum(), rel=1e-12)
    assert halves["high"]["ratio"] == pytest.approx(p_a[2:4].sum() / p_b[2:4].sum(), rel=1e-12)
    assert split["all"]["k_min"] == 1 and split["all"]["k_max"] == 4
    with pytest.raises(ValueError, match=r"reference lacks variables \['u'\]"):
        compare(a, b.rename(u="v"))
    # a perfect surrogate scores sqrt(1/24 + 1/24) on the mean RMSE over the spread, not 0
    assert same["mean_rmse_over_ref_spread_if_perfect"] == pytest.approx(np.sqrt(2 / 24))
    assert same["mean_rmse_over_ref_spread"] == pytest.approx(np.sqrt(2 / 24), rel=0.2)
    # the reference must be at the same parameters, case by case
    with pytest.raises(ValueError, match=r"different 'alpha' per case \(\[2\.0, 3\.0\] vs \[3\.0, 2\.0\]\)"):
        compare(a, b.assign_coords(alpha=("case", [3.0, 2.0])))
    # an ensemble store as sciddpm writes it carries a bool "done" flag per member: not a field
    store = a.assign(done=(("case", "member"), np.ones((2, 24), dtype=bool)))
    assert set(compare(store, b)) == {"u"}
    summary = summarise(store)
    assert "done" not in summary and "member" not in summary.dims and set(summary.data_vars) == {"u"}
    killed = (store["case"] == 0) & (store["member"] >= 20)  # a run killed with case 0 unfinished
    partial = store.assign(done=store["done"].where(~killed, False))
    with pytest.raises(ValueError, match=r"holds 44 of 48 members .* running the same `sciddpm sample --cases` command"):
        summarise(partial)
    with pytest.raises(ValueError, match=r"holds 44 of 48 members"):
        compare(partial, b)
    complete = summarise(partial.isel(case=partial.done.all("member").values))  # the way out it names
    assert complete.sizes["case"] == 1 and np.isfinite(complete["u"].values).all()


# --------------------------------------------------------------------------- climate evaluation
def _climate(rng, lead_dims, shape, lat, lon):
    """(longitude, latitude) fields: a latitude-dependent mean plus smooth anomalies."""
    mean = 288.0 - 40.0 * np.sin(np.deg2rad(lat)) ** 2
    anomaly = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(lead_dims + shape))
                                   * np.exp(-0.02 * (np.fft.fftfreq(shape[0], 1 / shape[0])[:, None] ** 2
                                                     + np.fft.fftfreq(shape[1], 1 / shape[1])[None] ** 2))))
    return mean + 30 * anomaly


def test_score_climate_ensemble_on_a_64x32_store(tmp_path):
    rng = np.random.default_rng(9)
    lon, lat = np.arange(64) * 5.625, np.linspace(-87.1875, 87.1875, 32)
    cases, members = 2, 6
    coords = {"longitude": lon, "latitude": lat, "level": [500, 850]}

    def dataset(lead, lead_dims):
        t2m = _climate(rng, lead, (64, 32), lat, lon)
        temp = np.stack([_climate(rng, lead, (64, 32), lat, lon) - 60, _climate(rng, lead, (64, 32), lat, lon)],
                        axis=len(lead))
        return xr.Dataset({"2m_temperature": ((*lead_dims, "longitude", "latitude"), t2m, {"units": "K"}),
                           "temperature": ((*lead_dims, "level", "longitude", "latitude"), temp, {"units": "K"})},
                          coords=coords)

    truth = dataset((cases,), ("case",))
    ens = dataset((cases, members), ("case", "member"))
    truth["2m_temperature"][:, :5, :3] = np.nan  # a masked corner stays grey and out of the scores
    ens["2m_temperature"][:, :, :5, :3] = np.nan
    clim = ens + 5.0
    result = score_climate_ensemble(ens, truth, clim, tmp_path)
    channels = result["scores"]["channels"]
    assert set(channels) == {"2m_temperature", "temperature@500", "temperature@850"}
    for entry in channels.values():
        for key in ("rmse", "crps", "spread_skill"):
            assert np.isfinite(entry[key]) and np.isfinite(entry["climatology"][key])
        assert len(entry["rank_histogram"]) == members + 1 and entry["units"] == "K"
        assert entry["crps_skill_score"] > 0  # climatology here is the same ensemble shifted by 5 K
    json.dumps(result["scores"], allow_nan=False)
    names = sorted(p.name for p in result["files"])
    assert names == ["maps_2m_temperature.png", "maps_temperature.png", "rank_histogram.png", "zonal_spectra.png"]
    for path in result["files"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 15000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(ValueError, match=r"truth lacks variables \['temperature'\]"):
        score_climate_ensemble(ens, truth[["2m_temperature"]], None, tmp_path)


def test_maps_put_north_up_for_any_storage_order():
    lat, lon = np.array([60.0, 0.0, -60.0]), np.array([0.0, 120.0, 240.0])
    field = xr.DataArray(np.broadcast_to(lat[None, :], (3, 3)), dims=("longitude", "latitude"),
                         coords={"latitude": lat, "longitude": lon})
    values, extent = _north_up(field, "latitude", "longitude")
    assert values[:, 0].tolist() == [-60.0, 0.0, 60.0]  # row 0 is drawn at the bottom (origin="lower")
    assert extent == [-60.0, 300.0, -90.0, 90.0]
