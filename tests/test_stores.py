"""sciddpm.data.stores.open_store: every format by suffix or directory, lazily, and errors that
name what was looked for and how to fix it."""

import numpy as np
import pytest
import xarray as xr

from sciddpm.data.stores import open_store, write_store


@pytest.fixture
def dataset():
    rng = np.random.default_rng(0)
    return xr.Dataset({"u": (("sample", "z", "y", "x"), rng.normal(size=(3, 4, 5, 6)), {"units": "m/s"})},
                      coords={"sample": [10, 20, 30]}, attrs={"source": "test"})


@pytest.mark.parametrize("name", ["store.zarr", "plain_directory", "fields.nc", "fields.h5"])
def test_every_format_round_trips(dataset, tmp_path, name):
    path = tmp_path / name
    if name.endswith(".nc"):
        dataset.to_netcdf(path)
    elif name.endswith(".h5"):
        dataset.to_netcdf(path, engine="h5netcdf")
    else:
        dataset.to_zarr(path)
    opened = open_store(path)
    assert not opened.chunks  # no dask: lazily indexed backend arrays
    xr.testing.assert_identical(opened.load(), dataset)


def test_missing_store_names_what_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no volume store at .*nowhere\.zarr; build one first"):
        open_store(tmp_path / "nowhere.zarr", what="volume store", hint="build one first")



def test_a_store_hidden_by_a_killed_write_is_pointed_at(dataset, tmp_path):
    # a write killed between its two renames left the previous samples as .ens.zarr.<pid>.old:
    # a reader got "no store at", with no word of where they were
    write_store(dataset, tmp_path / "ens.zarr")
    (tmp_path / "ens.zarr").rename(tmp_path / ".ens.zarr.host-1234.old")
    with pytest.raises(FileNotFoundError, match=r"no store at .*ens\.zarr; a write of it was killed between its two "
                                                r"renames: its previous version is at .*\.ens\.zarr\.host-1234\.old"):
        open_store(tmp_path / "ens.zarr")


def test_unknown_format_lists_the_known_ones(tmp_path):
    path = tmp_path / "fields.grib"
    path.write_bytes(b"GRIB")
    with pytest.raises(ValueError, match=r"cannot tell the format .*zarr.*netCDF \(\.nc.*HDF5 \(\.h5"):
        open_store(path)


def test_netcdf_keeps_every_attribute_in_a_form_netcdf_holds(dataset, tmp_path):
    attrs = {"periodic": [True, False, True], "flag": True, "missing": None, "nested": {"a": [1, 2]},
             "names": ["u", "v"], "levels": [500, 850], "title": "t", "scale": 2.5}
    dataset.attrs.update(attrs)
    dataset["u"].attrs["valid"] = False
    written = xr.open_dataset(write_store(dataset, tmp_path / "f.nc")).load()
    np.testing.assert_array_equal(written["u"].values, dataset["u"].values)
    got = written.attrs
    np.testing.assert_array_equal(got["periodic"], [1, 0, 1])
    assert got["flag"] == 1 and written["u"].attrs["valid"] == 0 and written["u"].attrs["units"] == "m/s"
    assert (got["missing"], got["nested"], got["names"]) == ("null", '{"a": [1, 2]}', '["u", "v"]')
    np.testing.assert_array_equal(got["levels"], [500, 850])
    assert (got["title"], got["scale"]) == ("t", 2.5)
    assert dataset.attrs == {"source": "test", **attrs} and dataset["u"].attrs["valid"] is False  # unchanged
    zarr_copy = open_store(write_store(dataset, tmp_path / "f.zarr")).load()
    assert zarr_copy.attrs == {**dataset.attrs, "written_by": "sciddpm write_store"}  # zarr keeps them as they are


def test_written_zarr_opens_without_the_consolidation_warning(dataset, tmp_path):
    import warnings

    path = write_store(dataset, tmp_path / "samples.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # xarray warns when a store lacks consolidated metadata
        xr.testing.assert_identical(xr.open_zarr(path).load(), dataset.assign_attrs(written_by="sciddpm write_store"))


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_samples_replace_earlier_samples_but_never_a_data_store(dataset, tmp_path, suffix):
    data = tmp_path / f"data{suffix}"
    dataset.to_zarr(data) if suffix == ".zarr" else dataset.to_netcdf(data)  # the user's own data
    with pytest.raises(FileExistsError, match=r"data\.(zarr|nc) exists and was not written as samples by sciddpm"):
        write_store(dataset, data)
    xr.testing.assert_identical(open_store(data).load(), dataset)  # untouched
    out = tmp_path / f"samples{suffix}"
    write_store(dataset, out)
    write_store(dataset.assign_attrs(seed=2), out)  # a second sample set replaces the first
    assert open_store(out).attrs["seed"] == 2 and open_store(out).attrs["written_by"] == "sciddpm write_store"


def test_an_unreadable_store_is_named_with_its_format(tmp_path):
    (tmp_path / "cut.nc").write_bytes(b"CDF\x01 truncated")
    with pytest.raises(ValueError, match=r"cannot read .*cut\.nc as a netCDF store .*is it complete"):
        open_store(tmp_path / "cut.nc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"cannot read .*empty as a zarr store"):
        open_store(tmp_path / "empty")


def test_a_time_axis_that_cannot_be_dates_says_how_to_rewrite_it(tmp_path):
    # CMIP-style "months since" on a standard calendar: xarray's advice (decode_times=False) is
    # an argument sciddpm's users cannot pass; the error says how to rewrite the file instead
    ds = xr.Dataset({"tas": (("time", "lat"), np.zeros((3, 2)))},
                    coords={"time": ("time", [0.5, 1.5, 2.5], {"units": "months since 1850-01-01",
                                                               "calendar": "standard"})})
    ds.to_netcdf(tmp_path / "months.nc")
    with pytest.raises(ValueError, match=r"cannot read the time axis of .*months\.nc as dates \(.*months since.*\)\. "
                                         r"sciddpm needs dates, so rewrite it .*decode_times=False.*xr\.date_range"):
        open_store(tmp_path / "months.nc")


def test_several_files_are_named_by_a_list_or_a_pattern_of_stars(tmp_path):
    from sciddpm.data.stores import store_files

    (tmp_path / "run[1]").mkdir()
    (tmp_path / "run1").mkdir()
    for folder in ("run[1]", "run1"):
        (tmp_path / folder / "a.nc").touch()
    # [ is a folder's own name, not a pattern: run[1]/*.nc read run1/a.nc
    assert store_files(str(tmp_path / "run[1]" / "*.nc")) == [str(tmp_path / "run[1]" / "a.nc")]
    assert store_files(str(tmp_path / "run[1]" / "a.nc")) is None  # one file: one store
    with pytest.raises(ValueError, match=r"several files read as one store must be local, got gs://b/x\.zarr"):
        store_files(["gs://b/x.zarr", "gs://b/y.zarr"])
