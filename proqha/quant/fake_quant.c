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

/* A residual add between quantizers: out = Qo(Qa(a) + Qb(b)), Q(v) = clamp(round(v * inv), lo, hi) * s,
 * an input whose quantizer is off (on = 0) passing unchanged. One pass each way where the three quantizers
 * and the add take four forward and three backward, and the sum Qa(a) + Qb(b) is never stored: the
 * backward recomputes it bit for bit. */
typedef struct { float inv, s, lo, hi; int on; } grid_t;

static inline float fq(float v, grid_t q) { return q.on ? clamp_nan(nearbyintf(v * q.inv), q.lo, q.hi) * q.s : v; }

void quant_add_forward(const float *restrict a, const float *restrict b, float *restrict out, int64_t n,
                       grid_t qa, grid_t qb, grid_t qo, int threads) {
    #pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = fq(fq(a[i], qa) + fq(b[i], qb), qo);
}

/* One quantizer's backward at one element: returns d/dv, adds its scale-sum term to *part. */
static inline float fq_grad(float g, float v, grid_t q, float *part) {
    if (!q.on) return g;
    const float vs = v * q.inv;
    const float gv = (vs > q.lo && vs < q.hi) ? g : 0.0f;
    *part += g * clamp_nan(nearbyintf(vs), q.lo, q.hi) - gv * vs;
    return gv;
}

/* Writes d/da and d/db; sums[0..2] receive the scale sums of qa, qb, qo. */
void quant_add_backward(const float *restrict g, const float *restrict a, const float *restrict b,
                        float *restrict ga, float *restrict gb, int64_t n, grid_t qa, grid_t qb, grid_t qo,
                        double *restrict sums, int threads) {
    double sa = 0.0, sb = 0.0, so = 0.0;
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    #pragma omp parallel for reduction(+ : sa, sb, so) schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t k = 0; k < blocks; k++) {
        const int64_t lo = k * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        float pa = 0.0f, pb = 0.0f, po = 0.0f;
        #pragma omp simd reduction(+ : pa, pb, po)
        for (int64_t i = lo; i < hi; i++) {
            const float go = fq_grad(g[i], fq(a[i], qa) + fq(b[i], qb), qo, &po);
            ga[i] = fq_grad(go, a[i], qa, &pa);
            gb[i] = fq_grad(go, b[i], qb, &pb);
        }
        sa += pa;
        sb += pb;
        so += po;
    }
    sums[0] = sa;
    sums[1] = sb;
    sums[2] = so;
}
