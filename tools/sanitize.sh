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

# Each build variant: the flags this machine gets by default, and on x86-64 also the
# AVX2-only and portable SSE2 builds (8-float vectors, other tile sizes) other machines get.
VARIANTS=("")
case "$(uname -m)" in x86_64|amd64) VARIANTS+=("-mno-avx512f" "-mno-avx512f -mno-avx2 -mno-fma") ;; esac

for VARIANT in "${VARIANTS[@]}"; do
    echo "== building the extension with $SAN_FLAGS ${VARIANT:-(default ISA flags)}"
    rm -f "$WORK"/edgerun/kernels/_native*.so
    rm -rf "$WORK/build"
    (cd "$WORK" && EDGERUN_EXTRA_CFLAGS="$SAN_FLAGS $VARIANT -O1 -g" EDGERUN_EXTRA_LDFLAGS="$SAN_FLAGS" \
        "$PY" setup.py -q build_ext --inplace)
    LIB=$(ls "$WORK"/edgerun/kernels/_native*.so 2>/dev/null | head -n 1 || true)
    if [ -z "$LIB" ] || [ "$(nm -D "$LIB" | grep -c __asan)" -eq 0 ]; then
        echo "sanitize.sh: the sanitized extension was not built (see the warnings above)" >&2
        exit 1
    fi
    echo "== running the kernel tests under the sanitizers"
    (cd "$WORK" && LD_PRELOAD="$PRELOAD" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1" \
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        PYTHONPATH="$WORK" EDGERUN_KERNELS=native PYTHONDONTWRITEBYTECODE=1 \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_native_block.py tests/test_native_backend.py \
            tests/test_kernels_block.py tests/test_step_kernels.py tests/test_native_threads.py \
            tests/test_native_depthwise.py tests/test_fused_steps.py "$@")
    (cd "$WORK" && LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$WORK" \
        "$PY" -c "from edgerun.kernels import native; print('   built for', native.build_info())")
done
echo "== sanitizers: clean"
