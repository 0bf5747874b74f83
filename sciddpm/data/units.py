"""Units of physical variables: whether data handed to a trained model is in the units it learnt.

Values are never converted here: a scientist converts (with pint, MetPy or by hand) and says so in
the ``units`` attribute. Each units string is read into a dimension and a scale (``m s**-1``,
``m s-1`` and ``m/s`` are one unit; ``km/h`` is the same dimension at another scale), so:

* the same unit however it is spelt (CF/UDUNITS, pint, ERA5, Copernicus Marine) passes quietly;
* another unit of one quantity (degC for a model of K, hPa for Pa, km/h for m/s, % for a
  fraction, ppb for ppm) or of another quantity (m of geopotential height for geopotential's
  m**2 s**-2) is refused, naming both;
* a string this reader does not know (``gpm``, ``m of water equivalent``) that differs from the
  training data's is warned about, since only a person can tell.

pint would read these but not the CF spellings (``m s-1``, ``degrees_C``) without cf_xarray's
registry on top; the few dozen symbols of geoscience data are read here instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

# symbol -> ({base dimension: exponent}, factor to SI). Temperatures stand alone (below): an offset.
_PRESSURE = {"M": 1, "L": -1, "T": -2}
_SYMBOLS: dict[str, tuple[dict[str, int], float]] = {
    "m": ({"L": 1}, 1.0), "km": ({"L": 1}, 1e3), "cm": ({"L": 1}, 1e-2), "mm": ({"L": 1}, 1e-3),
    "s": ({"T": 1}, 1.0), "min": ({"T": 1}, 60.0), "h": ({"T": 1}, 3600.0), "day": ({"T": 1}, 86400.0),
    "kg": ({"M": 1}, 1.0), "g": ({"M": 1}, 1e-3),
    "Pa": (_PRESSURE, 1.0), "hPa": (_PRESSURE, 1e2), "kPa": (_PRESSURE, 1e3), "bar": (_PRESSURE, 1e5),
    "N": ({"M": 1, "L": 1, "T": -2}, 1.0), "J": ({"M": 1, "L": 2, "T": -2}, 1.0),
    "W": ({"M": 1, "L": 2, "T": -3}, 1.0), "mol": ({"N": 1}, 1.0),
    "K": ({"K": 1}, 1.0),  # inside a compound unit (K s-1) a temperature is an interval
    "knot": ({"L": 1, "T": -1}, 1852.0 / 3600.0), "mph": ({"L": 1, "T": -1}, 0.44704),
    "%": ({}, 1e-2), "ppm": ({}, 1e-6), "ppb": ({}, 1e-9), "1": ({}, 1.0),
}
_SPELLINGS = {  # lower-case words and symbols -> the symbol above
    **{w: "m" for w in ("meter", "metre", "meters", "metres")},
    **{w: "km" for w in ("kilometer", "kilometre", "kilometers", "kilometres")},
    **{w: "mm" for w in ("millimeter", "millimetre", "millimeters", "millimetres")},
    **{w: "s" for w in ("sec", "second", "seconds")}, **{w: "min" for w in ("minute", "minutes")},
    **{w: "h" for w in ("hr", "hour", "hours")}, **{w: "day" for w in ("d", "days")},
    **{w: "hPa" for w in ("hpa", "hectopascal", "hectopascals", "mbar", "millibar", "millibars", "mb")},
    "pa": "Pa", "pascal": "Pa", "pascals": "Pa", "kpa": "kPa", "kilopascal": "kPa",
    "kt": "knot", "kts": "knot", "knots": "knot", "kelvin": "K", "k": "K", "percent": "%",
    "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g", "newton": "N", "joule": "J", "watt": "W",
}
_TEMPERATURE = re.compile(r"^(?:deg(?:ree)?s?[\s_]*|°\s*)?(k|c|f|kelvin|celsius|fahrenheit)$", re.IGNORECASE)
_ABSOLUTE = {"k": "K", "kelvin": "K", "c": "degC", "celsius": "degC", "f": "degF", "fahrenheit": "degF"}
_DIMENSIONLESS = {"", "1", "-", "(0 - 1)", "0-1", "(0-1)", "dimensionless", "fraction", "unitless", "none"}
_TOKEN = re.compile(r"([A-Za-z%µ]+)(-?\d+)?$")


def read_units(units: Any) -> tuple | None:
    """``units`` as a comparable value: ``("temperature", "K"|"degC"|"degF")`` for an absolute
    temperature, else ``(sorted (dimension, exponent) pairs, factor to SI)``; None where it holds
    a word this reader does not know."""
    text = str(units).strip()
    if text.lower() in _DIMENSIONLESS:
        return ((), 1.0)
    absolute = _TEMPERATURE.match(text)
    if absolute:
        return ("temperature", _ABSOLUTE[absolute.group(1).lower()])
    text = text.replace("**", "").replace("^", "")
    text = re.sub(r"[·*]|(?<=[A-Za-z0-9])\.(?=[A-Za-z])", " ", text)  # kg.m-2 and kg*m**-2 as kg m-2
    dims: dict[str, int] = {}
    factor = 1.0
    for part_index, part in enumerate(text.split("/")):
        for token in part.split():
            if token == "1":  # 1/s
                continue
            found = _TOKEN.match(token)
            if not found:
                return None
            word, power = found.group(1), int(found.group(2) or 1)
            symbol = word if word in _SYMBOLS else _SPELLINGS.get(word.lower())
            if symbol is None:
                return None
            power = -power if part_index > 0 else power  # kg/m2/s: every part after a / divides
            base, scale = _SYMBOLS[symbol]
            for dim, exp in base.items():
                dims[dim] = dims.get(dim, 0) + exp * power
            factor *= scale ** power
    return (tuple(sorted((d, e) for d, e in dims.items() if e)), factor)


def same_units(have: Any, want: Any) -> bool | None:
    """True when two units strings mean one unit, False when they mean different ones, None when
    either holds a word :func:`read_units` does not know (and they are not spelt alike)."""
    if re.sub(r"[\s*^]", "", str(have)) == re.sub(r"[\s*^]", "", str(want)):
        return True
    a, b = read_units(have), read_units(want)
    if a is None or b is None:
        return None
    if a[0] == "temperature" or b[0] == "temperature":
        return a == b
    return a[0] == b[0] and abs(a[1] - b[1]) <= 1e-9 * max(abs(a[1]), abs(b[1]))


def check_same_units(what: str, have: Any, want: Any) -> None:
    """Refuse ``what`` in units ``have`` where ``want`` was trained on; warn where only a person
    can tell. No units on either side is taken as the training units."""
    if have is None or want is None:
        return
    same = same_units(have, want)
    if same is False:
        raise ValueError(f"{what} is in {have} but the model was trained on it in {want}; convert it to {want} "
                         "first (and set its units attribute): values are never converted here")
    if same is None:
        log.warning("%s says units %r, the training data said %r; taken as the same units (values are never "
                    "converted): convert it first if they differ", what, str(have), str(want))


def check_units(ds: Any, trained: Mapping[str, Mapping[str, Any]]) -> None:
    """:func:`check_same_units` for each variable of ``ds`` against the training data's attrs
    (``trained``: variable -> its attrs there); a variable without a units attribute is taken as
    in the training units."""
    for name, attrs in trained.items():
        have = ds[name].attrs.get("units") if name in getattr(ds, "data_vars", {}) else None
        check_same_units(f"variable {name!r}", have, (attrs or {}).get("units"))
