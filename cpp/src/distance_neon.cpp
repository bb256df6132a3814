// NEON kernels for arm64 (compiled only there; NEON is baseline on AArch64).
#if defined(__aarch64__)
#include <arm_neon.h>

#include "distance_kernels.h"

namespace sparknn::kernels_neon {

float l2sq(const float* a, const float* b, size_t dim) {
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
    size_t i = 0;
    for (; i + 8 <= dim; i += 8) {
        const float32x4_t d0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
        const float32x4_t d1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        acc0 = vfmaq_f32(acc0, d0, d0);
        acc1 = vfmaq_f32(acc1, d1, d1);
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < dim; ++i) {
        const float d = a[i] - b[i];
        sum += d * d;
    }
    return sum;
}

float dot(const float* a, const float* b, size_t dim) {
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
    size_t i = 0;
    for (; i + 8 <= dim; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < dim; ++i) sum += a[i] * b[i];
    return sum;
}

// No gather on NEON: the portable loop (two accumulators) is as good as it gets.
void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out) {
    kernels_scalar::pq_scan(table, codes, n, m, offset, out);
}

}  // namespace sparknn::kernels_neon
#endif
