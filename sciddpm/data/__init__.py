"""Data adapters: each modality's bridge between files, normalised tensors and labelled xarray.

``base`` holds the contract (``Adapter``) and the ``ADAPTERS`` registry, ``conditioning`` the
conditioning schema (``CondSchema``), ``spec`` what a run keeps about its data (``DataSpec``,
``Normaliser``); importing this package registers the built-in adapters.
"""

from sciddpm.data.base import ADAPTERS, Adapter, adapter_from_config, adapter_from_spec, build_adapter, register_adapter
from sciddpm.data.conditioning import ConditionRangeWarning, CondSchema, CondVar, UnknownConditionError
from sciddpm.data.spec import DataSpec, Normaliser
from sciddpm.data import audio  # noqa: E402,F401  (registers "audio")
from sciddpm.data import climate  # noqa: E402,F401  (registers "era5")
from sciddpm.data import volume  # noqa: E402,F401  (registers "volume")

__all__ = [
    "ADAPTERS", "Adapter", "CondSchema", "CondVar", "ConditionRangeWarning", "DataSpec", "Normaliser",
    "UnknownConditionError", "adapter_from_config", "adapter_from_spec", "build_adapter", "register_adapter",
]
