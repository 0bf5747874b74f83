"""The era5 adapter on small synthetic stores in each published layout (WeatherBench2 and ARCO)."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from sciddpm.data import CondSchema, DataSpec, adapter_from_spec, build_adapter
from sciddpm.data.era5_layouts import LAYOUTS, detect_layout, open_era5_store
from sciddpm.data.era5_synthetic import anomaly_std, climatology, write_synthetic
from sciddpm.testing import assert_roundtrip

SMALL = {  # layout -> synthetic parameters: a few times each, the 0.25 deg grids with two times only
    "64x32": dict(variables=["2m_temperature", "geopotential@500", "temperature@850"],
                  start="2016-12-25", stop="2017-01-03"),
    "240x121": dict(variables=["2m_temperature", "geopotential@500", "geopotential@850"],
                    start="2016-12-31", stop="2017-01-02"),
    "1440x721": dict(variables=["2m_temperature", "geopotential@500"], static=[],
                     start="2016-01-01", stop="2016-01-01T12"),
    "arco": dict(variables=["2m_temperature", "geopotential@500"], static=[], hours=6,
                 start="2016-01-01", stop="2016-01-02", arco_pad_steps=2),
}
VAL = {"64x32": {}, "240x121": {}, "1440x721": {"val_fraction": 0.5}, "arco": {"val_fraction": 0.5}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("era5")
    return {name: write_synthetic(root / f"{name}.zarr", layout=name, **params) for name, params in SMALL.items()}


def adapter(path, variables, **kw):
    return build_adapter("era5", path=path if isinstance(path, list) else str(path), variables=variables,
                         stats_samples=16, **kw)


@pytest.mark.parametrize("layout", list(SMALL))
def test_roundtrip_keeps_the_source_layout(stores, layout):
    source = open_era5_store(str(stores[layout]))
    assert detect_layout(source) == layout
    a = adapter(stores[layout], SMALL[layout]["variables"], layout=layout, **VAL[layout])
    ds, cond = a.heldout(1)
    assert_roundtrip(a, ds, {**cond, "time": ds["time"].values})
    for name, var in ds.data_vars.items():  # the store's own dims order, latitude order and attrs
        assert var.dims == source[name].dims and var.attrs == source[name].attrs
    np.testing.assert_array_equal(ds["latitude"].values, source["latitude"].values)
    assert ds["latitude"].dtype == source["latitude"].dtype and ds["latitude"].attrs == source["latitude"].attrs
    members = a.to_xarray(a.to_tensor(ds), {"dayofyear": 10.0})
    lon = ds["longitude"]  # the same grid in the other longitude convention: the error says how to roll it
    other = ds.assign_coords(longitude=(lon + 180) % 360 - 180 if lon.max() > 180 else lon % 360).sortby("longitude")
    with pytest.raises(ValueError, match=r"not the model's .*the same longitudes in another convention: roll them "
                                         r"onto the model's with ds\.assign_coords\(longitude="):
        a.to_tensor(other)
    rolled = other.longitude % 360 if lon.min() >= 0 else (other.longitude + 180) % 360 - 180  # the fix it names
    np.testing.assert_array_equal(a.to_tensor(other.assign_coords(longitude=rolled).sortby("longitude")), a.to_tensor(ds))
    shifted = ds.assign_coords(latitude=ds["latitude"] + 0.5)  # another grid: no roll can fix it
    with pytest.raises(ValueError, match=r"not the model's .*; regrid it to the training grid first"):
        a.to_tensor(shifted)
    part = ds.isel(latitude=slice(1, -1))  # part of the grid: padded with NaN to fill, not regridded
    with pytest.raises(ValueError, match=r"not the model's .*; it covers part of the model's grid: for gap filling, "
                                         r"put it on the whole grid with NaN"):
        a.to_tensor(part)
    if "level" in ds.coords:  # levels in Pa for a model of hPa: said as such
        with pytest.raises(ValueError, match=r"has no level \d+ \(levels: .*\); its levels look like Pa"):
            a.to_tensor(ds.assign_coords(level=ds.level * 100))
        with pytest.raises(ValueError, match=r"the level coordinate is in 'Pa' but the model was trained on it in"):
            a.to_tensor(ds.assign_coords(level=(ds.level * 100).assign_attrs(units="Pa")))
    assert members["2m_temperature"].dims == ("member",) + source["2m_temperature"].dims[1:]
    assert members["dayofyear"].ndim == 0 and members["dayofyear"].attrs["units"] == "day"
    # the tensor is north-up whatever the store's order
    x = a.to_tensor(ds)[0, 0].numpy()
    truth = ds["2m_temperature"].isel(time=0).transpose("latitude", "longitude").sortby("latitude", ascending=False)
    z = (truth.values - a.spec().normaliser.mean[0]) / a.spec().normaliser.std[0]
    np.testing.assert_allclose(x, z, rtol=1e-5, atol=1e-5)


def test_geopotential_at_two_levels_shares_one_level_dim(stores):
    a = adapter(stores["240x121"], ["geopotential@850", "2m_temperature", "geopotential@500"])
    assert a.spec().channels == ["geopotential@850", "2m_temperature", "geopotential@500"]
    ds, _ = a.heldout(2)
    assert ds["geopotential"].dims == ("time", "level", "longitude", "latitude")
    assert ds["level"].values.tolist() == [500, 850] and ds["level"].attrs["units"] == "millibars"


@pytest.mark.parametrize("order", [("level", "time", "longitude", "latitude"), ("longitude", "latitude", "level", "time"),
                                   ("time", "longitude", "latitude", "level"), ("latitude", "time", "level", "longitude")])
def test_samples_take_the_store_s_dims_in_any_order(stores, tmp_path, order):
    # Samples were labelled (member, *store dims[1:]) with the array left in (level, lat, lon)
    # order: a level-first store gave 'time' for the level axis, others failed to sample at all
    src = open_era5_store(str(stores["64x32"]))[["2m_temperature", "geopotential"]].load()
    src["2m_temperature"] = src["2m_temperature"].transpose(*[d for d in order if d != "level"])
    src["geopotential"] = src["geopotential"].transpose(*order)
    src.to_zarr(tmp_path / "order.zarr")
    a = adapter(tmp_path / "order.zarr", ["2m_temperature", "geopotential@500", "geopotential@850"])
    held, _ = a.heldout(2)
    members = a.to_xarray(a.to_tensor(held), {"dayofyear": 10.0})  # the held-out fields as two members
    for name in ("2m_temperature", "geopotential"):
        assert members[name].dims == ("member", *[d for d in order if d != "time" and d in src[name].dims])
        again = members[name].rename(member="time").transpose(*held[name].dims)
        np.testing.assert_allclose(again.values, held[name].values, rtol=1e-5)
    assert members["geopotential"].sel(level=850).isel(member=0).std() > 0


def test_integer_store_variables_sample_as_float64_with_nan_at_levels_not_taken(stores, tmp_path):
    src = open_era5_store(str(stores["64x32"]))[["temperature", "geopotential"]].load()
    src["geopotential"] = src["geopotential"].round().astype("int32")  # whole numbers in the store
    src.to_zarr(tmp_path / "int.zarr")
    a = adapter(tmp_path / "int.zarr", ["geopotential@500", "temperature@850"])
    x = torch.randn(2, len(a.spec().channels), *a.spec().shape)
    ds = a.to_xarray(x, {"dayofyear": 10.0})
    z = ds["geopotential"]
    assert z.dtype == np.float64  # was int32: samples truncated, NaN cast to -2147483648
    assert np.isnan(z.sel(level=850)).all() and np.isfinite(z.sel(level=500)).all()
    assert float(np.abs(z.sel(level=500) - np.round(z.sel(level=500))).max()) > 0.1  # not truncated


def test_a_global_grid_is_circular_however_its_longitudes_are_rolled(stores, tmp_path, caplog):
    from sciddpm.data.era5_layouts import spans_the_globe

    lon = np.arange(0.0, 360.0, 5.625)
    for grid in (lon, lon - 180.0, lon[::-1], np.roll(lon, 17), (lon + 180.0) % 360.0 - 180.0):
        assert spans_the_globe(grid)  # a rolled grid used to be taken as regional (zero padding)
    assert spans_the_globe(np.arange(0.0, 360.0, 0.01, dtype=np.float32))  # float32 rounding near 360
    for grid in (lon[:40], np.random.default_rng(0).permutation(lon), lon[:1]):
        assert not spans_the_globe(grid)
    src = open_era5_store(str(stores["64x32"]))[["2m_temperature"]].load()
    rolled = src.roll(longitude=20, roll_coords=True)
    rolled.to_zarr(tmp_path / "rolled.zarr")
    assert adapter(tmp_path / "rolled.zarr", ["2m_temperature"]).spec().padding == ["zeros", "circular"]
    broken = src.assign_coords(longitude=np.where(np.arange(src.sizes["longitude"]) == 3, np.nan, src["longitude"]))
    broken.to_zarr(tmp_path / "nanlon.zarr")
    with pytest.raises(ValueError, match=r"longitude has NaN or infinite values at positions \[3\]"):
        adapter(tmp_path / "nanlon.zarr", ["2m_temperature"]).spec()
    doubled = src.isel(latitude=np.r_[0, 0, 1:src.sizes["latitude"]])
    doubled.to_zarr(tmp_path / "doubled.zarr")
    with pytest.raises(ValueError, match=r"latitude repeats a value; drop the repeated rows"):
        adapter(tmp_path / "doubled.zarr", ["2m_temperature"]).spec()
    radians = src.assign_coords(latitude=np.radians(src["latitude"]), longitude=np.radians(src["longitude"]))
    radians.to_zarr(tmp_path / "radians.zarr")
    with caplog.at_level("WARNING", logger="sciddpm"):
        adapter(tmp_path / "radians.zarr", ["2m_temperature"]).spec()
    assert "in radians? They are read as degrees" in caplog.text
    caplog.clear()
    alps = src.isel(latitude=slice(0, 4), longitude=slice(0, 4))  # a small box in degrees: no false alarm
    alps.assign_coords(latitude=[45.0, 45.25, 45.5, 45.75], longitude=[6.0, 6.25, 6.5, 6.75]).to_zarr(tmp_path / "alps.zarr")
    with caplog.at_level("WARNING", logger="sciddpm"):
        adapter(tmp_path / "alps.zarr", ["2m_temperature"]).spec()
    assert "radians" not in caplog.text


def test_a_static_field_that_changes_along_time_is_said(stores, tmp_path, caplog):
    src = open_era5_store(str(stores["64x32"]))[["2m_temperature", "land_sea_mask"]].load()
    lsm = src["land_sea_mask"].expand_dims(time=src["time"]).copy()
    lsm[-1] = 1.0 - lsm[-1]  # not time-invariant after all
    src.assign(land_sea_mask=lsm).to_zarr(tmp_path / "moving.zarr")
    with caplog.at_level("WARNING", logger="sciddpm"):
        adapter(tmp_path / "moving.zarr", ["2m_temperature"], static=["land_sea_mask"]).spec()
    assert "static field 'land_sea_mask' of" in caplog.text and "differs between its first and last time" in caplog.text
    caplog.clear()
    lsm[-1] = lsm[0]
    lsm[-2:] = np.nan  # ARCO: the time axis runs on past the data, NaN
    src.assign(land_sea_mask=lsm).to_zarr(tmp_path / "padded.zarr")
    with caplog.at_level("WARNING", logger="sciddpm"):
        adapter(tmp_path / "padded.zarr", ["2m_temperature"], static=["land_sea_mask"]).spec()
    assert "differs between" not in caplog.text
    # a CDS mask defined at its last time only (after xr.merge): that time is the mask, said; it
    # failed with "has NaN/Inf" naming neither cause nor fix
    late = lsm.copy()
    late[:] = np.nan
    late[-1] = lsm[0]
    src.assign(land_sea_mask=late).to_zarr(tmp_path / "late.zarr")
    with caplog.at_level("WARNING", logger="sciddpm"):
        spec = adapter(tmp_path / "late.zarr", ["2m_temperature"], static=["land_sea_mask"]).spec()
    assert "has NaN at its first time but not at its last; its last time is used" in caplog.text
    assert spec.static == ["land_sea_mask"]
    holes = lsm.copy()
    holes[:, :3] = np.nan  # a mask with NaN over the sea
    src.assign(land_sea_mask=holes).to_zarr(tmp_path / "holes.zarr")
    with pytest.raises(ValueError, match=r"static field 'land_sea_mask' has NaN/Inf at \d+ of its 2048 points; .* "
                                         r"ds\['land_sea_mask'\]\.fillna\(0\)\), or leave the field out of static="):
        adapter(tmp_path / "holes.zarr", ["2m_temperature"], static=["land_sea_mask"]).spec()


def test_arco_is_cut_to_its_valid_times(stores):
    a = adapter(stores["arco"], ["2m_temperature"], val_fraction=0.5)
    train, val = a.dataset("train"), a.dataset("val")
    assert len(train) + len(val) == 4  # 2016-01-01 at 6 h; the 2 padded (NaN) steps are left out
    assert "mask" not in train[0] and torch.isfinite(val[len(val) - 1]["x"]).all()


def test_a_time_range_includes_its_stop_at_the_stop_s_own_precision():
    from sciddpm.data.era5_times import time_window

    stamps = np.arange("2016-01-01", "2019-01-01", np.timedelta64(6, "h"), dtype="datetime64[ns]")
    window = lambda start, stop: [str(stamps[i])[:13] for i in np.array(time_window(xr.Dataset(), stamps, [start, stop], "s")) - [0, 1]]  # noqa: E731
    assert window("2016", "2018") == ["2016-01-01T00", "2018-12-31T18"]  # the years, whole (the stop used to be 1 January)
    assert window("2016-02", "2018-12") == ["2016-02-01T00", "2018-12-31T18"]  # the months, whole
    assert window("2018-12-30", "2018-12-31") == ["2018-12-30T00", "2018-12-31T18"]  # the days, whole
    assert window("2018-12-30T06", "2018-12-31T12") == ["2018-12-30T06", "2018-12-31T12"]  # the hours
    assert window(2017, 2017) == ["2017-01-01T00", "2017-12-31T18"]  # a YAML year is a number


def test_unknown_variable_and_level_list_what_the_store_has(stores):
    with pytest.raises(ValueError, match=r"variable '2m_temprature' is not in .*the store has: 2m_temperature, "
                                         r"geopotential.*did you mean '2m_temperature'"):
        adapter(stores["64x32"], ["2m_temprature"]).spec()
    with pytest.raises(ValueError, match=r"level 300 of 'geopotential' is not in .*levels are: 500, 850"):
        adapter(stores["64x32"], ["geopotential@300"]).spec()
    with pytest.raises(ValueError, match=r"'geopotential' has pressure levels \[500, 850\]; choose one"):
        adapter(stores["64x32"], ["geopotential"]).spec()
    with pytest.raises(ValueError, match=r"'2m_temperature' has no level dimension"):
        adapter(stores["64x32"], ["2m_temperature@500"]).spec()
    with pytest.raises(ValueError, match=r"condition 'co2' is not a scalar coordinate"):
        adapter(stores["64x32"], ["2m_temperature"], cond=["dayofyear", "co2"]).spec()


def test_stores_it_would_misread_are_refused_with_the_fix(stores, tmp_path):
    src = open_era5_store(str(stores["64x32"]))[["2m_temperature", "geopotential"]].load()

    def refused(ds, match, **kw):
        path = tmp_path / f"case{len(list(tmp_path.iterdir()))}.zarr"
        ds.to_zarr(path)
        with pytest.raises(ValueError, match=match):
            adapter(path, ["2m_temperature"], **kw).spec()

    refused(src.rename(latitude="lat", longitude="lon"), r"no 'latitude' dimension .*ds\.rename\(lat='latitude', lon='longitude'\)")
    refused(src.drop_vars("latitude"), r"'latitude' dimension has no coordinate values.*assign_coords")
    refused(src.assign_coords(time=xr.date_range("2017-01-01", periods=src.sizes["time"], freq="6h",
                                                 calendar="noleap", use_cftime=True)),
            r"time holds object values, not datetime64 \(calendar 'noleap'\).*convert_calendar")
    shuffled = src.isel(latitude=np.r_[1, 0, 2:src.sizes["latitude"]])
    refused(shuffled, r"latitude is not strictly monotonic; sort it first")
    wrapped = xr.concat([src, src.isel(longitude=[0]).assign_coords(longitude=[360.0])], dim="longitude")
    refused(wrapped, r"longitude names a meridian twice")
    broken = src.copy(deep=True)
    broken["2m_temperature"][2, 3, 4] = np.inf
    refused(broken, r"time index 2: 2m_temperature hold\(s\) \+-inf; NaN marks missing")
    mixed = src.expand_dims(expver=[1, 5], axis=1)  # old CDS: ERA5 and ERA5T along expver
    refused(mixed, r"a channel needs \(time, \[level,\] latitude, longitude\); an old-CDS file .*"
                   r"ds\.sel\(expver=1\)\.combine_first\(ds\.sel\(expver=5\)\)")
    times = src["time"].values.copy()
    times[5] = times[4]
    refused(src.assign_coords(time=times), r"the time coordinate of .* repeats a time; drop the repeats")
    times[5] = np.datetime64("NaT")
    refused(src.assign_coords(time=times), r"time coordinate .* 1 missing value\(s\) \(NaT\) at positions \[5\]")
    labelled = src.assign(co2=("time", np.array(["low", "high"] * (src.sizes["time"] // 2), dtype=object)))
    refused(labelled, r"condition 'co2' in .* holds .* values, not numbers", cond=["dayofyear", "co2"],
            units={"co2": "ppm"})
    gappy = src.assign(co2=("time", np.where(np.arange(src.sizes["time"]) == 3, np.nan, 400.0), {"units": "ppm"}))
    refused(gappy, r"condition 'co2' in .* is NaN or infinite at 2016-12-25T18:00:00 \(1 value\(s\) among the "
                   r"times used\)", cond=["dayofyear", "co2"])
    gappy.to_zarr(tmp_path / "later_co2.zarr")  # a forcing series that starts after the store: cut off, accepted
    later = adapter(tmp_path / "later_co2.zarr", ["2m_temperature"], cond=["dayofyear", "co2"],
                    time_range=["2016-12-26", "2017-01-03"])
    assert later.spec().cond["co2"].min == 400.0 and len(later.dataset("train")) > 0
    with pytest.raises(ValueError, match=r"has 0 time\(s\) in time_range \['1990', '1991'\] \(1990-01-01T00:00:00\.000000000 "
                                         r"\.\. 1992-01-01T00:00:00\.000000000\); the store holds 2016-12-25"):
        adapter(stores["64x32"], ["2m_temperature"], time_range=["1990", "1991"]).spec()  # was "2016-12-25 .. 1992"
    with pytest.raises(ValueError, match=r"time_range starts after it stops"):
        adapter(stores["64x32"], ["2m_temperature"], time_range=["2017-01-03", "2016-12-25"])
    with pytest.raises(ValueError, match=r"time_range \['2016-12-25', 'soon'\]: give ISO dates"):
        adapter(stores["64x32"], ["2m_temperature"], time_range=["2016-12-25", "soon"])

def test_a_new_cds_store_is_read_and_written_under_its_own_names(stores, tmp_path):
    # Since 2024 the CDS names the dims valid_time and pressure_level
    src = open_era5_store(str(stores["64x32"]))[["2m_temperature", "geopotential"]].load()
    cds = src.rename(time="valid_time", level="pressure_level")
    cds.to_zarr(tmp_path / "cds.zarr")
    a = adapter(tmp_path / "cds.zarr", ["2m_temperature", "geopotential@500"])
    reference = adapter(stores["64x32"], ["2m_temperature", "geopotential@500"])
    assert a.spec().normaliser == reference.spec().normaliser and a.spec().cond == reference.spec().cond
    ds, cond = a.heldout(2, seed=0)
    assert ds["geopotential"].dims == ("valid_time", "pressure_level", "longitude", "latitude")
    assert_roundtrip(a, ds, {**cond, "time": ds["valid_time"].values})
    samples = a.to_xarray(a.to_tensor(ds), {"dayofyear": 100.0})
    assert samples["geopotential"].dims == ("member", "pressure_level", "longitude", "latitude")
    assert a.example_dim(ds) == "valid_time" and a.cond_from_xarray(ds)["dayofyear"].shape == (2,)

def test_cond_replaces_the_default_list_and_says_what_it_left_out(stores, caplog):
    with caplog.at_level("INFO", logger="sciddpm.data"):
        spec = adapter(stores["64x32"], ["2m_temperature"], cond=["hour"], static=None).spec()  # null: none
    assert spec.cond.names == ["hour"] and spec.static == []
    assert "conditioning on hour (data.kwargs.cond replaces the default list: dayofyear left out; list them " \
           "too, cond=[dayofyear,hour], to keep them)" in caplog.text


def test_day_of_year_and_hour_are_checked_against_the_times_trained_on(stores):
    # trained on 25-31 December only, the schema said 1-366, so July sampled without a warning;
    # and an hour or day beyond one period wrapped round (hour=25 became 01 UTC) with a mere warning
    from sciddpm.data import ConditionRangeWarning

    cond = adapter(stores["64x32"], ["2m_temperature"]).spec().cond
    assert (cond["dayofyear"].min, cond["dayofyear"].max) == (360.0, 366.0)  # 2016 is a leap year
    with pytest.warns(ConditionRangeWarning, match=r"dayofyear=180 day is outside the training range 360–366 day"):
        cond.validate({"dayofyear": 180, "hour": 0})
    with pytest.raises(ValueError, match=r"hour \[h, trained 0–18\] is cyclic with period 24, and 25 is more than a "
                                         r"period from the values trained on; give it within -6–24"):
        cond.validate({"dayofyear": 362, "hour": 25})
    full = CondSchema.from_dict({"vars": [{**cond.to_dict()["vars"][0], "min": 1.0, "max": 366.0}]})
    with pytest.raises(ValueError, match=r"400 is more than a period from the values trained on; give it within "
                                         r"0\.75–366\.25"):
        full.validate({"dayofyear": 400})


def test_a_scalar_condition_needs_units(stores, tmp_path):
    src = open_era5_store(str(stores["64x32"]))[["2m_temperature"]].load()
    src["co2"] = ("time", np.linspace(400.0, 410.0, src.sizes["time"]))  # no units attribute
    src.to_zarr(tmp_path / "co2.zarr")
    with pytest.raises(ValueError, match=r"condition 'co2' .* has no 'units' attribute.*data\.kwargs\.units=\{co2: ppm\}"):
        adapter(tmp_path / "co2.zarr", ["2m_temperature"], cond=["dayofyear", "co2"]).spec()
    spec = adapter(tmp_path / "co2.zarr", ["2m_temperature"], cond=["dayofyear", "co2"], units={"co2": "ppm"}).spec()
    assert spec.cond["co2"].units == "ppm" and 400.0 <= spec.cond["co2"].min < spec.cond["co2"].max <= 410.0
    # observations whose condition is in another unit are refused (ppb read as ppm was 1000x off)
    trained = adapter_from_spec(spec)
    in_ppb = src.isel(time=[0, 1]).assign(co2=("time", [400e3, 401e3], {"units": "ppb"}))
    with pytest.raises(ValueError, match=r"condition 'co2' is in 'ppb' but the model was trained on it in 'ppm'"):
        trained.cond_from_xarray(in_ppb)
    in_ppm = in_ppb.assign(co2=("time", [400.0, 401.0], {"units": "ppm"}))
    np.testing.assert_array_equal(trained.cond_from_xarray(in_ppm)["co2"], [400.0, 401.0])
    # units= overrides a store's own attribute for training, which then reads its own store
    src.assign(co2=src["co2"].assign_attrs(units="mol mol-1")).to_zarr(tmp_path / "co2_molar.zarr")
    declared = adapter(tmp_path / "co2_molar.zarr", ["2m_temperature"], cond=["dayofyear", "co2"], units={"co2": "ppm"})
    assert declared.spec().cond["co2"].units == "ppm" and len(declared.dataset("train")) > 0

def test_items_spec_and_static_inputs(stores):
    a = adapter(stores["64x32"], SMALL["64x32"]["variables"], static=["land_sea_mask", "geopotential_at_surface"])
    spec = a.spec()
    assert spec.shape == [32, 64] and spec.padding == ["zeros", "circular"] and spec.static == a.static_names
    assert spec.cond.names == ["dayofyear", "hour"] and spec.cond["hour"].max == 18
    assert abs(spec.sigma_data - 1) < 0.1
    train, val = a.dataset("train"), a.dataset("val")
    assert len(train) == 28 and len(val) == 8  # 2016-12-25..31 train, 2017 (the last year) validation
    item = pickle.loads(pickle.dumps(train))[3]  # what a spawned worker gets; it opens the store itself
    assert item["x"].shape == (3, 32, 64) and item["x"].dtype == torch.float32 and "mask" not in item
    assert item["weight"].shape == (1, 32, 64) and abs(float(item["weight"].mean()) - 1) < 1e-6
    lat = np.sort(open_era5_store(str(stores["64x32"]))["latitude"].values)[::-1]
    w = item["weight"][0, :, 0].numpy()
    np.testing.assert_allclose(w / w.max(), np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).max(), rtol=2e-3)
    stamp = np.datetime64("2016-12-25T18")  # train item 3
    expected = spec.cond.encode({"dayofyear": [360.0], "hour": [18.0]})[0]
    torch.testing.assert_close(item["cond"], expected)
    fields = a.static_fields()
    assert fields.shape == (2, 32, 64) and torch.isfinite(fields).all() and abs(float(fields.mean())) < 1e-5
    assert stamp == open_era5_store(str(stores["64x32"]))["time"].values[3]


def test_sst_nan_over_land_is_masked_not_filled(tmp_path):
    store = write_synthetic(tmp_path / "sst.zarr", variables=["sea_surface_temperature", "2m_temperature"],
                            start="2016-01-01", stop="2016-01-05")
    land = open_era5_store(str(store))["land_sea_mask"].transpose("latitude", "longitude").values[::-1] > 0.5
    a = adapter(store, ["sea_surface_temperature", "2m_temperature"])
    item = a.dataset("train")[2]
    np.testing.assert_array_equal(item["mask"][0].numpy(), ~land)
    assert item["mask"][1].all() and torch.isnan(item["x"][0][torch.from_numpy(land)]).all()
    assert torch.isfinite(item["x"][0][torch.from_numpy(~land)]).all()
    rebuilt = adapter_from_spec(DataSpec.from_dict(a.spec().to_dict()))
    np.testing.assert_array_equal(rebuilt.static_mask().numpy()[0], ~land)
    ds = rebuilt.to_xarray(torch.zeros(2, 2, 32, 64), {})  # samples: NaN exactly at land, values at sea
    sst = ds["sea_surface_temperature"].transpose("member", "latitude", "longitude").values[:, ::-1]
    np.testing.assert_array_equal(np.isnan(sst), np.broadcast_to(land, sst.shape))
    assert len(str(a.spec().to_dict()["output"]["nan_mask"])) < 2000


def test_from_spec_needs_no_data_and_writes_zarr_and_maps(stores, tmp_path):
    a = adapter(stores["64x32"], SMALL["64x32"]["variables"])
    rebuilt = adapter_from_spec(DataSpec.from_dict(a.spec().to_dict()))
    x = torch.randn(3, 3, 32, 64)
    xr.testing.assert_identical(rebuilt.to_xarray(x, {"dayofyear": 180}), a.to_xarray(x, {"dayofyear": 180}))
    np.testing.assert_allclose(rebuilt.area_weights(), a.area_weights())
    paths = rebuilt.write(rebuilt.to_xarray(x, {"dayofyear": 180}), tmp_path / "ens.zarr")
    back = xr.open_zarr(paths[0], consolidated=False)
    assert back["geopotential"].attrs["units"] == "m**2 s**-2" and paths[1].stat().st_size > 10_000
    with pytest.raises(RuntimeError, match="rebuilt from a run's DataSpec"):
        rebuilt.dataset("train")


def test_synthetic_fields_have_their_documented_statistics(stores, tmp_path):
    store = write_synthetic(tmp_path / "year.zarr", variables=["2m_temperature"], static=[], hours=24,
                            start="2016-01-01", stop="2017-01-01")
    ds = open_era5_store(str(store))
    t = ds["2m_temperature"].transpose("time", "latitude", "longitude")
    stamps = t["time"].values
    doy = (stamps.astype("datetime64[D]") - stamps.astype("datetime64[Y]")).astype(int) + 1
    hour = (stamps - stamps.astype("datetime64[D]")).astype("timedelta64[h]").astype(int)
    mean = climatology("2m_temperature", None, ds["latitude"].values, ds["longitude"].values, doy, hour)
    z = (t.values - mean) / anomaly_std("2m_temperature", None)
    # 366 daily maps (AR(1) rho = 0.61: ~90 independent days) x ~45 independent 1200 km patches
    # -> the standard error of the mean is ~0.016; 0.08 is 5 of them. A 1 K error in the formula
    # moves the mean by 0.33.
    assert abs(z.mean()) < 0.08 and abs(z.std() - 1) < 0.08
    first = open_era5_store(str(stores["64x32"])).load()
    again = write_synthetic(tmp_path / "again.zarr", layout="64x32", **SMALL["64x32"])
    xr.testing.assert_identical(open_era5_store(str(again)).load(), first)  # a pure function of the parameters


def test_subset_recipe_copies_variables_levels_and_times(stores, tmp_path):
    spec = importlib.util.spec_from_file_location("era5_recipe", Path(__file__).parents[1] / "datasets" / "era5.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = recipe.subset(str(stores["64x32"]), ["geopotential@500", "2m_temperature"], str(tmp_path / "s.zarr"),
                        start="2016-12-30", stop="2016-12-31", static=["land_sea_mask"])
    got, src = open_era5_store(out), open_era5_store(str(stores["64x32"]))
    assert got.sizes["time"] == 8 and got["level"].values.tolist() == [500]
    assert set(got.data_vars) == {"geopotential", "2m_temperature", "land_sea_mask"}
    xr.testing.assert_identical(got["geopotential"].load(),
                                src["geopotential"].sel(time=slice("2016-12-30", "2016-12-31T23"), level=[500]).load())
    assert detect_layout(got) == "64x32" and got.attrs == src.attrs
    assert LAYOUTS["64x32"].n_lat == got.sizes["latitude"]


def test_a_nan_mask_from_a_run_directory_is_checked_before_use():
    import base64
    import zlib

    from sciddpm.data.era5_layouts import decode_mask, encode_mask

    mask = np.random.default_rng(0).random((2, 4, 8)) > 0.3
    np.testing.assert_array_equal(decode_mask(encode_mask(mask), [2, 4, 8]), mask)
    with pytest.raises(ValueError, match=r"NaN mask does not decode \(it is shaped \[2, 4, 8\], the model's fields \[2, 8, 8\]"):
        decode_mask(encode_mask(mask), [2, 8, 8])
    relabelled = {**encode_mask(mask), "shape": [2, 8, 8]}  # a short blob would be padded with 'never valid'
    with pytest.raises(ValueError, match="holds other than the 128 bits of its shape"):
        decode_mask(relabelled, [2, 8, 8])
    bomb = {"shape": [2, 4, 8], "packbits_zlib_base64": base64.b64encode(zlib.compress(bytes(50_000_000))).decode()}
    with pytest.raises(ValueError, match="holds other than the 64 bits"):
        decode_mask(bomb, [2, 4, 8])  # inflated no further than 9 bytes, not to 50 MB


@pytest.mark.parametrize("layout", list(SMALL))
def test_a_batch_of_items_is_read_at_once_and_equals_the_store(stores, layout):
    # The DataLoader asks for whole batches (__getitems__): one read per variable, any order, repeats
    from sciddpm.data.era5_layouts import parse_channel

    a = adapter(stores[layout], SMALL[layout]["variables"], layout=layout, **VAL[layout])
    items, spec, source = a.dataset("train"), a.spec(), open_era5_store(str(stores[layout]))
    indices = [len(items) - 1, 0, len(items) - 1]
    batch = items.__getitems__(indices)
    for i, item in zip(indices, batch):
        for c, channel in enumerate(spec.channels):
            name, level = parse_channel(channel)
            da = source[name].isel(time=int(items.positions[i]))
            da = (da if level is None else da.sel(level=level)).transpose("latitude", "longitude")
            truth = da.sortby("latitude", ascending=False).values  # the tensor is north-up
            z = (truth - spec.normaliser.mean[c]) / spec.normaliser.std[c]
            np.testing.assert_allclose(item["x"][c].numpy(), z, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(item["cond"].numpy(), items[i]["cond"].numpy())
    torch.testing.assert_close(batch[0]["x"], batch[2]["x"])


def test_several_files_read_as_one_store(stores, tmp_path, monkeypatch):
    # ERA5 from the CDS comes as a file per year (or per variable kind): a list or a glob pattern
    # reads them as one store, lazily through dask, the same as the one store they were cut from
    whole = open_era5_store(str(stores["64x32"])).load()
    split = [tmp_path / "era5_2016.nc", tmp_path / "era5_2017.nc"]
    whole.sel(time=slice(None, "2016")).to_netcdf(split[0])
    whole.sel(time=slice("2017", None)).to_netcdf(split[1])
    variables = ["2m_temperature", "geopotential@500"]
    one = adapter(stores["64x32"], variables, static=["land_sea_mask"])
    for path in ([str(p) for p in split], str(tmp_path / "era5_*.nc")):
        many = adapter(path, variables, static=["land_sea_mask"])
        assert many.spec().normaliser == one.spec().normaliser and many.spec().cond == one.spec().cond
        assert many.spec().output["source"] == (path if isinstance(path, str)
                                                else f"{split[0]} ... {split[1]} (2 files)")
        items = many.dataset("train")
        np.testing.assert_array_equal(items[3]["x"].numpy(), one.dataset("train")[3]["x"].numpy())
    kinds = [tmp_path / "instant.nc", tmp_path / "levels.nc"]  # the new CDS: variables apart, same times
    whole[["2m_temperature", "land_sea_mask"]].to_netcdf(kinds[0])
    whole[["geopotential"]].to_netcdf(kinds[1])
    apart = adapter([str(p) for p in kinds], variables, static=["land_sea_mask"])
    assert apart.spec().normaliser == one.spec().normaliser
    with pytest.raises(FileNotFoundError, match=r"no files match the ERA5 store pattern .*era6_\*\.nc"):
        adapter(str(tmp_path / "era6_*.nc"), variables).spec()
    with pytest.raises(FileNotFoundError, match=r"no ERA5 store file at .*missing\.nc \(of the 2 listed\)"):
        adapter([str(split[0]), str(tmp_path / "missing.nc")], variables).spec()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dask" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"reading 2 files as one ERA5 store needs dask .*pip install 'sciddpm\[dask\]'"):
        adapter([str(p) for p in split], variables).spec()
