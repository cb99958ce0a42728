"""Problem lifetimes and Plan serialisation."""

import json

import pytest

from scheduler import (SINGLE, BlockGeometry, BlockSchedule, KernelContract, Plan, Problem, ScratchBuffer, Step,
                       StepPlan, ThreadSplit)
from scheduler.blocks import band_hidden_rows, chunk_channels

BLOCK = BlockGeometry(8, 10, 10, 48, 1, 1, (0, 0, 0, 0), 3, 1, (1, 1, 1, 1), 8, True)


def split_contract(geom, sched, threads):
    """A made-up kernel: the split's two intermediates (a chunk's hidden rows of a band and its
    depthwise band), one thread."""
    c = chunk_channels(geom, sched.t)
    return KernelContract(sched, (
        ScratchBuffer("expanded", c * band_hidden_rows(geom, sched.band_rows) * geom.hidden_width * 4),
        ScratchBuffer("depthwise", c * sched.band_rows * geom.out_width * 4)), ThreadSplit(SINGLE, threads, 1))


def chain():
    return Problem(
        buffers={"in": 3200, "a": 3200, "b": 3200, "unused": 64, "stats": 16, "out": 40},
        steps=[
            Step("s0", "conv", ["in"], ["a"], macs=1000),
            Step("s1", "block", ["a"], ["b", "stats"], block=BLOCK, contract=split_contract),
            Step("s2", "pool", ["b"], ["out"], macs=800),
            Step("s3", "softmax", ["out"], ["out"], macs=40, scratch={"tmp": 100}),
        ],
        outputs=["out", "b"],
    )


def test_lifetimes_follow_writers_and_last_readers():
    p = chain()
    assert p.lifetime("in") == (0, 0)  # never written: present from step 0
    assert p.lifetime("a") == (0, 1)
    assert p.lifetime("b") == (1, 3)  # an output: lives to the last step
    assert p.lifetime("stats") == (1, 1)  # written, never read: its writer's step only
    assert p.lifetime("unused") == (0, 0)
    assert p.lifetime("out") == (2, 3)
    assert p.alive_at(1) == ["a", "b", "stats"]
    assert p.step_index("s2") == 2
    assert [s.name for s in p.block_steps()] == ["s1"]


def test_step_scratch_block_and_fixed():
    p = chain()
    assert p.steps[3].scratch_for(None) == {"tmp": 100}
    sizes = p.steps[1].scratch_for(BlockSchedule(2, 5))
    assert sizes == {"expanded": 24 * 7 * 10 * 4, "depthwise": 24 * 5 * 10 * 4}


def test_problem_rejects_unknown_buffers_and_duplicate_steps():
    with pytest.raises(ValueError):
        Problem({"a": 4}, [Step("s", "x", ["a"], ["b"])], ["a"])
    with pytest.raises(ValueError):
        Problem({"a": 4}, [Step("s", "x", ["a"], []), Step("s", "x", ["a"], [])], ["a"])
    with pytest.raises(ValueError):
        Problem({"a": 4}, [Step("s", "x", ["a"], [])], ["zz"])


def sample_plan():
    return Plan(
        peak_bytes=4096,
        offsets={"in": 0, "a": 1024, "out": 0},
        steps=[
            StepPlan("s0", "conv", 1, 0, 2048, {}, 1.5e-4),
            StepPlan("s1", "block", 3, 4, 4096, {"expanded": 2048, "depthwise": 3072}, 2.5e-3),
        ],
        alignment=64,
        estimated_seconds=2.65e-3,
        planner="greedy",
    )


def test_plan_json_round_trip():
    plan = sample_plan()
    text = json.dumps(plan.to_dict())
    again = Plan.from_dict(json.loads(text))
    assert again == plan
    assert again.step("s1").scratch_offsets["depthwise"] == 3072
    assert again.schedules() == {"s1": BlockSchedule(3, 4)}
    assert again.step("s0").schedule is None
    with pytest.raises(KeyError):
        again.step("nope")


def test_describe_lists_every_step_and_the_peak():
    text = sample_plan().describe()
    lines = text.splitlines()
    assert lines[2].split()[:5] == ["s0", "conv", "1", "-", "2,048"]
    assert lines[3].split()[:5] == ["s1", "block", "3", "4", "4,096"]
    assert "peak 4,096 bytes" in lines[-1] and "2.650 ms" in lines[-1]


def test_scheduler_imports_neither_onnx_nor_edgerun():
    import subprocess
    import sys

    code = (
        "import sys, scheduler, scheduler.search, scheduler.cost; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'edgerun', 'onnxruntime')); "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
