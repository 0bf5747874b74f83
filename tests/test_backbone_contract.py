"""The backbone contract (:func:`sciddpm.testing.check_backbone`) for every registered backbone,
plugins included, and proof that the check has teeth: small backbones that each break one promise
must fail it, naming that promise."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sciddpm.nn import BACKBONES
from sciddpm.testing import check_backbone

# Small U-Nets (downsampling factor 4) with attention, so the whole contract runs in seconds.
SMALL_UNET = dict(channels=8, channel_mult=[1, 2, 2], blocks_per_level=1, attention_levels=[1],
                  head_channels=8)
OWN_SETTINGS = {"unet1d": SMALL_UNET, "unet2d": SMALL_UNET, "unet3d": SMALL_UNET}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_registered_backbone_keeps_the_contract(name):
    # Plugins are checked with their own defaults: only the contract arguments are passed.
    if name in OWN_SETTINGS:
        check_backbone(name, out_channels=3, **OWN_SETTINGS[name])
    else:
        check_backbone(name)


def test_unconditional_unet_with_reflect_and_circular_axes_keeps_the_contract():
    check_backbone("unet2d", cond_dim=0, padding=["reflect", "circular"], shape=(11, 14), **SMALL_UNET)


# --- the check has teeth ---------------------------------------------------------------------------


class PointwiseNet(nn.Module):
    """A correct 1-D backbone: two convolutions, the noise level and condition added in between,
    a learnt null embedding for rows without a condition."""

    dims = 1

    def __init__(self, in_channels, out_channels=None, cond_dim=0, padding=("zeros",), width=8):
        super().__init__()
        self.in_channels, self.cond_dim = in_channels, cond_dim
        self.out_channels = out_channels or in_channels
        self.conv_in = nn.Conv1d(in_channels, width, 3, padding=1, padding_mode=padding[0])
        self.conv_out = nn.Conv1d(width, self.out_channels, 3, padding=1, padding_mode=padding[0])
        self.noise = nn.Linear(1, width)
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        self.null = nn.Parameter(torch.zeros(width)) if cond_dim else None

    def embedding(self, noise_level, cond, drop_cond):
        emb = self.noise(noise_level[:, None].to(self.noise.weight.dtype))
        if self.cond is None:
            return emb
        if cond is None:
            return emb + self.null
        c = self.cond(cond)
        return emb + (c if drop_cond is None else torch.where(drop_cond[:, None], self.null, c))

    def forward(self, x, noise_level, cond=None, drop_cond=None):
        h = torch.tanh(self.conv_in(x) + self.embedding(noise_level, cond, drop_cond)[:, :, None])
        return self.conv_out(h)


class MixesTheBatch(PointwiseNet):
    def forward(self, x, noise_level, cond=None, drop_cond=None):
        return super().forward(x - x.mean(0), noise_level, cond, drop_cond)


class BatchNormed(PointwiseNet):
    def __init__(self, in_channels, **kwargs):
        super().__init__(in_channels, **kwargs)
        self.norm = nn.BatchNorm1d(in_channels)

    def forward(self, x, noise_level, cond=None, drop_cond=None):
        return super().forward(self.norm(x), noise_level, cond, drop_cond)


class IgnoresDropCond(PointwiseNet):
    def forward(self, x, noise_level, cond=None, drop_cond=None):
        return super().forward(x, noise_level, cond)


class IgnoresCond(PointwiseNet):
    def forward(self, x, noise_level, cond=None, drop_cond=None):
        return super().forward(x, noise_level)


class HasADeadLayer(PointwiseNet):
    def __init__(self, in_channels, **kwargs):
        super().__init__(in_channels, **kwargs)
        self.unused = nn.Linear(2, 2)


class NotPeriodic(PointwiseNet):  # accepts "circular" but pads with zeros
    def __init__(self, in_channels, padding=("zeros",), **kwargs):
        super().__init__(in_channels, padding=("zeros",), **kwargs)


class CropsOddGrids(PointwiseNet):  # e.g. a stride-2 down/up path without padding inside
    def forward(self, x, noise_level, cond=None, drop_cond=None):
        return super().forward(x, noise_level, cond, drop_cond)[..., : x.shape[-1] // 2 * 2]


class MisreportsChannels(PointwiseNet):
    def __init__(self, in_channels, out_channels=None, **kwargs):
        super().__init__(in_channels, out_channels=out_channels, **kwargs)
        self.out_channels = in_channels


@pytest.fixture
def register(monkeypatch):
    """Register backbones for one test only: the registry's table is restored afterwards."""
    BACKBONES.names()  # load plugins first, so they are not lost with the copy
    monkeypatch.setattr(BACKBONES, "_builders", dict(BACKBONES._builders))
    return lambda name, builder: BACKBONES.register(name)(builder)


def test_a_correct_small_backbone_passes(register):
    register("pointwise_ok", PointwiseNet)
    check_backbone("pointwise_ok", out_channels=1, width=4)
    check_backbone("pointwise_ok", cond_dim=0, padding=["reflect"], shape=(17,))


BROKEN = [  # each breaks one promise; the message must name it
    (MixesTheBatch, r"row 0 run alone differs .* \(eval mode\): a row's output must not depend"),
    (BatchNormed, r"row 0 run alone differs .* \(train mode\).*no BatchNorm"),
    (IgnoresDropCond, r"rows with drop_cond=True .* must give exactly the output without cond"),
    (IgnoresCond, r"the condition has no effect"),
    (HasADeadLayer, r"no gradient reaches \['unused.weight', 'unused.bias'\]"),
    (NotPeriodic, r"axis 0 is circular but rolling the input by 1 .* does not roll the output"),
    (CropsOddGrids, r"returned shape \(3, 2, 12\) for x of shape \(3, 2, 13\)"),
    (MisreportsChannels, r"net.out_channels is 2 but it was built with out_channels=3"),
]


@pytest.mark.parametrize("broken, promise", BROKEN, ids=[broken.__name__ for broken, _ in BROKEN])
def test_broken_backbones_fail_naming_the_promise(register, broken, promise):
    register("broken", broken)
    with pytest.raises(AssertionError, match=promise):
        check_backbone("broken", out_channels=3 if broken is MisreportsChannels else None)
    assert "broken" in BACKBONES.names()


def test_registrations_do_not_leak_between_tests():
    assert not {"broken", "pointwise_ok"} & set(BACKBONES.names())


def test_dims_come_from_the_builder_or_the_caller_and_must_agree_with_the_net(register):
    with pytest.raises(ValueError, match=r"declares dims=1; pass dims \(or shape\) that agree"):
        check_backbone("unet1d", dims=2)
    register("undeclared", lambda **kwargs: PointwiseNet(**kwargs))  # only the net says dims=1
    with pytest.raises(ValueError, match=r"does not say how many spatial dims it has: give its class a `dims` attribute"):
        check_backbone("undeclared")
    check_backbone("undeclared", shape=(9,))  # the caller says what the data's spec would
    with pytest.raises(AssertionError, match=r"net.dims is 1 but it was built with dims=2"):
        check_backbone("undeclared", dims=2)
