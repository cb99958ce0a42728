/* Native kernels of edgerun: plain C99 (GCC vector extensions when available).
 * No function here allocates memory: every buffer comes from the caller (the arena). */
#ifndef EDGERUN_KERNELS_H
#define EDGERUN_KERNELS_H

#include <stddef.h>

/* Activation codes: the table in edgerun/kernels/activations.py, in its order (do not edit by hand). */
/* BEGIN GENERATED from the table in edgerun/kernels/activations.py by activations.write_header() */
enum er_activation {
    ER_ACT_NONE,        /* 0: none (-) */
    ER_ACT_RELU,        /* 1: relu (-) */
    ER_ACT_CLIP,        /* 2: clip (min, max) */
    ER_ACT_HARDSWISH,   /* 3: hardswish (-) */
    ER_ACT_HARDSIGMOID, /* 4: hardsigmoid (alpha, beta) */
    ER_ACT_LEAKYRELU,   /* 5: leakyrelu (alpha) */
    ER_ACT_SIGMOID,     /* 6: sigmoid (-) */
    ER_ACT_ELU,         /* 7: elu (alpha) */
    ER_ACT_COUNT
};

typedef struct {
    int kind;      /* enum er_activation */
    float a, b;    /* the parameters in the order listed above; unused ones are 0 */
} er_act;
/* END GENERATED */

/* Vectors of the GEMM kernels (gemm.c, steps.c): ER_VL floats, 16 when compiled for AVX-512,
 * else 8 (AVX2, SSE, NEON via GCC vector extensions). The helpers below need GCC and are only
 * declared where ER_VECTOR_HELPERS is defined before this header (elsewhere the unused vector
 * functions would draw GCC's psABI notes on machines without AVX). */
#if defined(__AVX512F__)
#define ER_VL 16
#else
#define ER_VL 8
#endif

#if defined(__GNUC__) && defined(ER_VECTOR_HELPERS)
#include <string.h>

typedef float er_vf __attribute__((vector_size(ER_VL * 4)));
typedef int er_vi __attribute__((vector_size(ER_VL * 4)));

static inline er_vf er_loadv(const float *p) { er_vf v; memcpy(&v, p, sizeof v); return v; }
static inline void er_storev(float *p, er_vf v) { memcpy(p, &v, sizeof v); }
/* s - 0 folds to a plain broadcast (0 + s would not: -0.0 + 0 is +0.0). */
static inline er_vf er_splatv(float s) { return s - (er_vf){0}; }
static inline er_vf er_selectv(er_vi mask, er_vf a, er_vf b)
{
    return (er_vf)((mask & (er_vi)a) | (~mask & (er_vi)b));
}

/* The first n (0..ER_VL) floats of p, zero-padded. */
static inline er_vf er_load_part(const float *p, int n)
{
    float tmp[ER_VL] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return er_loadv(tmp);
}

/* The first n (0..ER_VL) floats of v to p. */
static inline void er_store_part(float *p, er_vf v, int n)
{
    float tmp[ER_VL];
    er_storev(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}

/* ReLU and clip applied in registers; returns v unchanged for other kinds (done after the
 * store) and for a NULL act. */
static inline er_vf er_activatev(er_vf v, const er_act *act)
{
    if (!act) return v;
    if (act->kind == ER_ACT_RELU) {
        er_vf zero = er_splatv(0.0f);
        return er_selectv(v < zero, zero, v); /* NaN passes through */
    }
    if (act->kind == ER_ACT_CLIP) {
        er_vf lo = er_splatv(act->a), hi = er_splatv(act->b);
        v = er_selectv(v < lo, lo, v);
        return er_selectv(v > hi, hi, v);
    }
    return v;
}
#endif

typedef struct {
    int in_channels, in_height, in_width;
    int hidden_channels;
    int expand_kernel, expand_stride;      /* expand_kernel 0: no expansion */
    int expand_pads[4];                    /* top, left, bottom, right */
    int dw_kernel, dw_stride;
    int dw_pads[4];
    int out_channels;
    int residual;
    /* derived by er_block_derive */
    int hidden_height, hidden_width, out_height, out_width;
} er_block_geom;

typedef struct {
    const float *we;     /* (E, Cin, ke, ke) or NULL */
    const float *we_t;   /* (Cin*ke*ke, E) or NULL */
    const float *be;     /* (E) or NULL */
    const float *wd;     /* (E, kd, kd) */
    const float *bd;     /* (E) */
    const float *wp_t;   /* (E, Cout) */
    const float *bp;     /* (Cout) */
    er_act expand_act, dw_act;
} er_block_weights;

/* Fills the derived sizes; returns NULL when the geometry is valid, else a message. */
const char *er_block_derive(er_block_geom *g);
int er_block_hidden_rows(const er_block_geom *g, int band_rows);
int er_ceil_div(int a, int b);

/* Runs the block for one image. expanded: slices * ceil(E/t) * hidden_rows(band_rows) * Wh
 * floats (unused without expansion); depthwise: slices * ceil(E/t) * band_rows * Wo floats.
 * With threads > 1, slices >= threads and at least `threads` bands, each thread takes whole
 * bands into its own slice (slice k: the k-th run of ceil(E/t) * ... floats); otherwise only
 * slice 0 is used and the threads split each (band, chunk) step by channels (narrow bands) or
 * by rows. The result has the same bits for any thread count. */
void er_block_run(const er_block_geom *g, int t, int band_rows, const er_block_weights *w,
                  const float *x, float *out, float *expanded, float *depthwise, int threads,
                  int slices);

/* Persistent thread pool (workers start on first use and stay; waits spin briefly, then sleep).
 * A job: team = er_team_begin(threads) (NULL: run on the calling thread alone, also while the
 * pool serves another caller); er_team_run(team, fn, ctx, items) runs fn(ctx, i) for every
 * i in [0, items) (items <= threads), on the caller and up to threads - 1 workers, and
 * returns when all are done; item i goes to participant i (the caller is 0) unless another
 * is free first. er_team_end(team). Items of one call must be independent of each other. */
typedef struct er_team er_team;
typedef void (*er_item_fn)(void *ctx, int item);
er_team *er_team_begin(int threads);
void er_team_run(er_team *team, er_item_fn fn, void *ctx, int items);
void er_team_end(er_team *team);
/* One phase of `parts` items on a team of that many threads (begin, run, end). */
void er_run_parts(er_item_fn fn, void *ctx, int parts);
int er_pool_threads(void);     /* 1 + workers started so far */
void er_pool_shutdown(void);   /* joins the workers (at exit); later jobs run on one thread */

/* Steps whose work is under 2 * this many multiply-adds run on one thread; value >= 0 sets
 * it (tests set 0 to split every step), returns the previous value. */
long long er_block_min_part_macs(long long value);

/* How many parts (1 ..min(threads, most)) `macs` multiply-adds are worth splitting into: each
 * part gets at least about er_block_min_part_macs of them. */
int er_worth_parts(double macs, int threads, int most);

/* Part k of `parts` near-equal contiguous ranges of [0, n): [*a, *b). */
void er_share(int n, int parts, int k, int *a, int *b);

/* C[m*ldc + n] (+)= sum_k A[k*lda + m] * B[k*ldb + n]; without accumulate C starts from
 * bias[m] (or 0 when bias is NULL); act is applied to the result. */
void er_gemm_tn(int M, int N, int K, const float *A, long lda, const float *B, long ldb,
                float *C, long ldc, int accumulate, const float *bias, const er_act *act);

/* Floats per vector in the GEMM tiles (16 with AVX-512, 8 with GCC vectors, 1 scalar). */
int er_gemm_vector_floats(void);

void er_apply_activation(float *p, long n, const er_act *act);

/* out[c] = mean of x[c * pixels ...]; threads take ranges of channels. */
void er_global_average_pool(const float *x, float *out, int channels, long pixels, int threads);

/* Depthwise conv of one channel plane (H, W) -> (Ho, Wo), bias + activation. */
void er_depthwise_plane(const float *src, int height, int width, const float *w, int k, int stride,
                        const int pads[4], float bias, const er_act *act, float *dst, int out_height,
                        int out_width);

/* Depthwise output rows [o0, o1) of one channel. src holds hidden rows starting at src_row0,
 * row stride = width; dst receives (o1 - o0) rows of out_width. */
void er_depthwise_rows(const float *src, int src_row0, int height, int width, const float *w, int k,
                       int stride, const int pads[4], float bias, const er_act *act, float *dst,
                       int o0, int o1, int out_width);

#endif
