"""The scheduling problem: an ordered list of steps over named buffers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .blocks import BlockGeometry, BlockSchedule, block_macs
from .contract import ContractFunction, KernelContract

SEGMENT_KIND = "segment"
CHUNKINGS = ("rows", "steady")   # one-row calls (smallest rings) / each step's steady rate per band


@dataclass(frozen=True)
class RingPlacement:
    """One ring buffer of a segment: the tensor it holds (`name`), its rows of `height`, its bytes and
    its offset (inside the segment's arena in a SegmentLayout, in the whole arena in a plan)."""

    name: str
    rows: int
    height: int
    bytes: int
    offset: int

    def to_dict(self) -> dict:
        return {"name": self.name, "rows": self.rows, "height": self.height, "bytes": self.bytes,
                "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict) -> "RingPlacement":
        return cls(str(data["name"]), int(data["rows"]), int(data["height"]), int(data["bytes"]),
                   int(data["offset"]))


@dataclass(frozen=True)
class SegmentLayout:
    """What a segment kernel declares for one (band rows, chunking): the bytes of its own arena (rings
    and row scratch, laid out by the kernel with the scheduler's planner), where each ring sits in
    it, and the work of its row schedule (kernel calls, output rows computed over all steps)."""

    arena_bytes: int
    rings: tuple[RingPlacement, ...]
    calls: int
    row_calls: int


# (band_rows, chunking) -> SegmentLayout; supplied by whoever runs segments (as block contracts are)
SegmentLayoutFunction = Callable[[int, str], SegmentLayout]


@dataclass
class SegmentOption:
    """Consecutive steps (`steps`, by name) that may run as one segment, depth first, row by row.
    The tensors only they read and write (inner buffers) then live in rings inside the segment's
    arena instead of whole; `height` is the rows of the driving tensor (band choices); `layout`
    gives the segment's arena and rings for a (band_rows, chunking)."""

    name: str
    steps: tuple[str, ...]
    height: int
    layout: SegmentLayoutFunction


@dataclass
class Step:
    """One step of the execution order.

    `scratch`: fixed scratch bytes by name for this step.  A block step (with
    `block`) also has `contract`, the kernel's function (geometry, schedule,
    threads) -> KernelContract: its scratch for the chosen schedule is added to
    the fixed entries.  `macs` is used for non-block steps only; a block's
    multiply-adds follow from its geometry and schedule.
    """

    name: str
    kind: str
    reads: list[str]
    writes: list[str]
    macs: int = 0
    scratch: dict[str, int] | None = None
    block: BlockGeometry | None = None
    contract: ContractFunction | None = None

    @property
    def is_block(self) -> bool:
        return self.block is not None

    def kernel_contract(self, sched: BlockSchedule, threads: int = 1) -> KernelContract:
        """The block kernel's contract for `sched` run by `threads` threads."""
        if self.contract is None:
            raise ValueError(f"block step {self.name!r} has no kernel contract")
        return self.contract(self.block, sched, threads)

    def scratch_for(self, sched: BlockSchedule | None, threads: int = 1) -> dict[str, int]:
        fixed = dict(self.scratch or {})
        if self.block is None:
            return fixed
        sizes = self.kernel_contract(sched, threads).scratch_bytes()
        clash = set(sizes) & set(fixed)
        if clash:
            raise ValueError(f"step {self.name!r}: fixed scratch {sorted(clash)} clashes with block scratch")
        sizes.update(fixed)
        return sizes


def unsplit_macs(step: Step) -> int:
    """Multiply-adds of a step run whole (a block: t = 1, one band; rows are computed once either way)."""
    if step.is_block:
        return block_macs(step.block, BlockSchedule(1, step.block.out_height))
    return step.macs


@dataclass
class Problem:
    """Buffers (name -> bytes, batch already applied), steps in execution order,
    and the buffers that must survive to the end.  `threads`: threads the kernels
    run on (block kernels state in their contract what that means for their
    scratch).  `backend` and `activation_dtype` are labels the plan records for
    whoever runs it; the scheduler never interprets them."""

    buffers: dict[str, int]
    steps: list[Step]
    outputs: list[str]
    backend: str = ""
    batch: int = 1
    threads: int = 1
    activation_dtype: str = "float32"
    segments: list[SegmentOption] = field(default_factory=list)
    _lifetimes: dict[str, tuple[int, int]] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._validate()
        self._lifetimes = self._compute_lifetimes()

    def _validate(self) -> None:
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a positive int, got {self.threads!r}")
        if not isinstance(self.backend, str) or not isinstance(self.activation_dtype, str):
            raise ValueError("backend and activation_dtype are labels (str)")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique")
        for step in self.steps:
            for buf in list(step.reads) + list(step.writes):
                if buf not in self.buffers:
                    raise ValueError(f"step {step.name!r} uses unknown buffer {buf!r}")
            if step.is_block and step.contract is None:
                raise ValueError(f"block step {step.name!r} has no kernel contract")
        for out in self.outputs:
            if out not in self.buffers:
                raise ValueError(f"output {out!r} is not a buffer")
        for name, size in self.buffers.items():
            if size < 0:
                raise ValueError(f"buffer {name!r} has negative size {size}")
        self._validate_segments(names)

    def _validate_segments(self, names: list[str]) -> None:
        position = {name: i for i, name in enumerate(names)}
        seen = set(names)
        for option in self.segments:
            if option.name in seen:
                raise ValueError(f"segment name {option.name!r} is not unique among steps and segments")
            seen.add(option.name)
            where = [position.get(name) for name in option.steps]
            if not where or None in where or where != list(range(where[0], where[0] + len(where))):
                raise ValueError(f"segment {option.name!r}: {list(option.steps)} are not consecutive steps")
            if option.height < 1:
                raise ValueError(f"segment {option.name!r}: height must be >= 1")

    def _compute_lifetimes(self) -> dict[str, tuple[int, int]]:
        last_index = max(len(self.steps) - 1, 0)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for buf in step.writes:
                first.setdefault(buf, i)
                last[buf] = max(last.get(buf, i), i)
            for buf in step.reads:
                last[buf] = i
        lifetimes = {}
        for name in self.buffers:
            start = first.get(name, 0)
            end = last_index if name in self.outputs else max(last.get(name, start), start)
            lifetimes[name] = (start, end)
        return lifetimes

    def lifetime(self, buffer: str) -> tuple[int, int]:
        """(first_step, last_step) inclusive, as step indices."""
        return self._lifetimes[buffer]

    def step_index(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(f"no step named {name!r}")

    def alive_at(self, index: int) -> list[str]:
        """Buffers alive at step `index`, in declaration order."""
        return [n for n, (a, b) in self._lifetimes.items() if a <= index <= b]

    def step_scratch(self, step: Step, sched: BlockSchedule | None) -> dict[str, int]:
        """Scratch of `step` under `sched` with this problem's threads."""
        return step.scratch_for(sched, self.threads)

    def step_contract(self, step: Step, sched: BlockSchedule) -> KernelContract:
        """The block kernel's contract of `step` under `sched` with this problem's threads."""
        return step.kernel_contract(sched, self.threads)

    def block_steps(self) -> list[Step]:
        return [s for s in self.steps if s.is_block]

    # ---- segments
    def segment_option(self, name: str) -> SegmentOption:
        for option in self.segments:
            if option.name == name:
                return option
        raise KeyError(f"no segment named {name!r} in this problem")

    def inner_buffers(self, option: SegmentOption) -> list[str]:
        """Buffers the segment's steps write and only they read (not problem outputs): its rings."""
        members = set(option.steps)
        written = [b for s in self.steps if s.name in members for b in s.writes]
        read_outside = {b for s in self.steps if s.name not in members for b in s.reads}
        return [b for b in dict.fromkeys(written) if b not in read_outside and b not in self.outputs]

    def segment_step(self, option: SegmentOption, arena_bytes: int) -> Step:
        """The one step that replaces the segment's steps: reads what they read from outside, writes
        what leaves it, holds its arena (rings and row scratch) as scratch `segment`."""
        members = set(option.steps)
        inner = set(self.inner_buffers(option))
        steps = [s for s in self.steps if s.name in members]
        reads = [b for b in dict.fromkeys(b for s in steps for b in s.reads) if b not in inner]
        writes = [b for b in dict.fromkeys(b for s in steps for b in s.writes) if b not in inner]
        return Step(name=option.name, kind=SEGMENT_KIND, reads=reads, writes=writes,
                    macs=sum(unsplit_macs(s) for s in steps), scratch={"segment": arena_bytes})

    def with_segments(self, arenas: dict[str, int]) -> "Problem":
        """This problem with each named segment (name -> its arena bytes) run as one step, its inner
        buffers gone.  Raises ValueError when two segments share a step."""
        chosen = [self.segment_option(name) for name in arenas]
        replaced: dict[str, SegmentOption] = {}
        for option in chosen:
            for step in option.steps:
                if step in replaced:
                    raise ValueError(f"segments {replaced[step].name!r} and {option.name!r} share step {step!r}")
                replaced[step] = option
        inner = {b for option in chosen for b in self.inner_buffers(option)}
        steps = []
        for step in self.steps:
            option = replaced.get(step.name)
            if option is None:
                steps.append(step)
            elif step.name == option.steps[0]:
                steps.append(self.segment_step(option, arenas[option.name]))
        return Problem(buffers={n: b for n, b in self.buffers.items() if n not in inner}, steps=steps,
                       outputs=list(self.outputs), backend=self.backend, batch=self.batch, threads=self.threads,
                       activation_dtype=self.activation_dtype)
