"""The scheduler's output: per-step schedules, arena offsets and the planned peak."""

from __future__ import annotations

from dataclasses import dataclass, field

from .blocks import BlockSchedule


@dataclass(frozen=True)
class StepPlan:
    name: str
    kind: str
    t: int  # 1 for non-block steps
    band_rows: int  # 0 for non-block steps
    bytes: int  # aligned bytes alive at this step, its own scratch included
    scratch_offsets: dict[str, int] = field(default_factory=dict)
    estimated_seconds: float = 0.0

    @property
    def schedule(self) -> BlockSchedule | None:
        return BlockSchedule(self.t, self.band_rows) if self.band_rows > 0 else None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "t": self.t,
            "band_rows": self.band_rows,
            "bytes": self.bytes,
            "scratch_offsets": dict(self.scratch_offsets),
            "estimated_seconds": self.estimated_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "StepPlan":
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            t=int(data["t"]),
            band_rows=int(data["band_rows"]),
            bytes=int(data["bytes"]),
            scratch_offsets={str(k): int(v) for k, v in data["scratch_offsets"].items()},
            estimated_seconds=float(data["estimated_seconds"]),
        )


@dataclass(frozen=True)
class Plan:
    peak_bytes: int
    offsets: dict[str, int]
    steps: list[StepPlan]
    alignment: int
    estimated_seconds: float
    planner: str = "greedy"

    def step(self, name: str) -> StepPlan:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step named {name!r} in the plan")

    def schedules(self) -> dict[str, BlockSchedule]:
        """Block schedules by step name (can be fed back as `schedule(fixed=...)`)."""
        return {s.name: s.schedule for s in self.steps if s.schedule is not None}

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "offsets": dict(self.offsets),
            "steps": [s.to_dict() for s in self.steps],
            "alignment": self.alignment,
            "estimated_seconds": self.estimated_seconds,
            "planner": self.planner,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(
            peak_bytes=int(data["peak_bytes"]),
            offsets={str(k): int(v) for k, v in data["offsets"].items()},
            steps=[StepPlan.from_dict(s) for s in data["steps"]],
            alignment=int(data["alignment"]),
            estimated_seconds=float(data["estimated_seconds"]),
            planner=str(data.get("planner", "greedy")),
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
        return "\n".join(lines)
