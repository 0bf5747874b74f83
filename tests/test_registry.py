"""Registries: plugins from entry points, and what a user is told when one does not load."""

import threading
import time
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


def _plugin_distribution(root, group, module, module_source, entry_points):
    """A distribution ``twoplug 1.0`` on sys.path: ``module`` and its entry points."""
    info = root / "twoplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: twoplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    (root / f"{module}.py").write_text(module_source)


def test_every_name_of_a_plugin_module_knows_its_distribution(tmp_path, monkeypatch):
    # One module registers two names; the first lookup imports it, which registers the second as a
    # side effect. The second must still be recorded as the plugin's (a run trained with it says
    # what to install), also when the user imported the module before any lookup.
    group = "sciddpm.test_two_things"
    source = ("from sciddpm.registry import Registry\nTHINGS = Registry('thing', %r)\n"
              "@THINGS.register('one')\ndef one(): return 1\n"
              "@THINGS.register('two')\ndef two(): return 2\nalias = two\n" % group)
    _plugin_distribution(tmp_path, group, "twoplug_mod", source, {"one": "twoplug_mod:one", "two": "twoplug_mod:alias"})
    monkeypatch.syspath_prepend(str(tmp_path))
    import twoplug_mod

    things = twoplug_mod.THINGS
    assert things.get("one")() == 1 and things.get("two")() == 2
    assert things.provider("one") == things.provider("two") == "twoplug 1.0"
    own = Registry("thing", group)
    own.register("two")(len)  # a name of its own that a plugin also claims: not the plugin's
    assert own.provider("two") is None


def test_a_lookup_during_a_slow_plugin_import_waits_for_it(tmp_path, monkeypatch):
    group = "sciddpm.test_slow_things"
    _plugin_distribution(tmp_path, group, "slowplug_mod", "import time\ntime.sleep(0.5)\ndef slow(): return 'ready'\n",
                         {"slow": "slowplug_mod:slow"})
    monkeypatch.syspath_prepend(str(tmp_path))
    things = Registry("thing", group)
    things.register("own")(len)
    first = threading.Thread(target=things.names)
    first.start()
    time.sleep(0.1)  # the first thread is inside the plugin's import
    try:
        assert things.get("slow")() == "ready"  # used to be "unknown thing 'slow' ... install it"
    finally:
        first.join()
