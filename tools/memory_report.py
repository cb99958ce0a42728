"""MobileNetV2 1.0/224 fp32 (pretrained): planned and measured activation peaks at several budgets.

    python tools/memory_report.py [--kernels numpy|native] [--threads N]

Prints one row per budget: the planned peak (arena), the measured peak (arena + what tracemalloc saw
escape it during run()), the largest output difference to the unsplit fastest plan, and the top-1 class.
The caller's input and the weights are not counted (docs/architecture.md, "one definition of memory").
"""
from __future__ import annotations

import argparse

import numpy as np

from edgerun import InferenceSession, MemoryBudgetError, kernels, zoo

BUDGETS = [None, "4MB", "2MB", "1.2MB", "100KB"]


def report(backend: str, threads: int) -> None:
    model = zoo.mobilenet_v2(pretrained=True)
    image = zoo.preprocess_imagenet(zoo.sample_image())
    layered = InferenceSession(model, kernels_backend=backend, threads=threads,
                               disabled_passes={"fuse_blocks", "fuse_stem"}).plan.peak_bytes
    print(f"MobileNetV2 1.0/224 fp32, {backend} kernels, {threads} thread(s); layer-by-layer plan "
          f"(no block fusion): {layered:,} B")
    print(f"{'budget':>8} {'planned B':>12} {'measured B':>12} {'escaped B':>10} {'max |diff|':>11} top-1")
    reference = None
    for budget in BUDGETS:
        try:
            sess = InferenceSession(model, memory_budget=budget, kernels_backend=backend, threads=threads)
        except MemoryBudgetError as exc:
            print(f"{budget:>8}  does not fit: minimum {exc.minimum_bytes:,} B, set by {exc.limiting_step}")
            continue
        out = sess.run(None, {"input": image}, profile=True)[0]
        reference = out if reference is None else reference
        stats = sess.last_run
        print(f"{budget or 'none':>8} {stats.planned_peak_bytes:>12,} {stats.measured_peak_bytes:>12,} "
              f"{stats.escaped_bytes:>10,} {float(np.max(np.abs(out - reference))):>11.2e} {int(out.argmax())}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", choices=kernels.BACKENDS, default=kernels.backend())
    parser.add_argument("--threads", type=int, default=1,
                        help="native threads; each thread of a banded block has its own scratch (default 1)")
    args = parser.parse_args(argv)
    report(args.kernels, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
