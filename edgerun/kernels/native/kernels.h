/* Native kernels of edgerun: plain C99 (GCC vector extensions when available).
 * No function here allocates memory: every buffer comes from the caller (the arena). */
#ifndef EDGERUN_KERNELS_H
#define EDGERUN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

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
    ER_ACT_SILU,        /* 8: silu (-) */
    ER_ACT_COUNT
};

typedef struct {
    int kind;      /* enum er_activation */
    float a, b;    /* the parameters in the order listed above; unused ones are 0 */
} er_act;
/* END GENERATED */

/* ---- ISA section (dispatch: setup.py compiles every source once per variant, see
 * docs/architecture.md). Vectors of the kernels (gemm.c, steps.c, depthwise.c): ER_VL floats,
 * and register tiles of ER_GEMM_MR rows x 2 vectors (gemm.c; its 3-vector tiles ER_GEMM_MR3 rows)
 * and ER_PW_MR rows x 2 vectors (steps.c's packed panels), fixed per variant at compile time.
 * Whatever depends on them (packed pointwise weights) must be asked of the running variant
 * (edgerun.kernels.native.isa / vector_floats, pw_info).
 * - x86-64 AVX-512: 16 floats (one zmm), 12-row tiles (24 of 32 zmm); packed panels of 8 rows
 *   (not 12: ShuffleNet's g=3 groups of 40 channels waste none).
 * - AVX2+FMA: 8 floats (one ymm), 6-row tiles (12 of 16 ymm).
 * - SSE2 (x86 without AVX): 4 floats (one xmm), the armv7 shape below; 8-float vectors split into
 *   xmm pairs ran MobileNetV2 6x slower than AVX2.
 * - aarch64 NEON: 4 floats (one q register), 12-row tiles: 24 accumulators + 2 for the B row + 1
 *   broadcast = 27 of the 32 q registers (3-vector tiles: 8 x 3 + 3 + 1 = 28).
 * - armv7-a NEON (16 q registers, like SSE2's 16 xmm): 4 floats, 6-row tiles: 12 + 2 + 1 = 15 (3-vector: 4 x 3 + 3 + 1).
 *   Compile with -mfpu=neon -mfloat-abi=hard -funsafe-math-optimizations: GCC emits NEON float
 *   arithmetic only with the latter (NEON flushes subnormals to zero); without it every vector
 *   operation becomes scalar VFP code.
 * The helpers below need GCC or clang and are only declared where ER_VECTOR_HELPERS is defined
 * before this header (elsewhere the unused vector functions would draw GCC's psABI notes on
 * machines without AVX). */
#if defined(__AVX512F__)
#define ER_VL 16
#define ER_GEMM_MR 12
#define ER_GEMM_MR3 8
#define ER_PW_MR 8
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define ER_VL 4
#define ER_GEMM_MR 12
#define ER_GEMM_MR3 8
#define ER_PW_MR 12
#elif (defined(__arm__) && (defined(__ARM_NEON) || defined(__ARM_NEON__))) || \
    ((defined(__x86_64__) || defined(__i386__)) && !defined(__AVX__))
#define ER_VL 4
#define ER_GEMM_MR 6
#define ER_GEMM_MR3 4
#define ER_PW_MR 6
#else
#define ER_VL 8
#define ER_GEMM_MR 6
#define ER_GEMM_MR3 4
#define ER_PW_MR 6
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

/* ReLU, clip and HardSwish applied in registers (er_act_in_registers); returns v unchanged for
 * other kinds (done after the store) and for a NULL act. */
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
    if (act->kind == ER_ACT_HARDSWISH) { /* the formula of activation.c's hardswish, lane by lane */
        er_vf zero = er_splatv(0.0f), one = er_splatv(1.0f);
        er_vf gate = v * er_splatv(1.0f / 6.0f) + er_splatv(0.5f);
        gate = er_selectv(gate < zero, zero, gate);
        gate = er_selectv(gate > one, one, gate);
        return v * gate;
    }
    return v;
}

/* The kinds er_activatev applies (the GEMM tiles skip the pass after the store for them). */
static inline int er_act_in_registers(const er_act *act)
{
    return act->kind == ER_ACT_RELU || act->kind == ER_ACT_CLIP || act->kind == ER_ACT_HARDSWISH;
}

/* The register tile of the packed GEMMs (conv.c, steps.c): one implementation, so both give the same bits.
 * c (rows x cols valid of mr x 2 vectors, row stride ldc) over one k-block of kc steps; a is a k-major
 * panel (mr floats per k, rows past `rows` zero); B's row k starts at b + offs[k] (b + k * ldb when offs
 * is NULL). first: acc starts from bias (+ sum, row stride ldc), else from c; last: the in-register
 * activation before the store. mr must be a constant after inlining (at most ER_TILE_MAX_MR); the
 * accumulators stay in registers for any rows and cols (edge tiles compute whole and store a part). */
#define ER_TILE_MAX_MR 12
/* The panel is asked for this many k ahead: weights used by few pixels (7x7 maps) stream from L3 */
#define ER_TILE_PREFETCH_K 64
static inline __attribute__((always_inline)) void
er_gemm_tile(int mr, int kc, const float *restrict a, const float *restrict b, long ldb, const long *restrict offs,
             float *c, long ldc, int rows, int cols, int first, int last, const float *bias, const float *sum,
             const er_act *act)
{
    er_vf acc[ER_TILE_MAX_MR][2];
    int full = cols == 2 * ER_VL, lo = cols < ER_VL ? cols : ER_VL, hi = cols > ER_VL ? cols - ER_VL : 0;
    for (int i = 0; i < mr; i++) {
        if (i >= rows) {
            acc[i][0] = acc[i][1] = er_splatv(0.0f);
        } else if (first) {
            acc[i][0] = acc[i][1] = er_splatv(bias ? bias[i] : 0.0f);
            if (sum && full) {
                acc[i][0] += er_loadv(sum + i * ldc);
                acc[i][1] += er_loadv(sum + i * ldc + ER_VL);
            } else if (sum) {
                acc[i][0] += er_load_part(sum + i * ldc, lo);
                acc[i][1] += er_load_part(sum + i * ldc + ER_VL, hi);
            }
        } else if (full) {
            acc[i][0] = er_loadv(c + i * ldc);
            acc[i][1] = er_loadv(c + i * ldc + ER_VL);
        } else {
            acc[i][0] = er_load_part(c + i * ldc, lo);
            acc[i][1] = er_load_part(c + i * ldc + ER_VL, hi);
        }
    }
    for (int k = 0; k < kc; k++) {
        const float *bk = offs ? b + offs[k] : b + k * ldb;
        er_vf b0 = er_loadv(bk), b1 = er_loadv(bk + ER_VL);
        const float *ak = a + k * mr;
        __builtin_prefetch(ak + ER_TILE_PREFETCH_K * mr);
        for (int i = 0; i < mr; i++) {
            er_vf ai = er_splatv(ak[i]);
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < mr; i++) {
        if (i >= rows) continue;
        er_vf v0 = acc[i][0], v1 = acc[i][1];
        if (last) {
            v0 = er_activatev(v0, act);
            v1 = er_activatev(v1, act);
        }
        if (full) {
            er_storev(c + i * ldc, v0);
            er_storev(c + i * ldc + ER_VL, v1);
        } else {
            er_store_part(c + i * ldc, v0, lo);
            er_store_part(c + i * ldc + ER_VL, v1, hi);
        }
    }
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
    /* derived by er_block_derive (the binding asserts they equal what Python derived) */
    int hidden_height, hidden_width, out_height, out_width;
} er_block_geom;

/* One band of a block run, as Python derives it (scheduler.blocks.band_row_ranges): output rows
 * [o0, o1), the hidden rows [h0, h1) they read, and by_channels (1: threads sharing the band split
 * it by channels, 0: by rows). Laid out as a row of the int32 (bands, 5) table of the binding. */
typedef struct {
    int o0, o1, h0, h1, by_channels;
} er_band;

/* How the threads share the block (the kernel contract's ThreadSplit, edgerun/kernels/native.py). */
enum er_split_mode { ER_SPLIT_SINGLE = 0, ER_SPLIT_BANDS = 1, ER_SPLIT_SHARED = 2 };
typedef struct {
    int mode;                              /* enum er_split_mode */
    int threads;
    int slices;                            /* per-thread slices of `expanded` and `depthwise` */
    long expanded_slice, depthwise_slice;  /* floats of one slice */
} er_block_split;

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

static inline int er_ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/* NULL when the chunk size, bands and split Python derived are consistent with the (derived)
 * geometry and in bounds: bands contiguous from row 0 to the output height, each band's hidden
 * rows inside the hidden rows and holding every row its depthwise reads, each band's chunk
 * inside one slice, the split mode matching threads and slices. Else a message. */
const char *er_block_check(const er_block_geom *g, int chunk, const er_band *bands, int nbands,
                           const er_block_split *split);

/* Runs the block for one image (after er_block_check; NULL, or why it did not run).
 * expanded: split->slices slices of split->expanded_slice floats (unused without expansion);
 * depthwise: split->slices slices of split->depthwise_slice floats. ER_SPLIT_BANDS: each thread
 * takes whole bands into its own slice (slice k); otherwise only slice 0 is used and the threads
 * split each (band, chunk) step as the band says (by channels or rows). The result has the same
 * bits for any thread count. */
const char *er_block_run(const er_block_geom *g, int chunk, const er_band *bands, int nbands,
                         const er_block_weights *w, const float *x, float *out, float *expanded,
                         float *depthwise, const er_block_split *split);

/* C[m*ldc + n] (+)= sum_k A[k*lda + m] * B[k*ldb + n]; without accumulate C starts from
 * bias[m] (or 0 when bias is NULL); act is applied to the result. */
void er_gemm_tn(int M, int N, int K, const float *A, long lda, const float *B, long ldb,
                float *C, long ldc, int accumulate, const float *bias, const er_act *act);

/* Floats per vector in the GEMM tiles (16 with AVX-512, 8 with GCC vectors, 1 scalar). */
int er_gemm_vector_floats(void);

/* er_gemm_tn for rows of a streamed segment (N: one row's width): the same product, the columns past the
 * last whole tile in vectors along the columns as well (gemm.c). */
void er_gemm_tn_narrow(int M, int N, int K, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                       int accumulate, const float *bias, const er_act *act);

void er_apply_activation(float *p, long n, const er_act *act);

/* out[c] = mean of x[c * pixels ...]; threads take ranges of channels. NULL, or the pool's error. */
const char *er_global_average_pool(const float *x, float *out, int channels, long pixels, int threads);

/* Depthwise conv of one channel plane (H, W) -> (Ho, Wo), bias + activation. */
void er_depthwise_plane(const float *src, int height, int width, const float *w, int k, int stride,
                        const int pads[4], float bias, const er_act *act, float *dst, int out_height,
                        int out_width);

/* Depthwise output rows [o0, o1) of one channel. src holds hidden rows starting at src_row0,
 * row stride = width; dst receives (o1 - o0) rows of out_width. */
void er_depthwise_rows(const float *src, int src_row0, int height, int width, const float *w, int k,
                       int stride, const int pads[4], float bias, const er_act *act, float *dst,
                       int o0, int o1, int out_width);

/* ---------------------------------------------------------------- streamed segments (segment.c)
 * Row kernels of a segment's calls (edgerun/kernels/native_segment.py). A tensor is whole
 * (ring 0: row r of channel c at base + c*H*W + r*W) or a ring of `ring` rows (row r in slot
 * r mod ring; a slot holds C x W floats, channel c at slot + c*W); base NULL: not present. */
#define ER_SEG_MAX_KERNEL 64 /* kernel extents the row tables (on the stack) hold */

enum er_seg_kind {
    ER_SEG_POINTWISE = 1, /* 1x1 conv, horizontal stride 1, no pads: GEMM on the input row in place */
    ER_SEG_DEPTHWISE = 2, /* group == input channels, any multiplier, kernel, stride, dilation */
    ER_SEG_IM2COL = 3,    /* any conv: one output row's im2col (scratch) then a GEMM per group */
    ER_SEG_MAXPOOL = 4,
    ER_SEG_AVGPOOL = 5,
    ER_SEG_ACTIVATION = 6,
    ER_SEG_ADD = 7,       /* input + skip tensor, row for row */
    ER_SEG_GAP = 8,       /* last step: adds each input row's sums into a whole (C, 1, 1) output */
    ER_SEG_BLOCK = 9      /* fused inverted-residual block by scatter (er_seg_block) */
};

/* A fused inverted-residual block run by scatter (numpy_segment.Block, scheduler.segments.BlockGeometry):
 * each hidden row, computed once `chunk` channels at a time (expansion + bias + act), is added into the
 * depthwise accumulators (state: state_rows slots of (hidden, out_width), output row o in slot
 * o mod state_rows) of the output rows whose windows hold it; output row o is finished (depthwise act,
 * projection over all hidden channels, bias, act, residual) right after its last hidden row. The step's
 * kh/kw/sh/sw/pad_top/pad_left are the depthwise's, weights/bias/act the projection's ((hidden, Cout),
 * k-major), skip the residual input (the step's own input), scratch one slice of a hidden row. */
typedef struct {
    int hidden, chunk, state_rows;
    int hidden_height, hidden_width;
    int ek, es, epad_top, epad_left; /* expansion kernel, stride, pads; ek 0: none (hidden = input) */
    const float *we;                 /* 1x1 stride 1 unpadded: (Cin, hidden) k-major; else (hidden, Cin, ek, ek) */
    const float *be, *wd, *bd;       /* expansion bias (or NULL), depthwise (hidden, kd, kd), its bias (or NULL) */
    er_act expand_act, dw_act;
    float *state;
    long state_floats;
} er_seg_block;

typedef struct {
    float *base;
    int ring; /* 0: whole; > 0: rows of the ring; -1: a ring of no rows (every row reads as padding) */
    int channels, height, width;
} er_seg_tensor;

typedef struct {
    int kind;                                /* enum er_seg_kind; 0: the step does not run here */
    int src, skip, dst;                      /* tensor indices (skip -1: none) */
    int out_channels, out_height, out_width;
    int kh, kw, sh, sw, dh, dw, pad_top, pad_left;
    int group, include_pad;
    const float *weights; /* conv: per group (Cin/group * kh * kw, M/group), k-major; depthwise (M, kh, kw) */
    const float *bias;    /* (M) or NULL */
    const float *aux;     /* average pooling: 1 / the window's columns, per output column */
    float *scratch;       /* im2col: (Cin * kh * kw, out_width) floats */
    long scratch_floats;
    er_act act;           /* applied to each output row (an Activation step fused into its producer) */
    er_seg_block block;   /* ER_SEG_BLOCK only */
} er_seg_step;

typedef struct {
    int step, lo, hi; /* step computes its output rows [lo, hi) (GlobalAveragePool: input rows) */
} er_seg_call;

/* NULL when the steps and calls are consistent with the tensors (shapes, kinds, extents, scratch,
 * rows), else a message. Every read and write then stays inside the tensors and the scratch. */
const char *er_seg_check(const er_seg_tensor *tensors, int ntensors, const er_seg_step *steps, int nsteps,
                         const er_seg_call *calls, int ncalls);

/* The binding's tables (edgerun/kernels/native_segment.py SEG_FIELDS): a tensor row is (place 0 absent,
 * 1 the input, 2 the output, 3 a ring; ring offset in floats into the arena; ring rows; C; H; W), a step
 * row the SEG_STEP_FIELDS fields of SEG_FIELDS (weights, bias, scales, activation params as float offsets
 * into params, scratch and block state as float offsets into the arena). */
#define ER_SEG_TENSOR_FIELDS 6
#define ER_SEG_STEP_FIELDS 43

/* Fills tensors and steps from the tables, pointing into x (x_floats), out, arena and params; NULL, or
 * what is out of range. Pointers only: the Python binding and the C runtime (which binds once at open to
 * check, then at every run with the run's arena) share it; er_seg_check then checks the geometry. */
const char *er_seg_bind(const int64_t *tensor_rows, int ntensors, const int64_t *step_rows, int nsteps,
                        const float *x, long x_floats, float *out, long out_floats, float *arena, long arena_floats,
                        const float *params, long nparams, er_seg_tensor *tensors, er_seg_step *steps);

/* Runs the calls in order on a team of `threads` (after er_seg_check); NULL, or the pool's error. */
const char *er_seg_run(const er_seg_tensor *tensors, const er_seg_step *steps, const er_seg_call *calls,
                       int ncalls, int threads);
/* ---------------------------------------------------------------- end of streamed segments */
/* ---- conv.c: dense and grouped 2-D convolution, band by band (dense-conv) */
typedef struct {
    int cin, height, width, cout, group;
    int kh, kw, sh, sw, dh, dw;
    int pads[4];                 /* top, left, bottom, right */
    int out_height, out_width;   /* asserted against the derivation by er_conv_check */
    int band_rows;               /* output rows per band: the cols scratch holds one band ... */
    int slab_groups;             /* ... of this many groups' taps (at most 256 taps of each) at a time */
} er_conv_geom;

/* NULL when the geometry is valid and consistent, else a message. */
const char *er_conv_check(const er_conv_geom *g);
/* Floats of the packed weights (er_conv_pack) and of the cols scratch (one band, all groups). */
long er_conv_packed_floats(const er_conv_geom *g);
long er_conv_scratch_floats(const er_conv_geom *g);
/* w (cout, cin/group * kh * kw) row-major into the GEMM's panels. */
void er_conv_pack(const er_conv_geom *g, const float *w, float *packed);
/* out (cout, ho, wo) = act(conv(x) + bias + sum) for one image; bias and sum may be NULL; cols holds
 * er_conv_scratch_floats floats. Threads share each band (same bits for any count). NULL or an error. */
const char *er_conv_run(const er_conv_geom *g, const float *packed, const float *x, const float *bias,
                        const float *sum, float *out, float *cols, const er_act *act, int threads);
/* ---- end conv.c */

#endif
