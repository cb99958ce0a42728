/* The non-block kernels of edgerun/kernels/native/steps.c, built without their Python bindings
 * (ER_NO_PYTHON), and entry points for the two the bindings keep static. */
#ifndef ER_NO_PYTHON /* the Makefile defines it for every source */
#define ER_NO_PYTHON
#endif
#include "../edgerun/kernels/native/steps.c"

#include "runtime_kernels.h"

const char *er_rt_pointwise(int M, int N, int K, const float *packed, const float *x, float *out,
                            const float *bias, const er_act *act, float *edge, int threads)
{
    return er_pw_gemm(M, N, K, packed, x, out, bias, act, edge, threads);
}

const char *er_rt_gemv(int rows, int K, const float *w, const float *x, const float *bias, float *y, int threads)
{
    return er_gemv(rows, K, w, x, bias, y, threads);
}
