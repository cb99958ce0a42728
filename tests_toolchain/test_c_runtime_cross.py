"""The C runtime (the library, examples/classify.c and runtime/test/ertest.c) cross-built for aarch64 and
armv7-a (NEON, hard float) and run under qemu-user, and built with clang for this machine (portable x86-64:
the SSE2 kernels, whose GEMM tiles the bundle is compiled for with `--c-target x86-sse2`).

Each build goes through the top-level Makefile with the target's compiler and flags (cbuild.make_variables:
the programs link statically, so qemu needs no ARM sysroot; the allocation counter of ertest interposes
malloc, which a static glibc does not allow, so it is left out there). The MobileNetV2 1.0/224 bundle
(pretrained weights, --budget 1.5MB, one thread) is compiled for each target (`--c-target`: its 1x1
weights packed for the target's GEMM panels; a runtime refuses a bundle packed for other tiles). Oracles:
the Python session on x86 on the same bundle and input (logits within 1e-5 of the largest, and the same
top-5), and `edgerun run` (the example app's top-5 on the sample photo). Missing tools are a failure, not
a skip (.ci/run installs them).
"""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import cbuild

ROOT = cbuild.ROOT
MODEL, BUDGET = "mobilenet_v2_pretrained", "1.5MB"
TOP = re.compile(r"^\s+\d\.\s+([0-9.]+)\s+(.+?)\s+\(class (\d+)\)$", re.M)


# build -> (cbuild target, --c-target of its bundles); every build portable (no ARCH_FLAGS)
BUILDS = {"aarch64": ("aarch64", "aarch64"), "armv7": ("armv7", "armv7"),
          "host-clang": ("host-clang", "x86-sse2")}   # portable x86-64: the SSE2 tiles


def make(name: str, out_dir):
    target_name = BUILDS[name][0]
    target = cbuild.TARGETS[target_name]
    missing = cbuild.missing_tools(target)
    assert not missing, f"{', '.join(missing)} not installed (.ci/run installs them with apt-get)"
    extra = "-DER_NO_ALLOC_COUNT" if "-static" in target.flags else ""
    command = ["make", "-s", "-j2", "-C", str(ROOT), f"BUILD={out_dir}", *cbuild.make_variables(target),
               "ARCH_FLAGS=", f"EXTRA_CFLAGS={extra}", "all"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for name_ in ("libedgerun.a", "libedgerun.so", "classify", "ertest"):
        assert (out_dir / name_).exists(), name_
    return target


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "chelsea.ppm"
    subprocess.run([sys.executable, str(ROOT / "tools" / "write_sample_ppm.py"), str(path)], check=True, cwd=ROOT)
    return path


def compile_for(c_target, path):
    from edgerun.cli.compile import compile_main
    args = [MODEL, "--budget", BUDGET, "--threads", "1", "-o", str(path)]
    args += ["--c-runtime"] if c_target is None else ["--c-target", c_target]
    assert compile_main(args) == 0
    return path


def cli_top5(bundle) -> list[tuple[str, str]]:
    cli = subprocess.run([sys.executable, "-m", "edgerun", "run", str(bundle)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert cli.returncode == 0, cli.stderr
    return [(label, c) for _, label, c in TOP.findall(cli.stdout)]


@pytest.mark.parametrize("name", list(BUILDS))
def test_runtime_and_example_match_x86(name, tmp_path, photo):
    import edgerun
    from edgerun.zoo.images import preprocess, sample_image
    target = make(name, tmp_path / "build")
    bundle = compile_for(BUILDS[name][1], tmp_path / "mnv2.erb")
    sess = edgerun.load(bundle, threads=1)
    x = preprocess(sample_image(), 224, 224)
    (expected,) = sess.run(None, {sess.get_inputs()[0].name: x})
    expected = expected.reshape(-1)

    x_path, out_path = tmp_path / "input.f32", tmp_path / "output.f32"
    np.ascontiguousarray(x, dtype="<f4").tofile(x_path)
    run = cbuild.run_program(target, tmp_path / "build" / "ertest", "run", str(bundle), str(x_path), str(out_path),
                             "1", "1", timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert f"arena_bytes {sess.plan.peak_bytes}" in run.stdout
    got = np.fromfile(out_path, dtype="<f4")
    scale = float(np.abs(expected).max())
    assert got.shape == expected.shape and scale > 1.0
    worst = float(np.abs(got - expected).max())
    print(f"\n{name}: MobileNetV2 logits, max |C - x86 Python| = {worst:.3g} ({worst / scale:.3g} of the largest); "
          f"bit-identical: {got.view(np.uint32).tolist() == expected.view(np.uint32).tolist()}")
    assert worst <= 1e-5 * scale
    assert list(np.argsort(-got, kind="stable")[:5]) == list(np.argsort(-expected, kind="stable")[:5])

    app = cbuild.run_program(target, tmp_path / "build" / "classify", str(bundle), str(photo),
                              str(ROOT / "edgerun" / "zoo" / "imagenet_classes.txt"), timeout=900)
    assert app.returncode == 0, app.stderr[-3000:]
    ours = [(label, c) for _, label, c in TOP.findall(app.stdout)]
    assert len(ours) == 5 and ours == cli_top5(bundle), app.stdout
