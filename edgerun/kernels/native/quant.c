/* The int8 inverted-residual block (edgerun's QInvertedResidual step) in C: expansion (1x1 or any
 * square group-1 conv, the stem too), depthwise, projection (t chunks summed exactly), residual add,
 * band of output rows by band, in the scratch edgerun/kernels/steps_quant.py plans for it.
 *
 * The arithmetic is edgerun/kernels/steps_quant.py's, bit for bit:
 * - a convolution's sum of (x - x_zp) * (w - w_zp) is exact (int32 here), plus the int32 bias, and is
 *   requantised as saturate(round_half_even(float32(acc) * M) + y_zp) with M per output channel;
 * - the residual add dequantises both sides in float32, adds, divides by the output scale, rounds half to
 *   even, adds the zero point and saturates (no fused multiply-add: see FP_CONTRACT below);
 * - a float input is quantised as saturate(round_half_even(x / scale) + zp).
 *
 * GEMM operands: activations as unsigned bytes (int8 values flipped by 0x80, so x - x_zp = u - u_zp),
 * packed k-group by k-group: xp[(g * P + p) * 4 + b] holds input k = 4g + b of pixel p, k past K holding
 * u_zp. Weights w - w_zp in rows of kpad (a multiple of 4) zero-padded columns; the caller folds
 * -u_zp * sum_k (w - w_zp) into the bias, so acc = bias' + sum_k (w - w_zp) * u exactly. With AVX-512
 * VNNI (vpdpbusd: u8 x s8, four products per int32 lane, not saturating) when the CPU has it and the
 * centred weights fit int8; else a portable int32 loop over int16 weights. */
#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__AVX512F__)
#define ER_Q_VNNI 1
#include <immintrin.h>
#endif

#define Q_PIXELS 64          /* pixels per tile of the portable GEMM (int32 accumulators on the stack) */
#define Q_MAX_WIDTH 1024     /* widest depthwise output row (edgerun/kernels/steps_quant.py checks) */
#define Q_MAX_SPAN (2 * Q_MAX_WIDTH + 64)  /* input columns one depthwise output row reads, padding included */
#define Q_VNNI_ROWS_PAD 8    /* weight rows past the last channel, zero (read, never stored, by qgemm_vnni) */

static inline uint8_t requant1(int32_t acc, float mult, float zero, float lo, float hi)
{
    float v = nearbyintf((float)acc * mult) + zero;
    v = v < lo ? lo : (v > hi ? hi : v);
    return (uint8_t)(int32_t)v;
}

/* out[q] = requant1(acc[q] + 0, mult, ...) ^ flip for q < n: vectorised where the variant allows (the same
 * operations, lane by lane: float32 convert, multiply, round half to even, add, clamp). */
static void requant_row(const int32_t *acc, int n, float mult, float zero, float lo, float hi, uint8_t flip,
                        uint8_t *out)
{
    int q = 0;
#if defined(__AVX512F__)
    __m512 vm = _mm512_set1_ps(mult), vz = _mm512_set1_ps(zero), vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    __m512i vf = _mm512_set1_epi32(flip);
    for (; q + 16 <= n; q += 16) {
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512((const void *)(acc + q))), vm);
        v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
        v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
        __m512i i = _mm512_xor_si512(_mm512_cvtps_epi32(v), vf);
        _mm_storeu_si128((__m128i *)(out + q), _mm512_cvtepi32_epi8(i));
    }
    if (q < n) {    /* the tail through a masked load and a 16-byte bounce */
        __mmask16 mask = (__mmask16)((1u << (n - q)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, acc + q)), vm);
        v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
        v = _mm512_min_ps(_mm512_max_ps(v, vlo), vhi);
        uint8_t bounce[16];
        _mm_storeu_si128((__m128i *)bounce, _mm512_cvtepi32_epi8(_mm512_xor_si512(_mm512_cvtps_epi32(v), vf)));
        memcpy(out + q, bounce, (size_t)(n - q));
        q = n;
    }
#endif
    for (; q < n; q++) out[q] = (uint8_t)(requant1(acc[q], mult, zero, lo, hi) ^ flip);
}

/* ---- the GEMM of one stage over one packed tile of n pixels */

typedef struct {
    const int8_t *w8;       /* (rows, ldw) centred weights as int8, or NULL */
    const int16_t *w16;     /* (rows, ldw) centred weights as int16 */
    int ldw;                /* kpad */
    const int32_t *bias;    /* bias' per output channel */
    const float *mult;
    float zero, lo, hi;
} q_stage;

typedef struct {
    const uint8_t *xp;      /* packed pixels, stride P */
    int P, n, groups;       /* pack stride, pixels, k groups of 4 */
    int col0;               /* first weight column (a multiple of 4) */
    int co0, co1;           /* output channels */
    uint8_t *out;           /* requantised bytes: out[(co - co0) * ostride + p] */
    ptrdiff_t ostride;
    int32_t *acc;           /* or accumulate raw sums: acc[co * astride + p] += sum (no bias) */
    ptrdiff_t astride;
} q_gemm_call;

static void qgemm_portable(const q_stage *s, const q_gemm_call *c)
{
    int32_t acc[Q_PIXELS];
    for (int p0 = 0; p0 < c->n; p0 += Q_PIXELS) {
        int np = c->n - p0 < Q_PIXELS ? c->n - p0 : Q_PIXELS;
        for (int co = c->co0; co < c->co1; co++) {
            const int16_t *w = s->w16 + (ptrdiff_t)co * s->ldw + c->col0;
            for (int p = 0; p < np; p++) acc[p] = 0;
            for (int g = 0; g < c->groups; g++) {
                const uint8_t *x = c->xp + ((ptrdiff_t)g * c->P + p0) * 4;
                int32_t w0 = w[4 * g], w1 = w[4 * g + 1], w2 = w[4 * g + 2], w3 = w[4 * g + 3];
                for (int p = 0; p < np; p++)
                    acc[p] += w0 * x[4 * p] + w1 * x[4 * p + 1] + w2 * x[4 * p + 2] + w3 * x[4 * p + 3];
            }
            if (c->acc) {
                int32_t *a = c->acc + (ptrdiff_t)co * c->astride + p0;
                for (int p = 0; p < np; p++) a[p] += acc[p];
                continue;
            }
            uint8_t *o = c->out + (ptrdiff_t)(co - c->co0) * c->ostride + p0;
            for (int p = 0; p < np; p++) o[p] = requant1(acc[p] + s->bias[co], s->mult[co], s->zero, s->lo, s->hi);
        }
    }
}

#ifdef ER_Q_VNNI
#define Q_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define Q_VNNI_ROWS 8

Q_VNNI_TARGET static inline void vnni_finish(const q_stage *s, const q_gemm_call *c, int co, int p,
                                             __m512i sum, __mmask16 mask)
{
    if (!mask) return;
    if (c->acc) {
        int32_t *a = c->acc + (ptrdiff_t)co * c->astride + p;
        _mm512_mask_storeu_epi32(a, mask, _mm512_add_epi32(_mm512_maskz_loadu_epi32(mask, a), sum));
        return;
    }
    __m512 v = _mm512_cvtepi32_ps(_mm512_add_epi32(sum, _mm512_set1_epi32(s->bias[co])));
    v = _mm512_mul_ps(v, _mm512_set1_ps(s->mult[co]));
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_add_ps(v, _mm512_set1_ps(s->zero));
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(s->lo)), _mm512_set1_ps(s->hi));
    __m128i bytes = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));
    _mm_mask_storeu_epi8(c->out + (ptrdiff_t)(co - c->co0) * c->ostride + p, mask, bytes);
}

static inline __mmask16 pixel_mask(int left)
{
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/* Rows of weights past co1 are read (the caller pads the weight rows by Q_VNNI_ROWS_PAD) but not stored.
 * R rows of weights by V vectors of 16 pixels: R * V accumulators, unrolled. */
#define Q_VNNI_KERNEL(NAME, R, V)                                                                              \
    Q_VNNI_TARGET static void NAME(const q_stage *s, const q_gemm_call *c, int co_begin, int co_end)          \
    {                                                                                                           \
        for (int p = 0; p < c->n; p += 16 * (V)) {                                                              \
            __mmask16 mask[2] = {pixel_mask(c->n - p), pixel_mask(c->n - p - 16)};                              \
            for (int co = co_begin; co < co_end; co += (R)) {                                                  \
                __m512i acc[R][V];                                                                              \
                _Pragma("GCC unroll 16") for (int r = 0; r < (R); r++)                                          \
                    _Pragma("GCC unroll 2") for (int v = 0; v < (V); v++) acc[r][v] = _mm512_setzero_si512();   \
                const int8_t *w = s->w8 + (ptrdiff_t)co * s->ldw + c->col0;                                     \
                const uint8_t *x = c->xp + (ptrdiff_t)p * 4;                                                   \
                ptrdiff_t xstep = (ptrdiff_t)c->P * 4;                                                          \
                for (int g = 0; g < c->groups; g++, x += xstep) {                                               \
                    __m512i xv[V];                                                                              \
                    _Pragma("GCC unroll 2") for (int v = 0; v < (V); v++)                                       \
                        xv[v] = _mm512_maskz_loadu_epi32(mask[v], x + 64 * v);                                  \
                    _Pragma("GCC unroll 16") for (int r = 0; r < (R); r++) {                                    \
                        int32_t word;                                                                           \
                        memcpy(&word, w + (ptrdiff_t)r * s->ldw + 4 * g, 4);                                    \
                        __m512i wv = _mm512_set1_epi32(word);                                                   \
                        _Pragma("GCC unroll 2") for (int v = 0; v < (V); v++)                                   \
                            acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], xv[v], wv);                              \
                    }                                                                                           \
                }                                                                                               \
                int rows = co_end - co < (R) ? co_end - co : (R);                                               \
                for (int r = 0; r < rows; r++)                                                                  \
                    for (int v = 0; v < (V); v++) vnni_finish(s, c, co + r, p + 16 * v, acc[r][v], mask[v]);   \
            }                                                                                                   \
        }                                                                                                       \
    }

Q_VNNI_KERNEL(qgemm_vnni_8x2, 8, 2)
Q_VNNI_KERNEL(qgemm_vnni_4x2, 4, 2)
Q_VNNI_KERNEL(qgemm_vnni_8x1, 8, 1)
Q_VNNI_KERNEL(qgemm_vnni_4x1, 4, 1)

Q_VNNI_TARGET static void qgemm_vnni(const q_stage *s, const q_gemm_call *c)
{
    int channels = c->co1 - c->co0, tail = channels % Q_VNNI_ROWS;
    int split = tail && tail <= 4 ? c->co1 - tail : c->co1;
    int narrow = c->n <= 16;
    if (split > c->co0) (narrow ? qgemm_vnni_8x1 : qgemm_vnni_8x2)(s, c, c->co0, split);
    if (split < c->co1) (narrow ? qgemm_vnni_4x1 : qgemm_vnni_4x2)(s, c, split, c->co1);
}
#endif

static int vnni_available(void)
{
#ifdef ER_Q_VNNI
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl");
    }
    return known;
#else
    return 0;
#endif
}

static void qgemm(const q_stage *s, const q_gemm_call *c)
{
#ifdef ER_Q_VNNI
    if (s->w8 && vnni_available()) {
        qgemm_vnni(s, c);
        return;
    }
#endif
    qgemm_portable(s, c);
}

/* ---- the block */

enum {
    G_CIN, G_H, G_W, G_HIDDEN, G_COUT, G_HAS_EXPAND, G_EK, G_ES, G_EPT, G_EPL, G_HH, G_HW, G_DK, G_DS, G_DPT,
    G_DPL, G_HO, G_WO, G_RESIDUAL, G_ROWS, G_CHUNK, G_X_FLOAT, G_X_SIGNED, G_H_SIGNED, G_D_SIGNED, G_P_SIGNED,
    G_Y_SIGNED, G_E_KPAD, G_P_KPAD, G_X_ZERO, G_H_ZERO, G_D_ZERO, G_P_ZERO, G_Y_ZERO, G_D_LO, G_D_HI,
    G_Y_LO, G_Y_HI, G_TILE_PIXELS, G_COUNT
};
enum { F_X_SCALE, F_P_SCALE, F_Y_SCALE, F_E_ZERO, F_E_LO, F_E_HI, F_P_LO, F_P_HI, F_COUNT };

typedef struct {
    const int *g;
    const float *f;
    const void *x;          /* (cin, H, W) int8/uint8, or float32 quantised on the fly */
    uint8_t *y;             /* (cout, ho, wo) */
    q_stage expand, proj;
    const int32_t *dw_w, *dw_bias;
    const float *dw_mult;
    uint8_t *hidden, *dw, *projected, *tile, *xq;
    ptrdiff_t tile_bytes;
    int32_t *pacc;
} q_block;

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* The expansion's input: the block input's integer rows, or the band's rows the block quantised from its
 * float input into `xq`; rows [row0, row0 + rows) of every channel held, `plane` bytes apart. */
typedef struct {
    const uint8_t *data;
    int row0, rows;
    ptrdiff_t plane;
} q_source;

static q_source band_source(const q_block *b, int h0, int h1)
{
    const int *g = b->g;
    q_source src = {(const uint8_t *)b->x, 0, g[G_H], (ptrdiff_t)g[G_H] * g[G_W]};
    if (!g[G_X_FLOAT]) return src;
    int s = g[G_ES], k = g[G_EK], H = g[G_H], W = g[G_W];
    int i0 = h0 * s - g[G_EPT] > 0 ? h0 * s - g[G_EPT] : 0;
    int i1 = (h1 - 1) * s - g[G_EPT] + k < H ? (h1 - 1) * s - g[G_EPT] + k : H;
    float scale = b->f[F_X_SCALE], zero = (float)g[G_X_ZERO];
    float lo = g[G_X_SIGNED] ? -128.0f : 0.0f, hi = g[G_X_SIGNED] ? 127.0f : 255.0f;
    const float *x = (const float *)b->x;
    ptrdiff_t plane = (ptrdiff_t)(i1 - i0) * W;
    for (int c = 0; c < g[G_CIN]; c++) {
        const float *from = x + ((ptrdiff_t)c * H + i0) * W;
        uint8_t *to = b->xq + c * plane;
        for (ptrdiff_t i = 0; i < plane; i++) {
            float v = nearbyintf(from[i] / scale) + zero;
            v = v < lo ? lo : (v > hi ? hi : v);
            to[i] = (uint8_t)(int32_t)v;
        }
    }
    q_source band = {b->xq, i0, i1 - i0, plane};
    return band;
}

/* 1x1 stride 1 unpadded: pixels [p0, p0 + n) of the rows from h0 are contiguous in every channel. */
static void pack_direct(const q_block *b, const q_source *src, int h0, int p0, int n, uint8_t *xp, int P)
{
    const int *g = b->g;
    int cin = g[G_CIN];
    uint32_t flip = g[G_X_SIGNED] ? 0x80808080u : 0;
    uint8_t uz = (uint8_t)(g[G_X_ZERO] ^ (g[G_X_SIGNED] ? 0x80 : 0));
    const uint8_t *base = src->data + (ptrdiff_t)(h0 - src->row0) * g[G_W] + p0;
    for (int grp = 0; grp < g[G_E_KPAD] / 4; grp++) {
        const uint8_t *r[4];
        uint32_t fill = 0;
        for (int i = 0; i < 4; i++) {
            int c = 4 * grp + i;
            r[i] = c < cin ? base + c * src->plane : NULL;
            if (!r[i]) fill |= (uint32_t)uz << (8 * i);
        }
        uint32_t *dst = (uint32_t *)(xp + (ptrdiff_t)grp * P * 4);
        if (r[3]) {
            for (int p = 0; p < n; p++)
                dst[p] = ((uint32_t)r[0][p] | (uint32_t)r[1][p] << 8 | (uint32_t)r[2][p] << 16 |
                          (uint32_t)r[3][p] << 24) ^ flip;
        } else {
            for (int p = 0; p < n; p++) {
                uint32_t word = fill;
                for (int i = 0; i < 4; i++)
                    if (r[i]) word |= (uint32_t)(uint8_t)(r[i][p] ^ (flip & 0xFF)) << (8 * i);
                dst[p] = word;
            }
        }
    }
}

/* Any square conv: every tap gathered (the padding holding the zero point). */
static void pack_gather(const q_block *b, const q_source *src, int h0, int p0, int n, uint8_t *xp, int P)
{
    const int *g = b->g;
    int k = g[G_EK], s = g[G_ES], cin = g[G_CIN], H = g[G_H], W = g[G_W], hw = g[G_HW];
    int kpad = g[G_E_KPAD];
    uint8_t flip = g[G_X_SIGNED] ? 0x80 : 0;
    uint8_t uz = (uint8_t)(g[G_X_ZERO] ^ flip);
    ptrdiff_t gstride = (ptrdiff_t)P * 4;
    int oh = h0 + p0 / hw, ow = p0 % hw;
    for (int p = 0; p < n; p++, ow++) {
        if (ow == hw) {
            ow = 0;
            oh++;
        }
        int ih0 = oh * s - g[G_EPT], iw0 = ow * s - g[G_EPL];
        int inside = ih0 >= 0 && ih0 + k <= H && iw0 >= 0 && iw0 + k <= W;
        uint8_t *dst = xp + (ptrdiff_t)p * 4;
        int kk = 0;
        for (int c = 0; c < cin; c++) {
            const uint8_t *base = src->data + c * src->plane + (ptrdiff_t)(ih0 - src->row0) * W + iw0;
            for (int i = 0; i < k; i++)
                for (int j = 0; j < k; j++, kk++) {
                    int ih = ih0 + i, iw = iw0 + j;
                    uint8_t v = inside || (ih >= 0 && ih < H && iw >= 0 && iw < W)
                                    ? (uint8_t)(base[(ptrdiff_t)i * W + j] ^ flip) : uz;
                    dst[(kk >> 2) * gstride + (kk & 3)] = v;
                }
        }
        for (; kk < kpad; kk++) dst[(kk >> 2) * gstride + (kk & 3)] = uz;
    }
}

static int direct_expansion(const int *g)
{
    return g[G_EK] == 1 && g[G_ES] == 1 && g[G_EPT] == 0 && g[G_EPL] == 0;
}

static void pack_expand_input(const q_block *b, const q_source *src, int h0, int p0, int n, uint8_t *xp, int P)
{
    if (direct_expansion(b->g))
        pack_direct(b, src, h0, p0, n, xp, P);
    else
        pack_gather(b, src, h0, p0, n, xp, P);
}

/* Whether one band's expansion input fits the tile whole (packed once, read by every chunk). */
static int packs_whole_band(const q_block *b, int h0, int h1)
{
    return (ptrdiff_t)(h1 - h0) * b->g[G_HW] <= b->tile_bytes / b->g[G_E_KPAD];
}

/* Expanded channels [e0, e1) of hidden rows [h0, h1) into b->hidden (e1 - e0, h1 - h0, hw). */
static void expand_band(const q_block *b, const q_source *src, int e0, int e1, int h0, int h1, int packed)
{
    const int *g = b->g;
    int total = (h1 - h0) * g[G_HW], P = packed ? total : g[G_TILE_PIXELS];
    for (int p0 = 0; p0 < total; p0 += P) {
        int n = total - p0 < P ? total - p0 : P;
        if (!packed) pack_expand_input(b, src, h0, p0, n, b->tile, P);
        q_gemm_call c = {b->tile, P, n, g[G_E_KPAD] / 4, 0, e0, e1, b->hidden + p0, total, NULL, 0};
        qgemm(&b->expand, &c);
    }
}

/* acc[q] += w * row[q * S + j] over q < wo, for every tap j of one kernel row (S a constant: vectorised). */
static inline __attribute__((always_inline)) void
depthwise_taps(int32_t *acc, const int32_t *row, const int32_t *w, int k, int wo, const int S)
{
    for (int j = 0; j < k; j++) {
        int32_t wv = w[j];
        const int32_t *from = row + j;
        for (int q = 0; q < wo; q++) acc[q] += wv * from[q * S];
    }
}

/* Depthwise output rows [o0, o1) of channels [e0, e1) from hidden rows starting at h0 (hrows of them, in
 * `in`, channel e0 first, `cstride` bytes apart), written k-grouped as unsigned bytes into b->dw for the
 * projection: dw[((c >> 2) * npix + p) * 4 + (c & 3)]. Each input row is widened once per use into a
 * centred int32 row with the padding's zeros around it. */
static void depthwise_band(const q_block *b, const uint8_t *in, ptrdiff_t cstride, int in_signed, int in_zero,
                           int e0, int e1, int h0, int hrows, int o0, int o1)
{
    const int *g = b->g;
    int k = g[G_DK], s = g[G_DS], hw = g[G_HW], wo = g[G_WO];
    int pt = g[G_DPT] + h0 - o0 * s, pl = g[G_DPL], npix = (o1 - o0) * wo;
    int span = (wo - 1) * s + k;     /* widened row: pl zeros, the row, zeros to the span */
    float zero = (float)g[G_D_ZERO], lo = (float)g[G_D_LO], hi = (float)g[G_D_HI];
    uint8_t flip = g[G_D_SIGNED] ? 0x80 : 0;
    int32_t acc[Q_MAX_WIDTH], row[Q_MAX_SPAN];
    uint8_t out[4][Q_MAX_WIDTH];
    for (int q = 0; q < span; q++) row[q] = 0;
    int first = pl, last = pl + hw < span ? pl + hw : span;   /* where the input lands in the widened row */
    uint8_t uz = (uint8_t)(g[G_D_ZERO] ^ flip);
    for (int c0 = 0; c0 < e1 - e0; c0 += 4) {
        for (int r = 0; r < o1 - o0; r++) {
            for (int c = c0; c < c0 + 4; c++) {
                if (c >= e1 - e0) {     /* the last group's missing channels: the projection's zero point */
                    memset(out[c - c0], uz, (size_t)wo);
                    continue;
                }
                int ch = e0 + c;
                const int32_t *w = b->dw_w + (ptrdiff_t)ch * k * k;
                int32_t bias = b->dw_bias ? b->dw_bias[ch] : 0;
                for (int q = 0; q < wo; q++) acc[q] = bias;
                for (int i = 0; i < k; i++) {
                    int ih = r * s + i - pt;
                    if (ih < 0 || ih >= hrows) continue;
                    const uint8_t *src = in + (ptrdiff_t)c * cstride + (ptrdiff_t)ih * hw;
                    if (in_signed)
                        for (int q = first; q < last; q++) row[q] = (int32_t)(int8_t)src[q - pl] - in_zero;
                    else
                        for (int q = first; q < last; q++) row[q] = (int32_t)src[q - pl] - in_zero;
                    if (s == 1)
                        depthwise_taps(acc, row, w + i * k, k, wo, 1);
                    else if (s == 2)
                        depthwise_taps(acc, row, w + i * k, k, wo, 2);
                    else
                        depthwise_taps(acc, row, w + i * k, k, wo, s);
                }
                requant_row(acc, wo, b->dw_mult[ch], zero, lo, hi, flip, out[c - c0]);
            }
            uint32_t *dst = (uint32_t *)(b->dw + ((ptrdiff_t)(c0 >> 2) * npix + (ptrdiff_t)r * wo) * 4);
            for (int q = 0; q < wo; q++)
                dst[q] = (uint32_t)out[0][q] | (uint32_t)out[1][q] << 8 | (uint32_t)out[2][q] << 16 |
                         (uint32_t)out[3][q] << 24;
        }
    }
}

static void residual_add(const q_block *b, const uint8_t *proj, int o0, int o1)
{
    const int *g = b->g;
    int wo = g[G_WO], ho = g[G_HO], npix = (o1 - o0) * wo;
    float xs = b->f[F_X_SCALE], ps = b->f[F_P_SCALE], ys = b->f[F_Y_SCALE];
    float xz = (float)g[G_X_ZERO], pz = (float)g[G_P_ZERO], yz = (float)g[G_Y_ZERO];
    float lo = (float)g[G_Y_LO], hi = (float)g[G_Y_HI];
    for (int c = 0; c < g[G_COUT]; c++) {
        const uint8_t *xr = (const uint8_t *)b->x + ((ptrdiff_t)c * ho + o0) * wo;
        const uint8_t *pr = proj + (ptrdiff_t)c * npix;
        uint8_t *yr = b->y + ((ptrdiff_t)c * ho + o0) * wo;
        for (int p = 0; p < npix; p++) {
            float xa = (float)(g[G_X_SIGNED] ? (int32_t)(int8_t)xr[p] : (int32_t)xr[p]);
            float pa = (float)(g[G_P_SIGNED] ? (int32_t)(int8_t)pr[p] : (int32_t)pr[p]);
            float ta = (xa - xz) * xs;
            float tb = (pa - pz) * ps;
            float v = nearbyintf((ta + tb) / ys) + yz;
            v = v < lo ? lo : (v > hi ? hi : v);
            yr[p] = (uint8_t)(int32_t)v;
        }
    }
}

static void block_image(const q_block *b)
{
    const int *g = b->g;
    int rows = g[G_ROWS], chunk = g[G_CHUNK], hidden = g[G_HIDDEN], wo = g[G_WO], ho = g[G_HO];
    int kd = g[G_DK], sd = g[G_DS];
    for (int o0 = 0; o0 < ho; o0 += rows) {
        int o1 = o0 + rows < ho ? o0 + rows : ho, npix = (o1 - o0) * wo;
        int h0 = o0 * sd - g[G_DPT] > 0 ? o0 * sd - g[G_DPT] : 0;
        int h1 = (o1 - 1) * sd - g[G_DPT] + kd < g[G_HH] ? (o1 - 1) * sd - g[G_DPT] + kd : g[G_HH];
        int chunked = chunk < hidden;
        q_source src = {0};
        int packed = 0;
        if (g[G_HAS_EXPAND]) {
            src = band_source(b, h0, h1);
            packed = packs_whole_band(b, h0, h1);
            if (packed) pack_expand_input(b, &src, h0, 0, (h1 - h0) * g[G_HW], b->tile, (h1 - h0) * g[G_HW]);
        }
        uint8_t *target = g[G_RESIDUAL] ? b->projected : b->y + (ptrdiff_t)o0 * wo;
        ptrdiff_t tstride = g[G_RESIDUAL] ? npix : (ptrdiff_t)ho * wo;
        if (chunked)
            for (int co = 0; co < g[G_COUT]; co++)
                for (int p = 0; p < npix; p++) b->pacc[(ptrdiff_t)co * npix + p] = b->proj.bias[co];
        for (int e0 = 0; e0 < hidden; e0 += chunk) {
            int e1 = e0 + chunk < hidden ? e0 + chunk : hidden;
            if (g[G_HAS_EXPAND]) {
                expand_band(b, &src, e0, e1, h0, h1, packed);
                depthwise_band(b, b->hidden, (ptrdiff_t)(h1 - h0) * g[G_HW], g[G_H_SIGNED], g[G_H_ZERO], e0, e1,
                               h0, h1 - h0, o0, o1);
            } else {    /* no expansion: the input is the hidden tensor */
                ptrdiff_t plane = (ptrdiff_t)g[G_H] * g[G_W];
                const uint8_t *in = (const uint8_t *)b->x + e0 * plane + (ptrdiff_t)h0 * g[G_W];
                depthwise_band(b, in, plane, g[G_X_SIGNED], g[G_X_ZERO], e0, e1, h0, h1 - h0, o0, o1);
            }
            q_gemm_call c = {b->dw, npix, npix, (e1 - e0 + 3) / 4, e0, 0, g[G_COUT], target, tstride,
                             chunked ? b->pacc : NULL, npix};
            qgemm(&b->proj, &c);
        }
        if (chunked)
            for (int co = 0; co < g[G_COUT]; co++)
                for (int p = 0; p < npix; p++)
                    target[(ptrdiff_t)co * tstride + p] = requant1(b->pacc[(ptrdiff_t)co * npix + p], b->proj.mult[co],
                                                                  b->proj.zero, b->proj.lo, b->proj.hi);
        if (g[G_RESIDUAL]) residual_add(b, b->projected, o0, o1);
    }
}

/* ---- binding */

#define Q_MAX_BUFFERS 24

typedef struct {    /* er_buffer_set (pybuffers.h) with room for this call's 20 buffers */
    Py_buffer views[Q_MAX_BUFFERS];
    const char *names[Q_MAX_BUFFERS];
    int written[Q_MAX_BUFFERS];
    int count;
} q_buffer_set;

static void release_all(q_buffer_set *set)
{
    for (int i = 0; i < set->count; i++) PyBuffer_Release(&set->views[i]);
    set->count = 0;
}

static int check_no_overlap(const q_buffer_set *set)
{
    for (int i = 0; i < set->count; i++)
        for (int j = 0; j < set->count; j++) {
            if (i == j || !set->written[i] || set->views[i].len == 0 || set->views[j].len == 0) continue;
            const char *a = set->views[i].buf, *b = set->views[j].buf;
            if (a < b + set->views[j].len && b < a + set->views[i].len) {
                PyErr_Format(PyExc_ValueError, "qblock_run: %s overlaps %s", set->names[i], set->names[j]);
                return -1;
            }
        }
    return 0;
}

static void *acquire_bytes(q_buffer_set *set, PyObject *obj, const char *name, int itemsize, Py_ssize_t items,
                           int writable)
{
    if (obj == Py_None && items == 0) return NULL;
    if (set->count >= Q_MAX_BUFFERS) {
        PyErr_SetString(PyExc_ValueError, "qblock_run: too many buffers");
        return NULL;
    }
    Py_buffer *view = &set->views[set->count];
    if (obj == Py_None || PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "qblock_run: %s: expected a %sC-contiguous array", name,
                     writable ? "writable " : "");
        return NULL;
    }
    set->names[set->count] = name;
    set->written[set->count++] = writable;
    if (view->itemsize != itemsize || view->len < items * itemsize) {
        PyErr_Format(PyExc_ValueError, "qblock_run: %s: needs at least %zd items of %d bytes, got %zd bytes of "
                     "%zd-byte items", name, items, itemsize, view->len, view->itemsize);
        return NULL;
    }
    return view->buf;
}

static const char *check_geometry(const int *g)
{
    for (int i = G_CIN; i <= G_WO; i++)
        if (i != G_EPT && i != G_EPL && i != G_DPT && i != G_DPL && i != G_HAS_EXPAND && g[i] <= 0)
            return "sizes, kernels and strides must be positive";
    if (g[G_EPT] < 0 || g[G_EPL] < 0 || g[G_DPT] < 0 || g[G_DPL] < 0) return "pads must not be negative";
    if (g[G_ROWS] < 1 || g[G_CHUNK] < 1 || g[G_TILE_PIXELS] < 1) return "rows, chunk and tile pixels must be positive";
    if (g[G_CHUNK] < g[G_HIDDEN] && g[G_CHUNK] % 4) return "a chunk must be a multiple of 4 channels";
    if (g[G_WO] > Q_MAX_WIDTH || (g[G_WO] - 1) * g[G_DS] + g[G_DK] > Q_MAX_SPAN) return "output rows are too wide";
    if ((g[G_HAS_EXPAND] && g[G_E_KPAD] != (g[G_CIN] * g[G_EK] * g[G_EK] + 3) / 4 * 4) ||
        g[G_P_KPAD] != (g[G_HIDDEN] + 3) / 4 * 4)
        return "kpad does not match the weights";
    if (!g[G_HAS_EXPAND] && (g[G_CIN] != g[G_HIDDEN] || g[G_HH] != g[G_H] || g[G_HW] != g[G_W] || g[G_X_FLOAT]))
        return "a block without expansion reads its integer input as the hidden tensor";
    if (g[G_RESIDUAL] && (g[G_CIN] != g[G_COUT] || g[G_H] != g[G_HO] || g[G_W] != g[G_WO] || g[G_X_FLOAT]))
        return "a residual block needs an integer input of the output's shape";
    return NULL;
}

PyObject *er_py_qblock_run(PyObject *self, PyObject *args)
{
    PyObject *o[21];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7],
                          &o[8], &o[9], &o[10], &o[11], &o[12], &o[13], &o[14], &o[15], &o[16], &o[17], &o[18],
                          &o[19], &o[20]))
        return NULL;
    q_buffer_set set = {.count = 0};
    q_block b;
    memset(&b, 0, sizeof b);
    const int *g = acquire_bytes(&set, o[2], "geometry", 4, G_COUNT, 0);
    if (!g) goto fail;
    b.g = g;
    const char *bad = check_geometry(g);
    if (bad) {
        PyErr_Format(PyExc_ValueError, "qblock_run: %s", bad);
        goto fail;
    }
    if (!(b.f = acquire_bytes(&set, o[3], "scales", 4, F_COUNT, 0))) goto fail;
    Py_ssize_t hidden = g[G_HIDDEN], cout = g[G_COUT], rows = g[G_ROWS], chunk = g[G_CHUNK];
    Py_ssize_t hrows = (rows - 1) * g[G_DS] + g[G_DK] < g[G_HH] ? (rows - 1) * g[G_DS] + g[G_DK] : g[G_HH];
    int expand = g[G_HAS_EXPAND];
    if (!(b.x = acquire_bytes(&set, o[0], "x", g[G_X_FLOAT] ? 4 : 1, (Py_ssize_t)g[G_CIN] * g[G_H] * g[G_W], 0)))
        goto fail;
    if (!(b.y = acquire_bytes(&set, o[1], "y", 1, cout * g[G_HO] * g[G_WO], 1))) goto fail;
    Py_ssize_t ew = expand ? (hidden + Q_VNNI_ROWS_PAD) * g[G_E_KPAD] : 0;
    b.expand.w8 = o[4] == Py_None ? NULL : acquire_bytes(&set, o[4], "expand w8", 1, ew, 0);
    if (PyErr_Occurred()) goto fail;
    if (expand && (!(b.expand.w16 = acquire_bytes(&set, o[5], "expand w16", 2, ew, 0)) ||
                   !(b.expand.bias = acquire_bytes(&set, o[6], "expand bias", 4, hidden, 0)) ||
                   !(b.expand.mult = acquire_bytes(&set, o[7], "expand mult", 4, hidden, 0))))
        goto fail;
    if (!(b.dw_w = acquire_bytes(&set, o[8], "dw weights", 4, hidden * g[G_DK] * g[G_DK], 0))) goto fail;
    b.dw_bias = o[9] == Py_None ? NULL : acquire_bytes(&set, o[9], "dw bias", 4, hidden, 0);
    if (PyErr_Occurred() || !(b.dw_mult = acquire_bytes(&set, o[10], "dw mult", 4, hidden, 0))) goto fail;
    Py_ssize_t pw = (cout + Q_VNNI_ROWS_PAD) * g[G_P_KPAD];
    b.proj.w8 = o[11] == Py_None ? NULL : acquire_bytes(&set, o[11], "proj w8", 1, pw, 0);
    if (PyErr_Occurred() || !(b.proj.w16 = acquire_bytes(&set, o[12], "proj w16", 2, pw, 0)) ||
        !(b.proj.bias = acquire_bytes(&set, o[13], "proj bias", 4, cout, 0)) ||
        !(b.proj.mult = acquire_bytes(&set, o[14], "proj mult", 4, cout, 0)))
        goto fail;
    b.hidden = acquire_bytes(&set, o[15], "hidden scratch", 1, expand ? chunk * hrows * g[G_HW] : 0, 1);
    if (PyErr_Occurred()) goto fail;
    if (!(b.dw = acquire_bytes(&set, o[16], "dw scratch", 1, (chunk + 3) / 4 * 4 * rows * g[G_WO], 1))) goto fail;
    b.projected = acquire_bytes(&set, o[17], "proj scratch", 1, g[G_RESIDUAL] ? cout * rows * g[G_WO] : 0, 1);
    if (PyErr_Occurred()) goto fail;
    b.pacc = acquire_bytes(&set, o[18], "accumulator scratch", 1, chunk < hidden ? cout * rows * g[G_WO] * 4 : 0, 1);
    if (PyErr_Occurred()) goto fail;
    b.tile = acquire_bytes(&set, o[19], "tile scratch", 1, expand ? (Py_ssize_t)g[G_TILE_PIXELS] * g[G_E_KPAD] : 0, 1);
    if (PyErr_Occurred()) goto fail;
    b.tile_bytes = b.tile ? set.views[set.count - 1].len : 0;
    Py_ssize_t in_rows = (hrows - 1) * g[G_ES] + g[G_EK] < g[G_H] ? (hrows - 1) * g[G_ES] + g[G_EK] : g[G_H];
    b.xq = acquire_bytes(&set, o[20], "xq scratch", 1, g[G_X_FLOAT] ? g[G_CIN] * in_rows * g[G_W] : 0, 1);
    if (PyErr_Occurred() || check_no_overlap(&set) != 0) goto fail;
    b.expand.ldw = g[G_E_KPAD];
    b.expand.zero = b.f[F_E_ZERO];
    b.expand.lo = b.f[F_E_LO];
    b.expand.hi = b.f[F_E_HI];
    b.proj.ldw = g[G_P_KPAD];
    b.proj.zero = (float)g[G_P_ZERO];
    b.proj.lo = b.f[F_P_LO];
    b.proj.hi = b.f[F_P_HI];
    Py_BEGIN_ALLOW_THREADS
    block_image(&b);
    Py_END_ALLOW_THREADS
    release_all(&set);
    Py_RETURN_NONE;
fail:
    release_all(&set);
    return NULL;
}

PyObject *er_py_qgemm_info(PyObject *self, PyObject *args)
{
    return Py_BuildValue("(ii)", vnni_available(), Q_VNNI_ROWS_PAD);
}

/* ---- one GEMM step: a 1x1 QLinearConv (x (K, M) -> y (N, M)) or a QGemm (x (M, K) -> y (M, N)) */

enum { M_K, M_N, M_PIXELS, M_KPAD, M_X_SIGNED, M_X_ZERO, M_ROW_MAJOR, M_TILE_PIXELS, M_COUNT };

static void pack_channels(const uint8_t *x, ptrdiff_t plane, int K, int kpad, int p0, int n, uint8_t flip,
                          uint8_t uz, uint8_t *xp, int P)
{
    uint32_t flips = flip ? 0x80808080u : 0;
    for (int grp = 0; grp < kpad / 4; grp++) {
        uint32_t *dst = (uint32_t *)(xp + (ptrdiff_t)grp * P * 4);
        const uint8_t *r0 = x + (ptrdiff_t)(4 * grp) * plane + p0;
        if (4 * grp + 3 < K) {
            const uint8_t *r1 = r0 + plane, *r2 = r1 + plane, *r3 = r2 + plane;
            for (int p = 0; p < n; p++)
                dst[p] = ((uint32_t)r0[p] | (uint32_t)r1[p] << 8 | (uint32_t)r2[p] << 16 | (uint32_t)r3[p] << 24) ^ flips;
        } else {
            for (int p = 0; p < n; p++) {
                uint32_t word = 0;
                for (int i = 0; i < 4; i++) {
                    int c = 4 * grp + i;
                    uint8_t v = c < K ? (uint8_t)(x[(ptrdiff_t)c * plane + p0 + p] ^ flip) : uz;
                    word |= (uint32_t)v << (8 * i);
                }
                dst[p] = word;
            }
        }
    }
}

static void gemm_step(const int *m, const q_stage *s, const uint8_t *x, uint8_t *y, uint8_t *tile)
{
    int K = m[M_K], N = m[M_N], pixels = m[M_PIXELS], kpad = m[M_KPAD], P = m[M_TILE_PIXELS];
    uint8_t flip = m[M_X_SIGNED] ? 0x80 : 0;
    uint8_t uz = (uint8_t)(m[M_X_ZERO] ^ flip);
    if (m[M_ROW_MAJOR]) {     /* every row of x is one pixel, already k-grouped: flip and pad it */
        for (int r = 0; r < pixels; r++) {
            for (int k = 0; k < kpad; k++) tile[k] = k < K ? (uint8_t)(x[(ptrdiff_t)r * K + k] ^ flip) : uz;
            q_gemm_call c = {tile, 1, 1, kpad / 4, 0, 0, N, y + (ptrdiff_t)r * N, 1, NULL, 0};
            qgemm(s, &c);
        }
        return;
    }
    for (int p0 = 0; p0 < pixels; p0 += P) {
        int n = pixels - p0 < P ? pixels - p0 : P;
        pack_channels(x, pixels, K, kpad, p0, n, flip, uz, tile, P);
        q_gemm_call c = {tile, P, n, kpad / 4, 0, 0, N, y + p0, pixels, NULL, 0};
        qgemm(s, &c);
    }
}

PyObject *er_py_qgemm_run(PyObject *self, PyObject *args)
{
    PyObject *o[9];
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8]))
        return NULL;
    q_buffer_set set = {.count = 0};
    q_stage s;
    memset(&s, 0, sizeof s);
    const int *m = acquire_bytes(&set, o[6], "geometry", 4, M_COUNT, 0);
    if (!m) goto fail;
    if (m[M_K] < 1 || m[M_N] < 1 || m[M_PIXELS] < 1 || m[M_TILE_PIXELS] < 1 || m[M_KPAD] != (m[M_K] + 3) / 4 * 4) {
        PyErr_SetString(PyExc_ValueError, "qgemm_run: bad geometry");
        goto fail;
    }
    Py_ssize_t K = m[M_K], N = m[M_N], pixels = m[M_PIXELS], kpad = m[M_KPAD];
    const float *scalars = acquire_bytes(&set, o[7], "scalars", 4, 3, 0);
    if (!scalars) goto fail;
    const uint8_t *x = acquire_bytes(&set, o[0], "x", 1, K * pixels, 0);
    uint8_t *y = x ? acquire_bytes(&set, o[1], "y", 1, N * pixels, 1) : NULL;
    if (!y) goto fail;
    s.w8 = o[2] == Py_None ? NULL : acquire_bytes(&set, o[2], "w8", 1, (N + Q_VNNI_ROWS_PAD) * kpad, 0);
    if (PyErr_Occurred() || !(s.w16 = acquire_bytes(&set, o[3], "w16", 2, (N + Q_VNNI_ROWS_PAD) * kpad, 0)) ||
        !(s.bias = acquire_bytes(&set, o[4], "bias", 4, N, 0)) || !(s.mult = acquire_bytes(&set, o[5], "mult", 4, N, 0)))
        goto fail;
    uint8_t *tile = acquire_bytes(&set, o[8], "tile", 1, m[M_ROW_MAJOR] ? kpad : (Py_ssize_t)m[M_TILE_PIXELS] * kpad, 1);
    if (!tile || check_no_overlap(&set) != 0) goto fail;
    s.ldw = (int)kpad;
    s.zero = scalars[0];
    s.lo = scalars[1];
    s.hi = scalars[2];
    Py_BEGIN_ALLOW_THREADS
    gemm_step(m, &s, x, y, tile);
    Py_END_ALLOW_THREADS
    release_all(&set);
    Py_RETURN_NONE;
fail:
    release_all(&set);
    return NULL;
}
