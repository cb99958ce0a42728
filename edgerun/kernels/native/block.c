/* The fused inverted-residual block, chunk by chunk (MobileNetV2 paper, Section 5.1) and
 * band by band: for each band of output rows and each chunk of hidden channels, expand the
 * hidden rows the band needs, depthwise them, and accumulate their projection into out.
 * Optional pthreads share every phase of one (band, chunk) step; they need no scratch of
 * their own, only barriers between the phases. */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c99 */
#include <pthread.h>
#include <string.h>

#include "kernels.h"

#define GEMM_COLUMN_ALIGN 16

int er_ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
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

int er_block_hidden_rows(const er_block_geom *g, int band_rows)
{
    return min_int(g->hidden_height, (band_rows - 1) * g->dw_stride + g->dw_kernel);
}

/* The part [*a, *b) of [0, n) that worker tid of count does; boundaries on multiples of align. */
static void share(int n, int tid, int count, int align, int *a, int *b)
{
    int units = er_ceil_div(n, align);
    *a = min_int(n, (int)((long)units * tid / count) * align);
    *b = min_int(n, (int)((long)units * (tid + 1) / count) * align);
}

typedef struct {
    const er_block_geom *g;
    const er_block_weights *w;
    int t, band_rows;
    const float *x;
    float *out, *expanded, *depthwise;
    int threads;
    pthread_barrier_t barrier;
    pthread_mutex_t gate_lock; /* workers wait here until the thread count is final */
    pthread_cond_t gate;
    int gate_open;
} block_job;

static void sync_workers(block_job *job)
{
    if (job->threads > 1) pthread_barrier_wait(&job->barrier);
}

/* out = bias (+ x), channels [c0, c1). */
static void initialise_output(block_job *job, int c0, int c1)
{
    const er_block_geom *g = job->g;
    long plane = (long)g->out_height * g->out_width;
    for (int c = c0; c < c1; c++) {
        float *o = job->out + c * plane;
        float b = job->w->bp[c];
        if (g->residual) {
            const float *xi = job->x + c * plane;
            for (long i = 0; i < plane; i++) o[i] = b + xi[i];
        } else {
            for (long i = 0; i < plane; i++) o[i] = b;
        }
    }
}

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

static void expand_rows_im2col(block_job *job, int c0, int c1, int h0, int h1, int ha, int hb)
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
                   (long)(he - h) * width, job->expanded + (long)(h - h0) * width,
                   (long)(h1 - h0) * width, 0, w->be + c0, &w->expand_act);
    }
}

/* Hidden channels [c0, c1), rows [h0, h1) into job->expanded: (c1-c0, h1-h0, Wh). */
static void expand_chunk(block_job *job, int tid, int c0, int c1, int h0, int h1)
{
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int rows = h1 - h0, width = g->hidden_width, a, b;
    if (is_plain_pointwise(g)) {
        int columns = rows * width;
        share(columns, tid, job->threads, GEMM_COLUMN_ALIGN, &a, &b);
        if (a < b)
            er_gemm_tn(c1 - c0, b - a, g->in_channels, w->we_t + c0, g->hidden_channels,
                       job->x + (long)h0 * g->in_width + a, (long)g->in_height * g->in_width,
                       job->expanded + a, columns, 0, w->be + c0, &w->expand_act);
        return;
    }
    if (im2col_group_rows(g) >= 1) {
        share(rows, tid, job->threads, 1, &a, &b);
        if (a < b) expand_rows_im2col(job, c0, c1, h0, h1, h0 + a, h0 + b);
        return;
    }
    int items = (c1 - c0) * rows;
    share(items, tid, job->threads, 1, &a, &b);
    for (int item = a; item < b; item++) {
        int c = c0 + item / rows, h = h0 + item % rows;
        expand_row_direct(g, w, job->x, c, h, job->expanded + (long)item * width);
    }
}

/* Depthwise (+ bias, activation) of hidden channels [c0, c1) for output rows [o0, o1); the
 * hidden rows [h0, h1) come from `expanded`, or straight from x when there is no expansion. */
static void depthwise_chunk(block_job *job, int tid, int c0, int c1, int h0, int h1, int o0, int o1)
{
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int k = g->dw_kernel, a, b;
    long hidden_stride;
    const float *hidden;
    int hidden_row0;
    if (g->expand_kernel) {
        hidden = job->expanded;
        hidden_stride = (long)(h1 - h0) * g->hidden_width;
        hidden_row0 = h0;
    } else {
        hidden_stride = (long)g->in_height * g->in_width;
        hidden = job->x + c0 * hidden_stride;
        hidden_row0 = 0;
    }
    long band_size = (long)(o1 - o0) * g->out_width;
    share(c1 - c0, tid, job->threads, 1, &a, &b);
    for (int i = a; i < b; i++) {
        int c = c0 + i;
        er_depthwise_rows(hidden + i * hidden_stride, hidden_row0, g->hidden_height, g->hidden_width,
                          w->wd + (long)c * k * k, k, g->dw_stride, g->dw_pads, w->bd[c], &w->dw_act,
                          job->depthwise + i * band_size, o0, o1, g->out_width);
    }
}

/* out[:, o0:o1] += Wp[:, c0:c1] @ depthwise */
static void project_chunk(block_job *job, int tid, int c0, int c1, int o0, int o1)
{
    const er_block_geom *g = job->g;
    int columns = (o1 - o0) * g->out_width, a, b;
    share(columns, tid, job->threads, GEMM_COLUMN_ALIGN, &a, &b);
    if (a < b)
        er_gemm_tn(g->out_channels, b - a, c1 - c0, job->w->wp_t + (long)c0 * g->out_channels,
                   g->out_channels, job->depthwise + a, columns,
                   job->out + (long)o0 * g->out_width + a, (long)g->out_height * g->out_width, 1, NULL,
                   NULL);
}

static void run_worker(block_job *job, int tid)
{
    const er_block_geom *g = job->g;
    int c0, c1, chunk = er_ceil_div(g->hidden_channels, job->t);
    share(g->out_channels, tid, job->threads, 1, &c0, &c1);
    initialise_output(job, c0, c1);
    sync_workers(job);
    for (int o0 = 0; o0 < g->out_height; o0 += job->band_rows) {
        int o1 = min_int(o0 + job->band_rows, g->out_height);
        int h0 = max_int(0, o0 * g->dw_stride - g->dw_pads[0]);
        int h1 = min_int(g->hidden_height, (o1 - 1) * g->dw_stride - g->dw_pads[0] + g->dw_kernel);
        for (c0 = 0; c0 < g->hidden_channels; c0 += chunk) {
            c1 = min_int(c0 + chunk, g->hidden_channels);
            if (g->expand_kernel) {
                expand_chunk(job, tid, c0, c1, h0, h1);
                sync_workers(job);
            }
            depthwise_chunk(job, tid, c0, c1, h0, h1, o0, o1);
            sync_workers(job);
            project_chunk(job, tid, c0, c1, o0, o1);
            if (!g->expand_kernel) sync_workers(job); /* depthwise of the next chunk overwrites */
        }
    }
}

typedef struct {
    block_job *job;
    int tid;
} worker_arg;

static void *worker_main(void *arg)
{
    worker_arg *wa = (worker_arg *)arg;
    block_job *job = wa->job;
    pthread_mutex_lock(&job->gate_lock);
    while (!job->gate_open) pthread_cond_wait(&job->gate, &job->gate_lock);
    pthread_mutex_unlock(&job->gate_lock);
    run_worker(job, wa->tid);
    return NULL;
}

#define MAX_THREADS 64

void er_block_run(const er_block_geom *g, int t, int band_rows, const er_block_weights *w,
                  const float *x, float *out, float *expanded, float *depthwise, int threads)
{
    block_job job = {.g = g, .w = w, .t = t, .band_rows = band_rows, .x = x, .out = out,
                     .expanded = expanded, .depthwise = depthwise, .threads = 1};
    threads = threads < 1 ? 1 : min_int(threads, MAX_THREADS);
    if (threads == 1) {
        run_worker(&job, 0);
        return;
    }
    pthread_t ids[MAX_THREADS];
    worker_arg args[MAX_THREADS];
    pthread_mutex_init(&job.gate_lock, NULL);
    pthread_cond_init(&job.gate, NULL);
    job.gate_open = 0;
    int started = 1; /* a thread that fails to start just means fewer workers */
    for (int i = 1; i < threads; i++) {
        args[i].job = &job;
        args[i].tid = i;
        if (pthread_create(&ids[i], NULL, worker_main, &args[i]) != 0) break;
        started++;
    }
    job.threads = started;
    if (started > 1) pthread_barrier_init(&job.barrier, NULL, (unsigned)started);
    pthread_mutex_lock(&job.gate_lock);
    job.gate_open = 1;
    pthread_cond_broadcast(&job.gate);
    pthread_mutex_unlock(&job.gate_lock);
    run_worker(&job, 0);
    for (int i = 1; i < started; i++) pthread_join(ids[i], NULL);
    if (started > 1) pthread_barrier_destroy(&job.barrier);
    pthread_cond_destroy(&job.gate);
    pthread_mutex_destroy(&job.gate_lock);
}
