/* Dense and grouped 2-D convolution without a whole im2col matrix (edgerun/kernels/native_steps.py).
 *
 * Two paths over the same packed weights and the same scratch size (er_conv_scratch_floats): every conv but
 * 1x1 runs on "shifted rows" when its copy fits that scratch (below: the band's input rows copied once per
 * block of channels, split by stride, each tap a shifted view, no gather per tap; the same bits as the
 * banded im2col); the others (1x1, or copies too large) on the banded im2col described here.
 *
 * The output is made band by band: for `band_rows` output rows at a time, one slab at a time (the taps
 * of `slab_groups` groups, at most CKC taps of each), the input taps of the band's pixels are gathered ("packed") into the
 * `cols` scratch, already in the layout the register-blocked GEMM reads (per group, per tile of CNR
 * pixels: kc x CNR floats contiguous, zero past the band's last pixel and where a tap falls in the
 * pads), then one GEMM over the slab's groups accumulates it into the band's rows of their output
 * channels. The scratch is bounded by the band (slab_groups * min(CKC, taps per group) * the band's
 * pixels rounded up to CNR), never by the whole output.
 *
 * Weights are packed once (er_conv_pack): per group, panels of CMR output channels, k-major.
 * Optional fused input `sum` (a residual): out = act(conv + bias + sum), the sum read when a tile
 * starts, so out may follow it tile by tile.
 *
 * Threads: per slab of a band, the pixel tiles are shared out for the packing, then the (group, panel)
 * units for the GEMM; every output element is computed by one thread in the same order whatever the
 * thread count (same bits). Nothing here allocates memory. */
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

#define CKC 256 /* taps per k-block: a CKC x CNR tile of cols stays in L1 */

#if defined(__GNUC__)
#define CMR 8
#define CNR (2 * ER_VL)

static void conv_tile(int kc, const float *restrict a, const float *restrict b, long ldb, float *c, long ldc,
                      int rows, int cols, int first, int last, const float *bias, const float *sum, const er_act *act)
{
    if (rows == CMR && cols == CNR)   /* constant sizes: no edge handling in the common case */
        er_gemm_tile(CMR, kc, a, b, ldb, NULL, c, ldc, CMR, CNR, first, last, bias, sum, act);
    else
        er_gemm_tile(CMR, kc, a, b, ldb, NULL, c, ldc, rows, cols, first, last, bias, sum, act);
}

/* Exactly the kinds er_activatev applies in the tile: the others run over the band afterwards. */
static int activation_in_tiles(const er_act *act)
{
    return act->kind == ER_ACT_NONE || er_act_in_registers(act);
}

#else /* portable scalar fallback */
#define CMR 4
#define CNR 4

static void conv_tile(int kc, const float *a, const float *b, long ldb, float *c, long ldc, int rows, int cols,
                      int first, int last, const float *bias, const float *sum, const er_act *act)
{
    (void)last;
    (void)act;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float s = first ? (bias ? bias[i] : 0.0f) + (sum ? sum[i * ldc + j] : 0.0f) : c[i * ldc + j];
            for (int k = 0; k < kc; k++) s += a[k * CMR + i] * b[k * ldb + j];
            c[i * ldc + j] = s;
        }
}

static int activation_in_tiles(const er_act *act) { return act->kind == ER_ACT_NONE; }
#endif

/* ---------------------------------------------------------------- geometry and sizes */

static long taps_per_group(const er_conv_geom *g) { return (long)(g->cin / g->group) * g->kh * g->kw; }
static int panels_per_group(const er_conv_geom *g) { return (g->cout / g->group + CMR - 1) / CMR; }
static long tiles_of(long pixels) { return (pixels + CNR - 1) / CNR; }

const char *er_conv_check(const er_conv_geom *g)
{
    if (g->cin < 1 || g->height < 1 || g->width < 1 || g->cout < 1 || g->group < 1 || g->kh < 1 || g->kw < 1 ||
        g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1)
        return "sizes, kernel, strides, dilations and group must be positive";
    for (int i = 0; i < 4; i++)
        if (g->pads[i] < 0) return "pads must not be negative";
    if (g->cin % g->group || g->cout % g->group) return "channels are not divisible by group";
    long ho = ((long)g->height + g->pads[0] + g->pads[2] - (long)g->dh * (g->kh - 1) - 1) / g->sh + 1;
    long wo = ((long)g->width + g->pads[1] + g->pads[3] - (long)g->dw * (g->kw - 1) - 1) / g->sw + 1;
    if (ho < 1 || wo < 1 || ho != g->out_height || wo != g->out_width)
        return "the output size does not follow from the input, kernel, strides, dilations and pads";
    if (g->band_rows < 1 || g->band_rows > g->out_height) return "band_rows must be in 1..output height";
    if (g->slab_groups < 1 || g->slab_groups > g->group) return "slab_groups must be in 1..group";
    if (taps_per_group(g) * g->group > (1L << 30) || (long)g->out_height * g->out_width > (1L << 30))
        return "the convolution is too large";
    return NULL;
}

long er_conv_packed_floats(const er_conv_geom *g)
{
    return (long)g->group * panels_per_group(g) * CMR * taps_per_group(g);
}

static long block_taps(const er_conv_geom *g) { return taps_per_group(g) < CKC ? taps_per_group(g) : CKC; }

long er_conv_scratch_floats(const er_conv_geom *g)
{
    return (long)g->slab_groups * block_taps(g) * tiles_of((long)g->band_rows * g->out_width) * CNR;
}

int er_conv_tile_columns(void) { return CNR; }

/* packed[g][p][k][i] = w[g * og + p * CMR + i][k] (rows past og zero); w is (cout, taps per group). */
void er_conv_pack(const er_conv_geom *g, const float *w, float *packed)
{
    long K = taps_per_group(g);
    int og = g->cout / g->group, panels = panels_per_group(g);
    for (int grp = 0; grp < g->group; grp++)
        for (int p = 0; p < panels; p++)
            for (long k = 0; k < K; k++)
                for (int i = 0; i < CMR; i++) {
                    int m = p * CMR + i;
                    packed[(((long)grp * panels + p) * K + k) * CMR + i] =
                        m < og ? w[((long)grp * og + m) * K + k] : 0.0f;
                }
}

/* ---------------------------------------------------------------- one band */

typedef struct {
    const er_conv_geom *g;
    const float *packed, *x, *bias, *sum;
    float *out, *cols;
    const er_act *act;
    int o0, pixels, tiles, parts;
    int direct;   /* a 1x1, stride-1, unpadded conv: full tiles read x in place, only a partial one is packed */
    int g0, g1;   /* the slab: groups [g0, g1) ... */
    long k0, kc;  /* ... and taps [k0, k0 + kc) of each */
} conv_band;

/* n values (src[0], src[step], ...; zeros when src is NULL) to pixels p.. of one tap's row of cols, whose
 * tiles lie tile_stride floats apart. */
static inline void put_run(float *row, long tile_stride, long p, int n, const float *src, int step)
{
    while (n > 0) {
        long t = p / CNR;
        int q = (int)(p % CNR), m = CNR - q < n ? CNR - q : n;
        float *restrict d = row + t * tile_stride + q;
        /* plain loops, not memcpy / memset: the runs are short, a call costs more than the copy */
        if (!src) {
            for (int e = 0; e < m; e++) d[e] = 0.0f;
        } else if (step == 1) {
            const float *restrict from = src;
            for (int e = 0; e < m; e++) d[e] = from[e];
            src += m;
        } else {
            for (int e = 0; e < m; e++) d[e] = src[(long)e * step];
            src += (long)m * step;
        }
        p += m;
        n -= m;
    }
}

/* Output columns [ox0, ox1) of one output row for one tap (src: the tap's input row, NULL in the pads;
 * columns [lo, hi) land inside it at src[ox * sw + shift]) to pixels p.. of the tap's row of cols. */
static inline void put_row(float *row, long tile_stride, long p, int ox0, int ox1, const float *src, int lo, int hi,
                           int sw, int shift)
{
    int a = ox0 > lo ? ox0 : lo, b = ox1 < hi ? ox1 : hi;
    if (!src || a >= b) {
        put_run(row, tile_stride, p, ox1 - ox0, NULL, 0);
        return;
    }
    put_run(row, tile_stride, p, a - ox0, NULL, 0);
    put_run(row, tile_stride, p + (a - ox0), b - a, src + (long)a * sw + shift, sw);
    put_run(row, tile_stride, p + (b - ox0), ox1 - b, NULL, 0);
}

/* The slab's taps of pixels [p0, p1) of the band (multiples of CNR, p1 up to the padded end) into cols. */
static void pack_pixels(const conv_band *job, long p0, long p1)
{
    const er_conv_geom *g = job->g;
    long tiles = job->tiles, k0 = job->k0, kc = job->kc, tile_stride = kc * CNR;
    int cg = g->cin / g->group, wo = g->out_width, taps = g->kh * g->kw;
    long real_end = p1 < job->pixels ? p1 : job->pixels;
    int contiguous = job->direct;   /* each tap of a pixel run is one run of its input plane */
    for (int grp = job->g0; grp < job->g1; grp++) {
        float *slab_cols = job->cols + (long)(grp - job->g0) * tiles * tile_stride;
        for (long k = k0; k < k0 + kc; k++) {
            int c = (int)(k / taps), i = (int)(k / g->kw % g->kh), j = (int)(k % g->kw);
            float *row = slab_cols + (k - k0) * CNR;
            const float *plane = job->x + ((long)grp * cg + c) * g->height * g->width;
            if (contiguous) {
                put_run(row, tile_stride, p0, (int)(real_end - p0), plane + (long)job->o0 * wo + p0, 1);
            } else {
                int shift = j * g->dw - g->pads[1];   /* output columns whose tap is inside: [lo, hi) */
                int lo = shift >= 0 ? 0 : (-shift + g->sw - 1) / g->sw;
                int hi = g->width - 1 - shift < 0 ? 0 : (g->width - 1 - shift) / g->sw + 1;
                if (hi > wo) hi = wo;
                if (lo > hi) lo = hi;
                for (long p = p0; p < real_end;) {
                    int r = (int)(p / wo), ox0 = (int)(p % wo);
                    int ox1 = (long)(r + 1) * wo <= real_end ? wo : (int)(real_end - (long)r * wo);
                    int iy = (job->o0 + r) * g->sh - g->pads[0] + i * g->dh;
                    const float *src = iy < 0 || iy >= g->height ? NULL : plane + (long)iy * g->width;
                    put_row(row, tile_stride, p, ox0, ox1, src, lo, hi, g->sw, shift);
                    p += ox1 - ox0;
                }
            }
            if (real_end < p1) put_run(row, tile_stride, real_end, (int)(p1 - real_end), NULL, 0);
        }
    }
}

static void pack_item(void *ctx, int part)
{
    const conv_band *job = (const conv_band *)ctx;
    int t0, t1;
    if (job->direct) {   /* only the last tile, when partial: the GEMM reads full tiles from x */
        if (part == 0 && job->pixels % CNR) pack_pixels(job, (long)(job->tiles - 1) * CNR, (long)job->tiles * CNR);
        return;
    }
    er_share(job->tiles, job->parts, part, &t0, &t1);
    if (t0 < t1) pack_pixels(job, (long)t0 * CNR, (long)t1 * CNR);
}

/* The GEMM of the slab's units [u0, u1) (a unit: one panel of one of its groups) over the band. */
static void gemm_units(const conv_band *job, int u0, int u1)
{
    const er_conv_geom *g = job->g;
    long K = taps_per_group(g), tiles = job->tiles, plane = (long)g->out_height * g->out_width;
    long band0 = (long)job->o0 * g->out_width, k0 = job->k0;
    int og = g->cout / g->group, ppg = panels_per_group(g), kc = (int)job->kc;
    int first = k0 == 0, last = k0 + kc == K;
    for (long t = 0; t < tiles; t++) {
        int cols = job->pixels - t * CNR < CNR ? (int)(job->pixels - t * CNR) : CNR;
        for (int u = u0; u < u1; u++) {
            int grp = job->g0 + u / ppg, p = u % ppg, rows = og - p * CMR < CMR ? og - p * CMR : CMR;
            long m0 = (long)grp * og + (long)p * CMR;
            const float *a = job->packed + (((long)grp * ppg + p) * K + k0) * CMR;
            const float *b = job->cols + ((long)(grp - job->g0) * tiles + t) * kc * CNR;
            long ldb = CNR, at = m0 * plane + band0 + t * CNR;
            if (job->direct && cols == CNR) {
                b = job->x + ((long)grp * (g->cin / g->group) + k0) * plane + band0 + t * CNR;
                ldb = plane;
            }
            conv_tile(kc, a, b, ldb, job->out + at, plane, rows, cols, first, last, job->bias ? job->bias + m0 : NULL,
                      job->sum ? job->sum + at : NULL, job->act);
        }
    }
    if (last && !activation_in_tiles(job->act))
        for (int u = u0; u < u1; u++) {
            int grp = job->g0 + u / ppg, p = u % ppg, rows = og - p * CMR < CMR ? og - p * CMR : CMR;
            for (int i = 0; i < rows; i++)
                er_apply_activation(job->out + ((long)grp * og + (long)p * CMR + i) * plane + band0, job->pixels,
                                    job->act);
        }
}

static void gemm_item(void *ctx, int part)
{
    const conv_band *job = (const conv_band *)ctx;
    int u0, u1;
    er_share((job->g1 - job->g0) * panels_per_group(job->g), job->parts, part, &u0, &u1);
    if (u0 < u1) gemm_units(job, u0, u1);
}

/* ---------------------------------------------------------------- shifted rows: no gather per tap
 * A conv is kh * kw accumulating GEMMs over shifted views of its input. Per band and block of input
 * channels, the band's input rows are copied once, padded left and right (rows above and below the
 * input zero), into the scratch, split by stride into phases: input row y of the band goes to row phase
 * y % sh, row y / sh; padded column e to column phase e % sw, column e / sw; a phase row holds wq =
 * ceil(padded width / sw) columns. Output pixel (r, ox) of the band is then "phase pixel" q = r * wq + ox,
 * and tap (c, i, j) of every q reads the copy at q + offs[k] (offs: c's plane, the phase of (i * dh, j * dw),
 * then (i * dh / sh) rows and (j * dw / sw) columns into it): a tile of CNR consecutive q reads one vector
 * pair per tap straight from the copy, whatever the stride. The tiles run over the phase pixels (the
 * columns past wo of each row are computed and dropped), always whole (the copy ends in CNR zeros), into a
 * tile buffer whose valid columns are written to the band's output rows. The sum of the taps is the
 * im2col path's, in the same order: the same bits. */
#if defined(__GNUC__)
#define SHIFT_TAPS 1152 /* taps of a block at most (128 channels of 3x3) */
typedef struct {
    const er_conv_geom *g;
    const float *packed, *x, *bias, *sum;
    float *out, *copy;
    const er_act *act;
    int o0, nrows, rows_ph, wq, tiles, parts;
    int per_row;          /* tiles within output rows (no more of them than across rows) */
    int g0, g1, c0, cb;   /* the slab's groups [g0, g1), their channels [c0, c0 + cb) */
    long block_floats;    /* one group's cb channels of the copy */
    long offs[SHIFT_TAPS];
} shift_band;

static long shift_channel_floats(const er_conv_geom *g, int nrows);

/* Channels of a tap block: as many as SHIFT_TAPS taps hold and the scratch copies for the im2col path's
 * band height (fewer blocks: fewer passes over the partial sums), at least CKC taps' worth. */
static int shift_channel_block(const er_conv_geom *g)
{
    int cg = g->cin / g->group, taps = g->kh * g->kw;
    int least = CKC / taps < cg ? CKC / taps : cg, cb = SHIFT_TAPS / taps < cg ? SHIFT_TAPS / taps : cg;
    long room = er_conv_scratch_floats(g) - CNR, per = (long)g->slab_groups * shift_channel_floats(g, g->band_rows);
    while (cb > least && cb * per > room) cb--;
    return cb;
}

static int shift_phase_width(const er_conv_geom *g)
{
    return (g->width + g->pads[1] + g->pads[3] + g->sw - 1) / g->sw;
}

/* Phase rows of a band of nrows output rows: its input rows, split in sh phases. */
static int shift_phase_rows(const er_conv_geom *g, int nrows)
{
    int rows_in = (nrows - 1) * g->sh + (g->kh - 1) * g->dh + 1;
    return (rows_in + g->sh - 1) / g->sh;
}

/* Floats of one channel of the copy (all its phases). */
static long shift_channel_floats(const er_conv_geom *g, int nrows)
{
    return (long)g->sh * g->sw * shift_phase_rows(g, nrows) * shift_phase_width(g);
}

/* Whether the shifted-rows path runs this conv: not 1x1 (a 1x1 conv gathers each input once anyway), a tap
 * block of whole channels within CKC, and its copy within the scratch the im2col path asks for (the
 * planned sizes stay as they are). */
static int shift_applies(const er_conv_geom *g)
{
    if (g->kh * g->kw > CKC || g->kh * g->kw == 1) return 0;
    long need = (long)g->slab_groups * shift_channel_block(g) * shift_channel_floats(g, g->band_rows) + CNR;
    return need <= er_conv_scratch_floats(g);
}

/* One phase row of the copy: the padded columns ph, ph + sw, ... of input row src (NULL: a pad row). */
static void shift_phase_row(float *restrict dst, const float *restrict src, int wq, int ph, int sw, int left, int w)
{
    int lo = 0, hi = 0;   /* dst[i] = src[ph + i * sw - left] for i in [lo, hi) */
    if (src) {
        lo = left - ph > 0 ? (left - ph + sw - 1) / sw : 0;
        hi = w + left - ph > 0 ? (w + left - ph + sw - 1) / sw : 0;
        if (hi > wq) hi = wq;
        if (lo > hi) lo = hi;
    }
    for (int i = 0; i < lo; i++) dst[i] = 0.0f;
    if (src && sw == 1) {   /* from: the first column read (a pointer inside the row, never before it) */
        const float *from = src + (ph + lo - left);
        for (int i = lo; i < hi; i++) dst[i] = from[i - lo];
    } else if (src) {
        for (int i = lo; i < hi; i++) dst[i] = src[ph + i * sw - left];
    }
    for (int i = hi; i < wq; i++) dst[i] = 0.0f;
}

/* Output rows per band of the shifted-rows path: as many as keep the copy within the scratch the im2col
 * path asks for (its band_rows at least, shift_applies), so that fewer rows of the copy are halo. */
static int shift_band_rows(const er_conv_geom *g)
{
    long room = er_conv_scratch_floats(g) - CNR, per = (long)g->slab_groups * shift_channel_block(g);
    int rows = g->band_rows;
    while (rows < g->out_height && per * shift_channel_floats(g, rows + 1) <= room) rows++;
    return rows;
}

/* The copy of block channels [i0, i1) of the flattened (group, channel) of the slab: every cell written. */
static void shift_copy_item(void *ctx, int part)
{
    const shift_band *job = (const shift_band *)ctx;
    const er_conv_geom *g = job->g;
    int cg = g->cin / g->group, sh = g->sh, sw = g->sw, wq = job->wq;
    int rows_in = (job->nrows - 1) * sh + (g->kh - 1) * g->dh + 1;
    long phase = (long)job->rows_ph * wq;
    int n = (job->g1 - job->g0) * job->cb, i0, i1;
    er_share(n, job->parts, part, &i0, &i1);
    for (int i = i0; i < i1; i++) {
        int grp = job->g0 + i / job->cb, c = job->c0 + i % job->cb;
        const float *plane = job->x + ((long)grp * cg + c) * g->height * g->width;
        float *dst = job->copy + (long)i * phase * sh * sw;
        for (int rp = 0; rp < sh; rp++)
            for (int j = 0; j < job->rows_ph; j++) {
                int y = j * sh + rp, iy = job->o0 * sh + y - g->pads[0];
                const float *src = y < rows_in && iy >= 0 && iy < g->height ? plane + (long)iy * g->width : NULL;
                for (int ph = 0; ph < sw; ph++)
                    shift_phase_row(dst + ((long)rp * sw + ph) * phase + (long)j * wq, src, wq, ph, sw, g->pads[1],
                                    g->width);
            }
    }
}

/* Phase pixels [q0, q0 + CNR) <-> the band's output pixels: each run inside a row's wo valid columns is
 * copied between the tile buffer (rows x CNR) and `band` (the band's first output pixel of channel row 0,
 * channel rows `plane` apart); to_band picks the direction. */
static void shift_move_tile(float *tile, float *band, long plane, int rows, long q0, int wq, int wo, int nrows,
                            int to_band)
{
    for (long q = q0; q < q0 + CNR;) {
        int r = (int)(q / wq), ox = (int)(q % wq);
        if (r >= nrows) break;
        int n = wq - ox < q0 + CNR - q ? wq - ox : (int)(q0 + CNR - q);
        int valid = ox >= wo ? 0 : (wo - ox < n ? wo - ox : n);
        for (int i = 0; i < rows && valid > 0; i++) {
            float *t = tile + i * CNR + (q - q0), *o = band + i * plane + (long)r * wo + ox;
            if (to_band)
                for (int e = 0; e < valid; e++) o[e] = t[e];
            else
                for (int e = 0; e < valid; e++) t[e] = o[e];
        }
        q += n;
    }
}

/* The GEMM of units [u0, u1) (one panel of one of the slab's groups) over the band's tiles: row tiles
 * (per_row: each within one output row, stored in place) or tiles across rows (through a tile buffer). */
static void shift_units(const shift_band *job, int u0, int u1)
{
    const er_conv_geom *g = job->g;
    long K = taps_per_group(g), plane = (long)g->out_height * g->out_width, band0 = (long)job->o0 * g->out_width;
    int og = g->cout / g->group, ppg = panels_per_group(g), taps = g->kh * g->kw, wo = g->out_width;
    long k0 = (long)job->c0 * taps;
    int kc = job->cb * taps, first = k0 == 0, last = k0 + kc == K, row_tiles = (int)tiles_of(wo);
    float tile[CMR * CNR] = {0}, partial[CMR * CNR] = {0};
    for (int u = u0; u < u1; u++) {
        int grp = job->g0 + u / ppg, p = u % ppg, rows = og - p * CMR < CMR ? og - p * CMR : CMR;
        long m0 = (long)grp * og + (long)p * CMR;
        const float *a = job->packed + (((long)grp * ppg + p) * K + k0) * CMR;
        const float *copy = job->copy + (long)(grp - job->g0) * job->block_floats;
        const float *bias = job->bias ? job->bias + m0 : NULL;
        float *band = job->out + m0 * plane + band0;
        const float *sum_band = job->sum && first ? job->sum + m0 * plane + band0 : NULL;
        if (job->per_row) {
            for (int r = 0; r < job->nrows; r++)
                for (int j = 0; j < row_tiles; j++) {
                    long q0 = (long)r * job->wq + (long)j * CNR, at = (long)r * wo + (long)j * CNR;
                    int cols = wo - j * CNR < CNR ? wo - j * CNR : CNR;
                    er_gemm_tile(CMR, kc, a, copy + q0, 0, job->offs, band + at, plane, rows, cols, first, last, bias,
                                 sum_band ? sum_band + at : NULL, job->act);
                }
            continue;
        }
        for (long t = 0; t < job->tiles; t++) {
            long q0 = t * CNR;
            const float *sum = NULL;
            if (!first) {
                shift_move_tile(tile, band, plane, rows, q0, job->wq, wo, job->nrows, 0);
            } else if (sum_band) {
                shift_move_tile(partial, (float *)sum_band, plane, rows, q0, job->wq, wo, job->nrows, 0);
                sum = partial;
            }
            er_gemm_tile(CMR, kc, a, copy + q0, 0, job->offs, tile, CNR, rows, CNR, first, last, bias, sum, job->act);
            shift_move_tile(tile, band, plane, rows, q0, job->wq, wo, job->nrows, 1);
        }
    }
}

static void shift_gemm_item(void *ctx, int part)
{
    const shift_band *job = (const shift_band *)ctx;
    int u0, u1;
    er_share((job->g1 - job->g0) * panels_per_group(job->g), job->parts, part, &u0, &u1);
    if (u0 < u1) shift_units(job, u0, u1);
}

static void shift_activate_item(void *ctx, int part)
{
    const shift_band *job = (const shift_band *)ctx;
    const er_conv_geom *g = job->g;
    long plane = (long)g->out_height * g->out_width;
    int n = (job->g1 - job->g0) * (g->cout / g->group), i0, i1;
    er_share(n, job->parts, part, &i0, &i1);
    for (int i = i0; i < i1; i++)
        er_apply_activation(job->out + ((long)job->g0 * (g->cout / g->group) + i) * plane +
                                (long)job->o0 * g->out_width, (long)job->nrows * g->out_width, job->act);
}

/* offs[k] for the taps of cb channels of the copy (see above). */
static void shift_offsets(const er_conv_geom *g, int cb, long channel, long phase, int wq, long *offs)
{
    int taps = g->kh * g->kw;
    for (int k = 0; k < cb * taps; k++) {
        int c = k / taps, dy = (k / g->kw % g->kh) * g->dh, dx = (k % g->kw) * g->dw;
        offs[k] = c * channel + ((long)(dy % g->sh) * g->sw + dx % g->sw) * phase + (long)(dy / g->sh) * wq +
                  dx / g->sw;
    }
}

static void shift_run(const er_conv_geom *g, const float *packed, const float *x, const float *bias,
                      const float *sum, float *out, float *scratch, const er_act *act, er_team *team, int parts)
{
    int cg = g->cin / g->group, cb = shift_channel_block(g);
    shift_band band = {.g = g, .packed = packed, .x = x, .bias = bias, .sum = sum, .out = out, .act = act,
                       .wq = shift_phase_width(g), .parts = parts, .copy = scratch};
    int band_rows = shift_band_rows(g);
    for (int o0 = 0; o0 < g->out_height; o0 += band_rows) {
        band.o0 = o0;
        band.nrows = g->out_height - o0 < band_rows ? g->out_height - o0 : band_rows;
        band.rows_ph = shift_phase_rows(g, band.nrows);
        band.tiles = (int)tiles_of((long)(band.nrows - 1) * band.wq + g->out_width);
        band.per_row = band.nrows * tiles_of(g->out_width) <= band.tiles;
        long channel = shift_channel_floats(g, band.nrows);
        for (band.g0 = 0; band.g0 < g->group; band.g0 = band.g1) {
            band.g1 = g->group - band.g0 < g->slab_groups ? g->group : band.g0 + g->slab_groups;
            for (band.c0 = 0; band.c0 < cg; band.c0 += cb) {
                band.cb = cg - band.c0 < cb ? cg - band.c0 : cb;
                band.block_floats = band.cb * channel;
                shift_offsets(g, band.cb, channel, (long)band.rows_ph * band.wq, band.wq, band.offs);
                float *tail = scratch + (long)(band.g1 - band.g0) * band.block_floats;
                for (int e = 0; e < CNR; e++) tail[e] = 0.0f;
                er_team_run(team, shift_copy_item, &band, parts);
                er_team_run(team, shift_gemm_item, &band, parts);
            }
            if (!activation_in_tiles(act)) er_team_run(team, shift_activate_item, &band, parts);
        }
    }
}
#endif

const char *er_conv_run(const er_conv_geom *g, const float *packed, const float *x, const float *bias,
                        const float *sum, float *out, float *cols, const er_act *act, int threads)
{
    const char *error = er_conv_check(g);
    if (error) return error;
    double macs = (double)g->cout * taps_per_group(g) * g->out_height * g->out_width;
    int parts = er_worth_parts(macs, threads, g->slab_groups * panels_per_group(g));
    long K = taps_per_group(g);
    int direct = g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->out_width == g->width &&
                 g->out_height == g->height && g->pads[0] == 0 && g->pads[1] == 0;
    er_team *team = NULL;
    error = er_team_begin(parts, &team);
    if (error) return error;
#if defined(__GNUC__)
    if (shift_applies(g)) {
        shift_run(g, packed, x, bias, sum, out, cols, act, team, parts);
        er_team_end(team);
        return NULL;
    }
#endif
    for (int o0 = 0; o0 < g->out_height; o0 += g->band_rows) {
        int rows = g->out_height - o0 < g->band_rows ? g->out_height - o0 : g->band_rows;
        long pixels = (long)rows * g->out_width;
        conv_band job = {.g = g, .packed = packed, .x = x, .bias = bias, .sum = sum, .out = out, .cols = cols,
                         .act = act, .o0 = o0, .pixels = (int)pixels, .tiles = (int)tiles_of(pixels),
                         .parts = parts, .direct = direct};
        for (job.g0 = 0; job.g0 < g->group; job.g0 = job.g1) {
            job.g1 = g->group - job.g0 < g->slab_groups ? g->group : job.g0 + g->slab_groups;
            for (job.k0 = 0; job.k0 < K; job.k0 += CKC) {
                job.kc = K - job.k0 < CKC ? K - job.k0 : CKC;
                er_team_run(team, pack_item, &job, parts);
                er_team_run(team, gemm_item, &job, parts);
            }
        }
    }
    er_team_end(team);
    return NULL;
}

/* ---------------------------------------------------------------- Python bindings */
#ifndef ER_NO_PYTHON

/* geom = (cin, h, w, cout, group, kh, kw, sh, sw, dh, dw, (top, left, bottom, right), ho, wo, band_rows,
 *         slab_groups) */
static int parse_geom(PyObject *spec, er_conv_geom *g)
{
    if (!PyArg_ParseTuple(spec, "iiiiiiiiiii(iiii)iiii;conv geometry", &g->cin, &g->height, &g->width, &g->cout,
                          &g->group, &g->kh, &g->kw, &g->sh, &g->sw, &g->dh, &g->dw, &g->pads[0], &g->pads[1],
                          &g->pads[2], &g->pads[3], &g->out_height, &g->out_width, &g->band_rows,
                          &g->slab_groups))
        return -1;
    const char *error = er_conv_check(g);
    if (error) {
        PyErr_Format(PyExc_ValueError, "conv: %s", error);
        return -1;
    }
    return 0;
}

PyObject *er_py_conv_info(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *spec;
    er_conv_geom g;
    if (!PyArg_ParseTuple(args, "O", &spec) || parse_geom(spec, &g) != 0) return NULL;
    return Py_BuildValue("(lli)", er_conv_packed_floats(&g), er_conv_scratch_floats(&g), CNR);
}

PyObject *er_py_conv_pack(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *spec, *w, *packed;
    er_conv_geom g;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOO", &w, &packed, &spec) || parse_geom(spec, &g) != 0) return NULL;
    const float *wp = er_acquire(&set, w, "w", (Py_ssize_t)g.cout * taps_per_group(&g), 0, 0);
    float *pp = wp ? er_acquire(&set, packed, "packed", er_conv_packed_floats(&g), 0, 1) : NULL;
    if (!pp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    er_conv_pack(&g, wp, pp);
    er_release_all(&set);
    Py_RETURN_NONE;
}

PyObject *er_py_conv_run(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *x, *packed, *bias, *sum, *out, *cols, *spec, *act_spec;
    int threads = 1;
    er_conv_geom g;
    er_act act;
    er_buffer_set set = {.count = 0};
    if (!PyArg_ParseTuple(args, "OOOOOOOO|i", &x, &packed, &bias, &sum, &out, &cols, &spec, &act_spec, &threads) ||
        parse_geom(spec, &g) != 0 || er_parse_activation(act_spec, &act, "act") != 0)
        return NULL;
    if (threads < 1 || threads > ER_MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "conv: threads must be in 1..128");
        return NULL;
    }
    Py_ssize_t out_count = (Py_ssize_t)g.cout * g.out_height * g.out_width;
    const float *xp = er_acquire(&set, x, "x", (Py_ssize_t)g.cin * g.height * g.width, 0, 0);
    const float *pp = xp ? er_acquire(&set, packed, "packed", er_conv_packed_floats(&g), 0, 0) : NULL;
    const float *bp = NULL, *sp = NULL;
    int ok = pp != NULL;
    if (ok && bias != Py_None) ok = (bp = er_acquire(&set, bias, "bias", g.cout, 0, 0)) != NULL;
    if (ok && sum != Py_None) ok = (sp = er_acquire(&set, sum, "sum", out_count, 0, 0)) != NULL;
    float *op = ok ? er_acquire(&set, out, "out", out_count, 0, 1) : NULL;
    float *cp = op ? er_acquire(&set, cols, "cols", er_conv_scratch_floats(&g), 1, 1) : NULL;
    if (!cp || er_check_no_overlap(&set) != 0) {
        er_release_all(&set);
        return NULL;
    }
    const char *error;
    Py_BEGIN_ALLOW_THREADS
    error = er_conv_run(&g, pp, xp, bp, sp, op, cp, &act, threads);
    Py_END_ALLOW_THREADS
    er_release_all(&set);
    if (error) return PyErr_Format(PyExc_RuntimeError, "conv: %s", error);
    Py_RETURN_NONE;
}
#endif /* ER_NO_PYTHON */
