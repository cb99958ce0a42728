/* Register-blocked GEMM with A transposed (k-major), the shape of 1x1 convolutions:
 * C (M x N) (+)= A^T (M x K) * B (K x N), where A[k*lda + m] holds the weights for output
 * channel m and input channel k, and B / C are channel-major pixel rows.
 *
 * Full column tiles: MR rows x NR = 2 vectors of columns, vectors along the columns (3 vectors
 * when N is 48..63, a 7x7 map). The last N % NR columns (7x7 maps, narrow bands) would waste most of such a tile, so they
 * are computed the other way round: RR = 2 vectors of rows x up to 8 columns, vectors along
 * the rows (A's k-major layout makes consecutive rows contiguous).
 * Vector width and tile heights per instruction set: the ISA section of kernels.h. */
#include <string.h>

#define ER_VECTOR_HELPERS
#include "kernels.h"

#define VL ER_VL /* kernels.h, with the tile heights MR and MR3 */
#define MR ER_GEMM_MR
#define NR (2 * VL)
#define RR (2 * VL) /* rows of a remainder-column tile */
/* A's rows lie lda floats apart, too far for the hardware prefetcher: weights arriving
 * from L3 are asked for PF rows ahead (4% on MobileNetV2's 1x1 shapes, most on 7x7 maps). */
#define PF 8
#define RC 8        /* columns of a remainder-column tile */

#if defined(__GNUC__)
/* One mr x NR tile; always inlined so that a constant mr unrolls fully. */
static inline __attribute__((always_inline)) void
tile(int mr, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
     int accumulate, const float *bias, const er_act *act)
{
    er_vf acc[MR][2];
    for (int i = 0; i < mr; i++) {
        if (accumulate) {
            acc[i][0] = er_loadv(C + i * ldc);
            acc[i][1] = er_loadv(C + i * ldc + VL);
        } else {
            acc[i][0] = acc[i][1] = er_splatv(bias ? bias[i] : 0.0f);
        }
    }
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *a = A + k * lda;
        __builtin_prefetch(a + PF * lda);
        er_vf b0 = er_loadv(b), b1 = er_loadv(b + VL);
        for (int i = 0; i < mr; i++) {
            er_vf ai = er_splatv(a[i]);
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        er_storev(C + i * ldc, er_activatev(acc[i][0], act));
        er_storev(C + i * ldc + VL, er_activatev(acc[i][1], act));
    }
}

/* mr x 3 vectors: the 48 columns of a 7x7 map in one tile (then one remainder column), with
 * fewer loads per multiply-add than 2-vector tiles (7x7 GEMMs of MobileNetV2: +10-20%). */
#define MR3 ER_GEMM_MR3
static inline __attribute__((always_inline)) void
tile3(int mr, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
      int accumulate, const float *bias, const er_act *act)
{
    er_vf acc[MR3][3];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < 3; v++)
            acc[i][v] = accumulate ? er_loadv(C + i * ldc + v * VL) : er_splatv(bias ? bias[i] : 0.0f);
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *a = A + k * lda;
        __builtin_prefetch(a + PF * lda);
        er_vf b0 = er_loadv(b), b1 = er_loadv(b + VL), b2 = er_loadv(b + 2 * VL);
        for (int i = 0; i < mr; i++) {
            er_vf ai = er_splatv(a[i]);
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
            acc[i][2] += ai * b2;
        }
    }
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < 3; v++) er_storev(C + i * ldc + v * VL, er_activatev(acc[i][v], act));
}

/* Rows [0, M) of the 3 * VL columns at B / C in tiles of constant height. */
static void wide_tiles(int M, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                       int accumulate, const float *bias, const er_act *act)
{
    int m0 = 0;
    for (; M - m0 >= MR3; m0 += MR3)
        tile3(MR3, K, A + m0, lda, B, ldb, C + m0 * ldc, ldc, accumulate, bias ? bias + m0 : NULL, act);
    for (; m0 < M; m0++)
        tile3(1, K, A + m0, lda, B, ldb, C + m0 * ldc, ldc, accumulate, bias ? bias + m0 : NULL, act);
}

static void full_tile(int mr, int K, const float *A, long lda, const float *B, long ldb, float *C,
                      long ldc, int accumulate, const float *bias, const er_act *act)
{
    switch (mr) {
#if MR == 12
    case 12: tile(12, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 11: tile(11, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 10: tile(10, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
    case 9: tile(9, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
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

static inline er_vf load_rows(const float *p, int half, int rows)
{
    int count = rows - half * VL;
    if (count >= VL) return er_loadv(p + half * VL);
    return er_load_part(p + half * VL, count > 0 ? count : 0);
}

/* rows (<= RR) x nc (<= RC) tile of C, vectors along the rows. */
static inline __attribute__((always_inline)) void
column_tile(int rows, int nc, int K, const float *A, long lda, const float *B, long ldb, float *C,
            long ldc, int accumulate, const float *bias, const er_act *act)
{
    er_vf acc[RC][2];
    float column[RR];
    for (int c = 0; c < nc; c++) {
        for (int i = 0; i < RR; i++)
            column[i] = i < rows ? (accumulate ? C[i * ldc + c] : (bias ? bias[i] : 0.0f)) : 0.0f;
        acc[c][0] = er_loadv(column);
        acc[c][1] = er_loadv(column + VL);
    }
    for (int k = 0; k < K; k++) {
        const float *a = A + k * lda;
        const float *b = B + k * ldb;
        __builtin_prefetch(a + PF * lda);
        er_vf a0 = rows >= VL ? er_loadv(a) : er_load_part(a, rows);
        er_vf a1 = load_rows(a, 1, rows);
        for (int c = 0; c < nc; c++) {
            er_vf bc = er_splatv(b[c]);
            acc[c][0] += a0 * bc;
            acc[c][1] += a1 * bc;
        }
    }
    for (int c = 0; c < nc; c++) {
        er_storev(column, er_activatev(acc[c][0], act));
        er_storev(column + VL, er_activatev(acc[c][1], act));
        for (int i = 0; i < rows; i++) C[i * ldc + c] = column[i];
    }
}

static void remainder_tile(int rows, int nc, int K, const float *A, long lda, const float *B, long ldb,
                           float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    if (rows == RR) {
        switch (nc) {
        case 8: column_tile(RR, 8, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        case 7: column_tile(RR, 7, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        case 6: column_tile(RR, 6, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
        case 5: column_tile(RR, 5, K, A, lda, B, ldb, C, ldc, accumulate, bias, act); return;
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

static void wide_tiles(int M, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                       int accumulate, const float *bias, const er_act *act)
{
    (void)act;
    scalar_tile(M, 3 * VL, K, A, lda, B, ldb, C, ldc, accumulate, bias);
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
    return er_act_in_registers(act);
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

/* Columns [0, full) in 2-vector tiles, column blocks of column_block(K). */
static void two_vector_tiles(int M, int full, int K, const float *A, long lda, const float *B, long ldb,
                             float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
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
}

void er_gemm_tn(int M, int N, int K, const float *A, long lda, const float *B, long ldb,
                float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    int full;
    if (N >= 3 * VL && N < 2 * NR) { /* 48..63 columns (7x7 maps): one 3-vector tile wide */
        full = 3 * VL;
        wide_tiles(M, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
        activate_rows(C, ldc, M, full, act);
    } else {
        full = N / NR * NR;
        two_vector_tiles(M, full, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
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

/* ---------------------------------------------------------------- er_gemm_tn_narrow (segment rows) */
#if defined(__GNUC__)
/* mr x nv vectors along the columns: vector 0 at column 0, vector 1 (nv 2) at column `second`. The
 * last vector's lanes in `keep` are columns an earlier vector or tile already wrote: C keeps them
 * (the vector only reads B inside the row, and no column is accumulated twice). */
static inline __attribute__((always_inline)) void
overlap_tile(int mr, int nv, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
             int accumulate, const float *bias, const er_act *act, int second, er_vi keep)
{
    er_vf acc[MR][2];
    int off[2] = {0, second};
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = accumulate ? er_loadv(C + i * ldc + off[v]) : er_splatv(bias ? bias[i] : 0.0f);
    for (int k = 0; k < K; k++) {
        const float *b = B + k * ldb;
        const float *a = A + k * lda;
        __builtin_prefetch(a + PF * lda);
        er_vf b0 = er_loadv(b), b1 = nv > 1 ? er_loadv(b + second) : b0;
        for (int i = 0; i < mr; i++) {
            er_vf ai = er_splatv(a[i]);
            acc[i][0] += ai * b0;
            if (nv > 1) acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        if (nv > 1) er_storev(c, er_activatev(acc[i][0], act));
        float *last = c + off[nv - 1];
        er_storev(last, er_selectv(keep, er_loadv(last), er_activatev(acc[i][nv - 1], act)));
    }
}

/* Rows [0, M) in tiles of MR, 2/3 MR, 1/3 MR and 1 rows (heights the compiler unrolls). */
static void overlap_tiles(int nv, int M, int K, const float *A, long lda, const float *B, long ldb, float *C,
                          long ldc, int accumulate, const float *bias, const er_act *act, int second, er_vi keep)
{
    enum { R1 = MR, R2 = MR * 2 / 3, R3 = MR / 3 };
    for (int m0 = 0; m0 < M;) {
        int left = M - m0, mr = left >= R1 ? R1 : left >= R2 ? R2 : left >= R3 ? R3 : 1;
        const float *a = A + m0, *bm = bias ? bias + m0 : NULL;
        float *c = C + m0 * ldc;
        if (nv == 1) {
            if (mr == R1) overlap_tile(R1, 1, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
            else if (mr == R2) overlap_tile(R2, 1, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
            else if (mr == R3) overlap_tile(R3, 1, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
            else overlap_tile(1, 1, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
        } else {
            if (mr == R1) overlap_tile(R1, 2, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
            else if (mr == R2) overlap_tile(R2, 2, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
            else if (mr == R3) overlap_tile(R3, 2, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
            else overlap_tile(1, 2, K, a, lda, B, ldb, c, ldc, accumulate, bm, act, second, keep);
        }
        m0 += mr;
    }
}

/* mr rows x the n (< VL) columns of a row narrower than one vector. A row of B loads as a whole vector while
 * that stays inside B (its lanes past n, other data, only reach lanes the part store drops), else in part. */
static inline __attribute__((always_inline)) void
part_tile(int mr, int n, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
          int accumulate, const float *bias, const er_act *act)
{
    er_vf acc[MR];
    for (int i = 0; i < mr; i++) acc[i] = accumulate ? er_load_part(C + i * ldc, n) : er_splatv(bias ? bias[i] : 0.0f);
    long span = (long)(K - 1) * ldb + n; /* floats of B the product reads: a whole vector inside them loads at once */
    for (int k = 0; k < K; k++) {
        const float *a = A + k * lda;
        er_vf b = k * ldb + VL <= span ? er_loadv(B + k * ldb) : er_load_part(B + k * ldb, n);
        for (int i = 0; i < mr; i++) acc[i] += er_splatv(a[i]) * b;
    }
    for (int i = 0; i < mr; i++) er_store_part(C + i * ldc, er_activatev(acc[i], act), n);
}

static void part_tiles(int M, int n, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                       int accumulate, const float *bias, const er_act *act)
{
    enum { R1 = MR, R2 = MR * 2 / 3, R3 = MR / 3 };
    for (int m0 = 0; m0 < M;) {
        int left = M - m0, mr = left >= R1 ? R1 : left >= R2 ? R2 : left >= R3 ? R3 : 1;
        const float *a = A + m0, *bm = bias ? bias + m0 : NULL;
        float *c = C + m0 * ldc;
        if (mr == R1) part_tile(R1, n, K, a, lda, B, ldb, c, ldc, accumulate, bm, act);
        else if (mr == R2) part_tile(R2, n, K, a, lda, B, ldb, c, ldc, accumulate, bm, act);
        else if (mr == R3) part_tile(R3, n, K, a, lda, B, ldb, c, ldc, accumulate, bm, act);
        else part_tile(1, n, K, a, lda, B, ldb, c, ldc, accumulate, bm, act);
        m0 += mr;
    }
    activate_rows(C, ldc, M, n, act);
}

/* The last N % NR columns of a row of at least VL columns: one or two vectors, the last ending at N. */
static void last_columns(int M, int N, int full, int K, const float *A, long lda, const float *B, long ldb,
                         float *C, long ldc, int accumulate, const float *bias, const er_act *act)
{
    int rest = N - full, nv = rest > VL ? 2 : 1;
    int start = nv == 2 ? full : N - VL;      /* column of vector 0 */
    int second = N - VL - start;              /* vector 1's offset from it (nv 2) */
    int done = nv == 2 ? full + VL : full;    /* columns before this are written when the last vector stores */
    int last = N - VL;                        /* column of the last vector */
    int lanes[VL];
    for (int j = 0; j < VL; j++) lanes[j] = last + j < done ? -1 : 0;
    er_vi keep;
    memcpy(&keep, lanes, sizeof keep);
    overlap_tiles(nv, M, K, A, lda, B + start, ldb, C + start, ldc, accumulate, bias, act, second, keep);
    activate_rows(C + full, ldc, M, rest, act);
}
#endif

/* er_gemm_tn for short rows (a streamed segment's one-row GEMMs: N = a row's width): the columns past
 * the last whole NR tile go in vectors along the columns too, the last one ending at column N and
 * keeping the columns before it (instead of er_gemm_tn's tiles along the rows, made for wide bands); a row
 * narrower than one vector in one partial vector. */
void er_gemm_tn_narrow(int M, int N, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                       int accumulate, const float *bias, const er_act *act)
{
#if defined(__GNUC__)
    if (N >= VL) {
        int full = N / NR * NR;
        if (full) two_vector_tiles(M, full, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
        if (N > full) last_columns(M, N, full, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
        return;
    }
    if (N > 0) {
        part_tiles(M, N, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
        return;
    }
#endif
    er_gemm_tn(M, N, K, A, lda, B, ldb, C, ldc, accumulate, bias, act);
}
