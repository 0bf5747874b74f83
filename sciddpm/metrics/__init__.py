"""Metrics on samples and ensembles; this package imports only numpy, scipy, torch and xarray."""

from sciddpm.metrics.audio import cents, estimate_pitch, mrstft_distance
from sciddpm.metrics.ensemble import area_weights, crps, rank_histogram, rmse, spread_skill, zonal_power_spectrum
from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum, spectral_slope
from sciddpm.metrics.summary import compare, summarise

__all__ = ["area_weights", "cents", "compare", "crps", "estimate_pitch", "log_spectral_distance",
           "mrstft_distance", "power_spectrum", "rank_histogram", "rmse", "spectral_slope", "spread_skill",
           "summarise", "zonal_power_spectrum"]
