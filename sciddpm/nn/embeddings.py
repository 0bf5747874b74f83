"""Embeddings of the per-sample scalars a backbone sees: the noise level and the conditioning.

The noise level is whatever the Denoiser chose to feed (the network never knows the schedule,
house rule 3 in docs/architecture.md): ``c_noise = ln(sigma) / 4`` in about [-3, 2] for EDM, or a DDPM timestep
in [0, 1000). Both are embedded with sinusoids of the raw value (Vaswani et al. 2017; Ho et al.
2020, App. B) whose frequencies are log-spaced from 1e-4 (period ~6e4, so a whole timestep range
sits on a monotone slope) to 4 (period ~1.6, so a unit step of c_noise turns the phase by ~4 rad).

The conditioning vector (physical parameters already normalised by the adapter to order one)
goes through Fourier features (raw value plus sin/cos at frequencies pi * 2^k, Tancik et al. 2020)
and an MLP. A learned *null embedding* replaces it for unconditional rows: ``cond=None`` means
every row is unconditional, ``drop_cond[i]=True`` drops row ``i`` (conditioning dropout at
training time, which classifier-free guidance needs; Ho & Salimans 2022).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _mlp(in_features: int, emb_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


class NoiseEmbedding(nn.Module):
    """``noise_level`` [B] -> [B, emb_dim]: sinusoidal features of the raw value, then an MLP."""

    def __init__(
        self,
        features: int,
        emb_dim: int,
        min_frequency: float = 1e-4,
        max_frequency: float = 4.0,
    ):
        super().__init__()
        if features < 2 or features % 2:
            raise ValueError(f"noise_features must be even and >= 2, got {features}")
        frequencies = torch.logspace(
            math.log10(max_frequency), math.log10(min_frequency), features // 2, dtype=torch.float64
        )
        self.register_buffer("frequencies", frequencies.float(), persistent=False)
        self.mlp = _mlp(features, emb_dim)

    def features(self, noise_level: torch.Tensor) -> torch.Tensor:
        """[B] -> [B, features]: cos and sin of ``noise_level * frequency`` for every frequency."""
        # Phases in at least float32: a timestep of 999 times 4 rad needs the mantissa.
        dtype = torch.promote_types(self.frequencies.dtype, torch.float32)
        phase = noise_level.to(dtype)[:, None] * self.frequencies.to(dtype)
        return torch.cat([phase.cos(), phase.sin()], dim=1)

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(noise_level).to(self.mlp[0].weight.dtype))


class ConditionEmbedding(nn.Module):
    """``cond`` [B, cond_dim] -> [B, emb_dim] through Fourier features and an MLP, or the learned
    null embedding for rows without conditioning."""

    def __init__(self, cond_dim: int, emb_dim: int, frequencies: int = 8):
        super().__init__()
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be positive for a condition embedding, got {cond_dim}")
        self.cond_dim = cond_dim
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32),
            persistent=False,
        )
        self.mlp = _mlp(cond_dim * (1 + 2 * frequencies), emb_dim)
        # Zero start: an untrained null row adds nothing to the noise embedding.
        self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(
        self, cond: torch.Tensor | None, drop_cond: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        if cond is None:
            return self.null.expand(batch, -1)
        cond = cond.to(torch.promote_types(cond.dtype, torch.float32))  # phases up to 2^7 pi
        phase = cond[:, :, None] * self.frequencies.to(cond.dtype)  # [B, cond_dim, F]
        features = torch.cat([cond, phase.sin().flatten(1), phase.cos().flatten(1)], dim=1)
        embedding = self.mlp(features.to(self.mlp[0].weight.dtype))
        if drop_cond is not None:
            embedding = torch.where(drop_cond[:, None], self.null.to(embedding.dtype), embedding)
        return embedding
