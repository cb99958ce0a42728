/* Native kernels of non-block steps (edgerun/kernels/native_steps.py) and their Python bindings:
 *
 * - pointwise (1x1) convolution on weights packed once at plan time into panels of PMR output
 *   channels (k-major, contiguous): the GEMM streams each panel instead of striding through the
 *   whole (Cin, Cout) matrix per k. Pixels are cut into tiles of PNR columns; the last N % PNR
 *   columns go through an edge panel (scratch from the arena, K-block x PNR floats, zero padded).
 *   K is blocked by PKC so that a tile's slice of the input stays in L2.
 * - 2-D max and average pooling of one image (C, H, W) -> (C, Ho, Wo), any kernel/stride/pads.
 *
 * Nothing here allocates memory: outputs and scratch come from the caller (the arena).
 * ER_NO_PYTHON leaves the Python bindings out (C programs: runtime/, tests_toolchain/kernel_check.c). */
#ifndef ER_NO_PYTHON
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <float.h>
#include <math.h>
#include <string.h>

#define ER_VECTOR_HELPERS
#include "kernels.h"
#ifndef ER_NO_PYTHON
#include "pybuffers.h"
#endif
#include "threadpool.h"

#define PKC 256 /* rows of K per block */

#if defined(__GNUC__)
#define PMR ER_PW_MR /* per instruction set: kernels.h */
#define PNR (2 * ER_VL) /* vectors and their helpers: kernels.h */
/* PMR x PNR tile: c (rows x cols valid, row stride ldc) = [c +] a (kc x PMR panel) ^T b (kc x PNR). */
static inline __attribute__((always_inline)) void
micro_body(int kc, const float *restrict a, const float *restrict b, long ldb, float *c, long ldc, int rows, int cols,
           int first, int last, const float *bias, const er_act *act)
{
    er_gemm_tile(PMR, kc, a, b, ldb, NULL, c, ldc, rows, cols, first, last, bias, NULL, act);
}

/* Full tiles with constant sizes (the accumulators stay in registers); edge tiles apart. */
static void micro_tile(int kc, const float *restrict a, const float *restrict b, long ldb, float *c, long ldc,
                       int rows, int cols, int first, int last, const float *bias, const er_act *act)
{
    if (rows == PMR && cols == PNR) {
        if (first)
            micro_body(kc, a, b, ldb, c, ldc, PMR, PNR, 1, last, bias, act);
        else
            micro_body(kc, a, b, ldb, c, ldc, PMR, PNR, 0, last, bias, act);
    } else {
        micro_body(kc, a, b, ldb, c, ldc, rows, cols, first, last, bias, act);
    }
}

static int in_registers(const er_act *act) { return er_act_in_registers(act); }

#else /* portable scalar fallback */
#define PMR 4
#define PNR 4

static void micro_tile(int kc, const float *a, const float *b, long ldb, float *c, long ldc, int rows, int cols,
                       int first, int last, const float *bias, const er_act *act)
{
    (void)last;
    (void)act;
    for (int i = 0; i < rows; i++) {
        for (int j = 0; j < cols; j++) {
            float s = first ? (bias ? bias[i] : 0.0f) : c[i * ldc + j];
            for (int k = 0; k < kc; k++) s += a[k * PMR + i] * b[k * ldb + j];
            c[i * ldc + j] = s;
        }
    }
}

static int in_registers(const er_act *act) { (void)act; return 0; }
#endif

long er_pw_packed_floats(int M, int K) { return (long)((M + PMR - 1) / PMR) * PMR * K; }

long er_pw_edge_floats(int N, int K) { return N % PNR ? (long)(K < PKC ? K : PKC) * PNR : 0; }

/* packed[(p*K + k)*PMR + i] = w[(p*PMR + i)*K + k], rows past M zero. w is (M, K) row-major. */
void er_pw_pack(int M, int K, const float *w, float *packed)
{
    int panels = (M + PMR - 1) / PMR;
    for (int p = 0; p < panels; p++)
        for (int k = 0; k < K; k++)
            for (int i = 0; i < PMR; i++) {
                int m = p * PMR + i;
                packed[((long)p * K + k) * PMR + i] = m < M ? w[(long)m * K + k] : 0.0f;
            }
}

/* One k-block of the GEMM over panels [p0, p1): every column, full tiles and the edge tile. */
typedef struct {
    int M, N, K, k0, kc, panels;
    const float *packed, *x, *bias, *edge;
    float *out;
    const er_act *act;
    int parts;
} pw_job;

static void pw_panels(const pw_job *job, int p0, int p1)
{
    int M = job->M, N = job->N, K = job->K, k0 = job->k0, kc = job->kc;
    int first = k0 == 0, last = k0 + kc == K;
    int full = N / PNR * PNR;
    /* columns per block: the block's kc rows of x stay in L2 while every panel passes */
    int nc = (192 * 1024 / (4 * kc)) / PNR * PNR;
    if (nc < PNR) nc = PNR;
    for (int j0 = 0; j0 < full; j0 += nc) {
        int j1 = full - j0 < nc ? full : j0 + nc;
        for (int p = p0; p < p1; p++) {
            int rows = M - p * PMR < PMR ? M - p * PMR : PMR;
            const float *a = job->packed + ((long)p * K + k0) * PMR;
            for (int n0 = j0; n0 < j1; n0 += PNR)
                micro_tile(kc, a, job->x + (long)k0 * N + n0, N, job->out + (long)p * PMR * N + n0, N, rows, PNR,
                           first, last, job->bias ? job->bias + p * PMR : NULL, job->act);
        }
    }
    if (full < N) {
        for (int p = p0; p < p1; p++) {
            int rows = M - p * PMR < PMR ? M - p * PMR : PMR;
            micro_tile(kc, job->packed + ((long)p * K + k0) * PMR, job->edge, PNR, job->out + (long)p * PMR * N + full,
                       N, rows, N - full, first, last, job->bias ? job->bias + p * PMR : NULL, job->act);
        }
    }
    if (last && job->act->kind != ER_ACT_NONE && !in_registers(job->act)) {
        int m0 = p0 * PMR, m1 = p1 * PMR < M ? p1 * PMR : M;
        er_apply_activation(job->out + (long)m0 * N, (long)(m1 - m0) * N, job->act);
    }
}

/* Part k of the panels: contiguous ranges, so each output row is computed by one thread. */
static void pw_item(void *ctx, int k)
{
    const pw_job *job = (const pw_job *)ctx;
    int p0, p1;
    er_share(job->panels, job->parts, k, &p0, &p1);
    if (p0 < p1) pw_panels(job, p0, p1);
}

/* The last N % PNR columns of the k-block's rows, zero padded to a whole tile. */
static void fill_edge(float *edge, const float *x, int N, int k0, int kc)
{
    int full = N / PNR * PNR, cols = N - full;
    for (int k = 0; k < kc; k++) {
        float *row = edge + (long)k * PNR;
        memcpy(row, x + (long)(k0 + k) * N + full, (size_t)cols * sizeof(float));
        memset(row + cols, 0, (size_t)(PNR - cols) * sizeof(float));
    }
}

/* out (M, N) = act(W x (K, N) + bias), W packed by er_pw_pack; edge: er_pw_edge_floats(N, K) floats.
 * With threads > 1 the panels (output channels) are shared out; every element is computed the
 * same way whatever the thread count. */
static const char *er_pw_gemm(int M, int N, int K, const float *packed, const float *x, float *out,
                              const float *bias, const er_act *act, float *edge, int threads)
{
    int panels = (M + PMR - 1) / PMR;
    int parts = er_worth_parts((double)M * N * K, threads, panels);
    er_team *team = NULL;
    const char *error = er_team_begin(parts, &team);
    if (error) return error;
    for (int k0 = 0; k0 < K; k0 += PKC) {
        int kc = K - k0 < PKC ? K - k0 : PKC;
        if (N % PNR) fill_edge(edge, x, N, k0, kc);
        pw_job job = {.M = M, .N = N, .K = K, .k0 = k0, .kc = kc, .panels = panels, .packed = packed, .x = x,
                      .bias = bias, .edge = edge, .out = out, .act = act, .parts = parts};
        er_team_run(team, pw_item, &job, parts);
    }
    er_team_end(team);
    return NULL;
}

/* ---------------------------------------------------------------- matrix-vector (classifiers) */
#define GEMV_ROWS 4

/* y[r] = bias[r] + w[r, :] . x for rows [r0, r1); w (rows, K) row-major. Each row's sum runs the same
 * way (vector partial sums along k, lanes added in order, then the scalar tail), so any split of the
 * rows between threads gives the same bits. */
static void gemv_rows(const float *w, const float *x, const float *bias, float *y, int K, int r0, int r1)
{
#if defined(__GNUC__)
    int kv = K / ER_VL * ER_VL;
    for (int r = r0; r < r1; r += GEMV_ROWS) {
        int rows = r1 - r < GEMV_ROWS ? r1 - r : GEMV_ROWS;
        er_vf acc[GEMV_ROWS];
        for (int i = 0; i < GEMV_ROWS; i++) acc[i] = er_splatv(0.0f);
        for (int k = 0; k < kv; k += ER_VL) {
            er_vf xv = er_loadv(x + k);
            for (int i = 0; i < rows; i++) acc[i] += er_loadv(w + (long)(r + i) * K + k) * xv;
        }
        for (int i = 0; i < rows; i++) {
            float lanes[ER_VL], sum = 0.0f;
            er_storev(lanes, acc[i]);
            for (int l = 0; l < ER_VL; l++) sum += lanes[l];
            for (int k = kv; k < K; k++) sum += w[(long)(r + i) * K + k] * x[k];
            y[r + i] = sum + (bias ? bias[r + i] : 0.0f);
        }
    }
#else
    for (int r = r0; r < r1; r++) {
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += w[(long)r * K + k] * x[k];
        y[r] = sum + (bias ? bias[r] : 0.0f);
    }
#endif
}

typedef struct {
    const float *w, *x, *bias;
    float *y;
    int rows, K, parts;
} gemv_job;

static void gemv_item(void *ctx, int part)
{
    const gemv_job *job = (const gemv_job *)ctx;
    int g0, g1;
    er_share((job->rows + GEMV_ROWS - 1) / GEMV_ROWS, job->parts, part, &g0, &g1);
    int r0 = g0 * GEMV_ROWS, r1 = g1 * GEMV_ROWS < job->rows ? g1 * GEMV_ROWS : job->rows;
    if (r0 < r1) gemv_rows(job->w, job->x, job->bias, job->y, job->K, r0, r1);
}

/* y (rows) = w (rows, K) x (K) + bias; threads take ranges of rows. */
static const char *er_gemv(int rows, int K, const float *w, const float *x, const float *bias, float *y,
                           int threads)
{
    gemv_job job = {.w = w, .x = x, .bias = bias, .y = y, .rows = rows, .K = K};
    job.parts = er_worth_parts((double)rows * K, threads, (rows + GEMV_ROWS - 1) / GEMV_ROWS);
    return er_run_parts(gemv_item, &job, job.parts);
}

#ifndef ER_NO_PYTHON
PyObject *er_py_gemv(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *w, *x, *bias, *y;
    int rows, K, threads = 1;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOOOii|i", &w, &x, &bias, &y, &rows, &K, &threads)) return NULL;
    if (rows < 1 || K < 1 || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "gemv: sizes must be positive and threads in 1..128");
        return NULL;
    }
    const float *wp = er_acquire(&set, w, "w", (Py_ssize_t)rows * K, 0, 0);
    const float *xp = wp ? er_acquire(&set, x, "x", K, 0, 0) : NULL;
    const float *bp = NULL;
    if (xp && bias != Py_None) bp = er_acquire(&set, bias, "bias", rows, 0, 0);
    float *yp = (xp && (bias == Py_None || bp)) ? er_acquire(&set, y, "y", rows, 0, 1) : NULL;
    if (!yp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_gemv(rows, K, wp, xp, bp, yp, threads);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "gemv: %s", error);
    Py_RETURN_NONE;
}

#endif /* ER_NO_PYTHON */

/* ---------------------------------------------------------------- global average pooling */
/* The mean of n floats: vector partial sums, lanes added in order, then the tail. */
static float mean_of(const float *p, long n)
{
    float sum = 0.0f;
    long i = 0;
#if defined(__GNUC__)
    er_vf acc = er_splatv(0.0f);
    for (; i + ER_VL <= n; i += ER_VL) acc += er_loadv(p + i);
    float lanes[ER_VL];
    er_storev(lanes, acc);
    for (int l = 0; l < ER_VL; l++) sum += lanes[l];
#endif
    for (; i < n; i++) sum += p[i];
    return sum / (float)n;
}

typedef struct {
    const float *x;
    float *out;
    int channels, parts;
    long pixels;
} gap_job;

static void gap_item(void *ctx, int part)
{
    const gap_job *job = (const gap_job *)ctx;
    int c0, c1;
    er_share(job->channels, job->parts, part, &c0, &c1);
    for (int c = c0; c < c1; c++) job->out[c] = mean_of(job->x + c * job->pixels, job->pixels);
}

const char *er_global_average_pool(const float *x, float *out, int channels, long pixels, int threads)
{
    gap_job job = {.x = x, .out = out, .channels = channels, .pixels = pixels};
    job.parts = er_worth_parts((double)channels * pixels, threads, channels);
    return er_run_parts(gap_item, &job, job.parts);
}

/* ---------------------------------------------------------------- pooling */

/* max(acc, v) that keeps a NaN from either side (numpy's maximum; a NaN anywhere in a window
 * gives NaN, whatever its place: onnxruntime's MLAS result depends on the NaN's place). */
static inline float nan_max(float acc, float v) { return (v > acc) | (v != v) ? v : acc; }   /* no branch */

/* The average of a window whose values sum to `sum`: kind 1 counts the window's cells inside the input,
 * kind 2 also its cells in the padding (up to the padded extent). */
static inline float window_average(float sum, int kind, int rows, int x0, int kx0, int kx1, int kw, int w,
                                   int left, int right)
{
    int cols;
    if (kind == 1) {
        cols = kx1 - kx0;
    } else {
        int lo = x0 > -left ? x0 : -left, hi = x0 + kw < w + right ? x0 + kw : w + right;
        cols = hi - lo;
    }
    int count = rows * cols;
    return sum / (float)(count > 0 ? count : 1);
}

static inline __attribute__((always_inline)) void
pool_row(int kind, int KW, const float *src, int w, int y0, int ky0, int ky1, int kh_pad_rows, float *row, int wo,
         int kw, int sw, int left, int right)
{
    if (KW > 0) kw = KW;
    for (int ox = 0; ox < wo; ox++) {
        int x0 = ox * sw - left;
        int kx0 = x0 < 0 ? -x0 : 0, kx1 = w - x0 < kw ? w - x0 : kw;
        float acc = kind == 0 ? -INFINITY : 0.0f;
        if (kx0 == 0 && kx1 == kw) {
            for (int i = ky0; i < ky1; i++) {
                const float *p = src + (long)(y0 + i) * w + x0;
                for (int j = 0; j < kw; j++) acc = kind == 0 ? nan_max(acc, p[j]) : acc + p[j];
            }
        } else {
            for (int i = ky0; i < ky1; i++) {
                const float *p = src + (long)(y0 + i) * w + x0;
                for (int j = kx0; j < kx1; j++) acc = kind == 0 ? nan_max(acc, p[j]) : acc + p[j];
            }
        }
        row[ox] = kind == 0 ? acc : window_average(acc, kind, kh_pad_rows, x0, kx0, kx1, kw, w, left, right);
    }
}

#define POOL_STACK_WIDTH 4096
#define ER_POOL_MAX_ROWS 16 /* window rows / columns combined by vectors (larger ones: the plain loops) */

#if defined(__GNUC__)
/* nan_max lane by lane, without branches (random data mispredicts every other compare). */
static inline er_vf nan_maxv(er_vf acc, er_vf v) { return er_selectv((v > acc) | (v != v), v, acc); }

/* dst[x] = src0[x] combined (max or sum, in the order given) with src[1..n)[x], for x in [0, count). */
static inline __attribute__((always_inline)) void
pool_combine(int kind, float *dst, const float *const *src, int n, int count)
{
    int x = 0;
    for (; x + ER_VL <= count; x += ER_VL) {
        er_vf acc = er_loadv(src[0] + x);
        for (int i = 1; i < n; i++) acc = kind == 0 ? nan_maxv(acc, er_loadv(src[i] + x)) : acc + er_loadv(src[i] + x);
        er_storev(dst + x, acc);
    }
    if (x < count && count >= ER_VL) {   /* the tail as the last whole vector (the same values again) */
        x = count - ER_VL;
        er_vf acc = er_loadv(src[0] + x);
        for (int i = 1; i < n; i++) acc = kind == 0 ? nan_maxv(acc, er_loadv(src[i] + x)) : acc + er_loadv(src[i] + x);
        er_storev(dst + x, acc);
        return;
    }
    for (; x < count; x++) {
        float acc = src[0][x];
        for (int i = 1; i < n; i++) acc = kind == 0 ? nan_max(acc, src[i][x]) : acc + src[i][x];
        dst[x] = acc;
    }
}
#define POOL_VECTORS 1
#else
#define POOL_VECTORS 0
#endif

/* One output row through a row of the window's rows combined first (max or sum, contiguous, vectorised)
 * in `vrow` (w floats on the stack), then the window's columns of that row: windows inside the row from
 * `hrow` (every kw consecutive values of vrow combined, vectorised), the others one by one. */
static inline __attribute__((always_inline)) void pool_row_separable(int kind, const float *src, int w, int y0, int ky0, int ky1, int rows_for_count,
                               float *row, int wo, int kw, int sw, int left, int right, float *vrow, float *hrow)
{
#if POOL_VECTORS
    const float *rows[ER_POOL_MAX_ROWS];
    int n = 0;
    if (ky1 - ky0 <= ER_POOL_MAX_ROWS) {
        for (int i = ky0; i < ky1; i++) rows[n++] = src + (long)(y0 + i) * w;
        pool_combine(kind, vrow, rows, n, w);
    } else
#endif
    {
        const float *first = src + (long)(y0 + ky0) * w;
        for (int x = 0; x < w; x++) vrow[x] = first[x];
        for (int i = ky0 + 1; i < ky1; i++) {
            const float *in = src + (long)(y0 + i) * w;
            if (kind == 0)
                for (int x = 0; x < w; x++) vrow[x] = nan_max(vrow[x], in[x]);
            else
                for (int x = 0; x < w; x++) vrow[x] += in[x];
        }
    }
    int inner = 0;   /* windows [x, x + kw) inside the row: hrow[x] for x in [0, w - kw] */
#if POOL_VECTORS
    if (kw <= ER_POOL_MAX_ROWS && w >= kw) {
        const float *cols[ER_POOL_MAX_ROWS];
        for (int j = 0; j < kw; j++) cols[j] = vrow + j;
        inner = w - kw + 1;
        pool_combine(kind, hrow, cols, kw, inner);
    }
#endif
    /* outputs [lo, hi) take whole windows inside the row: hrow, divided by rows * kw for averages */
    int lo = (left + sw - 1) / sw, hi = inner > 0 ? (inner - 1 + left) / sw + 1 : 0;
    if (hi > wo) hi = wo;
    if (lo > hi) lo = hi;
    const float *whole = hrow + (long)lo * sw - left;
    if (kind == 0 && sw == 1) {
        for (int ox = lo; ox < hi; ox++) row[ox] = whole[ox - lo];
    } else if (kind == 0) {
        for (int ox = lo; ox < hi; ox++) row[ox] = whole[(long)(ox - lo) * sw];
    } else {
        float count = (float)(rows_for_count * kw > 0 ? rows_for_count * kw : 1);   /* window_average's */
        int ox = lo;
#if POOL_VECTORS
        if (sw == 1)
            for (; ox + ER_VL <= hi; ox += ER_VL) er_storev(row + ox, er_loadv(whole + (ox - lo)) / er_splatv(count));
#endif
        for (; ox < hi; ox++) row[ox] = whole[(long)(ox - lo) * sw] / count;
    }
    for (int ox = 0; ox < wo; ox++) {
        int x0 = ox * sw - left;
        float acc;
        if (ox >= lo && ox < hi) {
            continue;
        } else {
            int kx0 = x0 < 0 ? -x0 : 0, kx1 = w - x0 < kw ? w - x0 : kw;
            const float *p = vrow + x0;
            acc = p[kx0];
            if (kind == 0) {
                for (int j = kx0 + 1; j < kx1; j++) acc = nan_max(acc, p[j]);
            } else {
                for (int j = kx0 + 1; j < kx1; j++) acc += p[j];
                acc = window_average(acc, kind, rows_for_count, x0, kx0, kx1, kw, w, left, right);
            }
        }
        row[ox] = acc;
    }
}

/* kind 0: max; 1: average excluding pads; 2: average including pads (up to the padded extent).
 * Channels [c0, c1) of the image. */
static void pool2d_channels(int kind, const float *x, float *out, int c0, int c1, int h, int w, int ho, int wo,
                            int kh, int kw, int sh, int sw, const int pads[4])
{
    float vrow[POOL_STACK_WIDTH], hrow[POOL_STACK_WIDTH];
    for (int c = c0; c < c1; c++) {
        const float *src = x + (long)c * h * w;
        float *dst = out + (long)c * ho * wo;
        for (int oy = 0; oy < ho; oy++) {
            int y0 = oy * sh - pads[0];
            int ky0 = y0 < 0 ? -y0 : 0, ky1 = h - y0 < kh ? h - y0 : kh;
            int rows = ky1 - ky0;
            if (kind == 2) {
                int lo = y0 > -pads[0] ? y0 : -pads[0], hi = y0 + kh < h + pads[2] ? y0 + kh : h + pads[2];
                rows = hi - lo;
            }
            float *row = dst + (long)oy * wo;
            if (w <= POOL_STACK_WIDTH && kind == 0)   /* kind as a constant in each copy */
                pool_row_separable(0, src, w, y0, ky0, ky1, rows, row, wo, kw, sw, pads[1], pads[3], vrow, hrow);
            else if (w <= POOL_STACK_WIDTH && kind == 1)
                pool_row_separable(1, src, w, y0, ky0, ky1, rows, row, wo, kw, sw, pads[1], pads[3], vrow, hrow);
            else if (w <= POOL_STACK_WIDTH)
                pool_row_separable(2, src, w, y0, ky0, ky1, rows, row, wo, kw, sw, pads[1], pads[3], vrow, hrow);
            else if (kind == 0)
                pool_row(0, 0, src, w, y0, ky0, ky1, rows, row, wo, kw, sw, pads[1], pads[3]);
            else
                pool_row(kind, 0, src, w, y0, ky0, ky1, rows, row, wo, kw, sw, pads[1], pads[3]);
        }
    }
}

/* All channels on the caller's thread (the C runtime: a channel is pooled the same way whatever the split). */
void er_pool2d(int kind, const float *x, float *out, int channels, int h, int w, int ho, int wo, int kh, int kw,
               int sh, int sw, const int pads[4])
{
    pool2d_channels(kind, x, out, 0, channels, h, w, ho, wo, kh, kw, sh, sw, pads);
}

#ifndef ER_NO_PYTHON
/* Threads take ranges of channels: each channel is pooled the same way whatever the count. */
typedef struct {
    int kind, channels, h, w, ho, wo, kh, kw, sh, sw, parts;
    const int *pads;
    const float *x;
    float *out;
} pool_job;

static void pool_item(void *ctx, int part)
{
    const pool_job *job = (const pool_job *)ctx;
    int c0, c1;
    er_share(job->channels, job->parts, part, &c0, &c1);
    if (c0 < c1)
        pool2d_channels(job->kind, job->x, job->out, c0, c1, job->h, job->w, job->ho, job->wo, job->kh, job->kw,
                        job->sh, job->sw, job->pads);
}

/* ---------------------------------------------------------------- Python bindings */

PyObject *er_py_pw_info(PyObject *self, PyObject *args)
{
    (void)self;
    int M, N, K;
    if (!PyArg_ParseTuple(args, "iii", &M, &N, &K)) return NULL;
    if (M < 1 || N < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "pw_info: sizes must be positive");
        return NULL;
    }
    return Py_BuildValue("(ll)", er_pw_packed_floats(M, K), er_pw_edge_floats(N, K));
}

PyObject *er_py_pw_pack(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *w, *packed;
    int M, K;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOii", &w, &packed, &M, &K)) return NULL;
    if (M < 1 || K < 1) {
        PyErr_SetString(PyExc_ValueError, "pw_pack: sizes must be positive");
        return NULL;
    }
    const float *wp = er_acquire(&set, w, "w", (Py_ssize_t)M * K, 0, 0);
    float *pp = wp ? er_acquire(&set, packed, "packed", er_pw_packed_floats(M, K), 0, 1) : NULL;
    if (!pp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    er_pw_pack(M, K, wp, pp);
    er_release_all(&set);
    Py_RETURN_NONE;
}

PyObject *er_py_pw_conv(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *x, *packed, *bias, *out, *edge, *act_spec;
    int M, N, K, threads = 1;
    er_act act;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOOOOiiiO|i", &x, &packed, &bias, &out, &edge, &M, &N, &K, &act_spec, &threads) ||
        er_parse_activation(act_spec, &act, "act") != 0)
        return NULL;
    if (M < 1 || N < 1 || K < 1 || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "pw_conv: sizes must be positive and threads in 1..128");
        return NULL;
    }
    long edge_floats = er_pw_edge_floats(N, K);
    const float *xp = er_acquire(&set, x, "x", (Py_ssize_t)K * N, 0, 0);
    const float *pp = xp ? er_acquire(&set, packed, "packed", er_pw_packed_floats(M, K), 0, 0) : NULL;
    const float *bp = NULL;
    if (pp && bias != Py_None) bp = er_acquire(&set, bias, "bias", M, 0, 0);
    float *op = (pp && (bias == Py_None || bp)) ? er_acquire(&set, out, "out", (Py_ssize_t)M * N, 0, 1) : NULL;
    float *ep = NULL;
    if (op && edge_floats) ep = er_acquire(&set, edge, "edge", edge_floats, 1, 1);
    if (!op || (edge_floats && !ep) || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_pw_gemm(M, N, K, pp, xp, op, bp, &act, ep, threads);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "pw_conv: %s", error);
    Py_RETURN_NONE;
}

PyObject *er_py_pool2d(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *x, *out;
    int kind, c, h, w, ho, wo, kh, kw, sh, sw, pads[4], threads = 1;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "iOOiiiiiiiii(iiii)|i", &kind, &x, &out, &c, &h, &w, &ho, &wo, &kh, &kw, &sh, &sw,
                          &pads[0], &pads[1], &pads[2], &pads[3], &threads))
        return NULL;
    int ok = kind >= 0 && kind <= 2 && c >= 1 && h >= 1 && w >= 1 && ho >= 1 && wo >= 1 && kh >= 1 && kw >= 1 &&
             sh >= 1 && sw >= 1 && pads[0] >= 0 && pads[1] >= 0 && pads[2] >= 0 && pads[3] >= 0 &&
             pads[0] < kh && pads[1] < kw && pads[2] < kh && pads[3] < kw &&
             /* every window starts inside the padded input (so it holds at least one real tap) */
             (ho - 1) * sh < h + pads[0] && (wo - 1) * sw < w + pads[1] && threads >= 1 && threads <= ER_MAX_THREADS;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "pool2d: invalid kind, sizes, kernel, strides, pads or threads");
        return NULL;
    }
    const float *xp = er_acquire(&set, x, "x", (Py_ssize_t)c * h * w, 0, 0);
    float *op = xp ? er_acquire(&set, out, "out", (Py_ssize_t)c * ho * wo, 0, 1) : NULL;
    if (!op || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    pool_job job = {.kind = kind, .x = xp, .out = op, .channels = c, .h = h, .w = w, .ho = ho, .wo = wo,
                    .kh = kh, .kw = kw, .sh = sh, .sw = sw, .pads = pads};
    job.parts = er_worth_parts((double)c * ho * wo * kh * kw, threads, c);
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_run_parts(pool_item, &job, job.parts);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "pool2d: %s", error);
    Py_RETURN_NONE;
}
#endif /* ER_NO_PYTHON */
