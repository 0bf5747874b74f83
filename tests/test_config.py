"""Configs: composition, errors naming the fix, and no import paths anywhere."""

import re

import pytest
import yaml

from sciddpm.config import CONFIG_DIR, ConfigError, as_config, compose, options, preset_settings
from sciddpm.runs import assert_safe_config


def test_default_composition_names_registry_entries():
    cfg = compose()
    assert cfg["data"]["name"] == "audio" and cfg["model"]["backbone"] == "unet1d"
    assert compose(["trainer=quick", "seed=3"])["trainer"]["steps"] < cfg["trainer"]["steps"]


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"(?s)Available options in 'trainer'.*quick"):
        compose(["trainer=nosuch"])
    with pytest.raises(ConfigError, match=r"(?s)trainer\.stepz.*trainer has keys: batch_size, .* - did you mean trainer\.steps\?"):
        compose(["trainer=quick", "trainer.stepz=3"])
    with pytest.raises(ConfigError, match=r"(?s)trainer\.stepz.*did you mean trainer\.steps\?"):
        compose(["trainer=quick", "trainer.stepz=3", "model.kwargs.foo.bar=1"])  # a second bad key too
    with pytest.raises(ConfigError, match=r"(?s)trainer\.stepz.*did you mean trainer\.steps\?"):
        compose(["trainer.stepz=1", "sede=1"])  # the other typo is not a preset choice: left out too
    with pytest.raises(ConfigError, match=r"data has keys: kwargs, name - did you mean data\.kwargs\?"):
        compose(["~data.kwarg"])
    with pytest.raises(ConfigError, match=r"data\.kwargs\.path is empty here \(null or \?\?\?\): give it a value"):
        compose(["data=climate_era5", "~data.kwargs.path"])  # Hydra says it "does not exist"
    with pytest.raises(ConfigError, match=r"model\.kwargs exists; to replace it whole, drop it first: '~model\.kwargs'"):
        compose(["model.kwargs={width: 512}"])  # a mapping over a preset's mapping
    with pytest.raises(ConfigError, match=r"the config has keys: .* - did you mean seed\?"):
        compose(["seedz=3"])
    with pytest.raises(ConfigError, match=r"needs quotes inside the override"):
        compose(["runs_dir=/tmp/rüns"])  # a non-ASCII letter: Hydra's grammar wants quotes
    assert compose(['runs_dir="/tmp/rüns"'])["runs_dir"] == "/tmp/rüns"
    with pytest.raises(ConfigError, match=r"needs quotes inside the override, e\.g\. 'name=\"a\(b\)\"'"):
        compose(["name=a[1]"])  # Hydra's "mismatched input": the same cure
    with pytest.raises(ConfigError, match=r"data\.kwargs=\[a,b\] \(Cannot merge DictConfig with ListConfig"):
        compose(["data.kwargs=[a,b]"])  # Hydra's reason, which its message leaves in __cause__
    for bad in (["data.kwargs=5"], ["sampler.opts=3"]):
        with pytest.raises(ConfigError, match=r"(data\.kwargs|sampler\.opts) holds the .* set to [53]; set them one by one"):
            compose(bad)  # composed, and failed deep inside training with "'int' object is not iterable"
    with pytest.raises(ConfigError, match=r"model\.kwargs holds the backbone's arguments"):
        as_config({**compose(), "model": {"backbone": "unet", "kwargs": "wide"}})


def _preset(folder, group, name, text="name: audio\nkwargs:\n  tones_clips: 32\n"):
    (folder / group).mkdir(parents=True, exist_ok=True)
    (folder / group / f"{name}.yaml").write_text(text)


def test_your_own_presets_come_from_a_folder_or_a_plugin(tmp_path, monkeypatch, caplog):
    mine = tmp_path / "Ana's presets"  # a space and a quote: the search path entry is quoted
    _preset(mine, "data", "mine")
    _preset(mine, "trainer", "quick", "steps: 1\n")  # a clash: sciddpm's own preset wins, and says so
    monkeypatch.setenv("SCIDDPM_CONFIG_PATH", str(mine))
    assert compose(["data=mine"])["data"]["kwargs"]["tones_clips"] == 32
    assert compose(["trainer=quick"])["trainer"]["steps"] > 1
    # `--sampler` finds one's own sampler presets as sampler= does, composed (defaults list, numbers)
    _preset(mine, "sampler", "mysampler", "defaults:\n  - euler\n  - _self_\nsteps: 7\nopts:\n  sigma_min: 2e-3\n")
    from sciddpm.api import sampler_preset

    assert sampler_preset("mysampler") == {**compose(["sampler=mysampler"])["sampler"], "guidance": 1.0}
    assert sampler_preset("mysampler")["method"] == "euler" and sampler_preset("mysampler")["opts"] == {"sigma_min": 0.002}
    assert sampler_preset("nosuch") == {} and sampler_preset("heun")["steps"] == 18
    assert re.search(r"trainer/quick\.yaml is not used: sciddpm's own trainer=quick comes first", caplog.text)
    assert "mine" in options("data")
    # a plugin package ships its presets and names them in the sciddpm.configs entry-point group
    _preset(tmp_path / "sstplug" / "conf", "data", "sst", "name: audio\nkwargs:\n  tones_clips: 48\n")
    for package in (tmp_path / "sstplug", tmp_path / "sstplug" / "conf"):
        (package / "__init__.py").write_text("")
    info = tmp_path / "sstplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sstplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sciddpm.configs]\nsst = sstplug.conf\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert compose(["data=sst"])["data"]["kwargs"]["tones_clips"] == 48
    assert preset_settings("data", "sst")["kwargs"]["tones_clips"] == 48
    assert {"mine", "sst"} <= set(options("data"))
    (tmp_path / "sstplug" / "conf" / "data" / "sst.yaml").unlink()  # installed without its YAML files
    with pytest.raises(ConfigError, match="Could not find 'data/sst'"):
        compose(["data=sst"])
    assert ("the plugin preset package sstplug.conf (entry point group sciddpm.configs, from the distribution "
            "sstplug) holds no presets") in caplog.text
    with pytest.raises(ConfigError, match=r"(?s)Could not find 'data/nosuch'.*your own go in a folder named by "
                                          r"SCIDDPM_CONFIG_PATH.*'sciddpm\.configs' entry point"):
        compose(["data=nosuch"])
    with pytest.raises(ConfigError, match="instead of hydra.searchpath"):
        compose([f"hydra.searchpath=[file://{mine}]"])
    # a preset whose own defaults are wrong: one plain error (the hint's retries used to recurse)
    _preset(mine, "data", "bad", "# @package _global_\ndefaults:\n  - override /nosuchgroup: x\n")
    with pytest.raises(ConfigError, match=r"In 'data/bad': Could not override 'nosuchgroup'"):
        compose(["data=bad"])
    # the same preset without its '# @package _global_' line: Hydra's error, and what the line does
    _preset(mine, "data", "unpackaged", "defaults:\n  - override /model: climate\nname: era5\n")
    with pytest.raises(ConfigError, match=r"(?s)Could not override 'model@data\.model'.*must start with the line "
                                          r"'# @package _global_'"):
        compose(["data=unpackaged"])
    with pytest.raises(ConfigError) as elsewhere:  # a package of one's own choosing is not that slip
        compose(["data=mine", "model@foo.bar=climate"])
    assert "# @package _global_" not in str(elsewhere.value)
    # a plugin preset package that fails to import is named and hides nothing else
    (tmp_path / "brokenplug" / "conf").mkdir(parents=True)
    (tmp_path / "brokenplug" / "__init__.py").write_text("")
    (tmp_path / "brokenplug" / "conf" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    broken = tmp_path / "brokenplug-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[sciddpm.configs]\nbroken = brokenplug.conf\n")
    assert "mine" in options("data")
    assert compose(["data=mine"])["data"]["kwargs"]["tones_clips"] == 32
    assert "the plugin preset package brokenplug.conf (entry point group sciddpm.configs, from the" in caplog.text
    assert "RuntimeError: boom; fix or reinstall brokenplug" in caplog.text
    monkeypatch.setenv("SCIDDPM_CONFIG_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"SCIDDPM_CONFIG_PATH names .*missing.*not a folder"):
        compose()


def test_the_command_line_takes_hydras_delete_overrides(tmp_path, monkeypatch, capsys):
    from sciddpm.cli import main

    monkeypatch.chdir(tmp_path)
    # what the error for a mapping over a preset's mapping recommends must get through argparse
    assert main(["train", "~model.kwargs", "+model.kwargs={nosuch: 1}"]) == 1
    assert "got unknown argument(s) 'nosuch'" in capsys.readouterr().err
    assert main(["sample", "~/runs/tones-1"]) == 1  # a path where model=... belongs: named, not a crash
    assert "takes model=<run name or path> and runs_dir=<dir>, not '~/runs/tones-1'" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun every process prints its error: each says which it is
    monkeypatch.setenv("RANK", "2")
    assert main(["sample", "~/runs/tones-1"]) == 1
    assert capsys.readouterr().err.startswith("sciddpm sample [rank 2 of 4]: error: ")


@pytest.mark.parametrize("preset", ["audio_folder", "volume_store"])
def test_a_preset_for_your_own_data_asks_for_its_path(preset):
    with pytest.raises(ConfigError, match=r"needs data\.kwargs\.path set: add data\.kwargs\.path=\.\.\."):
        compose([f"data={preset}"])
    assert compose([f"data={preset}", "data.kwargs.path=/data/x"])["data"]["kwargs"]["path"] == "/data/x"


def test_every_shipped_config_is_plain_and_has_no_target():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        assert_safe_config(yaml.safe_load(path.read_text()) or {}, where=str(path))
    for group in ("data", "model", "diffusion", "sampler", "trainer"):
        assert options(group), group


@pytest.mark.parametrize("sampler", options("sampler"))
@pytest.mark.parametrize("diffusion", options("diffusion"))
def test_each_preset_composes(sampler, diffusion):
    cfg = compose([f"sampler={sampler}", f"diffusion={diffusion}"])
    assert cfg["sampler"]["method"] and cfg["diffusion"]["parameterisation"]


def test_default_sampler_and_the_presets_that_keep_their_own():
    from sciddpm.api import sampler_preset

    volume = compose(["data=volume_grf"])
    assert volume["sampler"]["method"] == "dpmpp_2m" and volume["sampler"]["steps"] == 20
    assert volume["sampler"]["opts"] == {"sigma_min": 0.03, "rho": 1000.0}  # reaches the sampler as kwargs
    assert compose(["data=audio"])["sampler"] == {**volume["sampler"], "guidance": 2.0}  # the default, guided
    assert compose(["data=climate_era5"])["diffusion"]["p_mean"] == 0.0
    # `--sampler X` on a run takes X's shipped preset, not the run's steps and options
    assert sampler_preset("heun")["steps"] == 18 and sampler_preset("no_such_plugin") == {}


def test_diffusion_settings_are_checked_when_the_denoiser_is_built(caplog):
    from sciddpm.assembly import build_denoiser
    from sciddpm.data import CondSchema, DataSpec, Normaliser

    spec = DataSpec(adapter="audio", dims=1, channels=["waveform"], shape=[64], padding=["zeros"],
                    normaliser=Normaliser([0.0], [1.0]), cond=CondSchema([]), sigma_data=0.5)
    cfg = compose(["model=tiny1d"])
    typo = {**cfg, "diffusion": {**cfg["diffusion"], "parameterization": "eps"}}  # from Python, past Hydra
    with pytest.raises(TypeError, match=r"diffusion config \(diffusion\.\*\) got unknown argument\(s\) "
                                        r"'parameterization' \(did you mean 'parameterisation'\?\)"):
        build_denoiser(typo, spec)
    # p_mean/p_std shape only EDM's continuous noise: given with a DDPM table they are named as unused
    # (when training; loading such a run to sample says nothing), and they do not count as a change of
    # model on resume, so runs saved when the ddpm/vpred presets carried them still resume
    from sciddpm.resume import identity
    from sciddpm.training import _warn_unused_noise_settings

    climate_on_ddpm = compose(["data=climate_era5", "diffusion=ddpm", "model=tiny1d"])  # the preset sets p_mean
    with caplog.at_level("WARNING", logger="sciddpm"):
        _warn_unused_noise_settings(climate_on_ddpm)
        build_denoiser(climate_on_ddpm, spec)
    assert caplog.text.count("diffusion.p_mean=0.0 shape EDM's continuous training noise only") == 1
    assert "diffusion.schedule=linear" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sciddpm"):
        _warn_unused_noise_settings(compose(["model=tiny1d", "diffusion=ddpm"]))
    assert "p_mean" not in caplog.text
    saved_by_old_preset = {"diffusion": {**compose(["diffusion=ddpm"])["diffusion"], "p_mean": -1.2, "p_std": 1.2}}
    assert identity(saved_by_old_preset, "diffusion") == identity(compose(["diffusion=ddpm"]), "diffusion")
    edm = compose(["diffusion=edm"])
    assert identity(edm, "diffusion") != identity({"diffusion": {**edm["diffusion"], "p_mean": 0.0}}, "diffusion")


def test_the_custom_model_preset_takes_a_backbone_and_only_its_own_arguments():
    with pytest.raises(ConfigError, match=r"needs model\.backbone set: add model\.backbone=\.\.\."):
        compose(["model=custom"])
    cfg = compose(["model=custom", "model.backbone=mlp", "+model.kwargs.width=512"])
    assert cfg["model"]["kwargs"] == {"width": 512}  # none of the U-Net presets' arguments


def test_composing_leaves_a_callers_hydra_alone_and_takes_turns(tmp_path, monkeypatch):
    import threading

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sciddpm.api import sampler_preset

    # inside someone's Hydra app (or notebook hydra.initialize) sciddpm still composes, and gives it back
    (tmp_path / "app.yaml").write_text("x: 1\n")
    from hydra import compose as hydra_compose
    from hydra.version import getbase

    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.1"):  # an older app's
        outer, base = GlobalHydra.instance().hydra, getbase()
        assert sampler_preset("heun")["steps"] == 18 and compose(["trainer=quick"])["trainer"]["steps"] > 1
        assert GlobalHydra.instance().hydra is outer and getbase() == base
        assert hydra_compose("app", strict=False)["x"] == 1  # its 1.1 API still there (1.3 has no strict=)
    # threads asking at once
    errors, steps = [], []

    def ask():
        try:
            steps.append(sampler_preset("euler")["steps"])
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and steps == [32] * 6
    # a sampler preset that refers to the data, and a stale SCIDDPM_CONFIG_PATH entry beside it
    _preset(tmp_path / "mine", "sampler", "dataref", "defaults:\n  - heun\n  - _self_\nnote: ${data.name}\n")
    monkeypatch.setenv("SCIDDPM_CONFIG_PATH", f"{tmp_path / 'mine'}:{tmp_path / 'gone'}")
    assert sampler_preset("dataref")["note"] == "audio"
