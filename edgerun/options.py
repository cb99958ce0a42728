"""Checks of the planning options a session takes, so that a bad value is an InvalidOptionError naming the
option before any work is done (not a ValueError from deep inside the scheduler)."""
from __future__ import annotations

from edgerun.errors import InvalidOptionError
from edgerun.kernels.f16 import ACTIVATION_DTYPES
from scheduler.planner import PLANNERS

MAX_SPLIT = 1024  # the largest split factor t a plan may consider (also the bundle header's bound)


def checked_planner(planner):
    """A planner name from scheduler.planner.PLANNERS, or a callable making a MemoryPlanner."""
    if callable(planner) or (isinstance(planner, str) and planner in PLANNERS):
        return planner
    raise InvalidOptionError(f"planner must be one of {sorted(PLANNERS)} (or a callable making a "
                             f"scheduler.MemoryPlanner), got {planner!r}")


def checked_max_t(max_t) -> int:
    """The largest block split factor: an integer in 1..MAX_SPLIT."""
    if isinstance(max_t, bool) or not isinstance(max_t, int) or not 1 <= max_t <= MAX_SPLIT:
        raise InvalidOptionError(f"max_t must be an integer from 1 to {MAX_SPLIT} (the largest split factor t "
                                 f"of a block), got {max_t!r}")
    return max_t


def checked_activation_dtype(activation_dtype) -> str:
    """The dtype the arena stores float activations in: "float32" (default) or "float16" (kernels still
    compute in float32; the caller's inputs and the returned outputs stay float32)."""
    if activation_dtype is None:
        return "float32"
    if isinstance(activation_dtype, str) and activation_dtype in ACTIVATION_DTYPES:
        return activation_dtype
    raise InvalidOptionError(f"activation_dtype must be one of {list(ACTIVATION_DTYPES)}, got {activation_dtype!r}")
