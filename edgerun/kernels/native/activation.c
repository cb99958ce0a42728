/* Pointwise activations applied in place; one plain loop per kind so each vectorises. */
#include <math.h>

#include "kernels.h"

/* Two separate selects compile to branch-free max/min (a nested ?: became branches that
 * mispredict on ReLU6 data, half of which is clipped). */
static inline float clampf(float v, float lo, float hi)
{
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

void er_apply_activation(float *p, long n, const er_act *act)
{
    float a = act->a, b = act->b;
    switch (act->kind) {
    case ER_ACT_RELU:
        for (long i = 0; i < n; i++) p[i] = p[i] > 0.0f ? p[i] : 0.0f;
        break;
    case ER_ACT_CLIP:
        for (long i = 0; i < n; i++) p[i] = clampf(p[i], a, b);
        break;
    case ER_ACT_HARDSWISH:
        for (long i = 0; i < n; i++) p[i] = p[i] * clampf(p[i] * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f);
        break;
    case ER_ACT_HARDSIGMOID:
        for (long i = 0; i < n; i++) p[i] = clampf(a * p[i] + b, 0.0f, 1.0f);
        break;
    case ER_ACT_LEAKYRELU:
        for (long i = 0; i < n; i++) p[i] = p[i] < 0.0f ? a * p[i] : p[i];
        break;
    case ER_ACT_SIGMOID:
        for (long i = 0; i < n; i++) p[i] = 1.0f / (1.0f + expf(-p[i]));
        break;
    default:
        break;
    }
}
