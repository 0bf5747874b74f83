"""3-D Gray-Scott reaction-diffusion: the numerical solver a surrogate replaces, and its ensemble store.

The model (Gray & Scott 1984; Pearson 1993), for a feed species u and an autocatalyst v:

    du/dt = Du lap(u) - u v^2 + F (1 - u)
    dv/dt = Dv lap(v) + u v^2 - (F + k) v

on a periodic cube of ``size`` cells. Everything is dimensionless, in grid units: cell width 1,
time in the solver's own unit, u and v concentrations relative to the feed (the homogeneous
state u = 1, v = 0 is a fixed point for every F, k). ``Du = 0.1, Dv = 0.05`` (Pearson 1993's
ratio 2; half his 2e-5, 1e-5 on a 2.5-wide box of 256 cells, expressed per cell) give features
a few cells wide, so a 32^3 box holds several along each axis.

Numerics: forward Euler in time, second-order 7-point Laplacian in space (periodic through a
circular pad). Forward Euler is stable while dt times the fastest decay rate stays below 2; the
decay rates are at most ``12 D`` (diffusion, the checkerboard mode) plus ``v^2 + F <= 1 + F``
(reaction, for u, v in [0, 1]), so ``simulate`` refuses ``dt > 2 / (12 max(Du, Dv) + 1 + F)``.
The scheme keeps the discrete mass balance exactly: the spatial means obey
``mean(u + v)' = F (1 - mean u) - (F + k) mean v`` step by step, since the Laplacian sums to
zero on a periodic grid and the u v^2 terms cancel. It is first order in dt.

Initial conditions from ``seed`` (Pearson's recipe, randomised): u = 1, v = 0 everywhere except
``blobs`` cubes of 4 cells a side at random periodic positions where u = 1/2, v = 1/4, then +-1%
uniform noise on both, clipped to [0, 1]. By default 24 blobs per 32^3 cells (3 in 16^3): the
seeds must be about a feature wide to survive (2-cell seeds died out at every F, k here).

Runs are batched with torch (one tensor [B, Z, Y, X] per species, any device): ``simulate_batch``
for arrays of F, k, seed; ``simulate`` for one run as an ``xr.Dataset``. The ``gray_scott``
dataset draws (F, k) uniformly over [F_min, F_max] x [k_min, k_max] with run ``i`` seeded by
(seed, i). Default F in [0.026, 0.042], k in [0.059, 0.065], 3000 steps (t = 2250): chosen from a
5 x 5 scan of F in [0.026, 0.042], k in [0.057, 0.065] at 32^3, where every point with k >= 0.059
formed patterns that change visibly across the range - isolated spots at low F and high k,
worms and labyrinths towards high F and low k, mean v from about 0.06 to 0.23 - while k = 0.057
with F >= 0.038 went to a uniform state. (The 2-D Pearson map is shifted in 3-D: at F = 0.05-0.06,
k = 0.065 every run died out to u = 1, v = 0.)
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F_nn
import xarray as xr

from sciddpm.data import simstore
from sciddpm.data.cache import recipe_params

GRAY_SCOTT_VERSION = 1  # bump when the recipe changes: it is part of the cache key
DU, DV, DT = 0.1, 0.05, 0.75
DEFAULTS = {"samples": 512, "size": 32, "steps": 3000, "F_min": 0.026, "F_max": 0.042,
            "k_min": 0.059, "k_max": 0.065, "seed": 0}
BLOB_SIDE, BLOBS_PER_CELL = 4, 24 / 32**3  # initial seeds: 4-cell cubes, 24 in a 32^3 box
BLOCK = 16  # runs per worker job, integrated together as one batch
FIELD_ATTRS = {"u": {"units": "1", "long_name": "feed species concentration u (relative to the feed)"},
               "v": {"units": "1", "long_name": "autocatalyst concentration v (relative to the feed)"}}
PARAM_ATTRS = {"F": {"units": "1", "long_name": "feed rate F (per unit time, dimensionless)"},
               "k": {"units": "1", "long_name": "kill rate k (per unit time, dimensionless)"}}


def max_stable_dt(F: float, Du: float = DU, Dv: float = DV) -> float:
    """The largest forward-Euler step the solver accepts (module docstring)."""
    return 2.0 / (12.0 * max(Du, Dv) + 1.0 + F)


class _State:
    """u and v stored inside halo-padded buffers ``[B, Z+2, Y+2, X+2]``, stepped in place.

    In-place updates into preallocated buffers: allocating fresh [B, *S] temporaries every step
    made the solver spend as long in the kernel (page faults) as in arithmetic.
    """

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        pad = lambda a: F_nn.pad(a[:, None], (1, 1, 1, 1, 1, 1), mode="circular")[:, 0].contiguous()  # noqa: E731
        self.pu, self.pv = pad(u), pad(v)
        inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
        self.u, self.v = self.pu[inner], self.pv[inner]
        self.lu, self.lv, self.uvv = (torch.empty_like(u) for _ in range(3))

    @staticmethod
    def _wrap(p: torch.Tensor) -> None:
        """Periodic halo: faces copied axis by axis, so edges and corners wrap too."""
        for axis in (1, 2, 3):
            p.select(axis, 0).copy_(p.select(axis, -2))
            p.select(axis, -1).copy_(p.select(axis, 1))

    @staticmethod
    def _laplacian(p: torch.Tensor, centre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """7-point Laplacian (cell width 1) of the padded ``p`` into ``out``."""
        c = slice(1, -1)
        out.copy_(p[:, 2:, c, c]).add_(p[:, :-2, c, c]).add_(p[:, c, 2:, c]).add_(p[:, c, :-2, c])
        return out.add_(p[:, c, c, 2:]).add_(p[:, c, c, :-2]).sub_(centre, alpha=6.0)

    def step(self, F: torch.Tensor, k: torch.Tensor, dt: float, Du: float, Dv: float) -> None:
        """One forward-Euler step of the module docstring's equations."""
        self._wrap(self.pu)
        self._wrap(self.pv)
        lu = self._laplacian(self.pu, self.u, self.lu)
        lv = self._laplacian(self.pv, self.v, self.lv)
        uvv = torch.mul(self.u, self.v, out=self.uvv).mul_(self.v)
        lu.mul_(Du).sub_(uvv).add_(F).addcmul_(F, self.u, value=-1.0)  # Du lap u - u v^2 + F (1 - u)
        lv.mul_(Dv).add_(uvv).addcmul_(F + k, self.v, value=-1.0)  # Dv lap v + u v^2 - (F + k) v
        self.u.add_(lu, alpha=dt)
        self.v.add_(lv, alpha=dt)


def initial_state(size: int, seed: int, blobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) float64 ``[size]^3`` at t = 0 from ``seed`` (module docstring)."""
    rng = np.random.default_rng(seed)
    u, v = np.ones((size,) * 3), np.zeros((size,) * 3)
    side = min(BLOB_SIDE, size)
    blobs = max(1, round(BLOBS_PER_CELL * size**3)) if blobs is None else blobs
    for corner in rng.integers(0, size, size=(blobs, 3)):
        cube = np.ix_(*[(c + np.arange(side)) % size for c in corner])
        u[cube], v[cube] = 0.5, 0.25
    u += rng.uniform(-0.01, 0.01, u.shape)
    v += rng.uniform(-0.01, 0.01, v.shape)
    return np.clip(u, 0.0, 1.0), np.clip(v, 0.0, 1.0)


def simulate_batch(F: Sequence[float], k: Sequence[float], seeds: Sequence[int], *, size: int = 32,
                   steps: int = DEFAULTS["steps"], dt: float = DT, Du: float = DU, Dv: float = DV,
                   blobs: int | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   initial: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Integrate ``len(F)`` runs together; returns (u, v) as numpy ``[B, size, size, size]``.

    ``initial`` replaces the seeded initial conditions by given (u, v) ``[B, *S]`` arrays.
    """
    F_, k_ = np.asarray(F, dtype=np.float64).reshape(-1), np.asarray(k, dtype=np.float64).reshape(-1)
    seeds = np.asarray(seeds).reshape(-1)
    if not len(F_) == len(k_) == len(seeds) or len(F_) == 0:
        raise ValueError(f"need one F, k and seed per run, got {len(F_)}, {len(k_)}, {len(seeds)}")
    if np.any(F_ < 0) or np.any(k_ < 0):
        raise ValueError("F and k must be non-negative (they are rates)")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0 or size < 3:
        raise ValueError(f"steps must be a non-negative integer and size at least 3, got {steps}, {size}")
    limit = max_stable_dt(float(F_.max()), Du, Dv)
    if not 0 < dt <= limit:
        raise ValueError(f"dt={dt:g} is outside the stable range (0, {limit:.4g}] for Du={Du:g}, Dv={Dv:g}, "
                         f"F={F_.max():g}; lower dt (and raise steps to keep the same time)")
    if initial is None:
        states = [initial_state(size, int(s), blobs) for s in seeds]
        initial = (np.stack([s[0] for s in states]), np.stack([s[1] for s in states]))
    as_tensor = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
    state = _State(as_tensor(initial[0]), as_tensor(initial[1]))
    if state.u.shape != (len(F_), size, size, size) or state.v.shape != state.u.shape:
        raise ValueError(f"initial (u, v) must both have shape {(len(F_), size, size, size)}, "
                         f"got {tuple(state.u.shape)}, {tuple(state.v.shape)}")
    Fb, kb = as_tensor(F_).reshape(-1, 1, 1, 1), as_tensor(k_).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        for _ in range(int(steps)):
            state.step(Fb, kb, dt, Du, Dv)
    u, v = state.u.cpu().numpy().copy(), state.v.cpu().numpy().copy()
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise FloatingPointError("the Gray-Scott integration produced NaN/Inf; lower dt")
    return u, v


def simulate(F: float, k: float, *, size: int = 32, steps: int = DEFAULTS["steps"], seed: int = 0,
             dt: float = DT, Du: float = DU, Dv: float = DV, blobs: int | None = None,
             dtype: torch.dtype = torch.float32, device: str = "cpu") -> xr.Dataset:
    """One run as a Dataset: u, v over (z, y, x) in box lengths, F and k as scalar coordinates."""
    u, v = simulate_batch([F], [k], [seed], size=size, steps=steps, dt=dt, Du=Du, Dv=Dv, blobs=blobs,
                          dtype=dtype, device=device)
    centres = (np.arange(size) + 0.5) / size
    coords: dict[str, Any] = {d: (d, centres, {"units": "1", "long_name": f"{d} of the cell centre, in box lengths"})
                              for d in simstore.SPATIAL}
    coords.update({"F": ((), float(F), PARAM_ATTRS["F"]), "k": ((), float(k), PARAM_ATTRS["k"])})
    dims = simstore.SPATIAL
    return xr.Dataset({"u": (dims, u[0], FIELD_ATTRS["u"]), "v": (dims, v[0], FIELD_ATTRS["v"])}, coords=coords,
                      attrs={"model": "Gray-Scott reaction-diffusion, periodic box, grid units",
                             "Du": Du, "Dv": Dv, "dt": dt, "steps": int(steps), "time": dt * int(steps),
                             "seed": int(seed)})


def gray_scott_params(**overrides: Any) -> dict:
    """The full ``gray_scott`` dataset parameter set (defaults + overrides), validated."""
    p = recipe_params("gray_scott", DEFAULTS, overrides)
    if p["samples"] < 2 or p["size"] < 8 or p["steps"] < 1:
        raise ValueError(f"gray_scott needs samples >= 2, size >= 8 and steps >= 1, got {p}")
    if not (0 <= p["F_min"] <= p["F_max"] and 0 <= p["k_min"] <= p["k_max"]):
        raise ValueError(f"gray_scott needs 0 <= F_min <= F_max and 0 <= k_min <= k_max, got {p}")
    return p


def gray_scott_cases(samples: int, F_min: float, F_max: float, k_min: float, k_max: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(F, k) of run ``i``: the first two draws of ``default_rng([seed, i])``."""
    draws = [np.random.default_rng([seed, i]).uniform(size=2) for i in range(samples)]
    unit = np.array(draws).reshape(samples, 2)
    return F_min + (F_max - F_min) * unit[:, 0], k_min + (k_max - k_min) * unit[:, 1]


def gray_scott_block(start: int, stop: int, params: Mapping[str, np.ndarray], *, size: int, steps: int,
                     seed: int) -> dict:
    """Runs ``start..stop-1`` of the dataset, integrated as one batch (the ``simstore`` generator)."""
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # a worker process: one per core
    seeds = [int(np.random.default_rng([seed, i]).integers(2**63)) for i in range(start, stop)]
    u, v = simulate_batch(params["F"], params["k"], seeds, size=size, steps=steps)
    return {"u": u, "v": v}


def describe(**params: Any) -> str:
    p = gray_scott_params(**params)
    return (f"{p['samples']} 3-D Gray-Scott runs of {p['size']}^3 cells, {p['steps']} steps of dt={DT:g} "
            f"(Du={DU:g}, Dv={DV:g}), F uniform in [{p['F_min']:g}, {p['F_max']:g}], k uniform in "
            f"[{p['k_min']:g}, {p['k_max']:g}], random initial conditions, seed {p['seed']}")


def write_gray_scott_store(out: str | Path, *, workers: int | None = None, **params: Any) -> Path:
    """Simulate the ``gray_scott`` ensemble and write it to ``out`` (zarr, atomically)."""
    p = gray_scott_params(**params)
    F, k = gray_scott_cases(p["samples"], p["F_min"], p["F_max"], p["k_min"], p["k_max"], p["seed"])
    return simstore.build_store(
        out, shape=(p["size"],) * 3, fields=FIELD_ATTRS,
        params={"F": (F, PARAM_ATTRS["F"]), "k": (k, PARAM_ATTRS["k"])},
        generate=gray_scott_block, options={"size": p["size"], "steps": p["steps"], "seed": p["seed"]},
        block=BLOCK, workers=workers,
        attrs={"title": "gray_scott: 3-D Gray-Scott reaction-diffusion ensemble", "recipe": "sciddpm.data.gray_scott",
               "recipe_version": GRAY_SCOTT_VERSION, "description": describe(**p), "periodic": [True, True, True],
               "Du": DU, "Dv": DV, "dt": DT, "steps": p["steps"], "time": DT * p["steps"]},
        desc="gray_scott")


def ensure_gray_scott_store(*, workers: int | None = None, **params: Any) -> Path:
    """The cached ``gray_scott`` store for ``params`` (simulated on first use)."""
    p = gray_scott_params(**params)
    return simstore.ensure_cached("gray_scott", GRAY_SCOTT_VERSION, p,
                                  lambda path: write_gray_scott_store(path, workers=workers, **p))
