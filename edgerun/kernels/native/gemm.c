/* Register-blocked GEMM with A transposed (k-major), the shape of 1x1 convolutions:
 * C (M x N) (+)= A^T (M x K) * B (K x N), where A[k*lda + m] holds the weights for output
 * channel m and input channel k, and B / C are channel-major pixel rows. */
#include <string.h>

#include "kernels.h"

#define MR 4
#define NR 16

#if defined(__GNUC__)
typedef float v8f __attribute__((vector_size(32)));

static inline v8f load8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline v8f splat8(float s) { return (v8f){s, s, s, s, s, s, s, s}; }

/* The first n (0..8) floats of p, zero-padded. */
static inline v8f load_part(const float *p, int n)
{
    float tmp[8] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return load8(tmp);
}

static inline void store_part(float *p, v8f v, int n)
{
    float tmp[8];
    store8(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}

static inline v8f load_cols(const float *p, int half, int n)
{
    int first = half * 8, count = n - first;
    if (count >= 8) return load8(p + first);
    return load_part(p + first, count > 0 ? count : 0);
}

static inline void store_cols(float *p, v8f v, int half, int n)
{
    int first = half * 8, count = n - first;
    if (count >= 8) store8(p + first, v);
    else if (count > 0) store_part(p + first, v, count);
}

/* One mr x n tile (mr <= MR, n <= NR); always inlined so constant mr / n unroll fully. */
static inline __attribute__((always_inline)) void
tile(int mr, int n, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
     int accumulate, const float *bias)
{
    v8f acc[MR][2];
    for (int i = 0; i < mr; i++) {
        if (accumulate) {
            acc[i][0] = load_cols(C + i * ldc, 0, n);
            acc[i][1] = load_cols(C + i * ldc, 1, n);
        } else {
            float b = bias ? bias[i] : 0.0f;
            acc[i][0] = acc[i][1] = splat8(b);
        }
    }
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *a = A + k * lda;
        v8f b0 = load_cols(b, 0, n), b1 = load_cols(b, 1, n);
        for (int i = 0; i < mr; i++) {
            v8f ai = splat8(a[i]);
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        store_cols(C + i * ldc, acc[i][0], 0, n);
        store_cols(C + i * ldc, acc[i][1], 1, n);
    }
}

static void tile_rows(int mr, int n, int K, const float *A, long lda, const float *B, long ldb,
                      float *C, long ldc, int accumulate, const float *bias)
{
    if (n == NR) {
        switch (mr) {
        case 4: tile(4, NR, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
        case 3: tile(3, NR, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
        case 2: tile(2, NR, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
        default: tile(1, NR, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
        }
    }
    switch (mr) {
    case 4: tile(4, n, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
    case 3: tile(3, n, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
    case 2: tile(2, n, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
    default: tile(1, n, K, A, lda, B, ldb, C, ldc, accumulate, bias); return;
    }
}

#else /* portable scalar fallback */

static void tile_rows(int mr, int n, int K, const float *A, long lda, const float *B, long ldb,
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
#endif

void er_gemm_tn(int M, int N, int K, const float *A, long lda, const float *B, long ldb,
                float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    for (int n0 = 0; n0 < N; n0 += NR) {
        int n = N - n0 < NR ? N - n0 : NR;
        for (int m0 = 0; m0 < M; m0 += MR) {
            int mr = M - m0 < MR ? M - m0 : MR;
            float *c = C + m0 * ldc + n0;
            tile_rows(mr, n, K, A + m0, lda, B + n0, ldb, c, ldc, accumulate, bias ? bias + m0 : NULL);
            if (act && act->kind != ER_ACT_NONE)
                for (int i = 0; i < mr; i++) er_apply_activation(c + i * ldc, n, act);
        }
    }
}
