"""Errors the scheduler raises on purpose."""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class of all errors raised by the scheduler."""


class PlanOverlapError(SchedulerError):
    """Two buffers alive at a common step share arena bytes."""

    def __init__(self, message: str, first: str, second: str) -> None:
        self.first = first
        self.second = second
        super().__init__(message)


class BudgetInfeasible(SchedulerError):
    """No schedule fits the budget; `minimum_bytes` is the smallest reachable peak
    and `limiting_step` the step whose live memory sets it."""

    def __init__(self, minimum_bytes: int, limiting_step: str, budget: int | None = None) -> None:
        self.minimum_bytes = minimum_bytes
        self.limiting_step = limiting_step
        self.budget = budget
        budget_text = f"budget of {budget} bytes" if budget is not None else "budget"
        super().__init__(
            f"no schedule fits the {budget_text}: the smallest reachable peak is "
            f"{minimum_bytes} bytes, set by step {limiting_step!r}"
        )
