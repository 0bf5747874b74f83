"""Hydra composition of sciddpm's configs, shared by the command line and the Python API.

The configs ship inside the package (``sciddpm/configs``; the repository's top-level ``configs/``
is a link to it), so an installed sciddpm composes exactly what a source checkout does. Only
``compose`` is used: nothing here calls ``hydra.utils.instantiate``, and configs name registry
entries, never import paths.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("data", "model", "diffusion", "sampler", "trainer", "experiment")


class ConfigError(ValueError):
    """An override Hydra could not apply; the message carries Hydra's explanation."""


def compose(overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved config for ``overrides`` (Hydra syntax: ``trainer=quick``, ``seed=3``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="sciddpm"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        missing = sorted(OmegaConf.missing_keys(cfg))  # a preset's ??? (e.g. your data's path)
        if missing:
            raise ConfigError("this config needs " + ", ".join(missing) + " set: add "
                              + " ".join(f"{key}=..." for key in missing) + " to the command")
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        quoting = ("\nA value with non-ASCII letters or characters such as ( ) [ ] needs quotes inside the override: "
                   "'runs_dir=\"/my runs/x\"'" if "LexerNoViableAlt" in str(error) or "no viable alternative"
                   in str(error) else "")
        raise ConfigError(f"{error}{_close_key_hint(str(error), overrides)}{quoting}\n"
                          f"(config groups live in {CONFIG_DIR})") from None


def _close_key_hint(message: str, overrides: list[str]) -> str:
    """For Hydra's "Could not override 'trainer.stepz'": the keys there, and the closest one."""
    match = re.search(r"Could not override '([^']+)'", message)
    if not match:
        return ""
    parent, _, leaf = match.group(1).rpartition(".")
    try:  # the config without the offending override, to read the keys that do exist
        node: Any = compose([o for o in overrides if not o.startswith(match.group(1) + "=")])
        for part in filter(None, parent.split(".")):
            node = node[part]
    except (ConfigError, KeyError, TypeError):
        return ""
    if not isinstance(node, Mapping):
        return ""
    keys = sorted(map(str, node))
    if leaf in keys:  # the key exists: the value is what does not fit (a mapping into a mapping, say)
        return (f"\n{match.group(1)} exists; to replace it whole, drop it first: '~{match.group(1)}' "
                f"'+{match.group(1)}=...' (or set its keys one by one, {match.group(1)}.<key>=...)")
    close = difflib.get_close_matches(leaf, keys, n=1)
    prefix = f"{parent}." if parent else ""
    return (f"\n{parent or 'the config'} has keys: {', '.join(keys)}"
            + (f" - did you mean {prefix}{close[0]}?" if close else ""))


def options(group: str) -> list[str]:
    """The presets available in one config group, e.g. ``options("trainer")``."""
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def as_config(config: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Accept a composed config (mapping) or a list of overrides, return a plain dict."""
    if config is None:
        return compose()
    if isinstance(config, Mapping):
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)
        return dict(config)
    if isinstance(config, str):
        return compose([config])
    return compose(config)
