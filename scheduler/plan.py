"""The scheduler's output: per-step schedules, every buffer's size and arena offset, the planned peak,
and what the plan was made for (backend label, threads, activation dtype, budget)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .blocks import BlockSchedule
from .problem import RingPlacement


@dataclass(frozen=True)
class StepPlan:
    name: str
    kind: str
    t: int  # 1 for non-block steps
    band_rows: int  # 0 for non-block steps
    bytes: int  # aligned bytes alive at this step, its own scratch included
    scratch_offsets: dict[str, int] = field(default_factory=dict)
    estimated_seconds: float = 0.0
    scratch_sizes: dict[str, int] | None = None  # bytes of each scratch buffer (None: not recorded)

    @property
    def schedule(self) -> BlockSchedule | None:
        return BlockSchedule(self.t, self.band_rows) if self.band_rows > 0 else None

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "kind": self.kind,
            "t": self.t,
            "band_rows": self.band_rows,
            "bytes": self.bytes,
            "scratch_offsets": dict(self.scratch_offsets),
            "estimated_seconds": self.estimated_seconds,
        }
        if self.scratch_sizes is not None:
            data["scratch_sizes"] = dict(self.scratch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "StepPlan":
        sizes = data.get("scratch_sizes")
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            t=int(data["t"]),
            band_rows=int(data["band_rows"]),
            bytes=int(data["bytes"]),
            scratch_offsets={str(k): int(v) for k, v in data["scratch_offsets"].items()},
            estimated_seconds=float(data["estimated_seconds"]),
            scratch_sizes=None if sizes is None else {str(k): int(v) for k, v in sizes.items()},
        )


@dataclass(frozen=True)
class SegmentPlan:
    """A segment of the plan: the steps it runs depth first (replaced in `Plan.steps` by one step of
    kind "segment" named `name`), its band rows and chunking, its arena (`offset`, `bytes`: rings and
    row scratch) and every ring buffer with its rows, bytes and offset in the whole arena."""

    name: str
    steps: tuple[str, ...]
    band_rows: int
    chunking: str
    offset: int
    bytes: int
    rings: tuple[RingPlacement, ...]

    @property
    def ring_bytes(self) -> int:
        """Bytes of the distinct ring buffers (tensors computed in place share one offset)."""
        return sum({r.offset: r.bytes for r in self.rings}.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": list(self.steps), "band_rows": self.band_rows,
                "chunking": self.chunking, "offset": self.offset, "bytes": self.bytes,
                "rings": [r.to_dict() for r in self.rings]}

    @classmethod
    def from_dict(cls, data: dict) -> "SegmentPlan":
        return cls(str(data["name"]), tuple(str(s) for s in data["steps"]), int(data["band_rows"]),
                   str(data["chunking"]), int(data["offset"]), int(data["bytes"]),
                   tuple(RingPlacement.from_dict(r) for r in data["rings"]))


@dataclass(frozen=True)
class Plan:
    """`offsets` / `buffer_sizes`: arena buffers by name; each step's scratch is in its StepPlan.
    `backend`, `threads` and `activation_dtype` are what the problem stated (the scheduler does not
    interpret them); `budget` is the budget the plan was made for (None: the fastest plan).
    `buffer_sizes` None: a plan read from an older dict that did not record sizes."""

    peak_bytes: int
    offsets: dict[str, int]
    steps: list[StepPlan]
    alignment: int
    estimated_seconds: float
    planner: str = "greedy"
    backend: str = ""
    threads: int = 1
    activation_dtype: str = "float32"
    budget: int | None = None
    buffer_sizes: dict[str, int] | None = None
    segments: tuple[SegmentPlan, ...] = ()

    def segment(self, name: str) -> SegmentPlan:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise KeyError(f"no segment named {name!r} in the plan")

    def step(self, name: str) -> StepPlan:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step named {name!r} in the plan")

    def schedules(self) -> dict[str, BlockSchedule]:
        """Block schedules by step name (can be fed back as `schedule(fixed=...)`)."""
        return {s.name: s.schedule for s in self.steps if s.schedule is not None}

    @property
    def records_sizes(self) -> bool:
        """Whether every buffer's and every scratch's size is recorded (plans from older dicts: no)."""
        return self.buffer_sizes is not None and all(s.scratch_sizes is not None for s in self.steps)

    def to_dict(self) -> dict:
        data = {
            "peak_bytes": self.peak_bytes,
            "offsets": dict(self.offsets),
            "steps": [s.to_dict() for s in self.steps],
            "alignment": self.alignment,
            "estimated_seconds": self.estimated_seconds,
            "planner": self.planner,
            "backend": self.backend,
            "threads": self.threads,
            "activation_dtype": self.activation_dtype,
            "budget": self.budget,
        }
        if self.buffer_sizes is not None:
            data["buffer_sizes"] = dict(self.buffer_sizes)
        if self.segments:
            data["segments"] = [s.to_dict() for s in self.segments]
        return data

    @classmethod
    def from_dict(cls, data: dict, backend: str | None = None, threads: int | None = None) -> "Plan":
        """The plan of `to_dict`. A dict written before plans recorded their backend and threads
        takes them from `backend` / `threads` (what the caller states it was made for); without
        those it is refused (KeyError)."""
        sizes = data.get("buffer_sizes")
        budget = data.get("budget")
        return cls(
            peak_bytes=int(data["peak_bytes"]),
            offsets={str(k): int(v) for k, v in data["offsets"].items()},
            steps=[StepPlan.from_dict(s) for s in data["steps"]],
            alignment=int(data["alignment"]),
            estimated_seconds=float(data["estimated_seconds"]),
            planner=str(data.get("planner", "greedy")),
            backend=str(_recorded(data, "backend", backend)),
            threads=int(_recorded(data, "threads", threads)),
            activation_dtype=str(data.get("activation_dtype", "float32")),
            budget=None if budget is None else int(budget),
            buffer_sizes=None if sizes is None else {str(k): int(v) for k, v in sizes.items()},
            segments=tuple(SegmentPlan.from_dict(s) for s in data.get("segments", ())),
        )

    def describe(self) -> str:
        """A fixed-width table: one row per step, then the totals."""
        header = f"{'step':<24} {'kind':<18} {'t':>3} {'bands':>5} {'bytes':>12} {'est ms':>9}"
        lines = [header, "-" * len(header)]
        for s in self.steps:
            bands = str(s.band_rows) if s.band_rows else "-"
            lines.append(
                f"{s.name[:24]:<24} {s.kind[:18]:<18} {s.t:>3} {bands:>5} "
                f"{s.bytes:>12,} {s.estimated_seconds * 1e3:>9.3f}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"peak {self.peak_bytes:,} bytes (planner {self.planner}, alignment {self.alignment}), "
            f"estimated {self.estimated_seconds * 1e3:.3f} ms"
        )
        lines += [line for segment in self.segments for line in _describe_segment(segment)]
        return "\n".join(lines)


def _describe_segment(segment: SegmentPlan) -> list[str]:
    lines = [f"{segment.name}: {len(segment.steps)} steps streamed in bands of {segment.band_rows} row(s) "
             f"({segment.chunking} calls), arena {segment.bytes:,} B at {segment.offset:,} of which rings "
             f"{segment.ring_bytes:,} B"]
    lines += [f"  step {name}" for name in segment.steps]
    lines += [f"  ring {ring.name[:48]:<48} {ring.rows:>4} of {ring.height:>4} rows {ring.bytes:>10,} B "
              f"at {ring.offset:,}" for ring in segment.rings]
    return lines


def _recorded(data: dict, key: str, stated):
    if key in data:
        return data[key]
    if stated is None:
        raise KeyError(f"the plan does not record its {key} and the caller did not state it")
    return stated
