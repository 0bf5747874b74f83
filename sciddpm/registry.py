"""Name -> builder registries: the one way sciddpm turns a short name from a config into an object.

Configs and run directories hold ``{name, kwargs}``, never dotted import paths, so nothing read
from disk can choose what code runs (house rule 7 in docs/architecture.md). A registry checks the keyword
arguments against the builder's signature before calling it, so a typo in a config fails with
the list of accepted arguments instead of deep inside a constructor. Third-party packages add
entries through the entry-point groups ``sciddpm.backbones``, ``sciddpm.adapters`` and
``sciddpm.samplers``; those are loaded lazily, the first time a name is missing.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import sys
import threading
from importlib import metadata
from typing import Any, Callable, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])
log = logging.getLogger("sciddpm")


class UnknownNameError(KeyError):
    """A name that no registry entry answers to; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the sentence as written
        return str(self.args[0])


class Registry:
    """Maps names to builders (classes or functions) of one kind, e.g. backbones."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builders: dict[str, Callable[..., Any]] = {}
        self._plugins_loaded = False
        self._plugins_lock = threading.RLock()  # one thread imports the plugins; the others wait for them
        self._loading_plugins = False  # a plugin's own import asking this registry again must not recurse
        self._broken_plugins: dict[str, str] = {}  # name -> why its entry point did not load
        self._providers: dict[str, str] = {}  # name -> "distribution version" of the plugin that added it

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """Decorator: ``@REG.register("unet2d")`` above a class or function."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorate(builder: Builder) -> Builder:
            existing = self._builders.get(name)
            if existing is not None and existing is not builder:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {existing.__module__}."
                    f"{existing.__qualname__}; pick another name"
                )
            self._builders[name] = builder
            return builder

        return decorate

    def names(self) -> list[str]:
        """Every registered name, sorted (plugins included)."""
        self._load_plugins()
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered under ``name``; unknown names list the known ones."""
        if name not in self._builders:
            self._load_plugins()
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the builder for ``name`` with ``kwargs``, after checking them against its signature."""
        builder = self.get(name)
        check_kwargs(builder, kwargs, what=f"{self.kind} {name!r}")
        return builder(**kwargs)

    def provider(self, name: str) -> str | None:
        """The installed distribution (``"name version"``) whose entry point names ``name``'s
        builder; None for names registered only in code (sciddpm's own). Asking imports nothing: a
        name registered by an import (the plugin's module loaded for another of its names, or by
        the user) is matched to an entry point that points at that very object in a loaded module."""
        builder = self._builders.get(name)
        if name not in self._providers and builder is not None and self.entry_point_group is not None:
            for entry_point in metadata.entry_points(group=self.entry_point_group, name=name):
                target = sys.modules.get(entry_point.module)
                for part in (entry_point.attr or "").split(".") if target is not None else ():
                    target = getattr(target, part, None)
                if target is builder:
                    self._record_provider(entry_point)
        return self._providers.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def _unknown_message(self, name: str) -> str:
        known = self.names()
        if name in self._broken_plugins:
            return (f"{self.kind} {name!r} is a plugin that failed to load: {self._broken_plugins[name]}; "
                    "fix or reinstall the package that provides it")
        message = f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(str(name), known, n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
        elif self.entry_point_group is not None:
            message += (f". If {name!r} comes from another package, install it (it names its {self.kind}s in the "
                        f"entry-point group '{self.entry_point_group}'), or import the module that registers it")
        return message

    def _load_plugins(self) -> None:
        # Entry points are the one sanctioned way for other packages to add names: the user
        # installed that package, so importing it is their choice, not the config's.
        if self._plugins_loaded or self.entry_point_group is None:
            return
        with self._plugins_lock:
            if self._plugins_loaded or self._loading_plugins:
                return
            self._loading_plugins = True
            try:
                for entry_point in metadata.entry_points(group=self.entry_point_group):
                    self._load_plugin(entry_point)
            finally:
                self._loading_plugins = False
                self._plugins_loaded = True  # only now: a thread that waited finds every plugin in place

    def _load_plugin(self, entry_point: metadata.EntryPoint) -> None:
        if entry_point.name in self._builders:  # sciddpm's own, or registered by an import already made
            return
        try:  # one broken package must not hide the others
            self._builders[entry_point.name] = entry_point.load()
        except Exception as error:  # noqa: BLE001 - whatever its import raised
            why = f"{type(error).__name__}: {error} (entry point {entry_point.value})"
            self._broken_plugins[entry_point.name] = why
            log.warning("%s plugin %r failed to load: %s", self.kind, entry_point.name, why)
            return
        self._record_provider(entry_point)

    def _record_provider(self, entry_point: metadata.EntryPoint) -> None:
        try:  # which distribution: only for the record, so it may fail without harm
            name, version = entry_point.dist.name, entry_point.dist.version
        except Exception:  # noqa: BLE001 - no dist, or metadata without a name
            return
        if name and version:
            self._providers[entry_point.name] = f"{name} {version}"


def check_kwargs(builder: Callable[..., Any], kwargs: dict[str, Any], *, what: str,
                 config_key: str | None = None) -> None:
    """Raise TypeError naming the bad and the accepted keyword arguments of ``builder``; with
    ``config_key`` (``data.kwargs``) a missing one is named as the override that gives it."""
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = None
    else:
        accepted = [
            p.name
            for p in parameters.values()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
    if accepted is not None:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, accepted, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"{what} got unknown argument(s) {', '.join(hints)}; "
                f"it accepts: {', '.join(accepted)}"
            )
    missing = [
        p.name
        for p in parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if missing:
        fix = f"; add {' '.join(f'{config_key}.{name}=...' for name in missing)}" if config_key else ""
        raise TypeError(f"{what} needs argument(s): {', '.join(missing)}{fix}")
