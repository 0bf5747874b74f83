"""Units of physical variables: whether data handed to a trained model is in the units it learnt.

Values are never converted here: a scientist converts (with pint, MetPy or by hand) and says so in
the ``units`` attribute. Each units string is read into a dimension and a scale (``m s**-1``,
``m s-1``, ``m/s``, ``meter / second`` and ``m s⁻¹`` are one unit; ``km/h`` is the same dimension
at another scale), so:

* the same unit however it is spelt (CF/UDUNITS, pint and MetPy, ERA5, CMIP6, Copernicus Marine)
  passes quietly;
* another unit of one quantity (degC for a model of K, hPa for Pa, km/h for m/s, % for a
  fraction, ppb for ppm, mol mol-1 for kg kg-1) or of another quantity (m of geopotential height
  for geopotential's m**2 s**-2) is refused, naming both;
* a string this reader does not know (``mm/month``, ``PVU``...) that differs from the training
  data's is warned about, since only a person can tell; no units (or a placeholder such as
  ``""`` or ``"none"``) on either side is taken as the training units.

pint would read most of these but not the CF spellings (``m s-1``, ``degrees_C``) without
cf_xarray's registry on top; the few dozen symbols of geoscience data are read here instead.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

# symbol -> ({base dimension: exponent}, factor to SI). Absolute temperatures stand alone (an
# offset, below); inside a compound (K s-1, degC/day) a temperature is an interval.
_PRESSURE = {"M": 1, "L": -1, "T": -2}
_SPEED = {"L": 1, "T": -1}
_SYMBOLS: dict[str, tuple[dict[str, int], float]] = {
    "m": ({"L": 1}, 1.0), "km": ({"L": 1}, 1e3), "dam": ({"L": 1}, 10.0), "cm": ({"L": 1}, 1e-2),
    "mm": ({"L": 1}, 1e-3), "L": ({"L": 3}, 1e-3), "Sv": ({"L": 3, "T": -1}, 1e6),
    "s": ({"T": 1}, 1.0), "ms": ({"T": 1}, 1e-3), "us": ({"T": 1}, 1e-6), "ns": ({"T": 1}, 1e-9),
    "min": ({"T": 1}, 60.0), "h": ({"T": 1}, 3600.0), "day": ({"T": 1}, 86400.0),
    "Hz": ({"T": -1}, 1.0), "kHz": ({"T": -1}, 1e3), "MHz": ({"T": -1}, 1e6),
    "kg": ({"M": 1}, 1.0), "g": ({"M": 1}, 1e-3), "mg": ({"M": 1}, 1e-6), "ug": ({"M": 1}, 1e-9),
    "mol": ({"N": 1}, 1.0), "mmol": ({"N": 1}, 1e-3), "umol": ({"N": 1}, 1e-6), "nmol": ({"N": 1}, 1e-9),
    "Pa": (_PRESSURE, 1.0), "hPa": (_PRESSURE, 1e2), "kPa": (_PRESSURE, 1e3), "bar": (_PRESSURE, 1e5),
    "dbar": (_PRESSURE, 1e4), "N": ({"M": 1, "L": 1, "T": -2}, 1.0),
    "J": ({"M": 1, "L": 2, "T": -2}, 1.0), "MJ": ({"M": 1, "L": 2, "T": -2}, 1e6),
    "W": ({"M": 1, "L": 2, "T": -3}, 1.0), "kW": ({"M": 1, "L": 2, "T": -3}, 1e3),
    "K": ({"K": 1}, 1.0), "mK": ({"K": 1}, 1e-3), "degF": ({"K": 1}, 5.0 / 9.0),
    "rad": ({"angle": 1}, 1.0), "degree": ({"angle": 1}, math.pi / 180.0),
    "knot": (_SPEED, 1852.0 / 3600.0), "mph": (_SPEED, 0.44704), "kph": (_SPEED, 1.0 / 3.6),
    "mile": ({"L": 1}, 1609.344), "uM": ({"N": 1, "L": -3}, 1e-3),  # micromolar: umol/L
    "DU": ({"DU": 1}, 1.0),  # Dobson units: a column amount, kept apart
    "permil": ({}, 1e-3),
    "%": ({}, 1e-2), "ppm": ({}, 1e-6), "ppb": ({}, 1e-9),
    "1": ({}, 1.0),
}
_SPELLINGS = {  # other spellings -> the symbol above (case as written; full words also in Title case)
    **{w: "m" for w in ("meter", "metre", "meters", "metres", "gpm")},  # gpm: geopotential metres
    **{w: "km" for w in ("kilometer", "kilometre", "kilometers", "kilometres", "Km")},
    **{w: "mm" for w in ("millimeter", "millimetre", "millimeters", "millimetres")},
    **{w: "s" for w in ("sec", "secs", "second", "seconds")},
    **{w: "ms" for w in ("msec", "msecs", "millisecond", "milliseconds")}, "µs": "us", "μs": "us",
    **{w: "us" for w in ("usec", "microsecond", "microseconds")}, "nanosecond": "ns", "nanoseconds": "ns", **{w: "min" for w in ("mins", "minute", "minutes")},
    **{w: "h" for w in ("hr", "hrs", "hour", "hours")}, **{w: "day" for w in ("d", "days")},
    **{w: "hPa" for w in ("hpa", "hectopascal", "hectopascals", "mbar", "mbars", "millibar", "millibars", "mb")},
    **{w: "%" for w in ("percent", "percentage", "pct")}, **{w: "K" for w in ("kelvin", "kelvins")},
    **{w: "degree" for w in ("degrees", "deg", "degrees_north", "degrees_east", "degree_north", "degree_east",
                             "degrees_true")}, "radian": "rad", "radians": "rad",
    "pa": "Pa", "pascal": "Pa", "pascals": "Pa", "kpa": "kPa", "kilopascal": "kPa", "decibar": "dbar",
    "kt": "knot", "kts": "knot", "knots": "knot", "Kg": "kg", "kilogram": "kg", "kilograms": "kg",
    "gram": "g", "grams": "g", "µg": "ug", "μg": "ug", "µmol": "umol", "μmol": "umol",
    "newton": "N", "joule": "J", "joules": "J", "watt": "W", "watts": "W", "hertz": "Hz", "khz": "kHz", "KHz": "kHz", "kilohertz": "kHz",
    "l": "L", "liter": "L", "litre": "L", "sverdrup": "Sv", "ppmv": "ppm", "ppbv": "ppb",
    "dobson": "DU", "Dobson": "DU", "centimeter": "cm", "centimetre": "cm", "centimeters": "cm",
    "centimetres": "cm", "mBar": "hPa", "milibar": "hPa", "decibars": "dbar", "bars": "bar", "kn": "knot",
    "mi": "mile", "mile": "mile", "miles": "mile", "mole": "mol", "moles": "mol", "millimole": "mmol",
    "micromol": "umol", "micromole": "umol", "mumol": "umol", "nanomol": "nmol", "milligram": "mg",
    "microgram": "ug", "PPM": "ppm", "PPB": "ppb", "hz": "Hz", "‰": "permil", "µM": "uM", "μM": "uM",
}
_TEMPERATURE = re.compile(r"^(?:deg(?:ree)?s?[\s_]*|°\s*)?(k|c|f|kelvin|celsius|celcius|fahrenheit)$", re.IGNORECASE)
_ABSOLUTE = {"k": "K", "kelvin": "K", "c": "degC", "celsius": "degC", "celcius": "degC", "f": "degF",
             "fahrenheit": "degF"}
_INTERVAL = {"K": "K", "degC": "K", "degF": "degF"}  # a temperature inside a compound unit
_DIMENSIONLESS = {"1", "~", "(0 - 1)", "0 - 1", "0-1", "(0-1)", "dimensionless", "fraction", "unitless"}
_UNSAID = {"", "none", "null", "-", "n/a", "na", "unknown"}  # a units attribute that says nothing
_WHOLE = {"m of water equivalent": "m", "Degree true": "degree",  # ERA5 phrases
          "per cent": "%", "0-100": "%", "0 - 100": "%", "per mil": "permil", "parts per million": "ppm",
          "parts per billion": "ppb"}
_TOKEN = re.compile(r"([A-Za-z%µμ°_‰]+)([-+]?\d+)?$")
_NOT_FOLDED = {"Mbar", "Mb", "MB"}  # megabar, not millibar
_ELEMENTS = {"C", "N", "P", "S", "O", "Fe", "Si"}  # after a mass or amount: kg C, mol N
_MASS_OR_AMOUNT = {"kg", "g", "mg", "ug", "mol", "mmol", "umol", "nmol"}
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")


def _plain(units: Any) -> str:
    """The text of a units attribute (bytes decoded, NUL padding and outer quotes dropped)."""
    if isinstance(units, bytes):
        units = units.decode("utf-8", "replace")
    return str(units).replace("\x00", "").strip().strip("'\"").strip()


def _symbol(word: str) -> str | None:
    """The symbol in ``_SYMBOLS`` that ``word`` spells, or None; a temperature (degC, °C) inside a
    compound unit is an interval, the same as K (degF: 5/9 of one)."""
    if word in _SYMBOLS:
        return word
    if word in _SPELLINGS:
        return _SPELLINGS[word]
    temperature = _TEMPERATURE.match(word)
    if temperature:
        return _INTERVAL[_ABSOLUTE[temperature.group(1).lower()]]
    if word[:1].isupper() and word[1:].islower() and len(word) >= 3 and word not in _NOT_FOLDED:
        lower = word.lower()  # Meters, Day, Kelvin
        return lower if lower in _SYMBOLS else _SPELLINGS.get(lower)
    return None


def says_nothing(units: Any) -> bool:
    """True for a missing units attribute or a placeholder (``""``, ``"none"``, ``"-"``)."""
    return units is None or _plain(units).lower() in _UNSAID


def read_units(units: Any) -> tuple | None:
    """``units`` as a comparable value: ``("temperature", "K"|"degC"|"degF")`` for an absolute
    temperature, else ``(sorted (dimension, exponent) pairs, factor to SI, quantities)`` where
    ``quantities`` names the base quantities a dimensionless ratio is made of (``kg kg-1``: mass;
    ``mol mol-1``: amount), so that two ratios of different things are not one unit; None where
    it holds a word this reader does not know."""
    if says_nothing(units):
        return None
    text = _plain(units)
    if len(text) > 2 and text[0] + text[-1] in ("[]", "()") and text[1:-1].count("(") == text[1:-1].count(")"):
        text = text[1:-1].strip()  # [K], (K)
    text = _WHOLE.get(text, text)
    if text.lower() in _DIMENSIONLESS:
        return ((), 1.0, ())
    text = text.translate(_SUPERSCRIPTS).replace("−", "-").replace("℃", "degC").replace("º", "°")
    text = re.sub(r"\bdeg(?:ree)?s?[\s_]+([CFK])(?:elsius|ahrenheit|elvin)?\b", r"deg\1", text, flags=re.IGNORECASE)
    text = re.sub(r"\bdeg(?:ree)?s?[\s_]*[NSEW]\b", "degree", text)  # degrees N, degrees_E
    absolute = _TEMPERATURE.match(text)
    if absolute:
        return ("temperature", _ABSOLUTE[absolute.group(1).lower()])
    text = re.sub(r"^per\s+", "1/", re.sub(r"\s+per\s+", "/", text))  # metres per second, per day
    text = re.sub(r"(\*\*|\^)\s*[({]\s*([-+]?\d+)\s*[)}]", r"\1\2", text)  # m s^(-1), m s^{-1}
    text = re.sub(r"\b10\s*(?:\*\*|\^)\s*(-?\d+)", r"1e\1", text)  # 10^3 kg, 10**-6
    text = re.sub(r"\s*(?:\*\*|\^)\s*", "", text)  # m**2, meter ** 2, m^2
    text = re.sub(r"[·⋅*]|(?<=[A-Za-z0-9])\.(?=[A-Za-z])", " ", text)  # kg.m-2, kg*m-2, m·s-1
    text = re.sub(r"(?<=[A-Za-z])\s+(-\d+)\b", r"\1", text)  # W m -2
    text = re.sub(r"/\s*\(([^()]*)\)", lambda m: "/" + "/".join(m.group(1).split()), text)  # J/(kg K)
    dims: dict[str, int] = {}
    quantities: set[str] = set()
    symbols: list[str] = []
    words: list[str] = []
    factor = 1.0
    for part_index, part in enumerate(text.split("/")):
        for token in part.split():
            try:
                number = float(token)  # a scale factor: 1e-3, 0.001 (CMIP6, CF)
            except ValueError:
                number = None
            if number is not None:
                if not (number > 0 and math.isfinite(number)):
                    return None
                factor *= number if part_index == 0 else 1.0 / number
                continue
            found = _TOKEN.match(token)
            if not found:
                return None
            word, exponent = found.group(1), found.group(2)
            if word in _ELEMENTS and symbols and symbols[-1] in _MASS_OR_AMOUNT:
                return None  # kg C m-2 s-1, g N: an element, not kelvin or newton (only a person can tell)
            symbol = _symbol(word)
            if symbol is None:
                return None
            words.append(word)
            signed, power = exponent is not None and exponent.startswith("-"), int(exponent or 1)
            if part_index > 0 and not signed:
                power = -power  # kg/m2/s: a part after a / divides, unless its sign is written (kg/m2 s-1)
            symbols.append(symbol)
            base, scale = _SYMBOLS[symbol]
            for dim, exp in base.items():
                dims[dim] = dims.get(dim, 0) + exp * power
                quantities.add(dim)
            factor *= scale ** power
    kept = tuple(sorted((d, e) for d, e in dims.items() if e))
    if (len(words) == 1 and kept == (("K", 1),) and symbols[0] in ("K", "degF")  # kelvins, K1, 1 degC: absolute
            and math.isclose(factor, _SYMBOLS[symbols[0]][1])):  # (not mK)
        temperature = _TEMPERATURE.match(words[0])
        return ("temperature", _ABSOLUTE[temperature.group(1).lower()] if temperature else "K")
    return (kept, factor, tuple(sorted(quantities)) if not kept else ())


def same_units(have: Any, want: Any) -> bool | None:
    """True when two units strings mean one unit, False when they mean different ones, None when
    either holds a word :func:`read_units` does not know (and they are not spelt alike)."""
    def compact(units: Any) -> str:
        return re.sub(r"\s*(?:\*\*|\^)\s*", "", re.sub(r"\s+", " ", _plain(units)))

    if compact(have) == compact(want):
        return True
    a, b = read_units(have), read_units(want)
    if a is None or b is None:
        return None
    if a[0] == "temperature" or b[0] == "temperature":
        return a == b
    if _water_equivalent(a, b) or _water_equivalent(b, a):
        return None  # mm and kg m-2 (mm/s and kg m-2 s-1): the same numbers for liquid water only
    if a[0] != b[0] or not math.isclose(a[1], b[1], rel_tol=1e-9):
        if not a[0] and not b[0] and (_bare_number(have) or _bare_number(want)):
            return None  # salinity: "1" (CF), "1e-3" (CMEMS), "0.001" (CMIP6) all hold values near 35
        return False
    # two ratios of different things (kg kg-1, mol mol-1) differ; either may equal a plain number
    return not (a[2] and b[2] and a[2] != b[2])


def _bare_number(units: Any) -> bool:
    """A units string that is only a scale factor (``1e-3``, ``0.001``), not ``1``."""
    try:
        return float(_plain(units)) != 1.0
    except ValueError:
        return False


def _water_equivalent(depth: tuple, mass: tuple) -> bool:
    """``depth`` (mm, mm s-1) and ``mass`` (kg m-2, kg m-2 s-1) give one number for liquid water
    (1000 kg m-3): precipitation from ERA5, CMIP6 and IMERG is written either way."""
    have, want = dict(depth[0]), dict(mass[0])
    if have.get("L") != 1 or set(have) - {"L", "T"} or have.get("T", 0) > 0:
        return False  # a depth (mm) or a rate of one (mm/s), nothing else
    change = {k: want.get(k, 0) - have.get(k, 0) for k in set(have) | set(want)}
    return ({k: v for k, v in change.items() if v} == {"M": 1, "L": -3}
            and math.isclose(depth[1] * 1000.0, mass[1], rel_tol=1e-9))


def check_same_units(what: str, have: Any, want: Any) -> None:
    """Refuse ``what`` in units ``have`` where ``want`` was trained on; warn where only a person
    can tell. Units missing (or a placeholder such as ``""``) on either side are taken as the
    training units."""
    if says_nothing(have) or says_nothing(want):
        return
    same = same_units(have, want)
    if same is False:
        anomaly = ""
        if {read_units(have), read_units(want)} == {("temperature", "K"), ("temperature", "degC")}:
            anomaly = (f" (an anomaly or a difference is the same number in K and degC: if that is what it holds, "
                       f"set its units attribute to {_plain(want)!r})")
        raise ValueError(f"{what} is in {_plain(have)!r} but the model was trained on it in {_plain(want)!r}; "
                         f"convert it to {_plain(want)!r} first (and set its units attribute): values are never "
                         f"converted here{anomaly}")
    if same is None:
        log.warning("%s says units %r, the training data said %r; taken as the same units (values are never "
                    "converted): convert it first if they differ", what, _plain(have), _plain(want))


def check_units(ds: Any, trained: Mapping[str, Mapping[str, Any]]) -> None:
    """:func:`check_same_units` for each variable of ``ds`` against the training data's attrs
    (``trained``: variable -> its attrs there); a variable without a units attribute is taken as
    in the training units."""
    for name, attrs in trained.items():
        have = ds[name].attrs.get("units") if name in getattr(ds, "data_vars", {}) else None
        check_same_units(f"variable {name!r}", have, (attrs or {}).get("units"))
