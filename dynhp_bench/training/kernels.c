/* The fast path's fused loops (dynhp_bench/training/kernels.py compiles this file with the system C compiler).
 *
 * Each function does in one pass over its matrices what the PyTorch-ops fast path does in several: the
 * step's cost at small batches is memory traffic and per-operation overhead, not arithmetic
 * (docs/performance.md). Float32 throughout, IEEE arithmetic (no -ffast-math); only the reductions marked
 * `omp simd reduction` are summed in a vector order, as PyTorch's own reductions are.
 */
#include <math.h>
#include <string.h>

/* Rows of M and W a sweep of `dynhp_weight_pass` (4: 20 % faster than 1 on 300 × 784, one thread). */
#define SWEEP_ROWS 4

/* Rows k … k + rows − 1 of the pass, `rows` a constant where it is inlined: the column sums are loaded and
 * stored once for the rows, not once a row. Returns their Σ (M·diag(g))². */
static inline float weight_pass_rows(const float *m, const float *w, float *grad, const float *restrict gate,
                                     const float *restrict prob, float wd, float *restrict gate_grad,
                                     float *restrict column_sq, long k, long in, const long rows, const int has_gate,
                                     const int has_sq) {
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (long j = 0; j < in; j++) {
        float gate_sum = has_gate ? gate_grad[j] : 0.0f;
        float square_sum = column_sq[j];
        const float gj = has_gate ? gate[j] : 1.0f;
        const float pj = prob[j];
        for (long r = 0; r < rows; r++) {
            const long at = (k + r) * in + j;
            const float mkj = m[at];
            const float wkj = w[at];
            const float data = has_gate ? mkj * gj : mkj;
            if (has_sq) sq += data * data;
            if (has_gate) gate_sum += mkj * wkj;
            square_sum += wkj * wkj;
            grad[at] = data + wd * wkj * pj;
        }
        if (has_gate) gate_grad[j] = gate_sum;
        column_sq[j] = square_sum;
    }
    return sq;
}

static inline void weight_pass_body(const float *m, const float *w, float *grad, const float *gate,
                                    const float *prob, float wd, float *gate_grad, float *column_sq, float *grad_sq,
                                    long out, long in, const int has_gate, const int has_sq) {
    memset(column_sq, 0, (size_t)in * sizeof(float));
    if (has_gate) memset(gate_grad, 0, (size_t)in * sizeof(float));
    float sq = 0.0f;
    long k = 0;
    for (; k + SWEEP_ROWS <= out; k += SWEEP_ROWS)
        sq += weight_pass_rows(m, w, grad, gate, prob, wd, gate_grad, column_sq, k, in, SWEEP_ROWS, has_gate, has_sq);
    for (; k < out; k++)
        sq += weight_pass_rows(m, w, grad, gate, prob, wd, gate_grad, column_sq, k, in, 1, has_gate, has_sq);
    if (has_sq) *grad_sq += sq;
}

/* One Linear layer's weight gradient, the penalty's weight decay and the sums the rest of the step needs.
 *
 * m (out × in): with a shared gate g, M = δᵀ·h (δ the gradient of the mean data loss w.r.t. the layer's
 *   output, h its ungated input); without one (per-example gates), the weight's data gradient itself.
 * Writes grad = M·diag(g) + wd·W·diag(p) (grad may be m itself),
 *   gate_grad[j] = Σ_k M[k,j]·W[k,j] (with a gate: d(data loss)/d g_j),
 *   column_sq[j] = Σ_k W[k,j]² (for the gates' L0 charges),
 * and adds Σ (M·diag(g))² to *grad_sq when grad_sq is not NULL (DynHP's ‖ḡ‖², before the decay joins). */
void dynhp_weight_pass(const float *m, const float *w, float *grad, const float *gate, const float *prob, float wd,
                       float *gate_grad, float *column_sq, float *grad_sq, long out, long in) {
    if (gate) {
        if (grad_sq) weight_pass_body(m, w, grad, gate, prob, wd, gate_grad, column_sq, grad_sq, out, in, 1, 1);
        else weight_pass_body(m, w, grad, gate, prob, wd, gate_grad, column_sq, grad_sq, out, in, 1, 0);
    } else {
        if (grad_sq) weight_pass_body(m, w, grad, gate, prob, wd, gate_grad, column_sq, grad_sq, out, in, 0, 1);
        else weight_pass_body(m, w, grad, gate, prob, wd, gate_grad, column_sq, grad_sq, out, in, 0, 0);
    }
}

/* DynHP's per-layer share of Σ_i ‖δ_i‖²·(‖a_i‖² + 1) (variance.GradientTap), added to *total:
 * delta (rows × out), a_i = h_i ⊙ g with h (rows × in) and g a shared gate (in), or a_i = h_i when g is NULL. */
void dynhp_tap_add(float *total, const float *restrict delta, const float *restrict h, const float *restrict gate,
                   long rows, long out, long in) {
    float sum = 0.0f;
    for (long i = 0; i < rows; i++) {
        const float *di = delta + i * out;
        const float *hi = h + i * in;
        float delta_sq = 0.0f;
        float input_sq = 0.0f;
#pragma omp simd reduction(+ : delta_sq)
        for (long k = 0; k < out; k++) delta_sq += di[k] * di[k];
        if (gate) {
#pragma omp simd reduction(+ : input_sq)
            for (long j = 0; j < in; j++) {
                const float a = hi[j] * gate[j];
                input_sq += a * a;
            }
        } else {
#pragma omp simd reduction(+ : input_sq)
            for (long j = 0; j < in; j++) input_sq += hi[j] * hi[j];
        }
        sum += delta_sq * (input_sq + 1.0f);
    }
    *total += sum;
}

/* ‖S‖₁ = B·total − (grad_sq + Σ bias_grad²), clamped at 0 (variance.variance_l1), into *s_l1; then total and
 * grad_sq back to 0 for the next step. */
void dynhp_variance_l1(float *s_l1, float *total, float *grad_sq, const float *restrict bias_grad, long n_bias,
                       long rows) {
    float bias_sq = 0.0f;
#pragma omp simd reduction(+ : bias_sq)
    for (long j = 0; j < n_bias; j++) bias_sq += bias_grad[j] * bias_grad[j];
    const float value = (float)rows * *total - (*grad_sq + bias_sq);
    *s_l1 = value < 0.0f ? 0.0f : value; /* NaN stays NaN, as clamp_min leaves it */
    *total = 0.0f;
    *grad_sq = 0.0f;
}

/* One hard-concrete draw of n shared gates (gates.uniform_noise then gates.sample_gates) from r ~ U[0, 1):
 * u = r·(1 − 2ε) + ε; s = sigmoid((logit u + log α)/β); pre = s·(ζ − γ) + γ; gate = clamp(pre, 0, 1); what the
 * backward needs (s, pre) is kept; counts += gate > 0. */
void dynhp_gates_draw(const float *restrict r, const float *restrict log_alpha, long n, float *restrict sample,
                      float *restrict pre_clamp, float *restrict gates, float *restrict counts, float noise_scale,
                      float eps, float beta, float zeta, float gamma) {
    const float stretch = zeta - gamma;
    for (long j = 0; j < n; j++) {
        const float u = r[j] * noise_scale + eps;
        const float s = 1.0f / (1.0f + expf(-((logf(u / (1.0f - u)) + log_alpha[j]) / beta)));
        const float pre = s * stretch + gamma;
        const float gate = pre < 0.0f ? 0.0f : (pre > 1.0f ? 1.0f : pre);
        sample[j] = s;
        pre_clamp[j] = pre;
        gates[j] = gate;
        counts[j] += gate > 0.0f ? 1.0f : 0.0f;
    }
}

/* The gates' chain rule and the penalty (gates.GatedMLP.add_penalty_gradients but for the weights' decay, which
 * `dynhp_weight_pass` adds): with c_j = charge_constant_j + (wd/2)·column_sq_j the gate's L0 charge,
 * d/d log α_j = d(data loss)/d g_j · [pre_j = g_j]·slope·s_j(1 − s_j) + c_j·p_j(1 − p_j);
 * biases_grad += wd·b; *penalty = Σ_j p_j·c_j + (wd/2)·Σ b². */
void dynhp_gates_backward(const float *restrict gate_grad, const float *restrict sample,
                          const float *restrict pre_clamp, const float *restrict gates, const float *restrict prob,
                          const float *restrict charge_constant, const float *restrict column_sq, long n, float slope,
                          float wd, float *restrict log_alpha_grad, const float *restrict biases,
                          float *restrict biases_grad, long n_bias, float *restrict penalty) {
    const float half_wd = 0.5f * wd;
    double charged = 0.0; /* thousands of terms: in double, so that the sum is PyTorch's to well within 1e-6 */
    for (long j = 0; j < n; j++) {
        const float charge = charge_constant[j] + half_wd * column_sq[j];
        const float s = sample[j];
        const float p = prob[j];
        const float through = pre_clamp[j] == gates[j] ? gate_grad[j] * (slope * (1.0f - s) * s) : 0.0f;
        log_alpha_grad[j] = through + charge * ((1.0f - p) * p);
        charged += (double)(p * charge);
    }
    double bias_sq = 0.0;
    for (long j = 0; j < n_bias; j++) {
        bias_sq += (double)(biases[j] * biases[j]);
        biases_grad[j] += wd * biases[j];
    }
    *penalty = (float)(charged + (double)half_wd * bias_sq);
}
