"""Registries: plugins from entry points, and what a user is told when one does not load."""

from importlib import metadata

import pytest

from sciddpm import registry
from sciddpm.registry import Registry, UnknownNameError


def test_a_broken_plugin_is_named_and_does_not_hide_the_others(monkeypatch, caplog):
    group = "sciddpm.test_things"
    found = [metadata.EntryPoint("broken", "no_such_module_for_sciddpm:thing", group),
             metadata.EntryPoint("working", "math:hypot", group)]
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: found)
    things = Registry("thing", group)
    with caplog.at_level("WARNING", logger="sciddpm"):
        assert things.names() == ["working"]
    assert "thing plugin 'broken' failed to load: ModuleNotFoundError" in caplog.text
    assert things.get("working")(3, 4) == 5.0
    with pytest.raises(UnknownNameError, match=r"thing 'broken' is a plugin that failed to load: "
                                               r"ModuleNotFoundError.*no_such_module_for_sciddpm"):
        things.get("broken")
    with pytest.raises(UnknownNameError, match=r"unknown thing 'wrking'; known things: working. Did you mean"):
        things.get("wrking")
    with pytest.raises(UnknownNameError, match=r"unknown thing 'sst'; .*install it \(it names its things in the "
                                               r"entry-point group 'sciddpm\.test_things'\), or import the module"):
        things.get("sst")  # a run trained with a plugin, loaded where the plugin is missing
