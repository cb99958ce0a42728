/* Differential checks of edgerun's native kernels against scalar references, in plain C (no Python),
 * so that they can be cross-compiled and run under qemu (tests_toolchain/test_cross_arm.py).
 *
 *   kernel_check            every check, then the logits of a fixed-seed MobileNetV2-like chain
 *
 * Output: one "check <name> <cases> ok" line per kernel family (or "FAIL ..." lines and exit 1),
 * "vector_floats <ER_VL>", then "logit <i> <value>" lines (%.9e) that the test compares across
 * targets. Inputs come from an integer generator, so every target sees the same floats.
 * The references accumulate in double; a kernel's result must lie within
 * 1e-4 * (sum of |terms|) + 1e-6 of it (float32 rounding of up to a few hundred terms stays far
 * below that; a wrong index, tap or tile does not). steps.c is included for its static GEMM and
 * GEMV (its Python bindings are left out by ER_NO_PYTHON). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ER_NO_PYTHON
#include "steps.c"

static unsigned long long rng_state = 0x9e3779b97f4a7c15ULL;
static int failures = 0;

static unsigned int next_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned int)(rng_state >> 16);
}

/* Uniform in [-1, 1) on a 2^-23 grid: exactly representable everywhere. */
static float uniform(void) { return (float)((int)(next_u32() >> 8) - (1 << 23)) / (float)(1 << 23); }
static int below_n(int n) { return (int)(next_u32() % (unsigned int)n); }

static void fill(float *p, long n, float scale)
{
    for (long i = 0; i < n; i++) p[i] = uniform() * scale;
}

static float *alloc_floats(long n)
{
    float *p = (float *)calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static double act_ref(double v, const er_act *act)
{
    switch (act->kind) {
    case ER_ACT_RELU: return v < 0 ? 0 : v;
    case ER_ACT_CLIP: return v < act->a ? act->a : (v > act->b ? act->b : v);
    case ER_ACT_HARDSWISH: { double t = v / 6 + 0.5; t = t < 0 ? 0 : t > 1 ? 1 : t; return v * t; }
    case ER_ACT_LEAKYRELU: return v < 0 ? act->a * v : v;
    case ER_ACT_SIGMOID: return 1 / (1 + exp(-v));
    default: return v;
    }
}

/* Activations in the checks: none, relu, relu6 (clip), hardswish, leaky relu, sigmoid. */
static er_act pick_act(int i)
{
    static const er_act acts[] = {{ER_ACT_NONE, 0, 0}, {ER_ACT_RELU, 0, 0}, {ER_ACT_CLIP, 0, 6},
                                  {ER_ACT_HARDSWISH, 0, 0}, {ER_ACT_LEAKYRELU, 0.1f, 0}, {ER_ACT_SIGMOID, 0, 0}};
    return acts[i % 6];
}

/* Compares got with ref (bound: abs_sum, the sum of |terms| before the activation); counts failures. */
static int compare(const char *what, int index, float got, double ref, double abs_sum)
{
    double bound = 1e-4 * abs_sum + 1e-6;
    if (fabs((double)got - ref) <= bound) return 1;
    if (failures < 20) fprintf(stdout, "FAIL %s: element %d is %.9g, reference %.9g\n", what, index, got, ref);
    failures++;
    return 0;
}

static void report(const char *family, int cases, int failures_before)
{
    if (failures == failures_before) printf("check %s %d ok\n", family, cases);
    else printf("check %s %d FAILED (%d elements)\n", family, cases, failures - failures_before);
}

/* ---------------------------------------------------------------- er_gemm_tn */
static void check_gemm_case(int M, int N, int K, int accumulate, int with_bias, er_act act)
{
    long lda = M + 3, ldb = N + 5, ldc = N + 2;
    float *A = alloc_floats(K * lda), *B = alloc_floats(K * ldb), *C = alloc_floats(M * ldc);
    float *C0 = alloc_floats(M * ldc), *bias = alloc_floats(M);
    fill(A, K * lda, 1);
    fill(B, K * ldb, 1);
    fill(C0, M * ldc, 1);
    fill(bias, M, 1);
    memcpy(C, C0, sizeof(float) * (size_t)(M * ldc));
    if (accumulate) act.kind = ER_ACT_NONE; /* accumulating calls add partial sums: no activation */
    er_gemm_tn(M, N, K, A, lda, B, ldb, C, ldc, accumulate, with_bias ? bias : NULL, &act);
    char what[96];
    snprintf(what, sizeof what, "gemm M=%d N=%d K=%d acc=%d act=%d", M, N, K, accumulate, act.kind);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = accumulate ? C0[m * ldc + n] : (with_bias ? bias[m] : 0), a = fabs(s);
            for (int k = 0; k < K; k++) {
                double t = (double)A[k * lda + m] * B[k * ldb + n];
                s += t;
                a += fabs(t);
            }
            compare(what, m * N + n, C[m * ldc + n], act_ref(s, &act), a);
        }
    for (int m = 0; m < M; m++) /* padding columns untouched */
        for (long n = N; n < ldc; n++)
            if (C[m * ldc + n] != C0[m * ldc + n]) compare("gemm wrote outside C", m, C[m * ldc + n], C0[m * ldc + n], 0);
    free(A), free(B), free(C), free(C0), free(bias);
}

static void check_gemm(void)
{
    static const int ms[] = {1, 5, 6, 7, 12, 13, 24, 37}, ns[] = {1, 7, 8, 15, 16, 17, 32, 33, 48, 49, 56, 64, 100, 196};
    static const int ks[] = {1, 3, 16, 33, 96};
    int before = failures, cases = 0;
    for (unsigned i = 0; i < sizeof ns / sizeof *ns; i++, cases++)
        check_gemm_case(ms[i % 8], ns[i], ks[i % 5], 0, 1, pick_act((int)i));
    for (int i = 0; i < 60; i++, cases++)
        check_gemm_case(ms[below_n(8)], ns[below_n(14)], ks[below_n(5)], below_n(3) == 0, below_n(2), pick_act(below_n(6)));
    report("gemm", cases, before);
}

/* ---------------------------------------------------------------- depthwise */
static void depthwise_ref(const float *src, int h, int w, const float *wt, int k, int s, const int pads[4], float bias,
                          const er_act *act, int ho, int wo, const float *got, const char *what)
{
    for (int oy = 0; oy < ho; oy++)
        for (int ox = 0; ox < wo; ox++) {
            double sum = bias, a = fabs(bias);
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    int y = oy * s - pads[0] + ky, x = ox * s - pads[1] + kx;
                    if (y < 0 || y >= h || x < 0 || x >= w) continue;
                    double t = (double)wt[ky * k + kx] * src[y * w + x];
                    sum += t;
                    a += fabs(t);
                }
            compare(what, oy * wo + ox, got[oy * wo + ox], act_ref(sum, act), a);
        }
}

static void check_depthwise_case(int h, int w, int k, int s, const int pads[4], er_act act)
{
    int ho = (h + pads[0] + pads[2] - k) / s + 1, wo = (w + pads[1] + pads[3] - k) / s + 1;
    if (ho < 1 || wo < 1) return;
    float *src = alloc_floats((long)h * w), *wt = alloc_floats(k * k), *dst = alloc_floats((long)ho * wo + 8);
    fill(src, (long)h * w, 1);
    fill(wt, k * k, 1);
    float bias = uniform();
    for (int i = 0; i < 8; i++) dst[(long)ho * wo + i] = 12345.0f;
    er_depthwise_plane(src, h, w, wt, k, s, pads, bias, &act, dst, ho, wo);
    char what[96];
    snprintf(what, sizeof what, "depthwise %dx%d k=%d s=%d pads=%d,%d,%d,%d", h, w, k, s, pads[0], pads[1], pads[2],
             pads[3]);
    depthwise_ref(src, h, w, wt, k, s, pads, bias, &act, ho, wo, dst, what);
    for (int i = 0; i < 8; i++)
        if (dst[(long)ho * wo + i] != 12345.0f) compare("depthwise wrote past its output", i, dst[ho * wo + i], 12345, 0);
    /* rows [o0, o1) alone give the same values as the whole plane */
    if (ho > 2) {
        int o0 = ho / 3, o1 = ho - 1;
        float *part = alloc_floats((long)(o1 - o0) * wo);
        er_depthwise_rows(src, 0, h, w, wt, k, s, pads, bias, &act, part, o0, o1, wo);
        for (long i = 0; i < (long)(o1 - o0) * wo; i++)
            if (part[i] != dst[(long)o0 * wo + i]) compare("depthwise rows differ from the plane", (int)i, part[i], dst[o0 * wo + i], 0);
        free(part);
    }
    free(src), free(wt), free(dst);
}

static void check_depthwise(void)
{
    static const int sizes[] = {1, 2, 3, 5, 7, 8, 14, 17, 28, 33, 56, 70};
    int before = failures, cases = 0;
    for (int k = 3; k <= 7; k += 2)
        for (int s = 1; s <= 2; s++)
            for (int i = 0; i < 12; i++, cases++) {
                int pad = k / 2, pads[4] = {pad, pad, pad, pad};
                check_depthwise_case(sizes[i], sizes[(i * 5 + 3) % 12], k, s, pads, pick_act(i));
            }
    for (int i = 0; i < 40; i++, cases++) {
        int k = 1 + 2 * below_n(4), s = 1 + below_n(3);
        int pads[4] = {below_n(k), below_n(k), below_n(k), below_n(k)};
        check_depthwise_case(1 + below_n(40), 1 + below_n(80), k, s, pads, pick_act(below_n(6)));
    }
    report("depthwise", cases, before);
}

/* ---------------------------------------------------------------- the fused block */
typedef struct {
    int cin, h, w, e, k, s, cout, residual;
} block_spec;

typedef struct {
    float *we, *we_t, *be, *wd, *bd, *wp_t, *bp;
} block_params;

static void block_params_init(const block_spec *b, block_params *p)
{
    float se = 1.0f / sqrtf((float)b->cin), sd = 1.0f / (float)b->k, sp = 1.0f / sqrtf((float)b->e);
    p->we = alloc_floats((long)b->e * b->cin);
    p->we_t = alloc_floats((long)b->e * b->cin);
    p->be = alloc_floats(b->e);
    p->wd = alloc_floats((long)b->e * b->k * b->k);
    p->bd = alloc_floats(b->e);
    p->wp_t = alloc_floats((long)b->e * b->cout);
    p->bp = alloc_floats(b->cout);
    fill(p->we, (long)b->e * b->cin, se);
    for (int e = 0; e < b->e; e++)
        for (int c = 0; c < b->cin; c++) p->we_t[(long)c * b->e + e] = p->we[(long)e * b->cin + c];
    fill(p->be, b->e, 0.1f);
    fill(p->wd, (long)b->e * b->k * b->k, sd);
    fill(p->bd, b->e, 0.1f);
    fill(p->wp_t, (long)b->e * b->cout, sp);
    fill(p->bp, b->cout, 0.1f);
}

static void block_params_free(block_params *p)
{
    free(p->we), free(p->we_t), free(p->be), free(p->wd), free(p->bd), free(p->wp_t), free(p->bp);
}

static void block_geometry(const block_spec *b, er_block_geom *g)
{
    memset(g, 0, sizeof *g);
    g->in_channels = b->cin, g->in_height = b->h, g->in_width = b->w, g->hidden_channels = b->e;
    g->expand_kernel = 1, g->expand_stride = 1;
    g->dw_kernel = b->k, g->dw_stride = b->s;
    for (int i = 0; i < 4; i++) g->dw_pads[i] = b->k / 2;
    g->out_channels = b->cout, g->residual = b->residual;
}

/* The block on one thread in `nbands` bands of output rows and chunks of `chunk` hidden channels. */
static const char *run_block(const block_spec *b, const block_params *p, const float *x, float *out, int nbands,
                             int chunk)
{
    er_block_geom g;
    block_geometry(b, &g);
    const char *problem = er_block_derive(&g);
    if (problem) return problem;
    er_band bands[16];
    if (nbands > g.out_height) nbands = g.out_height;
    if (nbands > 16) nbands = 16;
    long most_hidden = 0, most_rows = 0;
    for (int i = 0; i < nbands; i++) {
        er_band *band = &bands[i];
        band->o0 = g.out_height * i / nbands, band->o1 = g.out_height * (i + 1) / nbands;
        int h0 = band->o0 * g.dw_stride - g.dw_pads[0], h1 = (band->o1 - 1) * g.dw_stride - g.dw_pads[0] + g.dw_kernel;
        band->h0 = h0 < 0 ? 0 : h0, band->h1 = h1 > g.hidden_height ? g.hidden_height : h1;
        band->by_channels = 0;
        if (band->h1 - band->h0 > most_hidden) most_hidden = band->h1 - band->h0;
        if (band->o1 - band->o0 > most_rows) most_rows = band->o1 - band->o0;
    }
    er_block_split split = {ER_SPLIT_SINGLE, 1, 1, chunk * most_hidden * g.hidden_width, chunk * most_rows * g.out_width};
    problem = er_block_check(&g, chunk, bands, nbands, &split);
    if (problem) return problem;
    er_block_weights w = {p->we, p->we_t, p->be, p->wd, p->bd, p->wp_t, p->bp, {ER_ACT_CLIP, 0, 6}, {ER_ACT_CLIP, 0, 6}};
    float *expanded = alloc_floats(split.expanded_slice), *depthwise = alloc_floats(split.depthwise_slice);
    problem = er_block_run(&g, chunk, bands, nbands, &w, x, out, expanded, depthwise, &split);
    free(expanded), free(depthwise);
    return problem;
}

static int block_out_size(const block_spec *b) { return (b->h + 2 * (b->k / 2) - b->k) / b->s + 1; }

/* Scalar reference of the block (expand 1x1 + relu6, depthwise + relu6, project, residual): values and
 * the sums of |terms| of the projection (an error bound's scale, the hidden values' own error included). */
static void block_ref(const block_spec *b, const block_params *p, const float *x, double *out, double *abs_out)
{
    int ho = block_out_size(b), wo = (b->w + 2 * (b->k / 2) - b->k) / b->s + 1;
    long hw = (long)b->h * b->w, ohw = (long)ho * wo;
    double *hidden = (double *)calloc((size_t)(b->e * hw), sizeof(double));
    double *dw = (double *)calloc((size_t)(b->e * ohw), sizeof(double));
    er_act relu6 = {ER_ACT_CLIP, 0, 6};
    for (int e = 0; e < b->e; e++)
        for (long i = 0; i < hw; i++) {
            double s = p->be[e];
            for (int c = 0; c < b->cin; c++) s += (double)p->we[(long)e * b->cin + c] * x[c * hw + i];
            hidden[e * hw + i] = act_ref(s, &relu6);
        }
    int pad = b->k / 2;
    for (int e = 0; e < b->e; e++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                double s = p->bd[e];
                for (int ky = 0; ky < b->k; ky++)
                    for (int kx = 0; kx < b->k; kx++) {
                        int y = oy * b->s - pad + ky, xx = ox * b->s - pad + kx;
                        if (y < 0 || y >= b->h || xx < 0 || xx >= b->w) continue;
                        s += (double)p->wd[(e * b->k + ky) * b->k + kx] * hidden[e * hw + (long)y * b->w + xx];
                    }
                dw[e * ohw + (long)oy * wo + ox] = act_ref(s, &relu6);
            }
    for (int o = 0; o < b->cout; o++)
        for (long i = 0; i < ohw; i++) {
            double s = p->bp[o], a = fabs(p->bp[o]);
            for (int e = 0; e < b->e; e++) {
                double t = (double)p->wp_t[(long)e * b->cout + o] * dw[e * ohw + i];
                s += t;
                a += fabs(t);
            }
            if (b->residual) s += x[o * ohw + i], a += fabs(x[o * ohw + i]);
            out[o * ohw + i] = s;
            abs_out[o * ohw + i] = 10 * a; /* the hidden values carry their own rounding */
        }
    free(hidden), free(dw);
}

static void check_block_case(const block_spec *b, int nbands, int chunk)
{
    block_params p;
    block_params_init(b, &p);
    int ho = block_out_size(b), wo = (b->w + 2 * (b->k / 2) - b->k) / b->s + 1;
    long n_in = (long)b->cin * b->h * b->w, n_out = (long)b->cout * ho * wo;
    float *x = alloc_floats(n_in), *out = alloc_floats(n_out);
    double *ref = (double *)calloc((size_t)n_out, sizeof(double)), *abs_ref = (double *)calloc((size_t)n_out, sizeof(double));
    fill(x, n_in, 1);
    const char *problem = run_block(b, &p, x, out, nbands, chunk);
    char what[128];
    snprintf(what, sizeof what, "block %dx%dx%d e=%d k=%d s=%d cout=%d res=%d bands=%d chunk=%d", b->cin, b->h, b->w,
             b->e, b->k, b->s, b->cout, b->residual, nbands, chunk);
    if (problem) {
        printf("FAIL %s: %s\n", what, problem);
        failures++;
    } else {
        block_ref(b, &p, x, ref, abs_ref);
        for (long i = 0; i < n_out; i++) compare(what, (int)i, out[i], ref[i], abs_ref[i]);
    }
    free(x), free(out), free(ref), free(abs_ref);
    block_params_free(&p);
}

static void check_blocks(void)
{
    static const block_spec specs[] = {
        {16, 24, 24, 96, 3, 2, 24, 0}, {24, 12, 12, 144, 3, 1, 24, 1}, {24, 12, 12, 144, 3, 2, 32, 0},
        {32, 7, 7, 192, 3, 1, 32, 1},  {16, 14, 9, 48, 5, 1, 16, 1},   {8, 17, 13, 40, 5, 2, 12, 0},
        {3, 5, 5, 18, 3, 1, 3, 1},
    };
    int before = failures, cases = 0;
    for (unsigned i = 0; i < sizeof specs / sizeof *specs; i++) {
        const block_spec *b = &specs[i];
        check_block_case(b, 1, b->e), cases++;
        check_block_case(b, 3, (b->e + 2) / 3), cases++;
        check_block_case(b, 5, 7 < b->e ? 7 : b->e), cases++;
    }
    report("block", cases, before);
}

/* ---------------------------------------------------------------- steps.c: packed pointwise GEMM, GEMV, pools */
static void check_packed_pointwise_case(int M, int N, int K, int threads, er_act act)
{
    float *w = alloc_floats((long)M * K), *x = alloc_floats((long)K * N), *bias = alloc_floats(M);
    float *packed = alloc_floats(er_pw_packed_floats(M, K)), *edge = alloc_floats(er_pw_edge_floats(N, K));
    float *out = alloc_floats((long)M * N), *out1 = alloc_floats((long)M * N);
    fill(w, (long)M * K, 1);
    fill(x, (long)K * N, 1);
    fill(bias, M, 1);
    er_pw_pack(M, K, w, packed);
    const char *problem = er_pw_gemm(M, N, K, packed, x, out, bias, &act, edge, threads);
    char what[96];
    snprintf(what, sizeof what, "packed pointwise M=%d N=%d K=%d threads=%d act=%d", M, N, K, threads, act.kind);
    if (!problem && threads > 1) problem = er_pw_gemm(M, N, K, packed, x, out1, bias, &act, edge, 1);
    if (problem) {
        printf("FAIL %s: %s\n", what, problem);
        failures++;
    }
    for (int m = 0; m < M && !problem; m++)
        for (int n = 0; n < N; n++) {
            double s = bias[m], a = fabs(bias[m]);
            for (int k = 0; k < K; k++) {
                double t = (double)w[(long)m * K + k] * x[(long)k * N + n];
                s += t;
                a += fabs(t);
            }
            compare(what, m * N + n, out[(long)m * N + n], act_ref(s, &act), a);
            if (threads > 1 && out[(long)m * N + n] != out1[(long)m * N + n])
                compare("packed pointwise: threads changed the bits", m * N + n, out[(long)m * N + n], out1[(long)m * N + n], 0);
        }
    free(w), free(x), free(bias), free(packed), free(edge), free(out), free(out1);
}

static void check_gemv_case(int rows, int K, int threads)
{
    float *w = alloc_floats((long)rows * K), *x = alloc_floats(K), *bias = alloc_floats(rows), *y = alloc_floats(rows);
    fill(w, (long)rows * K, 1);
    fill(x, K, 1);
    fill(bias, rows, 1);
    const char *problem = er_gemv(rows, K, w, x, bias, y, threads);
    if (problem) {
        printf("FAIL gemv: %s\n", problem);
        failures++;
    }
    for (int r = 0; r < rows && !problem; r++) {
        double s = bias[r], a = fabs(bias[r]);
        for (int k = 0; k < K; k++) {
            double t = (double)w[(long)r * K + k] * x[k];
            s += t;
            a += fabs(t);
        }
        compare("gemv", r, y[r], s, a);
    }
    free(w), free(x), free(bias), free(y);
}

static void check_pool_case(int kind, int c, int h, int w, int kh, int kw, int sh, int sw, const int pads[4])
{
    int ho = (h + pads[0] + pads[2] - kh) / sh + 1, wo = (w + pads[1] + pads[3] - kw) / sw + 1;
    float *x = alloc_floats((long)c * h * w), *out = alloc_floats((long)c * ho * wo);
    fill(x, (long)c * h * w, 1);
    er_pool2d(kind, x, out, c, h, w, ho, wo, kh, kw, sh, sw, pads);
    for (int ch = 0; ch < c; ch++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                double acc = kind == 0 ? -INFINITY : 0;
                int inside = 0, padded = 0;
                for (int i = 0; i < kh; i++)
                    for (int j = 0; j < kw; j++) {
                        int y = oy * sh - pads[0] + i, xx = ox * sw - pads[1] + j;
                        if (y >= -pads[0] && y < h + pads[2] && xx >= -pads[1] && xx < w + pads[3]) padded++;
                        if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
                        double v = x[((long)ch * h + y) * w + xx];
                        acc = kind == 0 ? (v > acc ? v : acc) : acc + v;
                        inside++;
                    }
                if (kind == 1) acc /= inside;
                if (kind == 2) acc /= padded;
                compare(kind == 0 ? "max pool" : "average pool", (ch * ho + oy) * wo + ox,
                        out[((long)ch * ho + oy) * wo + ox], acc, (double)kh * kw);
            }
    free(x), free(out);
}

static void check_steps(void)
{
    static const int ms[] = {1, 5, 6, 8, 13, 24, 40}, ns[] = {1, 7, 16, 17, 31, 32, 49, 100, 196};
    static const int ks[] = {1, 4, 16, 33, 300};
    int before = failures, cases = 0;
    for (int i = 0; i < 40; i++, cases++)
        check_packed_pointwise_case(ms[below_n(7)], ns[below_n(9)], ks[below_n(5)], 1 + below_n(2), pick_act(below_n(6)));
    for (int i = 0; i < 12; i++, cases++) check_gemv_case(1 + below_n(40), 1 + below_n(300), 1 + below_n(2));
    for (int i = 0; i < 12; i++, cases++) {
        int kh = 1 + below_n(3), kw = 1 + below_n(3);
        int pads[4] = {below_n(kh), below_n(kw), below_n(kh), below_n(kw)};
        check_pool_case(below_n(3), 1 + below_n(4), 1 + below_n(20), 1 + below_n(20), kh, kw, 1 + below_n(2),
                        1 + below_n(2), pads);
    }
    report("steps", cases, before);
}

/* ---------------------------------------------------------------- a MobileNetV2-like chain */
static const block_spec chain[] = {
    {16, 32, 32, 96, 3, 2, 24, 0}, {24, 16, 16, 144, 3, 1, 24, 1}, {24, 16, 16, 144, 3, 2, 32, 0},
    {32, 8, 8, 192, 3, 1, 32, 1},  {32, 8, 8, 192, 3, 2, 64, 0},   {64, 4, 4, 384, 3, 1, 64, 1},
};
#define CHAIN_CLASSES 16

static void run_chain(void)
{
    rng_state = 0x2545f4914f6cdd1dULL; /* the chain's inputs do not depend on the checks before it */
    int blocks = (int)(sizeof chain / sizeof *chain);
    long most = 0;
    for (int i = 0; i < blocks; i++) {
        long n = (long)chain[i].cin * chain[i].h * chain[i].w;
        if (n > most) most = n;
    }
    float *a = alloc_floats(most), *b = alloc_floats(most);
    fill(a, (long)chain[0].cin * chain[0].h * chain[0].w, 1);
    for (int i = 0; i < blocks; i++) {
        block_params p;
        block_params_init(&chain[i], &p);
        const char *problem = run_block(&chain[i], &p, a, b, 2, (chain[i].e + 1) / 2);
        block_params_free(&p);
        if (problem) {
            printf("FAIL chain block %d: %s\n", i, problem);
            failures++;
            return;
        }
        float *t = a;
        a = b, b = t;
    }
    const block_spec *last = &chain[blocks - 1];
    int channels = last->cout, pixels = block_out_size(last) * block_out_size(last);
    float pooled[64], logits[CHAIN_CLASSES];
    float *w = alloc_floats((long)CHAIN_CLASSES * channels), *bias = alloc_floats(CHAIN_CLASSES);
    fill(w, (long)CHAIN_CLASSES * channels, 0.2f);
    fill(bias, CHAIN_CLASSES, 0.1f);
    const char *problem = er_global_average_pool(a, pooled, channels, pixels, 1);
    if (!problem) problem = er_gemv(CHAIN_CLASSES, channels, w, pooled, bias, logits, 1);
    if (problem) {
        printf("FAIL chain head: %s\n", problem);
        failures++;
    } else {
        for (int i = 0; i < CHAIN_CLASSES; i++) printf("logit %d %.9e\n", i, logits[i]);
    }
    free(a), free(b), free(w), free(bias);
}

int main(void)
{
    printf("vector_floats %d\n", er_gemm_vector_floats());
    check_gemm();
    check_depthwise();
    check_blocks();
    check_steps();
    run_chain();
    printf(failures ? "kernel checks FAILED\n" : "kernel checks passed\n");
    return failures ? 1 : 0;
}
