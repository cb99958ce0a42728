"""The activation table (edgerun/kernels/activations.py) against everything derived from it: the C enum in
kernels.h (parsed from the header text), every switch and kind name in the C sources, the op registry,
the fusion pass, and the native kernel (each kind's code runs the kind's own formula)."""
import re
from pathlib import Path

import numpy as np
import pytest

from edgerun import ops
from edgerun.ir import Graph, Node
from edgerun.kernels import activations
from edgerun.kernels.activations import ACTIVATION_KINDS, KINDS, TABLE, Activation
from edgerun.kernels.numpy_steps import ActivationKernel
from edgerun.passes.fuse_activation import activation_of

NATIVE = Path(activations.__file__).with_name("native")
C_SOURCES = sorted(NATIVE.glob("*.c")) + sorted(NATIVE.glob("*.h"))


def header_enum() -> list[str]:
    """The enumerators of `enum er_activation`, in order, parsed from kernels.h."""
    text = (NATIVE / "kernels.h").read_text()
    body = re.search(r"enum\s+er_activation\s*\{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = [item.strip() for item in body.split(",") if item.strip()]
    assert all(re.fullmatch(r"ER_ACT_\w+", n) for n in names), f"explicit values or junk in the enum: {names}"
    return names


def test_c_enum_lists_the_table_in_order():
    assert header_enum() == [kind.c_name for kind in TABLE] + ["ER_ACT_COUNT"]
    assert [kind.code for kind in TABLE] == list(range(len(TABLE)))


def test_generated_block_of_kernels_h_is_current():
    assert activations.generated_block((NATIVE / "kernels.h").read_text()) == activations.c_enum(), (
        f"kernels.h is stale: run {activations.REGENERATE}")


def test_write_header_rewrites_only_the_generated_block(tmp_path):
    original = (NATIVE / "kernels.h").read_text()
    stale = original.replace("ER_ACT_SIGMOID,", "ER_ACT_SIGMOIDX,")
    copy = tmp_path / "kernels.h"
    copy.write_text(stale)
    assert activations.write_header(copy) is True
    assert copy.read_text() == original
    assert activations.write_header(copy) is False


def switch_cases(source: str, function: str) -> list[str]:
    body = re.search(function + r"\s*\([^)]*\)\s*\{(.*?)\n\}", source, re.S).group(1)
    return re.findall(r"case\s+(ER_ACT_\w+)\s*:", body)


def test_native_switch_handles_every_kind_once():
    cases = switch_cases((NATIVE / "activation.c").read_text(), "void er_apply_activation")
    assert sorted(cases) == sorted(kind.c_name for kind in TABLE if kind.name)


def test_c_sources_name_only_kinds_of_the_table():
    known = set(header_enum())
    for path in C_SOURCES:
        used = set(re.findall(r"\bER_ACT_\w+", path.read_text()))
        assert used <= known, f"{path.name} names {sorted(used - known)}"
        for function in re.findall(r"switch\s*\(\s*\w+->kind\s*\)", path.read_text()):
            assert path.name == "activation.c", f"{path.name} switches over activation kinds: {function}"


def test_python_sides_derive_from_the_table():
    from edgerun import kernels
    assert kernels.ACTIVATION_KINDS == ACTIVATION_KINDS == tuple(kind.name for kind in TABLE)
    assert kernels.Activation is Activation
    assert kernels._PARAM_COUNTS == {kind.name: len(kind.params) for kind in TABLE}
    for kind in TABLE:
        assert len(kind.params) <= activations.NATIVE_PARAMS
        if not kind.op_type:
            continue
        op = ops.definition(kind.op_type)
        assert op is not None, f"{kind.op_type} is not registered"
        assert isinstance(op.step, ActivationKernel) and op.step.kind is kind


@pytest.mark.parametrize("kind", [k for k in TABLE if k.op_type and not k.params_from_inputs],
                         ids=lambda k: k.name)
def test_fusion_reads_attributes_and_defaults_from_the_table(kind):
    graph = Graph([], [], [], {}, 13, "g", {})
    custom = {name: default + 0.25 for name, default in kind.params}
    assert activation_of(graph, Node(kind.op_type, ["x"], ["y"], {}, "a")) == (
        kind.name, [float(d) for _, d in kind.params])
    assert activation_of(graph, Node(kind.op_type, ["x"], ["y"], custom, "a")) == (
        kind.name, [custom[name] for name, _ in kind.params])


def test_activation_rejects_unknown_kinds_and_wrong_parameter_counts():
    from edgerun.errors import EdgerunError
    with pytest.raises(EdgerunError, match="unknown activation"):
        Activation("swish")
    for kind in TABLE:
        with pytest.raises(EdgerunError, match=f"takes {len(kind.params)} params"):
            Activation(kind.name, (0.5,) * (len(kind.params) + 1))


def sample_params(kind):
    return {"clip": (-0.5, 0.75)}.get(kind.name, tuple(default + 0.1 for _, default in kind.params))


@pytest.mark.parametrize("kind", TABLE, ids=lambda k: k.name or "none")
def test_each_code_runs_its_own_formula_in_c(rng, kind):
    """A swapped enum (Python code k, C code k') would apply another formula: the native result of each
    code must match the reference of the same table row."""
    from edgerun.kernels import native, native_available
    if not native_available():
        pytest.skip("the native kernels are not built")
    params = sample_params(kind)
    x = (rng.standard_normal((4, 5, 7)) * 3).astype(np.float32)
    w = np.zeros((4, 3, 3), np.float32)
    w[:, 1, 1] = 1.0          # an identity depthwise conv: the result is act(x)
    out = np.empty_like(x)
    native.depthwise_conv(x, w, np.zeros(4, np.float32), out, 1, (1, 1, 1, 1), Activation(kind.name, params))
    np.testing.assert_allclose(out, kind.reference(x.astype(np.float64), *params), rtol=2e-6, atol=2e-6)
