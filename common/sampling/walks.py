"""Timestep walks: the order in which a sampler visits the noise levels of a respaced chain.

Levels count inference steps: level ``N`` is the starting noise (the scheduler's first timestep), level ``t`` for
``1 <= t <= N`` is the scheduler timestep ``timesteps[N - t]`` and level 0 is the clean end of the chain (the paper's
``x_0``). A walk is the list of levels the sample takes, from its start down to 0. A move one level down is a
denoising step (network + ``scheduler.step``); a move up is forward diffusion ``q(x_b | x_a)`` without the network.

- :func:`monotone_walk`: ``N, N-1, ..., 0`` (every plain sampler).
- :class:`RePaintWalk`: RePaint's resampling (Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion
  Probabilistic Models", CVPR 2022): Algorithm 1 goes down one step and back up ``U - 1`` times at every level
  (``if u < U and t > 1``: never back up from ``x_0``); Sec. 4.2 generalises the jump to ``j`` levels: the chain runs
  down in blocks of ``j`` levels from the top, each block ``r`` times with a jump back up ``j`` levels between runs,
  and the block that ends at ``x_0`` is run once.
"""

from __future__ import annotations

__all__ = ["Walk", "RePaintWalk", "monotone_walk"]

from collections.abc import Callable

Walk = Callable[[int], list[int]]


def monotone_walk(top: int) -> list[int]:
    """``top, top - 1, ..., 0``."""
    if top < 1:
        raise ValueError(f"a walk starts at level >= 1, got {top}")
    return list(range(top, -1, -1))


class RePaintWalk:
    """RePaint's walk with jump length ``jump_length`` (paper: 10) and ``resamplings`` runs per block (paper: 10);
    ``RePaintWalk(1, U)`` is Algorithm 1 with ``U`` resamplings and ``RePaintWalk(j, 1)`` the monotone walk."""

    def __init__(self, jump_length: int = 10, resamplings: int = 10) -> None:
        if jump_length < 1 or resamplings < 1:
            raise ValueError(f"jump_length and resamplings must be >= 1, got {jump_length}, {resamplings}")
        self.jump_length = int(jump_length)
        self.resamplings = int(resamplings)

    def __call__(self, top: int) -> list[int]:
        walk = monotone_walk(top)[:1]
        level = top
        while level > 0:
            bottom = max(level - self.jump_length, 0)
            runs = 1 if bottom == 0 else self.resamplings
            for run in range(runs):
                walk.extend(range(level - 1, bottom - 1, -1))
                if run < runs - 1:
                    walk.append(level)
            level = bottom
        return walk
