"""Training-step throughput of sciddpm's 2-D U-Net against diffusers' UNet2DModel at matched size.

The configuration is DDPM's CIFAR-10 network (Ho et al. 2020): 3 x 32 x 32, channels
128/256/256/256, 2 residual blocks per level, self-attention at the 16 x 16 level and in the
middle, ~36M parameters. One training step = forward + MSE loss + backward + AdamW step.

Matched means: the same blocks, widths and attention placement; the same attention head width
in both (``--head-channels``, default 8 = diffusers' default ``attention_head_dim``, so diffusers
is built exactly as the recipe with library defaults); our embedding width 384
(``--emb-channels``) so the parameter counts agree within ~3% (our FiLM projects to scale *and*
shift, twice diffusers' shift-only projection). FLOPs per step are counted for both with
``torch.utils.flop_counter.FlopCounterMode`` and printed, so the matched work is checked.

Both models run in this process, alternating in ABBA order (rounds x steps each, after warm-up);
medians over rounds are reported, so a noisy neighbour slows both. On CUDA the step runs under
bf16 autocast and TFLOP/s and MFU against ``--peak-tflops`` are added (989 = H100 SXM dense bf16).

    python benchmarks/unet_throughput.py                      # CPU, batch 8
    python benchmarks/unet_throughput.py --device cuda --batch 128 --compile

Prints one JSON line per model and one line with the ratio ours/diffusers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sciddpm.nn import build_backbone

CHANNELS = (128, 256, 256, 256)


def diffusers_unet(head_channels: int) -> torch.nn.Module:
    try:
        from diffusers import UNet2DModel
    except ImportError as err:  # optional: the `bench` extra
        raise SystemExit(f"this benchmark needs diffusers: pip install 'sciddpm[bench]' ({err})")
    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=CHANNELS,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=head_channels,
    )


def sciddpm_unet(head_channels: int, emb_channels: int, channels_last: bool | None = None) -> torch.nn.Module:
    return build_backbone(
        "unet2d",
        in_channels=3,
        channels=CHANNELS[0],
        channel_mult=[c // CHANNELS[0] for c in CHANNELS],
        blocks_per_level=2,
        attention_levels=[1],  # level 1 = 16 x 16 for a 32 x 32 input
        head_channels=head_channels,
        emb_channels=emb_channels,
        channels_last=channels_last,
    )


class Trainer:
    """One model, its optimiser and a fixed batch; ``step()`` is one full training step."""

    def __init__(self, name, model, args, device, x, t, target):
        self.name, self.model = name, model.to(device)
        self.params = sum(p.numel() for p in model.parameters())
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.forward = torch.compile(model) if args.compile else model
        self.is_diffusers = name == "diffusers"
        self.x, self.target = x, target
        self.t = t if self.is_diffusers else t.float()  # our net takes the raw float noise level
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )
        self.samples_per_s: list[float] = []

    def step(self) -> None:
        with self.autocast:
            out = self.forward(self.x, self.t)
            out = out.sample if self.is_diffusers else out
            loss = F.mse_loss(out.float(), self.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def flops_per_step(self) -> int:
        # Counted on the eager model (the compiled one hides its ops); forward + backward.
        counter = FlopCounterMode(display=False)
        with counter, self.autocast:
            out = self.model(self.x, self.t)
            out = out.sample if self.is_diffusers else out
            F.mse_loss(out.float(), self.target).backward()
        self.model.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per model per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (CUDA)")
    parser.add_argument(
        "--emb-channels", type=int, default=384,
        help="our embedding width; 384 matches diffusers' parameter count (our FiLM projects to "
        "scale and shift, twice diffusers' shift-only projection)",
    )
    parser.add_argument(
        "--head-channels", type=int, default=8,
        help="attention head width for both models (8 = diffusers' default attention_head_dim)",
    )
    parser.add_argument(
        "--layout", choices=["auto", "channels_last", "contiguous"], default="auto",
        help="our activation layout (auto: channels-last on CPU, contiguous elsewhere)",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for both models
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    target = torch.randn_like(x)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    channels_last = {"auto": None, "channels_last": True, "contiguous": False}[args.layout]
    ours = sciddpm_unet(args.head_channels, args.emb_channels, channels_last)
    trainers = [
        Trainer("sciddpm", ours, args, device, x, t, target),
        Trainer("diffusers", diffusers_unet(args.head_channels), args, device, x, t, target),
    ]
    flops = {tr.name: tr.flops_per_step() for tr in trainers}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for tr in trainers:
        for _ in range(args.warmup):
            tr.step()
    sync()
    for round_index in range(args.rounds):
        # Alternate the models, and their order every round (ABBA), so drift hits both alike.
        for tr in trainers if round_index % 2 == 0 else trainers[::-1]:
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                tr.step()
            sync()
            tr.samples_per_s.append(args.batch * args.steps / (time.perf_counter() - start))

    results = {}
    for tr in trainers:
        rate = statistics.median(tr.samples_per_s)
        row = {
            "model": tr.name,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "dtype": "bfloat16-autocast" if device.type == "cuda" else "float32",
            "batch": args.batch,
            "params": tr.params,
            "samples_per_s": round(rate, 3),
            "samples_per_s_rounds": [round(r, 3) for r in tr.samples_per_s],
            "gflop_per_step": round(flops[tr.name] / 1e9, 2),
            "head_channels": args.head_channels,
            "threads": torch.get_num_threads(),
            "compile": args.compile,
            "rounds": args.rounds,
            "steps": args.steps,
        }
        if tr.name == "sciddpm":
            row.update(layout=args.layout, emb_channels=args.emb_channels)
        if device.type == "cuda":
            tflops = flops[tr.name] * rate / args.batch / 1e12
            row.update(tflops=round(tflops, 2), mfu=round(tflops / args.peak_tflops, 4),
                       peak_tflops=args.peak_tflops)
        results[tr.name] = row
        print(json.dumps(row))
    ours_rates, their_rates = trainers[0].samples_per_s, trainers[1].samples_per_s
    print(json.dumps({
        "ratio_sciddpm_over_diffusers": round(results["sciddpm"]["samples_per_s"] / results["diffusers"]["samples_per_s"], 3),
        "ratio_median_of_rounds": round(statistics.median(a / b for a, b in zip(ours_rates, their_rates)), 3),
        "params_ratio": round(results["sciddpm"]["params"] / results["diffusers"]["params"], 4),
        "device": results["sciddpm"]["device"],
    }))


if __name__ == "__main__":
    main()
