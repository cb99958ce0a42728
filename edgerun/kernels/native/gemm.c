/* Register-blocked GEMM with A transposed (k-major), the shape of 1x1 convolutions:
 * C (M x N) (+)= A^T (M x K) * B (K x N), where A[k*lda + m] holds the weights for output
 * channel m and input channel k, and B / C are channel-major pixel rows.
 *
 * Full column tiles: MR rows x NR = 2 vectors of columns, vectors along the columns.
 * The last N % NR columns (7x7 maps, narrow bands) would waste most of such a tile, so they
 * are computed the other way round: RR = 2 vectors of rows x up to 4 columns, vectors along
 * the rows (A's k-major layout makes consecutive rows contiguous).
 * Vectors are 16 floats when compiled for AVX-512, else 8 (AVX2, SSE, NEON via GCC). */
#include <string.h>

#include "kernels.h"

#if defined(__AVX512F__)
#define VL 16
#define MR 8
#else
#define VL 8
#define MR 6
#endif
#define NR (2 * VL)
#define RR (2 * VL) /* rows of a remainder-column tile */
#define RC 4        /* columns of a remainder-column tile */

#if defined(__GNUC__)
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int vi __attribute__((vector_size(VL * 4)));

static inline vf loadv(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void storev(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* s - 0 folds to a plain broadcast (0 + s would not: -0.0 + 0 is +0.0). */
static inline vf splatv(float s) { return s - (vf){0}; }
static inline vf selectv(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* ReLU and clip applied in registers; returns v unchanged for other kinds (done after the store). */
static inline vf activatev(vf v, const er_act *act)
{
    if (!act) return v;
    if (act->kind == ER_ACT_RELU) {
        vf zero = splatv(0.0f);
        return selectv(v > zero, v, zero);
    }
    if (act->kind == ER_ACT_CLIP) {
        vf lo = splatv(act->a), hi = splatv(act->b);
        v = selectv(v < lo, lo, v);
        return selectv(v > hi, hi, v);
    }
    return v;
}

/* The first n (0..VL) floats of p, zero-padded. */
static inline vf load_part(const float *p, int n)
{
    float tmp[VL] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return loadv(tmp);
}

static inline void store_part(float *p, vf v, int n)
{
    float tmp[VL];
    storev(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}

/* One mr x NR tile; always inlined so that a constant mr unrolls fully. */
static inline __attribute__((always_inline)) void
tile(int mr, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
     int accumulate, const float *bias, const er_act *act)
{
    vf acc[MR][2];
    for (int i = 0; i < mr; i++) {
        if (accumulate) {
            acc[i][0] = loadv(C + i * ldc);
            acc[i][1] = loadv(C + i * ldc + VL);
        } else {
            acc[i][0] = acc[i][1] = splatv(bias ? bias[i] : 0.0f);
        }
    }
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *a = A + k * lda;
        vf b0 = loadv(b), b1 = loadv(b + VL);
        for (int i = 0; i < mr; i++) {
            vf ai = splatv(a[i]);
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        storev(C + i * ldc, activatev(acc[i][0], act));
        storev(C + i * ldc + VL, activatev(acc[i][1], act));
    }
}

static void full_tile(int mr, int K, const float *A, long lda, const float *B, long ldb, float *C,
                      long ldc, int accumulate, const float *bias, const er_act *act)
{
    switch (mr) {
#if MR == 8
    case 8: tile(8, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 7: tile(7, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
#endif
    case 6: tile(6, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 5: tile(5, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 4: tile(4, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 3: tile(3, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 2: tile(2, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    default: tile(1, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    }
}

static inline vf load_rows(const float *p, int half, int rows)
{
    int count = rows - half * VL;
    if (count >= VL) return loadv(p + half * VL);
    return load_part(p + half * VL, count > 0 ? count : 0);
}

/* rows (<= RR) x nc (<= RC) tile of C, vectors along the rows. */
static inline __attribute__((always_inline)) void
column_tile(int rows, int nc, int K, const float *A, long lda, const float *B, long ldb, float *C,
            long ldc, int accumulate, const float *bias, const er_act *act)
{
    vf acc[RC][2];
    float column[RR];
    for (int c = 0; c < nc; c++) {
        for (int i = 0; i < RR; i++)
            column[i] = i < rows ? (accumulate ? C[i * ldc + c] : (bias ? bias[i] : 0.0f)) : 0.0f;
        acc[c][0] = loadv(column);
        acc[c][1] = loadv(column + VL);
    }
    for (int k = 0; k < K; k++) {
        const float *a = A + k * lda;
        const float *b = B + k * ldb;
        vf a0 = rows >= VL ? loadv(a) : load_part(a, rows);
        vf a1 = load_rows(a, 1, rows);
        for (int c = 0; c < nc; c++) {
            vf bc = splatv(b[c]);
            acc[c][0] += a0 * bc;
            acc[c][1] += a1 * bc;
        }
    }
    for (int c = 0; c < nc; c++) {
        storev(column, activatev(acc[c][0], act));
        storev(column + VL, activatev(acc[c][1], act));
        for (int i = 0; i < rows; i++) C[i * ldc + c] = column[i];
    }
}

static void remainder_tile(int rows, int nc, int K, const float *A, long lda, const float *B, long ldb,
                           float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    if (rows == RR) {
        switch (nc) {
        case 4: column_tile(RR, 4, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        case 3: column_tile(RR, 3, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        case 2: column_tile(RR, 2, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        default: column_tile(RR, 1, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        }
    }
    column_tile(rows, nc, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
}

#else /* portable scalar fallback */

static void scalar_tile(int mr, int n, int K, const float *A, long lda, const float *B, long ldb,
                        float *C, long ldc, int accumulate, const float *bias)
{
    for (int i = 0; i < mr; i++) {
        for (int j = 0; j < n; j++) {
            float s = accumulate ? C[i * ldc + j] : (bias ? bias[i] : 0.0f);
            for (int k = 0; k < K; k++) s += A[k * lda + i] * B[k * ldb + j];
            C[i * ldc + j] = s;
        }
    }
}

static void full_tile(int mr, int K, const float *A, long lda, const float *B, long ldb, float *C,
                      long ldc, int accumulate, const float *bias, const er_act *act)
{
    (void)act;
    scalar_tile(mr, NR, K, A, lda, B, ldb, C, ldc, accumulate, bias);
}

static void remainder_tile(int rows, int nc, int K, const float *A, long lda, const float *B, long ldb,
                           float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    (void)act;
    scalar_tile(rows, nc, K, A, lda, B, ldb, C, ldc, accumulate, bias);
}
#endif

int er_gemm_vector_floats(void)
{
#if defined(__GNUC__)
    return VL;
#else
    return 1;
#endif
}

/* Columns per block: the K x NC slice of B stays in cache while every row tile of A passes. */
static int column_block(int K)
{
    int nc = (32 * 1024 / (K > 0 ? K : 1)) / NR * NR;
    return nc < NR ? NR : nc;
}

static int activation_in_registers(const er_act *act)
{
#if defined(__GNUC__)
    return act->kind == ER_ACT_RELU || act->kind == ER_ACT_CLIP;
#else
    (void)act;
    return 0;
#endif
}

/* Activations the tiles did not apply in registers. */
static void activate_rows(float *c, long ldc, int rows, int n, const er_act *act)
{
    if (!act || act->kind == ER_ACT_NONE || activation_in_registers(act)) return;
    for (int i = 0; i < rows; i++) er_apply_activation(c + i * ldc, n, act);
}

void er_gemm_tn(int M, int N, int K, const float *A, long lda, const float *B, long ldb,
                float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    int full = N / NR * NR;
    int nc = column_block(K);
    for (int j0 = 0; j0 < full; j0 += nc) {
        int j1 = full - j0 < nc ? full : j0 + nc;
        for (int m0 = 0; m0 < M; m0 += MR) {
            int mr = M - m0 < MR ? M - m0 : MR;
            const float *bias_m = bias ? bias + m0 : NULL;
            for (int n0 = j0; n0 < j1; n0 += NR) {
                float *c = C + m0 * ldc + n0;
                full_tile(mr, K, A + m0, lda, B + n0, ldb, c, ldc, accumulate, bias_m, act);
                activate_rows(c, ldc, mr, NR, act);
            }
        }
    }
    for (int n0 = full; n0 < N; n0 += RC) {
        int cols = N - n0 < RC ? N - n0 : RC;
        for (int m0 = 0; m0 < M; m0 += RR) {
            int rows = M - m0 < RR ? M - m0 : RR;
            float *c = C + m0 * ldc + n0;
            remainder_tile(rows, cols, K, A + m0, lda, B + n0, ldb, c, ldc, accumulate,
                           bias ? bias + m0 : NULL, act);
            activate_rows(c, ldc, rows, cols, act);
        }
    }
}
