"""(T) The fresh noise a stochastic scheduler adds at each step, from the job's noise model.

Euler ancestral, LCM and TCD (and diffusers' SDE solvers) add new noise at every step.
Drawn independently per view, as the scheduler would draw it, that noise would undo the
correspondence the starting noise carries (one noise texture seen by every view, noise
that moves with the frames). So the sampler hands each step its own draw of the job's
noise model (another seed per step, :func:`step_seed`) and :func:`drawn_from` makes the
scheduler step take it: diffusers' schedulers draw with the ``randn_tensor`` of their own
module, which is swapped once for one that asks the calling thread's supply of the step.
A scheduler that draws nothing is unaffected.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Iterator

import torch

_STEP_SEED_STRIDE = 1_000_003  # a prime: step seeds of nearby job seeds do not collide early


def step_seed(seed: int, index: int) -> int:
    """The noise seed of step ``index`` (0-based) of a job seeded ``seed``."""
    return (seed + (index + 1) * _STEP_SEED_STRIDE) % 2**63


@contextlib.contextmanager
def drawn_from(scheduler, supply: Callable[[], torch.Tensor]) -> Iterator[None]:
    """While inside, ``scheduler``'s noise draws in this thread return ``supply()`` (called
    once per draw, only if the scheduler draws; shaped as the scheduler asks). Other threads
    (the workers of a job split over several devices) keep their own supply or none."""
    module = sys.modules.get(type(scheduler).__module__)
    if getattr(module, "randn_tensor", None) is None:
        yield
        return
    with _INSTALL:
        if not getattr(module.randn_tensor, "zs_dispatch", False):
            module.randn_tensor = _dispatcher(module.__name__, module.randn_tensor)
    supplies = _THREAD.__dict__.setdefault("supplies", {})
    previous = supplies.get(module.__name__)
    supplies[module.__name__] = supply
    try:
        yield
    finally:
        if previous is None:
            supplies.pop(module.__name__, None)
        else:
            supplies[module.__name__] = previous


_THREAD = threading.local()  # module name -> this thread's supply
_INSTALL = threading.Lock()


def _dispatcher(name: str, original: Callable) -> Callable:
    """A module's ``randn_tensor`` that draws from the calling thread's supply, if any."""

    def draw(shape, generator=None, device=None, dtype=None, layout=None):
        supply = getattr(_THREAD, "supplies", {}).get(name)
        if supply is None:
            return original(shape, generator=generator, device=device, dtype=dtype, layout=layout)
        noise = supply()
        if tuple(noise.shape) != tuple(shape):
            raise RuntimeError(f"step noise of shape {tuple(noise.shape)} for a draw of {tuple(shape)}")
        return noise.to(device=device, dtype=dtype)

    draw.zs_dispatch = True
    return draw
