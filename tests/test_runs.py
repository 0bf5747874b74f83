"""Run directories: atomic checkpoints, keep-two, and refusal of anything that could run code."""

import pickle

import pytest
import torch
import yaml

from sciddpm.runs import RunDir, RunError, assert_safe_config, resolve_run


def _state(value: float) -> dict:
    return {"w": torch.full((3, 2), value), "b": torch.arange(4.0) + value}


def test_checkpoints_keep_last_two_and_publish_weights(tmp_path):
    run = RunDir(tmp_path / "r")
    for step in (10, 20, 30):
        run.save_checkpoint(step, _state(step), _state(-step), {"step": step, "optimizer": {"lr": 1e-3}})
    assert run.checkpoint_steps() == [20, 30]
    model, ema, step = run.load_weights()
    assert step == 30 and torch.equal(model["w"], _state(30)["w"]) and torch.equal(ema["b"], _state(-30)["b"])
    _, _, state = run.load_checkpoint(20)
    assert state["step"] == 20
    # a checkpoint a kill left half deleted while pruning (train_state.pt only) is pruned with the
    # next ones: it was no longer listed, so never removed
    half = tmp_path / "r" / "checkpoints" / "step_00000005"
    half.mkdir()
    (half / "train_state.pt").write_bytes(b"left over")
    run.save_checkpoint(40, _state(40), _state(-40), {"step": 40})
    assert run.checkpoint_steps() == [30, 40] and not half.exists()
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["step_00000030", "step_00000040"]


def test_a_full_disk_while_checkpointing_is_named_and_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    run.save_checkpoint(10, _state(10), _state(-10), {"step": 10})

    def full_disk(obj, path):  # what torch.save raises when the disk fills under it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 72832 vs 72724")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunError, match=r"writing the checkpoint of step 20 into .*checkpoints failed \(.*unexpected pos"
                                       r".*\); \d+ MiB are free there: make room .* run the same command again"):
        run.save_checkpoint(20, _state(20), _state(-20), {"step": 20})
    assert run.checkpoint_steps() == [10] and run.load_weights()[2] == 10
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()] == ["step_00000010"]  # nothing half-written


def test_weights_and_checkpoints_follow_the_umask(tmp_path):
    # safetensors and mkdtemp write private files; a run must be as readable as its config.yaml
    import os

    umasks_seen = []
    real_umask = os.umask

    def watched_umask(mask):
        umasks_seen.append(mask)
        return real_umask(mask)

    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "r")
        os.umask = watched_umask
        run.save_checkpoint(1, _state(1), _state(1), {"step": 1})
        run.save_config({"seed": 0})
    finally:
        os.umask = real_umask
        os.umask(old)
    assert 0 not in umasks_seen  # never opened to the world for a moment (other threads write files too)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    folder = tmp_path / "r" / "checkpoints" / "step_00000001"
    assert mode(folder) == 0o755 and mode(folder / "model.safetensors") == 0o644
    assert mode(tmp_path / "r" / "model.safetensors") == mode(tmp_path / "r" / "config.yaml") == 0o644

def test_half_written_checkpoint_is_ignored_and_cleaned(tmp_path):
    run = RunDir(tmp_path / "r")
    run.save_checkpoint(5, _state(1), _state(1), {"step": 5})
    staging = tmp_path / "r" / "checkpoints" / ".step_00000010.abc"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"partial")
    incomplete = tmp_path / "r" / "checkpoints" / "step_00000015"  # no train_state.pt
    incomplete.mkdir()
    assert run.checkpoint_steps() == [5]
    run.clean_staging()
    assert not staging.exists()


def test_config_with_target_is_refused_at_any_depth(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"backbone": "unet1d", "kwargs": {"act": {"_target_": "os.system", "command": "touch pwned"}}}}))
    with pytest.raises(RunError, match=r"config\.yaml contains '_target_' at 'model\.kwargs\.act'\."):
        run.load_config()
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(RunError, match=r"'_target_' at 'a\[0\]\.b'"):
        assert_safe_config({"a": [{"b": {"_target_": "x"}}]})


def test_python_tags_in_yaml_are_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "config.yaml").write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RunError, match="not plain YAML"):
        run.load_config()
    assert not (tmp_path / "pwned").exists()


def test_yaml_aliases_are_refused_and_none_are_written(tmp_path):
    # a few lines of nested aliases expand to 10**9 nodes ("billion laughs")
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (run.path / "config.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunError, match=r"not plain YAML .*aliases \(\*name\) are not allowed"):
        run.load_config()
    shared = [1, 2]
    run.save_config({"model": {"channel_mult": shared}, "data": {"levels": shared}})  # one list, twice
    assert "*" not in (run.path / "config.yaml").read_text()
    assert run.load_config()["data"]["levels"] == [1, 2]


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_pickled_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir(tmp_path / "r")
    run.save_checkpoint(1, _state(0), _state(0), {"step": 1})
    (run.path / "model.safetensors").write_bytes(pickle.dumps({"w": _Exploit()}))
    with pytest.raises(RunError, match="not a valid safetensors file"):
        run.load_weights()
    state_path = run.path / "checkpoints" / "step_00000001" / "train_state.pt"
    torch.save({"step": _Exploit()}, state_path)
    with pytest.raises(RunError, match="refusing to load"):
        run.load_checkpoint(1)
    assert not (tmp_path / "pwned").exists()


def test_resolve_run_lists_available_runs(tmp_path):
    for name in ("alpha", "beta"):
        RunDir(tmp_path / name).save_config({"name": name})
    with pytest.raises(RunError, match="Runs there: alpha, beta"):
        resolve_run("gamma", tmp_path)
    with pytest.raises(RunError, match="has not finished its first checkpoint"):
        resolve_run("alpha", tmp_path)
    beta = RunDir(tmp_path / "beta")
    beta.save_checkpoint(7, {"w": torch.zeros(1)}, {"w": torch.zeros(1)}, {"step": 7})
    (beta.path / "model.safetensors").unlink()  # a copy that left out the published weights
    with pytest.raises(RunError, match=r"no model\.safetensors, though it holds checkpoint\(s\) up to step 7 .*"
                                       r"resuming publishes the last complete one"):
        resolve_run("beta", tmp_path)
    with pytest.raises(RunError, match=r"nope is not a run directory \(it has no config\.yaml\).*alpha, beta"):
        resolve_run(tmp_path / "nope", tmp_path)  # a path gets no "train one with name=/tmp/..." advice


def test_one_lock_per_run_directory_however_it_is_reached(tmp_path, monkeypatch):
    (tmp_path / "scratch" / "run").mkdir(parents=True)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run").symlink_to(tmp_path / "scratch" / "run")  # runs/ linked to a scratch disk
    held = RunDir(tmp_path / "runs" / "run").lock()
    with pytest.raises(RunError, match="is in use by sciddpm train"):
        RunDir(tmp_path / "scratch" / "run").lock()
    monkeypatch.chdir(tmp_path / "scratch" / "run")
    with pytest.raises(RunError, match="is in use by sciddpm train"):
        RunDir(".").lock()
    held.close()
    RunDir(".").lock().close()
