"""Memory-aware scheduling of inverted-residual networks (knows nothing of ONNX).

Input: a `Problem` (named buffers with sizes, ordered steps that read and write
them, block geometry of splittable steps and their kernel's contract function,
which states scratch and thread split per schedule).  Output: a `Plan` (per-block
split t and band rows, every buffer's size and arena offset, planned peak, and the
backend label, threads and budget it was made for), from `schedule(problem, budget)`.
Below the per-block minimum it also chooses segments (runs of steps streamed row by row through
ring buffers, `Problem.segments`): see scheduler.streaming.
Knows no kernel backend: the contracts' numbers are all it reads of them.
"""

from .blocks import (
    BlockGeometry,
    BlockSchedule,
    band_ranges,
    block_calls,
    block_macs,
    chunk_ranges,
    hidden_rows_for,
    input_rows_for,
)
from .contract import (
    BY_CHANNELS,
    BY_ROWS,
    SINGLE,
    WHOLE_BANDS,
    ContractFunction,
    KernelContract,
    ScratchBuffer,
    ThreadSplit,
)
from .cost import CostModel, calibrate, register_default
from .errors import BudgetInfeasible, PlanOverlapError, SchedulerError
from .plan import Plan, SegmentPlan, StepPlan
from .planner import GreedyBySizePlanner, MemoryPlanner, NoReusePlanner, align_up, make_planner
from .problem import (
    SEGMENT_KIND,
    Problem,
    RingPlacement,
    SegmentLayout,
    SegmentLayoutFunction,
    SegmentOption,
    Step,
)
from .search import memory_minimal, minimum_peak, plan_differences, schedule, streamed_minimal, verify_plan

__all__ = [
    "BY_CHANNELS", "BY_ROWS", "SINGLE", "WHOLE_BANDS",
    "BlockGeometry", "BlockSchedule", "BudgetInfeasible", "ContractFunction", "CostModel",
    "GreedyBySizePlanner", "KernelContract", "MemoryPlanner", "NoReusePlanner", "Plan", "PlanOverlapError",
    "Problem", "RingPlacement", "SEGMENT_KIND", "ScratchBuffer", "SegmentLayout", "SegmentLayoutFunction",
    "SegmentOption", "SegmentPlan", "SchedulerError", "Step", "StepPlan", "ThreadSplit", "align_up",
    "band_ranges", "block_calls", "block_macs", "calibrate", "chunk_ranges", "hidden_rows_for",
    "input_rows_for", "make_planner", "memory_minimal", "minimum_peak", "plan_differences",
    "register_default", "schedule", "streamed_minimal", "verify_plan",
]
