"""The zoo's networks in the style of `edgerun table3`: size beside the paper's, and edgerun's
activation peaks beside an op-by-op runtime's.

    python tools/zoo_report.py [--models NAME,...] [--kernels numpy|native] [--threads N]

Per model: learned parameters and multiply-adds (edgerun.zoo.count_*) beside the paper's figures
where it gives them (MobileNetV2 Tables 6 and 7: SSDLite 4.3M / 0.8B, Mobile DeepLabv3 2.11M /
2.75B); the op-by-op liveness peak (edgerun.zoo.stats.op_by_op_peak: every tensor alive from its
producer to its last consumer, per-element ops in place); edgerun's planned peak with no budget
(the fastest plan) and its minimum (the smallest plan the scheduler can make, and the step that
sets it), and whether it meets issue 11's target (at most a quarter of op by op for a network made
only of streamable ops, STREAMABLE_ONLY; at most op by op for the others); a table of all at the end.
Bytes are fp32 activations, the caller's input and the weights apart.
"""
from __future__ import annotations

import argparse

from edgerun import InferenceSession, MemoryBudgetError, kernels, zoo
from edgerun.zoo import deeplab, ssdlite
from edgerun.zoo.stats import op_by_op_peak

MODELS = {
    "mobilenet_v2": (zoo.mobilenet_v2, {"parameters": 3.4e6, "macs": 300e6}),
    "mobilenet_v1": (zoo.mobilenet_v1, {"parameters": 4.2e6, "macs": 569e6}),
    "shufflenet_v1": (zoo.shufflenet_v1, {}),
    "mobilenet_v3_small_like": (zoo.mobilenet_v3_small_like, {}),
    "ssdlite_mobilenet_v2": (zoo.ssdlite_mobilenet_v2, ssdlite.PAPER),
    "mobile_deeplabv3": (zoo.mobile_deeplabv3, deeplab.PAPER),
}
MINIMUM_PROBE = 1  # a budget no plan meets: the scheduler answers with its true minimum
# models made only of streamable ops (docs/architecture.md, "Which ops stream"): issue 11 asks their minimum
# to be at most a quarter of the op-by-op peak; for the others, at most the op-by-op peak
STREAMABLE_ONLY = {"mobilenet_v2", "mobilenet_v1", "shufflenet_v1"}


def _paper(value, figure):
    return f"{value:,} (paper {figure:,.3g})" if figure else f"{value:,}"


def minimum_plan(model, backend, threads) -> tuple[int, str]:
    try:
        InferenceSession(model, memory_budget=MINIMUM_PROBE, kernels_backend=backend, threads=threads)
    except MemoryBudgetError as exc:
        return exc.minimum_bytes, exc.limiting_step
    raise AssertionError("a 1-byte budget was met")


def _target(name: str, minimum: int, naive: int) -> str:
    limit, label = (naive / 4, "a quarter of op by op") if name in STREAMABLE_ONLY else (naive, "op by op")
    return f"{'met' if minimum <= limit else 'NOT met'} (at most {label})"


def report(names, backend: str, threads: int) -> None:
    print(f"fp32 activations, {backend} kernels, {threads} thread(s); bytes exclude the caller's input "
          f"and the weights")
    rows = []
    for name in names:
        builder, paper = MODELS[name]
        model = builder(batch=1)
        naive, naive_at = op_by_op_peak(model)
        fastest = InferenceSession(model, kernels_backend=backend, threads=threads).plan.peak_bytes
        minimum, limiting = minimum_plan(model, backend, threads)
        print(f"\n{name} ({model.graph.name})")
        print(f"  parameters        {_paper(zoo.count_parameters(model), paper.get('parameters'))}")
        print(f"  multiply-adds     {_paper(zoo.count_macs(model), paper.get('macs'))}")
        print(f"  op-by-op peak     {naive:,} B at {naive_at}")
        print(f"  edgerun fastest   {fastest:,} B ({fastest / naive:.2f}x op by op)")
        print(f"  edgerun minimum   {minimum:,} B ({minimum / naive:.2f}x op by op), set by {limiting}")
        print(f"  target            {_target(name, minimum, naive)}")
        rows.append((name, minimum, naive))
    print("\n| model | streamable ops only | minimum (B) | op-by-op peak (B) | ratio | target |")
    print("|---|---|---|---|---|---|")
    for name, minimum, naive in rows:
        print(f"| {name} | {'yes' if name in STREAMABLE_ONLY else 'no'} | {minimum:,} | {naive:,} | "
              f"{minimum / naive:.2f}x | {_target(name, minimum, naive)} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--kernels", choices=kernels.BACKENDS, default=kernels.backend())
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    report(names, args.kernels, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
