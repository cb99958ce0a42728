"""How many CPUs this process may use: the affinity mask, capped by the cgroup CPU quota.

`os.cpu_count()` counts the machine's CPUs, not the ones a container or `taskset` leaves to this
process; the native kernels' default thread count is `usable_cpus()` instead. EDGERUN_THREADS, when
set to a positive integer, replaces the detected count (a documented override, e.g. for tests or to
leave cores to other work).
"""
from __future__ import annotations

import math
import os

from edgerun.errors import InvalidOptionError

THREADS_ENV = "EDGERUN_THREADS"
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_DIRS = ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct,cpu")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (os.cpu_count() where the mask cannot be read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read(256).strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota_text: str | None, period_text: str | None) -> float | None:
    """quota / period as CPUs; None for "max", -1, missing or malformed values."""
    try:
        quota, period = int(quota_text), int(period_text)
    except (TypeError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 cpu.max, else v1 cfs_quota_us / cfs_period_us),
    or None when there is no quota or it cannot be read."""
    text = _read_text(CGROUP_V2_CPU_MAX)
    if text is not None:
        parts = text.split()
        return _quota_cpus(parts[0], parts[1]) if len(parts) == 2 else None
    for folder in CGROUP_V1_DIRS:
        limit = _quota_cpus(_read_text(f"{folder}/cpu.cfs_quota_us"), _read_text(f"{folder}/cpu.cfs_period_us"))
        if limit is not None:
            return limit
    return None


def _env_threads() -> int | None:
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidOptionError(f"{THREADS_ENV}={text!r}: expected a positive integer (or leave it unset)")
    return value


def usable_cpus() -> int:
    """EDGERUN_THREADS if set, else the affinity mask's CPUs capped by the cgroup quota (rounded up)."""
    override = _env_threads()
    if override is not None:
        return override
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus
