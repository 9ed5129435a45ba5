"""(T) The fresh noise a stochastic scheduler adds at each step, from the job's noise model.

Euler ancestral, LCM and TCD (and diffusers' SDE solvers) add new noise at every step.
Drawn independently per view, as the scheduler would draw it, that noise would undo the
correspondence the starting noise carries (one noise texture seen by every view, noise
that moves with the frames). So the sampler hands each step its own draw of the job's
noise model (another seed per step, :func:`step_seed`) and :func:`drawn_from` makes the
scheduler step take it: diffusers' schedulers draw with the ``randn_tensor`` of their own
module, which is swapped for the step. A scheduler that draws nothing is unaffected.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import torch

_STEP_SEED_STRIDE = 1_000_003  # a prime: step seeds of nearby job seeds do not collide early


def step_seed(seed: int, index: int) -> int:
    """The noise seed of step ``index`` (0-based) of a job seeded ``seed``."""
    return (seed + (index + 1) * _STEP_SEED_STRIDE) % 2**63


@contextlib.contextmanager
def drawn_from(scheduler, supply: Callable[[], torch.Tensor]) -> Iterator[None]:
    """While inside, ``scheduler``'s noise draws return ``supply()`` (called once per draw,
    only if the scheduler draws; shaped as the scheduler asks)."""
    module = sys.modules.get(type(scheduler).__module__)
    original = getattr(module, "randn_tensor", None)
    if original is None:
        yield
        return

    def draw(shape, generator=None, device=None, dtype=None, layout=None):
        noise = supply()
        if tuple(noise.shape) != tuple(shape):
            raise RuntimeError(f"step noise of shape {tuple(noise.shape)} for a draw of {tuple(shape)}")
        return noise.to(device=device, dtype=dtype)

    module.randn_tensor = draw
    try:
        yield
    finally:
        module.randn_tensor = original
