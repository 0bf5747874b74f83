"""The precision policy: bf16 only where the hardware multiplies it natively, never when refused."""

import pytest
import torch

from sciddpm import precision

ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
SAPPHIRE_FLAGS = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    for i, (text, native) in enumerate(((ZEN4_FLAGS, True), (OLD_FLAGS, False), (SAPPHIRE_FLAGS, True))):
        path = tmp_path / f"cpuinfo{i}"  # one file each: the answer is cached per path
        path.write_text(text)
        assert precision.cpu_has_native_bf16(str(path)) is native
    assert precision.cpu_has_native_bf16(str(tmp_path / "missing")) is False  # e.g. macOS


def test_cpu_network_dtype_follows_the_hardware_and_the_switch(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.network_dtype(cpu) == torch.bfloat16
    assert precision.network_dtype(cpu, bf16=False) == torch.float32
    with precision.network_autocast(cpu):
        assert torch.is_autocast_enabled("cpu")
    with precision.network_autocast(cpu, bf16=False):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.network_dtype(cpu) == torch.float32  # emulated bf16 is slower than float32
    with precision.network_autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")


def test_device_requests_resolve_or_say_what_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device("auto") == torch.device("cpu")
    assert precision.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device=cuda but no CUDA device is visible; use --device=cpu"):
        precision.resolve_device("cuda")
    with pytest.raises(ValueError, match=r"trainer.device=cuda:1 but no CUDA device is visible"):
        precision.resolve_device("cuda:1", flag="trainer.device")
    with pytest.raises(ValueError, match=r"--device=gpu is not a device; use auto, cpu, cuda or cuda:N"):
        precision.resolve_device("gpu")
    with pytest.raises(ValueError, match=r"--device=meta: sciddpm runs on auto, cpu, cuda or cuda:N"):
        precision.resolve_device("meta")
    # with GPUs visible: auto takes this rank's, an index past the last is named
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert precision.resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert precision.resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        precision.resolve_device("cuda:2")
