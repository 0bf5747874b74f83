"""Which ERA5 times train and which validate, and the training items of a split.

``time_window`` cuts a store's time axis to the usable times (ARCO's ``valid_time_start``/``stop``,
then ``time_range``, both inclusive); ``train_val_split`` makes one contiguous validation block at
the end (from ``val_start``, else the last ``val_fraction``, else the last calendar year).
``Era5Items`` reads the items of a split lazily, a batch of times per variable read, and pickles
without the open store so that spawned DataLoader workers open their own. ``TIME_CONDS`` are the
conditions a time itself gives (day of year, hour), read from dates by ``TIME_READERS``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from sciddpm.data.base import read_groups
from sciddpm.data.spec import Normaliser
from sciddpm.data.era5_layouts import StorePlan, read_times

log = logging.getLogger(__name__)

TIME_CONDS = {
    "dayofyear": dict(units="day", min=1.0, max=366.0, feature="cyclic", period=365.25,
                      description="day of the year of the valid time (1 = 1 January)"),
    "hour": dict(units="h", feature="cyclic", period=24.0, description="UTC hour of the valid time"),
}


class Era5Items(torch.utils.data.Dataset):
    """Items of one split, read lazily; holds a path and numbers, so it pickles for spawned workers."""

    def __init__(self, plan: StorePlan, positions: np.ndarray, cond: np.ndarray, normaliser: Normaliser,
                 weight: np.ndarray, with_mask: bool):
        self.plan, self.positions = plan, np.asarray(positions, dtype=np.int64)
        self.cond = torch.from_numpy(np.ascontiguousarray(cond, dtype=np.float32))
        self.mean = np.asarray(normaliser.mean, dtype=np.float64)[:, None, None]
        self.std = np.asarray(normaliser.std, dtype=np.float64)[:, None, None]
        self.weight = torch.from_numpy(np.asarray(weight, dtype=np.float32)[None])
        self.with_mask = with_mask
        self._store = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # each process opens the store itself

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of items (the DataLoader asks for a whole batch at once): each variable is read
        once for all its times, not once per item - on a 64 x 32 store, a quarter of the training
        time went to reading item by item."""
        if self._store is None:
            self._store = self.plan.open()
        items = []
        for group in read_groups(indices, len(self.plan.channels) * int(np.prod(self.plan.shape))):
            raws = read_times(self._store, self.plan, self.positions[group])
            items += [self._item(i, raw) for i, raw in zip(group, raws)]
        return items

    def _item(self, i: int, raw: np.ndarray) -> dict[str, torch.Tensor]:
        x = ((raw - self.mean) / self.std).astype(np.float32)
        item = {"x": torch.from_numpy(x), "cond": self.cond[i], "weight": self.weight}
        valid = np.isfinite(x)
        if self.with_mask:
            item["mask"] = torch.from_numpy(valid)
        elif not valid.all():
            raise ValueError(f"time index {self.positions[i]} of {self.plan.path} has NaN, but the "
                             f"{len(self.positions)}-time split was judged NaN-free from a sample; pass "
                             "mask=True (data.kwargs.mask=true) so NaNs are masked out of the loss")
        return item


def check_time_range(time_range: Sequence[Any]) -> None:
    """``[start, stop]``: two ISO dates or times, start not after stop (each at its own precision)."""
    if isinstance(time_range, str) or len(time_range) != 2:
        raise ValueError(f"time_range must be [start, stop] (dates, inclusive), got {time_range!r}")
    try:
        (start, _), (_, stop) = (_period(t) for t in time_range)
    except ValueError:
        raise ValueError(f"time_range {list(time_range)!r}: give ISO dates or times such as "
                         "['2018-01-01', '2019-12-31T18'] (or years, months: ['2018', '2019-06'])") from None
    if start >= stop:
        raise ValueError(f"time_range starts after it stops ({time_range[0]} > {time_range[1]}); swap them")


def hour_label(stamp: np.datetime64) -> str:
    """A time stamp to the hour, for messages: ``2018-01-01T06``."""
    return str(np.datetime64(stamp, "h"))


def _period(text: Any) -> tuple[np.datetime64, np.datetime64]:
    """``[start, end)`` of the period an ISO date or time names, at its own precision: ``2018`` is
    the year, ``2018-12`` its December, ``2018-12-31`` the day, ``2018-12-31T18`` the hour."""
    stamp = np.datetime64(str(text))
    unit = np.datetime_data(stamp.dtype)[0]
    return stamp.astype("datetime64[ns]"), (stamp + np.timedelta64(1, unit)).astype("datetime64[ns]")


def time_window(ds: xr.Dataset, stamps: np.ndarray, time_range: Sequence[str] | None, path: str) -> tuple[int, int]:
    """Positions ``[first, last)`` of the usable times: the ARCO valid range, then ``time_range``;
    both inclusive, so a stop given as a date, month or year includes all of it."""
    lo, hi = stamps[0], stamps[-1] + np.timedelta64(1, "ns")
    if "valid_time_start" in ds.attrs:  # ARCO-ERA5: the time axis runs on past the data
        lo = max(lo, _period(ds.attrs["valid_time_start"])[0])
    if "valid_time_stop" in ds.attrs:
        hi = min(hi, _period(ds.attrs["valid_time_stop"])[1])
        log.info("%s: using its valid times %s .. %s (valid_time_start/stop attrs)", path, lo, hi)
    asked = None
    if time_range is not None:
        asked = _period(time_range[0])[0], _period(time_range[1])[1]
        lo, hi = max(lo, asked[0]), min(hi, asked[1])
    first = int(np.searchsorted(stamps, lo))
    last = max(first, int(np.searchsorted(stamps, hi)))  # (a window past the store's end: none)
    if last - first < 2:
        window = (f"time_range {list(time_range)} ({asked[0]} .. {asked[1]})" if asked is not None
                  else f"{lo} .. {hi}")
        raise ValueError(f"{path} has {last - first} time(s) in {window}; the store holds {stamps[0]} .. "
                         f"{stamps[-1]}{', valid ' + str(lo) + ' .. ' + str(hi) if 'valid_time_start' in ds.attrs else ''}"
                         "; widen time_range (or move it into the store's times)")
    return first, last


def train_val_split(stamps: np.ndarray, first: int, last: int, val_start: str | None,
                    val_fraction: float | None, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation positions: one contiguous validation block at the end (module docstring)."""
    if val_start is not None:
        cut = int(np.searchsorted(stamps, np.datetime64(str(val_start)).astype("datetime64[ns]")))
    elif val_fraction is not None:
        cut = last - max(1, round(val_fraction * (last - first)))
    else:
        year = stamps[last - 1].astype("datetime64[Y]").astype("datetime64[ns]")
        cut = int(np.searchsorted(stamps, year))
        if cut <= first:
            cut = last - max(1, round(0.1 * (last - first)))
    if not first < cut < last:
        raise ValueError(f"validation from {val_start or cut} leaves no training or no validation times in "
                         f"{stamps[first]} .. {stamps[last - 1]} of {path}; pick val_start inside that range")
    return np.arange(first, cut), np.arange(cut, last)


def day_of_year(stamps: np.ndarray) -> np.ndarray:
    """The day of the year (1 = 1 January, float64) of each ``datetime64`` time."""
    days = np.asarray(stamps).astype("datetime64[D]")
    return ((days - days.astype("datetime64[Y]")).astype(np.int64) + 1).astype(np.float64)


def hour_of_day(stamps: np.ndarray) -> np.ndarray:
    """The hour of the day (UTC, float64, minutes as fractions) of each ``datetime64`` time."""
    stamps = np.asarray(stamps)
    return (stamps - stamps.astype("datetime64[D]")).astype("timedelta64[m]").astype(np.int64) / 60.0


TIME_READERS = {"dayofyear": day_of_year, "hour": hour_of_day}  # the TIME_CONDS, read from dates
