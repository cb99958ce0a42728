# Official ONNX backend tests through edgerun (onnx 1.23.2, default-domain opset up to 28):
#   366 ONNX cases pass, 89 are excluded (each exclusion group below names its reason); 0 fail.
# Reproduce: .venv/bin/python -m pytest -q tests/test_onnx_backend.py -p no:warnings
#   -> "425 passed": the 366 cases + 59 checks of this file (counts, exclusions, opset rule); cases of
#   operators edgerun does not implement are not generated, the 89 exclusions are run by a check that
#   they still fail the stated way.
#   PASSED_COUNT / EXCLUDED_COUNT below are asserted by test_stated_counts_match_the_selection.
"""The official ONNX backend tests (shipped with the onnx package) run against edgerun.

Included: the node tests of the operators edgerun implements (SUPPORTED_OP_PREFIXES), the function
expansions of other operators whose bodies use only implemented operators (EXPANDED_FUNCTIONS) and a few
named model tests (EXTRA_CASES). Models at opsets 22+ run when their operators only gained types since
opset 21 (edgerun.loader._check_newer_opset). Every excluded case is listed in EXCLUDED with its reason.
Expected outputs come from onnx's reference implementation, an oracle independent of edgerun.
"""
import inspect
import re

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx import helper

from edgerun import loader
from edgerun.backend import EdgerunBackend
from edgerun.errors import InvalidModelError, ModelLoadError, UnsupportedOperatorError

PASSED_COUNT = 366
EXCLUDED_COUNT = 89

SUPPORTED_OP_PREFIXES = [
    "conv", "convtranspose", "basic_conv", "batchnorm", "relu", "clip", "leakyrelu", "hardsigmoid",
    "hardswish", "sigmoid", "tanh", "add", "sub", "mul", "div", "pow", "sqrt", "sum", "matmul", "gemm",
    "globalaveragepool", "averagepool", "maxpool", "reduce_mean", "flatten", "reshape", "transpose",
    "concat", "split", "slice", "squeeze", "unsqueeze", "shape", "gather", "cast", "constant",
    "constantofshape", "pad", "edge_pad", "reflect_pad", "wrap_pad", "resize", "softmax", "lrn",
    "identity", "dropout",
]

# Operators edgerun does not implement, whose ONNX function bodies (the `_expanded` cases) use only
# operators it does.
EXPANDED_FUNCTIONS = [
    "mvn", "group_normalization", "depthtospace", "spacetodepth", "rotary_embedding", "causal_conv_with_state",
]

# Model tests (not node tests) whose operators and opset edgerun supports.
EXTRA_CASES = [
    "test_MaxPool1d_stride_padding_dilation", "test_MaxPool2d_stride_padding_dilation", "test_PixelShuffle",
    "test_single_relu_model",
]

# group -> (name patterns, the error each excluded case must raise, a regex its message must match).
# test_every_exclusion_is_needed runs every excluded case and checks that it still fails this way.
EXCLUDED_GROUPS = {
    # Cast to bfloat16, the float8 family, float4e2m1 and the 4-/2-bit integers: Cast's `to` accepts only
    # numpy-native types (their rounding and saturation rules are not implemented). Casts *from* those
    # types run (numpy computes them through ml_dtypes; the values are exact in float32) and stay included.
    "Cast to a non-numpy element type": ([
        r"^test_cast_(FLOAT|FLOAT16)_to_(BFLOAT16|FLOAT8E4M3FN(UZ)?|FLOAT8E5M2(FNUZ)?|FLOAT4E2M1|U?INT4|U?INT2)_cpu$",
        r"^test_cast_no_saturate_(FLOAT|FLOAT16)_to_FLOAT8\w+_cpu$",
        r"^test_cast_e8m0_(FLOAT|FLOAT16)_to_FLOAT8E8M0_cpu$",
    ], InvalidModelError, r"Cast.*attribute 'to'=\d+ is not a supported dtype"),
    # BatchNormalization with training_mode=1 (batch statistics, running-mean outputs): edgerun runs
    # inference only.
    "training-mode BatchNormalization": ([r"^test_batchnorm_\w+_training_mode_cpu$"],
                                         InvalidModelError, "training_mode=1 is not supported"),
    # Function expansions whose bodies use operators edgerun does not implement.
    "expansion uses ReduceMax": ([r"^test_softmax_\w+_expanded(_ver18)?_cpu$"],
                                 UnsupportedOperatorError, "'ReduceMax'"),
    "expansion uses Less and Where": (
        [r"^test_clip_((default_(int8_)?(max|min)|example|inbounds|min_greater_than_max|outbounds|splitbounds)_)?"
         r"expanded_cpu$"], UnsupportedOperatorError, "'Less'"),
    "expansion uses CastLike, Less and Where": ([r"^test_leakyrelu_\w*expanded_cpu$"],
                                                UnsupportedOperatorError, "'CastLike'"),
    "expansion uses CastLike, Max and Min": ([r"^test_hardsigmoid_\w*expanded_ver18_cpu$",
                                              r"^test_relu_expanded_ver18_cpu$"],
                                             UnsupportedOperatorError, "'CastLike'"),
    "expansion uses CastLike": ([
        r"^test_causal_conv_with_state_(b1_c1_degenerate|basic|fp16|kernel_size_one|short_input_no_past_state"
        r"|silu|silu_fp16|silu_with_past_state|swish_alias|with_bias)_expanded_cpu$",
    ], UnsupportedOperatorError, "'CastLike'"),
    # Names that share a supported prefix but test another operator edgerun does not implement.
    "GatherElements not implemented": ([r"^test_gather_elements_\w+_cpu$"],
                                       UnsupportedOperatorError, "'GatherElements'"),
    "SplitToSequence not implemented": ([r"^test_split_to_sequence_\w+_cpu$"],
                                        UnsupportedOperatorError, "'SplitToSequence'"),
    # Graph inputs of optional / sequence type: edgerun's graphs carry tensors only.
    "optional and sequence graph inputs": ([r"^test_identity_opt_cpu$", r"^test_identity_sequence_cpu$"],
                                           ModelLoadError, "is not a tensor"),
    # Zero-sized tensors: edgerun runs no empty inputs, and refuses a graph input declared with a 0 dimension
    # when loading. Here the empty tensor is a graph input: the empty `axes` of ReduceMean (the op itself
    # reduces over all axes for a constant empty `axes`), an empty Split input, a Reshape input with a 0 dimension.
    "zero-sized graph inputs": ([r"^test_reduce_mean_default_axes_keepdims_(example|random)_cpu$",
                                 r"^test_split_zero_size_splits_opset1[38]_cpu$",
                                 r"^test_reshape_allowzero_reordered_cpu$"],
                                ModelLoadError, r"graph input .* is declared as 0 .* edgerun runs no empty inputs"),
    # Resize, align_corners, downsampling by a scale: the spec defines length_resized as the length of the
    # resized axis (floor(length * scale)); onnx's reference uses the unrounded length * scale. edgerun
    # follows the spec and agrees with onnxruntime 1.32 ([1, 4] for the linear case, where onnx expects
    # [1, 3.142857]).
    "Resize align_corners reference differs from the spec and onnxruntime": (
        [r"^test_resize_downsample_scales_(linear|cubic)_align_corners_cpu$"],
        AssertionError, "Mismatched elements"),
    # PyTorch-converted models declaring opset 6, below edgerun's minimum opset 7.
    "opset 6 models": ([r"^test_softmax_lastdim_cpu$", r"^test_softmax_functional_dim3_cpu$"],
                       ModelLoadError, "opset 6"),
}
EXCLUDED = [pattern for patterns, _, _ in EXCLUDED_GROUPS.values() for pattern in patterns]

INCLUDED = ([rf"^test_{prefix}_.*_cpu$" for prefix in SUPPORTED_OP_PREFIXES]
            + [rf"^test_{prefix}_cpu$" for prefix in SUPPORTED_OP_PREFIXES]
            + [rf"^test_{name}_(\w+_)?expanded(_ver\d+)?_cpu$" for name in EXPANDED_FUNCTIONS]
            + [rf"^{name}_cpu$" for name in EXTRA_CASES])

backend_test = onnx.backend.test.BackendTest(EdgerunBackend, __name__)
for pattern in INCLUDED:
    backend_test.include(pattern)
for pattern in EXCLUDED:
    backend_test.exclude(pattern)



def _case_names():
    """Every CPU case name of the suite (node, model and PyTorch tests)."""
    return [name for items in backend_test._test_items.values() for name in items if name.endswith("_cpu")]


def _selected(names, patterns):
    compiled = [re.compile(p) for p in patterns]
    return {n for n in names if any(c.search(n) for c in compiled)}


def _only_selected_cases(test_cases):
    """BackendTest turns every case it does not run into a skipped test; drop those, so that pytest reports
    exactly the cases that run (the excluded ones are checked by test_every_exclusion_is_needed)."""
    names = _case_names()
    keep = _selected(names, INCLUDED) - _selected(names, EXCLUDED)
    for case_class in test_cases.values():
        for attribute in list(vars(case_class)):
            if attribute.startswith("test_") and attribute not in keep:
                delattr(case_class, attribute)
    return test_cases


globals().update(_only_selected_cases(backend_test.enable_report().test_cases))


def test_stated_counts_match_the_selection():
    names = _case_names()
    included = _selected(names, INCLUDED)
    excluded = included & _selected(names, EXCLUDED)
    assert (len(included) - len(excluded), len(excluded)) == (PASSED_COUNT, EXCLUDED_COUNT)


@pytest.mark.parametrize("group", sorted(EXCLUDED_GROUPS))
def test_every_exclusion_is_needed(group):
    """Each pattern excludes some included case, and each excluded case still fails for the stated reason
    (a stale pattern, or a case fixed since, must go)."""
    patterns, error, message = EXCLUDED_GROUPS[group]
    items = {name: item for items in backend_test._test_items.values() for name, item in items.items()}
    included = _selected(items, INCLUDED)
    for pattern in patterns:
        cases = sorted(_selected(included, [pattern]))
        assert cases, f"{group}: {pattern} matches no included case"
        for name in cases:
            run_case = inspect.unwrap(items[name].func)  # the runner's own function, under the skip
            with pytest.raises(error, match=message):
                run_case(None, "CPU")


def _schema_signature(schema, ignore_attrs=()):
    attrs = {name: (a.type, a.required, a.default_value.SerializeToString())
             for name, a in schema.attributes.items() if name not in ignore_attrs}
    params = [(p.name, p.option, p.type_str, p.is_homogeneous, p.min_arity)
              for p in list(schema.inputs) + list(schema.outputs)]
    bounds = (schema.min_input, schema.max_input, schema.min_output, schema.max_output)
    return attrs, params, bounds


@pytest.mark.parametrize("op_type,version", sorted(loader._TYPE_ONLY_REVISIONS))
def test_type_only_revisions_only_add_types(op_type, version):
    """Each revision the loader accepts past opset 21 keeps inputs, outputs and attributes, and only widens
    the allowed types (Cast 24 adds round_mode, which applies only to casts to float8e8m0)."""
    new = onnx.defs.get_schema(op_type, max_inclusive_version=version, domain="")
    old = onnx.defs.get_schema(op_type, max_inclusive_version=version - 1, domain="")
    assert new.since_version == version and old.since_version < version
    ignore = ("round_mode",) if (op_type, version) == ("Cast", 24) else ()
    assert _schema_signature(new, ignore) == _schema_signature(old)
    old_types = {t.type_param_str: set(t.allowed_type_strs) for t in old.type_constraints}
    new_types = {t.type_param_str: set(t.allowed_type_strs) for t in new.type_constraints}
    assert old_types.keys() == new_types.keys()
    assert all(old_types[k] <= new_types[k] for k in old_types)
    assert any(old_types[k] < new_types[k] for k in old_types)


def _conv_model(opset):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 3, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 3, 3])
    w = onnx.numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="the_conv")
    graph = helper.make_graph([node], "g", [x], [y], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_newer_opset_runs_an_operator_that_only_gained_types():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    (y,) = EdgerunBackend.prepare(_conv_model(22)).run([x])
    np.testing.assert_array_equal(y, 2 * x)


def test_newer_opset_refuses_a_changed_operator(monkeypatch):
    """Without its entry, Conv-22 counts as a changed operator: the error names node, op and both opsets."""
    revisions = {k: v for k, v in loader._TYPE_ONLY_REVISIONS.items() if k != ("Conv", 22)}
    monkeypatch.setattr(loader, "_TYPE_ONLY_REVISIONS", revisions)
    with pytest.raises(ModelLoadError, match=r"node 'the_conv': operator 'Conv' changed in opset 22 .* opset 25"):
        loader.load_model(_conv_model(25))
    assert loader.load_model(_conv_model(21)).opset == 21


def test_opset_newer_than_onnx_knows_is_refused():
    opset = onnx.defs.onnx_opset_version() + 1
    with pytest.raises(ModelLoadError, match=f"opset {opset}"):
        loader.load_model(_conv_model(opset))
