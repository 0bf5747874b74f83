"""Climate end to end on a tiny synthetic store with SST (NaN over land) and static inputs: training
has a finite loss, samples are NaN exactly over land and nowhere else, static fields travel in the
weights, ``--infill`` keeps the observed values and fills the gap, ``--out x.zarr`` keeps the
source's names, units and layout."""

import json
import re
import shutil

import numpy as np
import pytest
import xarray as xr

import sciddpm
from sciddpm.cli import main
from sciddpm.data.era5_synthetic import write_synthetic
from sciddpm.runs import RunDir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("climate")
    store = write_synthetic(root / "sst.zarr", variables=["2m_temperature", "sea_surface_temperature"],
                            start="2018-01-01", stop="2019-12-31", hours=24, seed=3)
    overrides = ["data=climate_era5", f"data.kwargs.path={store}",
                 "data.kwargs.variables=[2m_temperature,sea_surface_temperature]", "data.kwargs.stats_samples=64",
                 "model.kwargs.channels=8", "model.kwargs.channel_mult=[1,2]", "model.kwargs.attention_levels=[]",
                 "model.kwargs.norm_groups=4", "trainer=quick", "trainer.steps=6", "trainer.batch_size=4",
                 "trainer.log_every=2", "trainer.checkpoint_every=6", "trainer.device=cpu",
                 f"runs_dir={root / 'runs'}", "name=sst"]
    assert main(["train", *overrides]) == 0
    return root


@pytest.fixture(scope="module")
def land(run):
    source = xr.open_zarr(run / "sst.zarr")
    return source["land_sea_mask"].values > 0.5, source


def test_training_with_nan_over_land_has_finite_loss(run):
    records = RunDir(run / "runs" / "sst").read_metrics()
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    spec = json.loads((run / "runs" / "sst" / "data_spec.json").read_text())
    assert spec["static"] == ["land_sea_mask", "geopotential_at_surface"]


def test_samples_are_nan_exactly_over_land(run, land):
    is_land, source = land
    model = sciddpm.load("sst", runs_dir=run / "runs")
    ds = model.sample(3, {"dayofyear": 180.0}, steps=4, seed=0)
    sst = ds["sea_surface_temperature"].transpose("member", *source["land_sea_mask"].dims).values
    np.testing.assert_array_equal(np.isnan(sst), np.broadcast_to(is_land, sst.shape))
    assert np.isfinite(ds["2m_temperature"].values).all()
    assert ds["sea_surface_temperature"].attrs["units"] == "K"
    assert ds["2m_temperature"].dims == ("member", "longitude", "latitude")  # the 64x32 store's order
    # the static inputs are in the weights, and they are the store's land-sea mask (standardised)
    fields = model.denoiser.net.fields
    lsm = source["land_sea_mask"].transpose("latitude", "longitude").values[::-1]  # tensor rows: north first
    assert np.corrcoef(fields[0].numpy().ravel(), lsm.ravel())[0, 1] > 0.999


def test_infill_keeps_observations_and_fills_the_gap(run, land, tmp_path):
    is_land, source = land
    observed = source[["2m_temperature", "sea_surface_temperature"]].isel(time=[400, 500]).load()
    box = (observed.latitude > -30) & (observed.latitude < 30) & (observed.longitude > 100) & (observed.longitude < 200)
    gappy = observed.where(~box)
    gappy.to_zarr(tmp_path / "obs.zarr")
    assert main(["sample", "model=sst", f"runs_dir={run / 'runs'}", "--infill", str(tmp_path / "obs.zarr"),
                 "--n", "2", "--steps", "4", "--out", str(tmp_path / "filled.zarr")]) == 0
    filled = xr.open_zarr(tmp_path / "filled.zarr").load()
    assert filled.sizes["time"] == 2 and filled.sizes["member"] == 2
    for name in ("2m_temperature", "sea_surface_temperature"):
        out = filled[name].transpose("time", "member", ...)
        seen = gappy[name].transpose("time", ...).expand_dims(member=2, axis=1)
        keep = np.isfinite(seen.values)
        np.testing.assert_array_equal(out.values[keep], seen.values[keep])  # observations kept exactly
        gap = np.broadcast_to(box.transpose(*gappy[name].dims[1:]).values, out.shape)
        hole = gap & ~np.broadcast_to(is_land, out.shape) if name == "sea_surface_temperature" else gap
        assert np.isfinite(out.values[hole]).all()  # the gap is filled ...
    assert np.isnan(filled["sea_surface_temperature"].values[..., is_land]).all()  # ... and land stays NaN


def test_infill_keeps_every_time_when_a_static_field_comes_first(run, land, caplog):
    # CDS files carry the land-sea mask beside the fields; listed first, it must not hide the
    # time dim (infill used to return the first time only), and each time keeps its own date.
    _, source = land
    observed = source[["land_sea_mask", "2m_temperature", "sea_surface_temperature"]].isel(time=[400, 401, 402]).load()
    observed["2m_temperature"][:, :4, :4] = np.nan
    filled = sciddpm.load("sst", runs_dir=run / "runs").infill(observed, n=1, steps=2)
    assert filled["2m_temperature"].dims[:2] == ("time", "member") and filled.sizes["time"] == 3
    np.testing.assert_array_equal(filled["time"].values, observed["time"].values)
    np.testing.assert_array_equal(filled["dayofyear"].values, observed["time"].dt.dayofyear.values)
    with caplog.at_level("WARNING", logger="sciddpm"):
        sciddpm.load("sst", runs_dir=run / "runs").infill(observed, n=1, steps=2, cond={"dayofyear": 10.0})
    assert "dayofyear=10. replaces the observations' own dayofyear ([" in caplog.text  # allowed, but said
    caplog.clear()  # a dayofyear coordinate of their own is used, not silently replaced by their dates'
    with caplog.at_level("WARNING", logger="sciddpm"):
        own = sciddpm.load("sst", runs_dir=run / "runs").infill(
            observed.assign_coords(dayofyear=("time", [10.0, 20.0, 30.0])), n=1, steps=2)
    np.testing.assert_array_equal(own["dayofyear"].values, [10.0, 20.0, 30.0])
    assert "the Dataset's dayofyear coordinate ([10. 20. 30.]) is not its dates'" in caplog.text
    one = sciddpm.load("sst", runs_dir=run / "runs").infill(observed.isel(time=1), n=1, steps=2)  # ds.sel(time=...)
    assert one["time"].values == observed["time"].values[1] and one["2m_temperature"].dims[0] == "member"
    # observations laid out their own way (north first, lat before lon) come back on the store's
    # grid with each observed value where it was observed, as given
    flipped = observed.isel(latitude=slice(None, None, -1)).transpose("time", "latitude", "longitude")
    with caplog.at_level("WARNING", logger="sciddpm"):
        caplog.clear()
        again = sciddpm.load("sst", runs_dir=run / "runs").infill(flipped, n=1, steps=2)
    assert "read by position" not in caplog.text  # read by label: found where they were observed
    assert again["2m_temperature"].dims == ("time", "member", "longitude", "latitude")
    for name in ("2m_temperature", "sea_surface_temperature"):
        given = flipped[name].sel(latitude=again.latitude).transpose(*again[name].isel(member=0).dims).values
        kept = again[name].isel(member=0).values
        np.testing.assert_array_equal(kept[np.isfinite(given)], given[np.isfinite(given)])

def test_infill_refuses_observations_in_other_units_or_with_infinities(run, land, caplog):
    is_land, source = land
    observed = source[["2m_temperature", "sea_surface_temperature"]].isel(time=[400]).load()
    observed["2m_temperature"][:, :4, :4] = np.nan
    model = sciddpm.load("sst", runs_dir=run / "runs")
    celsius = observed.assign({"2m_temperature": (observed["2m_temperature"] - 273.15).assign_attrs(units="degC")})
    with pytest.raises(ValueError, match=r"'2m_temperature' is in 'degC' but the model was trained on it in 'K'; convert"):
        model.infill(celsius, n=1, steps=2)  # used to fill 0..30 "K" fields and label them K
    spelled = observed.assign({"2m_temperature": observed["2m_temperature"].assign_attrs(units=" K ")})
    assert model.infill(spelled, n=1, steps=2)["2m_temperature"].attrs["units"] == "K"  # one unit, other spacing
    infinite = observed.copy(deep=True)
    infinite["sea_surface_temperature"][0, 10, 10] = np.inf
    with pytest.raises(ValueError, match=r"the observations hold \+-inf; only NaN marks a gap"):
        model.infill(infinite, n=1, steps=2)
    with pytest.raises(ValueError, match=r"rename them first \(ds\.rename\(lon='longitude', lat='latitude'\)\)"):
        model.infill(observed.rename(latitude="lat", longitude="lon"), n=1, steps=2)
    # a 360-day calendar's dates are not the standard ones (30 December is day 360, read as 364)
    import cftime

    dated = observed.assign_coords(time=[cftime.Datetime360Day(2018, 12, 30, 12)])
    with pytest.raises(ValueError, match=r"the Dataset: time holds object values, not datetime64 \(calendar "
                                         r"'360_day'\); convert it to the standard calendar first"):
        model.infill(dated, n=1, steps=2)
    # observed values the model never generates (SST over its land mask) are said to be left out
    on_land = observed.copy(deep=True)
    on_land["sea_surface_temperature"] = on_land["sea_surface_temperature"].fillna(280.0)
    with caplog.at_level("WARNING", logger="sciddpm"):
        model.infill(on_land, n=1, steps=2)
    assert f"{int(is_land.sum())} of the {on_land['sea_surface_temperature'].size} observed values of " \
           "'sea_surface_temperature' have no place in the filled fields" in caplog.text


def test_sample_writes_zarr_in_source_units(run, tmp_path):
    out = tmp_path / "ens.zarr"
    assert main(["sample", "model=sst", f"runs_dir={run / 'runs'}", "--cond", "dayofyear=30", "--n", "2",
                 "--steps", "3", "--out", str(out)]) == 0
    ens = xr.open_zarr(out)
    assert set(ens.data_vars) == {"2m_temperature", "sea_surface_temperature"}
    assert float(ens["dayofyear"]) == 30.0 and ens.sizes["member"] == 2
    assert (tmp_path / "ens_maps.png").stat().st_size > 10_000


def test_cases_csv_writes_the_ensemble_store_of_model_ensemble(run, land, tmp_path):
    # The ensemble-store path (`sample --cases`) on a field with a land mask: the store holds
    # exactly what Model.ensemble returns, NaN exactly over land.
    is_land, source = land
    (tmp_path / "cases.csv").write_text("dayofyear\n30\n210\n")
    out = tmp_path / "ens.zarr"
    assert main(["sample", "model=sst", f"runs_dir={run / 'runs'}", "--cases", str(tmp_path / "cases.csv"),
                 "--members", "2", "--steps", "3", "--seed", "4", "--batch-size", "3", "--out", str(out)]) == 0
    stored = xr.open_zarr(out).load()
    expected = sciddpm.load("sst", runs_dir=run / "runs").ensemble({"dayofyear": [30.0, 210.0]}, members=2,
                                                                   steps=3, seed=4, batch_size=3)
    assert dict(stored.sizes)["case"] == 2 and dict(stored.sizes)["member"] == 2
    for name in ("2m_temperature", "sea_surface_temperature"):
        np.testing.assert_array_equal(stored[name].transpose(*expected[name].dims).values, expected[name].values)
    sst = stored["sea_surface_temperature"].transpose("case", "member", *source["land_sea_mask"].dims).values
    np.testing.assert_array_equal(np.isnan(sst), np.broadcast_to(is_land, sst.shape))


def test_a_run_with_an_edited_grid_is_refused_by_name(run, tmp_path):
    copy = tmp_path / "sst"
    shutil.copytree(run / "runs" / "sst", copy)
    spec = json.loads((copy / "data_spec.json").read_text())
    spec["shape"] = [spec["shape"][0] // 2, spec["shape"][1]]
    (copy / "data_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'latitude' 16 points but its output coordinate has 32"):
        sciddpm.load(copy)


def test_evaluate_scores_the_climate_ensemble_in_physical_units(run, tmp_path):
    assert main(["evaluate", "model=sst", f"runs_dir={run / 'runs'}", "--n", "4", "--steps", "2", "--cases", "2",
                 "--members", "3", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    scores = metrics["ensemble"]["physical_units"]["scores"]  # the era5 adapter's own, through the Adapter hook
    assert scores["cases"] == 2 and scores["members"] == 3
    t2m = scores["channels"]["2m_temperature"]
    assert t2m["units"] == "K" and t2m["crps"] > 0 and t2m["climatology"]["crps"] > 0
    assert t2m["crps_skill_score"] == pytest.approx(1 - t2m["crps"] / t2m["climatology"]["crps"])
    assert sum(t2m["rank_histogram"]) == sum(t2m["climatology"]["rank_histogram"]) > 0
    assert (tmp_path / "metrics.json").is_file() and list(tmp_path.glob("*.png"))
    # sea surface temperature is NaN over land in both: said, with the counts, not filled silently
    counts = re.match(r"(\d+) of (\d+) held-out and (\d+) of (\d+) sample values are missing \(NaN or infinite\); the "
                      r"spectra take them as the channel's training mean", metrics["spectra_missing_values"])
    assert counts and int(counts[1]) == int(counts[3]) > 0 and counts[2] == counts[4]


def test_observations_at_levels_the_model_does_not_take_are_said_to_be_left_out(caplog):
    # z observed at 500 and 850 hPa for a model of z@500 (and t@850, so its output has both levels
    # with z NaN at 850): the 850 hPa observations vanished from the filled fields without a word
    from sciddpm.infill import _compare_with_observations

    grid = {"level": [500, 850], "latitude": [10.0, 0.0, -10.0], "longitude": [0.0, 90.0, 180.0, 270.0]}
    z = np.arange(24.0).reshape(2, 3, 4)
    observed = xr.Dataset({"z": (("level", "latitude", "longitude"), z)}, coords=grid)
    result = observed.where(observed.level == 500).expand_dims(member=1)
    with caplog.at_level("WARNING", logger="sciddpm"):
        _compare_with_observations(result, observed)
    assert "12 of the 24 observed values of 'z' have no place in the filled fields, where the model's output has " \
           "no values (a level it was not trained on, or its static mask): every one at level 850;" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sciddpm"):
        _compare_with_observations(observed.expand_dims(member=1), observed)  # all kept: nothing to say
    assert caplog.text == ""
