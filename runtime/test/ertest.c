/* Test driver of the C runtime (tests/test_c_runtime.py, tests_toolchain/test_c_runtime_asan.py).
 *
 *   ertest run BUNDLE INPUT.f32 OUTPUT.f32 [THREADS [RUNS]]
 *       runs RUNS times (default 2) on the raw float32 input, writes the output's raw floats, prints
 *       "arena_bytes N", "planned_threads T", "weight_bytes W", "inputs/outputs ..." and "run_allocations K"
 *       (malloc/calloc/realloc/posix_memalign/aligned_alloc calls during the runs; glibc builds only,
 *       -1 elsewhere or with ER_NO_ALLOC_COUNT, e.g. under AddressSanitizer)
 *   ertest api BUNDLE            every error path of the API on a good bundle: "case STATUS" lines
 *   ertest open FILE...          opens each file (from memory, and from the file for the first one), runs
 *                                it on zeros when it opens: "FILE open=STATUS run=STATUS" lines */
#define _DEFAULT_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgerun.h"

/* ------------------------------------------------------------------ allocation counting */
static volatile int counting = 0;
static volatile long allocations = 0;

#if defined(__GLIBC__) && !defined(ER_NO_ALLOC_COUNT)
#define COUNTS_ALLOCATIONS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static void counted(void)
{
    if (counting) __atomic_add_fetch(&allocations, 1, __ATOMIC_SEQ_CST);
}
void *malloc(size_t n) { counted(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { counted(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { counted(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
int posix_memalign(void **p, size_t alignment, size_t n)
{
    counted();
    *p = __libc_memalign(alignment, n);
    return *p ? 0 : 12;
}
void *aligned_alloc(size_t alignment, size_t n) { counted(); return __libc_memalign(alignment, n); }
#else
#define COUNTS_ALLOCATIONS 0
#endif

static void *aligned_buffer(size_t bytes)
{
    void *p = NULL;
    size_t n = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, n ? n : 64)) return NULL;
    memset(p, 0, n ? n : 64);
    return p;
}

static int die(const char *what, const edgerun_error *error)
{
    fprintf(stderr, "ertest: %s: %s (%s)\n", what, error ? error->message : "", error ? edgerun_status_name(error->status) : "");
    return 1;
}

static void *read_file(const char *path, size_t *size)
{
    FILE *in = fopen(path, "rb");
    long n;
    void *data = NULL;
    if (!in) return NULL;
    if (fseek(in, 0, SEEK_END) == 0 && (n = ftell(in)) >= 0 && fseek(in, 0, SEEK_SET) == 0 &&
        (data = malloc(n ? (size_t)n : 1)) && fread(data, 1, (size_t)n, in) == (size_t)n) {
        *size = (size_t)n;
    } else {
        free(data);
        data = NULL;
    }
    fclose(in);
    return data;
}

/* Buffers for one run of `model`: arena, zeroed inputs and outputs. */
typedef struct {
    size_t arena_bytes;
    void *arena;
    int n_in, n_out;
    void *inputs[64], *outputs[64];
    size_t in_bytes[64], out_bytes[64];
} run_buffers;

static int make_buffers(edgerun_model *model, run_buffers *b)
{
    edgerun_tensor_info info;
    memset(b, 0, sizeof *b);
    if (edgerun_arena_bytes(model, 0, &b->arena_bytes, NULL)) return -1;
    b->arena = aligned_buffer(b->arena_bytes);
    b->n_in = edgerun_input_count(model);
    b->n_out = edgerun_output_count(model);
    for (int i = 0; i < b->n_in; i++) {
        if (edgerun_input_info(model, i, &info, NULL)) return -1;
        b->in_bytes[i] = info.bytes;
        b->inputs[i] = aligned_buffer(info.bytes);
    }
    for (int i = 0; i < b->n_out; i++) {
        if (edgerun_output_info(model, i, &info, NULL)) return -1;
        b->out_bytes[i] = info.bytes;
        b->outputs[i] = aligned_buffer(info.bytes);
    }
    return b->arena ? 0 : -1;
}

static void free_buffers(run_buffers *b)
{
    free(b->arena);
    for (int i = 0; i < b->n_in; i++) free(b->inputs[i]);
    for (int i = 0; i < b->n_out; i++) free(b->outputs[i]);
}

static edgerun_status run_once(edgerun_model *model, run_buffers *b, int threads, edgerun_error *error)
{
    return edgerun_run(model, b->arena, b->arena_bytes, threads, (const void *const *)b->inputs, b->in_bytes,
                       b->outputs, b->out_bytes, error);
}

static void print_info(const char *kind, const edgerun_tensor_info *info)
{
    printf("%s %s float32 %zu", kind, info->name, info->bytes);
    for (int d = 0; d < info->rank; d++) printf(" %lld", (long long)info->dims[d]);
    printf("\n");
}

static void print_memory(void);

static int cmd_run(int argc, char **argv)
{
    if (argc < 5) return die("usage: ertest run BUNDLE INPUT.f32 OUTPUT.f32 [THREADS [RUNS]]", NULL);
    int threads = argc > 5 ? atoi(argv[5]) : 0, runs = argc > 6 ? atoi(argv[6]) : 2;
    edgerun_error error;
    edgerun_model *model;
    unsigned flags = getenv("ERTEST_SKIP_WEIGHTS_CHECK") ? EDGERUN_OPEN_SKIP_WEIGHTS_CHECK : 0;
    if (edgerun_open_file(argv[2], flags, &model, &error)) return die("open", &error);
    run_buffers b;
    if (make_buffers(model, &b)) return die("buffers", NULL);
    size_t size = 0;
    void *input = read_file(argv[3], &size);
    if (!input || b.n_in != 1 || size != b.in_bytes[0]) return die("input file does not match the model's input", NULL);
    memcpy(b.inputs[0], input, size);
    free(input);
    edgerun_tensor_info info;
    for (int i = 0; i < b.n_in; i++) edgerun_input_info(model, i, &info, NULL), print_info("input", &info);
    for (int i = 0; i < b.n_out; i++) edgerun_output_info(model, i, &info, NULL), print_info("output", &info);
    size_t arena_bytes = 0;
    if (edgerun_arena_bytes(model, threads, &arena_bytes, &error)) return die("arena_bytes", &error);
    printf("arena_bytes %zu\nplanned_threads %d\nweight_bytes %zu\n", arena_bytes, edgerun_planned_threads(model),
           edgerun_weight_bytes(model));
    counting = 1;
    for (int r = 0; r < runs; r++)
        if (run_once(model, &b, threads, &error)) {
            counting = 0;
            return die("run", &error);
        }
    counting = 0;
    printf("run_allocations %ld\n", COUNTS_ALLOCATIONS ? (long)allocations : -1L);
    print_memory();
    FILE *out = fopen(argv[4], "wb");
    if (!out || fwrite(b.outputs[0], 1, b.out_bytes[0], out) != b.out_bytes[0]) return die("cannot write the output", NULL);
    fclose(out);
    free_buffers(&b);
    edgerun_close(model);
    return 0;
}

/* Linux: the resident memory by kind (kB) from /proc/self/status; elsewhere nothing. */
static void print_memory(void)
{
    FILE *in = fopen("/proc/self/status", "r");
    char line[256];
    while (in && fgets(line, sizeof line, in))
        if (!strncmp(line, "VmHWM:", 6) || !strncmp(line, "RssAnon:", 8) || !strncmp(line, "RssFile:", 8))
            fputs(line, stdout);
    if (in) fclose(in);
    /* the bundle's mapping: its resident kB */
    in = fopen("/proc/self/smaps", "r");
    int in_bundle = 0;
    while (in && fgets(line, sizeof line, in)) {
        if (strchr(line, '-') && strstr(line, " r"))
            in_bundle = strstr(line, ".erb") != NULL;
        if (in_bundle && !strncmp(line, "Rss:", 4)) printf("BundleRss: %s", line + 4);
    }
    if (in) fclose(in);
}

static void report(const char *name, edgerun_status status) { printf("%s %s\n", name, edgerun_status_name(status)); }

static int cmd_api(int argc, char **argv)
{
    if (argc < 3) return die("usage: ertest api BUNDLE", NULL);
    edgerun_error error;
    edgerun_model *model;
    edgerun_tensor_info info;
    size_t bytes, size = 0;
    report("open_missing_file", edgerun_open_file("/nonexistent/edgerun.erb", 0, &model, &error));
    report("open_null", edgerun_open_memory(NULL, 0, 0, NULL, &error));
    report("open_empty", edgerun_open_memory("", 0, 0, &model, &error));
    void *data = read_file(argv[2], &size);
    if (!data) return die("cannot read the bundle", NULL);
    unsigned char *copy = (unsigned char *)malloc(size);
    memcpy(copy, data, size);
    copy[8] = 2; /* major version 2 */
    report("open_major_2", edgerun_open_memory(copy, size, 0, &model, &error));
    memcpy(copy, data, size);
    copy[10] = 0; /* minor version 0: a format without the C program */
    copy[11] = 0;
    report("open_minor_0", edgerun_open_memory(copy, size, 0, &model, &error));
    free(copy);
    if (edgerun_open_memory(data, size, 0, &model, &error)) return die("open", &error);
    report("open_memory", EDGERUN_OK);
    int threads = edgerun_planned_threads(model);
    report("arena_other_threads", edgerun_arena_bytes(model, threads + 1, &bytes, &error));
    report("arena_planned_threads", edgerun_arena_bytes(model, threads, &bytes, &error));
    report("input_info_out_of_range", edgerun_input_info(model, 1, &info, &error));
    report("output_info_negative", edgerun_output_info(model, -1, &info, &error));
    run_buffers b;
    if (make_buffers(model, &b)) return die("buffers", NULL);
    report("run_ok", run_once(model, &b, 0, &error));
    report("run_other_threads", run_once(model, &b, threads + 1, &error));
    b.arena_bytes -= 1;
    report("run_small_arena", run_once(model, &b, 0, &error));
    b.arena_bytes += 1;
    void *arena = b.arena;
    uint8_t *shifted = (uint8_t *)aligned_buffer(b.arena_bytes + 64);
    b.arena = shifted + 4;
    report("run_misaligned_arena", run_once(model, &b, 0, &error));
    b.arena = arena;
    free(shifted);
    b.in_bytes[0] -= 4;
    report("run_short_input", run_once(model, &b, 0, &error));
    b.in_bytes[0] += 4;
    b.out_bytes[0] += 4;
    report("run_long_output", run_once(model, &b, 0, &error));
    b.out_bytes[0] -= 4;
    void *input = b.inputs[0];
    b.inputs[0] = NULL;
    report("run_null_input", run_once(model, &b, 0, &error));
    b.inputs[0] = input;
    report("run_again_ok", run_once(model, &b, 0, &error));
    free_buffers(&b);
    edgerun_close(model);
    free(data);
    return 0;
}

static int cmd_open(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        size_t size = 0;
        void *data = read_file(argv[i], &size);
        edgerun_error error;
        edgerun_model *model = NULL;
        edgerun_status opened, ran = EDGERUN_OK;
        if (!data) return die("cannot read a file", NULL);
        if (i == 2) { /* the file path too, for the first */
            opened = edgerun_open_file(argv[i], 0, &model, &error);
            edgerun_close(model);
        }
        opened = edgerun_open_memory(data, size, 0, &model, &error);
        if (opened == EDGERUN_OK) {
            run_buffers b;
            ran = make_buffers(model, &b) ? EDGERUN_E_NOMEM : run_once(model, &b, 0, &error);
            free_buffers(&b);
            edgerun_close(model);
        }
        printf("%s open=%s run=%s message=%s\n", argv[i], edgerun_status_name(opened), edgerun_status_name(ran),
               opened == EDGERUN_OK && ran == EDGERUN_OK ? "" : error.message);
        free(data);
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "run")) return cmd_run(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "api")) return cmd_api(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "open")) return cmd_open(argc, argv);
    fprintf(stderr, "usage: ertest run|api|open ...\n");
    return 2;
}
