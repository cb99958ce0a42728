/* Native kernels of the fused non-conv steps (edgerun/kernels/steps_se.py, steps_shuffle.py) and their
 * Python bindings:
 *
 * - squeeze-excitation of one image: y[c] = x[c] * gate(W2 act(W1 mean(x) + b1) + b2)[c];
 * - channel shuffle of one image: a (groups, C/groups) -> (C/groups, groups) transpose of whole channel
 *   planes, as the Reshape -> Transpose -> Reshape of ShuffleNet does it.
 *
 * Threads take ranges of channels; every value is computed the same way whatever the thread count
 * (the two small matrix-vector products run on one thread), so the bits do not depend on it. Nothing
 * here allocates: outputs and scratch come from the caller (the arena). */
#ifndef ER_NO_PYTHON /* C programs (runtime/) build the kernels without their Python bindings */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif
#include <string.h>

#define ER_VECTOR_HELPERS
#include "kernels.h"
#ifndef ER_NO_PYTHON
#include "pybuffers.h"
#endif
#include "threadpool.h"

/* ---------------------------------------------------------------- squeeze-excitation */
/* The mean of n floats: vector partial sums, lanes added in order, then the tail. */
static float plane_mean(const float *p, long n)
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

/* y[r] = act(b[r] + sum_k w[r, k] x[k]) for r in [0, rows): one thread, in order. */
static void dense_rows(const float *w, const float *b, const float *x, float *y, int rows, int K,
                       const er_act *act)
{
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (long)r * K;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += wr[k] * x[k];
        y[r] = sum + b[r];
    }
    er_apply_activation(y, rows, act);
}

typedef struct {
    const float *x;
    float *y, *pooled;
    const float *gate;
    int channels, parts;
    long pixels;
} se_job;

static void se_pool_item(void *ctx, int part)
{
    const se_job *job = (const se_job *)ctx;
    int c0, c1;
    er_share(job->channels, job->parts, part, &c0, &c1);
    for (int c = c0; c < c1; c++) job->pooled[c] = plane_mean(job->x + (long)c * job->pixels, job->pixels);
}

static void se_scale_item(void *ctx, int part)
{
    const se_job *job = (const se_job *)ctx;
    int c0, c1;
    er_share(job->channels, job->parts, part, &c0, &c1);
    long n = job->pixels;
    for (int c = c0; c < c1; c++) {
        const float *src = job->x + (long)c * n;
        float *dst = job->y + (long)c * n, g = job->gate[c];
        for (long i = 0; i < n; i++) dst[i] = src[i] * g;
    }
}

/* scratch: channels + squeeze floats (the pooled vector, then the gate, and the squeezed vector). */
static const char *er_squeeze_excite(const float *x, float *y, int channels, long pixels, int squeeze,
                                     const float *w1, const float *b1, const er_act *act1, const float *w2,
                                     const float *b2, const er_act *act2, float *scratch, int threads)
{
    float *pooled = scratch, *hidden = scratch + channels;
    se_job job = {.x = x, .y = y, .pooled = pooled, .gate = pooled, .channels = channels, .pixels = pixels};
    job.parts = er_worth_parts((double)channels * pixels, threads, channels);
    const char *error = er_run_parts(se_pool_item, &job, job.parts);
    if (error) return error;
    dense_rows(w1, b1, pooled, hidden, squeeze, channels, act1);
    dense_rows(w2, b2, hidden, pooled, channels, squeeze, act2); /* the gate replaces the pooled values */
    return er_run_parts(se_scale_item, &job, job.parts);
}

#ifndef ER_NO_PYTHON
PyObject *er_py_squeeze_excite(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *x, *y, *w1, *b1, *w2, *b2, *scratch, *spec1, *spec2;
    int channels, squeeze, threads = 1;
    long pixels;
    er_act act1, act2;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOOOOOOiliOO|i", &x, &y, &w1, &b1, &w2, &b2, &scratch, &channels, &pixels,
                          &squeeze, &spec1, &spec2, &threads) ||
        er_parse_activation(spec1, &act1, "act1") != 0 || er_parse_activation(spec2, &act2, "act2") != 0)
        return NULL;
    if (channels < 1 || pixels < 1 || squeeze < 1 || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "squeeze_excite: sizes must be positive and threads in 1..128");
        return NULL;
    }
    Py_ssize_t plane = (Py_ssize_t)channels * pixels;
    const float *xp = er_acquire(&set, x, "x", plane, 0, 0);
    float *yp = xp ? er_acquire(&set, y, "y", plane, 0, 1) : NULL;
    const float *w1p = yp ? er_acquire(&set, w1, "w1", (Py_ssize_t)squeeze * channels, 0, 0) : NULL;
    const float *b1p = w1p ? er_acquire(&set, b1, "b1", squeeze, 0, 0) : NULL;
    const float *w2p = b1p ? er_acquire(&set, w2, "w2", (Py_ssize_t)channels * squeeze, 0, 0) : NULL;
    const float *b2p = w2p ? er_acquire(&set, b2, "b2", channels, 0, 0) : NULL;
    float *sp = b2p ? er_acquire(&set, scratch, "scratch", (Py_ssize_t)channels + squeeze, 1, 1) : NULL;
    if (!sp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_squeeze_excite(xp, yp, channels, pixels, squeeze, w1p, b1p, &act1, w2p, b2p, &act2, sp, threads);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "squeeze_excite: %s", error);
    Py_RETURN_NONE;
}
#endif

/* ---------------------------------------------------------------- channel shuffle */
typedef struct {
    const float *x;
    float *y;
    int channels, groups, parts;
    long pixels;
} shuffle_job;

/* Output channel k = j * groups + i is input channel i * (channels / groups) + j. */
static void shuffle_item(void *ctx, int part)
{
    const shuffle_job *job = (const shuffle_job *)ctx;
    int k0, k1, per_group = job->channels / job->groups;
    er_share(job->channels, job->parts, part, &k0, &k1);
    size_t bytes = (size_t)job->pixels * sizeof(float);
    for (int k = k0; k < k1; k++) {
        int j = k / job->groups, i = k % job->groups;
        memcpy(job->y + (long)k * job->pixels, job->x + ((long)i * per_group + j) * job->pixels, bytes);
    }
}

#ifndef ER_NO_PYTHON
PyObject *er_py_channel_shuffle(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *x, *y;
    int channels, groups, threads = 1;
    long pixels;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOili|i", &x, &y, &channels, &pixels, &groups, &threads)) return NULL;
    if (channels < 1 || pixels < 1 || groups < 1 || channels % groups || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError,
                        "channel_shuffle: sizes must be positive, groups divide channels, threads in 1..128");
        return NULL;
    }
    Py_ssize_t plane = (Py_ssize_t)channels * pixels;
    const float *xp = er_acquire(&set, x, "x", plane, 0, 0);
    float *yp = xp ? er_acquire(&set, y, "y", plane, 0, 1) : NULL;
    if (!yp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    shuffle_job job = {.x = xp, .y = yp, .channels = channels, .groups = groups, .pixels = pixels};
    job.parts = er_worth_parts((double)plane, threads, channels);
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_run_parts(shuffle_item, &job, job.parts);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "channel_shuffle: %s", error);
    Py_RETURN_NONE;
}
#endif

/* ---------------------------------------------------------------- plain elementwise steps, threaded */
/* Every element is computed by the same expression whatever the thread count: threads take ranges. */
enum { ER_BINARY_ADD = 0, ER_BINARY_SUB = 1, ER_BINARY_MUL = 2, ER_BINARY_DIV = 3 };

typedef struct {
    const float *a, *b;
    float *y;
    long n;
    int op, parts;
    er_act act;
} ew_job;

/* Ranges in whole vectors of 16 floats, so that a part never splits one. */
static void ew_range(const ew_job *job, int part, long *i0, long *i1)
{
    long blocks = (job->n + 15) / 16;
    int b0, b1;
    er_share((int)(blocks < 0x7fffffff ? blocks : 0x7fffffff), job->parts, part, &b0, &b1);
    *i0 = (long)b0 * 16;
    *i1 = (long)b1 * 16 < job->n ? (long)b1 * 16 : job->n;
}

static void binary_item(void *ctx, int part)
{
    const ew_job *job = (const ew_job *)ctx;
    long i0, i1;
    ew_range(job, part, &i0, &i1);
    const float *restrict a = job->a, *restrict b = job->b;
    float *restrict y = job->y;
    switch (job->op) {
    case ER_BINARY_ADD: for (long i = i0; i < i1; i++) y[i] = a[i] + b[i]; break;
    case ER_BINARY_SUB: for (long i = i0; i < i1; i++) y[i] = a[i] - b[i]; break;
    case ER_BINARY_MUL: for (long i = i0; i < i1; i++) y[i] = a[i] * b[i]; break;
    default: for (long i = i0; i < i1; i++) y[i] = a[i] / b[i]; break;
    }
}

static void activation_item(void *ctx, int part)
{
    const ew_job *job = (const ew_job *)ctx;
    long i0, i1;
    ew_range(job, part, &i0, &i1);
    if (i1 <= i0) return;
    if (job->y != job->a) memcpy(job->y + i0, job->a + i0, (size_t)(i1 - i0) * sizeof(float));
    er_apply_activation(job->y + i0, i1 - i0, &job->act);
}

static int ew_parts(long n, int threads)
{
    long blocks = (n + 15) / 16;
    return er_worth_parts((double)n, threads, (int)(blocks < threads ? blocks : threads));
}

#ifndef ER_NO_PYTHON
/* y = a (op) b, all of n floats (no broadcast). */
PyObject *er_py_binary(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *a, *b, *y;
    int kind, threads = 1;
    long n;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "iOOOl|i", &kind, &a, &b, &y, &n, &threads)) return NULL;
    if (kind < ER_BINARY_ADD || kind > ER_BINARY_DIV || n < 1 || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "binary: invalid kind, size or threads");
        return NULL;
    }
    const float *ap = er_acquire(&set, a, "a", n, 0, 0);
    const float *bp = ap ? er_acquire(&set, b, "b", n, 0, 0) : NULL;
    float *yp = bp ? er_acquire(&set, y, "y", n, 0, 1) : NULL;
    if (!yp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    ew_job job = {.a = ap, .b = bp, .y = yp, .n = n, .op = kind, .parts = ew_parts(n, threads)};
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_run_parts(binary_item, &job, job.parts);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "binary: %s", error);
    Py_RETURN_NONE;
}

/* y = act(x), n floats. */
PyObject *er_py_activation(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *x, *y, *spec;
    int threads = 1;
    long n;
    er_act act;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOlO|i", &x, &y, &n, &spec, &threads) || er_parse_activation(spec, &act, "act") != 0)
        return NULL;
    if (n < 1 || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "activation: size must be positive and threads in 1..128");
        return NULL;
    }
    const float *xp = er_acquire(&set, x, "x", n, 0, 0);
    float *yp = xp ? er_acquire(&set, y, "y", n, 0, 1) : NULL;
    if (!yp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    ew_job job = {.a = xp, .y = yp, .n = n, .act = act, .parts = ew_parts(n, threads)};
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_run_parts(activation_item, &job, job.parts);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "activation: %s", error);
    Py_RETURN_NONE;
}
#endif
