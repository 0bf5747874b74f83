"""sciddpm: diffusion models for scientific data (audio waveforms, climate fields, 3-D volumes).

The public face is small: ``load`` a trained run and ``Model.sample`` / ``Model.ensemble`` from it,
or ``train`` one. Building blocks live in ``sciddpm.diffusion``, ``sciddpm.nn``, ``sciddpm.data``,
``sciddpm.metrics`` and ``sciddpm.testing``.
"""

__version__ = "0.1.0"
__all__ = ["Model", "load", "train"]


def __getattr__(name: str):
    # Imported on first use so `import sciddpm` stays light (no torch import for `--help`-style use).
    if name in ("Model", "load"):
        from sciddpm import api

        return getattr(api, name)
    if name == "train":
        from sciddpm.training import train

        return train
    if name in ("data", "diffusion", "ensembles", "metrics", "nn", "testing"):
        import importlib

        return importlib.import_module(f"sciddpm.{name}")
    raise AttributeError(f"module 'sciddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    # what tab completion and dir() show: the lazily imported names as well as the loaded ones
    return sorted(set(globals()) | set(__all__) | {"data", "diffusion", "ensembles", "metrics", "nn", "testing"})
