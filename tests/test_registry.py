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


def test_a_plugin_name_knows_the_distribution_that_provides_it(tmp_path, monkeypatch):
    info = tmp_path / "thingplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thingplug\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[sciddpm.test_provided_things]\nplug = math:hypot\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    things = Registry("thing", "sciddpm.test_provided_things")
    things.register("own")(len)
    assert things.provider("plug") is None  # asking imports nothing: a name not yet resolved has none
    things.get("plug")
    assert things.provider("plug") == "thingplug 0.3"  # recorded in a run, so a missing plugin can be named
    assert things.provider("own") is None
