/* Fused CPU kernels of the activation quantizer (per tensor, LSQ gradients); see proqha/quant/native.py.
 *
 * forward:  y = clamp(round(x * inv), qmin, qmax) * s, one pass (aten needs four).
 * backward: gx = g where qmin < x * inv < qmax, else 0; returns sum(g * q - gx * x * inv), q the clamped
 *           integers; one pass over g and x (aten needs three, and a second output).
 * The same float32 operations in the same order as proqha.quant.kernels.forward_math (so -0.0 stays
 * where it rounds), so outputs and d/dx are bit-identical to it; built with -ffp-contract=off so that
 * no multiply-add is fused. The scale sum
 * is accumulated in float per block of BLOCK elements and in double across blocks.
 * Parallel with OpenMP: linked against libgomp, which resolves to the copy torch has already loaded,
 * so these loops share torch's thread pool. */
#include <math.h>
#include <stdint.h>

#define PARALLEL_MIN 32768
#define BLOCK 4096

static inline float clamp_nan(float v, float lo, float hi) { /* NaN stays NaN, as torch.clamp keeps it */
    return v < lo ? lo : (v > hi ? hi : v);
}

void fake_quant_forward(const float *restrict x, float *restrict y, int64_t n, float inv, float s,
                        float qmin, float qmax, int threads) {
    #pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = clamp_nan(nearbyintf(x[i] * inv), qmin, qmax) * s;
}

double fake_quant_backward(const float *restrict g, const float *restrict x, float *restrict gx, int64_t n,
                           float inv, float qmin, float qmax, int threads) {
    double total = 0.0;
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    #pragma omp parallel for reduction(+ : total) schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        float part = 0.0f;
        #pragma omp simd reduction(+ : part)
        for (int64_t i = lo; i < hi; i++) {
            const float xs = x[i] * inv, gi = g[i];
            const float gxi = (xs > qmin && xs < qmax) ? gi : 0.0f;
            gx[i] = gxi;
            part += gi * clamp_nan(nearbyintf(xs), qmin, qmax) - gxi * xs;
        }
        total += part;
    }
    return total;
}
