"""A complete adapter in one page: sea-surface height along a satellite track, by wind speed.

The data: one netCDF or zarr store with a variable ``ssh(time, x)`` (one 1-D track per time, in
its units, e.g. m) on an ``x`` coordinate (km along the track), and a variable ``wind_speed(time)``
with units, the condition. Each time is one training example; the model learns the tracks a wind
speed gives, and samples come back on the same ``x`` coordinate in the same units.

    import sciddpm, track_adapter                      # the import registers "ssh_track"
    sciddpm.train(["data.name=ssh_track", "~data.kwargs", "+data.kwargs={path: tracks.nc}", "model=tiny1d",
                   "name=ssh"])                        # ~data.kwargs: not the default audio data's options
    sciddpm.load("ssh").sample(16, {"wind_speed": 8.0})   # Dataset: ssh(member, x) in m

(From the command line the adapter must be installed as a plugin: docs/architecture.md, "Plugins".)

Shipped as documentation (docs/architecture.md, "Adding an adapter") and run by
tests/test_example_adapter.py, so it stays true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from sciddpm.data.base import Adapter, condition_coords, heldout_picks, register_adapter, split_indices
from sciddpm.data.conditioning import CondSchema, CondVar
from sciddpm.data.spec import DataSpec, Normaliser, plain_json
from sciddpm.data.stores import open_store, write_store
from sciddpm.data.units import check_units


class TrackItems(torch.utils.data.Dataset):
    """The items of one split, already normalised (a few MB: read once, kept in memory)."""

    def __init__(self, x: np.ndarray, cond: np.ndarray):
        self.x, self.cond = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(cond.astype(np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i, None], "cond": self.cond[i, None]}  # [C=1, L] and [cond dim = 1]


@register_adapter("ssh_track")
class TrackAdapter(Adapter):
    """``path``: the store; ``val_fraction``/``split_seed``: the deterministic train/val split."""

    def __init__(self, path: str, val_fraction: float = 0.1, split_seed: int = 0):
        self.path, self.val_fraction, self.split_seed = path, val_fraction, split_seed
        self._spec: DataSpec | None = None

    # ------------------------------------------------------------------ training side
    def _read(self, split: str) -> tuple[xr.Dataset, np.ndarray, np.ndarray]:
        """The store (lazy) and the tracks and wind speeds of ``split``, read once per call."""
        if self.path is None:
            raise ValueError("this adapter was rebuilt from a run's DataSpec and has no data; build it with path=")
        ds = open_store(self.path, what="track store")
        for name in ("ssh", "wind_speed"):
            if name not in ds.data_vars:
                raise ValueError(f"{self.path} has no variable {name!r}; it has {sorted(map(str, ds.data_vars))}")
        rows = split_indices(ds.sizes["time"], split, self.val_fraction, self.split_seed)
        return ds, ds["ssh"].transpose("time", "x").values[rows], ds["wind_speed"].values[rows]

    def spec(self) -> DataSpec:
        if self._spec is None:
            ds, ssh, wind = self._read("train")
            if not ds["wind_speed"].attrs.get("units"):  # a condition is a number in its units
                raise ValueError(f"wind_speed in {self.path} has no units attribute; set one (e.g. 'm s-1')")
            cond = CondSchema([CondVar("wind_speed", units=ds["wind_speed"].attrs["units"], min=float(wind.min()),
                                       max=float(wind.max()), description="10 m wind speed")])
            output = {"x": {"values": ds["x"].values.tolist(), "attrs": plain_json(dict(ds["x"].attrs))},
                      "ssh_attrs": plain_json(dict(ds["ssh"].attrs))}
            self._spec = DataSpec(adapter="ssh_track", dims=1, channels=["ssh"], shape=[ssh.shape[1]],
                                  padding=["zeros"], cond=cond, sigma_data=1.0, output=output,
                                  normaliser=Normaliser([float(ssh.mean(dtype=np.float64))],
                                                        [float(ssh.std(dtype=np.float64))], channels=["ssh"]),
                                  notes=[f"trained on {ssh.shape[0]} tracks from {self.path}"])
        return self._spec

    def dataset(self, split: str = "train") -> TrackItems:
        _, ssh, wind = self._read(split)
        normalised = self.spec().normaliser.normalise(torch.from_numpy(ssh[:, None]), channel_axis=1)
        return TrackItems(normalised[:, 0].numpy(), wind)

    def heldout(self, n: int, seed: int = 0) -> tuple[xr.Dataset, dict]:
        _, ssh, wind = self._read("val")
        pick = heldout_picks(n, len(ssh), seed, "tracks", "train with a larger data.kwargs.val_fraction")
        cond = {"wind_speed": wind[pick].tolist()}
        x = self.spec().normaliser.normalise(torch.from_numpy(ssh[pick, None]), channel_axis=1)
        return self.to_xarray(x, cond), cond

    # ------------------------------------------------------------------ inference side
    @classmethod
    def from_spec(cls, spec: DataSpec) -> TrackAdapter:
        self = cls.__new__(cls)
        self.path, self.val_fraction, self.split_seed, self._spec = None, 0.1, 0, spec
        return self

    def to_xarray(self, x: torch.Tensor, cond: Mapping[str, Any]) -> xr.Dataset:
        spec = self.spec()
        values = spec.normaliser.denormalise(torch.as_tensor(x).double(), channel_axis=1).numpy()[:, 0]
        checked, cond_coords = condition_coords(spec.cond, cond, len(values))
        coords = {"member": np.arange(len(values)),
                  "x": ("x", np.asarray(spec.output["x"]["values"]), spec.output["x"]["attrs"]), **cond_coords}
        ssh = xr.Variable(("member", "x"), values, dict(spec.output["ssh_attrs"]))
        return xr.Dataset({"ssh": ssh}, coords=coords, attrs={"conditions": " ".join(checked) or "none"})

    def to_tensor(self, ds: xr.Dataset) -> torch.Tensor:
        spec = self.spec()
        if "ssh" not in ds.data_vars:
            raise ValueError(f"expected a Dataset with an 'ssh' variable, got {sorted(map(str, ds.data_vars))}")
        check_units(ds, {"ssh": spec.output["ssh_attrs"]})  # cm handed to a model of m is refused
        if not np.array_equal(ds["x"].values, spec.output["x"]["values"]):
            raise ValueError("the tracks are on another x coordinate than the model's; interpolate them onto it first")
        lead = self.example_dim(ds)
        values = ds["ssh"].transpose(*([lead] if lead else []), "x").values.reshape(-1, 1, spec.shape[0])
        return spec.normaliser.normalise(torch.from_numpy(values.astype(np.float64)), channel_axis=1)

    def example_dim(self, ds: xr.Dataset) -> str | None:
        others = [d for d in ds["ssh"].dims if d != "x"]
        return others[0] if others else None

    def write(self, ds: xr.Dataset, out: str | Path) -> list[Path]:
        out = Path(out)
        return [write_store(ds, out if out.suffix in (".nc", ".zarr") else out / "samples.nc")]
