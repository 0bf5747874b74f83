"""Volumes: Gaussian random fields (exact spectrum), the Gray-Scott solver, the volume adapter."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import xarray as xr

from sciddpm.data import DataSpec, adapter_from_spec, build_adapter, grf, gray_scott
from sciddpm.metrics.spectra import power_spectrum, spectral_slope
from sciddpm.testing import assert_roundtrip


# ----------------------------------------------------------------------------- random fields
def test_grf_matches_the_documented_fft_definition():
    shape = (6, 7, 8)  # odd and even sizes: the Nyquist planes keep their weight
    white = np.random.default_rng(1).standard_normal(shape)
    expected = np.fft.ifftn(np.fft.fftn(white) * np.sqrt(grf.grf_power(shape, 2.0)))
    got = grf.gaussian_random_field(shape, 2.0, np.random.default_rng(1))
    assert np.abs(expected.imag).max() < 1e-12  # real by symmetry, nothing discarded
    np.testing.assert_allclose(got, expected.real, atol=1e-12)
    power = grf.grf_power(shape, 2.0)
    assert power.flat[0] == 0 and power.mean() == pytest.approx(1.0)
    k = grf.wavenumber(shape)
    np.testing.assert_allclose(power[k > 0] * k[k > 0] ** 2.0, power[k > 0][0] * k[k > 0][0] ** 2.0)


def _shell_power(values: np.ndarray, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` (per mode) and mode count in the shells power_spectrum uses."""
    shell = np.rint(grf.wavenumber(shape)).astype(int).ravel()
    k_max = min(shape) // 2
    counts = np.bincount(shell, minlength=k_max + 1)[1:k_max + 1]
    return np.bincount(shell, weights=values.ravel(), minlength=k_max + 1)[1:k_max + 1] / counts, counts


@pytest.mark.parametrize("alpha", [1.5, 2.5, 3.5])
def test_grf_spectrum_slope_and_variance_within_sampling_error(alpha):
    shape, m = (16, 16, 16), 48
    rng = np.random.default_rng(7)
    fields = np.stack([grf.gaussian_random_field(shape, alpha, rng) for _ in range(m)])
    k, p = power_spectrum(fields, dims=3)
    truth = grf.grf_power(shape, alpha)
    p_true, counts = _shell_power(truth / truth.size, shape)
    # the convention: the expected spectrum has slope -alpha, made slightly steeper by averaging
    # k^-alpha over integer shells (most in the k = 1 shell: |n| = 1 and sqrt(2)), 0.02-0.11 at 16^3
    expected_slope = spectral_slope(k, p_true)
    assert -alpha - 0.12 < expected_slope < -alpha
    # sampling error: a shell mean of |F|^2 over `count` modes of m real fields has relative
    # variance 2 / (m * count) (conjugate pairs are one mode); propagate through least squares
    x = np.log(k)
    weights = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    slope_sd = np.sqrt((weights**2 * 2.0 / (m * counts)).sum())
    assert abs(spectral_slope(k, p) - expected_slope) < 4 * slope_sd, (spectral_slope(k, p), slope_sd)
    # unit ensemble variance: Var(mean square of one field) = 2 sum(S^2) / N^2 exactly
    ms = (fields**2).mean(axis=(1, 2, 3))
    assert abs(ms.mean() - 1.0) < 4 * np.sqrt(2 * (truth**2).sum() / truth.size**2 / m)
    np.testing.assert_allclose(fields.mean(axis=(1, 2, 3)), 0.0, atol=1e-12)  # k = 0 removed


def test_grf_dataset_is_deterministic_and_field_i_independent_of_the_block():
    alpha = grf.grf_alphas(5, 1.5, 3.5, seed=3)
    whole = grf.grf_block(0, 5, {"alpha": alpha}, size=8, seed=3)["field"]
    part = grf.grf_block(3, 5, {"alpha": alpha[3:]}, size=8, seed=3)["field"]
    np.testing.assert_array_equal(whole[3:], part)
    np.testing.assert_array_equal(grf.grf_alphas(3, 1.5, 3.5, seed=3), alpha[:3])
    assert not np.array_equal(grf.grf_block(0, 2, {"alpha": alpha[:2]}, size=8, seed=4)["field"], whole[:2])
    assert np.all((alpha >= 1.5) & (alpha <= 3.5))
    with pytest.raises(TypeError, match="known: .*alpha_max"):
        grf.grf_params(sample=3)


def test_store_build_in_spawned_workers_equals_in_process_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIDDPM_CACHE", str(tmp_path / "cache"))
    serial = grf.write_grf_store(tmp_path / "serial.zarr", workers=1, samples=grf.BLOCK + 6, size=4)
    parallel = grf.ensure_grf_store(workers=2, samples=grf.BLOCK + 6, size=4)  # two blocks, two processes
    a, b = (xr.open_zarr(p, consolidated=False, chunks=None) for p in (serial, parallel))
    xr.testing.assert_identical(a.load(), b.load())
    assert a["field"].dims == ("sample", "z", "y", "x") and a["alpha"].attrs["units"] == "1"
    assert a["z"].attrs["units"] == "1" and a["field"].encoding["chunks"] == (1, 4, 4, 4)
    stamp = (parallel / "zarr.json").stat().st_mtime_ns
    assert grf.ensure_grf_store(workers=2, samples=grf.BLOCK + 6, size=4) == parallel
    assert (parallel / "zarr.json").stat().st_mtime_ns == stamp  # used, not rebuilt
    leftovers = [p.name for p in parallel.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []  # no temporaries (the builders' empty lock files stay)


# ----------------------------------------------------------------------------- Gray-Scott
def test_gray_scott_homogeneous_state_is_a_fixed_point():
    n = 3
    ones, zeros = np.ones((n, 8, 8, 8)), np.zeros((n, 8, 8, 8))
    u, v = gray_scott.simulate_batch([0.03, 0.04, 0.05], [0.06, 0.062, 0.064], [0, 1, 2], size=8, steps=50,
                                     dtype=torch.float64, initial=(ones, zeros))
    np.testing.assert_array_equal(u, ones)
    np.testing.assert_array_equal(v, zeros)


def test_gray_scott_mass_balance_holds_every_step():
    u0, v0 = gray_scott.initial_state(10, seed=5)
    F, k, dt = 0.035, 0.061, 0.6
    u, v = u0[None], v0[None]
    for _ in range(3):
        before = (u.mean(), v.mean())
        u, v = gray_scott.simulate_batch([F], [k], [0], size=10, steps=1, dt=dt, dtype=torch.float64, initial=(u, v))
        # the Laplacian sums to zero on a periodic grid and the u v^2 terms cancel
        change = (u.mean() + v.mean()) - (before[0] + before[1])
        assert change == pytest.approx(dt * (F * (1 - before[0]) - (F + k) * before[1]), abs=1e-14)


def test_gray_scott_diffusion_matches_the_discrete_eigenvalue():
    size, m, steps, dt = 12, 2, 40, 0.7
    z = np.arange(size)
    u0 = np.broadcast_to((1 + 0.1 * np.cos(2 * np.pi * m * z / size))[:, None, None], (size,) * 3)[None]
    u, v = gray_scott.simulate_batch([0.0], [0.0], [0], size=size, steps=steps, dt=dt, dtype=torch.float64,
                                     initial=(u0, np.zeros_like(u0)))
    factor = (1 - dt * gray_scott.DU * 4 * np.sin(np.pi * m / size) ** 2) ** steps
    np.testing.assert_allclose(u, 1 + (u0 - 1) * factor, atol=1e-13)
    assert not v.any()


def test_gray_scott_is_first_order_in_time():
    end, size = 30.0, 10
    runs = {dt: gray_scott.simulate_batch([0.035], [0.061], [2], size=size, steps=round(end / dt), dt=dt,
                                          dtype=torch.float64)[1] for dt in (0.6, 0.3, 0.15)}
    ratio = np.abs(runs[0.6] - runs[0.3]).max() / np.abs(runs[0.3] - runs[0.15]).max()
    assert 1.7 < ratio < 2.3, ratio  # halving dt halves the error


def test_gray_scott_refuses_an_unstable_step_and_labels_its_output():
    with pytest.raises(ValueError, match="stable range"):
        gray_scott.simulate(0.04, 0.06, size=8, steps=1, dt=1.0)
    ds = gray_scott.simulate(0.04, 0.06, size=8, steps=20, seed=1)
    assert ds["u"].dims == ("z", "y", "x") and float(ds["F"]) == 0.04 and ds["k"].attrs["units"] == "1"
    again = gray_scott.simulate(0.04, 0.06, size=8, steps=20, seed=1)
    xr.testing.assert_identical(ds, again)
    assert not np.array_equal(ds["v"], gray_scott.simulate(0.04, 0.06, size=8, steps=20, seed=2)["v"])


# ----------------------------------------------------------------------------- the adapter
@pytest.fixture(scope="module")
def grf_adapter(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCIDDPM_CACHE", str(tmp_path_factory.mktemp("cache")))
        adapter = build_adapter("volume", build={"samples": 40, "size": 8}, workers=1)
        adapter.spec()
        yield adapter


def test_spec_declares_periodic_padding_conditioning_and_statistics(grf_adapter):
    spec = grf_adapter.spec()
    assert (spec.dims, spec.channels, spec.shape) == (3, ["field"], [8, 8, 8])
    assert spec.padding == ["circular"] * 3
    alpha = spec.cond["alpha"]
    assert alpha.units == "1" and 1.5 <= alpha.min < alpha.max <= 3.5
    assert abs(spec.normaliser.mean[0]) < 0.1 and 0.5 < spec.normaliser.std[0] < 1.5
    assert DataSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()


def test_items_are_lazy_picklable_and_normalised(grf_adapter):
    items = grf_adapter.dataset("train")
    assert items._store is None  # nothing opened until the first item
    item = items[0]
    assert item["x"].shape == (1, 8, 8, 8) and item["x"].dtype == torch.float32 and item["cond"].shape == (1,)
    clone = pickle.loads(pickle.dumps(items))
    assert clone._store is None
    torch.testing.assert_close(clone[0]["x"], item["x"])
    store = xr.open_zarr(items.path, consolidated=False, chunks=None)
    raw = store["field"].isel(sample=int(items.indices[0])).values
    spec = grf_adapter.spec()
    np.testing.assert_allclose(item["x"][0].numpy(), (raw - spec.normaliser.mean[0]) / spec.normaliser.std[0],
                               rtol=1e-5, atol=1e-6)
    assert len(items) + len(grf_adapter.dataset("val")) == 40


def test_roundtrip_with_and_without_data(grf_adapter):
    ds, cond = grf_adapter.heldout(3, seed=1)
    assert ds["field"].dims == ("member", "z", "y", "x") and ds["alpha"].dims == ("member",)
    assert ds["z"].attrs["units"] == "1" and ds["field"].attrs["long_name"].startswith("Gaussian")
    assert_roundtrip(grf_adapter, ds, cond)
    bare = adapter_from_spec(DataSpec.from_dict(grf_adapter.spec().to_dict()))  # no data files
    assert_roundtrip(bare, ds, cond)
    shared = bare.to_xarray(bare.to_tensor(ds), {"alpha": 2.5})  # one value: a scalar coordinate
    assert shared["alpha"].dims == () and float(shared["alpha"]) == 2.5
    np.testing.assert_array_equal(bare.cond_from_xarray(ds)["alpha"], cond["alpha"])


def test_a_spec_whose_shape_disagrees_with_its_coordinates_is_refused(grf_adapter):
    edited = grf_adapter.spec().to_dict()
    edited["shape"] = [4, 8, 8]  # a hand-edited data_spec.json: sampling would fail when labelling
    with pytest.raises(ValueError, match=r"gives 'z' 4 points but its output coordinate has 8"):
        adapter_from_spec(edited)


def test_write_zarr_and_png_and_refuse_nan(grf_adapter, tmp_path):
    ds, cond = grf_adapter.heldout(2)
    paths = grf_adapter.write(ds, tmp_path / "ens.zarr")
    assert [p.name for p in paths] == ["ens.zarr", "ens_slices.png"]
    xr.testing.assert_identical(xr.open_zarr(paths[0], consolidated=False, chunks=None).load(),
                                ds.assign_attrs(written_by="sciddpm write_store"))
    assert paths[1].read_bytes()[:4] == b"\x89PNG"
    # netCDF too, although the store's attrs hold booleans (periodic), which netCDF cannot
    nc = grf_adapter.write(ds, tmp_path / "netcdf" / "ens.nc")[0]  # not beside ens.zarr: they would share ens_slices.png
    written = xr.open_dataset(nc).load()
    np.testing.assert_array_equal(written["field"].values, ds["field"].values)
    np.testing.assert_array_equal(written.attrs["periodic"], [1, 1, 1])
    for name in ("ens.nc4", "ens.NC", "ens.h5"):  # other netCDF names were folders holding samples.zarr
        path = grf_adapter.write(ds, tmp_path / name.replace(".", "_") / name)[0]
        assert path.is_file() and np.array_equal(xr.open_dataset(path).load()["field"].values, ds["field"].values)
    bad = ds.copy(deep=True)
    bad["field"][1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf at \\[1, 2, 3, 4\\]"):
        grf_adapter.write(bad, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()
    metrics = grf_adapter.evaluate(ds, ds, cond, tmp_path)
    assert "caveat" not in metrics["spectral_slope"]  # periodic, equally spaced: the slope means what it says
    slope = metrics["spectral_slope"]["field"]
    assert slope["samples_mean"] == slope["heldout_mean"] < 0 and metrics["files"]


@pytest.fixture
def custom_store(tmp_path):
    """A store in another layout: dims (run, k, j, i), two fields, a variable and an attribute as parameters."""
    rng = np.random.default_rng(0)
    n = 12
    mass = np.exp(rng.uniform(0, 2, n))
    ds = xr.Dataset(
        {"rho": (("run", "k", "j", "i"), rng.standard_normal((n, 4, 5, 6)).astype(np.float32),
                 {"units": "kg m-3", "long_name": "density"}),
         "temp": (("run", "i", "j", "k"), 300 + rng.standard_normal((n, 6, 5, 4)), {"units": "K"}),
         "mass": ("run", mass, {"units": "Msun", "long_name": "halo mass"})},
        coords={"k": ("k", np.linspace(0, 1, 4), {"units": "Mpc"}), "i": ("i", np.arange(6.0), {"units": "Mpc"})},
        attrs={"box": 50.0, "box_units": "Mpc", "code": "toy", "seed": 3})
    return ds


def test_statistics_of_a_field_far_from_zero_keep_its_fluctuations(custom_store, tmp_path):
    # 1e5 Pa +- 1e-4 Pa: E[x^2] - E[x]^2 lost it all (std 14x too large, or "std 0" at 1e-3)
    common = {"source": "store", "dims": ["k", "j", "i"], "sample_dim": "run", "params": ["mass"]}
    for amplitude in (1e-2, 1e-3, 1e-4):
        ds = custom_store.copy(deep=True)
        ds["temp"].values[:] = 1e5 + amplitude * np.random.default_rng(1).standard_normal(ds["temp"].shape)
        path = tmp_path / f"offset{amplitude}.zarr"
        ds.to_zarr(path, consolidated=False)
        adapter = build_adapter("volume", path=str(path), fields=["temp"], stats_samples=1000, **common)
        train = adapter.dataset("train")
        truth = np.stack([train.raw(i) for i in range(len(train))]).std()
        assert adapter.spec().normaliser.std[0] == pytest.approx(truth, rel=1e-6)
    ds["temp"].values[:] = 1e5  # constant: named by its field, not by a channel number
    ds.to_zarr(tmp_path / "constant.zarr", consolidated=False)
    with pytest.raises(ValueError, match=r"channel 'temp' has std 0 in the training data"):
        build_adapter("volume", path=str(tmp_path / "constant.zarr"), fields=["temp"], **common).spec()


@pytest.mark.parametrize("suffix", [".zarr", ".nc", ".h5"])
def test_store_source_reads_any_layout(custom_store, tmp_path, suffix):
    path = tmp_path / f"sims{suffix}"
    if suffix == ".zarr":
        custom_store.to_zarr(path, consolidated=False)
    else:
        custom_store.to_netcdf(path)  # netCDF-4, i.e. HDF5 underneath
    adapter = build_adapter("volume", source="store", path=str(path), fields=["rho", "temp"], params=["mass", "box"],
                            features={"mass": "log"}, dims=["k", "j", "i"], sample_dim="run",
                            periodic=[True, False, True], val_fraction=0.25)
    spec = adapter.spec()
    assert spec.shape == [4, 5, 6] and spec.padding == ["circular", "zeros", "circular"]
    assert spec.cond["mass"].units == "Msun" and spec.cond["mass"].feature == "log"
    assert spec.cond["box"].units == "Mpc" and spec.cond["box"].min == spec.cond["box"].max == 50.0
    assert spec.normaliser.mean[1] == pytest.approx(300, abs=0.5)
    item = adapter.dataset("val")[0]
    assert item["x"].shape == (2, 4, 5, 6) and item["cond"].shape == (2,)
    ds, cond = adapter.heldout(2)
    assert ds["temp"].dims == ("member", "k", "j", "i") and ds["temp"].attrs == {"units": "K"}
    assert ds["k"].attrs == {"units": "Mpc"} and "j" not in ds.coords and ds.attrs["code"] == "toy"
    assert (ds["temp"].dtype, ds["rho"].dtype) == (np.float64, np.float32)  # each field in its store's precision
    for member, mass in enumerate(cond["mass"]):  # held-out truth is the store's, to float64 rounding
        run = int(np.flatnonzero(custom_store["mass"].values == mass)[0])
        truth = custom_store["temp"].isel(run=run).transpose("k", "j", "i").values
        np.testing.assert_allclose(ds["temp"].isel(member=member).values, truth, rtol=1e-12)
    assert_roundtrip(adapter, ds, cond)
    items, spec = adapter.dataset("train"), adapter.spec()  # a batch is read at once, any order, repeats
    batch = items.__getitems__([2, 0, 2])
    for i, item in zip([2, 0, 2], batch):
        run = int(items.indices[i])
        for c, name in enumerate(["rho", "temp"]):
            truth = custom_store[name].isel(run=run).transpose("k", "j", "i").values
            z = (truth - spec.normaliser.mean[c]) / spec.normaliser.std[c]
            np.testing.assert_allclose(item["x"][c].numpy(), z, rtol=1e-5, atol=1e-5)
    caveat = adapter.evaluate(ds, ds, cond, tmp_path / "eval")["spectral_slope"]["caveat"]
    assert "axes ['j'] are not periodic" in caveat and "grid spacings differ (k: 0.333333, i: 1)" in caveat


@pytest.mark.parametrize("declared, padding", [([1, 0, 1], ["circular", "zeros", "circular"]),
                                               (1, ["circular"] * 3), ([True, True, False], ["circular"] * 2 + ["zeros"])])
def test_store_declares_periodicity_the_way_netcdf_can(custom_store, tmp_path, declared, padding):
    # netCDF has no boolean attributes: a store says periodic = 0/1 per axis (int8 on disk)
    path = tmp_path / "sims.nc"
    custom_store.assign_attrs(periodic=np.asarray(declared, dtype=np.int8)).to_netcdf(path)
    adapter = build_adapter("volume", source="store", path=str(path), fields=["rho"], params=["mass"],
                            dims=["k", "j", "i"], sample_dim="run")
    assert adapter.spec().padding == padding
    # the attribute is per axis of the store's own dims (k, j, i), whatever order dims= asks for
    # (it was read in the order of dims=, so the padding went to the wrong axes)
    reversed_dims = build_adapter("volume", source="store", path=str(path), fields=["rho"], params=["mass"],
                                  dims=["i", "j", "k"], sample_dim="run")
    assert reversed_dims.spec().padding == padding[::-1]
    # ... and the samples' attribute is per axis of their dims, as the model pads them (it was the
    # store's list, copied: retrained on, the samples put the padding on the wrong axes)
    x = torch.zeros(1, 1, *reversed_dims.spec().shape)
    samples = reversed_dims.to_xarray(x, {"mass": [1.0]})
    assert samples["rho"].dims[1:] == ("i", "j", "k")
    assert samples.attrs["periodic"] == [p == "circular" for p in padding[::-1]]
    with pytest.raises(ValueError, match=r"periodic must be a bool \(or 0/1\) or one per axis"):
        build_adapter("volume", source="store", path=str(path), fields=["rho"], params=["mass"],
                      dims=["k", "j", "i"], sample_dim="run", periodic=[1, 2, 1]).spec()


def test_store_errors_name_the_fix(custom_store, tmp_path):
    path = tmp_path / "sims.zarr"
    custom_store.to_zarr(path, consolidated=False)
    common = {"source": "store", "path": str(path), "dims": ["k", "j", "i"], "sample_dim": "run"}
    with pytest.raises(ValueError, match=r"no field\(s\) \['pressure'\].*\['rho', 'temp'\]"):
        build_adapter("volume", fields=["pressure"], params=["mass"], **common).spec()
    with pytest.raises(ValueError, match=r"no parameter 'redshift'.*\['mass'\].*'box'"):
        build_adapter("volume", fields=["rho"], params=["redshift"], **common).spec()
    with pytest.raises(ValueError, match="has no 'seed_units' attribute; pass units="):
        build_adapter("volume", fields=["rho"], params=["seed"], **common).spec()
    with pytest.raises(ValueError, match="field 'rho' has dims .*sample_dim= and dims="):
        build_adapter("volume", source="store", path=str(path), fields=["rho"], params=[]).spec()
    with pytest.raises(ValueError, match=r"no variable is over the dims \['z', 'y', 'x'\].*rho \('run', 'k', 'j', 'i'\)"
                                         r".*name the store's dims with dims=\[...\] and sample_dim="):
        build_adapter("volume", source="store", path=str(path), params=[]).spec()
    with pytest.raises(FileNotFoundError, match="no volume store"):
        build_adapter("volume", source="store", path=str(tmp_path / "missing.zarr")).spec()
    with pytest.raises(ValueError, match="needs path="):
        build_adapter("volume", source="store")
    with pytest.raises(ValueError, match="unknown volume source 'hdf'"):
        build_adapter("volume", source="hdf")
    bare = adapter_from_spec(build_adapter("volume", fields=["rho"], params=["mass"], **common).spec())
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['rho'\]"):
        bare.to_tensor(xr.Dataset({"density": (("member", "k", "j", "i"), np.zeros((1, 4, 5, 6)))}))


# ----------------------------------------------------------------------------- surrogate ensembles
def test_cases_csv_ensemble_store_for_a_volume_model(tmp_path, monkeypatch):
    # `sciddpm sample --cases` on a 3-D model, the surrogate-ensemble path: the store holds
    # exactly Model.ensemble's members, in the adapter's units and dims. (It used to fail for
    # volumes: sampling ran with autograd on, and the adapter refused tensors that need grad.)
    from sciddpm.cli import main

    import sciddpm

    monkeypatch.setenv("SCIDDPM_CACHE", str(tmp_path / "cache"))
    assert main(["train", "data=volume_grf", "data.kwargs.build.samples=24", "data.kwargs.build.size=8",
                 "model.kwargs.channels=8", "model.kwargs.channel_mult=[1,2]", "model.kwargs.attention_levels=[]",
                 "model.kwargs.mid_attention=false", "model.kwargs.norm_groups=4", "trainer=quick",
                 "trainer.steps=4", "trainer.batch_size=4", "trainer.log_every=2", "trainer.checkpoint_every=4",
                 "trainer.device=cpu", f"runs_dir={tmp_path / 'runs'}", "name=vol"]) == 0
    (tmp_path / "cases.csv").write_text("alpha\n2.0\n3.0\n")
    out = tmp_path / "ens.zarr"
    assert main(["sample", "model=vol", f"runs_dir={tmp_path / 'runs'}", "--cases", str(tmp_path / "cases.csv"),
                 "--members", "3", "--steps", "3", "--seed", "1", "--batch-size", "2", "--out", str(out)]) == 0
    stored = xr.open_zarr(out).load()
    expected = sciddpm.load("vol", runs_dir=tmp_path / "runs").ensemble(
        {"alpha": [2.0, 3.0]}, members=3, steps=3, seed=1, batch_size=2, progress=False)
    assert stored["field"].dims[:2] == ("case", "member") and stored["field"].shape == (2, 3, 8, 8, 8)
    np.testing.assert_array_equal(stored["alpha"].values, [2.0, 3.0])
    np.testing.assert_array_equal(stored["field"].transpose(*expected["field"].dims).values, expected["field"].values)
    expected.to_netcdf(tmp_path / "direct.nc")  # a user's own to_netcdf, attributes and all
    np.testing.assert_array_equal(xr.open_dataset(tmp_path / "direct.nc").attrs["periodic"], [1, 1, 1])


def test_own_store_preset_and_infill_of_several_samples(tmp_path, monkeypatch):
    # `data=volume_store` trains on a user's store (its relative path saved absolute); infill keeps every observed sample even when
    # the store lists its parameters (1-D along sample) before its fields, and reads from the
    # observations the conditions it is not given.
    from sciddpm.cli import main

    import sciddpm

    rng = np.random.default_rng(1)
    n = 16
    store = xr.Dataset({"mach": ("sample", rng.uniform(1, 3, n), {"units": "1"}),
                        "Re": ("sample", rng.uniform(1e3, 1e4, n), {"units": "1"}),
                        "rho": (("sample", "z", "y", "x"), rng.standard_normal((n, 8, 8, 8)), {"units": "kg m-3"})},
                       coords={"sample": np.arange(100, 100 + n)})
    store.to_zarr(tmp_path / "sims.zarr")
    monkeypatch.chdir(tmp_path)  # a relative data path is saved absolute, to be found from anywhere
    assert main(["train", "data=volume_store", "data.kwargs.path=sims.zarr",
                 "data.kwargs.params=[mach,Re]", "model.kwargs.channels=8", "model.kwargs.channel_mult=[1,2]",
                 "model.kwargs.attention_levels=[]", "model.kwargs.mid_attention=false", "model.kwargs.norm_groups=4",
                 "trainer=quick", "trainer.steps=2", "trainer.batch_size=4", "trainer.log_every=1",
                 "trainer.checkpoint_every=2", "trainer.device=cpu", f"runs_dir={tmp_path / 'runs'}", "name=sims"]) == 0
    model = sciddpm.load("sims", runs_dir=tmp_path / "runs", device="cpu")
    assert model.config["data"]["kwargs"]["path"] == str((tmp_path / "sims.zarr").resolve())
    observed = store.isel(sample=[3, 4, 5]).load()
    observed["rho"][:, 2:5, 2:5, 2:5] = np.nan
    filled = model.infill(observed, n=2, cond={"mach": 2.0}, steps=2)
    assert filled["rho"].dims == ("sample", "member", "z", "y", "x") and filled.sizes["sample"] == 3
    np.testing.assert_array_equal(filled["sample"].values, [103, 104, 105])
    np.testing.assert_array_equal(filled["mach"].values, [2.0, 2.0, 2.0])  # given
    np.testing.assert_allclose(filled["Re"].values, observed["Re"].values)  # read from the observations
    keep = np.isfinite(observed["rho"].values)
    for member in range(2):
        # float64 observations come back to float64 rounding, not via the network's float32 (1.2e-7 off)
        np.testing.assert_allclose(filled["rho"].isel(member=member).values[keep], observed["rho"].values[keep],
                                   rtol=1e-15, atol=0)
    assert np.isfinite(filled["rho"].values).all()
    with pytest.raises(ValueError, match=r"carries no condition 'Re'.*--cond Re=VALUE"):
        model.infill(observed.drop_vars("Re"), n=1, steps=2)


def test_the_spectrum_caveat_is_not_fooled_by_rounding_of_offset_coordinates(grf_adapter):
    from sciddpm.data.volume_eval import _spectrum_caveats

    spec = grf_adapter.spec().to_dict()
    for dim, offset in zip("zyx", (1e5, 2e5, 3e5)):  # e.g. UTM metres: equal spacing, large offsets
        values = np.asarray(spec["output"]["coords"][dim]["values"]) * 0.1 + offset
        spec["output"]["coords"][dim]["values"] = values.tolist()
    assert _spectrum_caveats(DataSpec.from_dict(spec)) is None
    spec["output"]["coords"]["x"]["values"] = (np.arange(8) * 0.2).tolist()
    assert "grid spacings differ" in _spectrum_caveats(DataSpec.from_dict(spec))


def test_a_sample_with_nan_is_named_when_it_is_read(custom_store, tmp_path):
    broken = custom_store.copy(deep=True)
    broken["temp"][5, 1, 2, 3] = np.nan
    broken.to_zarr(tmp_path / "sims.zarr")
    adapter = build_adapter("volume", source="store", path=str(tmp_path / "sims.zarr"), fields=["rho", "temp"],
                            params=["mass"], dims=["k", "j", "i"], sample_dim="run", val_fraction=0.25,
                            stats_samples=64)
    with pytest.raises(ValueError, match=r"sims\.zarr: sample 5 of \['temp'\] holds NaN/Inf; volumes must be finite"):
        adapter.spec()  # the statistics pass reads every training sample (64 >= 9) and names the bad one
