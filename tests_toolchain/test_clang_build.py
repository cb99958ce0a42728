"""The native extension builds with clang and computes what the gcc build computes.

clang (macOS, the Android NDK) used to reject depthwise.c, and setup.py then silently installed
the numpy kernels. This builds the extension with Debian's clang through setup.py in a scratch copy
of the tree, checks clang really produced every instruction-set variant, and runs a small MobileNetV2
on each variant this CPU runs (EDGERUN_ISA): the logits match the numpy reference and the gcc build of
this checkout within 1e-5 relative, with the same top-5. The C kernel checks (kernel_check.c, as in
test_cross_arm.py) built with clang pass and give the gcc build's chain logits within 1e-5 relative.
clang missing is a failure, not a skip (.ci/run installs it).
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import cbuild

ROOT = Path(__file__).resolve().parents[1]

# Run in a subprocess against the copy whose extension clang built.
RUN_MODEL = r"""
import json, sys
import numpy as np
import edgerun
from edgerun import InferenceSession, zoo
from edgerun.kernels import _native, native
model = zoo.mobilenet_v2(0.35, 96, batch=1)
x = np.random.default_rng(7).standard_normal((1, 3, 96, 96)).astype(np.float32)
sess = InferenceSession(model, kernels_backend="native", threads=1)
(logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
print(json.dumps({"package": edgerun.__file__, "library": _native.__file__, "build_info": native.build_info(),
                  "logits": logits.ravel().tolist()}))
"""


def _logits(backend):
    from edgerun import InferenceSession, zoo
    model = zoo.mobilenet_v2(0.35, 96, batch=1)
    x = np.random.default_rng(7).standard_normal((1, 3, 96, 96)).astype(np.float32)
    sess = InferenceSession(model, kernels_backend=backend, threads=1)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return logits.ravel()


def _copy_tree(work: Path) -> None:
    with tarfile.open(work / "tree.tar", "w") as tar:
        for part in ("edgerun", "scheduler", "setup.py", "pyproject.toml"):
            tar.add(ROOT / part, arcname=part,
                    filter=lambda info: None if info.name.endswith(".so") or "__pycache__" in info.name else info)
    with tarfile.open(work / "tree.tar") as tar:
        tar.extractall(work / "tree")


def _build_with_clang(tree: Path) -> Path:
    clang = shutil.which("clang")
    assert clang, "clang is not installed (.ci/run installs Debian's clang); the clang build is untested"
    env = dict(os.environ, CC=clang, LDSHARED=f"{clang} -shared", PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                            capture_output=True, text=True, timeout=3000)
    log = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, log
    assert "WARNING" not in result.stderr, log  # setup.py turns a failed compile into a warning
    libraries = sorted((tree / "edgerun" / "kernels").glob("_native_*.so"))
    assert libraries, log
    return libraries


def _compiled_by(library: Path) -> str:
    result = subprocess.run(["readelf", "-p", ".comment", str(library)], capture_output=True, text=True)
    return result.stdout


def _top5(logits):
    return list(np.argsort(-logits, kind="stable")[:5])


def test_clang_builds_the_extension_and_matches_gcc_and_numpy(tmp_path):
    pytest.importorskip("edgerun.kernels._native", reason="the gcc build of this checkout is the comparison")
    _copy_tree(tmp_path)
    tree = tmp_path / "tree"
    libraries = _build_with_clang(tree)
    for library in libraries:
        comment = _compiled_by(library)
        assert "clang version" in comment, (library, comment)

    from edgerun.kernels import native
    variants = native.runnable_isas()
    assert {f"_native_{isa}" for isa in variants} <= {library.name.split(".")[0] for library in libraries}
    gcc_logits, reference = _logits("native"), _logits("numpy")
    scale = float(np.abs(reference).max())
    for isa in variants:
        result = subprocess.run([sys.executable, "-c", RUN_MODEL], cwd=tree, capture_output=True, text=True,
                                timeout=600, env=dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1",
                                                      EDGERUN_ISA=isa))
        assert result.returncode == 0, result.stderr[-4000:]
        clang_run = json.loads(result.stdout.strip().splitlines()[-1])
        assert Path(clang_run["package"]).is_relative_to(tree)
        assert Path(clang_run["library"]) in libraries
        assert clang_run["build_info"]["isa"] == isa
        clang_logits = np.asarray(clang_run["logits"], dtype=np.float32)
        assert np.abs(clang_logits - reference).max() <= 1e-5 * scale, isa
        assert np.abs(clang_logits - gcc_logits).max() <= 1e-5 * scale, isa
        assert _top5(clang_logits) == _top5(gcc_logits) == _top5(reference), isa


def test_clang_builds_the_c_kernel_checks_and_matches_gcc(tmp_path):
    results = {}
    for name in ("host", "host-clang"):
        target = cbuild.TARGETS[name]
        assert not cbuild.missing_tools(target), f"{target.compiler[0]} is not installed (.ci/run installs it)"
        program = cbuild.build_program(target, cbuild.ROOT / "tests_toolchain" / "kernel_check.c", tmp_path / name)
        result = cbuild.run_program(target, program)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert "kernel checks passed" in result.stdout
        results[name] = cbuild.parse_kernel_check(result.stdout)
    passed, _, clang_logits = results["host-clang"]
    assert set(passed) == {"gemm", "depthwise", "block", "steps"}
    gcc_logits = results["host"][2]
    scale = max(abs(v) for v in gcc_logits)
    assert len(clang_logits) == len(gcc_logits) == 16
    assert max(abs(a - b) for a, b in zip(clang_logits, gcc_logits)) <= 1e-5 * scale
