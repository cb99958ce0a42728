"""The C program of a bundle: every step as the C runtime (runtime/edgerun.c) runs it.

The Python session derives every kernel argument (block bands, chunk sizes, thread split, scratch offsets,
packed weight layouts) from the plan; each kernel says what it hands its C kernel (StepKernel.c_arguments),
and this module writes exactly those arguments down, step by step, in a
small binary blob, so that the C runtime needs neither a JSON reader nor its own copy of the planning
rules and computes the same bits. Weight layouts the kernels read that the graph does not store (transposed
block weights, packed 1x1 panels) are added to the weights section, with copies of the small arrays; large arrays already in the kernels'
layout (a classifier's weight) are referenced in place.
A step the C kernels do not cover is written as UNSUPPORTED with its name and op: the C runtime refuses the
bundle at open, naming it.

Layout (little-endian; docs/bundle-format.md, "C program"): the blob is the last entry of the weights
section, a multiple of 64 bytes, so it ends where the file ends; its last 32 bytes are the trailer
(checksum of the blob before the trailer, blob length, weights checksum, magic "ERPROGND").
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from edgerun.errors import InvalidOptionError
from edgerun.kernels import native
from scheduler.blocks import chunk_channels

PROGRAM_MAGIC = b"ERCPROG\0"
TRAILER_MAGIC = b"ERPROGND"
PROGRAM_VERSION = 1
TRAILER = struct.Struct("<QQQ8s")

# opcodes (the enum at the top of runtime/edgerun.c; OP_IM2COL is read but no longer written)
(OP_UNSUPPORTED, OP_BLOCK, OP_POINTWISE, OP_IM2COL, OP_DEPTHWISE, OP_GAP, OP_GEMV, OP_POOL, OP_COPY,
 OP_TRANSPOSE, OP_CONCAT, OP_ADD, OP_RELU, OP_CONV, OP_SQUEEZE_EXCITE, OP_SHUFFLE, OP_BINARY,
 OP_ACTIVATION, OP_SEGMENT) = range(19)
# tensor reference regions
REGION_NONE, REGION_ARENA, REGION_WEIGHTS, REGION_INPUT = range(4)
# Graph arrays of at least this size that already have the kernels' layout are read in place; smaller ones
# (biases, depthwise taps) are copied beside the other C layouts, so that the pages the C runtime reads are
# contiguous (reading small arrays scattered between the ones only Python reads would map their neighbours
# too: the kernel maps up to 64 KB around each page fault).
IN_PLACE_MIN_BYTES = 256 * 1024
NO_REF = (REGION_NONE, 0, 0, 0)


def word_checksum(data) -> int:
    """sum of word[i] * (2 i + 1) mod 2**64 over the little-endian 64-bit words of `data` (a multiple of
    8 bytes): any single changed word changes it (the factors are odd), cheap in numpy and in C."""
    words = np.frombuffer(data, dtype="<u8")
    factors = np.arange(1, 2 * len(words) + 1, 2, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum(words * factors, dtype=np.uint64))


class _TableSpot(NamedTuple):
    """A weight reference's place: bytes `delta` into table entry `index`, whose offset in the weights
    section is known only once the section is ordered (add_c_program)."""
    index: int
    delta: int


class _Writer:
    def __init__(self):
        self.parts: list[bytes] = []

    def u32(self, value: int) -> None:
        self.parts.append(struct.pack("<I", value))

    def u64(self, value: int) -> None:
        self.parts.append(struct.pack("<Q", value))

    def text(self, value: str) -> None:
        data = value.encode("utf-8")
        self.u32(len(data))
        self.parts.append(data)

    def ints(self, values) -> None:
        values = [int(v) for v in values]
        self.u32(len(values))
        self.parts.append(struct.pack(f"<{len(values)}q", *values))

    def floats(self, values) -> None:
        values = [float(v) for v in values]
        self.u32(len(values))
        self.parts.append(struct.pack(f"<{len(values)}f", *values))

    def ref(self, ref, entries=()) -> None:
        region, index, offset, count = ref
        if isinstance(offset, _TableSpot):
            offset = entries[offset.index]["offset"] + offset.delta
        self.parts.append(struct.pack("<IIQQ", region, index, offset, count))

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _Unsupported(Exception):
    """The step has no C kernel (the reason names what is missing)."""


class ProgramBuilder:
    """Builds the blob from a CompiledModel whose arrays are (or will be) in `tensors` (a TensorTable)."""

    def __init__(self, compiled, tensors, target: str | None = None):
        self.tiles = target_tiles(target)
        self.compiled = compiled
        self.tensors = tensors
        self.plan = compiled.plan
        self.inputs = [v.name for v in compiled.graph.inputs]
        self.steps: list[tuple] = []   # (opcode, name, op, ints, refs, floats)
        self._copies: dict = {}        # (address, bytes) of an array -> its copy's _TableSpot
        self.reasons: dict[str, str] = {}   # step -> why it has no C kernel

    # ---- references
    def _weights_ref(self, array, name: str, in_place: bool = False):
        array = np.asarray(array)
        if array.dtype != np.float32:
            raise _Unsupported(f"weight {name!r} is {array.dtype}, the C kernels read float32")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        key = (array.ctypes.data, array.nbytes)
        found = self._copies.get(key)
        if found is None and (in_place or array.nbytes >= IN_PLACE_MIN_BYTES):
            found = self._in_table(array)
        if found is None:   # a copy: the table would return an array it holds already (in place) as is
            found = _TableSpot(self.tensors.add(f"c:{name}", np.array(array, copy=True)), 0)
            self._copies[key] = found
        return (REGION_WEIGHTS, 0, found, int(array.size))

    def _in_table(self, array):
        """Where in the table `array`'s bytes are when an array already in the table holds them."""
        start, size = array.ctypes.data, array.nbytes
        for index, original in enumerate(self.tensors._originals):
            stored = np.asarray(original)
            if stored.dtype != np.float32 or not stored.flags.c_contiguous:
                continue
            base = stored.ctypes.data
            if base <= start and start + size <= base + stored.nbytes and (start - base) % 4 == 0:
                return _TableSpot(index, start - base)
        return None

    def table_entries_read(self) -> set[int]:
        """The weights-table entries the program reads."""
        return {ref[2].index for *_, refs, _ in self.steps for ref in refs if isinstance(ref[2], _TableSpot)}

    def _value_ref(self, name: str, image: int | None = None):
        """An activation, graph input or constant by value name; `image` selects one image of the batch."""
        info = self.compiled.graph.value_info[name]
        if np.dtype(info.dtype) != np.float32:
            raise _Unsupported(f"value {name!r} is {np.dtype(info.dtype).name}, the C kernels run float32")
        count = int(np.prod(info.shape, dtype=np.int64))
        offset = 0
        if image is not None:
            count //= info.shape[0]
            offset = image * count * 4
        if name in self.compiled.aliases:   # a Concat input written inside its output (edgerun/concat_alias.py)
            host, inside = self.compiled.aliases[name]
            return (REGION_ARENA, 0, self.plan.offsets[host] + inside + offset, count)
        if name in self.compiled.activations:
            return (REGION_ARENA, 0, self.plan.offsets[name] + offset, count)
        if name in self.inputs:
            return (REGION_INPUT, self.inputs.index(name), offset, count)
        if name in self.compiled.constants:
            array = np.asarray(self.compiled.constants[name]).reshape(-1)
            return self._weights_ref(array[offset // 4: offset // 4 + count], name)
        raise _Unsupported(f"value {name!r} is neither an activation, an input nor a constant")

    @staticmethod
    def _slice(ref, first: int, count: int):
        region, index, offset, _ = ref
        return (region, index, offset + 4 * first, count)

    def _scratch_ref(self, step, key: str, floats: int):
        offset = self.plan.step(step.node.name).scratch_offsets[key]
        return (REGION_ARENA, 0, offset, floats)

    def _emit(self, opcode, step, ints=(), refs=(), floats=()):
        self.steps.append((opcode, step.node.name, step.node.op_type, list(ints), list(refs), list(floats)))

    # ---- steps
    def add_steps(self) -> None:
        for step in self.compiled.steps:
            mark = len(self.steps)
            try:
                self._add_step(step)
            except _Unsupported as why:
                del self.steps[mark:]
                self.steps.append((OP_UNSUPPORTED, step.node.name, step.node.op_type, [], [], []))
                self.reasons[step.node.name] = str(why)

    def _add_step(self, step) -> None:
        if self.compiled.backend != "native":
            raise _Unsupported(f"the plan is for the {self.compiled.backend} kernels")
        if step.kind == "block":
            return self._block(step)
        if step.kind == "segment":
            return self._segment(step)
        if step.kind != "kernel":
            raise _Unsupported("it runs on the reference implementation")
        handler = getattr(self, "_kernel_" + type(step.kernel).__name__, None)
        if handler is None:
            raise _Unsupported(f"{type(step.kernel).__name__} has no C counterpart")
        handler(step)

    def _segment(self, step) -> None:
        """A streamed segment: the runner's tables as they are (their arena offsets are the segment
        scratch's), the params among the weights; one step per image."""
        node = step.node
        args = step.kernel.c_arguments()
        if args is None:
            members = ", ".join(getattr(step.kernel, "numpy_members", [])) or "some rows"
            raise _Unsupported(f"part of this streamed segment runs on the numpy row kernels ({members})")
        tensors, steps, calls = args["tensors"], args["steps"], args["calls"]
        ints = [step.kernel.threads, len(tensors), len(steps), len(calls), int(args["gap_scale"] is not None),
                *tensors.reshape(-1).tolist(), *steps.reshape(-1).tolist(), *calls.reshape(-1).tolist()]
        params = self._weights_ref(args["params"], f"{node.name}/params")
        arena = self._scratch_ref(step, "segment", step.kernel.arena_bytes // 4)   # the plan's, checked at bind
        for n in range(self._shape(node.inputs[0])[0]):
            self._emit(OP_SEGMENT, step, ints,
                       [self._value_ref(node.inputs[0], n), self._value_ref(node.outputs[0], n), arena, params],
                       [args["gap_scale"] or 0.0])

    def _shape(self, name):
        return tuple(self.compiled.graph.value_info[name].shape)

    def _block(self, step) -> None:
        geom, weights, contract = step.geometry, step.weights, step.contract
        x_name, out_name = step.node.inputs[0], step.node.outputs[0]
        split = native._split_tuple(contract)
        bands = native._band_table(geom, contract)
        g = native._geometry_tuple(geom)
        geometry = [*g[:6], *g[6], g[7], g[8], *g[9], g[10], int(g[11]), *g[12]]
        act_e, act_d = native._act(weights.expand_act), native._act(weights.dw_act)
        ints = [*geometry, chunk_channels(geom, contract.schedule.t), *split, act_e[0], act_d[0],
                len(bands), *bands.reshape(-1).tolist()]
        floats = [act_e[1], act_e[2], act_d[1], act_d[2]]
        sizes = contract.scratch_bytes()
        name = step.node.name
        has_expand = weights.we is not None
        plain = geom.expand_kernel == 1 and geom.expand_stride == 1 and not any(geom.expand_pads)

        def wref(array, key):
            # a plain 1x1 expansion reads `we_t`, not `we` (block.c): its `we` stays in place, unread
            return NO_REF if array is None else self._weights_ref(array, f"{name}/{key}",
                                                                  in_place=key == "we" and plain)
        for n in range(self._shape(x_name)[0]):
            refs = [self._value_ref(x_name, n), self._value_ref(out_name, n),
                    wref(weights.we if has_expand else None, "we"), wref(weights.we_t if has_expand else None, "we_t"),
                    wref(weights.be if has_expand else None, "be"), wref(weights.wd, "wd"), wref(weights.bd, "bd"),
                    wref(weights.wp_t, "wp_t"), wref(weights.bp, "bp"),
                    self._scratch_ref(step, "expanded", sizes["expanded"] // 4) if "expanded" in sizes else NO_REF,
                    self._scratch_ref(step, "depthwise", sizes["depthwise"] // 4)]
            self._emit(OP_BLOCK, step, ints, refs, floats)

    def _c_arguments(self, step) -> dict:
        """The kernel's own account of what it hands the C kernels (StepKernel.c_arguments)."""
        node = step.node
        shapes = [[self._shape(n) if n else () for n in names] for names in (node.inputs, node.outputs)]
        arguments = step.kernel.c_arguments(node, self.compiled.constants, *shapes)
        if arguments is None:
            raise _Unsupported(f"this {node.op_type} runs on the numpy kernel")
        return arguments

    def _kernel_NativeFusedConvKernel(self, step) -> None:
        node, kernel = step.node, step.kernel
        args = self._c_arguments(step)
        x_name, y_name = node.inputs[0], node.outputs[0]
        xs, ys = self._shape(x_name), self._shape(y_name)
        kind, layout = args["kind"], args["weights"]
        code, a, b = native._act(args["act"])
        bias = self._value_ref(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else \
            self._weights_ref(args["zero_bias"], f"{node.name}/zero_bias")
        threads = kernel.threads
        wref = self._weights_ref(layout, f"{node.name}/w")
        for n in range(xs[0]):
            x, y = self._value_ref(x_name, n), self._value_ref(y_name, n)
            if kind == "depthwise":
                stride = node.attrs.get("strides", [1, 1])[0]
                pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
                self._emit(OP_DEPTHWISE, step, [xs[1], xs[2], xs[3], layout.shape[-1], stride, *pads, code, threads],
                           [x, wref, bias, y], [a, b])
            elif kind == "conv":
                geometry = args["geometry"]
                flat = [*geometry[:11], *geometry[11], *geometry[12:]]
                has_sum = len(node.inputs) > 3 and node.inputs[3]
                total = self._scratch_bytes(step)["cols"] // 4
                self._emit(OP_CONV, step, [*flat, code, threads],
                           [x, wref, bias, self._value_ref(node.inputs[3], n) if has_sum else NO_REF, y,
                            self._scratch_ref(step, "cols", total)], [a, b])
            elif kind == "pointwise":
                if n == 0 and self.tiles != host_tiles():   # packed for the target's panels instead
                    w = np.asarray(self.compiled.constants[node.inputs[1]], np.float32).reshape(ys[1], -1)
                    wref = self._weights_ref(pack_panels(w, self.tiles[0]), f"{node.name}/w")
                sizes = self._scratch_bytes(step)
                edge = self._scratch_ref(step, "edge", sizes["edge"] // 4) if "edge" in sizes else NO_REF
                self._emit(OP_POINTWISE, step, [ys[1], ys[2] * ys[3], xs[1], code, threads],
                           [x, wref, bias, y, edge], [a, b])
            else:
                raise _Unsupported(f"the {kind!r} convolution has no C step")

    def _scratch_bytes(self, step) -> dict:
        node = step.node
        return step.kernel.scratch_bytes(node, [self._shape(n) if n else () for n in node.inputs],
                                         [self._shape(n) for n in node.outputs])

    def _kernel_NativeGlobalAveragePoolKernel(self, step) -> None:
        xs = self._shape(step.node.inputs[0])
        if len(xs) != 4:
            raise _Unsupported("a GlobalAveragePool of rank other than 4 runs on the numpy kernel")
        for n in range(xs[0]):
            self._emit(OP_GAP, step, [xs[1], xs[2] * xs[3], step.kernel.threads],
                       [self._value_ref(step.node.inputs[0], n), self._value_ref(step.node.outputs[0], n)])

    def _kernel_NativeGemmKernel(self, step) -> None:
        node, kernel = step.node, step.kernel
        a_name, y_name = node.inputs[0], node.outputs[0]
        weight = self._c_arguments(step)["weight"]
        rows, k = weight.shape
        bias = NO_REF
        if len(node.inputs) > 2 and node.inputs[2] and node.attrs.get("beta", 1.0) != 0.0:
            c_shape = self._shape(node.inputs[2])
            if node.attrs.get("beta", 1.0) != 1.0 or c_shape not in ((rows,), (1, rows)):
                raise _Unsupported("this Gemm's C is not a vector it adds once")
            bias = self._value_ref(node.inputs[2])
        wref = self._weights_ref(weight, f"{node.name}/w")
        for n in range(self._shape(a_name)[0]):
            self._emit(OP_GEMV, step, [rows, k, kernel.threads],
                       [wref, self._value_ref(a_name, n), bias, self._value_ref(y_name, n)])

    def _kernel_NativeSqueezeExciteKernel(self, step) -> None:
        node, kernel = step.node, step.kernel
        args = self._c_arguments(step)
        xs = self._shape(node.inputs[0])
        channels, squeeze = xs[1], args["w1"].shape[0]
        pixels = int(np.prod(xs[2:], dtype=np.int64))
        (code1, a1, b1), (code2, a2, b2) = (native._act(act) for act in args["acts"])
        w1 = self._weights_ref(args["w1"], f"{node.name}/w1")
        w2 = self._weights_ref(args["w2"], f"{node.name}/w2")
        scratch = self._scratch_ref(step, "se", self._scratch_bytes(step)["se"] // 4)
        for n in range(xs[0]):
            self._emit(OP_SQUEEZE_EXCITE, step, [channels, pixels, squeeze, code1, code2, kernel.threads],
                       [self._value_ref(node.inputs[0], n), self._value_ref(node.outputs[0], n), w1,
                        self._value_ref(node.inputs[2]), w2, self._value_ref(node.inputs[4]), scratch],
                       [a1, b1, a2, b2])

    def _kernel_NativeChannelShuffleKernel(self, step) -> None:
        node = step.node
        groups = self._c_arguments(step)["groups"]
        xs = self._shape(node.inputs[0])
        pixels = int(np.prod(xs[2:], dtype=np.int64))
        for n in range(xs[0]):
            self._emit(OP_SHUFFLE, step, [xs[1], pixels, groups, step.kernel.threads],
                       [self._value_ref(node.inputs[0], n), self._value_ref(node.outputs[0], n)])

    def _kernel_NativeBinaryKernel(self, step) -> None:
        kind = self._c_arguments(step)["kind"]
        names = (*step.node.inputs[:2], step.node.outputs[0])
        self._emit(OP_BINARY, step, [kind, step.kernel.threads], [self._value_ref(n) for n in names])

    _kernel_NativeSumKernel = _kernel_NativeBinaryKernel

    def _kernel_NativeActivationKernel(self, step) -> None:
        code, a, b = native._act(self._c_arguments(step)["act"])
        self._emit(OP_ACTIVATION, step, [code, step.kernel.threads],
                   [self._value_ref(step.node.inputs[0]), self._value_ref(step.node.outputs[0])], [a, b])

    def _kernel_NativePoolKernel(self, step) -> None:
        node, kernel = step.node, step.kernel
        xs, ys = self._shape(node.inputs[0]), self._shape(node.outputs[0])
        if len(xs) != 4:
            raise _Unsupported("a pool of rank other than 4 runs on the numpy kernel")
        (kh, kw), strides, dilations, pads = kernel.fallback.geometry(node, xs, ys)
        top, left, bottom, right = pads
        if (list(dilations) != [1, 1] or max(top, bottom) >= kh or max(left, right) >= kw
                or (ys[2] - 1) * strides[0] >= xs[2] + top or (ys[3] - 1) * strides[1] >= xs[3] + left):
            raise _Unsupported("this pool runs on the numpy kernel")
        if node.op_type == "MaxPool":
            kind = 0
        else:
            kind = 2 if node.attrs.get("count_include_pad", 0) else 1
        for n in range(xs[0]):
            self._emit(OP_POOL, step, [kind, xs[1], xs[2], xs[3], ys[2], ys[3], kh, kw, strides[0], strides[1],
                                       top, left, bottom, right],
                       [self._value_ref(node.inputs[0], n), self._value_ref(node.outputs[0], n)])

    def _kernel_CopyReshapeKernel(self, step) -> None:
        self._emit(OP_COPY, step, [], [self._value_ref(step.node.inputs[0]), self._value_ref(step.node.outputs[0])])

    def _kernel_TransposeKernel(self, step) -> None:
        shape = self._shape(step.node.inputs[0])
        perm = step.node.attrs.get("perm") or list(range(len(shape)))[::-1]
        if len(shape) > 8:
            raise _Unsupported("a Transpose of more than 8 axes")
        self._emit(OP_TRANSPOSE, step, [len(shape), *shape, *perm],
                   [self._value_ref(step.node.inputs[0]), self._value_ref(step.node.outputs[0])])

    def _kernel_ConcatKernel(self, step) -> None:
        y_shape = self._shape(step.node.outputs[0])
        axis = step.node.attrs["axis"] % len(y_shape)
        outer = int(np.prod(y_shape[:axis], dtype=np.int64))
        inner = int(np.prod(y_shape[axis + 1:], dtype=np.int64))
        names = list(step.node.inputs)
        self._emit(OP_CONCAT, step, [outer, len(names), *[self._shape(n)[axis] * inner for n in names]],
                   [*[self._value_ref(n) for n in names], self._value_ref(step.node.outputs[0])])

    def _kernel_BinaryKernel(self, step) -> None:
        node = step.node
        shapes = [self._shape(n) for n in (*node.inputs[:2], node.outputs[0])]
        if step.kernel.ufunc is not np.add or len(set(shapes)) != 1:
            raise _Unsupported("only Add of same-shape tensors has a C kernel")
        self._emit(OP_ADD, step, [], [self._value_ref(n) for n in (*node.inputs[:2], node.outputs[0])])

    def _kernel_ActivationKernel(self, step) -> None:
        if step.kernel.kind.name != "relu":
            raise _Unsupported(f"the standalone activation {step.kernel.kind.name!r} has no C kernel")
        self._emit(OP_RELU, step, [], [self._value_ref(step.node.inputs[0]), self._value_ref(step.node.outputs[0])])

    # ---- the blob
    def _io(self, out: _Writer, values, outputs: bool) -> None:
        for value in values:
            out.text(value.name)
            info = self.compiled.graph.value_info[value.name]
            out.u32(1 if np.dtype(info.dtype) == np.float32 else 0)
            out.ints(info.shape)
            if outputs:
                ref = self._value_ref(value.name) if value.name in self.compiled.activations else NO_REF
            else:
                ref = NO_REF
            out.ref(ref)

    def blob(self, weights_bytes: int, weights_checksum: int) -> bytes:
        graph = self.compiled.graph
        out = _Writer()
        out.parts.append(PROGRAM_MAGIC)
        out.u32(PROGRAM_VERSION)
        out.u32(self.compiled.threads)
        out.u64(self.plan.peak_bytes)
        out.u32(len(graph.inputs))
        out.u32(len(graph.outputs))
        out.u32(len(self.steps))
        out.u32(self.tiles[0] | self.tiles[1] << 16)
        self._io(out, graph.inputs, outputs=False)
        self._io(out, graph.outputs, outputs=True)
        for opcode, name, op, ints, refs, floats in self.steps:
            out.u32(opcode)
            out.text(name)
            out.text(op)
            out.ints(ints)
            out.u32(len(refs))
            for ref in refs:
                out.ref(ref, self.tensors.entries)
            out.floats(floats)
        body = out.bytes()
        body += bytes((-(len(body) + TRAILER.size)) % 64)
        length = len(body) + TRAILER.size
        return body + TRAILER.pack(word_checksum(body), length, weights_checksum, TRAILER_MAGIC)


# The GEMM tiles (panel rows, tile columns) of the C runtime built for each target: the ISA section of
# edgerun/kernels/native/kernels.h (ER_PW_MR, 2 * ER_VL). A runtime refuses a bundle made for other tiles,
# so a wrong entry here cannot go unnoticed (tests_toolchain/test_c_runtime_cross.py opens each).
TARGET_TILES = {"aarch64": (12, 8), "armv7": (6, 8), "x86-avx512": (8, 32), "x86-avx2": (6, 16), "x86-sse2": (6, 8)}


def host_tiles() -> tuple[int, int]:
    """The tiles of the running extension, which packed the 1x1 weights and sized their edge scratch."""
    panel_rows, tile_columns = native.packed_pointwise_sizes(1, 1, 1)
    return panel_rows, tile_columns


def target_tiles(target: str | None) -> tuple[int, int]:
    """The tiles of `target` (None or "host": this extension's). The plan's scratch was sized for the host's
    tile columns: a target whose columns divide them reads within it (the edge and `cols` scratch hold a
    whole number of the host's tiles), any other is refused."""
    host = host_tiles()
    if target in (None, "host"):
        return host
    if target not in TARGET_TILES:
        raise InvalidOptionError(f"--c-target {target!r}: expected host or one of {', '.join(TARGET_TILES)}")
    tiles = TARGET_TILES[target]
    if host[1] % tiles[1]:
        raise InvalidOptionError(f"--c-target {target}: its GEMM tiles of {tiles[1]} columns do not divide this "
                                 f"extension's {host[1]} (the plan's scratch is sized for those): compile under the EDGERUN_ISA "
                                 f"variant the target matches")
    return tiles


def pack_panels(w: np.ndarray, panel_rows: int) -> np.ndarray:
    """A (M, K) 1x1 weight in the panels steps.c's GEMM reads with `panel_rows` rows: packed[(p K + k) rows
    + i] = w[p rows + i, k], rows past M zero (er_pw_pack, for a panel height other than this build's)."""
    m, k = w.shape
    panels = -(-m // panel_rows)
    padded = np.zeros((panels * panel_rows, k), np.float32)
    padded[:m] = w
    return np.ascontiguousarray(padded.reshape(panels, panel_rows, k).transpose(0, 2, 1)).reshape(-1)


def add_c_program(compiled, tensors, target: str | None = None, python_unread=frozenset()) -> dict:
    """Adds the C program (and the weight layouts it reads) to `tensors` as its last entry; returns the
    header field that names it: {"version", "tensor", "unsupported": {step: reason}}. target: the C runtime's
    build the 1x1 weights are packed for (TARGET_TILES; None: this extension's). python_unread: the table
    entries a Python session never reads. The section is ordered so that each runtime's arrays are
    contiguous (Python's, then those both read, then the C program's own): a page fault maps up to 64 KB
    around it, and arrays only the other runtime reads would be mapped with them."""
    builder = ProgramBuilder(compiled, tensors, target)
    builder.add_steps()
    c_reads = builder.table_entries_read()
    python_unread = set(python_unread) | {i for i, entry in enumerate(tensors.entries)
                                          if entry["name"].startswith("c:")}

    def readers(index: int) -> int:   # 0 Python only, 1 both, 2 the C program only, 3 neither
        python = index not in python_unread
        if index in c_reads:
            return 1 if python else 2
        return 0 if python else 3

    tensors.order_by(readers)
    section = b"".join(bytes(chunk) for chunk in tensors.chunks())
    blob = builder.blob(len(section), word_checksum(section))
    index = tensors.add("c_program", np.frombuffer(blob, dtype=np.uint8))
    assert tensors.entries[index]["offset"] == len(section)
    return {"version": PROGRAM_VERSION, "tensor": index, "unsupported": builder.reasons}
