"""The one-page adapter of docs/examples/track_adapter.py keeps the contract and trains end to end,
so the example that "Adding an adapter" points to stays true."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import sciddpm
from sciddpm.data import ADAPTERS
from sciddpm.testing import assert_roundtrip

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "track_adapter.py"


@pytest.fixture(scope="module")
def track_adapter():
    """The example module, imported (which registers "ssh_track") for these tests only."""
    ADAPTERS.names()  # plugins loaded first, so that restoring the table loses none
    before = dict(ADAPTERS._builders)
    spec = importlib.util.spec_from_file_location("track_adapter_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    ADAPTERS._builders = before


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    """Tracks whose mean is 0.40 + 0.01 w m and whose swell grows with the wind speed w."""
    rng = np.random.default_rng(0)
    wind = rng.uniform(2.0, 14.0, 160)
    x = np.arange(64) * 7.0
    phase = rng.uniform(0, 2 * np.pi, (160, 1))
    ssh = 0.40 + 0.01 * wind[:, None] + 0.005 * wind[:, None] * np.sin(2 * np.pi * x / 150.0 + phase)
    ds = xr.Dataset({"ssh": (("time", "x"), ssh, {"units": "m", "long_name": "sea surface height"}),
                     "wind_speed": ("time", wind, {"units": "m s-1"})},
                    coords={"time": np.arange(160), "x": ("x", x, {"units": "km", "long_name": "along-track distance"})})
    path = tmp_path_factory.mktemp("tracks") / "tracks.nc"
    ds.to_netcdf(path)
    return path


def test_the_example_adapter_keeps_the_contract(track_adapter, tracks):
    adapter = track_adapter.TrackAdapter(str(tracks))
    heldout, cond = adapter.heldout(4, seed=1)
    assert heldout["ssh"].dims == ("member", "x") and heldout["x"].attrs["units"] == "km"
    assert heldout["ssh"].attrs["units"] == "m" and heldout["wind_speed"].attrs["units"] == "m s-1"
    assert_roundtrip(adapter, heldout, cond)  # values, coordinates, attributes; other units refused
    assert_roundtrip(track_adapter.TrackAdapter.from_spec(adapter.spec()), heldout, cond)  # without the data
    item = adapter.dataset("train")[0]
    assert item["x"].shape == (1, 64) and item["cond"].shape == (1,)
    assert len(adapter.dataset("train")) + len(adapter.dataset("val")) == 160
    in_cm = heldout.assign(ssh=heldout["ssh"].assign_attrs(units="cm") * 100)
    with pytest.raises(ValueError, match="in 'cm' but the model was trained on it in 'm'"):
        adapter.to_tensor(in_cm)


def test_the_example_adapter_trains_and_samples_in_its_units(track_adapter, tracks, tmp_path, monkeypatch):
    monkeypatch.chdir(tracks.parent)  # the module docstring's overrides, word for word, then the test's own
    sciddpm.train(["data.name=ssh_track", "~data.kwargs", "+data.kwargs={path: tracks.nc}", "model=tiny1d",
                   "name=ssh", "trainer=quick", "trainer.steps=20", "trainer.batch_size=16", "trainer.device=cpu",
                   "trainer.warmup_steps=2", "trainer.checkpoint_every=20", f"runs_dir={tmp_path}"])
    model = sciddpm.load("ssh", runs_dir=tmp_path, device="cpu")
    samples = model.sample(3, {"wind_speed": 8.0}, steps=4)
    assert samples["ssh"].dims == ("member", "x") and samples["ssh"].attrs["units"] == "m"
    np.testing.assert_array_equal(samples["x"].values, np.arange(64) * 7.0)
    assert float(samples["wind_speed"]) == 8.0 and samples["wind_speed"].attrs["units"] == "m s-1"
    assert np.isfinite(samples["ssh"].values).all()
    with pytest.raises(ValueError, match="rebuilt from a run's DataSpec and has no data"):
        model.adapter.heldout(2)
