#!/usr/bin/env bash
# Build edgerun's native extension with AddressSanitizer + UndefinedBehaviorSanitizer in a
# scratch copy of the tree and run the kernel tests against it. Non-interactive; exits
# non-zero on a build failure, a sanitizer report or a failing test.
#
#   tools/sanitize.sh [extra pytest args]     (PYTHON=... to pick the interpreter, CC=... the compiler)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
CC=${CC:-gcc}
export CC

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgerun-sanitize.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# a copy, so the sanitized library never replaces the normal one in the source tree
PARTS="edgerun scheduler tests setup.py pyproject.toml"
[ -f "$ROOT/README.md" ] && PARTS="$PARTS README.md"
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.so' --exclude='.hypothesis' \
    -cf - $PARTS | tar -C "$WORK" -xf -

SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# Python itself is not instrumented: the sanitizer runtimes must be loaded first.
PRELOAD="$("$CC" -print-file-name=libasan.so) $("$CC" -print-file-name=libubsan.so)"

# One build holds every instruction-set variant of the kernels (setup.py); the tests run under each
# variant this CPU supports (EDGERUN_ISA forces it), e.g. AVX-512, AVX2 and SSE2 with their own
# vector widths and tile sizes.
echo "== building the extension with $SAN_FLAGS"
rm -f "$WORK"/edgerun/kernels/_native*.so
rm -rf "$WORK/build"
(cd "$WORK" && EDGERUN_EXTRA_CFLAGS="$SAN_FLAGS -O1 -g" EDGERUN_EXTRA_LDFLAGS="$SAN_FLAGS" \
    "$PY" setup.py -q build_ext --inplace)
LIBS=$(ls "$WORK"/edgerun/kernels/_native_*.so 2>/dev/null || true)
if [ -z "$LIBS" ]; then
    echo "sanitize.sh: the sanitized extension was not built (see the warnings above)" >&2
    exit 1
fi
for LIB in $LIBS; do
    if [ "$(nm -D "$LIB" | grep -c __asan)" -eq 0 ]; then
        echo "sanitize.sh: $LIB is not instrumented" >&2
        exit 1
    fi
done
ISAS=$(cd "$WORK" && LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$WORK" \
    "$PY" -c "from edgerun.kernels import native; print(' '.join(native.runnable_isas()))")
[ -n "$ISAS" ] || { echo "sanitize.sh: no runnable variant" >&2; exit 1; }

for ISA in $ISAS; do
    echo "== running the kernel tests under the sanitizers, EDGERUN_ISA=$ISA"
    (cd "$WORK" && LD_PRELOAD="$PRELOAD" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:log_path=$WORK/report" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/report" \
        PYTHONPATH="$WORK" EDGERUN_KERNELS=native EDGERUN_ISA="$ISA" PYTHONDONTWRITEBYTECODE=1 \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_native_block.py tests/test_native_backend.py \
            tests/test_kernels_block.py tests/test_step_kernels.py tests/test_native_threads.py \
            tests/test_native_depthwise.py tests/test_native_segment.py \
            tests/test_native_segment_block.py::test_random_blocks_match_numpy_and_give_the_same_bits_on_two_threads \
            tests/test_native_segment_block.py::test_a_worked_block_by_hand \
            tests/test_native_segment_block.py::test_bad_block_tables_are_refused \
            tests/test_native_conv.py::test_native_conv_matches_the_reference_with_the_same_bits_on_two_threads \
            tests/test_native_conv.py::test_a_bad_geometry_is_a_clear_error tests/test_native_conv_rows.py \
            tests/test_fused_steps.py tests/test_quant_native.py "$@") || {
        # pytest captures the test's stderr, so a sanitizer that stops the process would leave no message:
        # the reports go to files instead, shown here
        cat "$WORK"/report.* 2>/dev/null | head -60 >&2
        exit 1
    }
    (cd "$WORK" && LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$WORK" EDGERUN_ISA="$ISA" \
        "$PY" -c "from edgerun.kernels import native; print('   ran', native.build_info())")
done
echo "== sanitizers: clean"
