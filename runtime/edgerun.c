/* The edgerun C runtime (include/edgerun.h): open a bundle, check its C program, run it.
 *
 * The C program (written by edgerun/c_program.py, described in docs/bundle-format.md) lists every step with
 * the exact kernel arguments the Python session derives from the plan. Opening checks the file (magic,
 * version, header SHA-256, padding, the program's and the weights' checksums) and every step: each integer
 * against its range, each tensor reference against the region it points into (arena, weights, an input),
 * each size against what its kernel reads or writes, and the block geometry, bands and thread split with
 * the kernels' own checks. Running then only resolves references and calls the kernels. */
#if !defined(_WIN32)
#define _DEFAULT_SOURCE /* madvise */
#endif
#include "edgerun.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime_kernels.h"
#include "sha256.h"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define ER_HAVE_MMAP 1
#endif

enum { OP_UNSUPPORTED, OP_BLOCK, OP_POINTWISE, OP_IM2COL, OP_DEPTHWISE, OP_GAP, OP_GEMV, OP_POOL, OP_COPY,
       OP_TRANSPOSE, OP_CONCAT, OP_ADD, OP_RELU, OP_CONV, OP_SQUEEZE_EXCITE, OP_SHUFFLE, OP_BINARY, OP_ACTIVATION,
       OP_SEGMENT, OP_COUNT };
enum { REGION_NONE, REGION_ARENA, REGION_WEIGHTS, REGION_INPUT };

#define PREFIX_BYTES 64
#define MAX_HEADER_BYTES (64u << 20)
#define FORMAT_MAJOR 1
#define PROGRAM_VERSION 1
#define FLAG_C_PROGRAM 1u /* header flags bit 0: the weights section ends with the C program */
#define TRAILER_BYTES 32
#define MAX_IO 64
#define MAX_NAME 4096
#define MAX_DIM (1LL << 31)
#define MAX_FLOATS (1ULL << 40) /* any one tensor: 4 TiB */
#define BIG (1LL << 30)         /* a kernel size argument (channels, pixels, ...) */

static const char BUNDLE_MAGIC[8] = {'\x89', 'E', 'D', 'G', 'E', 'R', 'U', 'N'};
static const char PROGRAM_MAGIC[8] = {'E', 'R', 'C', 'P', 'R', 'O', 'G', '\0'};
static const char TRAILER_MAGIC[8] = {'E', 'R', 'P', 'R', 'O', 'G', 'N', 'D'};

typedef struct {
    int region, index;
    uint64_t offset, count; /* bytes, floats */
} er_ref;

/* A streamed segment's tables (segment.c): bound at open to check them, and again by each run to the
 * run's arena (er_seg_bind: pointers only, no allocation). */
typedef struct {
    int ntensors, nsteps, ncalls, gap;
    const int64_t *tensor_rows, *step_rows; /* in the step's integers */
    er_seg_tensor *tensors;
    er_seg_step *steps;
    er_seg_call *calls;
} er_segment;

typedef struct {
    int op;
    const char *name, *op_type;
    int name_len, op_len;
    int nints, nrefs, nfloats;
    int64_t *ints;
    er_ref *refs;
    float floats[4];
    /* decoded by the checks */
    int threads;
    er_act act, act2;
    er_block_geom geom;
    er_conv_geom conv;
    er_block_split split;
    er_band *bands;
    int nbands, chunk;
    int kind; /* OP_BINARY: add 0, sub 1, mul 2, div 3 */
    er_segment *segment;
} er_step;

typedef struct {
    char *name;
    edgerun_tensor_info info;
    er_ref ref; /* outputs: where the arena holds it */
} er_io;

struct edgerun_model {
    const uint8_t *file;
    size_t file_size;
    void *mapping;    /* mmap of the file, or NULL */
    void *owned_copy; /* the file read into memory (no mmap), or NULL */
    const uint8_t *weights;
    uint64_t weights_size; /* the weights section before the program */
    int threads;
    uint64_t arena_bytes;
    int n_inputs, n_outputs, n_steps;
    er_io inputs[MAX_IO], outputs[MAX_IO];
    er_step *steps;
    size_t weight_bytes_read;
};

/* ------------------------------------------------------------------ errors */
static edgerun_status fail(edgerun_error *error, edgerun_status status, const char *format, ...)
{
    if (error) {
        va_list args;
        va_start(args, format);
        error->status = status;
        vsnprintf(error->message, sizeof error->message, format, args);
        va_end(args);
    }
    return status;
}

static edgerun_status ok(edgerun_error *error)
{
    if (error) {
        error->status = EDGERUN_OK;
        error->message[0] = '\0';
    }
    return EDGERUN_OK;
}

const char *edgerun_status_name(edgerun_status status)
{
    static const char *names[] = {"EDGERUN_OK", "EDGERUN_E_ARGUMENT", "EDGERUN_E_IO", "EDGERUN_E_NOMEM",
                                  "EDGERUN_E_CORRUPT", "EDGERUN_E_VERSION", "EDGERUN_E_NO_PROGRAM",
                                  "EDGERUN_E_UNSUPPORTED", "EDGERUN_E_THREADS", "EDGERUN_E_ARENA",
                                  "EDGERUN_E_SIZE", "EDGERUN_E_RUNTIME"};
    return (unsigned)status < sizeof names / sizeof names[0] ? names[status] : "EDGERUN_E_UNKNOWN";
}

/* ------------------------------------------------------------------ little-endian reads */
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* sum of word[i] * (2 i + 1) mod 2^64 over the little-endian 64-bit words (edgerun/c_program.py). */
static uint64_t word_checksum(const uint8_t *data, uint64_t words, uint64_t first_index)
{
    uint64_t sum = 0, factor = 2 * first_index + 1;
    for (uint64_t i = 0; i < words; i++, factor += 2) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t word;
        memcpy(&word, data + 8 * i, 8);
#else
        uint64_t word = le64(data + 8 * i);
#endif
        sum += word * factor;
    }
    return sum;
}

typedef struct {
    const uint8_t *p, *end;
} reader;

static int take(reader *r, size_t n, const uint8_t **out)
{
    if ((size_t)(r->end - r->p) < n) return -1;
    *out = r->p;
    r->p += n;
    return 0;
}

static int read_u32(reader *r, uint32_t *v)
{
    const uint8_t *p;
    if (take(r, 4, &p)) return -1;
    *v = le32(p);
    return 0;
}

static int read_u64(reader *r, uint64_t *v)
{
    const uint8_t *p;
    if (take(r, 8, &p)) return -1;
    *v = le64(p);
    return 0;
}

static int read_text(reader *r, const char **text, int *len)
{
    uint32_t n;
    const uint8_t *p;
    if (read_u32(r, &n) || n > MAX_NAME || take(r, n, &p)) return -1;
    *text = (const char *)p;
    *len = (int)n;
    return 0;
}

static int read_ints(reader *r, int64_t **ints, int *count)
{
    uint32_t n;
    const uint8_t *p;
    if (read_u32(r, &n) || n > (1u << 20) || take(r, (size_t)n * 8, &p)) return -1;
    *count = (int)n;
    *ints = NULL;
    if (n == 0) return 0;
    *ints = (int64_t *)malloc((size_t)n * sizeof(int64_t));
    if (!*ints) return -2;
    for (uint32_t i = 0; i < n; i++) (*ints)[i] = (int64_t)le64(p + 8 * i);
    return 0;
}

static int read_ref(reader *r, er_ref *ref)
{
    uint32_t region, index;
    if (read_u32(r, &region) || read_u32(r, &index) || read_u64(r, &ref->offset) || read_u64(r, &ref->count))
        return -1;
    if (region > REGION_INPUT || index > MAX_IO) return -1;
    ref->region = (int)region;
    ref->index = (int)index;
    return 0;
}

/* ------------------------------------------------------------------ step checks */
typedef struct {
    const edgerun_model *model;
    const er_step *step;
    char *problem; /* message buffer */
    size_t problem_size;
} checker;

static int bad(checker *c, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(c->problem, c->problem_size, format, args);
    va_end(args);
    return -1;
}

/* ints[i] into *out when lo <= value <= hi */
static int get_int(checker *c, int i, int64_t lo, int64_t hi, int *out)
{
    *out = 0;
    if (i >= c->step->nints) return bad(c, "missing integer argument %d", i);
    int64_t v = c->step->ints[i];
    if (v < lo || v > hi) return bad(c, "integer argument %d is %lld, outside %lld..%lld", i, (long long)v, (long long)lo, (long long)hi);
    *out = (int)v;
    return 0;
}

static uint64_t region_floats(const edgerun_model *m, const er_ref *r)
{
    switch (r->region) {
    case REGION_ARENA: return m->arena_bytes / 4;
    case REGION_WEIGHTS: return m->weights_size / 4;
    case REGION_INPUT: return r->index < m->n_inputs ? m->inputs[r->index].info.bytes / 4 : 0;
    default: return 0;
    }
}

/* The reference lies inside its region (any region but NONE). */
static int ref_in_bounds(checker *c, int i)
{
    const er_ref *r = &c->step->refs[i];
    if (r->region == REGION_NONE) return r->offset == 0 && r->count == 0 ? 0 : bad(c, "reference %d: 'none' with a size", i);
    if (r->region == REGION_INPUT && r->index >= c->model->n_inputs) return bad(c, "reference %d: no input %d", i, r->index);
    uint64_t floats = region_floats(c->model, r);
    if (r->offset % 4 || r->offset / 4 > floats || r->count > floats - r->offset / 4)
        return bad(c, "reference %d (%llu floats at byte %llu) lies outside its region of %llu floats", i,
                   (unsigned long long)r->count, (unsigned long long)r->offset, (unsigned long long)floats);
    return 0;
}

enum { ANY_SOURCE = 1, WEIGHTS_ONLY = 2, ARENA_ONLY = 3, OPTIONAL = 8 };

/* Reference i holds `count` floats exactly (at_least: or more) and is of the kind asked:
 * a source (arena, input or weights), weights, or a written arena buffer; OPTIONAL allows NONE. */
static int want(checker *c, int i, int kind, uint64_t count, int at_least)
{
    if (i >= c->step->nrefs) return bad(c, "missing tensor reference %d", i);
    const er_ref *r = &c->step->refs[i];
    if (r->region == REGION_NONE) {
        if ((kind & OPTIONAL) && r->count == 0 && r->offset == 0) return 0;
        return bad(c, "tensor reference %d is missing", i);
    }
    int base = kind & ~OPTIONAL;
    if ((base == WEIGHTS_ONLY && r->region != REGION_WEIGHTS) || (base == ARENA_ONLY && r->region != REGION_ARENA))
        return bad(c, "tensor reference %d points into the wrong region", i);
    if (at_least ? r->count < count : r->count != count)
        return bad(c, "tensor reference %d holds %llu floats, the kernel %s %llu", i, (unsigned long long)r->count,
                   at_least ? "needs at least" : "reads or writes", (unsigned long long)count);
    return 0;
}

static int get_act(checker *c, int i, int f, er_act *act)
{
    int kind;
    if (get_int(c, i, 0, ER_ACT_COUNT - 1, &kind)) return -1;
    if (f + 2 > c->step->nfloats) return bad(c, "missing activation parameters");
    act->kind = kind;
    act->a = c->step->floats[f];
    act->b = c->step->floats[f + 1];
    return 0;
}

static int counts(checker *c, int nints, int nrefs, int nfloats)
{
    const er_step *s = c->step;
    if (s->nints != nints || s->nrefs != nrefs || s->nfloats != nfloats)
        return bad(c, "expected %d integers, %d references and %d floats, found %d, %d and %d", nints, nrefs, nfloats,
                   s->nints, s->nrefs, s->nfloats);
    return 0;
}

static int check_block(checker *c, er_step *s)
{
    er_block_geom *g = &s->geom;
    int given[4], v[31];
    static const int64_t lo[22] = {1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
    if (s->nints < 31 || s->nrefs != 11 || s->nfloats != 4) return bad(c, "malformed block arguments");
    for (int i = 0; i < 22; i++)
        if (get_int(c, i, lo[i], i == 17 ? 1 : BIG, &v[i])) return -1;
    memset(g, 0, sizeof *g);
    g->in_channels = v[0]; g->in_height = v[1]; g->in_width = v[2]; g->hidden_channels = v[3];
    g->expand_kernel = v[4]; g->expand_stride = v[5];
    for (int i = 0; i < 4; i++) g->expand_pads[i] = v[6 + i];
    g->dw_kernel = v[10]; g->dw_stride = v[11];
    for (int i = 0; i < 4; i++) g->dw_pads[i] = v[12 + i];
    g->out_channels = v[16]; g->residual = v[17];
    for (int i = 0; i < 4; i++) given[i] = v[18 + i];
    const char *problem = er_block_derive(g);
    if (problem) return bad(c, "block geometry: %s", problem);
    int derived[4] = {g->hidden_height, g->hidden_width, g->out_height, g->out_width};
    for (int i = 0; i < 4; i++)
        if (given[i] != derived[i]) return bad(c, "block geometry: size %d given as %d, derived %d", i, given[i], derived[i]);
    int mode, threads, slices;
    if (get_int(c, 22, 1, g->hidden_channels, &s->chunk) || get_int(c, 23, 0, 2, &mode) ||
        get_int(c, 24, 1, ER_MAX_THREADS, &threads) || get_int(c, 25, 1, ER_MAX_THREADS, &slices))
        return -1;
    int64_t expanded_slice = s->ints[26], depthwise_slice = s->ints[27];
    if (expanded_slice < 0 || depthwise_slice < 0 || expanded_slice > BIG * 16 || depthwise_slice > BIG * 16)
        return bad(c, "block split: slice sizes out of range");
    s->split.mode = mode;
    s->split.threads = threads;
    s->split.slices = slices;
    s->split.expanded_slice = (long)expanded_slice;
    s->split.depthwise_slice = (long)depthwise_slice;
    if (get_act(c, 28, 0, &s->act) || get_act(c, 29, 2, &s->act2) || get_int(c, 30, 1, g->out_height, &s->nbands))
        return -1;
    if (s->nints != 31 + 5 * s->nbands) return bad(c, "block: %d bands need %d integers", s->nbands, 31 + 5 * s->nbands);
    s->bands = (er_band *)malloc((size_t)s->nbands * sizeof(er_band));
    if (!s->bands) return bad(c, "out of memory");
    for (int b = 0; b < s->nbands; b++) {
        int f[5];
        for (int j = 0; j < 5; j++)
            if (get_int(c, 31 + 5 * b + j, 0, BIG, &f[j])) return -1;
        s->bands[b] = (er_band){f[0], f[1], f[2], f[3], f[4]};
    }
    problem = er_block_check(g, s->chunk, s->bands, s->nbands, &s->split);
    if (problem) return bad(c, "block: %s", problem);
    uint64_t E = (uint64_t)g->hidden_channels, cin = (uint64_t)g->in_channels, cout = (uint64_t)g->out_channels;
    uint64_t k2 = (uint64_t)g->expand_kernel * g->expand_kernel, kd2 = (uint64_t)g->dw_kernel * g->dw_kernel;
    uint64_t in = cin * g->in_height * g->in_width, out = cout * g->out_height * g->out_width;
    if (in > MAX_FLOATS || out > MAX_FLOATS || E * cin * k2 > MAX_FLOATS || E * kd2 > MAX_FLOATS || E * cout > MAX_FLOATS)
        return bad(c, "block: tensors too large");
    int expand = g->expand_kernel > 0;
    if (want(c, 0, ANY_SOURCE, in, 0) || want(c, 1, ARENA_ONLY, out, 0) ||
        want(c, 2, WEIGHTS_ONLY | (expand ? 0 : OPTIONAL), expand ? E * cin * k2 : 0, 0) ||
        want(c, 3, WEIGHTS_ONLY | (expand ? 0 : OPTIONAL), expand ? E * cin * k2 : 0, 0) ||
        want(c, 4, WEIGHTS_ONLY | (expand ? 0 : OPTIONAL), expand ? E : 0, 0) ||
        want(c, 5, WEIGHTS_ONLY, E * kd2, 0) || want(c, 6, WEIGHTS_ONLY, E, 0) ||
        want(c, 7, WEIGHTS_ONLY, E * cout, 0) || want(c, 8, WEIGHTS_ONLY, cout, 0) ||
        want(c, 9, ARENA_ONLY | (expand ? 0 : OPTIONAL), expand ? (uint64_t)slices * (uint64_t)expanded_slice : 0, 1) ||
        want(c, 10, ARENA_ONLY, (uint64_t)slices * (uint64_t)depthwise_slice, 1))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_pointwise(checker *c, er_step *s)
{
    int M, N, K, threads;
    if (counts(c, 5, 5, 2) || get_int(c, 0, 1, BIG, &M) || get_int(c, 1, 1, BIG, &N) || get_int(c, 2, 1, BIG, &K) ||
        get_act(c, 3, 0, &s->act) || get_int(c, 4, 1, ER_MAX_THREADS, &threads))
        return -1;
    long edge = er_pw_edge_floats(N, K);
    if (want(c, 0, ANY_SOURCE, (uint64_t)K * N, 0) || want(c, 1, WEIGHTS_ONLY, (uint64_t)er_pw_packed_floats(M, K), 0) ||
        want(c, 2, ANY_SOURCE | OPTIONAL, (uint64_t)M, 0) || want(c, 3, ARENA_ONLY, (uint64_t)M * N, 0) ||
        want(c, 4, ARENA_ONLY | (edge ? 0 : OPTIONAL), (uint64_t)edge, 1))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_im2col(checker *c, er_step *s)
{
    int v[13];
    if (counts(c, 13, 2, 0)) return -1;
    for (int i = 0; i < 13; i++)
        if (get_int(c, i, i == 9 || i == 10 ? 0 : 1, BIG, &v[i])) return -1;
    uint64_t cols = (uint64_t)v[0] * v[3] * v[4] * v[11] * v[12];
    if (cols > MAX_FLOATS) return bad(c, "im2col: too large");
    (void)s;
    return want(c, 0, ANY_SOURCE, (uint64_t)v[0] * v[1] * v[2], 0) || want(c, 1, ARENA_ONLY, cols, 0) ? -1 : 0;
}

static int check_depthwise(checker *c, er_step *s)
{
    int C, h, w, k, st, p[4], threads;
    if (counts(c, 11, 4, 2) || get_int(c, 0, 1, BIG, &C) || get_int(c, 1, 1, BIG, &h) || get_int(c, 2, 1, BIG, &w) ||
        get_int(c, 3, 1, 1 << 12, &k) || get_int(c, 4, 1, BIG, &st) || get_int(c, 5, 0, BIG, &p[0]) ||
        get_int(c, 6, 0, BIG, &p[1]) || get_int(c, 7, 0, BIG, &p[2]) || get_int(c, 8, 0, BIG, &p[3]) ||
        get_act(c, 9, 0, &s->act) || get_int(c, 10, 1, ER_MAX_THREADS, &threads))
        return -1;
    if ((int64_t)h + p[0] + p[2] < k || (int64_t)w + p[1] + p[3] < k) return bad(c, "depthwise: kernel larger than the padded input");
    uint64_t ho = ((uint64_t)h + p[0] + p[2] - k) / st + 1, wo = ((uint64_t)w + p[1] + p[3] - k) / st + 1;
    if (want(c, 0, ANY_SOURCE, (uint64_t)C * h * w, 0) || want(c, 1, WEIGHTS_ONLY, (uint64_t)C * k * k, 0) ||
        want(c, 2, ANY_SOURCE, (uint64_t)C, 0) || want(c, 3, ARENA_ONLY, (uint64_t)C * ho * wo, 0))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_gap(checker *c, er_step *s)
{
    int C, pixels, threads;
    if (counts(c, 3, 2, 0) || get_int(c, 0, 1, BIG, &C) || get_int(c, 1, 1, BIG, &pixels) ||
        get_int(c, 2, 1, ER_MAX_THREADS, &threads) || want(c, 0, ANY_SOURCE, (uint64_t)C * pixels, 0) ||
        want(c, 1, ARENA_ONLY, (uint64_t)C, 0))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_gemv(checker *c, er_step *s)
{
    int rows, K, threads;
    if (counts(c, 3, 4, 0) || get_int(c, 0, 1, BIG, &rows) || get_int(c, 1, 1, BIG, &K) ||
        get_int(c, 2, 1, ER_MAX_THREADS, &threads) || want(c, 0, ANY_SOURCE, (uint64_t)rows * K, 0) ||
        want(c, 1, ANY_SOURCE, (uint64_t)K, 0) || want(c, 2, ANY_SOURCE | OPTIONAL, (uint64_t)rows, 0) ||
        want(c, 3, ARENA_ONLY, (uint64_t)rows, 0))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_pool(checker *c, er_step *s)
{
    int v[14];
    if (counts(c, 14, 2, 0)) return -1;
    for (int i = 0; i < 14; i++)
        if (get_int(c, i, i == 0 || i >= 10 ? 0 : 1, i == 0 ? 2 : BIG, &v[i])) return -1;
    int C = v[1], h = v[2], w = v[3], ho = v[4], wo = v[5], kh = v[6], kw = v[7], sh = v[8], sw = v[9];
    if (v[10] >= kh || v[11] >= kw || v[12] >= kh || v[13] >= kw || (int64_t)(ho - 1) * sh >= (int64_t)h + v[10] ||
        (int64_t)(wo - 1) * sw >= (int64_t)w + v[11])
        return bad(c, "pool: pads or output size outside what the kernel allows");
    (void)s;
    return want(c, 0, ANY_SOURCE, (uint64_t)C * h * w, 0) || want(c, 1, ARENA_ONLY, (uint64_t)C * ho * wo, 0) ? -1 : 0;
}

static int check_conv(checker *c, er_step *s)
{
    er_conv_geom *g = &s->conv;
    int v[19], threads;
    if (counts(c, 21, 6, 2)) return -1;
    for (int i = 0; i < 19; i++)
        if (get_int(c, i, i >= 11 && i <= 14 ? 0 : 1, BIG, &v[i])) return -1;
    if (get_act(c, 19, 0, &s->act) || get_int(c, 20, 1, ER_MAX_THREADS, &threads)) return -1;
    *g = (er_conv_geom){.cin = v[0], .height = v[1], .width = v[2], .cout = v[3], .group = v[4], .kh = v[5],
                        .kw = v[6], .sh = v[7], .sw = v[8], .dh = v[9], .dw = v[10],
                        .pads = {v[11], v[12], v[13], v[14]}, .out_height = v[15], .out_width = v[16],
                        .band_rows = v[17], .slab_groups = v[18]};
    const char *problem = er_conv_check(g);
    if (problem) return bad(c, "conv: %s", problem);
    uint64_t in = (uint64_t)g->cin * g->height * g->width, out = (uint64_t)g->cout * g->out_height * g->out_width;
    if (in > MAX_FLOATS || out > MAX_FLOATS) return bad(c, "conv: tensors too large");
    if (want(c, 0, ANY_SOURCE, in, 0) || want(c, 1, WEIGHTS_ONLY, (uint64_t)er_conv_packed_floats(g), 0) ||
        want(c, 2, ANY_SOURCE | OPTIONAL, (uint64_t)g->cout, 0) || want(c, 3, ANY_SOURCE | OPTIONAL, out, 0) ||
        want(c, 4, ARENA_ONLY, out, 0) || want(c, 5, ARENA_ONLY, (uint64_t)er_conv_scratch_floats(g), 1))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_squeeze_excite(checker *c, er_step *s)
{
    int C, pixels, S, threads;
    if (counts(c, 6, 7, 4) || get_int(c, 0, 1, BIG, &C) || get_int(c, 1, 1, BIG, &pixels) ||
        get_int(c, 2, 1, BIG, &S) || get_act(c, 3, 0, &s->act) || get_act(c, 4, 2, &s->act2) ||
        get_int(c, 5, 1, ER_MAX_THREADS, &threads))
        return -1;
    uint64_t plane = (uint64_t)C * pixels;
    if (plane > MAX_FLOATS) return bad(c, "squeeze-excite: too large");
    if (want(c, 0, ANY_SOURCE, plane, 0) || want(c, 1, ARENA_ONLY, plane, 0) ||
        want(c, 2, ANY_SOURCE, (uint64_t)S * C, 0) || want(c, 3, ANY_SOURCE, (uint64_t)S, 0) ||
        want(c, 4, ANY_SOURCE, (uint64_t)C * S, 0) || want(c, 5, ANY_SOURCE, (uint64_t)C, 0) ||
        want(c, 6, ARENA_ONLY, (uint64_t)C + S, 1))
        return -1;
    s->threads = threads;
    return 0;
}

static int check_shuffle(checker *c, er_step *s)
{
    int C, pixels, groups, threads;
    if (counts(c, 4, 2, 0) || get_int(c, 0, 1, BIG, &C) || get_int(c, 1, 1, BIG, &pixels) ||
        get_int(c, 2, 1, C, &groups) || get_int(c, 3, 1, ER_MAX_THREADS, &threads))
        return -1;
    if (C % groups) return bad(c, "shuffle: %d groups do not divide %d channels", groups, C);
    uint64_t plane = (uint64_t)C * pixels;
    if (plane > MAX_FLOATS || want(c, 0, ANY_SOURCE, plane, 0) || want(c, 1, ARENA_ONLY, plane, 0)) return -1;
    s->threads = threads;
    return 0;
}

/* binary (kind, threads; a, b, y) and activation (act, threads; x, y): every reference of y's size. */
static int check_elementwise(checker *c, er_step *s, int nrefs)
{
    int threads;
    if (counts(c, 2, nrefs, nrefs == 3 ? 0 : 2)) return -1;
    if (nrefs == 3 ? get_int(c, 0, 0, 3, &s->kind) : get_act(c, 0, 0, &s->act)) return -1;
    if (get_int(c, 1, 1, ER_MAX_THREADS, &threads)) return -1;
    uint64_t n = c->step->refs[nrefs - 1].count;
    if (n < 1) return bad(c, "an elementwise step of no elements");
    for (int i = 0; i < nrefs; i++)
        if (want(c, i, i == nrefs - 1 ? ARENA_ONLY : ANY_SOURCE, n, 0)) return -1;
    s->threads = threads;
    return 0;
}

/* OP_SEGMENT: ints threads, ntensors, nsteps, ncalls, gap (1: the last step is a global average pool:
 * the output starts at 0 and is scaled by floats[0] after the calls), then the tensor rows and the step
 * rows of segment.c's tables (ER_SEG_TENSOR_FIELDS / ER_SEG_STEP_FIELDS each: offsets into the params
 * and into the segment arena) and the calls (step, lo, hi); refs x, out, the segment arena, the params. */
static const float *segment_params(const edgerun_model *m, const er_step *s)
{
    return (const float *)(uintptr_t)(m->weights + s->refs[3].offset);
}

static const char *bind_segment(const er_step *s, const float *x, float *out, float *arena, const float *params)
{
    const er_segment *g = s->segment;
    return er_seg_bind(g->tensor_rows, g->ntensors, g->step_rows, g->nsteps, x, (long)s->refs[0].count, out,
                       (long)s->refs[1].count, arena, (long)s->refs[2].count, params, (long)s->refs[3].count,
                       g->tensors, g->steps);
}

static int check_segment(checker *c, er_step *s)
{
    int threads, nt, ns, nc, gap;
    if (get_int(c, 0, 1, ER_MAX_THREADS, &threads) || get_int(c, 1, 2, 1 << 16, &nt) ||
        get_int(c, 2, 1, 1 << 16, &ns) || get_int(c, 3, 1, 1 << 24, &nc) || get_int(c, 4, 0, 1, &gap) ||
        counts(c, 5 + ER_SEG_TENSOR_FIELDS * nt + ER_SEG_STEP_FIELDS * ns + 3 * nc, 4, 1))
        return -1;
    if (want(c, 0, ANY_SOURCE, s->refs[0].count, 0) || want(c, 1, ARENA_ONLY, s->refs[1].count, 0) ||
        want(c, 2, ARENA_ONLY, 0, 1) || want(c, 3, WEIGHTS_ONLY, 0, 1))
        return -1;
    er_segment *g = (er_segment *)calloc(1, sizeof *g);
    if (!g) return bad(c, "out of memory");
    s->segment = g;
    g->ntensors = nt, g->nsteps = ns, g->ncalls = nc, g->gap = gap;
    g->tensor_rows = s->ints + 5;
    g->step_rows = g->tensor_rows + (long)ER_SEG_TENSOR_FIELDS * nt;
    g->tensors = (er_seg_tensor *)calloc((size_t)nt, sizeof *g->tensors);
    g->steps = (er_seg_step *)calloc((size_t)ns, sizeof *g->steps);
    g->calls = (er_seg_call *)calloc((size_t)nc, sizeof *g->calls);
    if (!g->tensors || !g->steps || !g->calls) return bad(c, "out of memory");
    const int64_t *v = g->step_rows + (long)ER_SEG_STEP_FIELDS * ns;
    for (int i = 0; i < nc; i++, v += 3) {
        if (v[0] < 0 || v[0] >= ns || v[1] < 0 || v[2] < 0 || v[1] > BIG || v[2] > BIG)
            return bad(c, "segment: call %d is out of range", i);
        g->calls[i] = (er_seg_call){(int)v[0], (int)v[1], (int)v[2]};
    }
    /* checked with stand-in bases (any non-NULL address, never read here): every run binds the real ones */
    float *stand_in = (float *)(uintptr_t)c->model->weights;
    const char *problem = bind_segment(s, stand_in, stand_in, stand_in, segment_params(c->model, s));
    if (!problem) problem = er_seg_check(g->tensors, nt, g->steps, ns, g->calls, nc);
    if (problem) return bad(c, "segment: %s", problem);
    s->threads = threads;
    return 0;
}

static int check_same_count(checker *c, int nrefs)
{
    if (counts(c, 0, nrefs, 0)) return -1;
    uint64_t n = c->step->refs[nrefs - 1].count;
    for (int i = 0; i < nrefs; i++)
        if (want(c, i, i == nrefs - 1 ? ARENA_ONLY : ANY_SOURCE, n, 0)) return -1;
    return 0;
}

static int check_transpose(checker *c, er_step *s)
{
    int rank, dim, seen[EDGERUN_MAX_RANK] = {0};
    uint64_t total = 1;
    (void)s;
    if (get_int(c, 0, 1, EDGERUN_MAX_RANK, &rank) || counts(c, 1 + 2 * rank, 2, 0)) return -1;
    for (int i = 0; i < rank; i++) {
        int p;
        if (get_int(c, 1 + i, 1, BIG, &dim) || get_int(c, 1 + rank + i, 0, rank - 1, &p)) return -1;
        if (seen[p]++) return bad(c, "transpose: perm is not a permutation");
        total *= (uint64_t)dim;
        if (total > MAX_FLOATS) return bad(c, "transpose: too large");
    }
    return want(c, 0, ANY_SOURCE, total, 0) || want(c, 1, ARENA_ONLY, total, 0) ? -1 : 0;
}

static int check_concat(checker *c, er_step *s)
{
    int outer, n, size;
    uint64_t sum = 0;
    (void)s;
    if (get_int(c, 0, 1, BIG, &outer) || get_int(c, 1, 1, 4096, &n) || counts(c, 2 + n, n + 1, 0)) return -1;
    for (int i = 0; i < n; i++) {
        if (get_int(c, 2 + i, 0, BIG, &size) || want(c, i, ANY_SOURCE, (uint64_t)outer * size, 0)) return -1;
        sum += (uint64_t)size;
    }
    return want(c, n, ARENA_ONLY, (uint64_t)outer * sum, 0);
}

static int check_step(checker *c, er_step *s)
{
    for (int i = 0; i < s->nrefs; i++)
        if (ref_in_bounds(c, i)) return -1;
    switch (s->op) {
    case OP_BLOCK: return check_block(c, s);
    case OP_POINTWISE: return check_pointwise(c, s);
    case OP_IM2COL: return check_im2col(c, s);
    case OP_DEPTHWISE: return check_depthwise(c, s);
    case OP_GAP: return check_gap(c, s);
    case OP_GEMV: return check_gemv(c, s);
    case OP_POOL: return check_pool(c, s);
    case OP_COPY: return check_same_count(c, 2);
    case OP_TRANSPOSE: return check_transpose(c, s);
    case OP_CONCAT: return check_concat(c, s);
    case OP_ADD: return check_same_count(c, 3);
    case OP_RELU: return check_same_count(c, 2);
    case OP_CONV: return check_conv(c, s);
    case OP_SQUEEZE_EXCITE: return check_squeeze_excite(c, s);
    case OP_SHUFFLE: return check_shuffle(c, s);
    case OP_BINARY: return check_elementwise(c, s, 3);
    case OP_ACTIVATION: return check_elementwise(c, s, 2);
    case OP_SEGMENT: return check_segment(c, s);
    default: return bad(c, "unknown opcode %d", s->op);
    }
}

/* ------------------------------------------------------------------ opening */
static void free_model(edgerun_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_inputs; i++) free(m->inputs[i].name);
    for (int i = 0; i < m->n_outputs; i++) free(m->outputs[i].name);
    if (m->steps) {
        for (int i = 0; i < m->n_steps; i++) {
            free(m->steps[i].ints);
            free(m->steps[i].refs);
            free(m->steps[i].bands);
            er_segment *g = m->steps[i].segment;
            if (g) {
                free(g->tensors);
                free(g->steps);
                free(g->calls);
                free(g);
            }
        }
        free(m->steps);
    }
#ifdef ER_HAVE_MMAP
    if (m->mapping) munmap(m->mapping, m->file_size);
#endif
    free(m->owned_copy);
    free(m);
}

void edgerun_close(edgerun_model *model) { free_model(model); }

/* Drops the file pages of [p, p + n) from this process's memory (mapped files only): the checksums read
 * every byte once, and pages the kernels never read should not stay resident. Pages partly inside count
 * too (the caller releases from the section's start each time: a page a chunk boundary splits, and the
 * pages the kernel maps around each fault, up to 64 KiB before it, into a part released already, go with
 * the next chunk). */
static void release_pages(const edgerun_model *m, const uint8_t *p, size_t n)
{
#ifdef ER_HAVE_MMAP
    if (!m->mapping) return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    uintptr_t first = (uintptr_t)m->mapping, last = first + m->file_size;
    uintptr_t start = (uintptr_t)p / (uintptr_t)page * (uintptr_t)page;
    uintptr_t end = ((uintptr_t)p + n + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    if (start < first) start = first;
    if (end > last) end = last;
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
#else
    (void)m, (void)p, (void)n;
#endif
}

static edgerun_status read_io(reader *r, er_io *io, int output, edgerun_error *error)
{
    const char *name;
    int len, rank;
    uint32_t dtype;
    int64_t *dims = NULL;
    if (read_text(r, &name, &len) || read_u32(r, &dtype)) return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: C program inputs/outputs are malformed");
    int status = read_ints(r, &dims, &rank);
    if (status == -2) return fail(error, EDGERUN_E_NOMEM, "out of memory");
    if (status || rank > EDGERUN_MAX_RANK || read_ref(r, &io->ref)) {
        free(dims);
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: C program inputs/outputs are malformed");
    }
    io->name = (char *)malloc((size_t)len + 1);
    if (!io->name) {
        free(dims);
        return fail(error, EDGERUN_E_NOMEM, "out of memory");
    }
    memcpy(io->name, name, (size_t)len);
    io->name[len] = '\0';
    io->info.name = io->name;
    io->info.rank = rank;
    uint64_t floats = 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 1 || dims[i] > MAX_DIM || (floats *= (uint64_t)dims[i]) > MAX_FLOATS) {
            free(dims);
            return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: %s '%s' has an invalid shape", output ? "output" : "input", io->name);
        }
        io->info.dims[i] = dims[i];
    }
    free(dims);
    if (dtype != EDGERUN_FLOAT32)
        return fail(error, EDGERUN_E_UNSUPPORTED, "%s '%s' is not float32: the C runtime runs float32 models only",
                    output ? "output" : "input", io->name);
    io->info.dtype = EDGERUN_FLOAT32;
    io->info.bytes = (size_t)(floats * 4);
    if (output && (io->ref.region != REGION_ARENA || io->ref.count != floats))
        return fail(error, EDGERUN_E_UNSUPPORTED, "output '%s' is not computed in the arena (a constant or an input): "
                    "the C runtime does not run this graph", io->name);
    if (!output && io->ref.region != REGION_NONE)
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: input '%s' has a placement", io->name);
    return EDGERUN_OK;
}

static edgerun_status read_step(reader *r, er_step *s, edgerun_error *error)
{
    uint32_t op, nrefs, nfloats;
    const uint8_t *p;
    int status;
    if (read_u32(r, &op) || read_text(r, &s->name, &s->name_len) || read_text(r, &s->op_type, &s->op_len))
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: a C program step is malformed");
    s->op = (int)(op < OP_COUNT ? op : OP_COUNT);
    status = read_ints(r, &s->ints, &s->nints);
    if (status == -2) return fail(error, EDGERUN_E_NOMEM, "out of memory");
    if (status || read_u32(r, &nrefs) || nrefs > 4097)
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: step '%.*s' is malformed", s->name_len, s->name);
    s->nrefs = (int)nrefs;
    if (nrefs) {
        s->refs = (er_ref *)malloc(nrefs * sizeof(er_ref));
        if (!s->refs) return fail(error, EDGERUN_E_NOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < nrefs; i++)
        if (read_ref(r, &s->refs[i]))
            return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: step '%.*s' has a malformed tensor reference", s->name_len, s->name);
    if (read_u32(r, &nfloats) || nfloats > 4 || take(r, nfloats * 4, &p))
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: step '%.*s' is malformed", s->name_len, s->name);
    s->nfloats = (int)nfloats;
    for (uint32_t i = 0; i < nfloats; i++) {
        uint32_t bits = le32(p + 4 * i);
        memcpy(&s->floats[i], &bits, 4);
    }
    return EDGERUN_OK;
}

static int compare_refs(const void *a, const void *b)
{
    const er_ref *x = (const er_ref *)a, *y = (const er_ref *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* A weight reference the kernels read: all but `we` of a block whose expansion is a plain 1x1 (block.c
 * reads its transposed copy `we_t` then). */
static int weights_read(const er_step *s, int j)
{
    const er_block_geom *g = &s->geom;
    if (s->refs[j].region != REGION_WEIGHTS) return 0;
    return !(s->op == OP_BLOCK && j == 2 && g->expand_kernel == 1 && g->expand_stride == 1 &&
             !(g->expand_pads[0] | g->expand_pads[1] | g->expand_pads[2] | g->expand_pads[3]));
}

/* Bytes of the weights section the kernels read (the union of those references). */
static size_t weight_bytes_read(const edgerun_model *m)
{
    size_t n = 0, k = 0;
    for (int i = 0; i < m->n_steps; i++)
        for (int j = 0; j < m->steps[i].nrefs; j++) n += weights_read(&m->steps[i], j);
    er_ref *all = (er_ref *)malloc((n ? n : 1) * sizeof(er_ref));
    if (!all) return 0;
    for (int i = 0; i < m->n_steps; i++)
        for (int j = 0; j < m->steps[i].nrefs; j++)
            if (weights_read(&m->steps[i], j)) all[k++] = m->steps[i].refs[j];
    qsort(all, n, sizeof(er_ref), compare_refs);
    uint64_t total = 0, covered_to = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t start = all[i].offset, end = all[i].offset + all[i].count * 4;
        if (start < covered_to) start = covered_to;
        if (end > start) total += end - start;
        if (end > covered_to) covered_to = end;
    }
    free(all);
    return (size_t)total;
}

static edgerun_status parse_program(edgerun_model *m, const uint8_t *blob, uint64_t length, edgerun_error *error)
{
    reader r = {blob, blob + length - TRAILER_BYTES};
    const uint8_t *magic;
    uint32_t version, threads, n_in, n_out, n_steps, tiles;
    uint64_t arena;
    if (take(&r, 8, &magic) || memcmp(magic, PROGRAM_MAGIC, 8))
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: the C program does not start with its magic");
    if (read_u32(&r, &version) || read_u32(&r, &threads) || read_u64(&r, &arena) || read_u32(&r, &n_in) ||
        read_u32(&r, &n_out) || read_u32(&r, &n_steps) || read_u32(&r, &tiles))
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: the C program is truncated");
    if (version != PROGRAM_VERSION)
        return fail(error, EDGERUN_E_VERSION, "the bundle's C program is version %u; this runtime reads version %d: "
                    "recompile the bundle with the edgerun that built this runtime", version, PROGRAM_VERSION);
    if (threads < 1 || threads > ER_MAX_THREADS || n_in < 1 || n_in > MAX_IO || n_out < 1 || n_out > MAX_IO ||
        n_steps < 1 || n_steps > (1u << 20) || arena > ((uint64_t)1 << 40))
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: C program counts out of range");
    long panel_rows = er_pw_packed_floats(1, 1), tile_columns = er_pw_edge_floats(1, 1);
    if ((tiles & 0xffff) != (uint32_t)panel_rows || tiles >> 16 != (uint32_t)tile_columns)
        return fail(error, EDGERUN_E_UNSUPPORTED, "the bundle's 1x1 weights are packed for GEMM tiles of %u x %u "
                    "(the instruction set of the edgerun that compiled it); this runtime's kernels use %ld x %ld: "
                    "build the runtime with the same ARCH_FLAGS, or compile the bundle with an edgerun built like "
                    "it", tiles & 0xffff, tiles >> 16, panel_rows, tile_columns);
    m->threads = (int)threads;
    m->arena_bytes = arena;
    edgerun_status status;
    for (uint32_t i = 0; i < n_in; i++) {
        m->n_inputs = (int)i + 1;
        if ((status = read_io(&r, &m->inputs[i], 0, error)) != EDGERUN_OK) return status;
    }
    for (uint32_t i = 0; i < n_out; i++) {
        m->n_outputs = (int)i + 1;
        if ((status = read_io(&r, &m->outputs[i], 1, error)) != EDGERUN_OK) return status;
        const er_ref *o = &m->outputs[i].ref;
        if (o->offset % 4 || o->offset > arena || o->count > (arena - o->offset) / 4)
            return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: output '%s' lies outside the arena", m->outputs[i].name);
    }
    m->steps = (er_step *)calloc(n_steps, sizeof(er_step));
    if (!m->steps) return fail(error, EDGERUN_E_NOMEM, "out of memory");
    for (uint32_t i = 0; i < n_steps; i++) {
        m->n_steps = (int)i + 1;
        if ((status = read_step(&r, &m->steps[i], error)) != EDGERUN_OK) return status;
    }
    for (const uint8_t *p = r.p; p < r.end; p++)
        if (*p) return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: unexpected bytes after the C program's steps");
    int unsupported = 0;
    const er_step *first = NULL;
    for (int i = 0; i < m->n_steps; i++)
        if (m->steps[i].op == OP_UNSUPPORTED && unsupported++ == 0) first = &m->steps[i];
    if (first)
        return fail(error, EDGERUN_E_UNSUPPORTED, "step '%.*s' (op %.*s) has no C kernel%s; %d step(s) of %d are "
                    "unsupported (header.c_program.unsupported says why)", first->name_len, first->name,
                    first->op_len, first->op_type, unsupported > 1 ? " (and others)" : "", unsupported, m->n_steps);
    char problem[200];
    for (int i = 0; i < m->n_steps; i++) {
        checker c = {m, &m->steps[i], problem, sizeof problem};
        if (check_step(&c, &m->steps[i]))
            return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: step %d '%.*s' (op %.*s): %s", i,
                        m->steps[i].name_len, m->steps[i].name, m->steps[i].op_len, m->steps[i].op_type, problem);
    }
    return EDGERUN_OK;
}

static edgerun_status check_file(edgerun_model *m, unsigned flags, edgerun_error *error)
{
    const uint8_t *f = m->file;
    uint64_t size = m->file_size;
    if (size < 8 || memcmp(f, BUNDLE_MAGIC, 8))
        return fail(error, EDGERUN_E_CORRUPT, "not an edgerun bundle: the magic bytes are missing");
    if (size < PREFIX_BYTES) return fail(error, EDGERUN_E_CORRUPT, "bundle is truncated: %llu bytes", (unsigned long long)size);
    unsigned major = (unsigned)f[8] | (unsigned)f[9] << 8, minor = (unsigned)f[10] | (unsigned)f[11] << 8;
    if (major != FORMAT_MAJOR)
        return fail(error, EDGERUN_E_VERSION, "bundle format version %u.%u is not supported: this runtime reads "
                    "major version %d; recompile the bundle", major, minor, FORMAT_MAJOR);
    uint64_t header = le64(f + 16);
    if (header == 0 || header > MAX_HEADER_BYTES || header > size - PREFIX_BYTES)
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: header length %llu is out of range", (unsigned long long)header);
    uint8_t digest[32];
    er_sha256(f + PREFIX_BYTES, (size_t)header, digest);
    if (memcmp(digest, f + 24, 32)) return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: header checksum mismatch");
    uint64_t weights_at = (PREFIX_BYTES + header + 63) / 64 * 64;
    if (weights_at > size) return fail(error, EDGERUN_E_CORRUPT, "bundle is truncated inside its header padding");
    for (uint64_t i = PREFIX_BYTES + header; i < weights_at; i++)
        if (f[i]) return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: non-zero header padding");
    if (minor == 0 || !(le32(f + 12) & FLAG_C_PROGRAM))
        return fail(error, EDGERUN_E_NO_PROGRAM, "the bundle holds no C program (format %u.%u): recompile it with "
                    "`edgerun compile --c-runtime`", major, minor);
    uint64_t section = size - weights_at;
    if (section < TRAILER_BYTES || memcmp(f + size - 8, TRAILER_MAGIC, 8))
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: the C program's trailer is missing (truncated?)");
    const uint8_t *trailer = f + size - TRAILER_BYTES;
    uint64_t blob_checksum = le64(trailer), blob_length = le64(trailer + 8), weights_checksum = le64(trailer + 16);
    if (blob_length < 64 || blob_length % 64 || blob_length > section || (section - blob_length) % 64)
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: C program length %llu is out of range",
                    (unsigned long long)blob_length);
    const uint8_t *blob = f + size - blob_length;
    if (word_checksum(blob, (blob_length - TRAILER_BYTES) / 8, 0) != blob_checksum)
        return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: C program checksum mismatch");
    m->weights = f + weights_at;
    m->weights_size = section - blob_length;
    if (!(flags & EDGERUN_OPEN_SKIP_WEIGHTS_CHECK)) {
        const uint64_t chunk = 1 << 20; /* bytes, a multiple of 8 */
        uint64_t sum = 0;
        for (uint64_t at = 0; at < m->weights_size; at += chunk) {
            uint64_t n = m->weights_size - at < chunk ? m->weights_size - at : chunk;
            sum += word_checksum(m->weights + at, n / 8, at / 8);
            release_pages(m, m->weights, (size_t)(at + n)); /* from the start: see release_pages */
        }
        if (sum != weights_checksum) return fail(error, EDGERUN_E_CORRUPT, "corrupt bundle: weights checksum mismatch");
    }
    return parse_program(m, blob, blob_length, error);
}

/* Workers start now, not in the first run (starting threads allocates). */
static edgerun_status start_threads(const edgerun_model *m, edgerun_error *error)
{
    if (m->threads < 2) return EDGERUN_OK;
    er_team *team = NULL;
    const char *problem = er_team_begin(m->threads, &team);
    if (problem) return fail(error, EDGERUN_E_RUNTIME, "cannot start %d kernel threads: %s", m->threads, problem);
    er_team_end(team);
    return EDGERUN_OK;
}

static edgerun_status finish_open(edgerun_model *m, unsigned flags, edgerun_model **out, edgerun_error *error)
{
    edgerun_status status = check_file(m, flags, error);
    if (status == EDGERUN_OK) status = start_threads(m, error);
    if (status != EDGERUN_OK) {
        free_model(m);
        return status;
    }
    m->weight_bytes_read = weight_bytes_read(m);
    *out = m;
    return ok(error);
}

edgerun_status edgerun_open_memory(const void *data, size_t size, unsigned flags, edgerun_model **model,
                                   edgerun_error *error)
{
    if (!model) return fail(error, EDGERUN_E_ARGUMENT, "model must not be NULL");
    *model = NULL;
    if (!data && size) return fail(error, EDGERUN_E_ARGUMENT, "data is NULL");
    edgerun_model *m = (edgerun_model *)calloc(1, sizeof *m);
    if (!m) return fail(error, EDGERUN_E_NOMEM, "out of memory");
    m->file = (const uint8_t *)data;
    m->file_size = size;
    return finish_open(m, flags, model, error);
}

edgerun_status edgerun_open_file(const char *path, unsigned flags, edgerun_model **model, edgerun_error *error)
{
    if (!model || !path) return fail(error, EDGERUN_E_ARGUMENT, "path and model must not be NULL");
    *model = NULL;
    edgerun_model *m = (edgerun_model *)calloc(1, sizeof *m);
    if (!m) return fail(error, EDGERUN_E_NOMEM, "out of memory");
#ifdef ER_HAVE_MMAP
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        free(m);
        return fail(error, EDGERUN_E_IO, "cannot open '%s' as a regular file", path);
    }
    m->file_size = (size_t)st.st_size;
    if (m->file_size == 0) {
        close(fd);
        free(m);
        return fail(error, EDGERUN_E_CORRUPT, "not an edgerun bundle: '%s' is empty", path);
    }
    void *p = mmap(NULL, m->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        free(m);
        return fail(error, EDGERUN_E_IO, "cannot map '%s'", path);
    }
    m->mapping = p;
    m->file = (const uint8_t *)p;
#else
    FILE *in = fopen(path, "rb");
    long n = -1;
    if (!in || fseek(in, 0, SEEK_END) != 0 || (n = ftell(in)) < 0 || fseek(in, 0, SEEK_SET) != 0) {
        if (in) fclose(in);
        free(m);
        return fail(error, EDGERUN_E_IO, "cannot open '%s'", path);
    }
    m->owned_copy = malloc(n ? (size_t)n : 1);
    if (!m->owned_copy || fread(m->owned_copy, 1, (size_t)n, in) != (size_t)n) {
        fclose(in);
        free(m->owned_copy);
        free(m);
        return fail(error, EDGERUN_E_IO, "cannot read '%s'", path);
    }
    fclose(in);
    m->file = (const uint8_t *)m->owned_copy;
    m->file_size = (size_t)n;
#endif
    return finish_open(m, flags, model, error);
}

/* ------------------------------------------------------------------ queries */
int edgerun_input_count(const edgerun_model *model) { return model ? model->n_inputs : 0; }
int edgerun_output_count(const edgerun_model *model) { return model ? model->n_outputs : 0; }
int edgerun_planned_threads(const edgerun_model *model) { return model ? model->threads : 0; }
size_t edgerun_weight_bytes(const edgerun_model *model) { return model ? model->weight_bytes_read : 0; }

static edgerun_status io_info(const edgerun_model *m, int index, int output, edgerun_tensor_info *info,
                              edgerun_error *error)
{
    if (!m || !info) return fail(error, EDGERUN_E_ARGUMENT, "model and info must not be NULL");
    int n = output ? m->n_outputs : m->n_inputs;
    if (index < 0 || index >= n)
        return fail(error, EDGERUN_E_ARGUMENT, "%s index %d: the model has %d", output ? "output" : "input", index, n);
    *info = (output ? m->outputs : m->inputs)[index].info;
    return ok(error);
}

edgerun_status edgerun_input_info(const edgerun_model *model, int index, edgerun_tensor_info *info, edgerun_error *error)
{
    return io_info(model, index, 0, info, error);
}

edgerun_status edgerun_output_info(const edgerun_model *model, int index, edgerun_tensor_info *info, edgerun_error *error)
{
    return io_info(model, index, 1, info, error);
}

static edgerun_status check_threads(const edgerun_model *m, int threads, edgerun_error *error)
{
    if (threads != 0 && threads != m->threads)
        return fail(error, EDGERUN_E_THREADS, "the bundle was planned for %d thread(s), not %d: its scratch and thread "
                    "split are made for that count; compile it with `edgerun compile --threads %d`", m->threads,
                    threads, threads);
    return EDGERUN_OK;
}

edgerun_status edgerun_arena_bytes(const edgerun_model *model, int threads, size_t *bytes, edgerun_error *error)
{
    if (!model || !bytes) return fail(error, EDGERUN_E_ARGUMENT, "model and bytes must not be NULL");
    edgerun_status status = check_threads(model, threads, error);
    if (status != EDGERUN_OK) return status;
    *bytes = (size_t)model->arena_bytes;
    return ok(error);
}

/* ------------------------------------------------------------------ running */
typedef struct {
    const edgerun_model *model;
    uint8_t *arena;
    const void *const *inputs;
} run_env;

static float *at(const run_env *env, const er_ref *r)
{
    switch (r->region) {
    case REGION_ARENA: return (float *)(env->arena + r->offset);
    case REGION_WEIGHTS: return (float *)(uintptr_t)(env->model->weights + r->offset);
    case REGION_INPUT: return (float *)(uintptr_t)((const uint8_t *)env->inputs[r->index] + r->offset);
    default: return NULL;
    }
}

typedef struct {
    const float *x, *w, *bias;
    float *out;
    int channels, h, wd, k, s, ho, wo, parts;
    const int *pads;
    const er_act *act;
} depthwise_job;

/* The channels of one part, as the Python binding runs them (module.c). */
static void depthwise_item(void *ctx, int part)
{
    const depthwise_job *job = (const depthwise_job *)ctx;
    int c0, c1;
    er_share(job->channels, job->parts, part, &c0, &c1);
    long plane = (long)job->h * job->wd, out_plane = (long)job->ho * job->wo;
    for (int i = c0; i < c1; i++)
        er_depthwise_plane(job->x + i * plane, job->h, job->wd, job->w + (long)i * job->k * job->k, job->k, job->s,
                           job->pads, job->bias[i], job->act, job->out + i * out_plane, job->ho, job->wo);
}

static const char *run_depthwise(const run_env *env, const er_step *s)
{
    const int64_t *v = s->ints;
    int pads[4] = {(int)v[5], (int)v[6], (int)v[7], (int)v[8]};
    depthwise_job job = {.x = at(env, &s->refs[0]), .w = at(env, &s->refs[1]), .bias = at(env, &s->refs[2]),
                         .out = at(env, &s->refs[3]), .channels = (int)v[0], .h = (int)v[1], .wd = (int)v[2],
                         .k = (int)v[3], .s = (int)v[4], .pads = pads, .act = &s->act};
    job.ho = (job.h + pads[0] + pads[2] - job.k) / job.s + 1;
    job.wo = (job.wd + pads[1] + pads[3] - job.k) / job.s + 1;
    job.parts = er_worth_parts((double)job.channels * job.ho * job.wo * job.k * job.k, s->threads, job.channels);
    return er_run_parts(depthwise_item, &job, job.parts);
}

/* cols (C, kh, kw, ho, wo) = the input taps of every output pixel, zero where they fall in the pads. */
static void run_im2col(const run_env *env, const er_step *s)
{
    const int64_t *v = s->ints;
    int C = (int)v[0], h = (int)v[1], w = (int)v[2], kh = (int)v[3], kw = (int)v[4], sh = (int)v[5], sw = (int)v[6];
    int dh = (int)v[7], dw = (int)v[8], pt = (int)v[9], pl = (int)v[10], ho = (int)v[11], wo = (int)v[12];
    const float *x = at(env, &s->refs[0]);
    float *cols = at(env, &s->refs[1]);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < kh; i++)
            for (int j = 0; j < kw; j++)
                for (int oy = 0; oy < ho; oy++) {
                    int64_t iy = (int64_t)oy * sh + (int64_t)i * dh - pt;
                    for (int ox = 0; ox < wo; ox++) {
                        int64_t ix = (int64_t)ox * sw + (int64_t)j * dw - pl;
                        *cols++ = iy >= 0 && iy < h && ix >= 0 && ix < w ? x[((int64_t)c * h + iy) * w + ix] : 0.0f;
                    }
                }
}

static void run_transpose(const run_env *env, const er_step *s)
{
    int rank = (int)s->ints[0];
    int64_t dims[EDGERUN_MAX_RANK], stride[EDGERUN_MAX_RANK], out_dims[EDGERUN_MAX_RANK], step[EDGERUN_MAX_RANK];
    int64_t index[EDGERUN_MAX_RANK] = {0};
    for (int i = 0; i < rank; i++) dims[i] = s->ints[1 + i];
    stride[rank - 1] = 1;
    for (int i = rank - 2; i >= 0; i--) stride[i] = stride[i + 1] * dims[i + 1];
    for (int i = 0; i < rank; i++) {
        int p = (int)s->ints[1 + rank + i];
        out_dims[i] = dims[p];
        step[i] = stride[p];
    }
    const float *x = at(env, &s->refs[0]);
    float *y = at(env, &s->refs[1]);
    uint64_t total = s->refs[1].count;
    int64_t source = 0;
    for (uint64_t n = 0; n < total; n++) {
        y[n] = x[source];
        for (int a = rank - 1; a >= 0; a--) { /* the next output index, its source offset kept along */
            source += step[a];
            if (++index[a] < out_dims[a]) break;
            source -= step[a] * out_dims[a];
            index[a] = 0;
        }
    }
}

static void run_concat(const run_env *env, const er_step *s)
{
    int64_t outer = s->ints[0], n = s->ints[1], row = 0;
    for (int i = 0; i < n; i++) row += s->ints[2 + i];
    float *y = at(env, &s->refs[n]);
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        int64_t size = s->ints[2 + i];
        const float *x = at(env, &s->refs[i]);
        for (int64_t o = 0; o < outer; o++) memcpy(y + o * row + start, x + o * size, (size_t)size * sizeof(float));
        start += size;
    }
}

static const char *run_segment(const run_env *env, const er_step *s)
{
    const er_segment *g = s->segment;
    float *x = at(env, &s->refs[0]), *out = at(env, &s->refs[1]), *arena = at(env, &s->refs[2]);
    const char *problem = bind_segment(s, x, out, arena, segment_params(env->model, s));
    if (problem) return problem;
    uint64_t n = s->refs[1].count;
    if (g->gap) memset(out, 0, (size_t)n * sizeof(float));
    problem = er_seg_run(g->tensors, g->steps, g->calls, g->ncalls, s->threads);
    if (g->gap)
        for (uint64_t i = 0; i < n; i++) out[i] *= s->floats[0];
    return problem;
}

static const char *run_step(const run_env *env, const er_step *s)
{
    const int64_t *v = s->ints;
    switch (s->op) {
    case OP_BLOCK: {
        er_block_weights w = {at(env, &s->refs[2]), at(env, &s->refs[3]), at(env, &s->refs[4]), at(env, &s->refs[5]),
                              at(env, &s->refs[6]), at(env, &s->refs[7]), at(env, &s->refs[8]), s->act, s->act2};
        return er_block_run(&s->geom, s->chunk, s->bands, s->nbands, &w, at(env, &s->refs[0]), at(env, &s->refs[1]),
                            at(env, &s->refs[9]), at(env, &s->refs[10]), &s->split);
    }
    case OP_POINTWISE:
        return er_rt_pointwise((int)v[0], (int)v[1], (int)v[2], at(env, &s->refs[1]), at(env, &s->refs[0]),
                               at(env, &s->refs[3]), at(env, &s->refs[2]), &s->act, at(env, &s->refs[4]), s->threads);
    case OP_IM2COL: run_im2col(env, s); return NULL;
    case OP_DEPTHWISE: return run_depthwise(env, s);
    case OP_GAP:
        return er_global_average_pool(at(env, &s->refs[0]), at(env, &s->refs[1]), (int)v[0], (long)v[1], s->threads);
    case OP_GEMV:
        return er_rt_gemv((int)v[0], (int)v[1], at(env, &s->refs[0]), at(env, &s->refs[1]), at(env, &s->refs[2]),
                          at(env, &s->refs[3]), s->threads);
    case OP_POOL: {
        int pads[4] = {(int)v[10], (int)v[11], (int)v[12], (int)v[13]};
        er_pool2d((int)v[0], at(env, &s->refs[0]), at(env, &s->refs[1]), (int)v[1], (int)v[2], (int)v[3], (int)v[4],
                  (int)v[5], (int)v[6], (int)v[7], (int)v[8], (int)v[9], pads);
        return NULL;
    }
    case OP_COPY:
        memmove(at(env, &s->refs[1]), at(env, &s->refs[0]), (size_t)s->refs[1].count * sizeof(float));
        return NULL;
    case OP_TRANSPOSE: run_transpose(env, s); return NULL;
    case OP_CONCAT: run_concat(env, s); return NULL;
    case OP_ADD: {
        const float *a = at(env, &s->refs[0]), *b = at(env, &s->refs[1]);
        float *y = at(env, &s->refs[2]);
        for (uint64_t i = 0; i < s->refs[2].count; i++) y[i] = a[i] + b[i];
        return NULL;
    }
    case OP_RELU: {
        const float *x = at(env, &s->refs[0]);
        float *y = at(env, &s->refs[1]);
        uint64_t n = s->refs[1].count;
        if (x != y) memmove(y, x, (size_t)n * sizeof(float));
        er_act relu = {ER_ACT_RELU, 0.0f, 0.0f};
        er_apply_activation(y, (long)n, &relu);
        return NULL;
    }
    case OP_CONV:
        return er_conv_run(&s->conv, at(env, &s->refs[1]), at(env, &s->refs[0]), at(env, &s->refs[2]),
                           at(env, &s->refs[3]), at(env, &s->refs[4]), at(env, &s->refs[5]), &s->act, s->threads);
    case OP_SQUEEZE_EXCITE:
        return er_rt_squeeze_excite(at(env, &s->refs[0]), at(env, &s->refs[1]), (int)v[0], (long)v[1], (int)v[2],
                                    at(env, &s->refs[2]), at(env, &s->refs[3]), &s->act, at(env, &s->refs[4]),
                                    at(env, &s->refs[5]), &s->act2, at(env, &s->refs[6]), s->threads);
    case OP_SHUFFLE:
        return er_rt_channel_shuffle(at(env, &s->refs[0]), at(env, &s->refs[1]), (int)v[0], (long)v[1], (int)v[2],
                                     s->threads);
    case OP_BINARY:
        return er_rt_binary(s->kind, at(env, &s->refs[0]), at(env, &s->refs[1]), at(env, &s->refs[2]),
                            (long)s->refs[2].count, s->threads);
    case OP_SEGMENT: return run_segment(env, s);
    case OP_ACTIVATION:
        return er_rt_activation(at(env, &s->refs[0]), at(env, &s->refs[1]), (long)s->refs[1].count, &s->act,
                                s->threads);
    default: return "unknown step";
    }
}

edgerun_status edgerun_run(edgerun_model *model, void *arena, size_t arena_bytes, int threads,
                           const void *const *inputs, const size_t *input_bytes, void *const *outputs,
                           const size_t *output_bytes, edgerun_error *error)
{
    if (!model || !inputs || !input_bytes || !outputs || !output_bytes)
        return fail(error, EDGERUN_E_ARGUMENT, "model, inputs, input_bytes, outputs and output_bytes must not be NULL");
    edgerun_status status = check_threads(model, threads, error);
    if (status != EDGERUN_OK) return status;
    if (arena_bytes < model->arena_bytes || (model->arena_bytes && !arena))
        return fail(error, EDGERUN_E_ARENA, "arena of %llu bytes is too small: the plan needs %llu",
                    (unsigned long long)arena_bytes, (unsigned long long)model->arena_bytes);
    if ((uintptr_t)arena % EDGERUN_ARENA_ALIGNMENT)
        return fail(error, EDGERUN_E_ARENA, "the arena must be aligned to %d bytes", EDGERUN_ARENA_ALIGNMENT);
    for (int i = 0; i < model->n_inputs; i++) {
        if (!inputs[i] || (uintptr_t)inputs[i] % 4)
            return fail(error, EDGERUN_E_ARGUMENT, "input %d ('%s') is NULL or not 4-byte aligned", i, model->inputs[i].name);
        if (input_bytes[i] != model->inputs[i].info.bytes)
            return fail(error, EDGERUN_E_SIZE, "input %d ('%s') has %llu bytes, the model takes %llu", i,
                        model->inputs[i].name, (unsigned long long)input_bytes[i],
                        (unsigned long long)model->inputs[i].info.bytes);
    }
    for (int i = 0; i < model->n_outputs; i++) {
        if (!outputs[i])
            return fail(error, EDGERUN_E_ARGUMENT, "output %d ('%s') is NULL", i, model->outputs[i].name);
        if (output_bytes[i] != model->outputs[i].info.bytes)
            return fail(error, EDGERUN_E_SIZE, "output %d ('%s') has %llu bytes, the model writes %llu", i,
                        model->outputs[i].name, (unsigned long long)output_bytes[i],
                        (unsigned long long)model->outputs[i].info.bytes);
    }
    run_env env = {model, (uint8_t *)arena, inputs};
    for (int i = 0; i < model->n_steps; i++) {
        const er_step *s = &model->steps[i];
        const char *problem = run_step(&env, s);
        if (problem)
            return fail(error, EDGERUN_E_RUNTIME, "step '%.*s' (op %.*s): %s", s->name_len, s->name, s->op_len,
                        s->op_type, problem);
    }
    for (int i = 0; i < model->n_outputs; i++)
        memcpy(outputs[i], env.arena + model->outputs[i].ref.offset, model->outputs[i].info.bytes);
    return ok(error);
}
