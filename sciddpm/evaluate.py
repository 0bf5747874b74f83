"""``sciddpm evaluate``: samples for held-out conditions, scored against the held-out data.

Modality-independent scores come first — per-channel mean and standard deviation, Wasserstein-1
distance of the marginals, radially averaged power spectra and their log-spectral distance —
then whatever the adapter adds through an optional ``evaluate(samples, heldout, cond, out)``
method (pitch error for audio, CRPS for climate, ...). Writes ``metrics.json``, PNG plots and the samples as the modality's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

from sciddpm.api import Model
from sciddpm.data import build_adapter
from sciddpm.data.base import atomic_path
from sciddpm.metrics.spectra import log_spectral_distance, power_spectrum
from sciddpm.runs import atomic_write_text


def evaluate(model: Model, out: str | Path, *, n: int = 16, steps: int | None = None,
             sampler: str | None = None, seed: int = 0) -> list[Path]:
    """Score ``model`` on ``n`` held-out examples; returns the files written under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = model.config["data"]
    adapter = build_adapter(data_cfg["name"], **dict(data_cfg.get("kwargs") or {}))
    heldout, cond = adapter.heldout(n, seed=seed)
    samples = model.sample(n, cond, steps=steps, sampler=sampler, seed=seed)

    truth = adapter.to_tensor(heldout).numpy()
    generated = adapter.to_tensor(samples).numpy()
    metrics: dict = {"run": model.name, "step": model.step, "n": n, "seed": seed,
                     "sampler": samples.attrs.get("sampler"), "steps": samples.attrs.get("sampler_steps"),
                     "channels": {}}
    spectra = {}
    for c, channel in enumerate(model.spec.channels):
        t, g = truth[:, c], generated[:, c]
        valid_t, valid_g = t[np.isfinite(t)], g[np.isfinite(g)]
        k, p_true = power_spectrum(np.nan_to_num(t), dims=model.spec.dims)
        _, p_gen = power_spectrum(np.nan_to_num(g), dims=model.spec.dims)
        spectra[channel] = (k, p_true, p_gen)
        # statistics in normalised units, so channels of different units compare
        metrics["channels"][channel] = {
            "mean_heldout": float(valid_t.mean()), "mean_samples": float(valid_g.mean()),
            "std_heldout": float(valid_t.std()), "std_samples": float(valid_g.std()),
            "wasserstein1": float(wasserstein_distance(valid_t, valid_g)),
            "log_spectral_distance": log_spectral_distance(p_true, p_gen),
        }
    written = []
    modality = getattr(adapter, "evaluate", None)
    if modality is not None:
        extra = modality(samples, heldout, cond, out)
        written += [Path(p) for p in extra.pop("files", [])]
        metrics["modality"] = extra
    written.append(_plot_spectra(spectra, out / "spectra.png"))
    metrics_path = out / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    # the samples as the modality's own files (audio: WAVs, spectrogram grid, samples.nc)
    return [metrics_path, *written, *model.write(samples, out / "samples")]


def _plot_spectra(spectra: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(4.5 * len(spectra), 3.5), squeeze=False)
    for ax, (channel, (k, p_true, p_gen)) in zip(axes[0], spectra.items()):
        ax.loglog(k, p_true, label="held-out data", color="black")
        ax.loglog(k, p_gen, label="samples", color="tab:red", linestyle="--")
        ax.set(title=channel, xlabel="wavenumber k (cycles per domain)", ylabel="power (normalised units)")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path

