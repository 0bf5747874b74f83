"""Metrics on samples and ensembles; this package imports only numpy, scipy, torch and xarray."""

from sciddpm.metrics.audio import cents, estimate_pitch, mrstft_distance
from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum, spectral_slope

__all__ = ["cents", "estimate_pitch", "log_spectral_distance", "mrstft_distance", "power_spectrum",
           "spectral_slope"]
