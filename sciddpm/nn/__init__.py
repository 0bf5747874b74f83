"""Backbones: one U-Net for 1-, 2- and 3-D data behind the ``backbone`` registry.

``build_backbone("unet2d", in_channels=3, ...)`` builds by name; ``register_backbone(name)`` adds
your own (or use the ``sciddpm.backbones`` entry-point group from an installed package). This
package imports only torch, numpy and :mod:`sciddpm.registry`.
"""

from sciddpm.nn.unet import BACKBONES, UNet, build_backbone, register_backbone

__all__ = ["BACKBONES", "UNet", "build_backbone", "register_backbone"]
