"""The engine end to end on tiny data: train -> run directory -> sample (CLI == API), resume after
SIGKILL with identical weights, 2-process gloo DDP, and refusal of crafted run directories."""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

import sciddpm
from sciddpm.cli import main
from sciddpm.runs import RunDir, RunError, read_safetensors

TINY = ["data=audio", "data.kwargs.tones_clips=64", "data.kwargs.clip_samples=256", "model=tiny1d",
        "trainer=quick", "trainer.batch_size=8", "trainer.log_every=5", "trainer.device=cpu",
        "trainer.warmup_steps=5"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SCIDDPM_CACHE")
    os.environ["SCIDDPM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SCIDDPM_CACHE")
    else:
        os.environ["SCIDDPM_CACHE"] = old


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "trainer.steps=20", "trainer.checkpoint_every=10",
                 f"runs_dir={runs}", "name=tiny"]) == 0
    return runs


def _env(cache):
    return {**os.environ, "SCIDDPM_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_run_directory_contents(trained):
    run = RunDir(trained / "tiny")
    assert run.checkpoint_steps() == [10, 20]
    assert [r["step"] for r in run.read_metrics()] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) for r in run.read_metrics())
    from sciddpm.precision import network_dtype_name  # what the network computed in, on record
    assert {r["network_dtype"] for r in run.read_metrics()} == {network_dtype_name(torch.device("cpu"))}
    model, ema, step = run.load_weights()
    assert step == 20 and model.keys() == ema.keys()
    assert any(not torch.equal(model[k], ema[k]) for k in model)  # EMA really averages
    spec = run.load_data_spec()
    assert spec["adapter"] == "audio" and spec["cond"]


def test_cli_sample_equals_api_sample(trained, tmp_path, capsys):
    out = tmp_path / "a440.nc"
    assert main(["sample", "model=tiny", f"runs_dir={trained}", "--cond", "pitch=440", "--n", "4",
                 "--steps", "4", "--seed", "3", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    from_cli = xr.open_dataset(out).load()
    from_api = sciddpm.load("tiny", runs_dir=trained).sample(4, {"pitch": 440.0}, steps=4, seed=3)
    assert from_cli.sizes["member"] == 4
    np.testing.assert_array_equal(from_cli["waveform"].values, from_api["waveform"].values)
    # same seed, different batch split -> same samples (deterministic sampler)
    split = sciddpm.load("tiny", runs_dir=trained).sample(4, {"pitch": 440.0}, steps=4, seed=3, batch_size=3)
    np.testing.assert_allclose(split["waveform"].values, from_api["waveform"].values, rtol=1e-4, atol=1e-5)


def test_fp32_flag_keeps_the_network_out_of_bf16(trained, tmp_path, monkeypatch):
    # As on a CPU with native bf16: by default the network runs in bf16, --fp32 keeps float32.
    from sciddpm import precision
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    out = tmp_path / "fp32.nc"
    assert main(["sample", "model=tiny", f"runs_dir={trained}", "--cond", "pitch=440", "--n", "2",
                 "--steps", "4", "--seed", "1", "--fp32", "--out", str(out)]) == 0
    from_cli = xr.open_dataset(out).load()["waveform"].values
    fp32 = sciddpm.load("tiny", runs_dir=trained, bf16=False).sample(2, {"pitch": 440.0}, steps=4, seed=1)
    bf16 = sciddpm.load("tiny", runs_dir=trained).sample(2, {"pitch": 440.0}, steps=4, seed=1)
    np.testing.assert_array_equal(from_cli, fp32["waveform"].values)
    assert (fp32.attrs["network_dtype"], bf16.attrs["network_dtype"]) == ("float32", "bfloat16")  # on record
    difference = bf16["waveform"].values - fp32["waveform"].values
    relative = np.sqrt(np.mean(difference ** 2) / np.mean(fp32["waveform"].values ** 2))
    assert 0 < relative < 0.05  # bf16 really ran, and only rounds
    # a run trained with trainer.bf16=false samples in float32 unless asked otherwise
    import shutil

    import yaml

    shutil.copytree(trained / "tiny", tmp_path / "runs" / "tiny32")
    config_path = tmp_path / "runs" / "tiny32" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["bf16"] = False
    config_path.write_text(yaml.safe_dump(config))
    assert sciddpm.load("tiny32", runs_dir=tmp_path / "runs").network_dtype == "float32"
    assert sciddpm.load("tiny32", runs_dir=tmp_path / "runs", bf16=True).network_dtype == "bfloat16"


def test_compiled_network_samples_what_the_eager_one_does(trained, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    out = tmp_path / "compiled.nc"
    # 3 members in batches of 2: two batch shapes, so two compiled graphs
    assert main(["sample", "model=tiny", f"runs_dir={trained}", "--cond", "pitch=440", "--n", "3",
                 "--batch-size", "2", "--steps", "3", "--seed", "5", "--fp32", "--compile",
                 "--out", str(out)]) == 0
    assert counters["stats"]["unique_graphs"] >= 2  # torch.compile really ran
    compiled = xr.open_dataset(out).load()["waveform"].values
    eager = sciddpm.load("tiny", runs_dir=trained, bf16=False).sample(
        3, {"pitch": 440.0}, steps=3, seed=5, batch_size=2)["waveform"].values
    rms = np.sqrt(np.mean(eager ** 2))
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-4 * rms)


def test_evaluate_writes_scores_against_heldout_data(trained, tmp_path, capsys, monkeypatch):
    import json

    import matplotlib

    # a notebook calling sciddpm.evaluate keeps its own backend (inline plots): pictures use their own canvas
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("evaluate switched matplotlib's backend"))
    assert main(["evaluate", "model=tiny", f"runs_dir={trained}", "--n", "4", "--steps", "2", "--guidance", "1.5",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert str(tmp_path / "spectra.png") in printed and (tmp_path / "spectra.png").stat().st_size > 0
    scores = metrics["channels"]["waveform"]
    assert metrics["n"] == 4 and scores["std_heldout"] > 0 and scores["wasserstein1"] >= 0
    assert metrics["guidance"] == 1.5 and xr.open_dataset(tmp_path / "samples" / "samples.nc").attrs["guidance"] == 1.5
    assert np.isfinite(scores["log_spectral_distance"])
    assert metrics["units"].startswith("channels and ensemble: normalised, (x - mean) / std")  # said in the file
    spec = sciddpm.load("tiny", runs_dir=trained).spec
    assert scores["normaliser"] == {"mean": spec.normaliser.mean[0], "std": spec.normaliser.std[0]}
    assert "pitch_samples" in metrics["modality"]  # the audio adapter's own scores
    assert len(metrics["modality"]["pitch_sweep"]) == 4 and (tmp_path / "pitch_sweep.png").exists()
    assert xr.open_dataset(tmp_path / "samples" / "samples.nc").sizes["member"] == 4
    assert len(list((tmp_path / "samples").glob("*.wav"))) == 4
    ensemble = metrics["ensemble"]["channels"]["waveform"]  # 4 cases x 16 members vs climatology
    assert metrics["ensemble"]["cases"] == 4 and metrics["ensemble"]["members"] == 16
    for source in ("model", "climatology"):
        assert ensemble[source]["crps"] > 0 and ensemble[source]["spread_skill"] > 0
    assert ensemble["crps_skill_score"] == 1 - ensemble["model"]["crps"] / ensemble["climatology"]["crps"]


def test_unknown_condition_exits_nonzero_listing_known_names(trained, capsys):
    code = main(["sample", "model=tiny", f"runs_dir={trained}", "--cond", "nosuch=1"])
    err = capsys.readouterr().err
    assert code != 0
    assert "nosuch" in err and "pitch" in err and "Hz" in err
    code = main(["sample", "model=tiny", f"runs_dir={trained}", "--cond", "pitch=3_30"])  # float() read it as 330
    assert code != 0 and "--cond pitch: '3_30' is not a number" in capsys.readouterr().err


def test_out_of_range_condition_warns_with_range(trained):
    model = sciddpm.load("tiny", runs_dir=trained)
    low, high = model.conditions["pitch"].min, model.conditions["pitch"].max
    with pytest.warns(UserWarning, match="pitch"):
        model.sample(1, {"pitch": high * 4}, steps=2)
    assert low < high


def test_resume_with_different_model_is_refused(trained):
    with pytest.raises(RunError, match=r"other 'model' settings - model\.kwargs\.channels: \d+ there, 16 now\. "
                                       r"Resume it with the same settings, or start a new run with name="):
        sciddpm.train([*TINY, "model.kwargs.channels=16", "trainer.steps=30", f"runs_dir={trained}", "name=tiny"])


def test_a_refusal_leads_with_the_top_level_change():
    from sciddpm.resume import _shown, differences

    before = {"kwargs": {f"option{k}": k for k in range(9)}, "name": "audio"}
    after = {"kwargs": {"path": "ssh.nc"}, "name": "ssh_track"}  # another adapter: its kwargs differ too
    shown = _shown(differences(before, after, "data"))
    assert shown.startswith("data.name: 'audio' there, 'ssh_track' now; data.kwargs.")
    assert shown.endswith("(and 5 more)")


def test_resume_takes_statistics_equal_to_rounding_and_names_what_changed(trained, tmp_path):
    shutil.copytree(trained / "tiny", tmp_path / "tiny")
    spec_file = tmp_path / "tiny" / "data_spec.json"
    saved = json.loads(spec_file.read_text())
    steps = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())["trainer"]["steps"]
    again = [*TINY, f"trainer.steps={steps}", f"runs_dir={tmp_path}", "name=tiny"]
    nudged = copy.deepcopy(saved)
    nudged["normaliser"]["std"][0] *= 1 + 1e-14  # the same data summed in another order
    spec_file.write_text(json.dumps(nudged))
    assert sciddpm.train(again) == tmp_path / "tiny"  # resumes (here: nothing left to do)
    nudged["normaliser"]["std"][0] *= 1.001
    spec_file.write_text(json.dumps(nudged))
    with pytest.raises(RunError, match=r"differs from what .* was trained on - data_spec\.normaliser\.std\[0\]: "
                                       r"[\d.e-]+ there, [\d.e-]+ now\. The data, or how it is read, changed"):
        sciddpm.train(again)


def test_a_run_on_moved_data_is_refused_with_the_way_to_resume_it(trained, cache, tmp_path, caplog):
    # a data path that differs cannot be told from other data with the same statistics (files
    # relabelled): refused, saying how to resume on data that only moved (its old path led to it)
    shutil.copytree(next(cache.rglob("metadata.csv")).parent, tmp_path / "before")
    folder = ["data=audio_folder", "data.kwargs.sample_rate=8000", "data.kwargs.clip_samples=256", *TINY[3:],
              "trainer.checkpoint_every=5", f"runs_dir={tmp_path}", "name=moved"]
    sciddpm.train([*folder, f"data.kwargs.path={tmp_path / 'before'}", "trainer.steps=5"])
    (tmp_path / "before").rename(tmp_path / "after")
    with pytest.raises(RunError, match=r"other 'data' settings - data\.kwargs\.path: .*before' there, .*after' now\. "
                                       r"If the same data only moved, make its old path lead to it \(ln -s NEW OLD\) "
                                       r"and resume with the old path; else resume it with the same settings"):
        sciddpm.train([*folder, f"data.kwargs.path={tmp_path / 'after'}", "trainer.steps=10"])
    (tmp_path / "before").symlink_to(tmp_path / "after")  # the way it names
    with caplog.at_level("WARNING", logger="sciddpm"):
        sciddpm.train([*folder, f"data.kwargs.path={tmp_path / 'before'}", "trainer.steps=10"])
    assert RunDir(tmp_path / "moved").load_weights()[2] == 10
    assert "other trainer settings" not in caplog.text  # more steps is what a resume is for: not said
    caplog.clear()  # another batch size is allowed, but said: config.yaml then records it for the whole run
    with caplog.at_level("WARNING", logger="sciddpm"):
        sciddpm.train([*folder, f"data.kwargs.path={tmp_path / 'before'}", "trainer.steps=12", "trainer.batch_size=4"])
    assert "resuming at step 10 with other trainer settings - trainer.batch_size: 8 there, 4 now" in caplog.text
    # the same data by the place the link leads to resumes too (its spec's notes name the other path)
    sciddpm.train([*folder, f"data.kwargs.path={tmp_path / 'after'}", "trainer.steps=13", "trainer.batch_size=4"])
    assert RunDir(tmp_path / "moved").load_weights()[2] == 13
    with pytest.raises(RunError, match=r"data\.kwargs\.clip_samples: 256 there, 128 now\. Resume it with the same"):
        sciddpm.train([*folder, f"data.kwargs.path={tmp_path / 'before'}", "trainer.steps=15", "trainer.batch_size=4",
                       "data.kwargs.clip_samples=128"])  # no moving hint for another change
    # a run on an embedded sample (path None, as era5's synthetic store) given a path: no link can stand
    # in for None, so no moving hint
    from sciddpm.resume import _check_same_run

    run = RunDir(tmp_path / "moved")
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    saved["data"]["kwargs"]["path"] = None
    (run.path / "config.yaml").write_text(yaml.safe_dump(saved))
    given = {**saved, "data": {**saved["data"], "kwargs": {**saved["data"]["kwargs"], "path": str(tmp_path / "after")}}}
    with pytest.raises(RunError, match=r"data\.kwargs\.path: None there, .*after' now\. Resume it with the same settings"):
        _check_same_run(run, given, spec=None)
    saved["data"]["kwargs"]["path"] = str(tmp_path / "after")  # and the other way: a path there, None now
    (run.path / "config.yaml").write_text(yaml.safe_dump(saved))
    given["data"]["kwargs"]["path"] = None
    with pytest.raises(RunError, match=r"data\.kwargs\.path: .*after' there, None now\. Resume it with the same settings"):
        _check_same_run(run, given, spec=None)


def test_asking_for_fewer_steps_than_done_changes_nothing(trained, caplog):
    before = {name: (trained / "tiny" / name).read_bytes() for name in ("config.yaml", "model.safetensors",
                                                                          "metrics.jsonl")}
    with caplog.at_level("INFO", logger="sciddpm"):
        sciddpm.train([*TINY, "trainer.steps=10", "trainer.checkpoint_every=10", f"runs_dir={trained}", "name=tiny"])
    assert "already trained to step 20 (trainer.steps=10): nothing to do" in caplog.text
    assert {name: (trained / "tiny" / name).read_bytes() for name in before} == before

def test_a_kill_between_checkpoint_and_publication_is_repaired(cache, tmp_path, caplog, monkeypatch):
    run = [*TINY, "trainer.checkpoint_every=5", f"runs_dir={tmp_path}", "name=cut"]
    sciddpm.train([*run, "trainer.steps=10"])
    folder = RunDir(tmp_path / "cut")
    newest = (tmp_path / "cut" / "checkpoints" / "step_00000010" / "model.safetensors").read_bytes()
    # as if killed after checkpoint 10 was renamed into place but before it was published
    (tmp_path / "cut" / "model.safetensors").write_bytes(
        (tmp_path / "cut" / "checkpoints" / "step_00000005" / "model.safetensors").read_bytes())
    sciddpm.train([*run, "trainer.steps=10"])  # nothing to train, but the weights are put right
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == newest and folder.load_weights()[2] == 10
    # a newest checkpoint cut short (full disk, power cut) is set aside; training resumes before it
    cut = tmp_path / "cut" / "checkpoints" / "step_00000010" / "model.safetensors"
    cut.write_bytes(newest[:1000])
    reads = []
    monkeypatch.setattr("sciddpm.runs.read_safetensors",
                        lambda path, **kw: reads.append(Path(path).parent.name) or read_safetensors(path, **kw))
    with caplog.at_level("WARNING", logger="sciddpm"):
        sciddpm.train([*run, "trainer.steps=15"])
    assert "step_00000010 does not load" in caplog.text and folder.checkpoint_steps() == [10, 15]
    assert reads.count("step_00000005") == 1  # checked once and resumed from, not read twice
    sciddpm.train([*run, "trainer.steps=15"])  # a later resume keeps the set-aside checkpoint for inspection
    assert (tmp_path / "cut" / "checkpoints" / ".step_00000010.unreadable" / "model.safetensors").is_file()
    assert [r["step"] for r in folder.read_metrics()][-1] == 15

def test_a_run_directory_has_one_writer(cache, tmp_path, monkeypatch):
    # Two trains into one run used to interleave their metrics and delete each other's checkpoints
    run = [*TINY, "trainer.steps=5", "trainer.checkpoint_every=5", f"runs_dir={tmp_path}", "name=busy"]
    other = RunDir(tmp_path / "busy").lock()  # as a first `sciddpm train` holds it
    with monkeypatch.context() as patch:  # refused at once, before any data is read or built
        patch.setattr("sciddpm.training.adapter_from_config", lambda *a, **k: pytest.fail("built the data first"))
        with pytest.raises(RunError, match=rf"busy is in use by sciddpm train, pid {os.getpid()}; wait for it"):
            sciddpm.train(run)
    other.close()  # the first one ends (a kill releases it too)
    sciddpm.train(run)
    assert RunDir(tmp_path / "busy").checkpoint_steps() == [5]
    RunDir(tmp_path / "busy").lock().close()  # and training let go of it

def test_resume_in_another_network_dtype_says_so(cache, tmp_path, monkeypatch, caplog):
    # As on a machine without native bf16 first, then on one with it.
    from sciddpm import precision
    run = [*TINY, "trainer.checkpoint_every=10", f"runs_dir={tmp_path}", "name=moved"]
    sciddpm.train([*run, "trainer.steps=10", "trainer.bf16=false"])
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="sciddpm"):
        sciddpm.train([*run, "trainer.steps=20"])
    warned = [r.getMessage() for r in caplog.records if "continues in" in r.getMessage()]
    assert len(warned) == 1 and "float32 up to step 10 and continues in bfloat16" in warned[0]
    assert "trainer.bf16=false" in warned[0]
    assert [r["network_dtype"] for r in RunDir(tmp_path / "moved").read_metrics()] == ["float32"] * 2 + ["bfloat16"] * 2


def test_bad_trainer_numbers_are_named_before_anything_is_written(cache, tmp_path):
    for override, message in [("trainer.lr=abc", "trainer.lr must be a number > 0, got 'abc'"),
                              ("trainer.batch_size=0", "trainer.batch_size must be an integer >= 1, got 0"),
                              ("trainer.steps=2.5", "trainer.steps must be an integer >= 1"),
                              ("trainer.ema_decay=1", "trainer.ema_decay must be a number >= 0 and < 1"),
                              ("seed=1.5", "seed must be an integer >= 0, got 1.5"),
                              ("seed=abc", "seed must be an integer >= 0, got 'abc'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            sciddpm.train([*TINY, override, f"runs_dir={tmp_path}", "name=bad"])
    assert not (tmp_path / "bad").exists()


def test_a_failed_first_try_does_not_block_the_fixed_command(cache, tmp_path):
    # A model that does not fit the data fails before the run directory is claimed; and a run
    # directory left without any checkpoint (killed before its first) starts afresh under new
    # settings instead of refusing them as "a different model".
    run = [*TINY, "trainer.steps=4", "trainer.checkpoint_every=4", f"runs_dir={tmp_path}", "name=retry"]
    with pytest.raises(ValueError, match="'unet2d' is 2-D but the data .* is 1-D .*model=audio or model.backbone=unet1d"):
        sciddpm.train([*run, "model.backbone=unet2d"])
    assert not (tmp_path / "retry").exists()
    stale = RunDir(tmp_path / "retry")
    stale.path.mkdir()
    stale.save_config({"model": {"backbone": "unet1d", "kwargs": {"channels": 4}}})
    stale.append_metrics({"step": 1, "loss": 1.0})
    sciddpm.train(run)
    assert [r["step"] for r in stale.read_metrics()] == [4] and stale.checkpoint_steps() == [4]
    with pytest.raises(RunError, match="other 'model' settings - model.kwargs.channels"):  # weights to protect now
        sciddpm.train([*run, "model.kwargs.channels=16"])


def test_crafted_run_directory_is_refused(trained, tmp_path):
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(trained / "tiny", crafted)
    config = (crafted / "config.yaml").read_text()
    (crafted / "config.yaml").write_text(config.replace("backbone: unet1d",
                                                        "backbone:\n    _target_: os.system\n    command: touch pwned"))
    with pytest.raises(RunError, match="_target_"):
        sciddpm.load(crafted)
    shutil.copy(trained / "tiny" / "config.yaml", crafted / "config.yaml")
    import pickle
    (crafted / "model.safetensors").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(RunError, match="safetensors"):
        sciddpm.load(crafted)
    assert not Path("pwned").exists()


def _train_cmd(runs, name, steps):
    return [sys.executable, "-m", "sciddpm", "train", *TINY, f"trainer.steps={steps}",
            "trainer.checkpoint_every=10", f"runs_dir={runs}", f"name={name}"]


def test_sigkill_then_resume_gives_identical_weights(cache, trained, tmp_path):
    steps = 300
    env = _env(cache)
    subprocess.run(_train_cmd(tmp_path, "straight", steps), env=env, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_train_cmd(tmp_path, "killed", steps), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = RunDir(tmp_path / "killed")
    deadline = time.time() + 240
    while time.time() < deadline and not any(s >= 30 for s in run.checkpoint_steps()):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(run.checkpoint_steps())
    assert proc.returncode == -signal.SIGKILL and killed_at < steps

    subprocess.run(_train_cmd(tmp_path, "killed", steps), env=env, check=True, capture_output=True, timeout=300)
    straight = read_safetensors(tmp_path / "straight" / "model.safetensors")
    resumed = read_safetensors(tmp_path / "killed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    logged = [r["step"] for r in run.read_metrics()]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # no step logged twice


def test_two_process_gloo_ddp_trains_and_checkpoints_once(cache, trained, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sciddpm", "train", *TINY, "trainer.steps=20", "trainer.checkpoint_every=10",
           f"runs_dir={tmp_path}", "name=ddp"]
    result = subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(tmp_path / "ddp")
    assert run.checkpoint_steps() == [10, 20]
    assert [r["step"] for r in run.read_metrics()] == [5, 10, 15, 20]  # rank 0 alone logs
    assert result.stdout.count("run directory:") == 1  # said once, by rank 0; torchrun's 0 exit: both finished
    model, _, step = run.load_weights()
    assert step == 20 and all(torch.isfinite(v).all() for v in model.values())


def test_the_adapters_path_arguments_are_saved_absolute(tmp_path, monkeypatch):
    # a plugin whose data lives in two places, named other than `path`
    from sciddpm.data import ADAPTERS, Adapter
    from sciddpm.resume import with_absolute_data_paths

    class TwoStores(Adapter):
        path_arguments = ("store", "mask_file")

        def __init__(self, store, mask_file=None, label=None):
            pass

    monkeypatch.setitem(ADAPTERS._builders, "two_stores", TwoStores)
    monkeypatch.chdir(tmp_path)
    cfg = {"data": {"name": "two_stores", "kwargs": {"store": ["a.zarr", "b.zarr"], "mask_file": "gs://bucket/mask.nc",
                                                     "label": "relative/but/not/a/path"}}}
    saved = with_absolute_data_paths(cfg)["data"]["kwargs"]
    assert saved == {"store": [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")], "mask_file": "gs://bucket/mask.nc",
                     "label": "relative/but/not/a/path"}
    assert cfg["data"]["kwargs"]["store"] == ["a.zarr", "b.zarr"]  # the caller's config is untouched
    from sciddpm.data.base import adapter_from_config

    with pytest.raises(TypeError, match=r"adapter 'two_stores' needs argument\(s\): store; add data\.kwargs\.store=\.\.\."):
        adapter_from_config({"name": "two_stores", "kwargs": {"label": "x"}})  # e.g. after '~data.kwargs'
    TwoStores.path_arguments = ("stor",)  # a misspelt name must not quietly leave the path relative
    with pytest.raises(TypeError, match=r"lists path_arguments \['stor'\] that it does not take; it takes: store"):
        with_absolute_data_paths(cfg)
    audio = with_absolute_data_paths({"data": {"name": "audio", "kwargs": {"path": "clips"}}})
    assert audio["data"]["kwargs"]["path"] == str(tmp_path / "clips")

    class NoPath(Adapter):  # inherits path_arguments = ("path",) but takes no path: nothing to do
        def __init__(self, n=8):
            pass

    monkeypatch.setitem(ADAPTERS._builders, "no_path", NoPath)
    for data in ({"name": "no_path", "kwargs": {"n": 4}}, {"name": "no_path"}):
        assert with_absolute_data_paths({"data": data}) == {"data": data}  # unchanged, even without kwargs


def test_a_run_records_what_trained_it_and_names_a_missing_plugin(trained, tmp_path):
    import json
    import shutil

    from safetensors.torch import save_file

    from sciddpm.registry import UnknownNameError

    record = RunDir(trained / "tiny").provenance()
    assert record["sciddpm"] == sciddpm.__version__ and record["torch"] == torch.__version__
    assert json.loads(record["plugins"]) == {}  # everything here is sciddpm's own
    # the same run as if trained with a plugin adapter, then loaded where that plugin is missing
    copy = tmp_path / "from_a_colleague"
    shutil.copytree(trained / "tiny", copy)
    spec = json.loads((copy / "data_spec.json").read_text())
    (copy / "data_spec.json").write_text(json.dumps({**spec, "adapter": "sst"}))
    tensors, metadata = read_safetensors(copy / "model.safetensors", with_metadata=True)
    save_file(tensors, copy / "model.safetensors",
              metadata={**metadata, "plugins": json.dumps({"adapter sst": "sciddpm-sst 0.3.1"})})
    with pytest.raises(UnknownNameError, match=r"unknown adapter 'sst'.*The run was trained with adapter sst from "
                                               r"sciddpm-sst 0\.3\.1: install that here \(pip install sciddpm-sst==0\.3\.1, or its source"):
        sciddpm.load(copy, device="cpu")
    # a plugin sampler is resolved when sampling, with the same hint
    sampler_run = tmp_path / "sampler_plugin"
    shutil.copytree(trained / "tiny", sampler_run)
    config = yaml.safe_load((sampler_run / "config.yaml").read_text())
    config["sampler"]["method"] = "fancy"
    (sampler_run / "config.yaml").write_text(yaml.safe_dump(config))
    save_file(tensors, sampler_run / "model.safetensors",
              metadata={**metadata, "plugins": json.dumps({"sampler fancy": "fancy-samplers 2.0"})})
    model = sciddpm.load(sampler_run, device="cpu")
    with pytest.raises(UnknownNameError, match=r"unknown sampler 'fancy'.*trained with sampler fancy from fancy-samplers 2\.0"):
        model.sample(1, {"pitch": 440.0})


def test_a_run_saved_with_empty_data_kwargs_resumes_without_them():
    from sciddpm.resume import differences, identity

    saved = {"data": {"name": "audio", "kwargs": {}}}
    for now in ({"data": {"name": "audio"}}, {"data": {"name": "audio", "kwargs": None}}):
        assert differences(identity(saved, "data"), identity(now, "data"), "data") == []
    changed = {"data": {"name": "audio", "kwargs": {"tones_clips": 64}}}
    assert differences(identity(saved, "data"), identity(changed, "data"), "data") != []


def test_a_run_saved_before_a_preset_named_a_new_option_resumes():
    # data=audio_folder came to name cond: null; runs saved without it were refused as
    # "data.kwargs.cond: (absent) there, None now"
    from sciddpm.resume import differences, identity

    saved = {"data": {"name": "audio", "kwargs": {"source": "folder", "path": "/x", "units": None}}}
    now = {"data": {"name": "audio", "kwargs": {"source": "folder", "path": "/x", "units": None, "cond": None}}}
    assert differences(identity(saved, "data"), identity(now, "data"), "data") == []
    chosen = {"data": {"name": "audio", "kwargs": {**now["data"]["kwargs"], "cond": ["pitch"]}}}
    assert [d[0] for d in differences(identity(saved, "data"), identity(chosen, "data"), "data")] == ["data.kwargs.cond"]
