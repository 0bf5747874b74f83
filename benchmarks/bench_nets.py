"""The networks the throughput benchmarks time, and what they report about the machine.

Four nets, each ours (``sciddpm.nn.build_backbone``) and, where diffusers has a matching 2-D
model, diffusers' ``UNet2DModel`` built with the same blocks, widths and attention placement:

* ``climate``: 4 x 64 x 128 (lat x lon), DDPM's CIFAR-10 widths 128/256/256/256, 2 residual blocks
  per level, attention at the 16 x 32 level and in the middle; ~36M parameters.
* ``cifar``: DDPM's CIFAR-10 network (Ho et al. 2020) at 3 x 32 x 32, attention at 16 x 16; ~36M.
* ``audio``: the ``model=audio`` preset (sciddpm/configs/model/audio.yaml) on the embedded tones
  data, 1 x 2048 samples with one conditioning value (pitch).
* ``volume``: a 3-D net for 1 x 32^3 volumes (explicit kwargs below), attention at 4^3 and in the
  middle.

Matching: attention heads as in the released DDPM CIFAR-10 model (google/ddpm-cifar10-32:
``attention_head_dim`` null, i.e. one head spanning all channels), and our embedding width 384,
which brings the parameter counts within ~3% (our FiLM projects to scale *and* shift, twice
diffusers' shift-only projection). ``head_channels`` (:func:`with_head_channels`) sets both
models' head width instead, e.g. 8 for diffusers' ``UNet2DModel`` default of 32 heads at 256
channels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from sciddpm.nn import build_backbone

ROOT = Path(__file__).resolve().parents[1]
DDPM_WIDTHS = (128, 256, 256, 256)
# Dense bf16 tensor-core peak (TFLOP/s) by device-name fragment; MFU is null for anything else.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


@dataclass(frozen=True)
class NetSpec:
    name: str
    shape: tuple[int, ...]  # [C, *spatial] of one sample
    ours: dict
    diffusers: dict | None = None  # UNet2DModel kwargs for a matched peer, if one exists
    cond_dim: int = 0
    default_batch: dict = field(default_factory=dict)  # device type -> batch


def _ddpm_2d(in_channels: int, attention_level: int) -> tuple[dict, dict]:
    # one head per attention layer, as DDPM: head_channels >= every attended width
    ours = dict(
        in_channels=in_channels, channels=DDPM_WIDTHS[0],
        channel_mult=[c // DDPM_WIDTHS[0] for c in DDPM_WIDTHS], blocks_per_level=2,
        attention_levels=[attention_level], head_channels=max(DDPM_WIDTHS), emb_channels=384,
    )
    down = ["DownBlock2D"] * len(DDPM_WIDTHS)
    down[attention_level] = "AttnDownBlock2D"
    up = ["UpBlock2D"] * len(DDPM_WIDTHS)
    up[len(DDPM_WIDTHS) - 1 - attention_level] = "AttnUpBlock2D"
    theirs = dict(
        in_channels=in_channels, out_channels=in_channels, block_out_channels=DDPM_WIDTHS,
        layers_per_block=2, down_block_types=tuple(down), up_block_types=tuple(up),
        attention_head_dim=None,  # one head of the block's width
    )
    return ours, theirs


def _audio_preset() -> dict:
    preset = yaml.safe_load((ROOT / "sciddpm/configs/model/audio.yaml").read_text())
    return dict(preset["kwargs"], in_channels=1, cond_dim=1)


_climate, _climate_peer = _ddpm_2d(4, attention_level=2)
_cifar, _cifar_peer = _ddpm_2d(3, attention_level=1)
NETS = {
    "climate": NetSpec("climate", (4, 64, 128), dict(_climate, backbone="unet2d"),
                       dict(_climate_peer, sample_size=(64, 128)),
                       default_batch={"cpu": 2, "cuda": 64}),
    "cifar": NetSpec("cifar", (3, 32, 32), dict(_cifar, backbone="unet2d"),
                     dict(_cifar_peer, sample_size=32), default_batch={"cpu": 8, "cuda": 256}),
    "audio": NetSpec("audio", (1, 2048), dict(_audio_preset(), backbone="unet1d"), cond_dim=1,
                     default_batch={"cpu": 32, "cuda": 512}),
    "volume": NetSpec("volume", (1, 32, 32, 32), dict(
        backbone="unet3d", in_channels=1, channels=32, channel_mult=[1, 2, 4, 4],
        blocks_per_level=2, attention_levels=[3], head_channels=32, norm_groups=8,
    ), default_batch={"cpu": 2, "cuda": 32}),
}


def with_head_channels(spec: NetSpec, head_channels: int | None) -> NetSpec:
    """``spec`` with attention heads of ``head_channels`` in ours and in diffusers' peer (None:
    unchanged)."""
    if head_channels is None:
        return spec
    peer = None if spec.diffusers is None else dict(spec.diffusers, attention_head_dim=head_channels)
    return replace(spec, ours=dict(spec.ours, head_channels=head_channels), diffusers=peer)


def build_ours(spec: NetSpec, channels_last: bool = False) -> torch.nn.Module:
    kwargs = dict(spec.ours)
    backbone = kwargs.pop("backbone")
    if backbone != "unet1d":
        kwargs["channels_last"] = channels_last
    return build_backbone(backbone, **kwargs)


def build_diffusers(spec: NetSpec) -> torch.nn.Module:
    try:
        from diffusers import UNet2DModel
    except ImportError as err:  # optional: the `bench` extra
        raise SystemExit(f"this benchmark needs diffusers: pip install 'sciddpm[bench]' ({err})")
    return UNet2DModel(**spec.diffusers)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    name = device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def append_jsonl(path: Path, lines: list[str]) -> None:
    """Append ``lines`` to the JSONL file ``path``, rewritten atomically."""
    from sciddpm.files import atomic_path

    old = path.read_text() if path.exists() else ""
    with atomic_path(path) as tmp:
        tmp.write_text(old + "".join(f"{line}\n" for line in lines))
