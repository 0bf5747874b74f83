"""The diffusion core: noise schedules, the preconditioned Denoiser, samplers and wrappers.

Everything here speaks the noise level sigma of ``x = x0 + sigma * eps`` (house rule 1 in docs/architecture.md):

* ``schedules`` - VP (DDPM) tables, Karras sigmas, training noise, ``append_dims``;
* ``denoiser``  - ``Denoiser(net, parameterisation, sigma_data)``: c_skip/c_out/c_in/c_noise
  around a backbone, and the training losses;
* ``samplers``  - pure sampler functions in the ``SAMPLERS`` registry, ``sample()``, and the
  pieces a new sampler is built from (``sigma_levels``, ``denoise_at``, ``noise_like``);
* ``guidance``  - classifier-free guidance and inpainting as denoiser -> denoiser wrappers.

This package imports only torch, numpy and :mod:`sciddpm.registry`.
"""

from sciddpm.diffusion.denoiser import PARAMETERISATIONS, Denoiser
from sciddpm.diffusion.guidance import guided, inpainting
from sciddpm.diffusion.samplers import (SAMPLERS, denoise_at, noise_like, register_sampler, sample,
                                       sigma_levels)
from sciddpm.diffusion.schedules import (
    VPSchedule,
    add_noise,
    append_dims,
    karras_sigmas,
    lognormal_sigmas,
    sigmas,
    vp_schedule,
)

__all__ = [
    "PARAMETERISATIONS",
    "SAMPLERS",
    "Denoiser",
    "VPSchedule",
    "add_noise",
    "append_dims",
    "denoise_at",
    "guided",
    "inpainting",
    "karras_sigmas",
    "lognormal_sigmas",
    "noise_like",
    "register_sampler",
    "sample",
    "sigma_levels",
    "sigmas",
    "vp_schedule",
]
