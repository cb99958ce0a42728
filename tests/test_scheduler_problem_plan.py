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


def test_scheduler_sources_name_no_backend_or_kernel_temporary():
    """The scheduler knows kernels only through their contracts' numbers."""
    from pathlib import Path

    import scheduler

    words = ("native", "numpy", "dw_tmp", "proj_tmp", "im2col", "CHANNEL_SPLIT")
    for source in Path(scheduler.__file__).parent.glob("*.py"):
        text = source.read_text().lower()
        assert [w for w in words if w.lower() in text] == [], source.name


def test_a_block_step_needs_a_kernel_contract():
    with pytest.raises(ValueError, match="no kernel contract"):
        Problem({"a": 3200, "b": 3200}, [Step("s", "block", ["a"], ["b"], block=BLOCK)], ["b"])


def test_plan_records_what_it_was_made_for_and_every_size():
    from scheduler import plan_differences, schedule

    problem = Problem({"a": 3200, "b": 3200}, [Step("s", "block", ["a"], ["b"], block=BLOCK, contract=split_contract)],
                      ["b"], backend="some-kernels", threads=3, activation_dtype="float16")
    plan = schedule(problem, budget=20_000)
    assert (plan.backend, plan.threads, plan.activation_dtype, plan.budget) == ("some-kernels", 3, "float16", 20_000)
    assert plan.buffer_sizes == {"a": 3200, "b": 3200}
    sched = plan.step("s").schedule
    assert plan.step("s").scratch_sizes == split_contract(BLOCK, sched, 3).scratch_bytes()
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan_differences(problem, plan) == []
    other = Problem(problem.buffers, problem.steps, ["b"], backend="other-kernels", threads=1)
    assert plan_differences(other, plan) == ["backend 'some-kernels' in the plan, 'other-kernels' here",
                                            "threads 3 in the plan, 1 here",
                                            "activation dtype 'float16' in the plan, 'float32' here"]
    bigger = Problem(dict(problem.buffers, b=3204), problem.steps, ["b"], backend="some-kernels", threads=3,
                     activation_dtype="float16")
    assert plan_differences(bigger, plan) == ["buffer 'b': 3200 bytes in the plan, 3204 here"]

