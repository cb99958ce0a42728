/* Depthwise convolution of one channel, output row by output row.
 * Columns whose taps all fall inside the input run through a loop specialised for the
 * kernel size and stride (3x3 / 5x5, stride 1 / 2); border columns and rows are handled
 * explicitly by skipping the taps that fall into the padding. */
#include <string.h>

#include "kernels.h"

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

/* ---- padded path: 3x3 / 5x5, stride 1 / 2, rows that fit a small stack buffer ----
 * The window rows of a group of output rows are copied with their zero padding into a
 * stack buffer P (row pitch pw); then no tap needs a bounds check. With stride 1 the
 * group is one flat 1-D correlation over q = row * pw + column (the pw - out_width
 * columns at each row end are computed and dropped), a long loop that vectorises well
 * even for 7-pixel rows. */
#define PADDED_BUFFER_FLOATS 6144

static void copy_padded_rows(const float *src, int src_row0, int height, int width, int top, int rows,
                             int pad_left, int pw, float *P)
{
    /* one memset for all the padding, then one copy per row inside the input */
    memset(P, 0, sizeof(float) * (size_t)rows * pw);
    int first = top < 0 ? -top : 0, last = height - top < rows ? height - top : rows;
    for (int r = first; r < last; r++)
        memcpy(P + (long)r * pw + pad_left, src + (long)(top + r - src_row0) * width, sizeof(float) * width);
}

/* One pointer per window row, taps along the row at constant offsets (kx): few registers. */
#define DEFINE_FLAT_S1(K)                                                                      \
    static void flat_k##K##_s1(const float *restrict P, long pw, const float *restrict w, float bias, \
                               float *restrict acc, long count)                                \
    {                                                                                          \
        const float *rows[K];                                                                  \
        for (int ky = 0; ky < (K); ky++) rows[ky] = P + ky * pw;                               \
        for (long q = 0; q < count; q++) {                                                     \
            float s = bias;                                                                    \
            for (int ky = 0; ky < (K); ky++) {                                                 \
                const float *r = rows[ky] + q;                                                 \
                for (int kx = 0; kx < (K); kx++) s += w[ky * (K) + kx] * r[kx];                \
            }                                                                                  \
            acc[q] = s;                                                                        \
        }                                                                                      \
    }

DEFINE_FLAT_S1(3)
DEFINE_FLAT_S1(5)

#define DEFINE_ROWS_S2(K)                                                                      \
    static void rows_k##K##_s2(const float *restrict P, long pw, const float *restrict w, float bias, \
                               float *restrict dst, int rows, int out_width)                   \
    {                                                                                          \
        for (int r = 0; r < rows; r++) {                                                       \
            const float *window[K];                                                            \
            for (int ky = 0; ky < (K); ky++) window[ky] = P + (2 * r + ky) * pw;               \
            float *d = dst + (long)r * out_width;                                              \
            for (long j = 0; j < out_width; j++) {                                             \
                float s = bias;                                                                \
                for (int ky = 0; ky < (K); ky++) {                                             \
                    const float *p = window[ky] + 2 * j;                                       \
                    for (int kx = 0; kx < (K); kx++) s += w[ky * (K) + kx] * p[kx];            \
                }                                                                              \
                d[j] = s;                                                                      \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_ROWS_S2(3)
DEFINE_ROWS_S2(5)

/* Output rows per group so that P (and the stride-1 flat result) fit the buffer; 0: too wide. */
static int padded_group_rows(int k, int stride, int pw)
{
    int per_row = stride * pw + (stride == 1 ? pw : 0);
    int fixed = (k - stride) * pw;
    return per_row > 0 && PADDED_BUFFER_FLOATS > fixed ? (PADDED_BUFFER_FLOATS - fixed) / per_row : 0;
}

static int padded_path_applies(int k, int stride, int pw)
{
    return (k == 3 || k == 5) && (stride == 1 || stride == 2) && padded_group_rows(k, stride, pw) >= 1;
}

static void depthwise_rows_padded(const float *src, int src_row0, int height, int width, const float *w,
                                  int k, int stride, const int pads[4], float bias, const er_act *act,
                                  float *dst, int o0, int o1, int out_width, int pw)
{
    float buffer[PADDED_BUFFER_FLOATS];
    int group = padded_group_rows(k, stride, pw);
    for (int g0 = o0; g0 < o1; g0 += group) {
        int rows = o1 - g0 < group ? o1 - g0 : group;
        int in_rows = (rows - 1) * stride + k;
        float *P = buffer, *flat = buffer + (long)in_rows * pw;
        float *d = dst + (long)(g0 - o0) * out_width;
        copy_padded_rows(src, src_row0, height, width, g0 * stride - pads[0], in_rows, pads[1], pw, P);
        if (stride == 1) {
            int count = (rows - 1) * pw + out_width; /* the last row's dropped columns are not needed */
            if (k == 3) flat_k3_s1(P, pw, w, bias, flat, count);
            else flat_k5_s1(P, pw, w, bias, flat, count);
            for (int r = 0; r < rows; r++)
                memcpy(d + (long)r * out_width, flat + (long)r * pw, sizeof(float) * out_width);
        } else if (k == 3) {
            rows_k3_s2(P, pw, w, bias, d, rows, out_width);
        } else {
            rows_k5_s2(P, pw, w, bias, d, rows, out_width);
        }
        er_apply_activation(d, (long)rows * out_width, act);
    }
}

void er_depthwise_rows(const float *src, int src_row0, int height, int width, const float *w, int k,
                       int stride, const int pads[4], float bias, const er_act *act, float *dst,
                       int o0, int o1, int out_width)
{
    /* padded pitch: every column any tap reads, and the flat stride-1 correlation needs
     * out_width + k - 1 <= pw, which pl + width + pr satisfies */
    int pw = pads[1] + width + pads[3];
    int needed = (out_width - 1) * stride + k;
    if (pw < needed) pw = needed;
    if (padded_path_applies(k, stride, pw))
        depthwise_rows_padded(src, src_row0, height, width, w, k, stride, pads, bias, act, dst, o0, o1,
                              out_width, pw);
    else
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
