"""Memory-aware scheduling of inverted-residual networks (knows nothing of ONNX).

Input: a `Problem` (named buffers with sizes, ordered steps that read and write
them, block geometry of splittable steps).  Output: a `Plan` (per-block split
t and band rows, arena offsets, planned peak), from `schedule(problem, budget)`.
"""

from .blocks import (
    BlockGeometry,
    BlockSchedule,
    band_ranges,
    block_calls,
    block_macs,
    block_scratch,
    chunk_ranges,
    hidden_rows_for,
    input_rows_for,
)
from .cost import CostModel, calibrate
from .errors import BudgetInfeasible, PlanOverlapError, SchedulerError
from .plan import Plan, StepPlan
from .planner import GreedyBySizePlanner, MemoryPlanner, NoReusePlanner, align_up, make_planner
from .problem import Problem, Step
from .search import memory_minimal, minimum_peak, schedule, verify_plan

__all__ = [
    "BlockGeometry", "BlockSchedule", "BudgetInfeasible", "CostModel", "GreedyBySizePlanner",
    "MemoryPlanner", "NoReusePlanner", "Plan", "PlanOverlapError", "Problem", "SchedulerError",
    "Step", "StepPlan", "align_up", "band_ranges", "block_calls", "block_macs", "block_scratch",
    "calibrate", "chunk_ranges", "hidden_rows_for", "input_rows_for", "make_planner",
    "memory_minimal", "minimum_peak", "schedule", "verify_plan",
]
