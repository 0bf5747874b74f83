"""The data-layer contract: conditioning schema, normaliser, DataSpec, registry and helpers."""

from __future__ import annotations

import copy
import json
import math
import re
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from sciddpm.data import (ADAPTERS, CondSchema, CondVar, ConditionRangeWarning, DataSpec, Normaliser,
                          UnknownConditionError, adapter_from_spec, build_adapter)
from sciddpm.data.base import split_indices
from sciddpm import files
from sciddpm.files import atomic_path
from sciddpm.registry import UnknownNameError


def audio_schema() -> CondSchema:
    return CondSchema([CondVar("pitch", "Hz", 110, 880, feature="log"),
                       CondVar("velocity", "MIDI velocity", 25, 127)])


# ----------------------------------------------------------------------------- CondVar / CondSchema
@pytest.mark.parametrize("kwargs, needle", [
    (dict(name="pitch", units="Hz", min=0, max=880, feature="log"), "positive values"),
    (dict(name="day", units="d", min=1, max=366, feature="cyclic"), "positive period"),
    (dict(name="x", units="", min=0, max=1, feature="square"), "not one of linear, log, cyclic"),
    (dict(name="x", units="", min=2, max=1), "above max"),
    (dict(name="x", units="", min=0, max=float("inf")), "finite"),
    (dict(name="a b", units="", min=0, max=1), "without spaces"),
    (dict(name="x", units="", min=0, max=1, period=3.0), "only used with feature='cyclic'"),
])
def test_condvar_rejects_bad_definitions(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        CondVar(**kwargs)


def test_encode_shapes_and_feature_maps():
    schema = CondSchema([CondVar("pitch", "Hz", 110, 880, feature="log"),
                         CondVar("velocity", "MIDI velocity", 25, 125),
                         CondVar("dayofyear", "day", 1, 366, feature="cyclic", period=365.25)])
    assert schema.names == ["pitch", "velocity", "dayofyear"] and schema.dim == 4
    enc = schema.encode({"pitch": [110.0, 880.0, math.sqrt(110 * 880)], "velocity": 75,
                         "dayofyear": torch.tensor([365.25, 365.25 / 4, 365.25 / 2])})
    assert enc.dtype == torch.float32 and enc.shape == (3, 4)
    # log feature: the training range maps to [-1, 1]; the geometric mean to 0
    np.testing.assert_allclose(enc[:, 0], [-1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(enc[:, 1], [0, 0, 0], atol=1e-6)  # scalar broadcast, mid-range
    np.testing.assert_allclose(enc[:, 2:], [[0, 1], [1, 0], [0, -1]], atol=1e-6)  # (sin, cos)
    assert schema.encode({"pitch": 220, "velocity": 25, "dayofyear": 1}, batch=5).shape == (5, 4)
    assert CondSchema([]).encode({}, batch=3).shape == (3, 0)
    assert CondSchema([]).dim == 0


def test_unknown_condition_lists_known_names_units_and_range():
    schema = audio_schema()
    with pytest.raises(UnknownConditionError) as info:
        schema.encode({"pich": 440, "velocity": 100})
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert str(err) == ("unknown condition 'pich'; known: pitch [Hz, trained 110–880], "
                        "velocity [MIDI velocity, trained 25–127] (did you mean 'pitch'?)")
    with pytest.raises(UnknownConditionError, match="this model takes no conditions"):
        CondSchema([]).encode({"pitch": 440})


def test_missing_nonfinite_and_mismatched_values_are_errors():
    schema = audio_schema()
    with pytest.raises(ValueError, match=r"missing condition\(s\): velocity \[MIDI velocity"):
        schema.encode({"pitch": 440})
    with pytest.raises(ValueError, match="'pitch' must be finite"):
        schema.encode({"pitch": float("nan"), "velocity": 100})
    with pytest.raises(ValueError, match="'velocity' must be numeric"):
        schema.encode({"pitch": 440, "velocity": "loud"})
    for slip in ("100", True, [100, "100"], np.array([True, False])):  # read as 100.0 and 1.0 before
        with pytest.raises(ValueError, match=r"'velocity' must be numeric, got .* \(a number, not text or a bool\)"):
            schema.encode({"pitch": 440, "velocity": slip})
    assert schema.encode({"pitch": np.float32(440), "velocity": np.int64(100)}).shape[0] == 1
    # a cyclic range over more than a period takes any value (the beyond-a-period refusal said
    # "give it within 6.28-6.28" for phase=1 trained on 0-4 pi)
    phase = CondSchema([CondVar("phase", units="rad", min=0.0, max=4 * np.pi, feature="cyclic", period=2 * np.pi)])
    assert phase.validate({"phase": 1.0})["phase"][0] == 1.0
    hour = CondSchema([CondVar("hour", units="h", min=0.0, max=18.0, feature="cyclic", period=24.0)])
    with warnings.catch_warnings():  # hour 24 and -6 are hours 0 and 18, trained on: no "extrapolating"
        warnings.simplefilter("error")
        hour.validate({"hour": [24.0, -6.0]})
    with pytest.warns(ConditionRangeWarning, match=r"hour=21 h is outside the training range 0–18 h"):
        hour.validate({"hour": 21.0})
    with pytest.raises(ValueError, match=r"different lengths \[2, 3\]"):
        schema.encode({"pitch": [440, 441], "velocity": [1, 2, 3]})
    with pytest.raises(ValueError, match="the batch is 4"):
        schema.encode({"pitch": [440, 441], "velocity": 100}, batch=4)
    with pytest.raises(ValueError, match="must be positive"):
        schema.encode({"pitch": -5.0, "velocity": 100})


def test_out_of_range_warns_naming_the_range_but_in_range_is_silent():
    schema = audio_schema()
    with pytest.warns(ConditionRangeWarning, match=r"pitch=1000 Hz is outside the training range 110–880 Hz"):
        enc = schema.encode({"pitch": 1000, "velocity": 100})
    assert enc[0, 0] > 1  # extrapolated, not clamped
    with pytest.warns(ConditionRangeWarning, match=r"pitch=50, 1000 Hz are outside the training range"):
        schema.encode({"pitch": [50.0, 440.0, 1000.0], "velocity": 100})  # every value outside is named
    assert "CondSchema: pitch [Hz, trained 110–880]" in repr(schema)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schema.encode({"pitch": [110.0, 880.0], "velocity": [25, 127]})  # the endpoints are in range


def test_dimensionless_conditions_read_as_numbers():
    # units "1" (CF's pure number, e.g. Gray-Scott's F) is not printed as if it were a unit
    schema = CondSchema([CondVar("F", "1", 0.034, 0.042)])
    with pytest.warns(ConditionRangeWarning, match=r"F=0.5 is outside the training range 0.034–0.042; the"):
        schema.encode({"F": 0.5})
    with pytest.raises(UnknownConditionError, match=r"known: F \[dimensionless, trained 0.034–0.042\]"):
        schema.encode({"f": 0.04})


def test_schema_dict_round_trip_and_malformed():
    schema = CondSchema([CondVar("pitch", "Hz", 110, 880, feature="log", description="f0"),
                         CondVar("hour", "h", 0, 23, feature="cyclic", period=24)])
    again = CondSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert again == schema and again.to_dict() == schema.to_dict()
    for bad in ({"vars": [{"name": "pitch"}]}, {"vars": "pitch"}, [], {"vars": [], "extra": 1},
                {"vars": [{"name": "x", "units": "", "min": 0, "max": 1, "code": "import os"}]}):
        with pytest.raises(ValueError):
            CondSchema.from_dict(bad)
    with pytest.raises(ValueError, match="more than once"):
        CondSchema([CondVar("a", "", 0, 1), CondVar("a", "", 0, 1)])


# ----------------------------------------------------------------------------- Normaliser
@pytest.mark.parametrize("spatial", [(7,), (5, 6), (4, 4, 5), (3, 4, 5)])
def test_normaliser_per_channel_any_rank(spatial):
    mean, std = [1.0, -2.0, 10.0], [0.5, 3.0, 7.0]
    norm = Normaliser(mean, std)
    g = torch.Generator().manual_seed(0)
    batched = torch.randn(64, 3, *spatial, generator=g, dtype=torch.float64)
    batched = batched * torch.tensor(std, dtype=torch.float64).reshape(3, *[1] * len(spatial))
    batched = batched + torch.tensor(mean, dtype=torch.float64).reshape(3, *[1] * len(spatial))
    z = norm.normalise(batched)
    reduce = [0] + list(range(2, z.ndim))
    np.testing.assert_allclose(z.mean(reduce), 0, atol=0.2)
    np.testing.assert_allclose(z.std(reduce), 1, atol=0.2)
    torch.testing.assert_close(norm.denormalise(z), batched)
    single = batched[0]
    torch.testing.assert_close(norm.normalise(single, channel_axis=0), z[0])
    if spatial[0] != 3:  # unambiguous: axis 0 is inferred for an unbatched [C, *S]
        torch.testing.assert_close(norm.normalise(single), z[0])
    np.testing.assert_allclose(norm.normalise(single.numpy(), channel_axis=0), z[0].numpy())
    assert norm.normalise(batched.float()).dtype == torch.float32


def test_normaliser_errors_and_dict():
    with pytest.raises(ValueError, match="channel 1 has std 0"):
        Normaliser([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="one mean and one std per channel"):
        Normaliser([0.0], [1.0, 2.0])
    # statistics of data with gaps taken with np.mean: the channel and the fix are named
    with pytest.raises(ValueError, match=r"channel 'ssh' has mean nan: the training data has NaN.*np\.nanmean.*mask"):
        Normaliser([0.0, float("nan")], [1.0, 1.0], channels=["u", "ssh"])
    with pytest.raises(ValueError, match=r"expected \[B, 2, \*S\] or \[2, \*S\]"):
        Normaliser([0.0, 0.0], [1.0, 1.0]).normalise(torch.zeros(4, 3, 8))
    norm = Normaliser([0.5], [2.0])
    assert Normaliser.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    with pytest.raises(ValueError):
        Normaliser.from_dict({"mean": [0.0], "std": ["1"]})


# ----------------------------------------------------------------------------- DataSpec
def make_spec() -> DataSpec:
    return DataSpec(adapter="audio", dims=1, channels=["waveform"], shape=[2048], padding=["zeros"],
                    normaliser=Normaliser([0.0], [0.8]), cond=audio_schema(), sigma_data=0.3,
                    output={"sample_rate": 8000, "units": "1", "nested": {"a": [1, 2.5, None, True]}},
                    notes=["trained on the embedded tones data"])


def test_dataspec_json_round_trip():
    spec = make_spec()
    d = json.loads(json.dumps(spec.to_dict()))
    again = DataSpec.from_dict(d)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    d["output"]["nested"]["a"].append(3)  # the spec does not alias the dict it came from
    assert again.output["nested"]["a"] == [1, 2.5, None, True]


def _mutations():
    def set_(key, value):
        return lambda d: d.__setitem__(key, value)
    return {
        "missing key": lambda d: d.pop("sigma_data"),
        "unknown key": set_("_target_", "os.system"),
        "dims 4": set_("dims", 4),
        "dims bool": set_("dims", True),
        "shape rank": set_("shape", [64, 64]),
        "shape not int": set_("shape", [2048.0]),
        "padding mode": set_("padding", ["mirror"]),
        "no channels": set_("channels", []),
        "sigma_data nan": set_("sigma_data", float("nan")),
        "sigma_data negative": set_("sigma_data", -1.0),
        "output not dict": set_("output", [1]),
        "output nan": set_("output", {"x": float("nan")}),
        "notes not str": set_("notes", [1]),
        "std zero": set_("normaliser", {"mean": [0.0], "std": [0.0]}),
        "normaliser channels": set_("normaliser", {"mean": [0.0, 0.0], "std": [1.0, 1.0]}),
        "cond feature": lambda d: d["cond"]["vars"][0].__setitem__("feature", "exp"),
        "cond missing field": lambda d: d["cond"]["vars"][0].pop("min"),
        "adapter not str": set_("adapter", ["audio"]),
        "not a dict": lambda d: None,
    }


@pytest.mark.parametrize("name", list(_mutations()))
def test_dataspec_rejects_malformed_dicts(name):
    d = copy.deepcopy(make_spec().to_dict())
    if name == "not a dict":
        d = json.dumps(d)
    else:
        _mutations()[name](d)
    with pytest.raises(ValueError, match="malformed DataSpec"):
        DataSpec.from_dict(d)


# ----------------------------------------------------------------------------- registry and helpers
def test_registry_names_audio_and_rejects_unknown():
    assert "audio" in ADAPTERS.names()
    with pytest.raises(UnknownNameError, match=r"unknown adapter 'audoi'; known adapters: .*audio.*'audio'"):
        build_adapter("audoi")
    with pytest.raises(TypeError, match=r"'sample_rat' \(did you mean 'sample_rate'\?\)"):
        build_adapter("audio", sample_rat=8000)
    spec = make_spec().to_dict()
    spec["adapter"] = "os.system"  # a name, never an import path: nothing is imported
    with pytest.raises(UnknownNameError, match="unknown adapter 'os.system'"):
        adapter_from_spec(spec)


def test_split_indices_deterministic_disjoint_and_complete():
    train, val = split_indices(50, "train", 0.1, seed=3), split_indices(50, "val", 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(50))
    np.testing.assert_array_equal(val, split_indices(50, "val", 0.1, seed=3))
    assert not np.array_equal(val, split_indices(50, "val", 0.1, seed=4))
    assert len(split_indices(3, "val", 0.01)) == 1  # val is never empty
    with pytest.raises(ValueError, match="'train' or 'val'"):
        split_indices(10, "test", 0.1)


def test_atomic_path_keeps_old_target_on_failure_and_replaces_dirs(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    store = tmp_path / "s.zarr"
    for version in ("1", "2"):
        with atomic_path(store) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text(version)
    assert (store / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "s.zarr"]


def test_atomic_path_removes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    store = tmp_path / "cache.zarr"
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from sciddpm.files import atomic_path\n"
         "with atomic_path(sys.argv[1]) as tmp:\n    tmp.mkdir(); (tmp / 'half').write_text('x')\n"
         "    os.kill(os.getpid(), signal.SIGKILL)", str(store)])
    assert killed.returncode == -signal.SIGKILL
    [leftover] = tmp_path.iterdir()
    assert leftover.name.startswith(".cache.zarr.") and leftover.name.endswith(".tmp")
    table = files._process_table_tag()  # this host, boot and pid namespace, as atomic_path names it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other = "f" * 10 if table != "f" * 10 else "e" * 10
    kept = [tmp_path / f".cache.zarr.{table}-{os.getpid()}.abc.tmp",  # a live writer (this process)
            tmp_path / f".cache.zarr.{other}-{dead.stdout.strip()}.abc.tmp",  # pid of another node/container
            tmp_path / ".cache.zarr.notes.txt"]  # not ours
    for path in kept:
        path.write_text("x")
    with atomic_path(store) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache.zarr", *(p.name for p in kept)])


@pytest.mark.parametrize("adapter, kwargs, setting", [
    ("era5", {"static": "land_sea_mask"}, "data.kwargs.static"),
    ("era5", {"variables": "2m_temperature"}, "data.kwargs.variables"),
    ("era5", {"cond": "dayofyear"}, "data.kwargs.cond"),
    ("volume", {"source": "store", "path": "sim.zarr", "fields": "rho"}, "data.kwargs.fields"),
    ("volume", {"source": "store", "path": "sim.zarr", "params": "mach"}, "data.kwargs.params"),
])
def test_a_lone_name_where_a_list_is_needed_is_refused_not_split_into_letters(adapter, kwargs, setting):
    # a Hydra override such as data.kwargs.static=land_sea_mask arrives as a string
    with pytest.raises(ValueError, match=rf"{re.escape(setting)} must be a list of names, e\.g\. \["):
        build_adapter(adapter, **kwargs)


def test_a_directory_is_never_lost_when_its_replacement_fails(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "v").write_text("old")
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk quota exceeded")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="quota"):
        with atomic_path(store) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text("new")
    monkeypatch.undo()
    assert (store / "v").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
    # a writer killed between its two renames left the old store aside: the next write restores it first
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".s.zarr.{files._process_table_tag()}-{dead.stdout.strip()}.old"
    os.replace(store, aside)
    with pytest.raises(RuntimeError):
        with atomic_path(store):
            raise RuntimeError("this write fails too")
    assert (store / "v").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


@pytest.mark.parametrize("module, function, integer, number", [
    ("tones", "tone_params", "n_clips", "fmin"), ("grf", "grf_params", "size", "alpha_min"),
    ("gray_scott", "gray_scott_params", "steps", "F_max"), ("era5_synthetic", "synthetic_params", "seed", "length_km"),
])
def test_every_recipe_checks_its_parameters_the_same_way(module, function, integer, number):
    import importlib

    params = getattr(importlib.import_module(f"sciddpm.data.{module}"), function)
    assert params(**{integer: 8.0})[integer] == 8 and isinstance(params(**{integer: 8.0})[integer], int)
    with pytest.raises(ValueError, match=rf"parameter {integer} must be an integer, got 'big' \(default"):
        params(**{integer: "big"})
    with pytest.raises(ValueError, match=rf"parameter {number} must be a number, got 'x' \(default"):
        params(**{number: "x"})
    with pytest.raises(TypeError, match=r"unknown .* parameter\(s\) \['nope'\]; known: \["):
        params(nope=1)


def test_one_process_builds_a_cache_entry_and_the_others_wait_for_it(tmp_path, monkeypatch, caplog):
    import fcntl
    import threading

    from sciddpm.data.cache import ensure_built

    entry, builds = tmp_path / "entry", []

    def build(path):
        builds.append(path)
        path.mkdir()

    holder = open(tmp_path / ".entry.lock", "a+")  # as another process building the entry holds it
    fcntl.flock(holder, fcntl.LOCK_EX)
    with caplog.at_level("WARNING"):
        waiting = threading.Thread(target=ensure_built, args=(entry, build, "the test data"))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not builds  # it waits rather than building beside the other
        entry.mkdir()  # the other process finishes its build ...
        holder.close()  # ... and lets go
        waiting.join(timeout=10)
    assert not waiting.is_alive() and builds == []  # it found the entry complete: nothing replaced
    assert "waiting for another process that is building the test data" in caplog.text
    ensure_built(tmp_path / "fresh", build, "the test data")
    assert builds == [tmp_path / "fresh"]


def test_assert_roundtrip_compares_array_attributes_and_catches_a_changed_one():
    import xarray as xr

    from sciddpm.testing import assert_roundtrip

    from sciddpm.data.units import check_units, read_units

    class Identity:  # an adapter whose round trip keeps everything, or changes one attribute
        def __init__(self, change=False, checks_units=True):
            self.change, self.checks_units = change, checks_units

        def to_tensor(self, ds):
            if self.checks_units:
                check_units(ds, {"t": {"units": "K"}})
            return torch.from_numpy(ds["t"].values)

        def to_xarray(self, x, cond):
            attrs = {"units": "K", "valid_range": np.array([0.0, 400.0 if not self.change else 500.0])}
            return xr.Dataset({"t": (("x",), x.numpy(), attrs)})

    ds = xr.Dataset({"t": (("x",), np.arange(3.0), {"units": "K", "valid_range": np.array([0.0, 400.0])})})
    assert_roundtrip(Identity(), ds)  # used to raise "truth value of an array is ambiguous"
    with pytest.raises(AssertionError, match="t: attrs"):
        assert_roundtrip(Identity(change=True), ds)
    # an adapter that reads values in any units as the model's (degC filled as K) is caught
    with pytest.raises(AssertionError, match=r"t: to_tensor took values labelled 'kg' as the model's 'K'; refuse"):
        assert_roundtrip(Identity(checks_units=False), ds)

    class DimensionOnly:  # compares the quantity, not the scale: cm would pass as m
        def to_tensor(self, ds):
            if read_units(ds["h"].attrs["units"])[0] != read_units("m")[0]:
                raise ValueError("another quantity")
            return torch.from_numpy(ds["h"].values)

        def to_xarray(self, x, cond):
            return xr.Dataset({"h": (("x",), x.numpy(), {"units": "m"})})

    heights = xr.Dataset({"h": (("x",), np.arange(3.0), {"units": "m"})})
    with pytest.raises(AssertionError, match=r"h: to_tensor took values labelled '1000 m' as the model's 'm'"):
        assert_roundtrip(DimensionOnly(), heights)

    class WithAFixedField(Identity):  # carries a field it does not read: its units are not its to check
        def to_xarray(self, x, cond):
            return super().to_xarray(x, cond).assign(land=("x", np.ones(3), {"units": "1"}))

    with_land = ds.assign(land=("x", np.ones(3), {"units": "1"}))
    with pytest.raises(AssertionError, match="land: to_tensor took values labelled 'kg'"):
        assert_roundtrip(WithAFixedField(), with_land)
    assert_roundtrip(WithAFixedField(), with_land, read=["t"])


def test_units_of_observations_are_compared_never_converted(caplog):
    import xarray as xr

    from sciddpm.data.units import check_units

    def data(units):
        return xr.Dataset({"t": (("x",), np.zeros(2), {} if units is None else {"units": units})})

    trained = {"t": {"units": "K"}}
    for same in ("K", " K ", "kelvin", "degK", None):  # one unit however spelled, or unsaid
        check_units(data(same), trained)
    # CF, UDUNITS, pint/MetPy, ERA5, CMIP6 and Copernicus Marine spellings of one unit pass quietly
    for have, want in (("m/s", "m s**-1"), ("m s-1", "m s^-1"), ("kg m-2 s-1", "kg/m2/s"), ("mbar", "hPa"),
                       ("degrees_C", "degC"), ("deg C", "°C"), ("1", "(0 - 1)"), ("W m**-2", "J m-2 s-1"),
                       ("kg/m2 s-1", "kg m-2 s-1"), ("meter ** 2 / second ** 2", "m**2 s**-2"), ("m s⁻¹", "m s-1"),
                       ("J/(kg K)", "J kg-1 K-1"), ("kelvins", "K"), ("kg kg**-1", "1"), ("0.001", "1e-3"), ("degrees N", "degrees_north"),
                       ("degC/day", "K day-1"), ("umol/mol", "ppmv"), ("", "K"), ("K", "none")):
        check_units(data(have), {"t": {"units": want}})  # (no units on either side: taken as the same)
    # another unit of the quantity, or another quantity, is refused naming both
    for have, want in (("degC", "K"), ("°C", "K"), ("degF", "K"), ("degrees_C", "K"), ("degrees Celsius", "K"),
                       ("hPa", "Pa"), ("km/h", "m s**-1"), ("%", "(0 - 1)"), ("ppb", "ppm"),
                       ("m", "m**2 s**-2"), ("mm/day", "kg m-2 s-1"), ("kg/m2 s-1", "kg m-2 s"),
                       ("mol mol-1", "kg kg**-1"), ("degree", "radian"), ("1 degC", "K"), ("ppb", "mg m-3")):
        with pytest.raises(ValueError, match=rf"'t' is in {re.escape(repr(have))} but the model was trained on it in "
                                             rf"{re.escape(repr(want))}; convert it"):
            check_units(data(have), {"t": {"units": want}})
    with pytest.raises(ValueError, match=r"an anomaly or a difference is the same number in K and degC"):
        check_units(data("degC"), trained)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="sciddpm"):
        check_units(data("mm/month"), {"t": {"units": "mm day-1"}})  # a word it does not know: only a person can tell
        check_units(data("mm s-1"), {"t": {"units": "kg m-2 s-1"}})  # one number for liquid water only
        check_units(data("1"), {"t": {"units": "1e-3"}})  # salinity near 35 in CF's "1" and CMEMS's "1e-3"
        check_units(data("kg C m-2 s-1"), {"t": {"units": "kg m-2 s-1"}})  # an element, not kelvin
    assert "variable 't' says units 'mm/month', the training data said 'mm day-1'; taken as the same" in caplog.text
    assert "variable 't' says units 'mm s-1', the training data said 'kg m-2 s-1'; taken as the same" in caplog.text


def test_csv_headers_give_units_in_brackets_or_parentheses():
    from sciddpm.data.conditioning import split_header

    assert split_header(" pitch[Hz] ") == split_header("pitch (Hz)") == ("pitch", "Hz")
    assert split_header("gain") == ("gain", None) and split_header("co2 [ppm]") == ("co2", "ppm")
    assert split_header("gain (dB)") == ("gain", "dB") and split_header("speed (m/s)") == ("speed", "m/s")
    assert split_header("pitch (MIDI note)") == ("pitch", "MIDI note") and split_header("v (0-127)") == ("v", "0-127")
    # a column of notes stays whole, and is refused only if it is taken as a condition
    assert split_header("comment (free text (see notes))") == ("comment (free text (see notes))", None)
    with pytest.raises(ValueError, match=r"from a CSV header, write it as name\[units\], or leave the column out"):
        CondVar("comment (free text (see notes))", units="", min=0.0, max=1.0)
    for bad in ("pitch[Hz", "a[b][c]", "[Hz]"):
        with pytest.raises(ValueError, match=r"is not 'name' or 'name\[units\]'"):
            split_header(bad)
