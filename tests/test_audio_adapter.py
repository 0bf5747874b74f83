"""The audio adapter: embedded tones, folder + CSV and NSynth sources, round trips, writing."""

from __future__ import annotations

import csv
import json
import logging
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import xarray as xr

from sciddpm.data import DataSpec, adapter_from_spec, build_adapter
from sciddpm.data import audio_io, tones
from sciddpm.data.audio import AudioAdapter, AudioClips
from sciddpm.data.audio_io import AudioFile
from sciddpm.metrics import cents, estimate_pitch
from sciddpm.testing import assert_roundtrip

SR = 8000


def sine(f, n, sr, amp=0.5, harmonics=3):
    t = np.arange(n) / sr
    return (amp * sum(np.sin(2 * np.pi * k * f * t) / k for k in range(1, harmonics + 1))).astype(np.float32)


@pytest.fixture(scope="module")
def tones_adapter(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCIDDPM_CACHE", str(cache))
        adapter = build_adapter("audio", tones_clips=40)
        adapter.spec()
        yield adapter


def all_items(adapter):
    """{file name: normalised clip} over both splits."""
    out = {}
    for split in ("train", "val"):
        ds = adapter.dataset(split)
        for i in range(len(ds)):
            out[ds.files[i].path.rsplit("/", 1)[-1]] = ds[i]["x"].numpy()
    return out


# ----------------------------------------------------------------------------- tones
def test_tones_are_deterministic_and_cached_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIDDPM_CACHE", str(tmp_path))
    waves, pitch = tones.make_tones(n_clips=6)
    waves2, pitch2 = tones.make_tones(n_clips=6)
    np.testing.assert_array_equal(waves, waves2)
    np.testing.assert_array_equal(pitch, pitch2)
    np.testing.assert_array_equal(tones.make_tones(n_clips=3)[0], waves[:3])  # clip i is independent of n
    assert not np.array_equal(tones.make_tones(n_clips=3, seed=1)[0], waves[:3])
    assert np.abs(waves).max() <= 1 and pitch.min() >= 110 and pitch.max() <= 880

    folder = tones.ensure_tones(n_clips=6)
    assert folder.parent == tmp_path and folder.name.startswith("tones-")
    with open(folder / "metadata.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["filename", "pitch[Hz]"]
    np.testing.assert_array_equal([float(r[1]) for r in rows[1:]], pitch)  # stored exactly
    for (name, _), wave in zip(rows[1:], waves):
        data, rate = sf.read(folder / name, dtype="float32")
        assert rate == SR
        np.testing.assert_array_equal(data, wave)
    stamp = (folder / "metadata.csv").stat().st_mtime_ns
    assert tones.ensure_tones(n_clips=6) == folder and (folder / "metadata.csv").stat().st_mtime_ns == stamp

    broken = tones.cache_dir(n_clips=7)  # a half-written cache (no marker) is never used
    broken.mkdir()
    (broken / "tone_00000.wav").write_bytes(b"half")
    rebuilt = tones.ensure_tones(n_clips=7)
    assert rebuilt == broken and (rebuilt / tones.MARKER).is_file()
    assert sf.read(rebuilt / "tone_00000.wav")[0].shape == (2048,)
    entries = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # builders' locks stay
    assert entries == sorted([folder.name, broken.name])  # no temp dirs left


def test_tones_stored_pitch_matches_the_metric(tones_adapter):
    folder = tones.ensure_tones(n_clips=40)
    files, values, _ = audio_io.read_folder(folder)
    waves = np.stack([sf.read(f, dtype="float32")[0] for f in files])
    f0, voiced = estimate_pitch(waves, SR)
    assert voiced.all()
    assert np.abs(cents(f0, values["pitch"])).max() < 5


def test_tones_spec_statistics(tones_adapter):
    spec = tones_adapter.spec()
    assert (spec.adapter, spec.dims, spec.channels, spec.shape, spec.padding) == ("audio", 1, ["waveform"], [2048], ["zeros"])
    assert spec.output["sample_rate"] == SR and spec.normaliser.mean == [0.0]
    assert spec.cond.names == ["pitch"] and spec.cond["pitch"].units == "Hz" and spec.cond["pitch"].feature == "log"
    assert 110 <= spec.cond["pitch"].min < spec.cond["pitch"].max <= 880
    train = torch.stack([item["x"] for item in tones_adapter.dataset("train")]).double()
    assert np.percentile(train.abs().numpy(), 99.9) == pytest.approx(1.0, rel=1e-5)  # the amplitude scale
    assert spec.sigma_data == pytest.approx(train.std().item(), rel=1e-4)  # measured, not assumed
    assert 0.1 < spec.sigma_data < 0.6


def test_dataset_items_split_and_pickling(tones_adapter):
    train, val = tones_adapter.dataset("train"), tones_adapter.dataset("val")
    assert (len(train), len(val)) == (36, 4)
    assert not {f.path for f in train.files} & {f.path for f in val.files}
    item = train[3]
    assert set(item) == {"x", "cond"}  # no "mask": audio has no missing values
    assert item["x"].dtype == item["cond"].dtype == torch.float32
    assert item["x"].shape == (1, 2048) and item["cond"].shape == (1,)
    assert -1 <= item["cond"].item() <= 1  # pitch in the training range encodes into [-1, 1]
    again = pickle.loads(pickle.dumps(train))
    torch.testing.assert_close(again[3]["x"], item["x"], rtol=0, atol=0)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=8)))
    assert batch["x"].shape == (8, 1, 2048) and batch["cond"].shape == (8, 1)
    assert [f.path for f in tones_adapter.dataset("val").files] == [f.path for f in val.files]  # deterministic


def test_round_trip_to_tensor_to_xarray(tones_adapter):
    ds, cond = tones_adapter.heldout(4, seed=0)
    assert set(cond) == {"pitch"} and len(cond["pitch"]) == 4
    assert ds.waveform.dims == ("member", "time") and ds.waveform.dtype == np.float32
    assert ds.attrs["sample_rate"] == SR and ds.time.attrs["units"] == "s" and ds.pitch.attrs["units"] == "Hz"
    np.testing.assert_allclose(ds.time[1], 1 / SR)
    np.testing.assert_array_equal(ds.pitch.values, cond["pitch"])
    xr.testing.assert_identical(tones_adapter.heldout(4, seed=0)[0], ds)
    x = tones_adapter.to_tensor(ds)
    assert x.shape == (4, 1, 2048) and x.dtype == torch.float64  # the network is given .float()
    assert_roundtrip(tones_adapter, ds, cond)
    calibrated = ds.assign(waveform=ds.waveform.assign_attrs(units="Pa"))  # a measurement microphone's recording
    with pytest.raises(ValueError, match=r"in 'Pa' but the model was trained on it in '1'.*fraction of full scale.*"
                                         r"divide calibrated values by your recorder's full-scale level"):
        tones_adapter.to_tensor(calibrated)
    one = tones_adapter.to_xarray(x[:2], {"pitch": 440.0})  # a single value: a scalar coordinate
    assert one.pitch.dims == () and float(one.pitch) == 440.0
    xr.testing.assert_allclose(tones_adapter.to_xarray(tones_adapter.to_tensor(one), {"pitch": 440.0}), one)
    free = tones_adapter.to_xarray(x, {})  # unconditional samples carry no conditioning coordinates
    assert "pitch" not in free.coords and free.attrs["conditions"] == "none (unconditional)"
    with pytest.raises(ValueError, match=r"asked for 5 held-out clips but the validation split has 4; lower n "
                                         r"\(sciddpm evaluate --n\), or train with a larger data.kwargs.val_fraction"):
        tones_adapter.heldout(5)
    with pytest.raises(ValueError, match=r"expected normalised clips \[N, 1, T\]"):
        tones_adapter.to_xarray(x[:, 0], cond)


def test_evaluate_scores_pitch_in_cents_and_mrstft(tones_adapter, tmp_path):
    heldout, cond = tones_adapter.heldout(4, seed=2)
    perfect = tones_adapter.evaluate(heldout, heldout, cond, tmp_path)
    assert perfect["files"] == [tmp_path / "pitch_sweep.png"] and perfect["mrstft_samples_vs_heldout"] == 0.0
    assert [p["requested_hz"] for p in perfect["pitch_sweep"]] == list(cond["pitch"])
    assert perfect["pitch_samples"]["voiced_fraction"] == 1.0 and perfect["pitch_samples"]["median_abs_cents"] < 5
    sharp = {"pitch": [p / 2 ** (1 / 12) for p in cond["pitch"]]}  # asked a semitone lower than delivered
    scores = tones_adapter.evaluate(heldout, heldout, sharp, tmp_path)
    assert scores["pitch_samples"]["median_abs_cents"] == pytest.approx(100, abs=5)
    assert scores["pitch_samples"]["within_50_cents"] == 0.0
    scores.pop("files")
    json.dumps(scores)  # plain JSON for metrics.json


def test_from_spec_needs_no_data(tones_adapter, tmp_path, monkeypatch):
    empty = tmp_path / "no-cache"
    monkeypatch.setenv("SCIDDPM_CACHE", str(empty))
    d = json.loads(json.dumps(tones_adapter.spec().to_dict()))
    adapter = adapter_from_spec(d)
    assert isinstance(adapter, AudioAdapter) and adapter.spec() == DataSpec.from_dict(d)
    ds = adapter.to_xarray(torch.zeros(2, 1, 2048).uniform_(-1, 1), {"pitch": [220.0, 440.0]})
    paths = adapter.write(ds, tmp_path / "out")
    assert all(p.exists() for p in paths)
    with pytest.raises(RuntimeError, match="rebuilt from a run's DataSpec and has no data"):
        adapter.dataset("train")
    assert not empty.exists()  # nothing was built


def test_write_wavs_png_and_store_without_clipping(tones_adapter, tmp_path, caplog):
    ds, cond = tones_adapter.heldout(3, seed=1)
    ds["waveform"][2] = ds.waveform[2] * (1.5 / float(np.abs(ds.waveform[2]).max()))  # over full scale
    with caplog.at_level(logging.WARNING, logger="sciddpm.data.audio_output"):
        paths = tones_adapter.write(ds, tmp_path / "a440.nc")
    names = [p.name for p in paths]
    assert names == ["a440_member000.wav", "a440_member001.wav", "a440_member002.wav", "a440_spectrogram.png", "a440.nc"]
    assert "scaled down to peak 0.999" in caplog.text and "member002" in caplog.text
    for k, path in enumerate(paths[:3]):
        data, rate = sf.read(path, dtype="float64")
        assert rate == SR and data.shape == (2048,) and np.isfinite(data).all() and np.abs(data).max() <= 1
        gain = 0.999 / 1.5 if k == 2 else 1.0
        np.testing.assert_allclose(data, ds.waveform[k].values * gain, rtol=1e-6, atol=1e-7)
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = xr.open_dataset(paths[4]).load()
    np.testing.assert_array_equal(stored.waveform.values, ds.waveform.values)  # the store keeps true values
    assert stored.attrs["wav_rescaled"] == "member002"
    np.testing.assert_allclose(stored.attrs["wav_gains"], 0.999 / 1.5)
    xr.testing.assert_identical(stored.drop_attrs(deep=False), ds.drop_attrs(deep=False))

    zpaths = tones_adapter.write(ds, tmp_path / "z.zarr")
    xr.testing.assert_equal(xr.open_zarr(zpaths[-1], consolidated=False).load(), ds)
    dpaths = tones_adapter.write(ds, tmp_path / "dir")
    assert [p.relative_to(tmp_path).as_posix() for p in dpaths][-2:] == ["dir/spectrogram.png", "dir/samples.nc"]
    ens = xr.concat([ds, ds], dim="case")  # Model.ensemble's layout: (case, member, time)
    epaths = tones_adapter.write(ens, tmp_path / "ens")
    assert [p.name for p in epaths[:2]] == ["case000_member000.wav", "case000_member001.wav"] and len(epaths) == 8
    np.testing.assert_array_equal(sf.read(epaths[4], dtype="float32")[0], ds.waveform[1].values)  # case001_member001
    (tmp_path / "ens" / "my_take.wav").write_bytes(b"not ours")
    with caplog.at_level(logging.WARNING, logger="sciddpm.data.audio_output"):
        fewer = tones_adapter.write(ds.isel(member=[0]), tmp_path / "ens")  # a smaller set, same folder
    # the previous set's other clips go (no 440 Hz WAV left beside a 220 Hz samples.nc); others stay
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == ["member000.wav", "my_take.wav", "samples.nc",
                                                                    "spectrogram.png"]
    assert "removed 6 WAV(s)" in caplog.text and [p.name for p in fewer][0] == "member000.wav"
    pcm = AudioAdapter.from_spec(DataSpec.from_dict({**tones_adapter.spec().to_dict(),
                                                     "output": {"sample_rate": SR, "wav_subtype": "PCM_16"}}))
    assert sf.info(pcm.write(ds, tmp_path / "pcm")[0]).subtype == "PCM_16"

    bad = ds.copy(deep=True)
    bad["waveform"][1, 7] = np.nan
    with pytest.raises(ValueError, match=r"NaN/Inf at \{'member': 1\}; nothing was written"):
        tones_adapter.write(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- folder + CSV
@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    sf.write(root / "long.wav", sine(300, 4096, SR), SR, subtype="FLOAT")
    stereo = np.stack([sine(200, 8192, 16000, amp=0.8), np.zeros(8192, np.float32)], axis=1)
    sf.write(root / "stereo16k.wav", stereo, 16000, subtype="FLOAT")
    sf.write(root / "short.wav", sine(440, 1000, SR), SR, subtype="FLOAT")
    sf.write(root / "exact.flac", sine(500, 2048, SR), SR)
    sf.write(root / "extra.wav", sine(500, 2048, SR), SR)  # not in the CSV: not used, and said so
    (root / "metadata.csv").write_text(
        "filename,pitch[Hz],gain[dB]\nlong.wav,300,0\nstereo16k.wav,200,-3\nshort.wav,440,1.5\nexact.flac,500,2\n")
    return root


@pytest.mark.parametrize("frames, offset_s", [(0, 0.0), (1000, 0.2)])  # empty; ends before the offset
def test_a_file_with_no_audio_in_its_clip_is_refused_by_name(folder, frames, offset_s):
    sf.write(folder / "short.wav", sine(440, frames, SR), SR, subtype="FLOAT")
    adapter = build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, clip_samples=1024,
                            offset_s=offset_s)
    with pytest.raises(ValueError, match=r"1 file\(s\) have no audio at offset .* s \(empty, or shorter than the "
                                         r"offset\), e\.g\. \S*short\.wav; remove them .* or lower data\.kwargs\.offset_s"):
        adapter.spec()


def test_a_clip_of_leading_silence_is_refused_by_name_and_offset_s_is_the_fix(folder, caplog):
    # 0.2 s of hiss at -80 dB before the note, longer than the 1024-sample clip: it trained as a
    # silent clip under its label, the rest of the file dropped
    late = np.concatenate([np.random.default_rng(0).normal(0, 1e-4, 1600), sine(440, 4096, SR)])
    common = dict(source="folder", path=str(folder), sample_rate=SR, clip_samples=1024, units={"gain": "dB"})
    for name in ("long.wav", "stereo16k.wav"):  # most of the training files start late: refused
        sf.write(folder / name, late, SR)
    with pytest.raises(ValueError, match=r"2 of the 3 training clips read for statistics are silent \(peak 60 dB or "
                                         r"more under the loudest clip's\) over their 1024 samples from offset_s=0, "
                                         r"e\.g\. \S*long\.wav.*\. Either the sound starts later in them \(set "
                                         r"data\.kwargs\.offset_s.*or the files' levels differ by more than 60 dB: "
                                         r"the loudest clip, \S*exact\.flac, peaks at -3 dBFS and the median clip "
                                         r"at -68 dBFS"):
        build_adapter("audio", **common).spec()
    for name in ("long.wav", "stereo16k.wav", "short.wav", "exact.flac"):  # said "-inf dBFS" and blamed levels
        sf.write(folder / name, np.zeros(4096), SR)
    with pytest.raises(ValueError, match=r"all 3 training clips read for statistics are digital silence \(all zeros\)"):
        build_adapter("audio", **common).spec()
    for name in ("long.wav", "stereo16k.wav"):
        sf.write(folder / name, late, SR)
    for name, pitch in (("short.wav", 440), ("exact.flac", 500)):
        sf.write(folder / name, sine(pitch, 4096, SR), SR)
    fixed = build_adapter("audio", **common, offset_s=0.1)
    items = fixed.dataset("train")
    clips = np.stack([items[i]["x"].numpy() for i in range(len(items))])
    assert (np.abs(clips).max(axis=-1) > 0.1).all()
    sf.write(folder / "stereo16k.wav", sine(500, 4096, SR), SR)  # one of three: said, and trained
    with caplog.at_level(logging.WARNING, logger="sciddpm.data"):
        build_adapter("audio", **common).spec()
    assert "1 of the 3 training clips read for statistics are silent" in caplog.text
    assert "they train as silence under their labels (drop them if that is not meant)" in caplog.text
    caplog.clear()
    for name in ("long.wav", "stereo16k.wav", "exact.flac"):  # a quietly recorded set (-90 dBFS) is sound
        sf.write(folder / name, 3e-5 * sine(440, 4096, SR), SR, subtype="FLOAT" if name.endswith(".wav") else "PCM_24")
    assert build_adapter("audio", **common).spec().normaliser.std[0] > 0 and "silent" not in caplog.text
    # a silent clip outside the statistics sample is said when it is read for training
    quiet = AudioClips([AudioFile(str(folder / "long.wav"), SR, 5696, 1)], np.zeros((1, 0)), 1.0, SR, 1024, 0.0, 1)
    with caplog.at_level(logging.WARNING, logger="sciddpm.data"):
        quiet[0], quiet[0]
    assert caplog.text.count("long.wav is silent from offset_s=0 for the clip's 1024 samples") == 1


@pytest.mark.parametrize("rate", [22050, 44100, 11025, 48000])
def test_a_resampled_clip_starts_exactly_at_its_offset(tmp_path, rate):
    # The clip's start was rounded after resampling: 22050 -> 16000 Hz at offset 0.3 s began 28 us
    # early (an error of 3.8e-2 on a 440 Hz tone of amplitude 0.5)
    path = tmp_path / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(rate) / rate), rate, subtype="FLOAT")
    clip = audio_io.load_clip(AudioFile(str(path), rate, rate, 1), 16000, 2048, 0.3, 1)[0]
    truth = 0.5 * np.sin(2 * np.pi * 440.0 * (0.3 + np.arange(2048) / 16000))
    assert np.abs(clip - truth).max() < 1e-3  # 1.1e-4 to 1.2e-4 now: the resampling filter


def test_folder_source_clip_policy_resampling_and_schema(folder, caplog):
    adapter = build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, clip_samples=2048,
                            units={"gain": "dB"}, val_fraction=0.25)
    with caplog.at_level(logging.INFO, logger="sciddpm.data"):
        spec = adapter.spec()
    assert "resampling 1 file(s) from 16000 Hz to 8000 Hz with torchaudio.functional.resample" in caplog.text
    assert re.search(r"1 of 4 file\(s\) are shorter than offset 0.000 s \+ 2048 samples and are zero-padded at the "
                     r"end, e\.g\. \S*short\.wav; the shortest, \S*short\.wav, fills 49% of its clip", caplog.text)
    assert "2 of 4 file(s) are longer than the clip; cropped" in caplog.text
    assert "1 audio file(s) in" in caplog.text and "not listed in metadata.csv and are not used, e.g. extra.wav" in caplog.text
    assert spec.cond.names == ["pitch", "gain"]
    assert [(v.units, v.feature) for v in spec.cond.vars] == [("Hz", "log"), ("dB", "linear")]
    scale = spec.normaliser.std[0]
    clips = {k: v[0] * scale for k, v in all_items(adapter).items()}
    np.testing.assert_allclose(clips["long.wav"], sine(300, 4096, SR)[:2048], atol=1e-6)  # cropped from the start
    np.testing.assert_allclose(clips["short.wav"][:1000], sine(440, 1000, SR), atol=1e-6)
    assert not clips["short.wav"][1000:].any()  # padded at the end only
    np.testing.assert_allclose(clips["exact.flac"], sine(500, 2048, SR), atol=1e-4)  # FLAC is 16-bit
    mixed = clips["stereo16k.wav"]  # averaged to mono (right is silent: half the left), then resampled
    assert abs(cents(estimate_pitch(mixed, SR)[0], 200.0)) < 5
    ref = sine(200, 2048, SR, amp=0.4)
    assert np.sqrt(np.mean(mixed[100:-100] ** 2)) == pytest.approx(np.sqrt(np.mean(ref[100:-100] ** 2)), rel=0.02)

    shifted = build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, clip_samples=2048, offset_s=0.1)
    clips = {k: v[0] * shifted.spec().normaliser.std[0] for k, v in all_items(shifted).items()}
    np.testing.assert_allclose(clips["long.wav"], sine(300, 4096, SR)[800:2848], atol=1e-6)


def test_folder_rates_must_agree_unless_resampled(folder):
    with pytest.raises(ValueError, match=r"sample rates \[8000, 16000\] Hz; pass sample_rate="):
        build_adapter("audio", source="folder", path=str(folder)).spec()


def test_folder_stereo_kept_with_channels_2(tmp_path, folder):
    root = tmp_path / "stereo"
    root.mkdir()
    for i, f in enumerate((220, 330, 440)):
        sf.write(root / f"s{i}.wav", np.stack([sine(f, 2048, SR), sine(2 * f, 2048, SR)], axis=1), SR)
    (root / "metadata.csv").write_text("filename,pitch[Hz]\ns0.wav,220\ns1.wav,330\ns2.wav,440\n")
    adapter = build_adapter("audio", source="folder", path=str(root), channels=2, clip_samples=2048)
    spec = adapter.spec()
    assert spec.channels == ["left", "right"] and adapter.dataset()[0]["x"].shape == (2, 2048)
    ds, cond = adapter.heldout(1)
    assert ds.waveform.dims == ("member", "channel", "time") and list(ds.channel.values) == ["left", "right"]
    f0, _ = estimate_pitch(ds.waveform.values[0], SR)
    np.testing.assert_allclose(cents(f0, [cond["pitch"][0], 2 * cond["pitch"][0]]), 0, atol=5)
    np.testing.assert_allclose(adapter.to_xarray(adapter.to_tensor(ds), cond).waveform, ds.waveform, rtol=1e-6)
    with pytest.raises(ValueError, match=r"long.wav has 1 channel\(s\) but channels=2"):
        build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, channels=2).spec()
    # channels in opposite phase cancel in the mono mix-down: refused, not trained as labelled silence
    tone = sine(220, 2048, SR)
    sf.write(root / "s1.wav", np.stack([tone, -tone], axis=1), SR, subtype="PCM_24")
    mono = build_adapter("audio", source="folder", path=str(root), clip_samples=2048, stats_clips=3)
    with pytest.raises(ValueError, match=r"s1.wav: its 2 channels cancel when mixed down to mono .*channels=2"):
        mono.spec()
    # ... and a channel inverted at another gain (R = -0.8 L) lost 20 dB in the mix without a word
    sf.write(root / "s1.wav", np.stack([tone, -0.8 * tone], axis=1), SR, subtype="PCM_24")
    with pytest.warns(UserWarning, match=r"s1.wav: its 2 channels partly cancel when mixed down to mono: the mix is "
                                         r"-19 dB under the channels' level \(an inverted channel, microphones far "
                                         r"apart, or a wide stereo image\); if that matters, keep both channels"):
        build_adapter("audio", source="folder", path=str(root), clip_samples=2048, stats_clips=3).spec()


def _break(folder, how):
    meta = folder / "metadata.csv"
    if how == "missing csv":
        meta.unlink()
    elif how == "missing file":
        meta.write_text(meta.read_text() + "ghost.wav,100,0\n")
    elif how == "unreadable":
        (folder / "bad.wav").write_bytes(b"RIFF not really a wav")
        meta.write_text(meta.read_text() + "bad.wav,100,0\n")
    elif how == "nan samples":
        sf.write(folder / "nan.wav", np.full(800, np.nan, dtype=np.float32), SR, subtype="FLOAT")
        meta.write_text(meta.read_text() + "nan.wav,100,0\n")
    elif how == "non-numeric":
        meta.write_text("filename,pitch[Hz],gain[dB]\nlong.wav,high,0\nshort.wav,440,1\n")
    elif how == "empty":
        for p in folder.iterdir():
            p.unlink()
    elif how == "cp1252":  # Excel's legacy "CSV": a bare UnicodeDecodeError before
        meta.write_bytes("filename,pitch[Hz],gain[dB]\nlong.wav,220,0\n# Kl\u00e4nge\n".encode("cp1252"))
    elif how == "one recording twice":  # trained under two labels; a.wav also said to be "not listed"
        (folder / "sub").mkdir()
        meta.write_text(meta.read_text() + "sub/../long.wav,880,0\n")
    elif how == "underscore":  # float() reads it as 330
        meta.write_text("filename,pitch[Hz],gain[dB]\nlong.wav,3_30,0\n")
    return str(folder)


@pytest.mark.parametrize("how, error, needle", [
    ("missing csv", FileNotFoundError, r"no metadata CSV .*clips/metadata.csv; put audio files there"),
    ("missing file", FileNotFoundError, r"line 6 names 'ghost.wav', which is not in .*clips"),
    ("unreadable", ValueError, r"cannot read audio file .*bad.wav: .*Format not recognised"),
    ("nan samples", ValueError, r"nan\.wav holds NaN or infinite samples; audio must be finite"),
    ("non-numeric", ValueError, r"non-numeric value 'high' in column 'pitch' for 'long.wav' \(metadata.csv line 2\)"),
    ("empty", FileNotFoundError, r"audio folder .*clips is empty"),
    ("cp1252", ValueError, r"metadata.csv is not UTF-8 text \(byte 0xe4 on line 3; .*save it as UTF-8"),
    ("one recording twice", ValueError, r"lists one recording more than once \(under the names \['long.wav', "
                                        r"'sub/../long.wav'\]\)"),
    ("underscore", ValueError, r"non-numeric value '3_30' in column 'pitch'"),
])
def test_folder_errors_name_the_problem(folder, how, error, needle):
    adapter = build_adapter("audio", source="folder", path=_break(folder, how), sample_rate=SR)
    with pytest.raises(error, match=needle):
        adapter.spec()


def test_folder_cond_chooses_the_condition_columns(folder, caplog):
    meta = Path(folder) / "metadata.csv"
    rows = meta.read_text().splitlines()
    labels = ["split", "train", "train", "val", "train"]
    meta.write_text("\n".join(f"{r},{x}" for r, x in zip(rows, labels)).replace("filename,", "Filename,") + "\n")
    with pytest.raises(ValueError, match=r"non-numeric value 'train' in column 'split' .*data\.kwargs\.cond=\[\.\.\.\]"):
        build_adapter("audio", source="folder", path=str(folder), sample_rate=SR).spec()
    with caplog.at_level(logging.INFO, logger="sciddpm.data"):
        spec = build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, cond=["pitch"]).spec()
    assert spec.cond.names == ["pitch"] and "column(s) ['gain', 'split'] are not conditions" in caplog.text
    with pytest.raises(ValueError, match=r"cond= names column\(s\) \['pich'\] .*its columns: \['pitch', 'gain', "
                                         r"'split'\] \(did you mean 'pitch'\?\)"):
        build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, cond=["pich"]).spec()
    with pytest.raises(ValueError, match=r"cond only apply to source='folder'"):
        build_adapter("audio", cond=["pitch"])
    meta.write_text(meta.read_text().replace(",", ";"))  # a spreadsheet's semicolons
    with pytest.raises(ValueError, match=r"needs a header row with a 'filename' column.*one field holding ';'"):
        build_adapter("audio", source="folder", path=str(folder), sample_rate=SR).spec()


def test_folder_units_conflicts_and_bad_arguments(folder, caplog):
    meta = Path(folder) / "metadata.csv"
    meta.write_text(meta.read_text().replace("gain[dB]", "gain"))  # a plain header: units from units= or refused
    with caplog.at_level("WARNING", logger="sciddpm"):
        bare = build_adapter("audio", source="folder", path=str(folder), sample_rate=SR).spec()
    assert bare.cond["gain"].units == "" and "column 'gain' has no units, so it is taken as a pure number" in caplog.text
    plain = build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, units={"gain": 1})
    assert plain.spec().cond["gain"].units == "1"  # Hydra reads units={gain: 1} as a number
    meta.write_text(meta.read_text().replace("gain", "gain[dB]"))
    with pytest.raises(ValueError, match=r"header says \[Hz\] but units= says 'kHz'"):
        build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, units={"pitch": "kHz"}).spec()
    with pytest.raises(ValueError, match=r"names column\(s\) \['loudness'\] that .* does not have"):
        build_adapter("audio", source="folder", path=str(folder), sample_rate=SR, units={"loudness": "dB"}).spec()
    for kwargs, needle in [({"source": "mp3"}, "unknown audio source 'mp3'"),
                           ({"source": "folder"}, "needs path="),
                           ({"path": str(folder)}, "builds its own data"),
                           ({"channels": 3}, "channels must be 1"),
                           ({"wav_subtype": "PCM_8"}, "wav_subtype must be one of"),
                           ({"source": "folder", "path": str(folder), "tones_clips": 5}, "only apply to source='tones'")]:
        with pytest.raises(ValueError, match=needle):
            build_adapter("audio", **kwargs)


# ----------------------------------------------------------------------------- NSynth
NOTES = {  # note_str -> (MIDI pitch, velocity, family)
    "guitar_acoustic_000-057-075": (57, 75, "guitar"), "guitar_acoustic_000-060-025": (60, 25, "guitar"),
    "guitar_acoustic_000-069-100": (69, 100, "guitar"), "keyboard_electronic_001-064-127": (64, 127, "keyboard"),
    "keyboard_electronic_001-072-100": (72, 100, "keyboard"), "keyboard_electronic_001-081-050": (81, 50, "keyboard"),
}


@pytest.fixture()
def nsynth(tmp_path):
    root = tmp_path / "nsynth-valid"
    (root / "audio").mkdir(parents=True)
    examples = {}
    for note, (midi, vel, family) in NOTES.items():
        sf.write(root / "audio" / f"{note}.wav", sine(440 * 2 ** ((midi - 69) / 12), 16000, 16000), 16000)
        examples[note] = {"note_str": note, "pitch": midi, "velocity": vel, "instrument_family_str": family,
                          "sample_rate": 16000, "qualities_str": []}
    (root / "examples.json").write_text(json.dumps(examples))
    return root


def test_nsynth_pitch_in_hz_velocity_and_filters(nsynth):
    assert audio_io.midi_to_hz(69) == 440.0
    np.testing.assert_allclose(audio_io.midi_to_hz([57, 81]), [220.0, 880.0])
    adapter = build_adapter("audio", source="nsynth", path=str(nsynth), clip_samples=8192, val_fraction=0.34)
    spec = adapter.spec()
    assert spec.output["sample_rate"] == 16000 and spec.shape == [8192]
    assert [(v.name, v.units, v.feature) for v in spec.cond.vars] == [("pitch", "Hz", "log"),
                                                                       ("velocity", "MIDI velocity", "linear")]
    ds, cond = adapter.heldout(2)
    hz = {440 * 2 ** ((m - 69) / 12): v for m, v, _ in NOTES.values()}
    for p, v, wave in zip(cond["pitch"], cond["velocity"], ds.waveform.values):
        assert hz[min(hz, key=lambda h: abs(h - p))] == v and min(abs(h - p) for h in hz) < 1e-9
        assert abs(cents(estimate_pitch(wave, 16000)[0], p)) < 5  # the file belongs to that note
    assert spec.cond.encode({"pitch": 440, "velocity": 100}).shape == (1, 2)

    keys = build_adapter("audio", source="nsynth", path=str(nsynth), instrument_family="keyboard")
    assert len(keys.dataset("train")) + len(keys.dataset("val")) == 3
    mid = build_adapter("audio", source="nsynth", path=str(nsynth), midi_range=(60, 72))
    assert len(mid.dataset("train")) + len(mid.dataset("val")) == 4
    with pytest.raises(ValueError, match=r"midi_range must be \[lowest, highest\] MIDI notes, e\.g\. \[48, 84\]; got 60"):
        build_adapter("audio", source="nsynth", path=str(nsynth), midi_range=60).spec()
    with pytest.raises(ValueError, match=r"instrument_family \['flute'\] not in .*; present: guitar, keyboard"):
        build_adapter("audio", source="nsynth", path=str(nsynth), instrument_family="flute").spec()
    (nsynth / "audio" / "guitar_acoustic_000-069-100.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 note\(s\) .* have no audio .*guitar_acoustic_000-069-100.wav"):
        build_adapter("audio", source="nsynth", path=str(nsynth)).spec()
    (nsynth / "examples.json").unlink()
    with pytest.raises(FileNotFoundError, match="examples.json"):
        build_adapter("audio", source="nsynth", path=str(nsynth)).spec()


def test_tones_recipe_writes_the_folder_layout(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "datasets" / "tones.py"
    spec = importlib.util.spec_from_file_location("tones_recipe", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path / "t"), "--n-clips", "3", "--seed", "2"]) == 0
    files, values, meta = audio_io.read_folder(tmp_path / "t")
    waves, pitch = tones.make_tones(n_clips=3, seed=2)
    np.testing.assert_array_equal(values["pitch"], pitch)
    np.testing.assert_array_equal(sf.read(files[2], dtype="float32")[0], waves[2])
    assert meta["pitch"]["units"] == "Hz" and "wrote 3 harmonic tones" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.main(["--out", str(tmp_path / "t")])  # refuses to overwrite


# ----------------------------------------------------------------------------- optional stacks
def test_optional_audio_stack_is_imported_lazily_and_named(monkeypatch):
    code = ("import sys, sciddpm.data, sciddpm.metrics; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('soundfile', 'torchaudio', 'matplotlib') "
            "or m.startswith(('sciddpm.nn', 'sciddpm.diffusion'))]; print(bad); assert not bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(ImportError, match=r"pip install 'sciddpm\[audio\]'"):
        audio_io.soundfile()
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(ImportError, match=r"needs torchaudio: pip install 'sciddpm\[audio\]'"):
        audio_io.resample(np.zeros((1, 16)), 16000, 8000)


def test_wav_names_follow_the_member_coordinate(tones_adapter, tmp_path):
    ds, _ = tones_adapter.heldout(3, seed=1)
    picked = ds.isel(member=[0, 2])
    paths = tones_adapter.write(picked, tmp_path / "sel")
    assert [p.name for p in paths[:2]] == ["member000.wav", "member002.wav"]  # as samples.nc labels them
    with pytest.raises(ValueError, match=r"a440\.wav names a file, but audio samples are written as one WAV per clip"):
        tones_adapter.write(ds, tmp_path / "a440.wav")
    odd = ds.assign_attrs(sample_rate=8000.5).assign_coords(time=np.arange(ds.sizes["time"]) / 8000.5)
    with pytest.raises(ValueError, match=r"sample rate is 8000\.5 Hz; WAV files need a whole number of Hz"):
        tones_adapter.write(odd, tmp_path / "odd")
    # the rate is the time coordinate's: every other sample kept the attribute and was written at
    # twice its speed (an octave up); without the attribute the time steps give it
    with pytest.raises(ValueError, match=r"sample_rate attribute says 8000 Hz but its time coordinate steps 0\.00025 s "
                                         r"\(4000 Hz\): was it subsampled"):
        tones_adapter.write(ds.isel(time=slice(None, None, 2)), tmp_path / "half")
    coarse = ds.assign_coords(time=ds.time.astype(np.float32))  # float32 seconds: uneven by rounding, same rate
    assert tones_adapter.to_tensor(coarse).shape == tones_adapter.to_tensor(ds).shape
    coarse = ds.assign_coords(time=(ds.time * 1000).assign_attrs(units="ms"))  # read in its units, not as 8 Hz
    assert tones_adapter.to_tensor(coarse).shape == tones_adapter.to_tensor(ds).shape
    halved = ds.isel(time=slice(None, None, 2)).drop_attrs()
    halved = halved.assign_coords(time=(halved.time * 1000).assign_attrs(units="milliseconds"))
    assert sf.info(tones_adapter.write(halved, tmp_path / "ms")[0]).samplerate == 4000  # was written at 8000
    with pytest.raises(ValueError, match=r"time coordinate is in 'fortnights', which is not a time sciddpm reads"):
        tones_adapter.to_tensor(ds.assign_coords(time=ds.time.assign_attrs(units="fortnights")))
    coarse = ds.assign_coords(time=(1.7e9 + ds.time).assign_attrs(units="s"))  # POSIX seconds
    assert tones_adapter.to_tensor(coarse).shape == tones_adapter.to_tensor(ds).shape
    coarse = ds.assign_coords(time=np.arange(ds.sizes["time"]) * 1.0).assign_coords(
        time=lambda d: d.time.assign_attrs(units="samples"))  # sample numbers: no rate in them
    assert tones_adapter.to_tensor(coarse).shape == tones_adapter.to_tensor(ds).shape
    bare = ds.isel(time=slice(None, None, 2)).drop_attrs()
    with pytest.raises(ValueError, match=r"the Dataset is at 4000 Hz but the model works at 8000 Hz; resample it"):
        tones_adapter.to_tensor(bare)
    assert sf.info(tones_adapter.write(bare, tmp_path / "bare")[0]).samplerate == 4000
    np.testing.assert_array_equal(sf.read(paths[1], dtype="float32")[0], ds.waveform[2].values)
    # clips of a write killed before its samples.nc (no record of them) are still recognised as ours
    (tmp_path / "sel" / "member007.wav").write_bytes(b"from a killed, larger set")
    (tmp_path / "sel" / "samples.nc").unlink()
    (tmp_path / "sel" / "take007.wav").write_bytes(b"the user's own")
    tones_adapter.write(picked, tmp_path / "sel")
    assert sorted(p.name for p in (tmp_path / "sel").glob("*.wav")) == ["member000.wav", "member002.wav",
                                                                        "take007.wav"]


def test_a_failed_or_interrupted_tones_build_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIDDPM_CACHE", str(tmp_path))

    def interrupted(**params):
        raise KeyboardInterrupt  # Ctrl-C during the first-use build

    monkeypatch.setattr(tones, "make_tones", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tones.ensure_tones(n_clips=4)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    monkeypatch.setenv("SCIDDPM_CACHE", str(tmp_path))
    broken = tones.cache_dir(n_clips=4)
    broken.mkdir()
    (broken / "tone_00000.wav").write_bytes(b"")  # a folder without its marker is rebuilt
    folder = tones.ensure_tones(n_clips=4)
    assert folder == broken and len(list(folder.glob("tone_*.wav"))) == 4 and (folder / tones.MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [folder.name]


def test_the_pitch_sweep_reads_pitch_in_its_own_units_and_range(tmp_path, caplog):
    # a folder whose CSV says pitch[kHz] (or MIDI numbers) was scored as if the numbers were Hz
    # (0.66 "Hz" against 660 Hz recordings: 11959 cents off), and notes above 2000 Hz read an octave low
    from sciddpm.data.audio_eval import audio_scores

    rate, n = 16000, 4096
    hz = np.array([660.0, 2500.0, 3000.0])
    clips = np.sin(2 * np.pi * hz[:, None] * np.arange(n) / rate)
    ds = xr.Dataset({"waveform": (("member", "time"), clips)})
    for values, units in ((hz / 1000, "kHz"), (69 + 12 * np.log2(hz / 440), "MIDI"), (hz, "Hz")):
        scores = audio_scores(ds, ds, {"pitch": values}, tmp_path, rate, pitch_units=units)
        assert [p["requested_hz"] for p in scores["pitch_sweep"]] == pytest.approx(hz.tolist())
        assert scores["pitch_samples"]["within_50_cents"] == 1.0 and scores["pitch_samples"]["median_abs_cents"] < 1
    with caplog.at_level("WARNING"):
        scores = audio_scores(ds, ds, {"pitch": hz}, tmp_path, rate, pitch_units="cents")
    assert "pitch_sweep" not in scores and "is in 'cents', which is not a frequency" in caplog.text
