/* The kernels the C runtime calls beyond kernels.h (steps.c, through steps_kernels.c). */
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

#endif
