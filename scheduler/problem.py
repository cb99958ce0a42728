"""The scheduling problem: an ordered list of steps over named buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .blocks import BlockGeometry, BlockSchedule
from .contract import ContractFunction, KernelContract


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
