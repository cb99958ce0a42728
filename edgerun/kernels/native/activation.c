/* Pointwise activations applied in place; one plain loop per kind, each in its own function
 * so that GCC if-converts and vectorises every one of them (selects, not branches: ReLU6
 * data is clipped half of the time and branches there mispredict). */
#include <math.h>

#include "kernels.h"

static void relu(float *restrict p, long n)
{
    for (long i = 0; i < n; i++) {
        float v = p[i];
        p[i] = v < 0.0f ? 0.0f : v; /* NaN fails the test and passes through */
    }
}

static void clip(float *restrict p, long n, float lo, float hi)
{
    for (long i = 0; i < n; i++) {
        float v = p[i];
        v = v < lo ? lo : v;
        p[i] = v > hi ? hi : v;
    }
}

static void hardsigmoid(float *restrict p, long n, float alpha, float beta)
{
    for (long i = 0; i < n; i++) {
        float v = alpha * p[i] + beta;
        v = v < 0.0f ? 0.0f : v;
        p[i] = v > 1.0f ? 1.0f : v;
    }
}

static void hardswish(float *restrict p, long n)
{
    for (long i = 0; i < n; i++) {
        float v = p[i], gate = v * (1.0f / 6.0f) + 0.5f;
        gate = gate < 0.0f ? 0.0f : gate;
        gate = gate > 1.0f ? 1.0f : gate;
        p[i] = v * gate;
    }
}

static void leakyrelu(float *restrict p, long n, float alpha)
{
    for (long i = 0; i < n; i++) {
        float v = p[i], scaled = alpha * v;
        p[i] = v < 0.0f ? scaled : v;
    }
}

static void sigmoid(float *restrict p, long n)
{
    for (long i = 0; i < n; i++) p[i] = 1.0f / (1.0f + expf(-p[i]));
}

static void elu(float *restrict p, long n, float alpha)
{
    for (long i = 0; i < n; i++) {
        float v = p[i];
        p[i] = v < 0.0f ? alpha * expm1f(v) : v;
    }
}

static void silu(float *restrict p, long n)
{
    for (long i = 0; i < n; i++) {
        float v = p[i];
        p[i] = v * (1.0f / (1.0f + expf(-v))); /* as Mul(x, Sigmoid(x)): -inf gives NaN there too */
    }
}

void er_apply_activation(float *p, long n, const er_act *act)
{
    switch (act->kind) {
    case ER_ACT_RELU: relu(p, n); break;
    case ER_ACT_CLIP: clip(p, n, act->a, act->b); break;
    case ER_ACT_HARDSWISH: hardswish(p, n); break;
    case ER_ACT_HARDSIGMOID: hardsigmoid(p, n, act->a, act->b); break;
    case ER_ACT_LEAKYRELU: leakyrelu(p, n, act->a); break;
    case ER_ACT_SIGMOID: sigmoid(p, n); break;
    case ER_ACT_ELU: elu(p, n, act->a); break;
    case ER_ACT_SILU: silu(p, n); break;
    default: break;
    }
}
