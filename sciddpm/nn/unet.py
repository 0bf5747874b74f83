"""One U-Net for 1-, 2- and 3-D data (Ronneberger et al. 2015, in the diffusion form of Ho et al.
2020 and Dhariwal & Nichol 2021), registered as the backbones ``unet1d``, ``unet2d``, ``unet3d``.

The network maps ``(x, noise_level, cond)`` to a tensor shaped like ``x``; what the noise level
means is the Denoiser's business (house rule 3 in docs/architecture.md). Levels ``l = 0 .. L-1`` run at
resolution ``2^-l``; each holds ``blocks_per_level`` residual blocks (plus self-attention at the
``attention_levels``) on the way down and one more on the way up, where every block also reads
the matching encoder activation (skip connection). The total downsampling factor per axis is
``2^(L-1)``; inputs of any size are padded inside to a multiple of it, with each axis's own
padding mode, and cropped back, so odd grids such as 121 x 240 keep their shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sciddpm.nn.embeddings import ConditionEmbedding, NoiseEmbedding
from sciddpm.nn.layers import (
    CHANNELS_LAST,
    Attention,
    Conv,
    Downsample,
    GroupNorm,
    ResBlock,
    Upsample,
    norm_groups_for,
    pad_axes,
    padding_modes,
    zero_init,
)
from sciddpm.registry import Registry

BACKBONES = Registry("backbone", entry_point_group="sciddpm.backbones")
AXIS_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def register_backbone(name: str):
    """Decorator registering a backbone builder (class or function) under ``name``."""
    return BACKBONES.register(name)


def build_backbone(name: str, **kwargs):
    """Build the backbone registered as ``name``; unknown names and keyword arguments are errors."""
    return BACKBONES.build(name, **kwargs)


class Block(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, block: ResBlock, attention: Attention | None):
        super().__init__()
        self.block = block
        self.attention = attention

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.block(x, emb)
        return x if self.attention is None else self.attention(x)


class UNet(nn.Module):
    """U-Net backbone for ``dims`` = 1, 2 or 3 spatial axes.

    Arguments are plain JSON values, so a config can store them as ``{name, kwargs}``:

    * ``channels`` x ``channel_mult[l]`` is the width of level ``l``; ``blocks_per_level``
      residual blocks per level on the way down (one more on the way up).
    * ``attention_levels``: level indices (0 = full resolution) with self-attention after every
      block, in heads of ``head_channels``; ``mid_attention`` adds it between the two middle blocks.
    * ``cond_dim``: size of the conditioning vector (0 = unconditional); ``cond_frequencies``
      Fourier frequencies per conditioning value.
    * ``padding``: "zeros" | "circular" | "reflect" for all axes, or a list with one mode per
      spatial axis (e.g. ["zeros", "circular"] for latitude x longitude).
    * ``norm_groups``: GroupNorm groups (their gcd with the width for narrow layers).
    * ``noise_features``: sinusoidal features of the noise level (default ``channels``);
      ``emb_channels``: width of the noise + conditioning embedding (default ``4 * channels``).
    * ``channels_last``: run 2-D/3-D activations channels-last. Off by default: on CPU its faster
      oneDNN convolutions no longer make up for GroupNorm, which in the plain layout runs the FiLM
      affine inside the native kernel (docs/performance.md); on CUDA it is unmeasured.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int | None = None,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        blocks_per_level: int = 2,
        attention_levels: Sequence[int] = (),
        head_channels: int = 64,
        cond_dim: int = 0,
        padding: str | Sequence[str] = "zeros",
        dropout: float = 0.0,
        norm_groups: int = 32,
        mid_attention: bool = True,
        cond_frequencies: int = 8,
        noise_features: int | None = None,
        emb_channels: int | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        channel_mult = list(channel_mult)
        _check_arguments(dims, channel_mult, attention_levels, cond_dim, dropout, in_channels=in_channels,
                         channels=channels, blocks_per_level=blocks_per_level, head_channels=head_channels)
        self.dims = dims
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.cond_dim = cond_dim
        self.padding = padding_modes(padding, dims)
        self.downsampling_factor = 2 ** (len(channel_mult) - 1)
        self.channels_last = bool(channels_last) and dims in CHANNELS_LAST
        emb_dim = emb_channels or 4 * channels

        self.noise_embedding = NoiseEmbedding(noise_features or channels, emb_dim)
        self.cond_embedding = (
            ConditionEmbedding(cond_dim, emb_dim, cond_frequencies) if cond_dim else None
        )

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(dims, cin, cout, emb_dim, self.padding, dropout, norm_groups)

        def attn(width: int, wanted: bool) -> Attention | None:
            return Attention(dims, width, head_channels, norm_groups) if wanted else None

        self.conv_in = Conv(dims, in_channels, channels, 3, padding=self.padding)
        self.encoder = nn.ModuleList()  # every entry's output is one skip connection
        skips, width = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks_per_level):
                wide = channels * mult
                self.encoder.append(Block(res(width, wide), attn(wide, level in attention_levels)))
                width = wide
                skips.append(width)
            if level < len(channel_mult) - 1:
                self.encoder.append(Downsample(dims, width, self.padding))
                skips.append(width)

        self.middle = nn.ModuleList(
            [Block(res(width, width), attn(width, mid_attention)), Block(res(width, width), None)]
        )

        self.decoder = nn.ModuleList()  # Block entries read one skip each; Upsample entries none
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks_per_level + 1):
                wide = channels * mult
                block = res(width + skips.pop(), wide)
                self.decoder.append(Block(block, attn(wide, level in attention_levels)))
                width = wide
            if level > 0:
                self.decoder.append(Upsample(dims, width, self.padding))

        self.norm_out = GroupNorm(norm_groups_for(width, norm_groups), width)
        self.conv_out = zero_init(Conv(dims, width, self.out_channels, 3, padding=self.padding))

    def forward(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        cond: torch.Tensor | None = None,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` [B, C, *spatial], ``noise_level`` [B] (or a scalar for all rows), ``cond``
        [B, cond_dim] or None (every row unconditional: the null embedding), ``drop_cond`` [B]
        bool or None (True rows use the null embedding; irrelevant when ``cond`` is None).
        Returns [B, out_channels, *spatial]."""
        noise_level = self._check_inputs(x, noise_level, cond, drop_cond)
        emb = self.noise_embedding(noise_level)
        if self.cond_embedding is not None:
            emb = emb + self.cond_embedding(cond, drop_cond, x.shape[0])
        emb = F.silu(emb)  # every FiLM projection starts with SiLU: computed once here

        spatial = x.shape[2:]
        extra = [(-n) % self.downsampling_factor for n in spatial]
        h = pad_axes(x, [(e // 2, e - e // 2) for e in extra], self.padding)
        if self.channels_last:
            h = h.contiguous(memory_format=CHANNELS_LAST[self.dims])

        h = self.conv_in(h)
        skips = [h]
        for layer in self.encoder:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.decoder:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.conv_out(F.silu(self.norm_out(h)))

        crop = tuple(slice(e // 2, e // 2 + n) for e, n in zip(extra, spatial))
        # Plain layout and the input's dtype (float32 even under bf16 autocast; house rule 1).
        return h[(slice(None), slice(None)) + crop].to(x.dtype).contiguous()

    def _check_inputs(self, x, noise_level, cond, drop_cond) -> torch.Tensor:
        name = f"UNet(dims={self.dims})"
        if not isinstance(x, torch.Tensor) or x.ndim != self.dims + 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = "reshape x to that"
            if isinstance(x, torch.Tensor) and x.ndim - 2 in AXIS_NAMES:
                hint += f", or use the {x.ndim - 2}-D backbone unet{x.ndim - 2}d"
            raise ValueError(
                f"{name} expects x shaped [B, C, {AXIS_NAMES[self.dims]}] with {self.dims} "
                f"spatial axes, got {got}; {hint}"
            )
        batch = x.shape[0]
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} was built with in_channels={self.in_channels} but x has {x.shape[1]} "
                f"channels (shape {tuple(x.shape)}); x must be [B, {self.in_channels}, ...]"
            )
        noise_level = torch.as_tensor(noise_level, device=x.device)
        if noise_level.ndim == 0:
            noise_level = noise_level.expand(batch)
        if noise_level.shape != (batch,):
            raise ValueError(
                f"{name} expects noise_level shaped [B] = [{batch}] (or a scalar), "
                f"got {tuple(noise_level.shape)}"
            )
        if cond is not None:
            if self.cond_embedding is None:
                raise ValueError(
                    f"{name} was built unconditional (cond_dim=0) but got cond; pass cond=None "
                    f"or build it with cond_dim={cond.shape[-1] if cond.ndim else 1}"
                )
            if cond.shape != (batch, self.cond_dim):
                raise ValueError(
                    f"{name} was built with cond_dim={self.cond_dim} and expects cond shaped "
                    f"[B, cond_dim] = [{batch}, {self.cond_dim}], got {tuple(cond.shape)}"
                )
            if not cond.is_floating_point():
                raise TypeError(f"cond must be a float tensor, got {cond.dtype}; use cond.float()")
        if drop_cond is not None and (drop_cond.shape != (batch,) or drop_cond.dtype != torch.bool):
            raise ValueError(
                f"drop_cond must be a bool tensor shaped [B] = [{batch}], got "
                f"{drop_cond.dtype} {tuple(drop_cond.shape)}"
            )
        return noise_level


def _builder(dims: int):
    def build(**kwargs) -> UNet:
        return UNet(dims, **kwargs)

    # Publish UNet's signature minus `dims`, so the registry checks kwargs against it.
    parameters = [p for p in inspect.signature(UNet).parameters.values() if p.name != "dims"]
    build.__signature__ = inspect.Signature(parameters, return_annotation=UNet)
    build.__name__ = build.__qualname__ = f"unet{dims}d"
    build.__doc__ = f"Build a {dims}-D :class:`UNet`; keyword arguments as ``UNet``'s but ``dims``."
    build.dims = dims  # known before building: a model/data mismatch is named before anything else
    return build


unet1d = register_backbone("unet1d")(_builder(1))
unet2d = register_backbone("unet2d")(_builder(2))
unet3d = register_backbone("unet3d")(_builder(3))


def _check_arguments(dims: int, channel_mult: list, attention_levels: Sequence[int], cond_dim: int,
                     dropout: float, **positive: int) -> None:
    """Named errors for a U-Net configuration (model.kwargs) before any layer is built."""
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
    if not channel_mult or any(int(m) != m or m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {channel_mult}")
    bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(channel_mult)]
    if bad:
        raise ValueError(f"attention_levels {bad} out of range; levels are 0..{len(channel_mult) - 1} "
                         f"(one per entry of channel_mult={channel_mult})")
    if cond_dim < 0:
        raise ValueError(f"cond_dim must be >= 0 (0 = unconditional), got {cond_dim}")
    for arg, value in positive.items():
        if value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
