/* edgerun C runtime: run a compiled bundle (`edgerun compile MODEL --budget SIZE -o model.erb`) from C.
 *
 * The runtime reads the bundle's C program (docs/bundle-format.md, "C program"), checks every offset and
 * size in it against the file and the arena, and runs the same C kernels as the Python package with the
 * arguments the Python session derives from the plan: the outputs are bit for bit the Python session's for
 * the same bundle and thread count.
 *
 * Memory: weights are used in place (the file is memory-mapped read-only where the platform has mmap, or
 * the caller's buffer is read directly); every activation, partial sum and kernel scratch lives in one arena
 * the caller provides, of exactly edgerun_arena_bytes() bytes. Opening allocates the model description
 * (a few KB) and starts the kernel threads; edgerun_run allocates nothing.
 *
 * Every function that can fail returns an edgerun_status and, when `error` is not NULL, fills it with the
 * status and a message naming the problem. See docs/c-api.md. */
#ifndef EDGERUN_H
#define EDGERUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGERUN_ARENA_ALIGNMENT 64 /* the arena's address must be a multiple of this */
#define EDGERUN_MAX_RANK 8

typedef enum {
    EDGERUN_OK = 0,
    EDGERUN_E_ARGUMENT,    /* a NULL pointer, an index out of range, a misaligned buffer */
    EDGERUN_E_IO,          /* the file cannot be opened, read or mapped */
    EDGERUN_E_NOMEM,       /* opening could not allocate the model description */
    EDGERUN_E_CORRUPT,     /* not a bundle, truncated, checksum mismatch, an offset or size out of bounds */
    EDGERUN_E_VERSION,     /* a bundle format or C program version this runtime does not read */
    EDGERUN_E_NO_PROGRAM,  /* the bundle holds no C program (written before format 1.1): recompile it */
    EDGERUN_E_UNSUPPORTED, /* a step has no C kernel (the message names it), or a non-float32 input/output */
    EDGERUN_E_THREADS,     /* a thread count other than the one the bundle was planned for */
    EDGERUN_E_ARENA,       /* the arena is too small or not aligned to EDGERUN_ARENA_ALIGNMENT */
    EDGERUN_E_SIZE,        /* an input or output buffer of the wrong size */
    EDGERUN_E_RUNTIME      /* the kernel threads failed (e.g. could not start) */
} edgerun_status;

typedef struct {
    edgerun_status status;
    char message[256];
} edgerun_error;

typedef enum { EDGERUN_FLOAT32 = 1 } edgerun_dtype;

typedef struct {
    const char *name;                /* owned by the model: valid until edgerun_close */
    edgerun_dtype dtype;
    int rank;
    int64_t dims[EDGERUN_MAX_RANK];
    size_t bytes;                    /* prod(dims) * 4 */
} edgerun_tensor_info;

typedef struct edgerun_model edgerun_model;

/* Open flags */
#define EDGERUN_OPEN_SKIP_WEIGHTS_CHECK 1u /* do not checksum the weights (faster start; corruption undetected) */

/* Open a bundle held in memory. The buffer is used in place and must stay valid and unchanged until
 * edgerun_close; it needs no particular alignment. */
edgerun_status edgerun_open_memory(const void *data, size_t size, unsigned flags, edgerun_model **model,
                                   edgerun_error *error);

/* Open a bundle file: memory-mapped read-only where mmap exists (else read into one allocation). */
edgerun_status edgerun_open_file(const char *path, unsigned flags, edgerun_model **model, edgerun_error *error);

void edgerun_close(edgerun_model *model); /* NULL is fine */

int edgerun_input_count(const edgerun_model *model);
int edgerun_output_count(const edgerun_model *model);
edgerun_status edgerun_input_info(const edgerun_model *model, int index, edgerun_tensor_info *info,
                                  edgerun_error *error);
edgerun_status edgerun_output_info(const edgerun_model *model, int index, edgerun_tensor_info *info,
                                   edgerun_error *error);

/* The thread count the bundle's plan was made for (its scratch and thread split depend on it). */
int edgerun_planned_threads(const edgerun_model *model);

/* The exact arena bytes the plan needs when run on `threads` threads (0: the planned count). A plan is
 * made for one thread count: another count is EDGERUN_E_THREADS (compile with `--threads N`). */
edgerun_status edgerun_arena_bytes(const edgerun_model *model, int threads, size_t *bytes, edgerun_error *error);

/* Bytes of the bundle's weights the kernels read (mapped from the file, not copied). */
size_t edgerun_weight_bytes(const edgerun_model *model);

/* One inference. arena: arena_bytes >= edgerun_arena_bytes(), aligned to EDGERUN_ARENA_ALIGNMENT;
 * inputs[i] / outputs[i]: float32 buffers of exactly input_bytes[i] / output_bytes[i] ==
 * edgerun_*_info().bytes, 4-byte aligned; threads: 0 or the planned count. Allocates nothing.
 * Runs of one model must not overlap in time (they share the kernel thread pool, which serialises
 * runs of different models). */
edgerun_status edgerun_run(edgerun_model *model, void *arena, size_t arena_bytes, int threads,
                           const void *const *inputs, const size_t *input_bytes, void *const *outputs,
                           const size_t *output_bytes, edgerun_error *error);

const char *edgerun_status_name(edgerun_status status);

#ifdef __cplusplus
}
#endif
#endif
