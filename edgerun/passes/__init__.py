"""Graph passes and their driver.

A pass is `run(graph) -> bool`: it edits the graph it is given in place and says whether it
changed anything. `optimize` hands the passes a copy, so the caller's graph is never touched,
and runs them in order until a whole round changes nothing (at most MAX_ROUNDS rounds).

Passes run after shape inference (graph.value_info has static shapes, and values for
constants). They keep value_info right themselves: fused nodes reuse the names of the values
they replace, new initializers get their TensorInfo, and entries for vanished values are
dropped at the end. Shape inference need not run again.

Passes are switched off by name for A/B comparison, from code (`optimize(g, disabled={...})`)
or from the environment (`EDGERUN_DISABLE_PASSES=name1,name2` or `all`, and for the fusions of non-conv
steps `EDGERUN_NO_FUSE_SILU=1`, `EDGERUN_NO_FUSE_SE=1`, `EDGERUN_NO_FUSE_SHUFFLE=1`,
`EDGERUN_NO_FOLD_AFFINE=1`); the sets add up.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

from edgerun.errors import EdgerunError
from edgerun.ir import Graph
from edgerun.passes import (blocks, bnfold, constfold, declutter, float16, fold_affine, fuse_activation, fuse_add,
                            fuse_pad, fuse_se, fuse_shuffle, fuse_silu, quantize)
from edgerun.passes.graph_edit import prune_unused
from edgerun.shape_inference import topological_order

PASSES: tuple[tuple[str, Callable[[Graph], bool]], ...] = (
    ("float16", float16.run),       # first: every later pass and kernel sees float32 weights and values
    ("quantize", quantize.run),     # first: constant folding would turn the weights' DequantizeLinear to float
    ("declutter", declutter.run),
    ("constfold", constfold.run),
    ("fuse_pad", fuse_pad.run),
    ("bnfold", bnfold.run),
    ("fold_affine", fold_affine.run),
    ("fuse_activation", fuse_activation.run),
    ("fuse_silu", fuse_silu.run),
    ("fuse_se", fuse_se.run),
    ("fuse_shuffle", fuse_shuffle.run),
    ("fuse_blocks", blocks.fuse_blocks),
    ("fuse_stem", blocks.fuse_stem),
    ("fuse_add", fuse_add.run),   # after the block passes: a block keeps its own residual add
)
PASS_NAMES = tuple(name for name, _ in PASSES)
ENV_VAR = "EDGERUN_DISABLE_PASSES"
# the fusions of non-conv steps also have a switch of their own each: EDGERUN_NO_FUSE_SE=1 is fuse_se off
OWN_SWITCHES = ("fuse_silu", "fuse_se", "fuse_shuffle", "fold_affine", "fuse_add")
MAX_ROUNDS = 10


class UnknownPassError(EdgerunError, ValueError):
    """A pass name given to switch passes off does not exist."""


def _split_names(text: str) -> set[str]:
    return {n.strip() for n in text.split(",") if n.strip()}


def disabled_passes(disabled: Iterable[str] | str | None = None) -> set[str]:
    """Names switched off by `disabled` (names, or one comma-separated string) plus those in
    EDGERUN_DISABLE_PASSES; "all" means every pass."""
    names = _split_names(os.environ.get(ENV_VAR, ""))
    names.update(name for name in OWN_SWITCHES if os.environ.get(own_switch(name), "") not in ("", "0"))
    names.update(_split_names(disabled) if isinstance(disabled, str) else (disabled or ()))
    if "all" in names:
        return set(PASS_NAMES)
    unknown = names - set(PASS_NAMES)
    if unknown:
        raise UnknownPassError(f"unknown pass name(s) {sorted(unknown)} (from {ENV_VAR} or disabled=); "
                               f"passes are {', '.join(PASS_NAMES)} or 'all'")
    return names


def own_switch(name: str) -> str:
    """The environment variable that switches one fusion off by itself: fuse_se -> EDGERUN_NO_FUSE_SE."""
    return f"EDGERUN_NO_{name.upper()}"


def optimize(graph: Graph, disabled: Iterable[str] | str | None = None) -> Graph:
    """An optimised copy of `graph`; the caller's graph and its arrays are left as they were."""
    off = disabled_passes(disabled)
    active = [(name, fn) for name, fn in PASSES if name not in off]
    graph = graph.copy()
    for _ in range(MAX_ROUNDS):
        changed = [fn(graph) for _, fn in active]
        if not any(changed):
            break
    if active:
        prune_unused(graph)
    quantize.warn_float_islands(graph)
    graph.nodes = topological_order(graph)
    return graph
