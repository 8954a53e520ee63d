/* Fused CPU kernels of the quantizers (LSQ gradients); see proqha/quant/native.py.
 *
 * Q(v) = clamp(round(v * inv), lo, hi) * s, with the float32 operations of
 * proqha.quant.kernels.forward_math in its order (so outputs and d/dx are bit-identical to it; built with
 * -ffp-contract=off so that no multiply-add is fused). NaN stays NaN, as torch.clamp keeps it.
 *
 * fake_quant_*: one quantizer, one pass each way (aten needs four forward and three backward).
 * quant_add_*:  a residual add between quantizers, out = Qo(Qa(a) + Qb(b)), an input whose quantizer is
 *               off (on = 0) passing unchanged; one pass each way, the sum never stored (the backward
 *               recomputes it bit for bit).
 *
 * A scale sum is deterministic: element i adds to lane i % LANES of its block of BLOCK elements (float),
 * the lanes are added in a fixed order, and the blocks' partial sums in block order (double). The same
 * terms therefore give the same sum on any thread count and vector width, fused or not.
 * Parallel with OpenMP where built with it (GCC, and torch on libgomp.so.1): the library then resolves
 * to the copy torch has already loaded, so these loops share torch's thread pool. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define PARALLEL_MIN 32768
#define BLOCK 4096
#define LANES 16

typedef struct { float inv, s, lo, hi; int on; } grid_t;

static inline float clamp_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Branch-free (selects only), so that loops over it vectorise. */
static inline float fq(float v, grid_t q) {
    const float r = clamp_nan(nearbyintf(v * q.inv), q.lo, q.hi) * q.s;
    return q.on ? r : v;
}

/* A quantizer's backward at one element: returns d/dv and sets *term to its scale-sum term
 * (g * q - d/dv * v * inv, q the clamped integer); an off quantizer passes g with term 0. */
static inline float fq_grad(float g, float v, grid_t q, float *term) {
    const float vs = v * q.inv;
    const float gv = ((vs > q.lo) & (vs < q.hi)) ? g : 0.0f;
    const float t = g * clamp_nan(nearbyintf(vs), q.lo, q.hi) - gv * vs;
    *term = q.on ? t : 0.0f;
    return q.on ? gv : g;
}

static inline double lane_sum(const float acc[LANES]) {
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return (double)s;
}

/* ---- one quantizer ---- */

static void fq_forward_block(const float *restrict x, float *restrict y, int64_t n, int64_t b, grid_t q) {
    const int64_t hi = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
    for (int64_t i = b * BLOCK; i < hi; i++) y[i] = fq(x[i], q);
}

/* Loops stay in per-block functions: GCC vectorises those, not the same loop inside an OpenMP region. */
void fake_quant_forward(const float *restrict x, float *restrict y, int64_t n, grid_t q, int threads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t b = 0; b < blocks; b++) fq_forward_block(x, y, n, b, q);
}

static inline void fq_backward_at(const float *restrict g, const float *restrict x, float *restrict gx,
                                  int64_t i, grid_t q, float *acc) {
    float term;
    gx[i] = fq_grad(g[i], x[i], q, &term);
    *acc += term;
}

static double fq_backward_block(const float *restrict g, const float *restrict x, float *restrict gx,
                                int64_t n, int64_t b, grid_t q) {
    const int64_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
    float acc[LANES] = {0.0f};
    int64_t i = lo;
    for (; i + LANES <= hi; i += LANES) {
        #pragma omp simd
        for (int l = 0; l < LANES; l++) fq_backward_at(g, x, gx, i + l, q, &acc[l]);
    }
    for (; i < hi; i++) fq_backward_at(g, x, gx, i, q, &acc[(i - lo) % LANES]);
    return lane_sum(acc);
}

/* Writes d/dx; returns the scale sum. */
double fake_quant_backward(const float *restrict g, const float *restrict x, float *restrict gx, int64_t n,
                           grid_t q, int threads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    double total = 0.0, *partial = malloc((size_t)(blocks > 0 ? blocks : 1) * sizeof(double));
    if (!partial) {  /* the same sum, serially */
        for (int64_t b = 0; b < blocks; b++) total += fq_backward_block(g, x, gx, n, b, q);
        return total;
    }
    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t b = 0; b < blocks; b++) partial[b] = fq_backward_block(g, x, gx, n, b, q);
    for (int64_t b = 0; b < blocks; b++) total += partial[b];
    free(partial);
    return total;
}

/* ---- a residual add between quantizers ---- */

static void add_forward_block(const float *restrict a, const float *restrict b, float *restrict out, int64_t n,
                              int64_t k, grid_t qa, grid_t qb, grid_t qo) {
    const int64_t hi = (k + 1) * BLOCK < n ? (k + 1) * BLOCK : n;
    for (int64_t i = k * BLOCK; i < hi; i++) out[i] = fq(fq(a[i], qa) + fq(b[i], qb), qo);
}

void quant_add_forward(const float *restrict a, const float *restrict b, float *restrict out, int64_t n,
                       grid_t qa, grid_t qb, grid_t qo, int threads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t k = 0; k < blocks; k++) add_forward_block(a, b, out, n, k, qa, qb, qo);
}

static inline void add_backward_at(const float *restrict g, const float *restrict a, const float *restrict b,
                                   float *restrict ga, float *restrict gb, int64_t i, grid_t qa, grid_t qb,
                                   grid_t qo, float *acc_a, float *acc_b, float *acc_o) {
    float ta, tb, to;
    const float go = fq_grad(g[i], fq(a[i], qa) + fq(b[i], qb), qo, &to);
    ga[i] = fq_grad(go, a[i], qa, &ta);
    gb[i] = fq_grad(go, b[i], qb, &tb);
    *acc_a += ta;
    *acc_b += tb;
    *acc_o += to;
}

static inline __attribute__((always_inline)) void add_backward_block_on(
        const float *restrict g, const float *restrict a, const float *restrict b, float *restrict ga,
        float *restrict gb, int64_t n, int64_t k, grid_t qa, grid_t qb, grid_t qo, double out[3]) {
    const int64_t lo = k * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
    float acc_a[LANES] = {0.0f}, acc_b[LANES] = {0.0f}, acc_o[LANES] = {0.0f};
    int64_t i = lo;
    for (; i + LANES <= hi; i += LANES) {
        #pragma omp simd
        for (int l = 0; l < LANES; l++)
            add_backward_at(g, a, b, ga, gb, i + l, qa, qb, qo, &acc_a[l], &acc_b[l], &acc_o[l]);
    }
    for (; i < hi; i++) {
        const int l = (int)((i - lo) % LANES);
        add_backward_at(g, a, b, ga, gb, i, qa, qb, qo, &acc_a[l], &acc_b[l], &acc_o[l]);
    }
    out[0] = lane_sum(acc_a);
    out[1] = lane_sum(acc_b);
    out[2] = lane_sum(acc_o);
}

/* The block with the inputs' on flags as constants: GCC vectorises each of the four versions. */
static void add_backward_block(const float *restrict g, const float *restrict a, const float *restrict b,
                               float *restrict ga, float *restrict gb, int64_t n, int64_t k, grid_t qa,
                               grid_t qb, grid_t qo, double out[3]) {
    qo.on = 1;
    if (qa.on && qb.on) {
        qa.on = qb.on = 1;
        add_backward_block_on(g, a, b, ga, gb, n, k, qa, qb, qo, out);
    } else if (qa.on) {
        qa.on = 1, qb.on = 0;
        add_backward_block_on(g, a, b, ga, gb, n, k, qa, qb, qo, out);
    } else if (qb.on) {
        qa.on = 0, qb.on = 1;
        add_backward_block_on(g, a, b, ga, gb, n, k, qa, qb, qo, out);
    } else {
        qa.on = qb.on = 0;
        add_backward_block_on(g, a, b, ga, gb, n, k, qa, qb, qo, out);
    }
}

/* Writes d/da and d/db; sums[0..2] receive the scale sums of qa, qb, qo. */
void quant_add_backward(const float *restrict g, const float *restrict a, const float *restrict b,
                        float *restrict ga, float *restrict gb, int64_t n, grid_t qa, grid_t qb, grid_t qo,
                        double *restrict sums, int threads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
    double *partial = malloc((size_t)(blocks > 0 ? blocks : 1) * 3 * sizeof(double));
    sums[0] = sums[1] = sums[2] = 0.0;
    if (!partial) {  /* the same sums, serially */
        double one[3];
        for (int64_t k = 0; k < blocks; k++) {
            add_backward_block(g, a, b, ga, gb, n, k, qa, qb, qo, one);
            for (int j = 0; j < 3; j++) sums[j] += one[j];
        }
        return;
    }
    #pragma omp parallel for schedule(static) num_threads(threads) if (n >= PARALLEL_MIN)
    for (int64_t k = 0; k < blocks; k++) add_backward_block(g, a, b, ga, gb, n, k, qa, qb, qo, partial + 3 * k);
    for (int64_t k = 0; k < blocks; k++)
        for (int j = 0; j < 3; j++) sums[j] += partial[3 * k + j];
    free(partial);
}

/* ---- weights: one grid per output channel (rows of a [channels, k] matrix) ----
 * The float32 operations of kernels.per_channel_forward_math/per_channel_backward_math in their order, on
 * the scales of kernels.lsq_scale, and the clip ranges' gradients as kernels.lsq_alpha_grad takes them;
 * d/dw is grad times (q in range ? 1 : 0), as that math multiplies by its mask (so -0.0 where it does). */

/* max(|alpha|, eps) / qmax, NaN kept (torch.clamp_min's NaN passes) */
static inline float lsq_scale(float alpha, float eps, float qmax) {
    const float a = fabsf(alpha);
    return (a < eps ? eps : a) / qmax;
}

/* d/dalpha from a channel's scale sum: (|alpha| > eps ? sum * factor / qmax : 0) * sgn(alpha) */
static inline float lsq_alpha_grad(float sum, float factor, float alpha, float eps, float qmax) {
    const float sign = alpha > 0.0f ? 1.0f : (alpha < 0.0f ? -1.0f : 0.0f);  /* torch.sgn: 0 for NaN */
    return (fabsf(alpha) > eps ? (sum * factor) / qmax : 0.0f) * sign;
}

static void pc_forward_row(const float *restrict w, float *restrict y, int64_t k, float inv, float s, float lo, float hi) {
    for (int64_t i = 0; i < k; i++) y[i] = clamp_nan(nearbyintf(w[i] * inv), lo, hi) * s;
}

void per_channel_forward(const float *restrict w, float *restrict y, int64_t channels, int64_t k,
                         const float *restrict alpha, float eps, int qmin, int qmax, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (channels * k >= PARALLEL_MIN)
    for (int64_t c = 0; c < channels; c++) {
        const float s = lsq_scale(alpha[c], eps, (float)qmax);
        pc_forward_row(w + c * k, y + c * k, k, 1.0f / s, s, (float)qmin, (float)qmax);
    }
}

static inline void pc_backward_at(const float *restrict g, const float *restrict w, float *restrict gw, int64_t i,
                                  float inv, float lo, float hi, float *acc) {
    const float ws = w[i] * inv, q = nearbyintf(ws), gi = g[i];
    const float inside = (float)((q >= lo) & (q <= hi));  /* q == clamp(q), NaN included; a select would not vectorise */
    gw[i] = gi * inside;
    *acc += gi * (clamp_nan(q, lo, hi) - ws * inside);
}

static float pc_backward_row(const float *restrict g, const float *restrict w, float *restrict gw, int64_t k,
                             float inv, float lo, float hi) {
    float acc[LANES] = {0.0f};
    int64_t i = 0;
    for (; i + LANES <= k; i += LANES) {
        #pragma omp simd
        for (int l = 0; l < LANES; l++) pc_backward_at(g, w, gw, i + l, inv, lo, hi, &acc[l]);
    }
    for (; i < k; i++) pc_backward_at(g, w, gw, i, inv, lo, hi, &acc[i % LANES]);
    return (float)lane_sum(acc);
}

/* Writes d/dw and each channel's d/dalpha into ga[channels] (its scale sum times factor, to alpha). */
void per_channel_backward(const float *restrict g, const float *restrict w, float *restrict gw, float *restrict ga,
                          int64_t channels, int64_t k, const float *restrict alpha, float eps, float factor,
                          int qmin, int qmax, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (channels * k >= PARALLEL_MIN)
    for (int64_t c = 0; c < channels; c++) {
        const float s = lsq_scale(alpha[c], eps, (float)qmax);
        const float sum = pc_backward_row(g + c * k, w + c * k, gw + c * k, k, 1.0f / s, (float)qmin, (float)qmax);
        ga[c] = lsq_alpha_grad(sum, factor, alpha[c], eps, (float)qmax);
    }
}
