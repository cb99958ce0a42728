"""Layers import downward only (docs/architecture.md): checked in fresh interpreters through
sys.modules, and statically on the source (tests/import_graph.py parses every import with ast)."""
import ast
import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from import_graph import ROOT, cycles, import_graph, imports_of, module_files

APP_PREFIX = "edgerun.cli"
ENTRY_POINT = "edgerun.__main__"   # `python -m edgerun`: the command line's second door, part of the application layer
# What running a bundle must never load: the ONNX front end, onnx itself, the tools.
FRONT_END_AND_TOOLS = ("onnx", "onnxruntime", "edgerun.passes", "edgerun.loader", "edgerun.session",
                       "edgerun.compiler", "edgerun.models", "edgerun.zoo", APP_PREFIX)
# The one function-level import of the tree's own modules that remains: the zoo reads .pth files only
# for pretrained weights.
# the native kernels' module (edgerun/kernels/_native.py loads the CPU's variant) is imported when first
# used: an install without a C compiler has no variant to load
KNOWN_LOCAL_IMPORTS = {("edgerun.zoo.mobilenet_v2", "edgerun.zoo.pth"), ("edgerun.kernels", "edgerun.kernels._native"),
                       ("edgerun.kernels.native", "edgerun.kernels._native"),
                       ("edgerun.kernels.native_segment", "edgerun.kernels._native")}

OPTIONAL_DEPENDENCIES = ("onnxruntime", "matplotlib", "PIL", "psutil")


def loaded_modules(code: str) -> list[str]:
    """sys.modules after running `code` in a fresh interpreter started in the repository root."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def matching(modules: list[str], prefixes) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


# ---------------------------------------------------------------- what each layer loads
def test_the_scheduler_loads_nothing_of_edgerun_or_onnx():
    loaded = loaded_modules("import scheduler")
    assert "scheduler.search" in loaded
    assert matching(loaded, ("edgerun", "onnx")) == []


@pytest.mark.parametrize("layer", ["edgerun.ir", "edgerun.ops"])
def test_the_ir_and_the_operators_load_no_session_bundle_or_tool(layer):
    loaded = loaded_modules(f"import {layer}")
    assert layer in loaded
    assert matching(loaded, ("edgerun.session", "edgerun.session_base", "edgerun.bundle", "edgerun.executor",
                             "edgerun.compiler", "edgerun.models", APP_PREFIX, "onnx")) == []


def tiny_model_bytes() -> bytes:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_loading_and_running_a_bundle_loads_no_front_end_onnx_or_tool(tmp_path):
    from edgerun import InferenceSession
    from edgerun.compiler import compile_bundle

    model = tiny_model_bytes()
    path = tmp_path / "tiny.erb"
    compile_bundle(model, path)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (expected,) = InferenceSession(model).run(None, {"x": x})
    code = (f"import numpy as np, edgerun\n"
            f"session = edgerun.load({str(path)!r})\n"
            f"(y,) = session.run(None, {{'x': np.load({str(tmp_path / 'x.npy')!r})}})\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, y)")
    loaded = loaded_modules(code)
    assert "edgerun.bundle" in loaded and "edgerun.executor" in loaded
    assert matching(loaded, FRONT_END_AND_TOOLS) == []
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


# ---------------------------------------------------------------- the import graph, read from the source
def test_no_runtime_module_imports_the_application_layer():
    modules = module_files()
    runtime = [name for name in modules if not name.startswith(APP_PREFIX) and name != ENTRY_POINT]
    assert "edgerun.session" in runtime and "edgerun.cli.main" not in runtime
    offenders = [(name, target, line) for name in runtime
                 for target, line, _ in imports_of(name, modules) if target.startswith(APP_PREFIX)]
    assert offenders == []
    users_of_models = sorted({name for name in modules for target, _, _ in imports_of(name, modules)
                              if target == "edgerun.models"})
    assert users_of_models and all(name.startswith(APP_PREFIX) for name in users_of_models), users_of_models


def test_the_scheduler_imports_nothing_of_edgerun():
    graph = import_graph()
    assert "scheduler.search" in graph
    assert {(name, target) for name, targets in graph.items() if name.startswith("scheduler")
            for target in targets if not target.startswith("scheduler")} == set()


def test_the_bundle_format_knows_only_the_ir_and_the_errors():
    graph = import_graph()
    assert graph["edgerun.bundle_format"] == {"edgerun.ir", "edgerun.errors"}


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert cycles(graph) == []


def test_function_level_imports_are_only_optional_dependencies_and_the_known_ones():
    modules = module_files()
    local_tree_imports = {(name, target) for name in modules for target, _, top in imports_of(name, modules)
                          if not top}
    assert local_tree_imports <= KNOWN_LOCAL_IMPORTS, local_tree_imports - KNOWN_LOCAL_IMPORTS
    other = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                root = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                if root not in ("edgerun", "scheduler", "") and root not in OPTIONAL_DEPENDENCIES:
                    other.append((name, root, node.lineno))
    assert other == []


def test_the_graph_reader_sees_function_level_imports():
    """The reader the checks above rely on finds module-level and function-level imports it must find."""
    modules = module_files()
    found = {(target, top) for target, _, top in imports_of("edgerun.cli.main", modules)}
    assert ("edgerun.session", True) in found and ("edgerun.cli.plot", True) in found
    local = {(target, top) for target, _, top in imports_of("edgerun.zoo.mobilenet_v2", modules)}
    assert ("edgerun.zoo.pth", False) in local
