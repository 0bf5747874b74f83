"""Tests of the U-Net in sciddpm.nn: shapes on odd grids, circular equivariance, conditioning and
the null embedding, gradients, the maths of the fused layers, input errors, and user registration.
They build UNet (or the unet1d/2d/3d names) directly, so an installed plugin backbone cannot break
them; the generic contract every registered name must keep is in test_backbone_contract.py. Tiny
networks only; the whole file runs in well under a minute."""

from __future__ import annotations

import importlib
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from sciddpm.nn import BACKBONES, UNet, build_backbone, register_backbone
from sciddpm.nn.embeddings import NoiseEmbedding
from sciddpm.nn.layers import Attention, Conv, ResBlock, append_dims, group_norm
from sciddpm.registry import UnknownNameError

# Odd grids from the spec, one per rank: audio clip, 1-degree-ish lat x lon, a simulation box.
ODD_SHAPES = {1: (1000,), 2: (121, 240), 3: (20, 24, 28)}
MIXED_PADDING = {1: "circular", 2: ["zeros", "circular"], 3: "reflect"}
TINY = dict(channels=8, channel_mult=[1, 2, 2, 2], blocks_per_level=1, head_channels=8)


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers (residual/attention outputs, conv_out, null embedding)
    random weights, else outputs and most gradients are trivially zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return net


def tiny(dims: int, **kwargs) -> UNet:
    torch.manual_seed(0)
    return randomise(UNet(dims, **{**TINY, "in_channels": 2, **kwargs}).double())


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_odd_grid_keeps_its_shape(dims):
    # UNet itself, not the registry's names: an installed plugin backbone takes other arguments
    # (every registered name gets the generic contract in test_backbone_contract.py).
    net = UNet(dims, in_channels=2, out_channels=3, cond_dim=2, attention_levels=[3],
               padding=MIXED_PADDING[dims], **TINY)
    x = torch.randn(2, 2, *ODD_SHAPES[dims])
    with torch.no_grad():
        y = net(x, torch.tensor([0.5, -2.0]), cond=torch.randn(2, 2))
    assert y.shape == (2, 3, *ODD_SHAPES[dims])
    assert (net.dims, net.in_channels, net.out_channels, net.cond_dim) == (dims, 2, 3, 2)
    assert net.downsampling_factor == 8


@pytest.mark.parametrize("length", [1, 3, 13, 64])
@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect"])
def test_1d_any_length_any_mode(length, mode):
    net = UNet(1, in_channels=1, padding=mode, **TINY)  # factor 8: pads 1 -> 8, 13 -> 16
    with torch.no_grad():
        y = net(torch.randn(3, 1, length), torch.zeros(3))
    assert y.shape == (3, 1, length)
    assert torch.isfinite(y).all()


def test_fresh_network_outputs_zero_and_residual_blocks_are_identities():
    # Zero-initialised output conv and residual last convs (Ho et al. 2020): a new net outputs 0.
    net = UNet(2, in_channels=3, **TINY)
    assert torch.equal(net(torch.randn(2, 3, 16, 16), torch.ones(2)), torch.zeros(2, 3, 16, 16))
    block = ResBlock(2, 8, 8, emb_dim=16, padding=("zeros", "zeros"), norm_groups=4)
    x = torch.randn(2, 8, 5, 7)
    assert torch.equal(block(x, torch.randn(2, 16)), x)


def test_bf16_autocast_returns_the_input_dtype():
    # Only the network runs in bf16 (house rule 1): what leaves it is float32 again.
    torch.manual_seed(0)
    net = UNet(2, in_channels=2, cond_dim=1, attention_levels=[1], **TINY)
    x = torch.randn(2, 2, 8, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, torch.tensor([437.0, 911.0]), torch.randn(2, 1))
    assert y.dtype == torch.float32 and y.shape == x.shape and y.is_contiguous()
    y.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


# --- circular boundaries --------------------------------------------------------------------------


def roll_error(net: UNet, shape, axis: int, shift: int) -> float:
    """max |net(roll(x)) - roll(net(x))| for a shift along spatial ``axis``."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, *shape, generator=generator, dtype=torch.float64)
    cond = torch.randn(2, net.cond_dim, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.3, -1.2], dtype=torch.float64)
    with torch.no_grad():
        rolled_out = net(x, sigma, cond).roll(shift, dims=2 + axis)
        out_of_rolled = net(x.roll(shift, dims=2 + axis), sigma, cond)
    assert rolled_out.abs().max() > 1e-2  # non-trivial output
    return (rolled_out - out_of_rolled).abs().max().item()


# (dims, grid, padding, circular axes). Shifts are multiples of the downsampling factor (4).
EQUIVARIANCE_CASES = [
    (1, (32,), "circular", [0]),
    (2, (8, 16), ["zeros", "circular"], [1]),
    (3, (8, 8, 8), "circular", [0, 1, 2]),
]


@pytest.mark.parametrize("dims, shape, padding, axes", EQUIVARIANCE_CASES)
def test_circular_axes_commute_with_rolls(dims, shape, padding, axes):
    net = tiny(dims, channel_mult=[1, 2, 2], attention_levels=[1], cond_dim=2, padding=padding)
    for axis in axes:
        for shift in (4, -8):
            assert roll_error(net, shape, axis, shift) < 1e-10


@pytest.mark.parametrize("dims, shape, padding, axes", EQUIVARIANCE_CASES)
def test_roll_check_fails_with_zeros_padding(dims, shape, padding, axes):
    # The same check has teeth: zero borders break the symmetry.
    net = tiny(dims, channel_mult=[1, 2, 2], attention_levels=[1], cond_dim=2, padding="zeros")
    assert roll_error(net, shape, axes[0], 4) > 1e-3


def test_circular_pad_inside_keeps_longitude_periodic_for_odd_latitudes():
    # 2-D lat x lon with a latitude count (13) not divisible by the factor: the latitude axis is
    # padded inside, the longitude axis is not touched, so longitude rolls still commute.
    net = tiny(2, channel_mult=[1, 2, 2], cond_dim=2, padding=["zeros", "circular"])
    assert roll_error(net, (13, 16), axis=1, shift=4) < 1e-10


# --- layer maths ---------------------------------------------------------------------------------


def test_mixed_padding_conv_matches_explicit_wraparound():
    torch.manual_seed(0)
    conv = Conv(2, 3, 4, kernel_size=3, padding=("zeros", "circular")).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    wrapped = torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)  # longitude wraps around
    padded = F.pad(wrapped, (0, 0, 1, 1))  # latitude gets zeros
    expected = F.conv2d(padded, conv.conv.weight, conv.conv.bias)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-12)
    reflect = Conv(1, 3, 4, 3, padding=("reflect",)).double()
    x1 = torch.randn(2, 3, 9, dtype=torch.float64)
    mirrored = torch.cat([x1[..., 1:2], x1, x1[..., -2:-1]], -1)  # reflect: edge not repeated
    expected = F.conv1d(mirrored, reflect.conv.weight, reflect.conv.bias)
    torch.testing.assert_close(reflect(x1), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("amounts, modes", [
    ([(1, 1), (1, 1), (1, 1)], ("circular",) * 3),
    ([(1, 1), (2, 1), (0, 3)], ("zeros", "circular", "circular")),
    ([(1, 2), (1, 1)], ("circular", "reflect")),
])
def test_compiled_padding_equals_eager(amounts, modes):
    # Under torch.compile circular axes are padded by concatenation instead of F.pad (inductor's
    # F.pad circular is slow): the values must not change.
    from sciddpm.nn.layers import pad_axes

    x = torch.randn(2, 3, *[5, 6, 7][:len(modes)])
    compiled = torch.compile(pad_axes, dynamic=False, fullgraph=True)
    eager = pad_axes(x, amounts, modes)
    assert eager.shape[2:] == tuple(n + b + a for n, (b, a) in zip(x.shape[2:], amounts))
    assert torch.equal(compiled(x, amounts, modes), eager)


def test_resblock_film_equals_unfused_reference():
    torch.manual_seed(0)
    block = ResBlock(2, 8, 16, emb_dim=12, padding=("zeros", "zeros"), norm_groups=4)
    block = randomise(block.double())
    x, emb = torch.randn(3, 8, 5, 6, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    h = block.conv1(F.silu(block.norm1(x)))
    scale, shift = block.film(emb).chunk(2, dim=1)
    h = block.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]  # FiLM
    expected = block.skip(x) + block.conv2(F.silu(h))
    torch.testing.assert_close(block(x, emb), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gain_shape", [None, "C", "BC"])
@pytest.mark.parametrize(
    "layout", [torch.channels_last, torch.channels_last_3d, torch.contiguous_format]
)
def test_group_norm_with_film_matches_autograd_of_the_formula(layout, gain_shape):
    # Channels-last CPU tensors take our own backward: check values and gradients numerically.
    shape = (2, 6, 3, 5, 4) if layout is torch.channels_last_3d else (2, 6, 5, 4)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    affine = {None: None, "C": (6,), "BC": (2, 6)}[gain_shape]
    gain = None if affine is None else torch.randn(affine, dtype=torch.float64, requires_grad=True)
    bias = None if affine is None else torch.randn(affine, dtype=torch.float64, requires_grad=True)
    inputs = [t for t in (x, gain, bias) if t is not None]

    def norm(x, *affine):
        return group_norm(x, 3, *(affine or (None, None)), eps=1e-5)

    assert torch.autograd.gradcheck(norm, inputs)
    expected = F.group_norm(x.contiguous(), 3, eps=1e-5)
    if gain is not None:
        g, b = (t if t.ndim == 2 else t[None] for t in (gain, bias))
        expected = expected * append_dims(g, x.ndim) + append_dims(b, x.ndim)
    torch.testing.assert_close(norm(*inputs), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gain_shape", [None, "BC"])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_bf16_group_norm_keeps_float32_statistics(layout, gain_shape):
    # bf16 in, bf16 out, but nothing in between rounded to bf16: with a mean of 20 and a spread of
    # 1, statistics or a backward computed in bf16 would be off by several percent (k x + l cancels).
    torch.manual_seed(0)
    x = (20 + torch.randn(4, 8, 6, 5)).bfloat16().contiguous(memory_format=layout).requires_grad_()
    gain = None if gain_shape is None else (1 + 0.1 * torch.randn(4, 8)).requires_grad_()
    bias = None if gain_shape is None else torch.randn(4, 8).requires_grad_()
    dy = torch.randn(4, 8, 6, 5).bfloat16().contiguous(memory_format=layout)
    y = group_norm(x, 4, gain, bias)
    y.backward(dy)
    assert y.dtype == x.grad.dtype == torch.bfloat16

    x64 = x.detach().double().requires_grad_()
    expected = F.group_norm(x64, 4)
    affine = [t.detach().double().requires_grad_() for t in (gain, bias) if t is not None]
    if affine:
        expected = expected * affine[0][..., None, None] + affine[1][..., None, None]
    expected.backward(dy.double())

    def relative(a, b):
        return float((a.double() - b).norm() / b.norm())

    assert relative(y.detach(), expected.detach()) < 1e-2
    assert relative(x.grad, x64.grad) < 1e-2
    if affine:
        assert relative(gain.grad, affine[0].grad) < 1e-2
        assert relative(bias.grad, affine[1].grad) < 1e-2


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_and_plain_layouts_agree(dims):
    # The two layouts run different kernels (and our GroupNorm backward): same numbers.
    nets = [tiny(dims, channel_mult=[1, 2], attention_levels=[1], cond_dim=2, channels_last=cl)
            for cl in (True, False)]
    x = torch.randn(2, 2, *(6,) * dims, dtype=torch.float64)
    cond = torch.randn(2, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 2.0], dtype=torch.float64)
    outs = []
    for net in nets:
        out = net(x, sigma, cond)
        out.square().sum().backward()
        outs.append((out, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=1e-12)
    for g_last, g_plain in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g_last, g_plain, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("spatial", [(10,), (3, 5), (2, 3, 4)])
def test_attention_equals_explicit_softmax_formula(spatial):
    torch.manual_seed(0)
    attention = randomise(Attention(len(spatial), 16, head_channels=4, norm_groups=4).double())
    x = torch.randn(2, 16, *spatial, dtype=torch.float64)
    tokens = attention.norm(x).flatten(2).transpose(1, 2)  # [B, N, C]
    qkv_layer, out_layer = attention.qkv.conv, attention.out.conv  # 1x1 convolutions
    q, k, v = F.linear(tokens, qkv_layer.weight.flatten(1), qkv_layer.bias).chunk(3, dim=-1)
    heads = []
    for h in range(4):  # head h owns channels 4h .. 4h+3 of q, k and v
        sl = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., sl])
    mixed = F.linear(torch.cat(heads, -1), out_layer.weight.flatten(1), out_layer.bias)
    expected = x + mixed.transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(attention(x), expected, rtol=0, atol=1e-12)


def test_noise_features_resolve_edm_and_ddpm_ranges():
    embedding = NoiseEmbedding(64, 32)
    edm = torch.linspace(-3, 2, 501, dtype=torch.float64)  # c_noise = ln(sigma)/4, steps of 0.01
    ddpm = torch.arange(1000, dtype=torch.float64)  # integer timesteps
    for grid, resolution in ((edm, 0.01), (ddpm, 1)):
        features = embedding.features(grid)
        assert torch.isfinite(features).all()
        step = (features[1:] - features[:-1]).norm(dim=1)  # neighbours distinguishable
        assert step.min() > 0.05, f"noise embedding blind at resolution {resolution}"
        # far-apart values are far apart (no aliasing collapse to the same vector)
        distances = torch.cdist(features[::10], features[::10])
        assert (distances + 10 * torch.eye(len(distances))).min() > 0.3


# --- conditioning --------------------------------------------------------------------------------


def test_conditioning_null_embedding_and_drop():
    net = tiny(2, channel_mult=[1, 2], cond_dim=3)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    sigma = torch.full((4,), 0.7, dtype=torch.float64)
    cond = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        y = net(x, sigma, cond)
        y_other = net(x, sigma, cond + 0.5)
        y_none = net(x, sigma)
        y_all_dropped = net(x, sigma, cond, drop_cond=torch.ones(4, dtype=torch.bool))
        drop = torch.tensor([True, False, True, False])
        y_some = net(x, sigma, cond, drop_cond=drop)
    assert (y - y_other).abs().max() > 1e-3  # conditioning changes the output
    assert (y - y_none).abs().max() > 1e-3
    torch.testing.assert_close(y_none, y_all_dropped, rtol=0, atol=0)
    torch.testing.assert_close(y_some[drop], y_none[drop], rtol=0, atol=1e-12)
    torch.testing.assert_close(y_some[~drop], y[~drop], rtol=0, atol=1e-12)


def test_noise_level_changes_output_and_accepts_a_scalar():
    net = tiny(1, channel_mult=[1, 2])
    x = torch.randn(2, 2, 16, dtype=torch.float64)
    with torch.no_grad():
        a, b = net(x, torch.full((2,), -1.0)), net(x, torch.full((2,), -0.9))
        torch.testing.assert_close(net(x, torch.tensor(-1.0)), a, rtol=0, atol=0)
        assert (net(x, torch.tensor([3, 700])) - net(x, torch.tensor([4, 701]))).abs().max() > 1e-4
    assert (a - b).abs().max() > 1e-4


def test_every_parameter_gets_a_gradient():
    net = tiny(2, channel_mult=[1, 2], attention_levels=[1], cond_dim=2, dropout=0.1)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    drop = torch.tensor([True, False, False, True])  # some rows reach the null embedding
    out = net(x, torch.rand(4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64), drop)
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    names = {n for n, _ in net.named_parameters()}
    assert "cond_embedding.null" in names and any("attention.qkv" in n for n in names)


# --- errors --------------------------------------------------------------------------------------


def test_wrong_rank_says_what_was_expected_and_what_came():
    net = UNet(2, in_channels=3, **TINY)
    expected = r"expects x shaped \[B, C, H, W\] with 2 spatial axes, got \(2, 3, 16\)"
    with pytest.raises(ValueError, match=expected + r".*use the 1-D backbone unet1d"):
        net(torch.randn(2, 3, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"got \(2, 3, 4, 4, 4, 4\); reshape x to that$"):
        net(torch.randn(2, 3, 4, 4, 4, 4), torch.zeros(2))


def test_input_errors_name_the_problem():
    net = UNet(1, in_channels=3, cond_dim=2, **TINY)
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match=r"in_channels=3 but x has 4 channels"):
        net(torch.randn(2, 4, 16), torch.zeros(2))
    expected = r"cond_dim=2 and expects cond shaped \[B, cond_dim\] = \[2, 2\], got \(2, 5\)"
    with pytest.raises(ValueError, match=expected):
        net(x, torch.zeros(2), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"noise_level shaped \[B\] = \[2\]"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"drop_cond must be a bool tensor"):
        net(x, torch.zeros(2), torch.zeros(2, 2), drop_cond=torch.zeros(2))
    with pytest.raises(ValueError, match=r"built unconditional \(cond_dim=0\)"):
        UNet(1, in_channels=3, **TINY)(x, torch.zeros(2), torch.zeros(2, 2))
    assert net(x, torch.zeros(2)).shape == x.shape  # cond missing -> null embedding, no error


def test_build_errors_list_the_choices():
    known = r"known backbones: .*\bunet2d\b.*Did you mean 'unet2d'"  # installed plugins are listed too
    with pytest.raises(UnknownNameError, match=known):
        build_backbone("unet_2d", in_channels=1)
    modes = r"unknown padding mode 'periodic'; use one of zeros, circular, reflect"
    with pytest.raises(ValueError, match=modes):
        build_backbone("unet2d", in_channels=1, padding=["zeros", "periodic"])
    with pytest.raises(ValueError, match=r"padding has 3 modes .* 2 spatial axes"):
        build_backbone("unet2d", in_channels=1, padding=["zeros"] * 3)
    with pytest.raises(TypeError, match=r"argument\(s\) 'chanels' \(did you mean 'channels'\?\)"):
        build_backbone("unet2d", in_channels=1, chanels=32)
    with pytest.raises(TypeError, match=r"needs argument\(s\): in_channels"):
        build_backbone("unet1d")
    with pytest.raises(ValueError, match=r"attention_levels \[4\] out of range; levels are 0..3"):
        build_backbone("unet3d", in_channels=1, attention_levels=[4])
    with pytest.raises(ValueError, match=r"head_channels=24"):
        build_backbone("unet1d", in_channels=1, channels=32, channel_mult=[1, 2],
                       attention_levels=[1], head_channels=24)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        build_backbone("unet1d", in_channels=1, dropout=1.5)
    with pytest.raises(ValueError, match=r"noise_features must be even"):
        build_backbone("unet1d", in_channels=1, noise_features=7)


def test_kwargs_survive_a_json_round_trip():
    # Run directories store {name, kwargs} as JSON/YAML: lists, not tuples, must build the same net.
    kwargs = dict(in_channels=2, channels=8, channel_mult=(1, 2), attention_levels=(1,),
                  cond_dim=2, padding=("zeros", "circular"), head_channels=8)
    a = randomise(build_backbone("unet2d", **kwargs))
    b = build_backbone("unet2d", **json.loads(json.dumps(kwargs)))
    b.load_state_dict(a.state_dict())  # strict: same keys and shapes
    x, sigma, cond = torch.randn(2, 2, 8, 8), torch.rand(2), torch.randn(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(a(x, sigma, cond), b(x, sigma, cond), rtol=0, atol=0)


# --- extension -----------------------------------------------------------------------------------


def test_user_backbone_from_own_module(tmp_path, monkeypatch):
    BACKBONES.names()  # plugins load first: loaded into the copy below, they would be lost after
    monkeypatch.setattr(BACKBONES, "_builders", dict(BACKBONES._builders))  # undone after the test
    (tmp_path / "my_lab_nets.py").write_text(
        "import torch\n"
        "from sciddpm.nn import register_backbone\n\n"
        "@register_backbone('pointwise_mlp')\n"
        "class PointwiseMLP(torch.nn.Module):\n"
        "    def __init__(self, in_channels, hidden=16):\n"
        "        super().__init__()\n"
        "        self.dims, self.in_channels, self.out_channels = 1, in_channels, in_channels\n"
        "        self.cond_dim = 0\n"
        "        self.net = torch.nn.Sequential(\n"
        "            torch.nn.Conv1d(in_channels + 1, hidden, 1), torch.nn.SiLU(),\n"
        "            torch.nn.Conv1d(hidden, in_channels, 1))\n\n"
        "    def forward(self, x, noise_level, cond=None, drop_cond=None):\n"
        "        level = noise_level[:, None, None].expand(-1, 1, x.shape[-1])\n"
        "        return self.net(torch.cat([x, level], dim=1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_lab_nets")
    monkeypatch.delitem(sys.modules, "my_lab_nets")
    assert "pointwise_mlp" in BACKBONES.names()
    net = build_backbone("pointwise_mlp", in_channels=2, hidden=4)
    assert isinstance(net, module.PointwiseMLP)
    assert net(torch.randn(3, 2, 10), torch.rand(3)).shape == (3, 2, 10)
    with pytest.raises(TypeError, match=r"'hiden' \(did you mean 'hidden'\?\)"):
        build_backbone("pointwise_mlp", in_channels=2, hiden=4)
    with pytest.raises(ValueError, match=r"already registered"):
        register_backbone("unet2d")(module.PointwiseMLP)

