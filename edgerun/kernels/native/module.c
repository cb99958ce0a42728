/* edgerun.kernels._native: Python bindings of the native kernels.
 * Arrays arrive through the buffer protocol; every one is checked (float32, C-contiguous,
 * size, writability, no overlap between outputs and anything else) before the GIL is
 * released and the kernel runs. Nothing here allocates activation memory. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "kernels.h"
#include "pybuffers.h"
#include "threadpool.h"

/* Each instruction-set variant is its own module, edgerun.kernels._native_<isa> (setup.py passes
 * ER_MODULE and ER_ISA_NAME); edgerun/kernels/isa.py loads the one the CPU runs. */
#ifndef ER_MODULE
#define ER_MODULE _native
#endif
#ifndef ER_ISA_NAME
#define ER_ISA_NAME generic
#endif
#define ER_STR_(x) #x
#define ER_STR(x) ER_STR_(x)
#define ER_CAT_(a, b) a##b
#define ER_CAT(a, b) ER_CAT_(a, b)

/* The geometry and the sizes Python derived from it; the sizes must equal er_block_derive's. */
static int parse_geometry(PyObject *spec, er_block_geom *g)
{
    int given[4];
    memset(g, 0, sizeof *g);
    if (!PyArg_ParseTuple(spec, "iiiiii(iiii)ii(iiii)ip(iiii)", &g->in_channels, &g->in_height,
                          &g->in_width, &g->hidden_channels, &g->expand_kernel, &g->expand_stride,
                          &g->expand_pads[0], &g->expand_pads[1], &g->expand_pads[2],
                          &g->expand_pads[3], &g->dw_kernel, &g->dw_stride, &g->dw_pads[0],
                          &g->dw_pads[1], &g->dw_pads[2], &g->dw_pads[3], &g->out_channels,
                          &g->residual, &given[0], &given[1], &given[2], &given[3]))
        return -1;
    const char *problem = er_block_derive(g);
    if (problem) {
        PyErr_Format(PyExc_ValueError, "block geometry: %s", problem);
        return -1;
    }
    int derived[4] = {g->hidden_height, g->hidden_width, g->out_height, g->out_width};
    static const char *names[4] = {"hidden height", "hidden width", "output height", "output width"};
    for (int i = 0; i < 4; i++)
        if (given[i] != derived[i]) {
            PyErr_Format(PyExc_ValueError, "block geometry: the %s given is %d, the kernel derives %d",
                         names[i], given[i], derived[i]);
            return -1;
        }
    return 0;
}

static int parse_split(PyObject *spec, er_block_split *split)
{
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "split must be a tuple");
        return -1;
    }
    return PyArg_ParseTuple(spec, "iiill", &split->mode, &split->threads, &split->slices,
                            &split->expanded_slice, &split->depthwise_slice) ? 0 : -1;
}

PyDoc_STRVAR(run_block_doc,
"run_block(x, out, we, we_t, be, wd, bd, wp_t, bp, expanded, depthwise, geometry, chunk, bands,\n"
"          expand_act, dw_act, split)\n\n"
"Fused inverted-residual block for one image, run as Python derived it (edgerun/kernels/native.py).\n"
"geometry = (Cin, H, W, E, ke, se, (4 pads), kd, sd, (4 pads), Cout, residual, (Hh, Wh, Ho, Wo));\n"
"chunk: hidden channels per chunk; bands: int32 (bands, 5) rows (o0, o1, h0, h1, by_channels);\n"
"activations are (code, a, b); split = (mode 0 one thread / 1 whole bands / 2 shared, threads,\n"
"slices, floats of one expanded slice, floats of one depthwise slice). we/we_t/be are None when\n"
"ke == 0. Every one of these is checked (ValueError) before the block runs.");

static PyObject *py_run_block(PyObject *self, PyObject *args)
{
    PyObject *x, *out, *we, *we_t, *be, *wd, *bd, *wp_t, *bp, *expanded, *depthwise, *geom_spec;
    PyObject *bands_obj, *expand_spec, *dw_spec, *split_spec;
    int chunk;
    er_block_geom g;
    er_block_split split;
    er_block_weights w;
    er_buffer_set set = {.count = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOiOOOO", &x, &out, &we, &we_t, &be, &wd, &bd, &wp_t, &bp,
                          &expanded, &depthwise, &geom_spec, &chunk, &bands_obj, &expand_spec, &dw_spec,
                          &split_spec))
        return NULL;
    if (!PyTuple_Check(geom_spec) || parse_geometry(geom_spec, &g) != 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "geometry must be a tuple");
        return NULL;
    }
    memset(&w, 0, sizeof w);
    if (er_parse_activation(expand_spec, &w.expand_act, "expand_act") != 0 ||
        er_parse_activation(dw_spec, &w.dw_act, "dw_act") != 0 || parse_split(split_spec, &split) != 0)
        return NULL;
    if (split.slices < 1 || split.slices > ER_MAX_THREADS || split.expanded_slice < 0 ||
        split.depthwise_slice < 0 || split.expanded_slice > PY_SSIZE_T_MAX / ER_MAX_THREADS ||
        split.depthwise_slice > PY_SSIZE_T_MAX / ER_MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "split: slices must be in 1..%d and slice sizes non-negative",
                     ER_MAX_THREADS);
        return NULL;
    }
    Py_ssize_t E = g.hidden_channels, Cin = g.in_channels, Cout = g.out_channels;
    Py_ssize_t k2 = (Py_ssize_t)g.expand_kernel * g.expand_kernel;
    Py_ssize_t kd2 = (Py_ssize_t)g.dw_kernel * g.dw_kernel;
    Py_buffer band_view;
    if (PyObject_GetBuffer(bands_obj, &band_view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return NULL;
    int nbands = (int)(band_view.len / (Py_ssize_t)sizeof(er_band));
    if (band_view.itemsize != 4 || !band_view.format || (strcmp(band_view.format, "i") && strcmp(band_view.format, "=i")
        && strcmp(band_view.format, "<i")) || band_view.len % (Py_ssize_t)sizeof(er_band) || nbands < 1 ||
        nbands > g.out_height) {
        PyBuffer_Release(&band_view);
        PyErr_SetString(PyExc_ValueError, "bands must be a C-contiguous int32 array of (o0, o1, h0, h1, "
                                          "by_channels) rows, one per band");
        return NULL;
    }
    const er_band *bands = (const er_band *)band_view.buf;
    const char *problem = er_block_check(&g, chunk, bands, nbands, &split);
    if (problem) {
        PyBuffer_Release(&band_view);
        PyErr_Format(PyExc_ValueError, "block run: %s", problem);
        return NULL;
    }
    const float *xp = er_acquire(&set, x, "x", Cin * g.in_height * g.in_width, 0, 0);
    float *outp = xp ? er_acquire(&set, out, "out", Cout * g.out_height * g.out_width, 0, 1) : NULL;
    if (!outp) goto fail;
    if (g.expand_kernel) {
        if (!(w.we = er_acquire(&set, we, "we", E * Cin * k2, 0, 0)) ||
            !(w.we_t = er_acquire(&set, we_t, "we_t", E * Cin * k2, 0, 0)) ||
            !(w.be = er_acquire(&set, be, "be", E, 0, 0)))
            goto fail;
    }
    if (!(w.wd = er_acquire(&set, wd, "wd", E * kd2, 0, 0)) ||
        !(w.bd = er_acquire(&set, bd, "bd", E, 0, 0)) ||
        !(w.wp_t = er_acquire(&set, wp_t, "wp_t", E * Cout, 0, 0)) ||
        !(w.bp = er_acquire(&set, bp, "bp", Cout, 0, 0)))
        goto fail;
    float *expanded_p = NULL;
    if (g.expand_kernel &&
        !(expanded_p = er_acquire(&set, expanded, "scratch 'expanded'",
                                  (Py_ssize_t)split.slices * split.expanded_slice, 1, 1)))
        goto fail;
    float *depthwise_p = er_acquire(&set, depthwise, "scratch 'depthwise'",
                                    (Py_ssize_t)split.slices * split.depthwise_slice, 1, 1);
    if (!depthwise_p || er_check_no_overlap(&set) != 0) goto fail;

    Py_BEGIN_ALLOW_THREADS
    problem = er_block_run(&g, chunk, bands, nbands, &w, xp, outp, expanded_p, depthwise_p, &split);
    Py_END_ALLOW_THREADS

    er_release_all(&set);
    PyBuffer_Release(&band_view);
    if (problem) return PyErr_Format(PyExc_RuntimeError, "block run: %s", problem);
    Py_RETURN_NONE;
fail:
    er_release_all(&set);
    PyBuffer_Release(&band_view);
    return NULL;
}

PyDoc_STRVAR(pointwise_doc,
"pointwise_conv(x, w_t, bias, out, cin, cout, pixels, act)\n\n"
"1x1 convolution of one image: out (Cout, P) = w_t.T @ x (Cin, P) + bias, then act (code, a, b).\n"
"w_t is (Cin, Cout) C-contiguous; bias may be None.");

static PyObject *py_pointwise_conv(PyObject *self, PyObject *args)
{
    PyObject *x, *w_t, *bias, *out, *act_spec;
    int cin, cout;
    Py_ssize_t pixels;
    er_act act;
    er_buffer_set set = {.count = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOiinO", &x, &w_t, &bias, &out, &cin, &cout, &pixels, &act_spec) ||
        er_parse_activation(act_spec, &act, "act") != 0)
        return NULL;
    if (cin < 1 || cout < 1 || pixels < 1 || pixels > 0x7fffffff) {
        PyErr_SetString(PyExc_ValueError, "pointwise_conv: sizes must be positive");
        return NULL;
    }
    const float *xp = er_acquire(&set, x, "x", cin * pixels, 0, 0);
    const float *wp = xp ? er_acquire(&set, w_t, "w_t", (Py_ssize_t)cin * cout, 0, 0) : NULL;
    const float *bp = NULL;
    if (wp && bias != Py_None) bp = er_acquire(&set, bias, "bias", cout, 0, 0);
    float *op = (wp && (bias == Py_None || bp)) ? er_acquire(&set, out, "out", cout * pixels, 0, 1) : NULL;
    if (!op || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    er_gemm_tn(cout, (int)pixels, cin, wp, cout, xp, pixels, op, pixels, 0, bp, &act);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(depthwise_doc,
"depthwise_conv(x, w, bias, out, channels, height, width, kernel, stride, pads, act, threads=1)\n\n"
"Depthwise convolution of one image (C, H, W) -> (C, Ho, Wo); w (C, k, k); pads (t, l, b, r).\n"
"Threads take contiguous ranges of channels.");

typedef struct {
    const float *x, *w, *bias;
    float *out;
    int channels, h, wd, k, s, ho, wo, parts;
    const int *pads;
    const er_act *act;
} depthwise_job;

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

static PyObject *py_depthwise_conv(PyObject *self, PyObject *args)
{
    PyObject *x, *w, *bias, *out, *act_spec;
    int c, h, wd, k, s, pads[4], threads = 1;
    er_act act;
    er_buffer_set set = {.count = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOiiiii(iiii)O|i", &x, &w, &bias, &out, &c, &h, &wd, &k, &s, &pads[0],
                          &pads[1], &pads[2], &pads[3], &act_spec, &threads) ||
        er_parse_activation(act_spec, &act, "act") != 0)
        return NULL;
    int ho = (h + pads[0] + pads[2] - k) / s + 1, wo = (wd + pads[1] + pads[3] - k) / s + 1;
    if (c < 1 || h < 1 || wd < 1 || k < 1 || s < 1 || pads[0] < 0 || pads[1] < 0 || pads[2] < 0 ||
        pads[3] < 0 || h + pads[0] + pads[2] < k || wd + pads[1] + pads[3] < k || threads < 1 ||
        threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "depthwise_conv: invalid sizes, kernel, stride, pads or threads");
        return NULL;
    }
    const float *xp = er_acquire(&set, x, "x", (Py_ssize_t)c * h * wd, 0, 0);
    const float *wp = xp ? er_acquire(&set, w, "w", (Py_ssize_t)c * k * k, 0, 0) : NULL;
    const float *bp = wp ? er_acquire(&set, bias, "bias", c, 0, 0) : NULL;
    float *op = bp ? er_acquire(&set, out, "out", (Py_ssize_t)c * ho * wo, 0, 1) : NULL;
    if (!op || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    depthwise_job job = {.x = xp, .w = wp, .bias = bp, .out = op, .channels = c, .h = h, .wd = wd, .k = k,
                         .s = s, .ho = ho, .wo = wo, .pads = pads, .act = &act};
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    job.parts = er_worth_parts((double)c * ho * wo * k * k, threads, c);
    error = er_run_parts(depthwise_item, &job, job.parts);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "depthwise_conv: %s", error);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(gap_doc, "global_average_pool(x, out, channels, pixels, threads=1): out[c] = mean of x[c, :].");

static PyObject *py_global_average_pool(PyObject *self, PyObject *args)
{
    PyObject *x, *out;
    int c, threads = 1;
    Py_ssize_t pixels;
    er_buffer_set set = {.count = 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "OOin|i", &x, &out, &c, &pixels, &threads)) return NULL;
    if (c < 1 || pixels < 1 || threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "global_average_pool: sizes must be positive and threads in 1..128");
        return NULL;
    }
    const float *xp = er_acquire(&set, x, "x", c * pixels, 0, 0);
    float *op = xp ? er_acquire(&set, out, "out", c, 0, 1) : NULL;
    if (!op || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_global_average_pool(xp, op, c, (long)pixels, threads);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "global_average_pool: %s", error);
    Py_RETURN_NONE;
}

static PyObject *py_build_info(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    int avx2 = 0, fma = 0, avx512f = 0;
#if defined(__AVX2__)
    avx2 = 1;
#endif
#if defined(__FMA__)
    fma = 1;
#endif
#if defined(__AVX512F__)
    avx512f = 1;
#endif
    int neon = 0;
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    neon = 1;
#endif
    return Py_BuildValue("{s:s,s:i,s:i,s:i,s:i,s:i}", "isa", ER_STR(ER_ISA_NAME), "avx2", avx2, "fma", fma,
                         "avx512f", avx512f, "neon", neon, "vector_floats", er_gemm_vector_floats());
}

static PyObject *py_block_min_part_macs(PyObject *self, PyObject *args)
{
    long long value = -1;
    (void)self;
    if (!PyArg_ParseTuple(args, "|L", &value)) return NULL;
    return PyLong_FromLongLong(er_min_part_macs(value));
}

static PyObject *py_pool_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(er_pool_threads());
}

static PyObject *py_pool_stats(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    er_pool_stats stats = er_pool_statistics();
    return Py_BuildValue("{s:L,s:L,s:i,s:i}", "jobs", stats.jobs, "waits", stats.waits, "waiting",
                         stats.waiting, "last_threads", stats.last_threads);
}

static PyObject *py_pool_hold(PyObject *self, PyObject *args)
{
    int threads;
    const char *error;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS /* waits while another caller's job runs */
    error = er_pool_hold(threads);
    Py_END_ALLOW_THREADS
    if (error) return PyErr_Format(PyExc_RuntimeError, "pool_hold: %s", error);
    Py_RETURN_NONE;
}

static PyObject *py_pool_release(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    const char *error = er_pool_release();
    if (error) return PyErr_Format(PyExc_RuntimeError, "pool_release: %s", error);
    Py_RETURN_NONE;
}

/* steps.c: kernels of non-block steps */
PyObject *er_py_pw_info(PyObject *self, PyObject *args);
PyObject *er_py_pw_pack(PyObject *self, PyObject *args);
PyObject *er_py_pw_conv(PyObject *self, PyObject *args);
PyObject *er_py_pool2d(PyObject *self, PyObject *args);
PyObject *er_py_gemv(PyObject *self, PyObject *args);
/* ---- fused non-conv steps (fused_steps.c) */
PyObject *er_py_squeeze_excite(PyObject *self, PyObject *args);
PyObject *er_py_channel_shuffle(PyObject *self, PyObject *args);
PyObject *er_py_binary(PyObject *self, PyObject *args);
PyObject *er_py_activation(PyObject *self, PyObject *args);
/* ---- end of fused non-conv steps */

/* streamed segments: py_segment_run at the end of this file */
static PyObject *py_segment_run(PyObject *self, PyObject *args);
PyDoc_STRVAR(segment_run_doc,
"segment_run(arena, x, out, params, tensors, steps, calls, threads)\n\n"
"Runs calls of a streamed segment on the native row kernels (edgerun/kernels/native_segment.py).\n"
"arena: float32 (rings and scratch); x / out: the segment's whole input and output; params: float32\n"
"(weights, biases, pooling scales, activation parameters); tensors: int64 (n, 6) rows (place 0 absent /\n"
"1 x / 2 out / 3 ring in the arena, arena offset, ring rows, C, H, W); steps: int64 (n, 43) rows (see\n"
"SEG_FIELDS in native_segment.py); calls: int32 (n, 3) rows (step, lo, hi). Everything is checked\n"
"(ValueError) before the calls run.");
/* ---- conv.c: banded dense and grouped convolution (dense-conv) */
PyObject *er_py_conv_info(PyObject *self, PyObject *args);
PyObject *er_py_conv_pack(PyObject *self, PyObject *args);
PyObject *er_py_conv_run(PyObject *self, PyObject *args);
/* ---- end conv.c */
/* ---- quant.c: the int8 inverted-residual block (int8-native) */
PyObject *er_py_qblock_run(PyObject *self, PyObject *args);
PyObject *er_py_qgemm_info(PyObject *self, PyObject *args);
PyObject *er_py_qgemm_run(PyObject *self, PyObject *args);
/* ---- end quant.c */

static PyMethodDef methods[] = {
    {"run_block", py_run_block, METH_VARARGS, run_block_doc},
    {"pointwise_conv", py_pointwise_conv, METH_VARARGS, pointwise_doc},
    {"depthwise_conv", py_depthwise_conv, METH_VARARGS, depthwise_doc},
    {"global_average_pool", py_global_average_pool, METH_VARARGS, gap_doc},
    {"build_info", py_build_info, METH_NOARGS, "Instruction sets the extension was compiled for."},
    {"block_min_part_macs", py_block_min_part_macs, METH_VARARGS,
     "block_min_part_macs([value]): a (band, chunk) step is split across threads only into parts of\n"
     "at least this many multiply-adds; sets it when value >= 0; returns the previous value."},
    {"pool_threads", py_pool_threads, METH_NOARGS,
     "Threads of the persistent kernel pool so far (the caller's thread + started workers)."},
    {"pool_stats", py_pool_stats, METH_NOARGS,
     "The pool's counters: jobs begun on a team, jobs that waited for another caller's, callers waiting\n"
     "now, and the threads of the last team begun."},
    {"pool_hold", py_pool_hold, METH_VARARGS,
     "pool_hold(threads): (test hook) hold the pool from this thread as a job of that many threads would."},
    {"pool_release", py_pool_release, METH_NOARGS, "(test hook) let go of the pool pool_hold took."},
    {"pw_info", er_py_pw_info, METH_VARARGS, "pw_info(M, N, K) -> (packed floats, edge floats)."},
    {"pw_pack", er_py_pw_pack, METH_VARARGS, "pw_pack(w (M, K), packed, M, K): weights in GEMM panels."},
    {"pw_conv", er_py_pw_conv, METH_VARARGS,
     "pw_conv(x (K, N), packed, bias, out (M, N), edge, M, N, K, act, threads=1): 1x1 conv on packed weights."},
    {"gemv", er_py_gemv, METH_VARARGS,
     "gemv(w (rows, K), x (K), bias or None, y (rows), rows, K, threads=1): y = w @ x + bias."},
    {"segment_run", py_segment_run, METH_VARARGS, segment_run_doc},
    /* ---- fused non-conv steps (fused_steps.c) */
    {"squeeze_excite", er_py_squeeze_excite, METH_VARARGS,
     "squeeze_excite(x, y, w1, b1, w2, b2, scratch, C, pixels, S, act1, act2[, threads]): one image."},
    {"channel_shuffle", er_py_channel_shuffle, METH_VARARGS,
     "channel_shuffle(x, y, C, pixels, groups[, threads]): (groups, C/groups) -> (C/groups, groups) planes."},
    {"binary", er_py_binary, METH_VARARGS,
     "binary(kind 0 add / 1 sub / 2 mul / 3 div, a, b, y, n[, threads]): y = a op b, same sizes."},
    {"activation", er_py_activation, METH_VARARGS, "activation(x, y, n, act[, threads]): y = act(x)."},
    /* ---- end of fused non-conv steps */
    {"pool2d", er_py_pool2d, METH_VARARGS,
     "pool2d(kind, x, out, C, H, W, Ho, Wo, kh, kw, sh, sw, pads): 0 max, 1 avg, 2 avg with pads."},
    /* ---- conv.c (dense-conv) */
    {"conv_info", er_py_conv_info, METH_VARARGS,
     "conv_info(geom) -> (packed weight floats, cols scratch floats, tile columns) of a banded convolution."},
    {"conv_pack", er_py_conv_pack, METH_VARARGS, "conv_pack(w (Cout, Cin/group*kh*kw), packed, geom)."},
    {"conv_run", er_py_conv_run, METH_VARARGS,
     "conv_run(x, packed, bias, sum, out, cols, geom, act, threads=1): out = act(conv(x) + bias + sum),\n"
     "band by band (geom's band_rows) through the cols scratch."},
    /* ---- end conv.c */
    /* ---- quant.c */
    {"qblock_run", er_py_qblock_run, METH_VARARGS,
     "qblock_run(x, y, geometry, scales, expand w8, w16, bias, mult, dw w, bias, mult, proj w8, w16, bias, mult,\n"
     "hidden, dw, projected, accumulator, tile, xq): one image of the int8 block (see quant.c)."},
    {"qgemm_run", er_py_qgemm_run, METH_VARARGS,
     "qgemm_run(x, y, w8, w16, bias, mult, geometry, scalars, tile): a 1x1 QLinearConv or QGemm (see quant.c)."},
    {"qgemm_info", er_py_qgemm_info, METH_NOARGS, "qgemm_info() -> (uses AVX-512 VNNI, weight rows of padding)."},
    /* ---- end quant.c */
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = ER_STR(ER_MODULE),
    .m_doc = "Native kernels of edgerun, one instruction-set variant (see edgerun/kernels/native.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC ER_CAT(PyInit_, ER_MODULE)(void)
{
    static int pool_exit_registered = 0;
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "MAX_THREADS", ER_MAX_THREADS) != 0 ||
              PyModule_AddStringConstant(m, "ISA", ER_STR(ER_ISA_NAME)) != 0 ||
              PyModule_AddIntConstant(m, "VECTOR_FLOATS", ER_VL) != 0)) {
        Py_DECREF(m);
        return NULL;
    }
    if (m && !pool_exit_registered) /* join the pool's workers when the interpreter exits */
        pool_exit_registered = Py_AtExit(er_pool_shutdown) == 0;
    return m;
}

/* ---------------------------------------------------------------- streamed segments (segment.c) */
#define SEG_TENSOR_FIELDS ER_SEG_TENSOR_FIELDS
#define SEG_STEP_FIELDS ER_SEG_STEP_FIELDS

/* A C-contiguous table of `columns` items of itemsize bytes per row ('i' int32 or 'q' int64). */
static int get_table(PyObject *obj, Py_buffer *view, int itemsize, int columns, const char *name)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return -1;
    const char *f = view->format ? view->format : "?";
    if (*f == '=' || *f == '<' || *f == '@') f++;
    int ok = view->itemsize == itemsize && (itemsize == 4 ? (!strcmp(f, "i") || (!strcmp(f, "l") && sizeof(long) == 4))
                                                          : (!strcmp(f, "q") || (!strcmp(f, "l") && sizeof(long) == 8)));
    if (!ok || view->len % ((Py_ssize_t)itemsize * columns) || view->len == 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "segment_run: %s must be a non-empty C-contiguous int%d array of %d "
                     "columns", name, itemsize * 8, columns);
        return -1;
    }
    return 0;
}

static PyObject *py_segment_run(PyObject *self, PyObject *args)
{
    PyObject *arena, *x, *out, *params, *tensors_obj, *steps_obj, *calls_obj;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOi", &arena, &x, &out, &params, &tensors_obj, &steps_obj, &calls_obj,
                          &threads))
        return NULL;
    if (threads < 1 || threads > ER_MAX_THREADS)
        return PyErr_Format(PyExc_ValueError, "segment_run: threads must be in 1..%d", ER_MAX_THREADS);
    Py_buffer tv, sv, cv;
    if (get_table(tensors_obj, &tv, 8, SEG_TENSOR_FIELDS, "tensors") != 0) return NULL;
    if (get_table(steps_obj, &sv, 8, SEG_STEP_FIELDS, "steps") != 0) {
        PyBuffer_Release(&tv);
        return NULL;
    }
    if (get_table(calls_obj, &cv, 4, 3, "calls") != 0) {
        PyBuffer_Release(&tv);
        PyBuffer_Release(&sv);
        return NULL;
    }
    int ntensors = (int)(tv.len / (8 * SEG_TENSOR_FIELDS)), nsteps = (int)(sv.len / (8 * SEG_STEP_FIELDS));
    int ncalls = (int)(cv.len / (4 * 3));
    const long long *tt = (const long long *)tv.buf, *st = (const long long *)sv.buf;
    er_buffer_set set = {.count = 0};
    er_seg_tensor *tensors = PyMem_Calloc((size_t)ntensors, sizeof *tensors);
    er_seg_step *steps = PyMem_Calloc((size_t)nsteps, sizeof *steps);
    const char *problem = NULL;
    if (!tensors || !steps) {
        PyErr_NoMemory();
        goto fail;
    }
    /* the whole input and output: sizes from their (single) rows of the table */
    long long sizes[3] = {-1, -1, -1};
    for (int i = 0; i < ntensors; i++) {
        const long long *r = tt + (long)i * SEG_TENSOR_FIELDS;
        for (int j = 2; j < 6; j++)
            if (r[j] < 0 || r[j] > 0x7fffffff) problem = "tensor sizes must be non-negative int32";
        if (r[0] < 0 || r[0] > 3) problem = "tensor place must be 0..3";
        if (problem) break;
        if (r[0] == 1 || r[0] == 2) {
            long long n = r[3] * r[4]; /* each is at most 2^31 - 1: this fits, the next product may not */
            if (r[5] && n > LLONG_MAX / r[5]) {
                problem = "tensor sizes overflow";
                break;
            }
            n *= r[5];
            if (r[2] != 0 || (sizes[r[0]] != -1 && sizes[r[0]] != n)) problem = "the segment input and output are whole, "
                                                                            "one size each";
            sizes[r[0]] = n;
        }
    }
    if (problem || sizes[1] < 1 || sizes[2] < 1) {
        PyErr_Format(PyExc_ValueError, "segment_run: %s", problem ? problem : "a segment input and output are needed");
        goto fail;
    }
    float *arena_p = er_acquire(&set, arena, "arena", 0, 1, 1);
    Py_ssize_t arena_n = arena_p ? set.views[set.count - 1].len / 4 : 0;
    const float *x_p = arena_p ? er_acquire(&set, x, "x", (Py_ssize_t)sizes[1], 0, 0) : NULL;
    float *out_p = x_p ? er_acquire(&set, out, "out", (Py_ssize_t)sizes[2], 0, 1) : NULL;
    const float *params_p = out_p ? er_acquire(&set, params, "params", 0, 1, 0) : NULL;
    if (!params_p || er_check_no_overlap(&set) != 0) goto fail;
    Py_ssize_t nparams = set.views[set.count - 1].len / 4;
    problem = er_seg_bind((const int64_t *)tt, ntensors, (const int64_t *)st, nsteps, x_p, (long)sizes[1], out_p,
                          (long)sizes[2], arena_p, (long)arena_n, params_p, (long)nparams, tensors, steps);
    const er_seg_call *calls = (const er_seg_call *)cv.buf;
    if (!problem) problem = er_seg_check(tensors, ntensors, steps, nsteps, calls, ncalls);
    if (problem) {
        PyErr_Format(PyExc_ValueError, "segment_run: %s", problem);
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    problem = er_seg_run(tensors, steps, calls, ncalls, threads);
    Py_END_ALLOW_THREADS
    if (problem) PyErr_Format(PyExc_RuntimeError, "segment_run: %s", problem);
fail:
    er_release_all(&set);
    PyMem_Free(tensors);
    PyMem_Free(steps);
    PyBuffer_Release(&tv);
    PyBuffer_Release(&sv);
    PyBuffer_Release(&cv);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}
/* ---------------------------------------------------------------- end of streamed segments */
