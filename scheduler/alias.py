"""Buffers placed inside another buffer: a post-pass on a Problem (knows nothing of what the buffers hold).

A step may write its result straight into a slice of a bigger buffer that a later step would otherwise fill
by copying (a Concat's output: each producer writes its own slice). `merge_buffers(problem, hosts)` returns
the Problem in which every buffer `part` of `hosts` has gone into `hosts[part]`: steps that wrote or read the
part write or read its host, so the host lives from the first step writing any of its parts. The plan of
that Problem places hosts only; where a part lies inside its host is the caller's business (the binder adds
its own offset to the host's)."""
from __future__ import annotations

from dataclasses import replace

from .problem import Problem


def _renamed(names: list[str], hosts: dict[str, str]) -> list[str]:
    result = []
    for name in names:
        name = hosts.get(name, name)
        if name not in result:
            result.append(name)
    return result


def merge_buffers(problem: Problem, hosts: dict[str, str]) -> Problem:
    """`problem` with each buffer `part` of `hosts` living inside buffer `hosts[part]`.

    Refused (ValueError): an unknown buffer, a part that is an output or a host itself, and parts whose
    bytes add up to more than their host's."""
    used: dict[str, int] = {}
    for part, host in hosts.items():
        if part not in problem.buffers or host not in problem.buffers:
            raise ValueError(f"merge_buffers: unknown buffer {part!r} or {host!r}")
        if part in problem.outputs or part in hosts.values() or host in hosts:
            raise ValueError(f"merge_buffers: {part!r} cannot go into {host!r} (an output, or a chain of hosts)")
        used[host] = used.get(host, 0) + problem.buffers[part]
    for host, size in used.items():
        if size > problem.buffers[host]:
            raise ValueError(f"merge_buffers: parts of {size} bytes do not fit in {host!r} of "
                             f"{problem.buffers[host]} bytes")
    steps = [replace(step, reads=_renamed(list(step.reads), hosts), writes=_renamed(list(step.writes), hosts))
             for step in problem.steps]
    buffers = {name: size for name, size in problem.buffers.items() if name not in hosts}
    return replace(problem, buffers=buffers, steps=steps, outputs=list(problem.outputs))
