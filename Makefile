# The edgerun C runtime (include/edgerun.h): a static and a shared library, the example app and the
# runtime's test program, built from the same kernel sources as the Python extension.
#
#   make                         # build/c/libedgerun.a, build/c/libedgerun.so, build/c/classify
#   make CC=aarch64-linux-gnu-gcc BUILD=build/aarch64 PROGRAM_LDFLAGS=-static
#   (ARM CFLAGS: tests_toolchain/cbuild.py; bundles for it: edgerun compile --c-target aarch64)
#   make ARCH_FLAGS="-mavx2 -mfma"   # instruction sets beyond the portable baseline
#
# Every kernel source is built without its Python bindings (-DER_NO_PYTHON). The defaults are portable. Bit-identical results with the Python extension need the same ARCH_FLAGS
# it was compiled with (edgerun.kernels.native.build_info() says which; tests/test_c_runtime.py
# passes them).

CC ?= cc
AR ?= ar
BUILD ?= build/c
OPT_FLAGS ?= -O3
ARCH_FLAGS ?=
CFLAGS ?= $(OPT_FLAGS) -std=c99 -ffp-contract=fast -fno-math-errno -fno-trapping-math -Wall
EXTRA_CFLAGS ?=
LDFLAGS ?=
PROGRAM_LDFLAGS ?=   # the example and the test program only (e.g. -static for qemu-user)
LDLIBS ?= -lm

ALL_CFLAGS = $(CFLAGS) $(ARCH_FLAGS) $(EXTRA_CFLAGS) -pthread -fPIC -Iinclude -DER_NO_PYTHON
KERNELS = edgerun/kernels/native
SOURCES = runtime/edgerun.c runtime/sha256.c runtime/steps_kernels.c runtime/fused_kernels.c \
          $(KERNELS)/gemm.c $(KERNELS)/depthwise.c $(KERNELS)/block.c $(KERNELS)/conv.c $(KERNELS)/segment.c $(KERNELS)/activation.c \
          $(KERNELS)/threadpool.c
HEADERS = include/edgerun.h runtime/runtime_kernels.h runtime/sha256.h $(KERNELS)/kernels.h \
          $(KERNELS)/threadpool.h $(KERNELS)/steps.c $(KERNELS)/fused_steps.c
OBJECTS = $(patsubst %.c,$(BUILD)/obj/%.o,$(SOURCES))

.PHONY: all lib clean
all: lib $(BUILD)/classify $(BUILD)/ertest
lib: $(BUILD)/libedgerun.a $(BUILD)/libedgerun.so

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libedgerun.a: $(OBJECTS)
	rm -f $@
	$(AR) rcs $@ $(OBJECTS)

$(BUILD)/libedgerun.so: $(OBJECTS)
	$(CC) $(ALL_CFLAGS) -shared -o $@ $(OBJECTS) $(LDFLAGS) $(LDLIBS)

# the example and the test program link the static library: one self-contained binary each
$(BUILD)/classify: examples/classify.c $(BUILD)/libedgerun.a
	$(CC) $(ALL_CFLAGS) -o $@ examples/classify.c $(BUILD)/libedgerun.a $(LDFLAGS) $(PROGRAM_LDFLAGS) $(LDLIBS)

$(BUILD)/ertest: runtime/test/ertest.c $(BUILD)/libedgerun.a
	$(CC) $(ALL_CFLAGS) -o $@ runtime/test/ertest.c $(BUILD)/libedgerun.a $(LDFLAGS) $(PROGRAM_LDFLAGS) $(LDLIBS)

clean:
	rm -rf $(BUILD)
