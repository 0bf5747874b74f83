"""Rank-agnostic building blocks of the U-Net: convolutions with a padding mode per spatial axis,
residual blocks with FiLM conditioning, multi-head self-attention, down- and up-sampling.

Every layer works for 1-, 2- and 3-D data: the convolution is picked from a table by ``dims`` and
per-sample vectors are broadcast with :func:`append_dims`, never with a hard-coded reshape
(house rule 5 in docs/architecture.md). Boundary conditions are part of every spatial operation: a circular
axis (longitude, a periodic simulation box) is padded circularly before each convolution,
including the convolutions of the down- and up-samplers, so the whole network commutes with
shifts along that axis (by multiples of its downsampling factor). That is why up-sampling is a
nearest resize followed by a convolution and never a transposed convolution, whose implicit
zero border cannot wrap around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONVOLUTIONS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVOLVE = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
PADDING_MODES = ("zeros", "circular", "reflect")
# Memory layout that puts channels last for each rank; 1-D has none in torch.
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
# Activation dtypes whose GroupNorm statistics are kept in float32
LOW_PRECISION = (torch.bfloat16, torch.float16)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 2-D/3-D batch stored channels-last (and not also plain contiguous)."""
    dims = x.ndim - 2
    if dims not in CHANNELS_LAST or x.is_contiguous():
        return False
    return x.is_contiguous(memory_format=CHANNELS_LAST[dims])


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton axes to ``t`` until it has ``ndim`` axes (a view, no copy)."""
    if t.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor with {t.ndim} axes to {ndim} axes")
    return t[(...,) + (None,) * (ndim - t.ndim)]


def padding_modes(padding: str | Sequence[str], dims: int) -> tuple[str, ...]:
    """One padding mode per spatial axis from one mode for all axes or a list of ``dims`` modes."""
    if isinstance(padding, str):
        modes = (padding,) * dims
    elif isinstance(padding, Sequence) and all(isinstance(m, str) for m in padding):
        modes = tuple(padding)
        if len(modes) != dims:
            raise ValueError(
                f"padding has {len(modes)} modes {list(modes)} but the data has {dims} spatial "
                f"axes; give one mode for all axes or a list of {dims} modes"
            )
    else:
        raise TypeError(
            f"padding must be a mode name or a list of them, got {padding!r}; "
            f"e.g. 'zeros' or ['zeros', 'circular']"
        )
    for mode in modes:
        if mode not in PADDING_MODES:
            raise ValueError(
                f"unknown padding mode {mode!r}; use one of {', '.join(PADDING_MODES)} "
                f"(one for all axes, or a list with one per spatial axis)"
            )
    return modes


def norm_groups_for(channels: int, norm_groups: int) -> int:
    """GroupNorm groups: ``norm_groups`` if it divides ``channels``, else their gcd (narrow nets)."""
    return math.gcd(channels, norm_groups)


def pad_axes(
    x: torch.Tensor, amounts: Sequence[tuple[int, int]], modes: Sequence[str]
) -> torch.Tensor:
    """Pad each spatial axis ``i`` of ``x`` [B, C, *spatial] by ``amounts[i] = (before, after)``
    using ``modes[i]``; one ``F.pad`` per distinct mode."""
    dims = len(modes)
    for mode in dict.fromkeys(modes):  # distinct modes, in order
        pads = [(b, a) if m == mode else (0, 0) for (b, a), m in zip(amounts, modes)]
        if not any(b or a for b, a in pads):
            continue
        if mode == "reflect":
            x = _reflect_pad(x, pads)
            continue
        if mode == "circular" and any(max(b, a) > n for (b, a), n in zip(pads, x.shape[2:])):
            x = _wrap_pad(x, pads)  # F.pad wraps at most once
            continue
        if mode == "circular" and torch.compiler.is_compiling():
            x = _circular_pad_by_concatenation(x, pads)
            continue
        flat = [p for axis in reversed(range(dims)) for p in pads[axis]]  # F.pad: last axis first
        x = F.pad(x, flat, mode="constant" if mode == "zeros" else mode)
    return x


def _wrap_pad(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    # Periodic extension by any amount: position i of the padded axis reads x[(i - before) mod n].
    for axis, (before, after) in enumerate(pads):
        if before or after:
            n = x.shape[2 + axis]
            index = torch.arange(-before, n + after, device=x.device) % n
            x = x.index_select(2 + axis, index)
    return x


def _circular_pad_by_concatenation(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    # The same values as F.pad(mode="circular"), which inductor (torch 2.11, CPU) turns into slow
    # index-wrapping kernels: compiled, the 16^3 Gray-Scott net ran 3x slower than eager with it and
    # 1.2x faster with this. Eager F.pad stays, being 10-50% faster than three concatenations.
    for axis, (before, after) in enumerate(pads):
        if before or after:
            dim, n = 2 + axis, x.shape[2 + axis]
            x = torch.cat([x.narrow(dim, n - before, before), x, x.narrow(dim, 0, after)], dim=dim)
    return x


def _reflect_pad(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    # Reflection needs pad < size; a short axis is reflected repeatedly (size 1: replicated).
    dims = len(pads)
    for axis, (before, after) in enumerate(pads):
        while before or after:
            room = x.shape[2 + axis] - 1
            step_b, step_a = (min(before, room), min(after, room)) if room else (before, after)
            flat = [0, 0] * dims
            flat[2 * (dims - 1 - axis)] = step_b
            flat[2 * (dims - 1 - axis) + 1] = step_a
            x = F.pad(x, flat, mode="reflect" if room else "replicate")
            before, after = before - step_b, after - step_a
    return x


def group_norm(
    x: torch.Tensor,
    groups: int,
    gain: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """GroupNorm (Wu & He 2018) followed by ``* gain + bias``, where gain and bias are per channel
    [C] or per sample and channel [B, C] (FiLM folded in). Statistics are computed in float32; the
    output keeps the normalised tensor's dtype (bf16 stays bf16 under CPU autocast, CUDA autocast
    runs GroupNorm in float32). Channels-last CPU tensors take a backward of our own (see
    :class:`_ChannelsLastGroupNorm`); everything else the native one."""
    if x.device.type == "cpu" and is_channels_last(x):
        return _ChannelsLastGroupNorm.apply(x, groups, gain, bias, eps)
    per_channel = gain is None or gain.ndim == 1
    if per_channel and (bias is None or bias.ndim == 1):
        return F.group_norm(x, groups, gain, bias, eps)
    if x.is_contiguous():
        # Per-sample affine in the native kernel's own pass: viewed as one sample of B*C channels in
        # B*groups groups, every group keeps its elements, and the [B, C] gain and bias become
        # per-channel parameters; their gradients come back per sample and channel.
        batch, channels = x.shape[:2]
        gain, bias = (None if t is None else t.expand(batch, channels).reshape(-1) for t in (gain, bias))
        # (torch.group_norm: F.group_norm's size check would count the view as a batch of one)
        y = torch.group_norm(x.view(1, batch * channels, *x.shape[2:]), batch * groups, gain, bias, eps)
        return y.view(x.shape)
    y = F.group_norm(x, groups, None, None, eps)
    return torch.addcmul(_affine_term(bias, 0.0, y), y, _affine_term(gain, 1.0, y))


def _affine_term(t: torch.Tensor | None, default: float, x: torch.Tensor) -> torch.Tensor:
    """Gain or bias ([C], [B, C] or None) shaped to broadcast against ``x`` [B, C, *spatial], in
    ``x``'s dtype (a bf16 activation must not be promoted to float32 by its [B, C] coefficients)."""
    if t is None:
        return x.new_full((), default)
    return append_dims(t if t.ndim == 2 else t[None], x.ndim).to(x.dtype)


class _ChannelsLastGroupNorm(torch.autograd.Function):
    """GroupNorm plus per-(sample, channel) affine, for channels-last CPU tensors.

    The forward is the native kernel, fast in this layout. The backward is ours: torch's
    channels-last CPU GroupNorm backward (2.11) is several times slower than this one (forward +
    backward measured 5.3 vs 1.5 ms at 8x128x32x32, 19 vs 2.7 ms at 2x32x32^3 on 2 cores; in bf16
    10.6 vs 2.3 ms at 8x128x32x32) and would cancel what channels-last convolutions gain. Per
    group of ``n`` elements with mean ``mu`` and ``r = 1/sqrt(var + eps)``, ``x_hat = (x - mu) r``
    and ``y = g x_hat + b``; the GroupNorm gradient (Wu & He 2018, as for batch norm, Ioffe &
    Szegedy 2015) is
        dx = r [g dy - mean(g dy) - x_hat mean(g dy x_hat)]        (means over the group)
           = (r g) dy + k (x - mu) - r t1 / n,
    with per-channel sums over space ``s1 = sum dy``, ``s2 = sum dy (x - mu)``, their group sums
    ``t1 = sum_c g s1``, ``t2 = sum_c g s2``, and ``k = -r^3 t2 / n``. Also ``dg = r s2`` and
    ``db = s1``. Two reductions and a few in-place passes, all fast in this layout. Working with
    ``x - mu`` rather than ``x`` avoids cancellation when the mean is large against the spread;
    for bf16 input the statistics, the sums and ``dx`` are float32 and only results are rounded.
    """

    @staticmethod
    def forward(ctx, x, groups, gain, bias, eps):
        batch, channels = x.shape[:2]
        per_channel = all(t is None or t.ndim == 1 for t in (gain, bias))
        weight = gain if per_channel else None
        shift = bias if per_channel else None
        if x.dtype in LOW_PRECISION and weight is None:
            # float32 affine parameters make the native kernel keep float32 statistics
            weight = torch.ones(channels, device=x.device)
        y, mean, rstd = torch.native_group_norm(  # mean, rstd: [B, G]
            x, weight, shift, batch, channels, math.prod(x.shape[2:]), groups, eps,
        )
        ctx.save_for_backward(x, gain, mean, rstd)
        ctx.groups, ctx.has_bias = groups, bias is not None
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        if per_channel:  # the native kernel applied the affine in the same pass
            return y
        return torch.addcmul(_affine_term(bias, 0.0, y), y, _affine_term(gain, 1.0, y))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, gain, mean, rstd = ctx.saved_tensors
        batch, channels = x.shape[:2]
        groups = ctx.groups
        per_group = channels // groups
        space = tuple(range(2, x.ndim))
        n = per_group * math.prod(x.shape[2:])
        wide = torch.float32 if x.dtype in LOW_PRECISION else x.dtype  # float64 stays float64
        mean, rstd = mean.to(wide), rstd.to(wide)

        def to_channels(t):  # [B, G] -> [B, C], broadcastable against x
            return append_dims(t.repeat_interleave(per_group, dim=1), x.ndim)

        centred = x.to(wide) - to_channels(mean)  # becomes dx in place below
        s1 = dy.sum(space, dtype=wide)  # [B, C]
        s2 = (dy * centred).sum(space)  # [B, C], centred: no cancellation against mu * s1
        g = mean.new_ones(channels) if gain is None else gain.to(wide)
        g = g.expand(batch, channels)
        t1 = (g * s1).view(batch, groups, per_group).sum(-1)
        t2 = (g * s2).view(batch, groups, per_group).sum(-1)
        k = -rstd.pow(3) * t2 / n  # coefficient of x - mu
        dx = centred.mul_(to_channels(k)).sub_(to_channels(rstd * t1 / n))
        dx = dx.addcmul_(dy, to_channels(rstd) * append_dims(g, x.ndim)).to(x.dtype)
        dgain = dbias = None
        if gain is not None and ctx.needs_input_grad[2]:
            dgain = rstd.repeat_interleave(per_group, dim=1) * s2
            dgain = (dgain.sum(0) if gain.ndim == 1 else dgain).to(gain.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            dbias = s1.sum(0) if len(ctx.bias_shape) == 1 else s1
            dbias = dbias.to(ctx.bias_dtype)
        return dx, None, dgain, dbias, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) routed through :func:`group_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class Conv(nn.Module):
    """N-d convolution, 'same' size for odd kernels (divided by ``stride``), padded per axis.

    Zero-padded axes use the convolution's own padding (no copy); circular and reflect axes are
    padded explicitly first, so mixed modes such as latitude x longitude = zeros x circular work.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: Sequence[str] = (),
    ):
        super().__init__()
        modes = tuple(padding) or ("zeros",) * dims
        half = kernel_size // 2
        self.modes = modes
        self.explicit = [(0, 0) if m == "zeros" else (half, half) for m in modes]
        self.has_explicit = half > 0 and any(m != "zeros" for m in modes)
        native = tuple(half if m == "zeros" else 0 for m in modes)
        self.conv = CONVOLUTIONS[dims](
            in_channels, out_channels, kernel_size, stride, padding=native
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_explicit:
            x = pad_axes(x, self.explicit, self.modes)
        conv = self.conv
        if is_channels_last(x):
            # Parameters stay plainly contiguous (checkpoints, DDP buckets, EMA copies); one
            # explicit re-layout per call is cheaper than the several oneDNN would otherwise do.
            # Under autocast the cast to the compute dtype is done in the same copy.
            layout = CHANNELS_LAST[x.ndim - 2]
            if torch.is_autocast_enabled(x.device.type):
                dtype = torch.get_autocast_dtype(x.device.type)
                weight = torch.empty_like(conv.weight, dtype=dtype, memory_format=layout)
                weight = weight.copy_(conv.weight)
            else:
                weight = conv.weight.contiguous(memory_format=layout)
            return CONVOLVE[x.ndim - 2](x, weight, conv.bias, conv.stride, conv.padding)
        return conv(x)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches then start as identities (Ho et al. 2020)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM from the embedding, GroupNorm-SiLU-dropout-conv, plus skip.

    FiLM (Perez et al. 2018) scales and shifts the normalised features per sample and channel:
    ``GN(h) * (1 + scale) + shift``. The second GroupNorm's affine is folded into the same
    per-sample coefficients, ``(n*g + b)(1 + s) + t = n*[g(1 + s)] + [b(1 + s) + t]``, which
    :func:`group_norm` applies inside the normalisation pass itself.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        padding: Sequence[str],
        dropout: float = 0.0,
        norm_groups: int = 32,
    ):
        super().__init__()
        self.norm1 = GroupNorm(norm_groups_for(in_channels, norm_groups), in_channels)
        self.conv1 = Conv(dims, in_channels, out_channels, 3, padding=padding)
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = GroupNorm(norm_groups_for(out_channels, norm_groups), out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = zero_init(Conv(dims, out_channels, out_channels, 3, padding=padding))
        self.skip = None  # identity when the width is kept, else a 1x1 convolution
        if in_channels != out_channels:
            self.skip = Conv(dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C_in, *spatial]; ``emb`` [B, emb_dim], already passed through SiLU."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).chunk(2, dim=1)
        norm = self.norm2
        gain = norm.weight * (1 + scale)
        bias = torch.addcmul(shift, norm.bias, 1 + scale)
        h = group_norm(h, norm.num_groups, gain, bias, norm.eps)
        h = self.conv2(self.dropout(F.silu(h)))
        skip = x if self.skip is None else self.skip(x)
        return skip + h


class Attention(nn.Module):
    """Multi-head self-attention over all spatial positions (flattened), with a residual.

    ``softmax(Q K^T / sqrt(d)) V`` (Vaswani et al. 2017) through the fused
    ``scaled_dot_product_attention``; position ``n`` of the flattened grid is one token. The
    projections are 1x1 convolutions, as in DDPM (Ho et al. 2020): on channels-last input they
    read the tokens in place and run on oneDNN, measured 2x faster on CPU than ``nn.Linear``.
    """

    def __init__(self, dims: int, channels: int, head_channels: int = 64, norm_groups: int = 32):
        super().__init__()
        if channels > head_channels and channels % head_channels:
            raise ValueError(
                f"attention over {channels} channels cannot be split into heads of "
                f"head_channels={head_channels}; choose head_channels dividing {channels}"
            )
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNorm(norm_groups_for(channels, norm_groups), channels)
        self.qkv = Conv(dims, channels, 3 * channels, kernel_size=1)
        self.out = zero_init(Conv(dims, channels, channels, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = x.shape
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)  # [B, N, 3C]; channels-last: a view
        qkv = qkv.contiguous().view(batch, -1, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, d], d contiguous
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(batch, -1, channels)  # [B, N, C]
        h = h.transpose(1, 2).reshape(batch, channels, *spatial)  # channels-last strides
        if not is_channels_last(x):
            h = h.contiguous()
        return x + self.out(h)


class Downsample(nn.Module):
    """Halve every spatial axis: stride-2 3-wide convolution after per-axis padding."""

    def __init__(self, dims: int, channels: int, padding: Sequence[str]):
        super().__init__()
        self.conv = Conv(dims, channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial axis: nearest resize, then a per-axis padded 3-wide convolution."""

    def __init__(self, dims: int, channels: int, padding: Sequence[str]):
        super().__init__()
        self.conv = Conv(dims, channels, channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
