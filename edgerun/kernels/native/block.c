/* The fused inverted-residual block, chunk by chunk (MobileNetV2 paper, Section 5.1) and
 * band by band: for each band of output rows and each chunk of hidden channels, expand the
 * hidden rows the band needs, depthwise them, and accumulate their projection into out.
 *
 * Python derives everything about the run (edgerun/kernels/native.py, block_contract and
 * block_call): the geometry's sizes, the chunk size, every band's output and hidden rows, and the
 * thread split; er_block_check asserts it is consistent and in bounds before anything runs.
 * Threads (the pool of threadpool.c) run the block one of two ways.
 * - Whole bands per thread (split mode ER_SPLIT_BANDS): each thread takes whole bands, all
 *   their chunks, in its own slice of `expanded` and `depthwise`; a band's projection writes
 *   only that band's output rows. One hand-over per block, and each thread keeps its data in
 *   its own core's cache.
 * - Shared (ER_SPLIT_SHARED): the threads share every phase of one (band, chunk) step in the
 *   chunk's single buffers; the phases of a step are separated by waits. A band marked "by
 *   channels" (narrow: the 7x7 and 14x14 blocks) is split by channels: expansion and depthwise
 *   by hidden channels, projection by output channels, so each thread reads part of the weights
 *   and the GEMMs keep every column; other bands by rows: the expansion over hidden rows, the
 *   depthwise and projection over output rows.
 * Every output element is computed by the same operations in the same order whatever the
 * split, so any thread count gives the same bits. */
#include <string.h>

#include "kernels.h"
#include "threadpool.h"

static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static int min_int(int a, int b) { return a < b ? a : b; }
static int max_int(int a, int b) { return a > b ? a : b; }

static int conv_output_size(int size, int k, int stride, int pad_begin, int pad_end)
{
    return floor_div(size + pad_begin + pad_end - k, stride) + 1;
}

const char *er_block_derive(er_block_geom *g)
{
    if (g->in_channels < 1 || g->in_height < 1 || g->in_width < 1 || g->hidden_channels < 1 ||
        g->out_channels < 1)
        return "channel counts and input sizes must be positive";
    if (g->expand_kernel < 0 || g->dw_kernel < 1 || g->dw_stride < 1 ||
        (g->expand_kernel > 0 && g->expand_stride < 1))
        return "kernels and strides must be positive";
    for (int i = 0; i < 4; i++)
        if (g->expand_pads[i] < 0 || g->dw_pads[i] < 0) return "pads must be non-negative";
    if (g->expand_kernel == 0) {
        if (g->hidden_channels != g->in_channels)
            return "without expansion hidden_channels must equal in_channels";
        g->hidden_height = g->in_height;
        g->hidden_width = g->in_width;
    } else {
        g->hidden_height = conv_output_size(g->in_height, g->expand_kernel, g->expand_stride,
                                            g->expand_pads[0], g->expand_pads[2]);
        g->hidden_width = conv_output_size(g->in_width, g->expand_kernel, g->expand_stride,
                                           g->expand_pads[1], g->expand_pads[3]);
    }
    if (g->hidden_height < 1 || g->hidden_width < 1) return "the expansion output would be empty";
    g->out_height = conv_output_size(g->hidden_height, g->dw_kernel, g->dw_stride, g->dw_pads[0],
                                     g->dw_pads[2]);
    g->out_width = conv_output_size(g->hidden_width, g->dw_kernel, g->dw_stride, g->dw_pads[1],
                                    g->dw_pads[3]);
    if (g->out_height < 1 || g->out_width < 1) return "the block output would be empty";
    if (g->residual && (g->in_channels != g->out_channels || g->in_height != g->out_height ||
                        g->in_width != g->out_width))
        return "a residual block needs equal input and output shapes";
    return NULL;
}

const char *er_block_check(const er_block_geom *g, int chunk, const er_band *bands, int nbands,
                           const er_block_split *split)
{
    if (chunk < 1 || chunk > g->hidden_channels) return "the chunk must hold 1..E hidden channels";
    if (nbands < 1 || bands[0].o0 != 0 || bands[nbands - 1].o1 != g->out_height)
        return "the bands must cover the output rows from 0 to the output height";
    if (split->slices < 1 || split->expanded_slice < 0 || split->depthwise_slice < 0)
        return "the split needs at least one slice of non-negative size";
    for (int b = 0; b < nbands; b++) {
        const er_band *band = &bands[b];
        if (band->o1 <= band->o0 || (b > 0 && band->o0 != bands[b - 1].o1))
            return "bands must be non-empty, in order and contiguous";
        /* the hidden rows the depthwise of output rows [o0, o1) reads must all be in the band */
        int need0 = max_int(0, band->o0 * g->dw_stride - g->dw_pads[0]);
        int need1 = min_int(g->hidden_height, (band->o1 - 1) * g->dw_stride - g->dw_pads[0] + g->dw_kernel);
        if (band->h0 < 0 || band->h1 > g->hidden_height || band->h0 >= band->h1 || band->h0 > need0 ||
            band->h1 < need1)
            return "a band's hidden rows lie outside the hidden rows or miss rows its output reads";
        if (band->by_channels != 0 && band->by_channels != 1) return "a band's by_channels flag must be 0 or 1";
        if ((g->expand_kernel && (long)chunk * (band->h1 - band->h0) * g->hidden_width > split->expanded_slice) ||
            (long)chunk * (band->o1 - band->o0) * g->out_width > split->depthwise_slice)
            return "a band's chunk does not fit one scratch slice";
    }
    if (split->threads < 1 || split->threads > ER_MAX_THREADS) return "threads must be in 1..128";
    switch (split->mode) {
    case ER_SPLIT_SINGLE:
        return split->threads == 1 ? NULL : "a one-thread split with more than one thread";
    case ER_SPLIT_BANDS:
        if (split->threads < 2 || split->slices != split->threads || nbands < split->threads)
            return "whole bands per thread need threads >= 2, one slice per thread and a band per thread";
        return NULL;
    case ER_SPLIT_SHARED:
        return split->threads >= 2 ? NULL : "a shared split needs threads >= 2";
    default:
        return "unknown split mode";
    }
}

/* ======================= the block ======================= */
typedef struct {
    const er_block_geom *g;
    const er_block_weights *w;
    int chunk;            /* hidden channels per chunk */
    const er_band *bands; /* the bands Python derived, checked by er_block_check */
    const float *x;
    float *out, *expanded, *depthwise;
    /* the current (band, chunk) step, cut into `parts` ranges of output rows */
    int c0, c1, h0, h1, o0, o1, parts;
} block_job;

/* One hidden row of hidden channel c by direct convolution (any kernel, stride, padding). */
static void expand_row_direct(const er_block_geom *g, const er_block_weights *w, const float *x, int c,
                              int h, float *dst)
{
    int k = g->expand_kernel, s = g->expand_stride, width = g->hidden_width;
    int pad_top = g->expand_pads[0], pad_left = g->expand_pads[1];
    long in_plane = (long)g->in_height * g->in_width;
    for (int j = 0; j < width; j++) dst[j] = w->be[c];
    for (int ci = 0; ci < g->in_channels; ci++) {
        for (int ky = 0; ky < k; ky++) {
            int r = h * s - pad_top + ky;
            if (r < 0 || r >= g->in_height) continue;
            const float *row = x + ci * in_plane + (long)r * g->in_width;
            const float *taps = w->we + (((long)c * g->in_channels + ci) * k + ky) * k;
            for (int kx = 0; kx < k; kx++) {
                int offset = kx - pad_left;
                int j0 = max_int(0, er_ceil_div(-offset, s));
                int j1 = min_int(width, floor_div(g->in_width - 1 - offset, s) + 1);
                float wv = taps[kx];
                for (int j = j0; j < j1; j++) dst[j] += wv * row[j * s + offset];
            }
        }
    }
    er_apply_activation(dst, width, &w->expand_act);
}

static int is_plain_pointwise(const er_block_geom *g)
{
    const int *p = g->expand_pads;
    return g->expand_kernel == 1 && g->expand_stride == 1 && !(p[0] | p[1] | p[2] | p[3]);
}

/* ---- expansion through a small im2col on the stack (the fused 3x3 stride-2 stem) ----
 * For a group of hidden rows, the Cin*ke*ke input taps of every hidden pixel are gathered
 * (zeros where the window hangs over the padding) into a stack buffer, then one GEMM
 * against we_t writes the rows into `expanded` with bias and activation. */
#define IM2COL_FLOATS 8192

/* Columns [j0, j1) of the hidden row whose tap (offset = kx - pad_left) lands inside the input. */
static void tap_columns(int width, int in_width, int stride, int offset, int *j0, int *j1)
{
    *j0 = min_int(width, max_int(0, er_ceil_div(-offset, stride)));
    *j1 = max_int(*j0, min_int(width, floor_div(in_width - 1 - offset, stride) + 1));
}

/* dst[j] = src[j * stride]; constant strides 1 and 2 (the stem) vectorise. */
static void copy_strided(float *restrict dst, const float *restrict src, int n, int stride)
{
    if (stride == 1)
        for (int j = 0; j < n; j++) dst[j] = src[j];
    else if (stride == 2)
        for (int j = 0; j < n; j++) dst[j] = src[2 * j];
    else
        for (int j = 0; j < n; j++) dst[j] = src[(long)j * stride];
}

static void gather_im2col(const er_block_geom *g, const float *x, int ha, int hb, float *cols)
{
    int k = g->expand_kernel, s = g->expand_stride, width = g->hidden_width;
    long pitch = (long)(hb - ha) * width, in_plane = (long)g->in_height * g->in_width;
    for (int ci = 0; ci < g->in_channels; ci++) {
        for (int ky = 0; ky < k; ky++) {
            for (int kx = 0; kx < k; kx++) {
                float *dst = cols + ((long)(ci * k + ky) * k + kx) * pitch;
                int offset = kx - g->expand_pads[1], j0, j1;
                tap_columns(width, g->in_width, s, offset, &j0, &j1);
                for (int h = ha; h < hb; h++, dst += width) {
                    int r = h * s - g->expand_pads[0] + ky;
                    if (r < 0 || r >= g->in_height) {
                        memset(dst, 0, sizeof(float) * width);
                        continue;
                    }
                    const float *row = x + ci * in_plane + (long)r * g->in_width + offset;
                    for (int j = 0; j < j0; j++) dst[j] = 0.0f;
                    copy_strided(dst + j0, row + (long)j0 * s, j1 - j0, s);
                    for (int j = j1; j < width; j++) dst[j] = 0.0f;
                }
            }
        }
    }
}

/* Hidden rows per im2col group; 0 when even one row does not fit the stack buffer. */
static int im2col_group_rows(const er_block_geom *g)
{
    long taps = (long)g->in_channels * g->expand_kernel * g->expand_kernel;
    return (int)(IM2COL_FLOATS / (taps * g->hidden_width));
}

/* Hidden rows [ha, hb) of channels [c0, c1) into dst (channel c0's rows [h0, h1)). */
static void expand_rows_im2col(block_job *job, int c0, int c1, int h0, int h1, int ha, int hb, float *dst)
{
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    float cols[IM2COL_FLOATS];
    int group = im2col_group_rows(g), width = g->hidden_width;
    long taps = (long)g->in_channels * g->expand_kernel * g->expand_kernel;
    for (int h = ha; h < hb; h += group) {
        int he = min_int(hb, h + group);
        gather_im2col(g, job->x, h, he, cols);
        er_gemm_tn(c1 - c0, (he - h) * width, (int)taps, w->we_t + c0, g->hidden_channels, cols,
                   (long)(he - h) * width, dst + (long)(h - h0) * width,
                   (long)(h1 - h0) * width, 0, w->be + c0, &w->expand_act);
    }
}


/* Output rows [*p0, *p1) of part k of the step's band. */
static void part_rows(const block_job *job, int k, int *p0, int *p1)
{
    er_share(job->o1 - job->o0, job->parts, k, p0, p1);
    *p0 += job->o0;
    *p1 += job->o0;
}

/* First hidden row the depthwise of output row o reads (clamped to the step's rows). */
static int first_hidden_row(const block_job *job, int o)
{
    const er_block_geom *g = job->g;
    return min_int(job->h1, max_int(job->h0, o * g->dw_stride - g->dw_pads[0]));
}

/* Expansion item k: hidden rows [ha, hb) of all the chunk's channels, from the first row its
 * own output rows read up to the first row the next part reads (disjoint, covering [h0, h1);
 * the few rows a part reads beyond that come from its neighbour). */
static void expand_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int p0, p1, q0, q1;
    part_rows(job, k, &p0, &p1);
    int ha = k == 0 ? job->h0 : first_hidden_row(job, p0);
    int hb = job->h1;
    if (k + 1 < job->parts) {
        part_rows(job, k + 1, &q0, &q1);
        hb = first_hidden_row(job, q0);
    }
    if (ha >= hb) return;
    int width = g->hidden_width, rows = job->h1 - job->h0;
    if (is_plain_pointwise(g)) {
        int columns = rows * width;
        er_gemm_tn(job->c1 - job->c0, (hb - ha) * width, g->in_channels, w->we_t + job->c0,
                   g->hidden_channels, job->x + (long)ha * g->in_width, (long)g->in_height * g->in_width,
                   job->expanded + (long)(ha - job->h0) * width, columns, 0, w->be + job->c0,
                   &w->expand_act);
    } else if (im2col_group_rows(g) >= 1) {
        expand_rows_im2col(job, job->c0, job->c1, job->h0, job->h1, ha, hb, job->expanded);
    } else {
        for (int c = job->c0; c < job->c1; c++)
            for (int h = ha; h < hb; h++)
                expand_row_direct(g, w, job->x, c, h,
                                  job->expanded + ((long)(c - job->c0) * rows + (h - job->h0)) * width);
    }
}

/* out[m0:m1, columns n0:n1 of the band] = bias (+ x), before the band's first chunk accumulates. */
static void initialise_channels(block_job *job, int m0, int m1, int n0, int n1)
{
    const er_block_geom *g = job->g;
    long plane = (long)g->out_height * g->out_width, first = (long)job->o0 * g->out_width;
    for (int c = m0; c < m1; c++) {
        float *o = job->out + c * plane + first;
        float b = job->w->bp[c];
        if (g->residual) {
            const float *xi = job->x + c * plane + first;
            for (int i = n0; i < n1; i++) o[i] = b + xi[i];
        } else {
            for (int i = n0; i < n1; i++) o[i] = b;
        }
    }
}

static void initialise_output(block_job *job, int n0, int n1)
{
    initialise_channels(job, 0, job->g->out_channels, n0, n1);
}

/* Part k of the step: depthwise (+ bias, activation) of every hidden channel of the chunk for
 * its output rows [p0, p1), then out[:, those rows] += Wp[:, chunk] @ depthwise. The hidden
 * rows come from `expanded`, or straight from x when there is no expansion. */
static void rows_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int p0, p1, kd = g->dw_kernel, hidden_row0;
    part_rows(job, k, &p0, &p1);
    if (p0 >= p1) return;
    long hidden_stride;
    const float *hidden;
    if (g->expand_kernel) {
        hidden = job->expanded;
        hidden_stride = (long)(job->h1 - job->h0) * g->hidden_width;
        hidden_row0 = job->h0;
    } else {
        hidden_stride = (long)g->in_height * g->in_width;
        hidden = job->x + job->c0 * hidden_stride;
        hidden_row0 = 0;
    }
    int n0 = (p0 - job->o0) * g->out_width, n1 = (p1 - job->o0) * g->out_width;
    /* the part's own block of the depthwise scratch, (channels, its pixels): threads never
     * write into the same cache line (a (channels, band pixels) layout shares one a channel) */
    float *part_depthwise = job->depthwise + (long)(job->c1 - job->c0) * n0;
    for (int i = 0; i < job->c1 - job->c0; i++) {
        int c = job->c0 + i;
        er_depthwise_rows(hidden + i * hidden_stride, hidden_row0, g->hidden_height, g->hidden_width,
                          w->wd + (long)c * kd * kd, kd, g->dw_stride, g->dw_pads, w->bd[c], &w->dw_act,
                          part_depthwise + (long)i * (n1 - n0), p0, p1, g->out_width);
    }
    if (job->c0 == 0) initialise_output(job, n0, n1);
    long plane = (long)g->out_height * g->out_width;
    er_gemm_tn(g->out_channels, n1 - n0, job->c1 - job->c0, w->wp_t + (long)job->c0 * g->out_channels,
               g->out_channels, part_depthwise, n1 - n0,
               job->out + (long)job->o0 * g->out_width + n0, plane, 1, NULL, NULL);
}

/* Sets the job's band to band b: its output rows [o0, o1) and the hidden rows [h0, h1) they read. */
static void set_band(block_job *job, int b)
{
    job->o0 = job->bands[b].o0;
    job->o1 = job->bands[b].o1;
    job->h0 = job->bands[b].h0;
    job->h1 = job->bands[b].h1;
}

/* Multiply-adds of one (band, chunk) step of the job's current band. */
static double step_macs(const block_job *job)
{
    const er_block_geom *g = job->g;
    int chunk = job->chunk;
    int band_out = (job->o1 - job->o0) * g->out_width, k2 = g->expand_kernel * g->expand_kernel;
    return (double)chunk * ((double)g->in_channels * k2 * (job->h1 - job->h0) * g->hidden_width +
                            (double)(g->dw_kernel * g->dw_kernel + g->out_channels) * band_out);
}

/* ---- channel split: for narrow bands (few pixels), where a row split would leave each
 * thread too few columns for the GEMM tiles. Phase 1, part k: expansion and depthwise of its
 * share of the chunk's hidden channels; phase 2, part k: the projection of its share of the
 * output channels over all the band's pixels. Scratch layouts are those of one part. */

static void hidden_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int a0, a1, kd = g->dw_kernel;
    er_share(job->c1 - job->c0, job->parts, k, &a0, &a1);
    if (a0 >= a1) return;
    int ca = job->c0 + a0, cb = job->c0 + a1, width = g->hidden_width, rows = job->h1 - job->h0;
    long columns = (long)rows * width;
    const float *hidden;
    long hidden_stride;
    int hidden_row0;
    if (g->expand_kernel) {
        float *dst = job->expanded + a0 * columns;
        if (is_plain_pointwise(g)) {
            er_gemm_tn(cb - ca, (int)columns, g->in_channels, w->we_t + ca, g->hidden_channels,
                       job->x + (long)job->h0 * g->in_width, (long)g->in_height * g->in_width, dst, columns,
                       0, w->be + ca, &w->expand_act);
        } else if (im2col_group_rows(g) >= 1) {
            expand_rows_im2col(job, ca, cb, job->h0, job->h1, job->h0, job->h1, dst);
        } else {
            for (int c = ca; c < cb; c++)
                for (int h = job->h0; h < job->h1; h++)
                    expand_row_direct(g, w, job->x, c, h,
                                      job->expanded + ((long)(c - job->c0) * rows + (h - job->h0)) * width);
        }
        hidden = job->expanded;
        hidden_stride = columns;
        hidden_row0 = job->h0;
    } else {
        hidden_stride = (long)g->in_height * g->in_width;
        hidden = job->x + job->c0 * hidden_stride;
        hidden_row0 = 0;
    }
    long n = (long)(job->o1 - job->o0) * g->out_width;
    for (int i = a0; i < a1; i++) {
        int c = job->c0 + i;
        er_depthwise_rows(hidden + i * hidden_stride, hidden_row0, g->hidden_height, g->hidden_width,
                          w->wd + (long)c * kd * kd, kd, g->dw_stride, g->dw_pads, w->bd[c], &w->dw_act,
                          job->depthwise + i * n, job->o0, job->o1, g->out_width);
    }
}

static void project_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    int m0, m1;
    er_share(g->out_channels, job->parts, k, &m0, &m1);
    if (m0 >= m1) return;
    int n = (job->o1 - job->o0) * g->out_width;
    if (job->c0 == 0) initialise_channels(job, m0, m1, 0, n);
    long plane = (long)g->out_height * g->out_width;
    er_gemm_tn(m1 - m0, n, job->c1 - job->c0, job->w->wp_t + (long)job->c0 * g->out_channels + m0,
               g->out_channels, job->depthwise, n, job->out + m0 * plane + (long)job->o0 * g->out_width,
               plane, 1, NULL, NULL);
}

/* Shared split: each (band, chunk) step of a band split by rows is [expansion of the hidden
 * rows, split by rows] then [depthwise and projection, split by output rows]; a band split by
 * channels runs [hidden_item] then [project_item]; each phase completes before the next
 * starts. Part k of both phases goes to the same thread, so its rows stay in its cache. */
static void run_steps(er_team *team, block_job *job, int nbands, int threads)
{
    const er_block_geom *g = job->g;
    int chunk = job->chunk;
    for (int b = 0; b < nbands; b++) {
        set_band(job, b);
        int by_channels = job->bands[b].by_channels;
        int most = by_channels ? min_int(g->out_channels, chunk) : job->o1 - job->o0;
        job->parts = team ? er_worth_parts(step_macs(job), threads, most) : 1;
        by_channels = by_channels && job->parts > 1;
        for (int c0 = 0; c0 < g->hidden_channels; c0 += chunk) {
            job->c0 = c0;
            job->c1 = min_int(c0 + chunk, g->hidden_channels);
            if (by_channels) {
                er_team_run(team, hidden_item, job, job->parts);
                er_team_run(team, project_item, job, job->parts);
                continue;
            }
            if (g->expand_kernel) er_team_run(team, expand_item, job, job->parts);
            er_team_run(team, rows_item, job, job->parts);
        }
    }
}

/* Whole bands per thread: item k owns slice k of `expanded` and `depthwise` and runs bands
 * k, k + items, k + 2 * items, ... (an item whose thread is late is taken by a free one). It
 * runs every chunk of a band exactly as one thread does (one part), and a band's projection
 * writes only that band's output rows, so no two items write the same bytes and every output
 * element sees the same operations in the same order as with one thread. */
typedef struct {
    const block_job *base;
    long expanded_slice, depthwise_slice; /* floats per item */
    int bands, items;
} band_job;

static void band_item(void *ctx, int k)
{
    band_job *bands = (band_job *)ctx;
    block_job job = *bands->base;
    const er_block_geom *g = job.g;
    int chunk = job.chunk;
    job.parts = 1;
    if (job.expanded) job.expanded += (long)k * bands->expanded_slice;
    job.depthwise += (long)k * bands->depthwise_slice;
    for (int b = k; b < bands->bands; b += bands->items) {
        set_band(&job, b);
        for (int c0 = 0; c0 < g->hidden_channels; c0 += chunk) {
            job.c0 = c0;
            job.c1 = min_int(c0 + chunk, g->hidden_channels);
            if (g->expand_kernel) expand_item(&job, 0);
            rows_item(&job, 0);
        }
    }
}

static void run_bands(er_team *team, block_job *job, int nbands, const er_block_split *split)
{
    band_job bands = {.base = job, .bands = nbands, .expanded_slice = split->expanded_slice,
                      .depthwise_slice = split->depthwise_slice};
    int items = split->threads;
    /* a block too small to pay for the hand-over runs on the caller (slice 0) */
    set_band(job, 0);
    double macs = step_macs(job) * er_ceil_div(job->g->hidden_channels, job->chunk) * nbands;
    if (macs < 2.0 * (double)er_min_part_macs(-1)) items = 1;
    bands.items = min_int(items, nbands);
    er_team_run(team, band_item, &bands, bands.items);
}

const char *er_block_run(const er_block_geom *g, int chunk, const er_band *bands, int nbands,
                         const er_block_weights *w, const float *x, float *out, float *expanded,
                         float *depthwise, const er_block_split *split)
{
    const char *error = er_block_check(g, chunk, bands, nbands, split);
    if (error) return error;
    block_job job = {.g = g, .w = w, .chunk = chunk, .bands = bands, .x = x, .out = out,
                     .expanded = expanded, .depthwise = depthwise};
    er_team *team = NULL;
    if ((error = er_team_begin(split->threads, &team)) != NULL) return error;
    if (split->mode == ER_SPLIT_BANDS)
        run_bands(team, &job, nbands, split);
    else
        run_steps(team, &job, nbands, split->threads);
    er_team_end(team);
    return NULL;
}
