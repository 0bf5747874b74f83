"""Units of physical variables: whether data handed to a trained model is in the units it learnt.

Values are never converted here: a scientist converts (with pint, MetPy or by hand) and says so in
the ``units`` attribute. Two different units of one quantity (degC for a model of K, hPa for Pa)
are refused; spellings that may or may not mean the same unit are warned about.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


# Spellings of units that are easy to confuse for one quantity (CF/UDUNITS names, pint's, ERA5's).
# Two units both found here but under different keys are different units: refused, never converted.
_KNOWN_UNITS = {
    "K": ("K", "kelvin", "degK", "deg_K", "degreesK", "degrees_K", "Kelvin"),
    "degC": ("degC", "deg_C", "°C", "C", "celsius", "Celsius", "degree_Celsius", "degrees_Celsius", "degreeC"),
    "degF": ("degF", "deg_F", "°F", "F", "fahrenheit", "Fahrenheit", "degree_Fahrenheit", "degrees_Fahrenheit"),
    "Pa": ("Pa", "pascal", "Pascal"),
    "hPa": ("hPa", "hectopascal", "mbar", "millibar", "millibars", "mb"),
    "kPa": ("kPa", "kilopascal"),
    "m": ("m", "meter", "metre", "meters", "metres"),
    "mm": ("mm", "millimeter", "millimetre", "millimeters", "millimetres"),
    "km": ("km", "kilometer", "kilometre", "kilometers", "kilometres"),
}
_UNIT_KEY = {spelling: key for key, spellings in _KNOWN_UNITS.items() for spelling in spellings}


def check_units(ds: Any, trained: Mapping[str, Mapping[str, Any]]) -> None:
    """Compare the ``units`` attribute of each variable of ``ds`` with the training data's
    (``trained``: variable -> its attrs there); values are never converted. Two different units
    of one quantity (degC for a model of K, hPa for Pa) are refused; other spellings that differ
    (``m/s`` and ``m s**-1``, ``kelvin`` and ``K`` agree) are warned about, as only a person can
    tell; a variable without a units attribute is taken as in the training units."""
    def plain(units: Any) -> str:
        return re.sub(r"[\s*^]", "", str(units))

    for name, attrs in trained.items():
        want = (attrs or {}).get("units")
        have = ds[name].attrs.get("units") if name in getattr(ds, "data_vars", {}) else None
        if want is None or have is None or plain(have) == plain(want):
            continue
        have_key, want_key = _UNIT_KEY.get(str(have).strip()), _UNIT_KEY.get(str(want).strip())
        if have_key is not None and have_key == want_key:
            continue
        if have_key is not None and want_key is not None:
            raise ValueError(f"variable {name!r} is in {have} but the model was trained on it in {want}; convert it "
                             f"to {want} first (and set its units attribute): values are never converted here")
        log.warning("variable %r says units %r, the training data said %r; taken as the same units (values are "
                    "never converted): convert it first if they differ", name, have, want)
