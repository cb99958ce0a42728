"""Per-step memory and time profile of a session: plain dicts, testable without the CLI.

A row per executed step, in execution order:
  index, name, op, inputs / outputs (activation shapes), t, band_rows (1 / 0 for non-block steps),
  planned_bytes   bytes alive at the step in the plan, its scratch included (StepPlan.bytes),
  escaped_bytes   the largest tracemalloc peak seen outside the arena during the step over all runs,
  measured_bytes  planned_bytes + escaped_bytes,
  seconds         median over the runs, estimated_seconds (the scheduler's cost model),
  macs            multiply-adds executed (for blocks under the chosen split, halo recomputation included),
  params          elements of the step's constant inputs (weights and biases).

Totals: planned peak (= arena size = Plan.peak_bytes), the largest step's planned bytes (never more than
the planned peak: buffers of one step never overlap in the arena, but gaps may make the arena larger),
measured peak (= planned peak + the largest escape seen in any run or step), weights bytes, process RSS.
Drawing these numbers (and the Table 3 reference level) is the command line's: edgerun.cli.plot.
"""
from __future__ import annotations

import statistics

import numpy as np
import psutil

from edgerun.errors import InvalidInputError
from scheduler.blocks import BlockSchedule, block_macs

# ---------------------------------------------------------------- the compiled model behind a session
def compiled_model(sess):
    """The executor's CompiledModel of the session's most recent input shape."""
    compiled = sess.compiled
    if compiled is None:
        raise InvalidInputError("the session has no compiled plan yet: run it once or call prepare(input_shapes)")
    return compiled


def _shape(graph, name):
    info = graph.value_info.get(name)
    return list(info.shape) if info is not None and info.shape is not None else None


def _constant_inputs(node, constants) -> list[str]:
    return [name for name in node.inputs if name and name in constants]


def _activation_inputs(node, constants) -> list[str]:
    return [name for name in node.inputs if name and name not in constants]


def _block_macs(exec_step, step_plan, batch: int) -> int:
    return batch * block_macs(exec_step.geometry, BlockSchedule(step_plan.t, step_plan.band_rows))


def _step_macs(exec_step, problem_step, step_plan, graph) -> int:
    if exec_step.geometry is not None:
        batch = _shape(graph, exec_step.node.inputs[0])[0]
        return _block_macs(exec_step, step_plan, batch)
    return problem_step.macs


# ---------------------------------------------------------------- rows from the plan alone
def plan_rows(sess) -> list[dict]:
    """One row per step of the plan, before any run: shapes, split, planned bytes, macs, parameters."""
    compiled = compiled_model(sess)
    graph, constants = compiled.graph, compiled.constants
    rows = []
    for index, (exec_step, problem_step) in enumerate(zip(compiled.steps, compiled.planned_problem.steps)):
        node = exec_step.node
        step_plan = compiled.plan.step(node.name)
        rows.append({
            "index": index,
            "name": node.name,
            "op": node.op_type,
            "is_block": exec_step.geometry is not None,
            "inputs": [_shape(graph, n) for n in _activation_inputs(node, constants)],
            "outputs": [_shape(graph, n) for n in node.outputs if n],
            "t": step_plan.t,
            "band_rows": step_plan.band_rows,
            "planned_bytes": step_plan.bytes,
            "estimated_seconds": step_plan.estimated_seconds,
            "macs": _step_macs(exec_step, problem_step, step_plan, graph),
            "params": sum(int(np.asarray(constants[n]).size) for n in _constant_inputs(node, constants)),
        })
    return rows


def weights_bytes(sess) -> int:
    """Bytes of the distinct constant tensors the steps read (weights, biases, folded constants)."""
    compiled = compiled_model(sess)
    names = {n for step in compiled.steps for n in _constant_inputs(step.node, compiled.constants)}
    return sum(int(np.asarray(compiled.constants[n]).nbytes) for n in names)


# ---------------------------------------------------------------- adding measured runs
def _step_profiles_by_name(run_stats) -> dict:
    return {p.name: p for p in run_stats.steps}


def add_measurements(rows: list[dict], runs: list) -> list[dict]:
    """Rows with seconds (median over runs), escaped_bytes (max over runs) and measured_bytes."""
    if not runs:
        raise InvalidInputError("no profiled run to take measurements from")
    by_run = [_step_profiles_by_name(r) for r in runs]
    measured = []
    for row in rows:
        profiles = [p[row["name"]] for p in by_run if row["name"] in p]
        if len(profiles) != len(runs):
            raise InvalidInputError(f"step {row['name']!r} is missing from a profiled run")
        escaped = max(max(p.extra_bytes for p in profiles), 0)
        measured.append(dict(row, seconds=statistics.median(p.seconds for p in profiles),
                             escaped_bytes=escaped, measured_bytes=row["planned_bytes"] + escaped))
    return measured


def process_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def measured_peak_bytes(run_stats) -> int:
    """Planned peak (the arena) plus the largest escape from it during one profiled run."""
    return run_stats.measured_peak_bytes


def totals(sess, rows: list[dict], runs: list) -> dict:
    """Whole-model numbers for measured rows (see the module docstring for definitions)."""
    planned_peak = compiled_model(sess).plan.peak_bytes
    step_escape = max((row["escaped_bytes"] for row in rows), default=0)
    escaped = max([step_escape, 0] + [r.escaped_bytes for r in runs])
    return {
        "planned_peak_bytes": planned_peak,
        "max_step_planned_bytes": max((row["planned_bytes"] for row in rows), default=0),
        "escaped_bytes": escaped,
        "measured_peak_bytes": planned_peak + escaped,
        "weights_bytes": weights_bytes(sess),
        "params": sum(row["params"] for row in rows),
        "macs": sum(row["macs"] for row in rows),
        "seconds": sum(row["seconds"] for row in rows),
        "estimated_seconds": sum(row["estimated_seconds"] for row in rows),
        "process_rss_bytes": process_rss_bytes(),
    }


def profile_runs(sess, feeds: dict, runs: int = 1, iterate=None) -> list:
    """Run the session `runs` times with profiling on; the RunStats of each run.
    `iterate` wraps the range of runs (e.g. edgerun.progress.progress)."""
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise InvalidInputError(f"runs must be a positive integer, got {runs!r}")
    loop = range(runs) if iterate is None else iterate(range(runs))
    stats = []
    for _ in loop:
        sess.run(None, feeds, profile=True)
        stats.append(sess.last_run)
    return stats


def profile_report(sess, feeds: dict, runs: int = 1, iterate=None) -> dict:
    """{"rows": [...], "totals": {...}} for `runs` profiled runs of `feeds`."""
    stats = profile_runs(sess, feeds, runs, iterate)
    rows = add_measurements(plan_rows(sess), stats)
    return {"rows": rows, "totals": totals(sess, rows, stats)}


def plan_report(sess) -> dict:
    """The plan alone: rows without measurements and the planned peak."""
    plan = compiled_model(sess).plan
    return {"rows": plan_rows(sess), "planned_peak_bytes": plan.peak_bytes,
            "estimated_seconds": plan.estimated_seconds, "planner": plan.planner, "alignment": plan.alignment}
