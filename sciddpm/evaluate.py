"""``sciddpm evaluate``: samples for held-out conditions, scored against the held-out data.

Modality-independent scores come first:

* one sample per held-out example: per-channel mean and standard deviation, Wasserstein-1
  distance of the marginals, radially averaged power spectra and their log-spectral distance;
* an ensemble of ``members`` per held-out case (the first ``cases`` examples): fair CRPS,
  spread/skill ratio and RMSE of the ensemble mean per channel (normalised units, area-weighted
  when the adapter has weights), against a climatological baseline - ``members`` training
  examples drawn at random whatever their conditions - and the CRPS skill score 1 - CRPS/CRPS_clim.

Then whatever the adapter adds through optional methods ``evaluate(samples, heldout, cond, out)``
(pitch error for audio) and ``evaluate_ensemble(ensemble, truth, climatology, out)`` (maps and
scores in physical units for climate). Writes ``metrics.json``, PNG plots and the samples as the
modality's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

import torch
import xarray as xr

from sciddpm.api import Model
from sciddpm.data.base import Adapter, adapter_from_config
from sciddpm.files import atomic_write_text
from sciddpm.metrics.ensemble import crps, rmse, spread_skill
from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum
from sciddpm.plots import new_figure, save_png


def evaluate(model: Model, out: str | Path, *, n: int = 16, steps: int | None = None,
             sampler: str | None = None, seed: int = 0, guidance: float | None = None, cases: int = 4,
             members: int = 16) -> list[Path]:
    """Score ``model`` on ``n`` held-out examples and ``cases`` x ``members`` ensembles, sampled
    with the run's sampler settings unless ``steps``/``sampler``/``guidance`` are given; returns
    the files written under ``out``."""
    out = Path(out)
    adapter = adapter_from_config(model.config["data"])
    heldout, cond = adapter.heldout(n, seed=seed)
    samples = model.sample(n, cond, steps=steps, sampler=sampler, seed=seed, guidance=guidance)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # written last: present only beside a complete set

    truth = adapter.to_tensor(heldout).numpy()
    generated = adapter.to_tensor(samples).numpy()
    metrics: dict = {"run": model.name, "step": model.step, "n": n, "seed": seed,
                     "sampler": samples.attrs.get("sampler"), "steps": samples.attrs.get("sampler_steps"),
                     "guidance": samples.attrs.get("guidance"), "sampler_schedule": samples.attrs.get("sampler_schedule"),
                     "sampler_opts": samples.attrs.get("sampler_opts"),
                     "units": "channels and ensemble: normalised, (x - mean) / std with each channel's training "
                              "mean and std (given with it), so that channels of different units compare; "
                              "modality: physical units",
                     "channels": {}}
    spectra = {}
    finite_truth, finite_generated = np.isfinite(truth), np.isfinite(generated)
    missing = {"heldout": int(truth.size - finite_truth.sum()), "samples": int(generated.size - finite_generated.sum())}
    if any(missing.values()):  # a spectrum needs the whole grid
        metrics["spectra_missing_values"] = (
            f"{missing['heldout']} of {truth.size} held-out and {missing['samples']} of {generated.size} sample values "
            "are missing (NaN or infinite); the spectra take them as the channel's training mean (0 in normalised units)")
    for c, channel in enumerate(model.spec.channels):
        t, g, t_ok, g_ok = truth[:, c], generated[:, c], finite_truth[:, c], finite_generated[:, c]
        valid_t, valid_g = t[t_ok], g[g_ok]
        k, p_true = power_spectrum(np.where(t_ok, t, 0.0), dims=model.spec.dims)
        _, p_gen = power_spectrum(np.where(g_ok, g, 0.0), dims=model.spec.dims)
        spectra[channel] = (k, p_true, p_gen)
        # statistics in normalised units, so channels of different units compare
        metrics["channels"][channel] = {
            "mean_heldout": float(valid_t.mean()), "mean_samples": float(valid_g.mean()),
            "std_heldout": float(valid_t.std()), "std_samples": float(valid_g.std()),
            "wasserstein1": float(wasserstein_distance(valid_t, valid_g)),
            "log_spectral_distance": log_spectral_distance(p_true, p_gen),
            "normaliser": {"mean": model.spec.normaliser.mean[c], "std": model.spec.normaliser.std[c]},
        }
    written = []
    extra = adapter.evaluate(samples, heldout, cond, out)
    if extra is not None:
        written += [Path(p) for p in extra.pop("files", [])]
        metrics["modality"] = extra
    if cases > 0:
        scores, files = _ensemble_scores(model, adapter, heldout, cond, cases=min(cases, n), members=members,
                                         steps=steps, sampler=sampler, seed=seed, guidance=guidance, out=out)
        metrics["ensemble"] = scores
        written += files
    written.append(_plot_spectra(spectra, out / "spectra.png"))
    # the samples as the modality's own files (audio: WAVs, spectrogram grid, samples.nc), then
    # metrics.json, last, so that an evaluation killed midway leaves no scores beside other samples
    written += model.write(samples, out / "samples")
    metrics_path = out / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    return [metrics_path, *written]


def _ensemble_scores(model: Model, adapter: Adapter, heldout: xr.Dataset, cond: dict, *, cases: int,
                     members: int, steps: int | None, sampler: str | None, seed: int,
                     guidance: float | None, out: Path) -> tuple[dict, list[Path]]:
    """Fair CRPS, spread/skill and ensemble-mean RMSE per channel for the model and for climatology."""
    if members < 2:
        raise ValueError(f"ensemble scores need at least 2 members per case, got members={members}")
    truth_all = adapter.to_tensor(heldout)[:cases]
    case_cond = {k: np.asarray(v)[:cases] for k, v in cond.items()}
    ensemble = model.ensemble(case_cond, members=members, steps=steps, sampler=sampler, seed=seed,
                              guidance=guidance, progress=False) if case_cond else None
    if ensemble is None:  # an unconditional model: one ensemble, scored against every case
        one = model.sample(members, steps=steps, sampler=sampler, seed=seed, guidance=guidance)
        ensemble = xr.concat([one] * cases, dim="case")
    generated = torch.stack([adapter.to_tensor(ensemble.isel(case=i)) for i in range(cases)])
    climatology = _climatology(adapter, cases, members, seed)

    spatial = [f"s{i}" for i in range(model.spec.dims)]
    truth = xr.DataArray(truth_all.numpy(), dims=("case", "channel", *spatial))
    weights = adapter.area_weights()
    weights = None if weights is None else xr.DataArray(np.asarray(weights, dtype=float), dims=spatial)
    reduce = ("case", *spatial)
    scores: dict = {"cases": cases, "members": members, "channels": {}}
    for name, tensor in (("model", generated), ("climatology", climatology)):
        ens = xr.DataArray(tensor.numpy(), dims=("case", "member", "channel", *spatial))
        values = {"crps": crps(ens, truth, weights=weights, reduce_dims=reduce),
                  # Fortin et al. (2014): spread/RMSE x sqrt((M+1)/M) is 1 for a perfect ensemble; unlike
                  # the debiased-MSE form it stays defined when a few cases are over-dispersive
                  "spread_skill": spread_skill(ens, truth, weights=weights, reduce_dims=reduce, debiased=False)
                  * np.sqrt((members + 1) / members),
                  "rmse": rmse(ens, truth, weights=weights, reduce_dims=reduce)}
        for c, channel in enumerate(model.spec.channels):
            entry = scores["channels"].setdefault(channel, {})
            entry[name] = {k: float(v.isel(channel=c)) for k, v in values.items()}
    for entry in scores["channels"].values():
        entry["crps_skill_score"] = 1.0 - entry["model"]["crps"] / entry["climatology"]["crps"]
    files: list[Path] = []
    lead = adapter.example_dim(heldout)  # the held-out examples' dim (time, member, ...) becomes case
    truth_ds = heldout.isel({lead: slice(0, cases)}).rename({lead: "case"}).assign_coords(case=np.arange(cases))
    clim_ds = xr.concat([adapter.to_xarray(climatology[i], {}) for i in range(cases)], dim="case")
    extra = adapter.evaluate_ensemble(ensemble, truth_ds, clim_ds, out)
    if extra is not None:
        files += [Path(p) for p in extra.pop("files", [])]
        scores["physical_units"] = extra
    return scores, files


def _climatology(adapter: Adapter, cases: int, members: int, seed: int) -> torch.Tensor:
    """``[cases, members, C, *S]`` normalised training examples drawn at random, whatever their conditions."""
    train = adapter.dataset("train")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(train), size=(cases, members), replace=len(train) < cases * members)
    return torch.stack([torch.stack([train[int(i)]["x"] for i in row]) for row in picks])


def _plot_spectra(spectra: dict, path: Path) -> Path:
    fig = new_figure(4.5 * len(spectra), 3.5)
    for c, (channel, (k, p_true, p_gen)) in enumerate(spectra.items()):
        ax = fig.add_subplot(1, len(spectra), c + 1)
        ax.loglog(k, p_true, label="held-out data", color="black")
        ax.loglog(k, p_gen, label="samples", color="tab:red", linestyle="--")
        ax.set(title=channel, xlabel="wavenumber k (cycles per shortest side)", ylabel="power (normalised units)")
        ax.legend()
    return save_png(fig, path, dpi=110)

