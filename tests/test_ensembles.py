"""Ensembles: ``Model.ensemble`` dims/coords and seeding, and ``sciddpm.ensembles.write_ensemble``:
1 rank == 2 gloo ranks bit for bit, a SIGKILLed run resumed without recomputing finished items
equals an uninterrupted one, and a store made with other settings is refused."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr

import sciddpm
from sciddpm.cli import main
from sciddpm.ensembles import write_ensemble

TINY = ["data=audio", "data.kwargs.tones_clips=64", "data.kwargs.clip_samples=256", "model=tiny1d",
        "trainer=quick", "trainer.batch_size=8", "trainer.device=cpu", "trainer.warmup_steps=2",
        "trainer.steps=6", "trainer.checkpoint_every=6"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache, runs = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("runs")
    old = os.environ.get("SCIDDPM_CACHE")
    os.environ["SCIDDPM_CACHE"] = str(cache)
    assert main(["train", *TINY, f"runs_dir={runs}", "name=tiny"]) == 0
    yield runs
    os.environ.pop("SCIDDPM_CACHE") if old is None else os.environ.__setitem__("SCIDDPM_CACHE", old)


@pytest.fixture(scope="module")
def model(runs):
    return sciddpm.load("tiny", runs_dir=runs, device="cpu")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cases_csv(path, pitches):
    path.write_text("pitch[Hz]\n" + "\n".join(f"{p}" for p in pitches) + "\n")
    return path


def test_ensemble_dims_coords_and_zarr_round_trip(model, tmp_path):
    ens = model.ensemble({"pitch": [220.0, 440.0, 660.0]}, members=3, steps=3, seed=5, progress=False)
    assert ens["waveform"].dims[:2] == ("case", "member")
    assert ens.sizes["case"] == 3 and ens.sizes["member"] == 3
    np.testing.assert_array_equal(ens["pitch"].values, [220.0, 440.0, 660.0])
    assert ens["pitch"].dims == ("case",) and ens["pitch"].attrs["units"] == "Hz"
    ens.to_zarr(tmp_path / "e.zarr")
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "e.zarr").load(), ens)


def test_ensemble_member_seeding(model):
    ens = model.ensemble({"pitch": [330.0, 440.0]}, members=2, steps=3, seed=1, progress=False)
    # case 0 of an ensemble is model.sample with the same seed; batching changes only float round-off
    alone = model.sample(2, {"pitch": 330.0}, steps=3, seed=1, batch_size=1)
    np.testing.assert_allclose(ens["waveform"].isel(case=0).values, alone["waveform"].values, rtol=1e-5, atol=1e-5)
    # every member has its own noise: no two members are the same
    flat = ens["waveform"].values.reshape(4, -1)
    assert min(np.abs(flat[a] - flat[b]).max() for a in range(4) for b in range(a)) > 1e-3
    # a DataFrame of cases is the same as a mapping
    frame = model.ensemble(pd.DataFrame({"pitch": [330.0, 440.0]}), members=2, steps=3, seed=1, progress=False)
    xr.testing.assert_identical(frame, ens)


def test_ensemble_rejects_bad_cases(model):
    with pytest.raises(KeyError, match="known: pitch"):
        model.ensemble({"pich": [220.0]}, members=1, steps=2)
    with pytest.raises(ValueError, match="one value per case"):
        model.ensemble({"pitch": [[220.0, 330.0]]}, members=1, steps=2)
    with pytest.raises(ValueError, match="members must be"):
        model.ensemble({"pitch": [220.0]}, members=0)
    for bad in (0, -2, 1.5):  # 0 used to mean "all in one batch"
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            model.sample(2, {"pitch": 220.0}, steps=2, batch_size=bad)


def test_write_ensemble_equals_model_ensemble(model, tmp_path):
    out = tmp_path / "ens.zarr"
    summary = write_ensemble(model, {"pitch": [220.0, 440.0]}, 3, out, steps=3, seed=2, batch_size=2,
                             progress=False)
    assert summary["sampled"] == 6 and summary["skipped"] == 0
    stored = xr.open_zarr(out).load()
    direct = model.ensemble({"pitch": [220.0, 440.0]}, members=3, steps=3, seed=2, batch_size=2, progress=False)
    np.testing.assert_array_equal(stored["waveform"].values, direct["waveform"].values)
    np.testing.assert_array_equal(stored["pitch"].values, [220.0, 440.0])
    assert stored["done"].values.all() and stored["waveform"].dims == direct["waveform"].dims
    assert stored["time"].attrs == direct["time"].attrs
    # the same command again has nothing to do
    assert write_ensemble(model, {"pitch": [220.0, 440.0]}, 3, out, steps=3, seed=2, batch_size=2,
                          progress=False)["sampled"] == 0
    with pytest.raises(ValueError, match=r"different seed \(it was begun with --seed 2; this call has 3\)"):
        write_ensemble(model, {"pitch": [220.0, 440.0]}, 3, out, steps=3, seed=3, batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"different cases \(another case table: 2 case\(s\) there, 3 now\); "
                                         r"members \(3 there, 4 now\); rerun"):
        write_ensemble(model, {"pitch": [220.0, 440.0, 660.0]}, 4, out, steps=3, seed=2, batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"different sampler\.steps \(3 there, 4 now\)"):
        write_ensemble(model, {"pitch": [220.0, 440.0]}, 3, out, steps=4, seed=2, batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"different batch_size \(it was begun with --batch-size 2; pass the same\)"):
        write_ensemble(model, {"pitch": [220.0, 440.0]}, 3, out, steps=3, seed=2, batch_size=3, progress=False)


def test_store_has_one_writer_and_refuses_another_models_members(model, tmp_path):
    from sciddpm.files import hold

    out = tmp_path / "ens.zarr"
    other_job = hold(out, "sciddpm sample")  # a job begun before this one and still writing
    try:
        with pytest.raises(ValueError, match=r"ens\.zarr is being written by sciddpm sample, pid \d+; wait for it"):
            write_ensemble(model, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)
        assert not out.exists()  # refused before anything was created
    finally:
        other_job.close()
    write_ensemble(model, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)
    # the same run name and step, other weights (trained again under its name): not completed with them
    weight = next(model.denoiser.parameters())
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1e-3)
    try:
        with pytest.raises(ValueError, match=r"different weights \(the run has the same name and step but other"):
            write_ensemble(model, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)
    finally:
        with torch.no_grad():
            weight.copy_(kept)  # the model is shared with the other tests


def test_store_refuses_members_in_another_precision(model, tmp_path, monkeypatch):
    # A store begun with the network in bf16 is not completed in float32 (or the reverse).
    from sciddpm import precision
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    out = tmp_path / "ens.zarr"
    write_ensemble(model, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)
    monkeypatch.setattr(model, "bf16", False)
    with pytest.raises(ValueError, match=r"different network_dtype \(its network ran in bfloat16, here it would run in float32"):
        write_ensemble(model, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)


def test_store_refuses_members_from_compiled_kernels(runs, model, tmp_path):
    # Compiled kernels round differently, so an eager store is not completed by a compiled model;
    # the refusal comes before anything is compiled or sampled.
    out = tmp_path / "ens.zarr"
    write_ensemble(model, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)
    compiled = sciddpm.load("tiny", runs_dir=runs, device="cpu", compile=True)
    with pytest.raises(ValueError, match=r"different compiled \(it was begun without --compile"):
        write_ensemble(compiled, {"pitch": [220.0]}, 2, out, steps=2, batch_size=1, progress=False)
    assert xr.open_zarr(out).attrs["compiled"] == 0

def test_one_rank_and_two_gloo_ranks_write_identical_stores(runs, tmp_path):
    cases = _cases_csv(tmp_path / "cases.csv", [220.0, 330.0, 440.0])
    args = ["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(cases), "--members", "3", "--steps", "3",
            "--batch-size", "2", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "sciddpm", *args, "--out", str(tmp_path / "one.zarr")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "sciddpm", *args, "--out", str(tmp_path / "two.zarr")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "of 2" in two.stdout  # rank 0 reports a world of 2
    a, b = xr.open_zarr(tmp_path / "one.zarr").load(), xr.open_zarr(tmp_path / "two.zarr").load()
    xr.testing.assert_identical(a, b)
    assert a["done"].values.all() and np.isfinite(a["waveform"].values).all()


def test_killed_run_resumes_without_recomputing(runs, model, tmp_path):
    out = tmp_path / "killed.zarr"
    cases = _cases_csv(tmp_path / "cases.csv", [220.0, 440.0])
    args = [sys.executable, "-m", "sciddpm", "sample", "model=tiny", f"runs_dir={runs}", "--cases", str(cases),
            "--members", "12", "--steps", "40", "--batch-size", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finished = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            finished = int(zarr.open_array(str(out / "done"), mode="r")[...].sum())
        except Exception:  # the store does not exist yet
            continue
        if finished >= 4:
            break
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = zarr.open_array(str(out / "done"), mode="r")[...]
    assert 4 <= done_before.sum() < 24
    resumed = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{24 - int(done_before.sum())} sampled" in resumed.stdout
    assert f"{int(done_before.sum())} already there" in resumed.stdout
    reference = tmp_path / "reference.zarr"
    write_ensemble(model, {"pitch": [220.0, 440.0]}, 12, reference, steps=40, batch_size=1, progress=False)
    xr.testing.assert_identical(xr.open_zarr(out).load(), xr.open_zarr(reference).load())


def test_cases_csv_errors(runs, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("pitch\n220\nabc\n")
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "x.zarr")]) == 1
    assert "line 3: pitch='abc' is not a number" in capsys.readouterr().err
    bad.write_text("speed\n3\n")
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "y.zarr")]) == 1
    assert "unknown condition 'speed'; known: pitch [Hz" in capsys.readouterr().err
    # a header's units are the model's or an error, never silently read as the model's
    bad.write_text("pitch[kHz]\n0.22\n")
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "z.zarr")]) == 1
    assert "column 'pitch[kHz]' is in kHz but the model takes pitch in Hz" in capsys.readouterr().err
    assert not (tmp_path / "z.zarr").exists()
    bad.write_text("pitch,pitch\n220,330\n")
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "w.zarr")]) == 1
    assert "column 'pitch' appears twice" in capsys.readouterr().err
    bad.write_text("pitch[Hz\n220\n")  # a header cut short is not read as a name
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "v.zarr")]) == 1
    assert "column header 'pitch[Hz' is not 'name' or 'name[units]', e.g. pitch[Hz]" in capsys.readouterr().err
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cond", "pitch=440", "--cond", "pitch=220"]) == 1
    assert "--cond pitch is given twice (440 and 220)" in capsys.readouterr().err
    bad.write_text("pitch\n\n220\n\n\nabc\n")  # blank lines still count: the line is the editor's
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "u.zarr")]) == 1
    assert "line 6: pitch='abc' is not a number" in capsys.readouterr().err
    bad.write_text("pitch,label\n220,a\n")  # a text column that is no condition: named as such
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--out", str(tmp_path / "t.zarr")]) == 1
    assert "column 'label': unknown condition 'label'; known: pitch [Hz" in capsys.readouterr().err
    # counts of 0 are refused, never replaced by a default
    bad.write_text("pitch\n220\n")
    for flag in ("--members", "--batch-size"):
        assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), flag, "0",
                     "--out", str(tmp_path / "s.zarr")]) == 1
        assert f"{flag} must be an integer >= 1, got 0" in capsys.readouterr().err
    # flags that do not combine are refused before the model loads
    assert main(["sample", "model=no-such-run", f"runs_dir={runs}", "--cases", str(bad), "--infill", "x.nc"]) == 1
    assert "--cases and --infill do not combine" in capsys.readouterr().err
    assert main(["sample", "model=", f"runs_dir={runs}"]) == 1
    assert "got an empty model=; give model=<run name or run directory>" in capsys.readouterr().err
    # a spreadsheet's "CSV UTF-8" starts with a byte-order mark
    bad.write_bytes("\ufeffpitch[Hz]\n220\n".encode("utf-8"))
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(bad), "--members", "1", "--steps", "2",
                 "--out", str(tmp_path / "bom.zarr")]) == 0
    assert float(xr.open_zarr(tmp_path / "bom.zarr")["pitch"][0]) == 220.0


def test_sample_with_one_condition_per_member(model):
    pitches = [220.0, 440.0, 880.0]
    per_member = model.sample(3, {"pitch": pitches}, steps=3, seed=4)
    np.testing.assert_array_equal(per_member["pitch"].values, pitches)
    for j, pitch in enumerate(pitches):  # member j is what a single-condition call gives member j
        alone = model.sample(3, {"pitch": pitch}, steps=3, seed=4)
        np.testing.assert_allclose(per_member["waveform"][j].values, alone["waveform"][j].values,
                                   rtol=1e-5, atol=1e-5)
    same = model.sample(3, {"pitch": 220.0}, steps=3, seed=4)  # the bug this catches: row 0 for all
    assert np.abs(per_member["waveform"][2].values - same["waveform"][2].values).max() > 1e-4
    with pytest.raises(ValueError, match="one per member"):
        model.sample(2, {"pitch": pitches}, steps=3)


def test_missing_cases_file_is_named(runs, tmp_path, capsys):
    assert main(["sample", "model=tiny", f"runs_dir={runs}", "--cases", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "z.zarr")]) == 1
    err = capsys.readouterr().err
    assert "--cases" in err and "none.csv: no such file" in err


def test_infill_of_several_clips_gives_each_its_own_members(model, caplog):
    # Observations laid out as samples are (dims member, time) get a "case" dim for the clips, so
    # their members are not concatenated into one "member" dim; pitch is read from the coordinate.
    observed = model.sample(2, {"pitch": 330.0}, steps=2, seed=5)
    observed["waveform"][:, 40:80] = np.nan
    filled = model.infill(observed, n=3, steps=2)
    assert filled["waveform"].dims == ("case", "member", "time") and filled["waveform"].shape[:2] == (2, 3)
    assert float(filled["pitch"]) == 330.0
    keep = np.isfinite(observed["waveform"].values)
    for member in range(3):
        np.testing.assert_array_equal(filled["waveform"].isel(member=member).values[keep],
                                      observed["waveform"].values[keep])
    # a clip cut from a longer recording keeps its times: it is read by position, and its observed
    # samples are put back at those positions (they went 100 samples late when matched by time)
    later = observed.assign_coords(time=observed["time"].values + 100 / observed.attrs["sample_rate"])
    with caplog.at_level("WARNING", logger="sciddpm"):
        again = model.infill(later, n=1, steps=2)
    np.testing.assert_array_equal(again["waveform"].isel(member=0).values[keep], observed["waveform"].values[keep])
    assert "the observations of 'waveform' were read by position, and their coordinates (time) are not the " \
           "model's" in caplog.text  # so that nobody compares them by label unwarned
    with pytest.raises(ValueError, match=r"the clips hold 100 samples; the model's hold \d+ .*crop or pad them"):
        model.infill(observed.isel(time=slice(0, 100)), n=1, steps=2)  # was a torch shape RuntimeError
    blank = observed.copy(deep=True)
    blank["waveform"][1] = np.nan  # a clip with nothing observed gets plain samples: said
    caplog.clear()
    with caplog.at_level("WARNING", logger="sciddpm"):
        model.infill(blank, n=1, steps=2)
    assert "1 of 2 observed examples (member 1) hold no observed value (all NaN)" in caplog.text


@pytest.mark.parametrize("sampler", ["ddpm", "heun"])
def test_a_members_step_noise_does_not_depend_on_its_batch(model, sampler):
    # Stochastic samplers draw step noise per member (ddpm; heun with churn), so a member is the
    # same whatever n and batch_size: it used to come from one generator per batch.
    options = {"ddpm": {}, "heun": {"S_churn": 40.0, "S_tmax": 1e3}}[sampler]
    settings = {**model.sampler_settings(sampler, 3), "opts": options}
    table = {"pitch": np.array([220.0])}
    three = model.generate(table, [(0, j) for j in range(3)], seed=7, settings=settings)
    five = model.generate(table, [(0, j) for j in range(5)], seed=7, settings=settings, batch_size=2)
    np.testing.assert_allclose(three.numpy(), five[:3].numpy(), rtol=0, atol=1e-5)
    other_seed = model.generate(table, [(0, 0)], seed=8, settings=settings)
    assert not torch.allclose(three[:1], other_seed)


def test_counts_and_seeds_are_checked_the_same_way_everywhere(model, tmp_path):
    for bad in (-1, 1.7, "3", True):
        with pytest.raises(ValueError, match=r"seed must be an integer >= 0 \(or None for a fresh one\)"):
            model.sample(1, {"pitch": 220.0}, steps=2, seed=bad)
        with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
            model.ensemble({"pitch": [220.0]}, 1, steps=2, seed=bad, progress=False)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got nan"):
        model.sample(float("nan"), {"pitch": 220.0})
    fresh = model.ensemble({"pitch": [220.0]}, 1, steps=2, seed=None, progress=False)
    assert isinstance(fresh.attrs["seed"], int)  # a drawn seed, recorded
    assert model.sample(1, {"pitch": 220.0}, steps=2, seed=np.int64(3)).attrs["seed"] == 3
    as_tensor = torch.tensor(220.0, dtype=torch.bfloat16, requires_grad=True)  # a value from a torch pipeline
    assert float(model.sample(1, {"pitch": as_tensor}, steps=2, seed=3)["pitch"]) == 220.0
    with pytest.raises(ValueError, match="an ensemble store needs a fixed seed"):
        write_ensemble(model, {"pitch": [220.0]}, 1, tmp_path / "e.zarr", seed=None, progress=False)


def test_case_tables_name_the_column_that_is_wrong(model):
    with pytest.raises(ValueError, match=r"condition 'note': values must be numbers"):
        model.ensemble(pd.DataFrame({"pitch": [220.0, 440.0], "note": ["A3", "A4"]}), 1, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"condition 'pitch': give one value per case \(a flat, non-empty list\)"):
        model.ensemble(pd.DataFrame({"pitch": []}), 1, steps=2, progress=False)


def test_an_ensemble_without_conditions_says_it_is_unconditional(model, caplog):
    with caplog.at_level("INFO", logger="sciddpm"):
        ens = model.ensemble({}, 2, steps=2, progress=False)
    assert ens.sizes["case"] == 1 and "one case, sampled unconditionally" in caplog.text


def test_samples_of_one_name_in_two_formats_are_refused_not_mixed(model, tmp_path):
    # x.nc and x.zarr would share x_member000.wav and x_spectrogram.png: the second write would leave
    # the first store beside another set's clips
    first = model.sample(2, {"pitch": 440.0}, steps=2)
    model.write(first, tmp_path / "x.nc")
    clips = {p.name: p.read_bytes() for p in tmp_path.glob("x_*")}
    with pytest.raises(FileExistsError, match=r"x\.nc, samples written earlier, sits beside x\.zarr: the files named "
                                              r"after 'x' .* would overwrite one another's"):
        model.write(model.sample(1, {"pitch": 220.0}, steps=2), tmp_path / "x.zarr")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("x_*")} == clips and not (tmp_path / "x.zarr").exists()
    (tmp_path / "y.nc").write_bytes(b"not ours")  # a user's own file of that name is no namesake of ours
    model.write(first, tmp_path / "y.zarr")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_guidance_runs_both_branches_as_one_batch(runs, dtype, monkeypatch):
    # the wrappers between sampler and network (bf16 autocast, the never-valid mask) must pass
    # drop_cond on, or guidance falls back to two network calls per step
    monkeypatch.setattr("sciddpm.api.network_dtype_name", lambda device, bf16: dtype)  # any CPU, either path
    guided_model = sciddpm.load("tiny", runs_dir=runs, device="cpu")
    guided_model.valid = torch.ones(len(guided_model.spec.channels), *guided_model.spec.shape, dtype=torch.bool)
    batches = []
    hook = guided_model._network.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        guided_model.sample(3, {"pitch": 440.0}, steps=3, guidance=2.0, seed=0)
    finally:
        hook.remove()
    assert batches and set(batches) == {6}


def test_a_run_without_a_sampler_is_refused_not_given_one(model, monkeypatch, tmp_path):
    from sciddpm.training import train

    with pytest.raises(ValueError, match=r"the config names no sampler \(sampler\.method\).*e\.g\. sampler=dpmpp_2m"):
        train(["~sampler", f"runs_dir={tmp_path}"])  # refused before any data is built or run written
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(model, "config", {k: v for k, v in model.config.items() if k != "sampler"})
    with pytest.raises(ValueError, match=r"names no sampler in its config\.yaml; choose one, e\.g\. --sampler dpmpp_2m"):
        model.sample(1, {"pitch": 220.0})  # used to sample with heun, silently
    drawn = model.sample(1, {"pitch": 220.0}, sampler="euler", steps=2)
    assert (drawn.attrs["sampler"], drawn.attrs["sampler_steps"]) == ("euler", 2)
    # the preset's schedule and options are recorded too: two sets drawn with other options differ in attrs
    assert (drawn.attrs["sampler_schedule"], drawn.attrs["sampler_opts"]) == ("karras", "none")
