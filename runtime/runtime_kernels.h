/* The kernels the C runtime calls beyond kernels.h: steps.c's (through steps_kernels.c) and fused_steps.c's
 * (through fused_kernels.c), whose Python bindings keep them static. */
#ifndef EDGERUN_RUNTIME_KERNELS_H
#define EDGERUN_RUNTIME_KERNELS_H

#include "../edgerun/kernels/native/kernels.h"
#include "../edgerun/kernels/native/threadpool.h"

long er_pw_packed_floats(int M, int K);
long er_pw_edge_floats(int N, int K);
const char *er_rt_pointwise(int M, int N, int K, const float *packed, const float *x, float *out,
                            const float *bias, const er_act *act, float *edge, int threads);
const char *er_rt_gemv(int rows, int K, const float *w, const float *x, const float *bias, float *y, int threads);
void er_pool2d(int kind, const float *x, float *out, int channels, int h, int w, int ho, int wo, int kh, int kw,
               int sh, int sw, const int pads[4]);

/* fused_steps.c: scratch of the squeeze-excitation: channels + squeeze floats; binary kinds: add 0, sub 1,
 * mul 2, div 3 (no broadcast). */
const char *er_rt_squeeze_excite(const float *x, float *y, int channels, long pixels, int squeeze, const float *w1,
                                 const float *b1, const er_act *act1, const float *w2, const float *b2,
                                 const er_act *act2, float *scratch, int threads);
const char *er_rt_channel_shuffle(const float *x, float *y, int channels, long pixels, int groups, int threads);
const char *er_rt_binary(int kind, const float *a, const float *b, float *y, long n, int threads);
const char *er_rt_activation(const float *x, float *y, long n, const er_act *act, int threads);

#endif
