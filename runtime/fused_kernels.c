/* The fused non-conv kernels of edgerun/kernels/native/fused_steps.c (squeeze-excitation, channel shuffle,
 * threaded elementwise steps), built without their Python bindings (ER_NO_PYTHON), and entry points that
 * split the work into parts as the bindings do. */
#ifndef ER_NO_PYTHON /* the Makefile defines it for every source */
#define ER_NO_PYTHON
#endif
#include "../edgerun/kernels/native/fused_steps.c"

#include "runtime_kernels.h"

const char *er_rt_squeeze_excite(const float *x, float *y, int channels, long pixels, int squeeze, const float *w1,
                                 const float *b1, const er_act *act1, const float *w2, const float *b2,
                                 const er_act *act2, float *scratch, int threads)
{
    return er_squeeze_excite(x, y, channels, pixels, squeeze, w1, b1, act1, w2, b2, act2, scratch, threads);
}

const char *er_rt_channel_shuffle(const float *x, float *y, int channels, long pixels, int groups, int threads)
{
    shuffle_job job = {.x = x, .y = y, .channels = channels, .groups = groups, .pixels = pixels};
    job.parts = er_worth_parts((double)channels * pixels, threads, channels);
    return er_run_parts(shuffle_item, &job, job.parts);
}

const char *er_rt_binary(int kind, const float *a, const float *b, float *y, long n, int threads)
{
    ew_job job = {.a = a, .b = b, .y = y, .n = n, .op = kind, .parts = ew_parts(n, threads)};
    return er_run_parts(binary_item, &job, job.parts);
}

const char *er_rt_activation(const float *x, float *y, long n, const er_act *act, int threads)
{
    ew_job job = {.a = x, .y = y, .n = n, .act = *act, .parts = ew_parts(n, threads)};
    return er_run_parts(activation_item, &job, job.parts);
}
