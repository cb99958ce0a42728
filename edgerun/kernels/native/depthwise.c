/* Depthwise convolution of one channel, output row by output row.
 * Stride 1 and 2 (any kernel size) run through a vector path (GCC vector extensions, AVX-512
 * masked loads and stores where available): VL output columns per block, every tap of the
 * block accumulated in a register, activation applied before the store. Other strides (and
 * compilers without vector extensions) use the scalar checked path: columns whose taps all
 * fall inside the input run through a loop specialised for the kernel size and stride, border
 * columns and rows skip the taps that fall into the padding. */
#include <stdint.h>
#include <string.h>

#define ER_VECTOR_HELPERS
#include "kernels.h"
#if defined(__AVX__)
#include <immintrin.h>
#endif

static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

#define MAX_FUSED_KERNEL 16

/* Interior columns, all k*k taps in one pass: rows[ky] points at hidden row ky of the window
 * (a row outside the input gets zero weights instead, so no test sits in the loop). */
#define DEFINE_INTERIOR(K, S)                                                                  \
    static void interior_k##K##_s##S(float *restrict acc, const float *const *rows,           \
                                     const float *restrict w, int j0, int j1, int offset)     \
    {                                                                                          \
        for (int j = j0; j < j1; j++) {                                                        \
            float s = acc[j];                                                                  \
            for (int ky = 0; ky < (K); ky++) {                                                 \
                const float *r = rows[ky] + j * (S) + offset;                                  \
                for (int kx = 0; kx < (K); kx++) s += w[ky * (K) + kx] * r[kx];                \
            }                                                                                  \
            acc[j] = s;                                                                        \
        }                                                                                      \
    }

DEFINE_INTERIOR(3, 1)
DEFINE_INTERIOR(3, 2)
DEFINE_INTERIOR(5, 1)
DEFINE_INTERIOR(5, 2)

static void interior_generic(float *restrict acc, const float *const *rows, const float *restrict w,
                             int j0, int j1, int offset, int k, int stride)
{
    for (int j = j0; j < j1; j++) {
        float s = acc[j];
        for (int ky = 0; ky < k; ky++) {
            const float *r = rows[ky] + j * stride + offset;
            for (int kx = 0; kx < k; kx++) s += w[ky * k + kx] * r[kx];
        }
        acc[j] = s;
    }
}

static void interior(float *acc, const float *const *rows, const float *w, int j0, int j1, int offset,
                     int k, int stride)
{
    if (j0 >= j1) return;
    if (k == 3 && stride == 1) interior_k3_s1(acc, rows, w, j0, j1, offset);
    else if (k == 3 && stride == 2) interior_k3_s2(acc, rows, w, j0, j1, offset);
    else if (k == 5 && stride == 1) interior_k5_s1(acc, rows, w, j0, j1, offset);
    else if (k == 5 && stride == 2) interior_k5_s2(acc, rows, w, j0, j1, offset);
    else interior_generic(acc, rows, w, j0, j1, offset, k, stride);
}

/* Border columns: only the taps that land inside [0, width). */
static void border(float *acc, const float *row, const float *w, int j0, int j1, int offset, int k,
                   int stride, int width)
{
    for (int j = j0; j < j1; j++) {
        float s = acc[j];
        for (int kx = 0; kx < k; kx++) {
            int c = j * stride + offset + kx;
            if (c >= 0 && c < width) s += w[kx] * row[c];
        }
        acc[j] = s;
    }
}

/* Output row o: window rows and weights with the rows outside the input zeroed.
 * Returns 0 when no window row lies inside the input. */
static int window_rows(const float *src, int src_row0, int height, int width, const float *w, int k,
                       int top, const float **rows, float *weights)
{
    int first = top < 0 ? 0 : top;
    if (first >= height || top + k <= 0) return 0;
    for (int ky = 0; ky < k; ky++) {
        int r = top + ky, inside = r >= 0 && r < height;
        rows[ky] = src + (long)((inside ? r : first) - src_row0) * width;
        for (int kx = 0; kx < k; kx++) weights[ky * k + kx] = inside ? w[ky * k + kx] : 0.0f;
    }
    return 1;
}

/* Row by row straight from the source, border taps checked: any kernel, stride and width. */
static void depthwise_rows_checked(const float *src, int src_row0, int height, int width, const float *w,
                                   int k, int stride, const int pads[4], float bias, const er_act *act,
                                   float *dst, int o0, int o1, int out_width)
{
    int offset = -pads[1];
    /* interior columns j: j*stride - pad_left >= 0 and j*stride - pad_left + k <= width */
    int j_lo = clampi(er_ceil_div(pads[1], stride), 0, out_width);
    int j_hi = clampi(floor_div(width - k + pads[1], stride) + 1, j_lo, out_width);
    const float *rows[MAX_FUSED_KERNEL];
    float weights[MAX_FUSED_KERNEL * MAX_FUSED_KERNEL];
    int fused = k <= MAX_FUSED_KERNEL;
    if (!fused) j_lo = j_hi = 0; /* huge kernels: every column through the checked path */
    for (int o = o0; o < o1; o++) {
        float *d = dst + (long)(o - o0) * out_width;
        int top = o * stride - pads[0];
        for (int j = 0; j < out_width; j++) d[j] = bias;
        if (fused && window_rows(src, src_row0, height, width, w, k, top, rows, weights))
            interior(d, rows, weights, j_lo, j_hi, offset, k, stride);
        for (int ky = 0; ky < k; ky++) {
            int r = top + ky;
            if (r < 0 || r >= height) continue;
            const float *row = src + (long)(r - src_row0) * width;
            border(d, row, w + ky * k, 0, j_lo, offset, k, stride, width);
            border(d, row, w + ky * k, j_hi, out_width, offset, k, stride, width);
        }
        er_apply_activation(d, out_width, act);
    }
}

#if defined(__GNUC__)
/* ---- vector path: any kernel size, stride 1 or 2 ----
 * Output row o, block of VL output columns starting at j (blocks at fixed multiples of VL):
 * acc = bias, then for every window row inside the input (ky ascending) and every tap kx
 * (ascending) acc += w[ky][kx] * (VL input columns of that tap), columns outside the row read
 * as zero, rows outside the input skipped; activation in registers; store. Every output
 * element thus sees the same operations in the same order whichever range [o0, o1) it is
 * computed in (the grouping of rows below changes only which accumulators run side by side).
 * Stride 2 loads 2 * VL consecutive columns and splits them into the even and odd taps with a
 * shuffle. Blocks whose columns all lie inside the row use plain loads; the others load with a
 * lane mask (AVX-512 masked loads, AVX2 maskload) or through a small zero-filled copy
 * (elsewhere). 3x3 and 5x5 kernels are specialised: weights in registers, several output rows
 * per pass. No heap, a few hundred bytes of stack. */
#define VL ER_VL
#define MASK_TAPS 32 /* edge masks precomputed per call for kernels up to this size */
/* Output rows computed together: up to 8 with 3x3 kernels (narrow planes, where a row is one
 * or two blocks, need that many independent accumulators), else 4 (8 accumulators and 25
 * weights of a 5x5 kernel would not fit the registers). */
#define MAX_GROUP(K) ((K) <= 3 ? 8 : 4)

typedef unsigned int lane_mask; /* bit l: lane l of a load lies inside the row */

/* below[n]: lanes [0, n); tables instead of variable shifts keep the masks free of shift checks
 * under UBSan. */
#if VL == 16
static const lane_mask below[VL + 1] = {0x0, 0x1, 0x3, 0x7, 0xf, 0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff,
                                        0xfff, 0x1fff, 0x3fff, 0x7fff, 0xffff};
#elif VL == 4
static const lane_mask below[VL + 1] = {0x0, 0x1, 0x3, 0x7, 0xf};
#else
static const lane_mask below[VL + 1] = {0x0, 0x1, 0x3, 0x7, 0xf, 0x1f, 0x3f, 0x7f, 0xff};
#endif

/* Lanes l in [0, VL) with 0 <= c + l < width. */
static inline lane_mask lanes_inside(long c, int width)
{
    long a = c < 0 ? -c : 0, b = width - c;
    a = a > VL ? VL : a;
    b = b > VL ? VL : b < 0 ? 0 : b;
    return below[b] & ~below[a];
}

#if !defined(__AVX512F__) && defined(__AVX2__) && VL == 8
/* AVX2 lane mask: lane l all ones where bit l of m is set. */
static inline __m256i avx2_lanes(lane_mask m)
{
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bit), bit);
}
#endif

/* Columns [c, c + VL) of row, zero outside [0, width); m = lanes_inside(c, width). Masked-off
 * lanes are never read (AVX-512 / AVX2 masked loads suppress them; the address is formed as an
 * integer because row + c may lie before the row). */
static inline er_vf load_edge(const float *row, long c, lane_mask m)
{
#if defined(__AVX512F__) && VL == 16
    return (er_vf)_mm512_maskz_loadu_ps((__mmask16)m, (const void *)((uintptr_t)row + c * (long)sizeof(float)));
#elif defined(__AVX2__) && VL == 8
    return (er_vf)_mm256_maskload_ps((const float *)((uintptr_t)row + c * (long)sizeof(float)), avx2_lanes(m));
#else
    float tmp[VL];
    for (int l = 0; l < VL; l++) tmp[l] = m & (below[l + 1] ^ below[l]) ? row[c + l] : 0.0f;
    return er_loadv(tmp);
#endif
}

/* The first n floats of v to d (all VL when n >= VL). */
static inline void store_cols(float *d, er_vf v, int n)
{
    if (n >= VL) {
        er_storev(d, v);
        return;
    }
#if defined(__AVX512F__) && VL == 16
    _mm512_mask_storeu_ps(d, (__mmask16)below[n], (__m512)v);
#elif defined(__AVX2__) && VL == 8
    _mm256_maskstore_ps(d, avx2_lanes(below[n]), (__m256)v);
#else
    er_store_part(d, v, n);
#endif
}

#if VL == 16
#define EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define ODD_LANES 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#elif VL == 4
#define EVEN_LANES 0, 2, 4, 6
#define ODD_LANES 1, 3, 5, 7
#else
#define EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14
#define ODD_LANES 1, 3, 5, 7, 9, 11, 13, 15
#endif

/* Lanes LANES (a list of constants) of the 2 VL lanes of a followed by b. GCC's
 * __builtin_shuffle takes an index vector, clang's __builtin_shufflevector the constants. */
#if defined(__clang__)
#define SHUFFLE(a, b, LANES) __builtin_shufflevector(a, b, LANES)
#else
#define SHUFFLE(a, b, LANES) __builtin_shuffle(a, b, (er_vi){LANES})
#endif

/* Masks of every load of a block whose first tap column is c: stride 1, tap kx loads at
 * c + kx (m[kx]); stride 2, tap pair p loads at c + 2p and c + 2p + VL (m[2p], m[2p + 1]). */
static inline void block_masks(long c, int width, int k, int stride, lane_mask *m)
{
    if (stride == 1)
        for (int kx = 0; kx < k; kx++) m[kx] = lanes_inside(c + kx, width);
    else
        for (int p = 0; 2 * p < k; p++) {
            m[2 * p] = lanes_inside(c + 2 * p, width);
            m[2 * p + 1] = lanes_inside(c + 2 * p + VL, width);
        }
}

/* acc += the taps of one window row (weights wr[0..k)) for the block starting at column c. */
static inline __attribute__((always_inline)) void
row_taps(er_vf *accp, const float *row, long c, int width, const float *wr, const er_vf *wv, int k,
         int stride, int edge, const lane_mask *m)
{
    er_vf acc = *accp;
    if (stride == 1) {
        for (int kx = 0; kx < k; kx++) {
            er_vf x = edge ? load_edge(row, c + kx, m[kx]) : er_loadv(row + c + kx);
            acc += (wv ? wv[kx] : er_splatv(wr[kx])) * x;
        }
    } else {
        for (int p = 0; 2 * p < k; p++) {
            er_vf a = edge ? load_edge(row, c + 2 * p, m[2 * p]) : er_loadv(row + c + 2 * p);
            er_vf b = edge ? load_edge(row, c + 2 * p + VL, m[2 * p + 1])
                           : er_loadv(row + c + 2 * p + VL);
            acc += (wv ? wv[2 * p] : er_splatv(wr[2 * p])) * SHUFFLE(a, b, EVEN_LANES);
            if (2 * p + 1 < k)
                acc += (wv ? wv[2 * p + 1] : er_splatv(wr[2 * p + 1])) * SHUFFLE(a, b, ODD_LANES);
        }
    }
    *accp = acc;
}

/* ReLU / clip in registers, the formulas of activation.c (mode 0: nothing here):
 * relu v < 0 ? 0 : v, clip v < lo ? lo : v then v > hi ? hi : v. x86 max(a, b) is a > b ? a : b
 * and min(a, b) a < b ? a : b, exactly these selects (NaN and signed zeros included: a NaN v is
 * the second operand, so it passes through as onnxruntime's does). */
static inline void activate(er_vf *p, int mode, const er_vf *lo, const er_vf *hi)
{
    er_vf v = *p;
#if defined(__AVX512F__) && ER_VL == 16
    if (mode == 1) v = (er_vf)_mm512_max_ps((__m512)*lo, (__m512)v);
    if (mode == 2) v = (er_vf)_mm512_min_ps((__m512)*hi, _mm512_max_ps((__m512)*lo, (__m512)v));
#elif defined(__AVX__) && ER_VL == 8
    if (mode == 1) v = (er_vf)_mm256_max_ps((__m256)*lo, (__m256)v);
    if (mode == 2) v = (er_vf)_mm256_min_ps((__m256)*hi, _mm256_max_ps((__m256)*lo, (__m256)v));
#else
    if (mode == 1) v = er_selectv(v < *lo, *lo, v);
    if (mode == 2) {
        v = er_selectv(v < *lo, *lo, v);
        v = er_selectv(v > *hi, *hi, v);
    }
#endif
    *p = v;
}

/* Block at column c of output rows [top0 / S .. + R): R independent accumulators (a lone one
 * would wait on the latency of its chain of k * k FMAs). Input row i of the group is loaded
 * (and, stride 2, split into even and odd columns) once for every output row that uses it;
 * each accumulator still takes its taps with ky, then kx, ascending. Input rows outside the
 * image are skipped. */
static inline __attribute__((always_inline)) void
group_block(const float *src, int src_row0, int height, int width, const er_vf *wv, int K, int S, int R,
            int top0, long c, int edge, const lane_mask *m, er_vf *acc)
{
#pragma GCC unroll 32
    for (int i = 0; i < (R - 1) * S + K; i++) {
        int y = top0 + i;
        if (y < 0 || y >= height) continue;
        const float *row = src + (long)(y - src_row0) * width;
        if (S == 1) {
#pragma GCC unroll 16
            for (int kx = 0; kx < K; kx++) {
                er_vf x = edge ? load_edge(row, c + kx, m[kx]) : er_loadv(row + c + kx);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    int ky = i - r;
                    if (ky >= 0 && ky < K) acc[r] += wv[ky * K + kx] * x;
                }
            }
        } else {
#pragma GCC unroll 16
            for (int p = 0; 2 * p < K; p++) {
                er_vf a = edge ? load_edge(row, c + 2 * p, m[2 * p]) : er_loadv(row + c + 2 * p);
                er_vf b = edge ? load_edge(row, c + 2 * p + VL, m[2 * p + 1])
                               : er_loadv(row + c + 2 * p + VL);
                er_vf e = SHUFFLE(a, b, EVEN_LANES), o = SHUFFLE(a, b, ODD_LANES);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    int ky = i - 2 * r;
                    if (ky < 0 || ky >= K) continue;
                    acc[r] += wv[ky * K + 2 * p] * e;
                    if (2 * p + 1 < K) acc[r] += wv[ky * K + 2 * p + 1] * o;
                }
            }
        }
    }
}

/* Output rows [o, o + R), every block. */
static inline __attribute__((always_inline)) void
group_rows(const float *src, int src_row0, int height, int width, const er_vf *wv, int K, int S, int R,
           int pl, int top0, const er_vf *vbias, int mode, const er_vf *lo, const er_vf *hi, float *d, int out_width, int blocks,
           long span, const lane_mask *first, const lane_mask *last, er_vf *acc, lane_mask *mm)
{
    for (int b = 0; b < blocks; b++) {
        long j = (long)b * VL, c = j * S - pl;
        int edge = c < 0 || c + span >= width;
        for (int r = 0; r < R; r++) acc[r] = *vbias;
        if (!edge) {
            group_block(src, src_row0, height, width, wv, K, S, R, top0, c, 0, NULL, acc);
        } else if (b == 0 || b == blocks - 1) {
            group_block(src, src_row0, height, width, wv, K, S, R, top0, c, 1, b == 0 ? first : last, acc);
        } else {
            block_masks(c, width, K, S, mm);
            group_block(src, src_row0, height, width, wv, K, S, R, top0, c, 1, mm, acc);
        }
        for (int r = 0; r < R; r++) {
            activate(&acc[r], mode, lo, hi);
            store_cols(d + (long)r * out_width + j, acc[r], out_width - (int)j);
        }
    }
}

/* Output rows [o0, o1); K and S are constants in the specialised copies (K = 0: k at run time). */
static inline __attribute__((always_inline)) void
rows_vector(const float *src, int src_row0, int height, int width, const float *w, int K, int k, int S,
            const int pads[4], float bias, const er_act *act, float *dst, int o0, int o1, int out_width)
{
    if (K) k = K;
    int pl = pads[1];
    int kind = act ? act->kind : ER_ACT_NONE;
    int mode = kind == ER_ACT_RELU ? 1 : kind == ER_ACT_CLIP ? 2 : 0;
    int post = kind != ER_ACT_NONE && !mode;
    er_vf lo = er_splatv(mode == 2 ? act->a : 0.0f), hi = er_splatv(mode == 2 ? act->b : 0.0f);
    /* the widest column a block reads past its first tap column */
    long span = S == 1 ? VL - 1 + k - 1 : 2 * ((k - 1) / 2) + 2 * VL - 1;
    int blocks = (out_width + VL - 1) / VL;
    er_vf vbias = er_splatv(bias);
    /* the group's scratch lives here, not in the inlined group_rows (ASan would mark its
     * scope at every inlined copy) */
    er_vf wv[25], acc[8]; /* K is 0, 3 or 5 */
    lane_mask mm[2 * 5 + 2];
    int group = K <= 3 && blocks <= 2 ? 8 : 4;
    if (K)
        for (int i = 0; i < K * K; i++) wv[i] = er_splatv(w[i]);
    /* masks of the first and last blocks, the usual edge blocks */
    lane_mask first[2 * MASK_TAPS + 2], last_masks[2 * MASK_TAPS + 2];
    const lane_mask *last = first;
    int premasked = k <= MASK_TAPS;
    if (premasked) {
        block_masks(-(long)pl, width, k, S, first);
        if (blocks > 1) {
            block_masks((long)(blocks - 1) * VL * S - pl, width, k, S, last_masks);
            last = last_masks;
        }
    }
    for (int o = o0; o < o1;) {
        float *d = dst + (long)(o - o0) * out_width;
        int top = o * S - pads[0];
        if (K && premasked) {
            int R = o1 - o >= group ? group : o1 - o;
            switch (R) {
#define GROUP_CASE(N)                                                                                   \
            case N:                                                                                     \
                group_rows(src, src_row0, height, width, wv, K, S, N <= MAX_GROUP(K) ? N : 1, pl, top, &vbias, \
                           mode, &lo, &hi, d, out_width, blocks, span, first, last, acc, mm);                     \
                break;
            GROUP_CASE(1) GROUP_CASE(2) GROUP_CASE(3) GROUP_CASE(4)
            GROUP_CASE(5) GROUP_CASE(6) GROUP_CASE(7) GROUP_CASE(8)
#undef GROUP_CASE
            }
            if (post) er_apply_activation(d, (long)R * out_width, act);
            o += R;
            continue;
        }
        int ky0 = top < 0 ? -top : 0, ky1 = height - top < k ? height - top : k;
        for (int b = 0; b < blocks; b++) {
            long j = (long)b * VL, c = j * S - pl;
            int edge = c < 0 || c + span >= width;
            const lane_mask *m = NULL;
            if (edge && premasked && b == 0) m = first;
            else if (edge && premasked && b == blocks - 1) m = last;
            er_vf acc = vbias;
            if (edge && !m) {
                /* rare: an edge block in the middle, or a huge kernel; masks tap by tap */
                for (int ky = ky0; ky < ky1; ky++) {
                    const float *row = src + (long)(top + ky - src_row0) * width;
                    if (S == 1) {
                        for (int kx = 0; kx < k; kx++) {
                            lane_mask mk = lanes_inside(c + kx, width);
                            acc += er_splatv(w[ky * k + kx]) * load_edge(row, c + kx, mk);
                        }
                    } else {
                        for (int p = 0; 2 * p < k; p++) {
                            er_vf xa = load_edge(row, c + 2 * p, lanes_inside(c + 2 * p, width));
                            er_vf xb = load_edge(row, c + 2 * p + VL, lanes_inside(c + 2 * p + VL, width));
                            acc += er_splatv(w[ky * k + 2 * p]) * SHUFFLE(xa, xb, EVEN_LANES);
                            if (2 * p + 1 < k)
                                acc += er_splatv(w[ky * k + 2 * p + 1]) * SHUFFLE(xa, xb, ODD_LANES);
                        }
                    }
                }
            } else if (!edge) {
                for (int ky = ky0; ky < ky1; ky++)
                    row_taps(&acc, src + (long)(top + ky - src_row0) * width, c, width, w + ky * k, NULL,
                                   k, S, 0, NULL);
            } else {
                for (int ky = ky0; ky < ky1; ky++)
                    row_taps(&acc, src + (long)(top + ky - src_row0) * width, c, width, w + ky * k, NULL,
                                   k, S, 1, m);
            }
            activate(&acc, mode, &lo, &hi);
            store_cols(d + j, acc, out_width - (int)j);
        }
        if (post) er_apply_activation(d, out_width, act);
        o++;
    }
}

/* ---- 3x3, stride 2: input rows deinterleaved once, several output rows per pass ----
 * Output column j reads padded input columns 2j, 2j + 1, 2j + 2 (padded column q is input
 * column q - pad_left, zero outside the row). Each input row of a strip of at most STRIP_COLS
 * output columns is split once into E = columns 2j, O = 2j + 1 and E1 = 2j + 2 (vectors in a
 * small ring on the stack; consecutive groups of output rows share one input row), after which
 * every tap is an aligned vector load. R output rows x NB blocks are accumulated side by side
 * (independent FMA chains interleaved in program order; one chain at a time would wait on its
 * latency). Each accumulator: bias, then the rows inside the input with ky ascending, taps kx
 * ascending, columns outside the row as zero products: the operations and order of the
 * generic vector path above, so the same bits for any [o0, o1) and any grouping. */
#define STRIP_BLOCKS (64 / VL > 8 ? 8 : 64 / VL) /* the cases of rows_k3s2_strips go up to 8 */
#define STRIP_COLS (STRIP_BLOCKS * VL)
/* Output rows per group for NB blocks: few accumulators (larger groups measured slower: the
 * unrolled code outgrows the decoded-instruction cache); the 2R + 1 input rows of a group, 3 NB
 * vectors each, must fit the ring: 3 NB (2R + 1) <= RING_VECTORS for every NB. */
#define K3S2_ROWS(NB) ((NB) == 1 ? 4 : (NB) == 2 ? 2 : 1) /* NB = 1, 2: only when called directly */
#define RING_VECTORS (9 * STRIP_BLOCKS) /* 2.3 KB */

#if VL == 16
#define NEXT_LANES 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
#elif VL == 4
#define NEXT_LANES 1, 2, 3, 4
#else
#define NEXT_LANES 1, 2, 3, 4, 5, 6, 7, 8
#endif

/* Row split into slot[0 .. NB) = E, slot[NB .. 2 NB) = O, slot[2 NB .. 3 NB) = E1; the loads of
 * block t at c0 + 2 t VL and + VL (masks ma[t], mb[t]); block NB only feeds E1 of block NB - 1. */
static inline __attribute__((always_inline)) void
k3s2_split(er_vf *restrict slot, const float *row, long c0, int NB, const lane_mask *ma, const lane_mask *mb)
{
    er_vf prev = {0};
#pragma GCC unroll 16
    for (int t = 0; t <= NB; t++) {
        long c = c0 + (long)t * 2 * VL;
        er_vf a = ma[t] == below[VL] ? er_loadv(row + c) : load_edge(row, c, ma[t]);
        er_vf b = mb[t] == below[VL] ? er_loadv(row + c + VL) : load_edge(row, c + VL, mb[t]);
        er_vf e = SHUFFLE(a, b, EVEN_LANES);
        if (t > 0) slot[2 * NB + t - 1] = SHUFFLE(prev, e, NEXT_LANES);
        if (t < NB) {
            slot[t] = e;
            slot[NB + t] = SHUFFLE(a, b, ODD_LANES);
        }
        prev = e;
    }
}

typedef struct {
    const float *src;
    int src_row0, height, width, mode, n, out_width, slots;
    long c0, ybase;
    const lane_mask *ma, *mb;
    er_vf *ring;
} k3s2_ctx;

/* Output rows [o, o + R) of the strip (top = first window row), written to d. */
static inline __attribute__((always_inline)) void
k3s2_group(const k3s2_ctx *x, long *have, long top, const er_vf *wv, const er_vf *vbias, const er_vf *lo,
           const er_vf *hi, float *d, int NB, int R, er_vf *acc)
{
    for (long y = *have > top ? *have : top; y < top + 2 * R + 1; y++)
        if (y >= 0 && y < x->height)
            k3s2_split(x->ring + (y - x->ybase) % x->slots * 3 * NB,
                       x->src + (y - x->src_row0) * (long)x->width, x->c0, NB, x->ma, x->mb);
    *have = top + 2 * R + 1;
#pragma GCC unroll 64
    for (int q = 0; q < R * NB; q++) acc[q] = *vbias;
#pragma GCC unroll 32
    for (int i = 0; i < 2 * R + 1; i++) {
        long y = top + i;
        if (y < 0 || y >= x->height) continue;
        const er_vf *slot = x->ring + (y - x->ybase) % x->slots * 3 * NB;
#pragma GCC unroll 4
        for (int kx = 0; kx < 3; kx++)
#pragma GCC unroll 16
            for (int t = 0; t < NB; t++) {
                er_vf v = slot[kx * NB + t];
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    int ky = i - 2 * r;
                    if (ky >= 0 && ky < 3) acc[r * NB + t] += wv[ky * 3 + kx] * v;
                }
            }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < NB; t++) {
            activate(&acc[r * NB + t], x->mode, lo, hi);
            if (t < NB - 1) er_storev(d + (long)r * x->out_width + t * VL, acc[r * NB + t]);
            else store_cols(d + (long)r * x->out_width + t * VL, acc[r * NB + t], x->n - t * VL);
        }
}

/* Output rows [o0, o1) of one strip of NB blocks. */
static inline __attribute__((always_inline)) void
k3s2_strip(const k3s2_ctx *x, int o0, int o1, int pt, const er_vf *wv, const er_vf *vbias, const er_vf *lo,
           const er_vf *hi, float *d, const er_act *act, int post, int NB, er_vf *acc)
{
    const int R = K3S2_ROWS(NB);
    long have = x->ybase;
    for (int o = o0; o < o1;) {
        long top = 2L * o - pt;
        float *dr = d + (long)(o - o0) * x->out_width;
        int rows = o1 - o >= R ? R : 1;
        if (rows == R) k3s2_group(x, &have, top, wv, vbias, lo, hi, dr, NB, R, acc);
        else k3s2_group(x, &have, top, wv, vbias, lo, hi, dr, NB, 1, acc);
        if (post)
            for (int r = 0; r < rows; r++) er_apply_activation(dr + (long)r * x->out_width, x->n, act);
        o += rows;
    }
}

static void rows_k3_s2_split(const float *src, int src_row0, int height, int width, const float *w,
                             const int pads[4], float bias, const er_act *act, float *dst, int o0, int o1,
                             int out_width)
{
    int kind = act ? act->kind : ER_ACT_NONE;
    int mode = kind == ER_ACT_RELU ? 1 : kind == ER_ACT_CLIP ? 2 : 0;
    int post = kind != ER_ACT_NONE && !mode;
    er_vf lo = er_splatv(mode == 2 ? act->a : 0.0f), hi = er_splatv(mode == 2 ? act->b : 0.0f);
    er_vf vbias = er_splatv(bias), wv[9], acc[8], ring[RING_VECTORS];
    for (int i = 0; i < 9; i++) wv[i] = er_splatv(w[i]);
    lane_mask ma[STRIP_BLOCKS + 1], mb[STRIP_BLOCKS + 1];
    k3s2_ctx x = {src, src_row0, height, width, mode, 0, out_width, 0, 0, 2L * o0 - pads[0], ma, mb, ring};
    for (int js = 0; js < out_width; js += STRIP_COLS) {
        int nb;
        x.n = out_width - js < STRIP_COLS ? out_width - js : STRIP_COLS;
        nb = (x.n + VL - 1) / VL;
        x.c0 = 2L * js - pads[1];
        for (int t = 0; t <= nb; t++) {
            ma[t] = lanes_inside(x.c0 + (long)t * 2 * VL, width);
            mb[t] = lanes_inside(x.c0 + (long)t * 2 * VL + VL, width);
        }
        switch (nb) {
#define STRIP_CASE(NB)                                                                                   \
        case NB:                                                                                         \
            x.slots = 2 * K3S2_ROWS(NB) + 1;                                                             \
            k3s2_strip(&x, o0, o1, pads[0], wv, &vbias, &lo, &hi, dst + js, act, post, NB, acc);        \
            break;
            STRIP_CASE(1) STRIP_CASE(2) STRIP_CASE(3) STRIP_CASE(4)
#if STRIP_BLOCKS > 4
            STRIP_CASE(5) STRIP_CASE(6) STRIP_CASE(7) STRIP_CASE(8)
#endif
#undef STRIP_CASE
        }
    }
}

#define DEFINE_ROWS(NAME, K, S)                                                                  \
    static void NAME(const float *src, int src_row0, int height, int width, const float *w, int k,  \
                     const int pads[4], float bias, const er_act *act, float *dst, int o0, int o1,  \
                     int out_width)                                                              \
    {                                                                                            \
        rows_vector(src, src_row0, height, width, w, K, k, S, pads, bias, act, dst, o0, o1, out_width); \
    }

DEFINE_ROWS(rows_k3_s1, 3, 1)
DEFINE_ROWS(rows_k3_s2, 3, 2)
DEFINE_ROWS(rows_k5_s1, 5, 1)
DEFINE_ROWS(rows_k5_s2, 5, 2)
DEFINE_ROWS(rows_any_s1, 0, 1)
DEFINE_ROWS(rows_any_s2, 0, 2)
#endif /* __GNUC__ */

void er_depthwise_rows(const float *src, int src_row0, int height, int width, const float *w, int k,
                       int stride, const int pads[4], float bias, const er_act *act, float *dst,
                       int o0, int o1, int out_width)
{
    if (o0 >= o1 || out_width <= 0) return;
#if defined(__GNUC__)
    if (stride == 1 || stride == 2) {
        if (k == 3 && stride == 1) rows_k3_s1(src, src_row0, height, width, w, k, pads, bias, act, dst, o0, o1, out_width);
        else if (k == 3 && out_width > 2 * VL) /* narrower: rows_k3_s2 measured as fast or faster */
            rows_k3_s2_split(src, src_row0, height, width, w, pads, bias, act, dst, o0, o1, out_width);
        else if (k == 3) rows_k3_s2(src, src_row0, height, width, w, k, pads, bias, act, dst, o0, o1, out_width);
        else if (k == 5 && stride == 1) rows_k5_s1(src, src_row0, height, width, w, k, pads, bias, act, dst, o0, o1, out_width);
        else if (k == 5) rows_k5_s2(src, src_row0, height, width, w, k, pads, bias, act, dst, o0, o1, out_width);
        else if (stride == 1) rows_any_s1(src, src_row0, height, width, w, k, pads, bias, act, dst, o0, o1, out_width);
        else rows_any_s2(src, src_row0, height, width, w, k, pads, bias, act, dst, o0, o1, out_width);
        return;
    }
#endif
    depthwise_rows_checked(src, src_row0, height, width, w, k, stride, pads, bias, act, dst, o0, o1,
                           out_width);
}

void er_depthwise_plane(const float *src, int height, int width, const float *w, int k, int stride,
                        const int pads[4], float bias, const er_act *act, float *dst, int out_height,
                        int out_width)
{
    er_depthwise_rows(src, 0, height, width, w, k, stride, pads, bias, act, dst, 0, out_height,
                      out_width);
}
