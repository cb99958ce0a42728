/* Row kernels of streamed segments (edgerun/kernels/native_segment.py, docs/segments.md).
 *
 * A segment runs a list of calls "step s computes its output rows [lo, hi)". Every tensor of the
 * segment is either whole (the segment's input and output: row r of channel c at
 * base + c*H*W + r*W) or a ring of R rows (row r in slot r mod R, a slot holding the row's C x W
 * floats: channel c at slot + c*W). A kernel never indexes a tensor itself: for each output row it
 * looks its input rows up in a small table of row pointers (NULL for a padding row), each with the
 * tensor's channel stride, so a ring's wrap-around costs nothing and nothing is copied between
 * steps. Output rows are written the same way into the consumer's ring slot (or the whole output).
 *
 * Threads split every call by output channels; each output value is computed by one thread in the
 * same order whatever the split, so results have the same bits for any thread count. The only
 * scratch (one output row's im2col for a general convolution) comes from the caller's arena; the
 * row-pointer and column tables live on the stack (kernel extents are at most ER_SEG_MAX_KERNEL). */
#include <math.h>
#include <string.h>

#define ER_VECTOR_HELPERS
#include "kernels.h"
#include "threadpool.h"

/* ---------------------------------------------------------------- rows of a tensor */
static inline const float *seg_row(const er_seg_tensor *t, int r)
{
    if (r < 0 || r >= t->height || t->ring < 0) return NULL;
    if (t->ring) return t->base + (long)(r % t->ring) * t->channels * t->width;
    return t->base + (long)r * t->width;
}

static inline long seg_channel_stride(const er_seg_tensor *t)
{
    return t->ring > 0 ? t->width : (long)t->height * t->width;
}

/* Per kernel column kx: output columns [first, stop) whose tap is inside the input, and the input
 * column x0 read by output column `first` (numpy_segment._column_ranges). */
typedef struct {
    int first, stop, x0;
} seg_columns;

static void column_ranges(int width, int out_width, int kernel, int stride, int dilation, int left,
                          seg_columns *cols)
{
    for (int kx = 0; kx < kernel; kx++) {
        int start = kx * dilation - left;
        int first = start < 0 ? (-start + stride - 1) / stride : 0;
        int stop = 0;
        if (width - 1 - start >= 0) {
            stop = (width - 1 - start) / stride + 1;
            if (stop > out_width) stop = out_width;
        }
        if (stop < first) stop = first;
        cols[kx].first = first;
        cols[kx].stop = stop;
        cols[kx].x0 = start + first * stride;
    }
}

/* The input rows output row o reads, tap by tap (NULL: padding); returns how many are inside. */
static int window_rows(const er_seg_step *s, const er_seg_tensor *src, int o, const float **rows)
{
    int valid = 0;
    for (int ky = 0; ky < s->kh; ky++) {
        rows[ky] = seg_row(src, o * s->sh - s->pad_top + ky * s->dh);
        valid += rows[ky] != NULL;
    }
    return valid;
}

static inline void activate(float *p, long n, const er_act *act)
{
    if (act->kind != ER_ACT_NONE) er_apply_activation(p, n, act);
}

/* ---------------------------------------------------------------- one call, shared out */
typedef struct {
    const er_seg_step *s;
    const er_seg_tensor *src, *skip, *dst;
    int lo, hi, parts, row; /* row: the one output row of an im2col or block phase */
    int cin;                /* input channels */
    int slice, cin_slice;   /* a block phase: the first hidden channel of its slice, its channels */
} seg_job;

/* 1x1 convolution, horizontal stride 1, no side pads: per group, W (Mg x Cg) times the input row
 * read in place (channel stride of its tensor), output channels [m0, m1). */
static void pointwise_rows(const seg_job *job, int m0, int m1)
{
    const er_seg_step *s = job->s;
    int groups = s->group, mg = s->out_channels / groups, cg = job->cin / groups, width = s->out_width;
    long scs = seg_channel_stride(job->src), dcs = seg_channel_stride(job->dst);
    for (int o = job->lo; o < job->hi; o++) {
        const float *in = seg_row(job->src, o * s->sh);
        float *out = (float *)seg_row(job->dst, o);
        for (int g = m0 / mg; g < groups && g * mg < m1; g++) {
            int a = m0 > g * mg ? m0 : g * mg, b = m1 < (g + 1) * mg ? m1 : (g + 1) * mg;
            if (!in) { /* a row below the input (never for a valid geometry): bias only */
                for (int m = a; m < b; m++) {
                    for (int x = 0; x < width; x++) out[m * dcs + x] = s->bias ? s->bias[m] : 0.0f;
                    activate(out + m * dcs, width, &s->act);
                }
                continue;
            }
            er_gemm_tn(b - a, width, cg, s->weights + (long)g * cg * mg + (a - g * mg), mg,
                       in + (long)g * cg * scs, scs, out + a * dcs, dcs, 0, s->bias ? s->bias + a : NULL,
                       &s->act);
        }
    }
}

#define SEG_STACK_WIDTH 4096 /* input rows up to this wide are split into stride phases on the stack */

/* phases[p * n + j] = in[p + j * stride] for the `width` floats of in (n = ceil(width / stride)). */
static void split_phases(const float *restrict in, int width, int stride, float *restrict phases)
{
    int n = (width + stride - 1) / stride;
    if (stride == 2) { /* the common case, in a loop the compiler vectorises */
        float *restrict even = phases, *restrict odd = phases + n;
        int half = width / 2;
        for (int j = 0; j < half; j++) {
            even[j] = in[2 * j];
            odd[j] = in[2 * j + 1];
        }
        if (width & 1) even[half] = in[width - 1];
        return;
    }
    for (int p = 0; p < stride; p++)
        for (int j = 0, x = p; x < width; j++, x += stride) phases[p * n + j] = in[x];
}

#define SEG_MAX_TAPS 64 /* depthwise kernels up to this many taps keep their sums in registers */

/* One depthwise output row from its taps: out[x] = b + sum over taps t (in order) of w[t] * p[t][x],
 * tap t counting only for columns [first[t], stop[t]); with `accumulate`, out[x] itself instead of b
 * (the scatter of a fused block adds one kernel row's taps into its accumulators). The columns every
 * tap covers go vector by vector with the sums in registers; the edge columns one by one, in the
 * same order. */
static void depthwise_taps(float *restrict out, int width, float b, const float *const *p, const float *w,
                           const int *first, const int *stop, int ntaps, int accumulate)
{
    int lo = 0, hi = width;
    for (int t = 0; t < ntaps; t++) {
        if (first[t] > lo) lo = first[t];
        if (stop[t] < hi) hi = stop[t];
    }
    if (lo > width) lo = width;
    if (hi < lo) hi = lo;
    for (int x = 0; x < width; x++) {
        if (x == lo) x = hi;
        if (x >= width) break;
        float acc = accumulate ? out[x] : b;
        for (int t = 0; t < ntaps; t++)
            if (x >= first[t] && x < stop[t]) acc += w[t] * p[t][x];
        out[x] = acc;
    }
    int x = lo;
#if defined(__GNUC__)
    /* accumulating, the last columns go in one vector ending at hi, loaded before any store (a load
     * overlapping a fresh store waits for it) and stored after the others: the columns it shares with
     * them get the same sums, from the same values in the same order */
    int tail_at = -1;
    er_vf tail = er_splatv(0.0f);
    if (accumulate && hi - lo >= ER_VL && (hi - lo) % ER_VL) {
        tail_at = hi - ER_VL;
        tail = er_loadv(out + tail_at);
        for (int t = 0; t < ntaps; t++) tail += er_splatv(w[t]) * er_loadv(p[t] + tail_at);
        hi = lo + (hi - lo) / ER_VL * ER_VL;
    }
    for (; x + 4 * ER_VL <= hi; x += 4 * ER_VL) { /* 4 vectors per tap: one broadcast of its weight */
        er_vf acc[4];
        for (int i = 0; i < 4; i++) acc[i] = accumulate ? er_loadv(out + x + i * ER_VL) : er_splatv(b);
        for (int t = 0; t < ntaps; t++) {
            er_vf wv = er_splatv(w[t]);
            const float *q = p[t] + x;
            for (int i = 0; i < 4; i++) acc[i] += wv * er_loadv(q + i * ER_VL);
        }
        for (int i = 0; i < 4; i++) er_storev(out + x + i * ER_VL, acc[i]);
    }
    for (; x + 2 * ER_VL <= hi; x += 2 * ER_VL) {
        er_vf acc0 = accumulate ? er_loadv(out + x) : er_splatv(b);
        er_vf acc1 = accumulate ? er_loadv(out + x + ER_VL) : er_splatv(b);
        for (int t = 0; t < ntaps; t++) {
            er_vf wv = er_splatv(w[t]);
            acc0 += wv * er_loadv(p[t] + x);
            acc1 += wv * er_loadv(p[t] + x + ER_VL);
        }
        er_storev(out + x, acc0);
        er_storev(out + x + ER_VL, acc1);
    }
    for (; x + ER_VL <= hi; x += ER_VL) {
        er_vf acc = accumulate ? er_loadv(out + x) : er_splatv(b);
        for (int t = 0; t < ntaps; t++) acc += er_splatv(w[t]) * er_loadv(p[t] + x);
        er_storev(out + x, acc);
    }
    if (tail_at >= 0) er_storev(out + tail_at, tail);
    if (x < hi && hi - lo >= ER_VL && !accumulate) { /* the last columns: one vector ending at hi */
        x = hi - ER_VL;                             /* (recomputes a few columns alike) */
        er_vf acc = er_splatv(b);
        for (int t = 0; t < ntaps; t++) acc += er_splatv(w[t]) * er_loadv(p[t] + x);
        er_storev(out + x, acc);
        x = hi;
    }
#endif
    for (; x < hi; x++) {
        float acc = accumulate ? out[x] : b;
        for (int t = 0; t < ntaps; t++) acc += w[t] * p[t][x];
        out[x] = acc;
    }
}

/* Depthwise with at most SEG_MAX_TAPS taps whose rows' stride phases fit SEG_STACK_WIDTH: every
 * tap becomes a unit-stride pointer (into the row, or into its phases for a strided kernel). */
static void depthwise_rows_by_taps(const seg_job *job, int m0, int m1)
{
    const er_seg_step *s = job->s;
    const float *rows[ER_SEG_MAX_KERNEL], *p[SEG_MAX_TAPS];
    seg_columns cols[ER_SEG_MAX_KERNEL];
    float w[SEG_MAX_TAPS], phases[SEG_STACK_WIDTH];
    int first[SEG_MAX_TAPS], stop[SEG_MAX_TAPS];
    int mult = s->out_channels / job->cin, width = s->out_width, kk = s->kh * s->kw, in_width = job->src->width;
    int n = (in_width + s->sw - 1) / s->sw, phase_row = n * s->sw;
    long scs = seg_channel_stride(job->src), dcs = seg_channel_stride(job->dst);
    column_ranges(in_width, width, s->kw, s->sw, s->dw, s->pad_left, cols);
    for (int o = job->lo; o < job->hi; o++) {
        window_rows(s, job->src, o, rows);
        float *out_row = (float *)seg_row(job->dst, o);
        for (int m = m0; m < m1; m++) {
            int ntaps = 0;
            for (int ky = 0; ky < s->kh; ky++) {
                if (!rows[ky]) continue;
                const float *in = rows[ky] + (long)(m / mult) * scs;
                if (s->sw > 1 && (m == m0 || m % mult == 0)) split_phases(in, in_width, s->sw, phases + ky * phase_row);
                for (int kx = 0; kx < s->kw; kx++) {
                    const seg_columns *c = &cols[kx];
                    if (c->stop == c->first) continue;
                    p[ntaps] = s->sw > 1 ? phases + ky * phase_row + (c->x0 % s->sw) * n + c->x0 / s->sw - c->first
                                         : in + c->x0 - c->first;
                    w[ntaps] = s->weights[(long)m * kk + ky * s->kw + kx];
                    first[ntaps] = c->first;
                    stop[ntaps++] = c->stop;
                }
            }
            float *out = out_row + m * dcs;
            depthwise_taps(out, width, s->bias ? s->bias[m] : 0.0f, p, w, first, stop, ntaps, 0);
            activate(out, width, &s->act);
        }
    }
}

/* Depthwise (group == input channels, any multiplier): output channel m reads input channel
 * m / multiplier; bias first, then the taps in (ky, kx) order. A strided row is first split into
 * its stride phases so that every tap is a unit-stride loop. */
static void depthwise_rows(const seg_job *job, int m0, int m1)
{
    const er_seg_step *s = job->s;
    int in_width = job->src->width, phase_row = (in_width + s->sw - 1) / s->sw * s->sw;
    if (s->kh * s->kw <= SEG_MAX_TAPS && (long)s->kh * phase_row <= SEG_STACK_WIDTH) {
        depthwise_rows_by_taps(job, m0, m1);
        return;
    }

    const float *rows[ER_SEG_MAX_KERNEL];
    seg_columns cols[ER_SEG_MAX_KERNEL];
    int mult = s->out_channels / job->cin, width = s->out_width, kk = s->kh * s->kw;
    long scs = seg_channel_stride(job->src), dcs = seg_channel_stride(job->dst);
    float phases[SEG_STACK_WIDTH];
    column_ranges(job->src->width, width, s->kw, s->sw, s->dw, s->pad_left, cols);
    for (int o = job->lo; o < job->hi; o++) {
        window_rows(s, job->src, o, rows);
        float *out_row = (float *)seg_row(job->dst, o);
        for (int m = m0; m < m1; m++) {
            float *restrict out = out_row + m * dcs;
            const float *w = s->weights + (long)m * kk;
            float b = s->bias ? s->bias[m] : 0.0f;
            for (int x = 0; x < width; x++) out[x] = b;
            for (int ky = 0; ky < s->kh; ky++) {
                if (!rows[ky]) continue;
                const float *in = rows[ky] + (long)(m / mult) * scs;
                int phased = s->sw > 1 && in_width <= SEG_STACK_WIDTH, n = (in_width + s->sw - 1) / s->sw;
                if (phased) split_phases(in, in_width, s->sw, phases);
                for (int kx = 0; kx < s->kw; kx++) {
                    const seg_columns *c = &cols[kx];
                    float wv = w[ky * s->kw + kx];
                    if (phased) {
                        const float *restrict p = phases + (c->x0 % s->sw) * n + c->x0 / s->sw - c->first;
                        for (int x = c->first; x < c->stop; x++) out[x] += wv * p[x];
                    } else if (s->sw == 1) {
                        const float *restrict p = in + c->x0 - c->first;
                        for (int x = c->first; x < c->stop; x++) out[x] += wv * p[x];
                    } else {
                        const float *restrict p = in + c->x0;
                        for (int x = c->first; x < c->stop; x++) out[x] += wv * p[(long)(x - c->first) * s->sw];
                    }
                }
            }
            activate(out, width, &s->act);
        }
    }
}

/* im2col of output row job->row for input channels [c0, c1): scratch (C, kh, kw, Wo). */
static void im2col_row(const seg_job *job, int c0, int c1)
{
    const er_seg_step *s = job->s;
    const float *rows[ER_SEG_MAX_KERNEL];
    seg_columns cols[ER_SEG_MAX_KERNEL];
    int width = s->out_width;
    long scs = seg_channel_stride(job->src);
    column_ranges(job->src->width, width, s->kw, s->sw, s->dw, s->pad_left, cols);
    window_rows(s, job->src, job->row, rows);
    for (int c = c0; c < c1; c++) {
        for (int ky = 0; ky < s->kh; ky++) {
            for (int kx = 0; kx < s->kw; kx++) {
                float *dst = s->scratch + (((long)c * s->kh + ky) * s->kw + kx) * width;
                const seg_columns *r = &cols[kx];
                if (!rows[ky] || r->stop == r->first) {
                    memset(dst, 0, (size_t)width * sizeof(float));
                    continue;
                }
                const float *in = rows[ky] + (long)c * scs + r->x0;
                memset(dst, 0, (size_t)r->first * sizeof(float));
                for (int x = r->first; x < r->stop; x++) dst[x] = in[(long)(x - r->first) * s->sw];
                memset(dst + r->stop, 0, (size_t)(width - r->stop) * sizeof(float));
            }
        }
    }
}

/* The GEMM of output row job->row over the im2col scratch, output channels [m0, m1). */
static void im2col_gemm(const seg_job *job, int m0, int m1)
{
    const er_seg_step *s = job->s;
    int groups = s->group, mg = s->out_channels / groups, taps = job->cin / groups * s->kh * s->kw;
    long dcs = seg_channel_stride(job->dst);
    float *out = (float *)seg_row(job->dst, job->row);
    for (int g = m0 / mg; g < groups && g * mg < m1; g++) {
        int a = m0 > g * mg ? m0 : g * mg, b = m1 < (g + 1) * mg ? m1 : (g + 1) * mg;
        er_gemm_tn(b - a, s->out_width, taps, s->weights + (long)g * taps * mg + (a - g * mg), mg,
                   s->scratch + (long)g * taps * s->out_width, s->out_width, out + a * dcs, dcs, 0,
                   s->bias ? s->bias + a : NULL, &s->act);
    }
}

/* max(acc, v) keeping a NaN from either side, as numpy's maximum does. */
static inline float nan_max(float acc, float v) { return v > acc || v != v ? v : acc; }

/* Max or average pooling, channels [c0, c1); average: the sum times aux[x] (1 / the window's columns)
 * times 1 / its rows (inside the input, or all kh with include_pad), as numpy_segment. */
static void pool_rows(const seg_job *job, int c0, int c1)
{
    const er_seg_step *s = job->s;
    const float *rows[ER_SEG_MAX_KERNEL];
    seg_columns cols[ER_SEG_MAX_KERNEL];
    int width = s->out_width, is_max = s->kind == ER_SEG_MAXPOOL;
    long scs = seg_channel_stride(job->src), dcs = seg_channel_stride(job->dst);
    column_ranges(job->src->width, width, s->kw, s->sw, s->dw, s->pad_left, cols);
    for (int o = job->lo; o < job->hi; o++) {
        int valid = window_rows(s, job->src, o, rows);
        float *out_row = (float *)seg_row(job->dst, o);
        float row_scale = 1.0f / (float)(s->include_pad ? s->kh : (valid ? valid : 1));
        for (int c = c0; c < c1; c++) {
            float *restrict out = out_row + c * dcs;
            for (int x = 0; x < width; x++) out[x] = is_max ? -INFINITY : 0.0f;
            for (int ky = 0; ky < s->kh; ky++) {
                if (!rows[ky]) continue;
                const float *in = rows[ky] + (long)c * scs;
                for (int kx = 0; kx < s->kw; kx++) {
                    const seg_columns *r = &cols[kx];
                    const float *restrict p = in + r->x0;
                    if (is_max)
                        for (int x = r->first; x < r->stop; x++)
                            out[x] = nan_max(out[x], p[(long)(x - r->first) * s->sw]);
                    else
                        for (int x = r->first; x < r->stop; x++) out[x] += p[(long)(x - r->first) * s->sw];
                }
            }
            if (!is_max) {
                for (int x = 0; x < width; x++) out[x] *= s->aux[x];
                for (int x = 0; x < width; x++) out[x] *= row_scale;
            }
            activate(out, width, &s->act);
        }
    }
}

/* Activation alone, Add (the step's input plus its skip tensor, row for row), channels [c0, c1). */
static void aligned_rows(const seg_job *job, int c0, int c1)
{
    const er_seg_step *s = job->s;
    int width = s->out_width;
    long scs = seg_channel_stride(job->src), dcs = seg_channel_stride(job->dst);
    long kcs = job->skip ? seg_channel_stride(job->skip) : 0;
    for (int o = job->lo; o < job->hi; o++) {
        const float *in = seg_row(job->src, o);
        const float *skip = job->skip ? seg_row(job->skip, o) : NULL;
        float *out_row = (float *)seg_row(job->dst, o);
        for (int c = c0; c < c1; c++) {
            float *restrict out = out_row + c * dcs;
            if (!in || (job->skip && !skip)) { /* a row never stored (not for a valid schedule) */
                memset(out, 0, (size_t)width * sizeof(float));
                continue;
            }
            const float *restrict a = in + c * scs;
            if (skip) {
                const float *restrict b = skip + c * kcs;
                for (int x = 0; x < width; x++) out[x] = a[x] + b[x];
            } else {
                memcpy(out, a, (size_t)width * sizeof(float));
            }
            activate(out, width, &s->act);
        }
    }
}

/* GlobalAveragePool, last step: adds the sums of input rows [lo, hi) into out[c] (the caller
 * zeroes out first and scales it once at the end). */
static void gap_rows(const seg_job *job, int c0, int c1)
{
    int width = job->src->width;
    long scs = seg_channel_stride(job->src);
    float *out = (float *)job->dst->base;
    for (int o = job->lo; o < job->hi; o++) {
        const float *in = seg_row(job->src, o);
        if (!in) continue; /* a row never stored (not for a valid schedule) */
        for (int c = c0; c < c1; c++) {
            const float *p = in + c * scs;
            float sum = 0.0f;
            for (int x = 0; x < width; x++) sum += p[x];
            out[c] += sum;
        }
    }
}

/* ---------------------------------------------------------------- fused inverted-residual blocks */
/* Hidden rows of the depthwise window of output row o: [*first, *last] (clipped to the hidden rows). */
static void block_window(const er_seg_step *s, int o, int *first, int *last)
{
    int start = o * s->sh - s->pad_top, height = s->block.hidden_height;
    *first = start < 0 ? 0 : start;
    *last = start + s->kh - 1 < height ? start + s->kh - 1 : height - 1;
}

/* The hidden rows output row o computes: those of its window no earlier output row read. */
static void block_new_rows(const er_seg_step *s, int o, int *first, int *last)
{
    int seen = -1, unused;
    block_window(s, o, first, last);
    if (o > 0) block_window(s, o - 1, &unused, &seen);
    if (*first <= seen) *first = seen + 1;
}

/* The accumulator slot (hidden, out_width) of output row o. */
static inline float *block_slot(const er_seg_step *s, int o)
{
    return s->block.state + (long)(o % s->block.state_rows) * s->block.hidden * s->out_width;
}

/* A 1x1 stride-1 unpadded expansion: a GEMM on the input row read in place. */
static int block_direct(const er_seg_step *s, const er_seg_tensor *src)
{
    const er_seg_block *k = &s->block;
    return k->ek == 1 && k->es == 1 && !k->epad_top && !k->epad_left && k->hidden_width == src->width &&
           k->hidden_height == src->height;
}

/* Hidden channels [a, b) of hidden row h (expansion kernel > 1, strided or padded) into
 * hidden[(c - c0) * width]. With at most SEG_MAX_TAPS taps (input channel, ky, kx) whose rows' stride
 * phases fit on the stack (a stem: 3 channels, 3x3, stride 2), each hidden channel is one
 * depthwise_taps row over every tap, its sums in registers; otherwise bias, then tap by tap. */
static void expand_by_taps(const seg_job *job, int h, int c0, int a, int b, float *hidden)
{
    const er_seg_step *s = job->s;
    const er_seg_block *k = &s->block;
    int width = k->hidden_width, in_width = job->src->width, ek = k->ek, es = k->es, cin = job->cin;
    int n = (in_width + es - 1) / es, phase_row = n * es;
    long scs = seg_channel_stride(job->src);
    seg_columns cols[ER_SEG_MAX_KERNEL];
    float phases[SEG_STACK_WIDTH];
    column_ranges(in_width, width, ek, es, 1, k->epad_left, cols);
    if ((long)cin * ek * ek <= SEG_MAX_TAPS && (long)cin * ek * phase_row <= SEG_STACK_WIDTH) {
        const float *p[SEG_MAX_TAPS];
        int first[SEG_MAX_TAPS], stop[SEG_MAX_TAPS], index[SEG_MAX_TAPS], ntaps = 0;
        float w[SEG_MAX_TAPS];
        for (int ci = 0; ci < cin; ci++)
            for (int ky = 0; ky < ek; ky++) {
                const float *row = seg_row(job->src, h * es - k->epad_top + ky);
                if (!row) continue;
                const float *in = row + (long)ci * scs;
                float *ph = phases + ((long)ci * ek + ky) * phase_row;
                if (es > 1) split_phases(in, in_width, es, ph);
                for (int kx = 0; kx < ek; kx++) {
                    const seg_columns *r = &cols[kx];
                    if (r->stop == r->first) continue;
                    p[ntaps] = es > 1 ? ph + (r->x0 % es) * n + r->x0 / es - r->first : in + r->x0 - r->first;
                    first[ntaps] = r->first;
                    stop[ntaps] = r->stop;
                    index[ntaps++] = (ci * ek + ky) * ek + kx;
                }
            }
        for (int c = a; c < b; c++) {
            const float *wc = k->we + (long)c * cin * ek * ek;
            float *out = hidden + (long)(c - c0) * width;
            for (int t = 0; t < ntaps; t++) w[t] = wc[index[t]];
            depthwise_taps(out, width, k->be ? k->be[c] : 0.0f, p, w, first, stop, ntaps, 0);
            activate(out, width, &k->expand_act);
        }
        return;
    }
    for (int c = a; c < b; c++) {
        float *out = hidden + (long)(c - c0) * width, bias = k->be ? k->be[c] : 0.0f;
        for (int x = 0; x < width; x++) out[x] = bias;
    }
    for (int ky = 0; ky < ek; ky++) {
        const float *row = seg_row(job->src, h * es - k->epad_top + ky);
        if (!row) continue;
        for (int ci = 0; ci < cin; ci++) {
            const float *in = row + (long)ci * scs;
            int phased = es > 1 && in_width <= SEG_STACK_WIDTH;
            if (phased) split_phases(in, in_width, es, phases);
            for (int c = a; c < b; c++) {
                float *restrict out = hidden + (long)(c - c0) * width;
                const float *w = k->we + (((long)c * cin + ci) * ek + ky) * ek;
                for (int kx = 0; kx < ek; kx++) {
                    const seg_columns *r = &cols[kx];
                    float wv = w[kx];
                    if (r->stop == r->first) continue;
                    if (phased || es == 1) {
                        const float *restrict q = phased ? phases + (r->x0 % es) * n + r->x0 / es - r->first
                                                         : in + r->x0 - r->first;
                        for (int x = r->first; x < r->stop; x++) out[x] += wv * q[x];
                    } else {
                        const float *restrict q = in + r->x0;
                        for (int x = r->first; x < r->stop; x++) out[x] += wv * q[(long)(x - r->first) * es];
                    }
                }
            }
        }
    }
    for (int c = a; c < b; c++) activate(hidden + (long)(c - c0) * width, width, &k->expand_act);
}

/* Hidden row h, channels [a, b) (channel c at hidden + (c - base) * stride) added into the accumulators
 * of the output rows in [from, to] whose windows hold it: one depthwise kernel row each (the first
 * row of a window starts the accumulator from the bias). The readers, their slots and the taps'
 * columns are worked out once for all the channels. */
static void block_scatter(const er_seg_step *s, int h, const float *hidden, long stride, int base, int a, int b,
                          int from, int to, float *phases)
{
    const er_seg_block *k = &s->block;
    int width = k->hidden_width, kd = s->kh, sd = s->sh, out_width = s->out_width;
    int n = (width + sd - 1) / sd;
    /* readers: o with o * sd - pad_top <= h <= o * sd - pad_top + kd - 1 */
    int top = h + s->pad_top - kd + 1;
    int o0 = top <= 0 ? 0 : (top + sd - 1) / sd, o1 = (h + s->pad_top) / sd;
    if (o0 < from) o0 = from;
    if (o1 > to) o1 = to;
    if (o1 > s->out_height - 1) o1 = s->out_height - 1;
    if (o0 > o1) return;
    int nreaders = o1 - o0 + 1, ky[ER_SEG_MAX_KERNEL], init[ER_SEG_MAX_KERNEL];
    float *slots[ER_SEG_MAX_KERNEL];
    for (int i = 0; i < nreaders; i++) {
        int o = o0 + i, wfirst, wlast;
        block_window(s, o, &wfirst, &wlast);
        ky[i] = h - (o * sd - s->pad_top);
        init[i] = h == wfirst;
        slots[i] = block_slot(s, o);
    }
    seg_columns cols[ER_SEG_MAX_KERNEL];
    const float *p[ER_SEG_MAX_KERNEL];
    float w[ER_SEG_MAX_KERNEL];
    int first[ER_SEG_MAX_KERNEL], stop[ER_SEG_MAX_KERNEL], kxs[ER_SEG_MAX_KERNEL], ntaps = 0;
    long offset[ER_SEG_MAX_KERNEL];
    column_ranges(width, out_width, kd, sd, 1, s->pad_left, cols);
    int phased = sd > 1 && width <= SEG_STACK_WIDTH;
    for (int kx = 0; kx < kd; kx++) {
        const seg_columns *r = &cols[kx];
        if (r->stop == r->first) continue;
        offset[ntaps] = phased ? (long)(r->x0 % sd) * n + r->x0 / sd - r->first : r->x0 - r->first;
        first[ntaps] = r->first;
        stop[ntaps] = r->stop;
        kxs[ntaps++] = kx;
    }
    for (int c = a; c < b; c++) {
        const float *hid = hidden + (long)(c - base) * stride;
        float bias = k->bd ? k->bd[c] : 0.0f;
        if (!phased && sd > 1) { /* rows wider than the stack: strided loops */
            for (int i = 0; i < nreaders; i++) {
                float *out = slots[i] + (long)c * out_width;
                const float *wrow = k->wd + ((long)c * kd + ky[i]) * kd;
                if (init[i])
                    for (int x = 0; x < out_width; x++) out[x] = bias;
                for (int kx = 0; kx < kd; kx++)
                    for (int x = cols[kx].first; x < cols[kx].stop; x++)
                        out[x] += wrow[kx] * hid[cols[kx].x0 + (long)(x - cols[kx].first) * sd];
            }
            continue;
        }
        const float *row = hid;
        if (phased) {
            split_phases(hid, width, sd, phases);
            row = phases;
        }
        for (int t = 0; t < ntaps; t++) p[t] = row + offset[t];
        for (int i = 0; i < nreaders; i++) {
            const float *wrow = k->wd + ((long)c * kd + ky[i]) * kd;
            for (int t = 0; t < ntaps; t++) w[t] = wrow[kxs[t]];
            depthwise_taps(slots[i] + (long)c * out_width, out_width, bias, p, w, first, stop, ntaps, !init[i]);
        }
    }
}

/* Channel c of hidden row h: in the slice scratch, or (no expansion) the input row itself. */
static inline const float *block_hidden(const seg_job *job, int h, int c)
{
    if (job->s->block.ek == 0) {
        const float *row = seg_row(job->src, h);
        return row ? row + (long)c * seg_channel_stride(job->src) : NULL;
    }
    return job->s->scratch + (long)(c - job->slice) * job->s->block.hidden_width;
}

/* Floats between two channels of a hidden row (block_hidden). */
static inline long block_hidden_stride(const seg_job *job)
{
    return job->s->block.ek == 0 ? seg_channel_stride(job->src) : job->s->block.hidden_width;
}

/* Channels [a, b) of the slice at job->slice of hidden row h, computed into the slice scratch. */
static void block_expand(const seg_job *job, int h, int a, int b)
{
    const er_seg_step *s = job->s;
    const er_seg_block *k = &s->block;
    int width = k->hidden_width, c0 = job->slice;
    if (k->ek == 0) return;
    if (block_direct(s, job->src)) {
        const float *in = seg_row(job->src, h);
        if (in)
            er_gemm_tn_narrow(b - a, width, job->cin, k->we + a, k->hidden, in, seg_channel_stride(job->src),
                       s->scratch + (long)(a - c0) * width, width, 0, k->be ? k->be + a : NULL, &k->expand_act);
        return;
    }
    expand_by_taps(job, h, c0, a, b, s->scratch);
}

/* Phase 1 of a slice, its channels [a, b) (offsets in the slice at job->slice): every new hidden row
 * of output row job->row expanded and scattered, except the last one's scatter into later output
 * rows (it waits for phase 3: their slots may be job->row's), then job->row's accumulators of these
 * channels activated (its window is complete). */
static void block_slice(const seg_job *job, int a, int b)
{
    const er_seg_step *s = job->s;
    int first, last, o = job->row;
    float phases[SEG_STACK_WIDTH];
    a += job->slice;
    b += job->slice;
    block_new_rows(s, o, &first, &last);
    for (int h = first; h <= last; h++) {
        block_expand(job, h, a, b);
        const float *hidden = block_hidden(job, h, a);
        if (hidden) block_scatter(s, h, hidden, block_hidden_stride(job), a, a, b, 0, h == last ? o : s->out_height, phases);
    }
    float *slot = block_slot(s, o);
    for (int c = a; c < b; c++) activate(slot + (long)c * s->out_width, s->out_width, &s->block.dw_act);
}

/* Phase 3 of a slice, channels [a, b): the last new hidden row (still in the slice scratch) scattered
 * into the output rows after job->row. */
static void block_slice_tail(const seg_job *job, int a, int b)
{
    const er_seg_step *s = job->s;
    int first, last, o = job->row;
    float phases[SEG_STACK_WIDTH];
    a += job->slice;
    b += job->slice;
    block_new_rows(s, o, &first, &last);
    if (first > last) return;
    const float *hidden = block_hidden(job, last, a);
    if (hidden) block_scatter(s, last, hidden, block_hidden_stride(job), a, a, b, o + 1, s->out_height, phases);
}

/* Phase 2 of a slice, output channels [m0, m1) of output row job->row: the slice's part of the
 * projection added into the row (the first slice starts it from the bias, and from the residual input
 * when no activation follows; the last applies the activation, then adds the residual input). */
static void block_project(const seg_job *job, int m0, int m1)
{
    const er_seg_step *s = job->s;
    const er_seg_block *k = &s->block;
    int width = s->out_width, o = job->row, c0 = job->slice, n = job->cin_slice;
    int first_slice = c0 == 0, last_slice = c0 + n >= k->hidden, act_after = s->act.kind != ER_ACT_NONE;
    long dcs = seg_channel_stride(job->dst), kcs = job->skip ? seg_channel_stride(job->skip) : 0;
    float *out = (float *)seg_row(job->dst, o);
    const float *skip = job->skip ? seg_row(job->skip, o) : NULL;
    const float *slot = block_slot(s, o) + (long)c0 * width, *weights = s->weights + (long)c0 * s->out_channels;
    int accumulate = !first_slice;
    if (first_slice && skip && !act_after) { /* residual + bias first, then the products added in */
        for (int m = m0; m < m1; m++) {
            float *restrict dst = out + m * dcs, bias = s->bias ? s->bias[m] : 0.0f;
            const float *restrict add = skip + m * kcs;
            for (int x = 0; x < width; x++) dst[x] = add[x] + bias;
        }
        accumulate = 1;
    }
    er_gemm_tn_narrow(m1 - m0, width, n, weights + m0, s->out_channels, slot, width, out + m0 * dcs, dcs, accumulate,
               s->bias ? s->bias + m0 : NULL, last_slice ? &s->act : NULL);
    if (last_slice && skip && act_after)
        for (int m = m0; m < m1; m++) {
            float *restrict dst = out + m * dcs;
            const float *restrict add = skip + m * kcs;
            for (int x = 0; x < width; x++) dst[x] += add[x];
        }
}

typedef void (*seg_range_fn)(const seg_job *job, int a, int b);

typedef struct {
    const seg_job *job;
    seg_range_fn fn;
    int n;
} seg_phase;

static void phase_item(void *ctx, int k)
{
    const seg_phase *phase = (const seg_phase *)ctx;
    int a, b;
    er_share(phase->n, phase->job->parts, k, &a, &b);
    if (a < b) phase->fn(phase->job, a, b);
}

/* fn over [0, n) in job->parts contiguous ranges on the team. */
static void run_phase(er_team *team, const seg_job *job, seg_range_fn fn, int n)
{
    seg_phase phase = {.job = job, .fn = fn, .n = n};
    er_team_run(team, phase_item, &phase, job->parts);
}

/* A block's output rows one by one, and for each its slices of hidden channels in order: expansion
 * and scatter, projection, the deferred scatter (phases 1 and 3 split by channels, 2 by output
 * channels: each value is computed by one thread in the same order whatever the split). */
static void run_block(er_team *team, int threads, const seg_job *call_job)
{
    const er_seg_step *s = call_job->s;
    const er_seg_block *k = &s->block;
    seg_job slice = *call_job;
    int hidden = k->hidden, chunk = k->ek ? k->chunk : hidden; /* no expansion: the input is the hidden row */
    double per_channel = (double)s->kh * s->kw * s->out_width * (s->sh == 1 ? s->kh : 1);
    if (k->ek) per_channel += (double)call_job->cin * k->ek * k->ek * k->hidden_width;
    for (int o = call_job->lo; o < call_job->hi; o++) {
        slice.row = o;
        for (int c0 = 0; c0 < hidden; c0 += chunk) {
            int n = hidden - c0 < chunk ? hidden - c0 : chunk;
            seg_job project = slice;
            slice.slice = project.slice = c0;
            slice.cin_slice = project.cin_slice = n;
            slice.parts = er_worth_parts(per_channel * n, threads, n);
            project.parts = er_worth_parts((double)s->out_channels * n * s->out_width, threads, s->out_channels);
            run_phase(team, &slice, block_slice, n);
            run_phase(team, &project, block_project, s->out_channels);
            run_phase(team, &slice, block_slice_tail, n);
        }
    }
}

static void run_call(er_team *team, int threads, const er_seg_tensor *tensors, const er_seg_step *s,
                     const er_seg_call *call)
{
    seg_job job = {.s = s, .src = &tensors[s->src], .skip = s->skip >= 0 ? &tensors[s->skip] : NULL,
                   .dst = &tensors[s->dst], .lo = call->lo, .hi = call->hi, .row = call->lo};
    job.cin = job.src->channels;
    int kind = s->kind, channels = s->out_channels, rows = call->hi - call->lo;
    double row_work = (double)s->out_width * s->kh * s->kw;
    if (kind == ER_SEG_POINTWISE || kind == ER_SEG_IM2COL) row_work *= (double)job.cin / s->group;
    if (kind == ER_SEG_GAP) row_work = job.src->width;
    job.parts = er_worth_parts(row_work * channels * rows, threads, channels);
    if (kind == ER_SEG_POINTWISE) {
        run_phase(team, &job, pointwise_rows, channels);
    } else if (kind == ER_SEG_DEPTHWISE) {
        run_phase(team, &job, depthwise_rows, channels);
    } else if (kind == ER_SEG_IM2COL) {
        seg_job build = job;
        build.parts = er_worth_parts((double)job.cin * s->kh * s->kw * s->out_width, threads, job.cin);
        job.parts = er_worth_parts(row_work * channels, threads, channels);
        for (int o = call->lo; o < call->hi; o++) {
            build.row = job.row = o;
            run_phase(team, &build, im2col_row, job.cin);
            run_phase(team, &job, im2col_gemm, channels);
        }
    } else if (kind == ER_SEG_MAXPOOL || kind == ER_SEG_AVGPOOL) {
        run_phase(team, &job, pool_rows, channels);
    } else if (kind == ER_SEG_ACTIVATION || kind == ER_SEG_ADD) {
        run_phase(team, &job, aligned_rows, channels);
    } else if (kind == ER_SEG_GAP) {
        run_phase(team, &job, gap_rows, channels);
    } else if (kind == ER_SEG_BLOCK) {
        run_block(team, threads, &job);
    }
}

/* ---------------------------------------------------------------- checks and the run */
static int same_shape(const er_seg_tensor *t, int c, int h, int w)
{
    return t->channels == c && t->height == h && t->width == w;
}

/* Is tensor index i usable (in range, present)? */
static int tensor_ok(const er_seg_tensor *tensors, int ntensors, int i)
{
    return i >= 0 && i < ntensors && tensors[i].base != NULL;
}

static const char *check_block(const er_seg_tensor *tensors, const er_seg_step *s)
{
    const er_seg_tensor *src = &tensors[s->src];
    const er_seg_block *k = &s->block;
    if (s->kh != s->kw || s->sh != s->sw || s->dh != 1 || s->dw != 1 || s->pad_top >= s->kh || s->pad_left >= s->kw)
        return "a block's depthwise must be square, undilated, with pads smaller than its kernel";
    if (k->hidden < 1 || k->chunk < 1 || k->chunk > k->hidden || k->state_rows < 1 || k->hidden_height < 1 ||
        k->hidden_width < 1)
        return "a block needs hidden channels, chunk in 1..hidden, accumulator rows and hidden rows";
    if (!s->weights || !k->wd || !k->state || k->state_floats < (long)k->state_rows * k->hidden * s->out_width)
        return "a block needs its projection and depthwise weights and state_rows accumulator rows";
    if (s->skip >= 0 && !same_shape(&tensors[s->skip], s->out_channels, s->out_height, s->out_width))
        return "a block's residual input must have its output's shape";
    if (k->ek == 0)
        return same_shape(src, k->hidden, k->hidden_height, k->hidden_width)
                   ? NULL
                   : "a block without expansion must have its input's shape as hidden shape";
    if (k->ek < 1 || k->ek > ER_SEG_MAX_KERNEL || k->es < 1 || k->epad_top < 0 || k->epad_left < 0 ||
        k->epad_top >= k->ek || k->epad_left >= k->ek || !k->we)
        return "a block's expansion needs weights, a kernel in 1..ER_SEG_MAX_KERNEL, stride >= 1 and pads "
               "smaller than its kernel";
    if (!s->scratch || s->scratch_floats < (long)k->chunk * k->hidden_width)
        return "a block with expansion needs one slice of a hidden row of scratch";
    return NULL;
}

static const char *check_step(const er_seg_tensor *tensors, int ntensors, const er_seg_step *s)
{
    if (s->kind < ER_SEG_POINTWISE || s->kind > ER_SEG_BLOCK) return "unknown step kind";
    if (!tensor_ok(tensors, ntensors, s->src) || !tensor_ok(tensors, ntensors, s->dst))
        return "a step's input or output tensor is missing";
    if (s->kind == ER_SEG_ADD ? s->skip < 0 : s->kind != ER_SEG_BLOCK && s->skip >= 0)
        return "only an Add has (and needs) a skip tensor, and a residual block";
    if (s->skip >= 0 && !tensor_ok(tensors, ntensors, s->skip)) return "an Add's skip tensor is missing";
    if (s->kh < 1 || s->kw < 1 || s->kh > ER_SEG_MAX_KERNEL || s->kw > ER_SEG_MAX_KERNEL || s->sh < 1 ||
        s->sw < 1 || s->dh < 1 || s->dw < 1 || s->pad_top < 0 || s->pad_left < 0)
        return "kernel extents must be in 1..ER_SEG_MAX_KERNEL, strides and dilations >= 1, pads >= 0";
    const er_seg_tensor *src = &tensors[s->src], *dst = &tensors[s->dst];
    if (s->out_channels < 1 || s->out_height < 1 || s->out_width < 1) return "empty step output";
    if (s->kind == ER_SEG_GAP) {
        if (!same_shape(dst, src->channels, 1, 1) || s->out_channels != src->channels || dst->ring != 0)
            return "GlobalAveragePool must write a whole (C, 1, 1) output";
        return NULL;
    }
    if (!same_shape(dst, s->out_channels, s->out_height, s->out_width))
        return "a step's output tensor does not have the step's output shape";
    if (s->kind == ER_SEG_BLOCK) return check_block(tensors, s);
    if (s->kind == ER_SEG_ACTIVATION || s->kind == ER_SEG_ADD) {
        if (!same_shape(src, s->out_channels, s->out_height, s->out_width) ||
            (s->skip >= 0 && !same_shape(&tensors[s->skip], s->out_channels, s->out_height, s->out_width)))
            return "an Activation or Add must keep its input's shape";
        return NULL;
    }
    if (s->kind == ER_SEG_MAXPOOL || s->kind == ER_SEG_AVGPOOL) {
        if (src->channels != s->out_channels) return "pooling must keep the channels";
        if (s->kind == ER_SEG_AVGPOOL && !s->aux) return "average pooling needs its column scales";
        return NULL;
    }
    if (!s->weights) return "a convolution needs weights";
    if (s->group < 1 || src->channels % s->group || s->out_channels % s->group)
        return "convolution channels do not divide into the groups";
    if (s->kind == ER_SEG_POINTWISE &&
        (s->kh != 1 || s->kw != 1 || s->sw != 1 || s->pad_left || s->pad_top || s->out_width != src->width))
        return "a pointwise step must be 1x1 with horizontal stride 1 and no pads";
    if (s->kind == ER_SEG_DEPTHWISE && s->group != src->channels)
        return "a depthwise step needs one group per input channel";
    if (s->kind == ER_SEG_IM2COL &&
        (!s->scratch || s->scratch_floats < (long)src->channels * s->kh * s->kw * s->out_width))
        return "an im2col step needs one output row's im2col of scratch";
    return NULL;
}

const char *er_seg_check(const er_seg_tensor *tensors, int ntensors, const er_seg_step *steps, int nsteps,
                         const er_seg_call *calls, int ncalls)
{
    for (int i = 0; i < ntensors; i++) {
        const er_seg_tensor *t = &tensors[i];
        if (t->base && (t->channels < 1 || t->height < 1 || t->width < 1 || t->ring < -1))
            return "tensor sizes must be positive";
    }
    for (int i = 0; i < nsteps; i++) {
        if (steps[i].kind == 0) continue; /* not run here */
        const char *problem = check_step(tensors, ntensors, &steps[i]);
        if (problem) return problem;
    }
    for (int i = 0; i < ncalls; i++) {
        const er_seg_call *c = &calls[i];
        if (c->step < 0 || c->step >= nsteps) return "a call names a step that does not exist";
        const er_seg_step *s = &steps[c->step];
        if (s->kind == 0) return "a call names a step that does not run here";
        if (tensors[s->dst].ring < 0) return "a call writes rows into a ring that holds none";
        int rows = s->kind == ER_SEG_GAP ? tensors[s->src].height : s->out_height;
        if (c->lo < 0 || c->lo >= c->hi || c->hi > rows) return "a call's rows are outside its step's rows";
    }
    return NULL;
}

const char *er_seg_run(const er_seg_tensor *tensors, const er_seg_step *steps, const er_seg_call *calls,
                       int ncalls, int threads)
{
    er_team *team = NULL;
    const char *error = er_team_begin(threads, &team);
    if (error) return error;
    for (int i = 0; i < ncalls; i++) run_call(team, threads, tensors, &steps[calls[i].step], &calls[i]);
    er_team_end(team);
    return NULL;
}

/* ---------------------------------------------------------------- binding the tables */
static int fits_int(int64_t v) { return v >= -1 && v <= 0x7fffffff; }

/* a * b for non-negative a and b, INT64_MAX when that overflows (a bad table then fails its bounds check
 * instead of overflowing) */
static int64_t product(int64_t a, int64_t b)
{
    return b != 0 && a > INT64_MAX / b ? INT64_MAX : a * b;
}

/* params[offset .. offset + count) when inside params (offset -1: NULL if optional), else *bad = 1. */
static const float *param_span(const float *params, long nparams, int64_t offset, int64_t count, int optional,
                               int *bad)
{
    if (offset == -1 && optional) return NULL;
    if (offset < 0 || count < 0 || offset > nparams || count > nparams - offset) {
        *bad = 1;
        return NULL;
    }
    return params + offset;
}

/* Weight floats a step reads, from its kind and input channels. */
static int64_t step_weight_floats(const int64_t *r, int in_channels)
{
    int64_t m = r[4] > 0 ? r[4] : 0, kk = product(r[7] > 0 ? r[7] : 0, r[8] > 0 ? r[8] : 0);
    int64_t group = r[15] > 0 ? r[15] : 1;
    if (r[0] == ER_SEG_POINTWISE || r[0] == ER_SEG_IM2COL) return product(product(in_channels / group, kk), m);
    if (r[0] == ER_SEG_DEPTHWISE) return product(m, kk);
    if (r[0] == ER_SEG_BLOCK) return product(r[24] > 0 ? r[24] : 0, m);
    return 0;
}

/* An activation from its kind and params offset (-1: none). */
static er_act step_act(const float *params, long nparams, int64_t kind, int64_t offset, int *bad)
{
    const float *ap = param_span(params, nparams, offset, 2, 1, bad);
    if (kind < 0 || kind >= ER_ACT_COUNT) *bad = 1;
    return (er_act){.kind = (int)kind, .a = ap ? ap[0] : 0.0f, .b = ap ? ap[1] : 0.0f};
}

/* Arena floats [offset, offset + count), or *bad = 1. */
static float *arena_span(float *arena, long arena_floats, int64_t offset, int64_t count, int *bad)
{
    if (offset < 0 || count < 0 || offset > arena_floats || count > arena_floats - offset) {
        *bad = 1;
        return NULL;
    }
    return arena + offset;
}

/* The block fields (24..42) of a step row: sizes, weights, activations, accumulator state. */
static void bind_block(const int64_t *r, er_seg_step *s, int in_channels, const float *params, long nparams,
                       float *arena, long arena_floats, int *bad)
{
    er_seg_block *k = &s->block;
    for (int j = 24; j < 33; j++)
        if (!fits_int(r[j])) *bad = 1;
    if (*bad) return;
    int *fields[9] = {&k->hidden, &k->chunk, &k->state_rows, &k->hidden_height, &k->hidden_width,
                      &k->ek, &k->es, &k->epad_top, &k->epad_left};
    for (int j = 0; j < 9; j++) *fields[j] = (int)r[24 + j];
    int64_t hidden = k->hidden, kd = product(s->kh > 0 ? s->kh : 0, s->kw > 0 ? s->kw : 0), ek = k->ek;
    if (hidden < 1 || ek < 0) {
        *bad = 1;
        return;
    }
    k->we = ek ? param_span(params, nparams, r[33], product(product(hidden, in_channels), product(ek, ek)), 0, bad)
               : NULL;
    k->be = param_span(params, nparams, r[34], hidden, 1, bad);
    k->wd = param_span(params, nparams, r[35], product(hidden, kd), 0, bad);
    k->bd = param_span(params, nparams, r[36], hidden, 1, bad);
    k->expand_act = step_act(params, nparams, r[37], r[38], bad);
    k->dw_act = step_act(params, nparams, r[39], r[40], bad);
    k->state = arena_span(arena, arena_floats, r[41], r[42], bad);
    k->state_floats = (long)r[42];
}

static const char *bind_tensors(const int64_t *rows, int ntensors, const float *x, long x_floats, float *out,
                                long out_floats, float *arena, long arena_floats, er_seg_tensor *tensors)
{
    int inputs = 0, outputs = 0;
    for (int i = 0; i < ntensors; i++) {
        const int64_t *r = rows + (long)i * ER_SEG_TENSOR_FIELDS;
        er_seg_tensor *t = &tensors[i];
        for (int j = 2; j < 6; j++)
            if (r[j] < 0 || r[j] > 0x7fffffff) return "tensor sizes must be non-negative int32";
        if (r[0] < 0 || r[0] > 3) return "tensor place must be 0..3";
        *t = (er_seg_tensor){.ring = (int)r[2], .channels = (int)r[3], .height = (int)r[4], .width = (int)r[5]};
        if (r[0] == 1 || r[0] == 2) {
            if (r[2] != 0 || product(product(r[3], r[4]), r[5]) != (r[0] == 1 ? x_floats : out_floats))
                return "the segment input and output are whole, of the sizes given";
            t->base = r[0] == 1 ? (float *)x : out;
            inputs += r[0] == 1, outputs += r[0] == 2;
        } else if (r[0] == 3) {
            int bad = 0;
            t->base = arena_span(arena, arena_floats, r[1], product(product(r[2], r[3]), r[5]), &bad);
            if (bad) return "a ring is not inside the arena";
            if (r[2] == 0) t->ring = -1; /* a ring of no rows: every row reads as padding */
        }
    }
    return inputs && outputs ? NULL : "a segment input and output are needed";
}

const char *er_seg_bind(const int64_t *tensor_rows, int ntensors, const int64_t *step_rows, int nsteps,
                        const float *x, long x_floats, float *out, long out_floats, float *arena, long arena_floats,
                        const float *params, long nparams, er_seg_tensor *tensors, er_seg_step *steps)
{
    const char *problem = bind_tensors(tensor_rows, ntensors, x, x_floats, out, out_floats, arena, arena_floats,
                                       tensors);
    if (problem) return problem;
    for (int i = 0; i < nsteps; i++) {
        const int64_t *r = step_rows + (long)i * ER_SEG_STEP_FIELDS;
        er_seg_step *s = &steps[i];
        memset(s, 0, sizeof *s);
        for (int j = 0; j < 17; j++)
            if (!fits_int(r[j])) return "step fields must be int32";
        int *fields[17] = {&s->kind, &s->src, &s->skip, &s->dst, &s->out_channels, &s->out_height, &s->out_width,
                           &s->kh, &s->kw, &s->sh, &s->sw, &s->dh, &s->dw, &s->pad_top, &s->pad_left, &s->group,
                           &s->include_pad};
        for (int j = 0; j < 17; j++) *fields[j] = (int)r[j];
        if (s->kind == 0) continue; /* a step that does not run here (numpy, or fused into another) */
        if (s->src < 0 || s->src >= ntensors || !tensors[s->src].base) return "a step's input tensor is missing";
        int bad = 0, in_channels = tensors[s->src].channels;
        int64_t weight_floats = step_weight_floats(r, in_channels);
        s->weights = weight_floats ? param_span(params, nparams, r[17], weight_floats, 0, &bad) : NULL;
        s->bias = param_span(params, nparams, r[18], r[4], 1, &bad);
        s->aux = param_span(params, nparams, r[19], r[6], 1, &bad);
        if (r[20] != -1) {
            s->scratch = arena_span(arena, arena_floats, r[20], r[21], &bad);
            s->scratch_floats = (long)r[21];
        }
        s->act = step_act(params, nparams, r[22], r[23], &bad);
        if (s->kind == ER_SEG_BLOCK) bind_block(r, s, in_channels, params, nparams, arena, arena_floats, &bad);
        if (bad) return "a step's weights, bias, scales, scratch, state or activation are out of bounds";
    }
    return NULL;
}
