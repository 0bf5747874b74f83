"""Hydra composition of sciddpm's configs, shared by the command line and the Python API.

The configs ship inside the package (``sciddpm/configs``; the repository's top-level ``configs/``
is a link to it), so an installed sciddpm composes exactly what a source checkout does. Presets of
one's own (``data/sst.yaml``, ``model/big.yaml``) sit in folders of the same layout, found through
the environment variable ``SCIDDPM_CONFIG_PATH`` (folders, separated like ``PATH``) or shipped in a
plugin package named by an entry point in the group ``sciddpm.configs``; sciddpm's own presets come
first when names clash. Only ``compose`` is used: nothing here calls ``hydra.utils.instantiate``,
and configs name registry entries, never import paths.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import threading
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterable, Mapping

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger("sciddpm")
GROUPS = ("data", "model", "diffusion", "sampler", "trainer", "experiment")
CONFIG_PATH_VARIABLE = "SCIDDPM_CONFIG_PATH"
CONFIG_ENTRY_POINTS = "sciddpm.configs"  # name = "mypkg.conf": a package holding data/, model/, ...
WHERE_PRESETS_GO = (f"(sciddpm's presets live in {CONFIG_DIR}; your own go in a folder named by {CONFIG_PATH_VARIABLE}, "
                    f"e.g. <folder>/data/<name>.yaml, or in a plugin package's '{CONFIG_ENTRY_POINTS}' entry point)")
# Hydra's error for "defaults: - override /model: x" in a preset that is not at the top level
PACKAGE_GLOBAL = ("A preset that sets other groups (defaults: - override /model: ...) or keys outside its own group "
                  "must start with the line '# @package _global_' and give its own group's keys under the group's name "
                  "(data:, model:, ...); see 'Presets of your own' in docs/architecture.md")


def preset_folders(*, check: bool = True) -> list[Path]:
    """The folders of presets besides sciddpm's own: ``$SCIDDPM_CONFIG_PATH`` in order (an entry
    that is not a folder is an error, or left out with ``check=False``)."""
    folders = []
    for entry in filter(None, os.environ.get(CONFIG_PATH_VARIABLE, "").split(os.pathsep)):
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            if not check:
                continue
            raise ConfigError(f"{CONFIG_PATH_VARIABLE} names {entry!r}, which is not a folder; it should hold "
                              "config groups of presets, e.g. data/<name>.yaml")
        folders.append(folder)
    return folders


def preset_packages() -> dict[str, str | None]:
    """The packages of presets that installed plugins name in the ``sciddpm.configs`` group, each
    with the distribution that names it (None where its metadata has no name; for messages)."""
    packages: dict[str, str | None] = {}
    for entry_point in metadata.entry_points(group=CONFIG_ENTRY_POINTS):
        try:
            distribution = entry_point.dist.name or None
        except Exception:  # noqa: BLE001 - no dist, or metadata without a name
            distribution = None
        packages.setdefault(entry_point.value, distribution)
    return packages


def _search_path(*, check: bool = True, warn: bool = False) -> list[str]:
    """Hydra search-path entries for the presets beyond sciddpm's own: the folders (``check``: as
    for ``preset_folders``), then the plugin packages that can be read (Hydra would crash on the
    rest); with ``warn``, presets that cannot take effect are named (once each)."""
    packages = _plugin_presets()
    if warn:
        _warn_of_unusable_presets(packages)
    return ([f"file://{folder}" for folder in preset_folders(check=check)]
            + [f"pkg://{package}" for package, (_, failure) in packages.items() if failure is None])


def _quoted(entry: str) -> str:
    """``entry`` as a quoted string of Hydra's override grammar: a quote is escaped with a backslash
    and only backslashes right before a quote (or the closing one) are doubled; others stay as they are."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", entry)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body) + "'"


class ConfigError(ValueError):
    """A config that cannot be composed: an override Hydra could not parse or apply, a preset that
    is missing or fails to compose, a ``???`` key left unset, an unusable search path. The message
    carries Hydra's explanation and, where one is known, the fix."""


def compose(overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved config for ``overrides`` (Hydra syntax: ``trainer=quick``, ``seed=3``)."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    if any(o.lstrip("+~").startswith("hydra.searchpath") for o in overrides):
        raise ConfigError(f"set {CONFIG_PATH_VARIABLE}=<folder> instead of hydra.searchpath: sciddpm builds the "
                          "search path itself, from that variable and the installed plugins")
    search = _search_path(warn=True)
    try:
        cfg = _hydra_compose(overrides, search)
        missing = sorted(OmegaConf.missing_keys(cfg))  # a preset's ??? (e.g. your data's path)
        if missing:
            raise ConfigError("this config needs " + ", ".join(missing) + " set: add "
                              + " ".join(f"{key}=..." for key in missing) + " to the command")
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        hint = _close_key_hint(str(error), overrides, search)
        cause = error.__cause__  # "Error merging override x" says why only here
        why = (f" ({' '.join(str(cause).split())})" if cause is not None and not hint
               and str(cause).strip() not in str(error) else "")
        quoting = ("\nA value with characters such as ( ) [ ] { } , or non-ASCII letters needs quotes inside the "
                   "override, e.g. 'name=\"a(b)\"'" if isinstance(error, OverrideParseException) else "")
        where = f"\n{WHERE_PRESETS_GO}" if "Could not find" in str(error) else ""  # a preset that is not there
        # a preset of group G that overrides /M without '@package _global_': Hydra reads it as M@G.M
        package = (f"\n{PACKAGE_GLOBAL}" if re.search(r"In '(\w+)/[^']*': Could not override '(\w+)@\1\.\2'",
                                                       str(error)) else "")
        raise ConfigError(f"{error}{why}{hint}{quoting}{where}{package}") from None
    _check_argument_blocks(resolved)
    return resolved


# group.key: what the block holds, and an override that sets one entry of it
_ARGUMENT_BLOCKS = {("data", "kwargs"): ("the adapter's arguments", "data.kwargs.path=/data/x.zarr"),
                    ("model", "kwargs"): ("the backbone's arguments", "model.kwargs.channels=64"),
                    ("sampler", "opts"): ("the sampler's options", "+sampler.opts.<option>=<value>")}


def _check_argument_blocks(cfg: dict[str, Any]) -> None:
    """``data.kwargs=5`` composes (Hydra replaces the block), then fails deep inside training;
    refuse it here, by name."""
    for (group, key), (holds, example) in _ARGUMENT_BLOCKS.items():
        block = cfg.get(group)
        value = block.get(key) if isinstance(block, Mapping) else None
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{group}.{key} holds {holds}, name by name, but is set to {value!r}; set them "
                              f"one by one, e.g. {example}")


_HYDRA = threading.Lock()


def _hydra_compose(overrides: list[str], search: list[str]) -> Any:
    """Hydra's composition of ``overrides`` over sciddpm's presets and ``search``; Hydra's own errors.

    Hydra keeps one global state per process: compositions take turns, and a caller's own Hydra
    (a ``@hydra.main`` script, a notebook's ``hydra.initialize``) is set aside and put back, with
    the ``version_base`` it chose (ours is 1.3; theirs may be older, which changes Hydra's API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import VersionBase

    searchpath = [f"hydra.searchpath=[{','.join(map(_quoted, search))}]"] if search else []
    with _HYDRA:
        callers = GlobalHydra.instance().hydra
        callers_base = VersionBase.instance().version_base  # read raw: it may still be "unspecified"
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="sciddpm"):
                return hydra_compose(config_name="config", overrides=searchpath + overrides)
        finally:  # Hydra swaps its global instance on the way out: ask for the current one
            GlobalHydra.instance().clear()
            if callers is not None:
                GlobalHydra.instance().initialize(callers)
            VersionBase.instance().version_base = callers_base


def _close_key_hint(message: str, overrides: list[str], search: list[str]) -> str:
    """For Hydra's "Could not override 'trainer.stepz'" (or "Could not delete ... 'data.kwarg'"):
    the keys there, and the closest one."""
    match = re.search(r"Could not (override|delete from config\.) '([^']+)'", message)
    if not match:
        return ""
    deleting, key = match.group(1) != "override", match.group(2)
    parent, _, leaf = key.rpartition(".")
    # the keys that do exist, read from the config without the offending override or, when another
    # one fails too (or the key is a preset's, not the user's), with only the preset choices
    # (data=sst...); each attempt is one plain composition, never another round of hints
    without = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    choices = [o for o in overrides if o.lstrip("+").partition("=")[0] in GROUPS]
    node: Any = None
    for attempt in [a for a in (without, choices) if a != overrides] or [choices]:
        try:
            node = _hydra_compose(attempt, search)
            for part in filter(None, parent.split(".")):
                node = node[part]
            break
        except Exception:  # noqa: BLE001 - no hint is better than a second failure
            node = None
    if not isinstance(node, Mapping):
        return ""
    keys = sorted(map(str, node.keys()))
    if leaf in keys and deleting:  # Hydra cannot delete a key whose value is null or ??? - nor need it
        return f"\n{key} is empty here (null or ???): give it a value, {key}=..., instead of deleting it"
    if leaf in keys:  # the key exists: the value is what does not fit (a mapping into a mapping, say)
        return (f"\n{key} exists; to replace it whole, drop it first: '~{key}' "
                f"'+{key}=...' (or set its keys one by one, {key}.<key>=...)")
    close = difflib.get_close_matches(leaf, keys, n=1)
    prefix = f"{parent}." if parent else ""
    return (f"\n{parent or 'the config'} has keys: {', '.join(keys)}"
            + (f" - did you mean {prefix}{close[0]}?" if close else ""))


def options(group: str) -> list[str]:
    """The presets available in one config group, e.g. ``options("trainer")``: sciddpm's own and
    those in ``$SCIDDPM_CONFIG_PATH`` and installed plugins."""
    own = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
    return sorted(own | {name for g, name, _ in _other_presets(_plugin_presets()) if g == group})


def _other_presets(packages: Mapping[str, tuple[list, str | None]]) -> list[tuple[str, str, str]]:
    """``(group, name, file)`` of every preset in ``$SCIDDPM_CONFIG_PATH`` and in ``packages``
    (each package's ``_package_presets``)."""
    found = [(path.parent.name, path.stem, str(path))
             for folder in preset_folders(check=False) for path in sorted(folder.glob("*/*.yaml"))]
    for presets, _ in packages.values():
        found += presets
    return found


def _plugin_presets() -> dict[str, tuple[list[tuple[str, str, str]], str | None]]:
    """Each installed plugin's preset package, read once: its presets and why it could not be read."""
    return {package: _package_presets(package) for package in preset_packages()}


def _package_presets(package: str) -> tuple[list[tuple[str, str, str]], str | None]:
    """The presets a plugin's preset package holds, and why it could not be read (or None)."""
    try:
        root = resources.files(package)
        return [(group.name, entry.name.removesuffix(".yaml"), f"{package}/{group.name}/{entry.name}")
                for group in root.iterdir() if group.is_dir()
                for entry in group.iterdir() if entry.name.endswith(".yaml")], None
    except Exception as error:  # noqa: BLE001 - whatever its import raised: one plugin must not stop the rest
        return [], f"{type(error).__name__}: {error}"


_WARNED: set[str] = set()


def _warn_of_unusable_presets(packages: Mapping[str, tuple[list, str | None]]) -> None:
    """Once each: a preset of one's own named like one of sciddpm's (it never takes effect), and a
    plugin's preset package that cannot be read or holds no presets (installed without its YAML)."""
    for group, name, where in _other_presets(packages):
        if (CONFIG_DIR / group / f"{name}.yaml").is_file() and where not in _WARNED:
            _WARNED.add(where)
            log.warning("%s is not used: sciddpm's own %s=%s comes first; rename yours", where, group, name)
    providers = preset_packages()
    for package, (presets, failure) in packages.items():
        if package in _WARNED or presets:
            continue
        _WARNED.add(package)
        named = (f"the plugin preset package {package} (entry point group {CONFIG_ENTRY_POINTS}"
                 + (f", from the distribution {providers[package]})" if providers.get(package) else ")"))
        if failure:
            log.warning("%s cannot be read, so its presets are left out: %s; fix or reinstall %s", named, failure,
                        providers.get(package) or "the package that provides it")
        else:
            log.warning("%s holds no presets such as data/<name>.yaml; were its YAML files left out of the "
                        "install (package-data)?", named)


def preset_settings(group: str, name: str) -> dict | None:
    """What the preset ``<group>=<name>`` composes to, that group alone (a sampler preset, say),
    found where ``compose`` finds it; None where there is no such preset."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    search = _search_path(check=False)
    # without the data preset, which may set other groups' values - unless the preset refers to data
    attempts = [[f"{group}={name}", "~data"], [f"{group}={name}"]] if group != "data" else [[f"{group}={name}"]]
    for overrides in attempts:
        try:
            return OmegaConf.to_container(_hydra_compose(overrides, search)[group], resolve=True)
        except (HydraException, OmegaConfBaseException) as error:
            if f"Could not find '{group}/{name}'" in str(error):
                return None
            failure = error
    raise ConfigError(f"the preset {group}={name} does not compose: {failure}")


def as_config(config: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """Accept a composed config (mapping) or a list of overrides, return a plain dict."""
    if config is None:
        return compose()
    if isinstance(config, Mapping):
        from omegaconf import DictConfig, OmegaConf

        plain = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
        _check_argument_blocks(plain)
        return plain
    if isinstance(config, str):
        return compose([config])
    return compose(config)
