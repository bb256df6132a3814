// Portable kernels: the fallback and the reference the SIMD kernels are tested
// against. Four accumulators let the compiler vectorise without -ffast-math.
#include "distance_kernels.h"

namespace sparknn::kernels_scalar {

float l2sq(const float* a, const float* b, size_t dim) {
    float acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4) {
        for (size_t j = 0; j < 4; ++j) {
            const float d = a[i + j] - b[i + j];
            acc[j] += d * d;
        }
    }
    for (; i < dim; ++i) {
        const float d = a[i] - b[i];
        acc[0] += d * d;
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

float dot(const float* a, const float* b, size_t dim) {
    float acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4) {
        for (size_t j = 0; j < 4; ++j) acc[j] += a[i + j] * b[i + j];
    }
    for (; i < dim; ++i) acc[0] += a[i] * b[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void l2sq_x4(const float* a, const float* const* b, size_t dim, float* out) {
    for (int t = 0; t < 4; ++t) out[t] = l2sq(a, b[t], dim);
}

void dot_x4(const float* a, const float* const* b, size_t dim, float* out) {
    for (int t = 0; t < 4; ++t) out[t] = dot(a, b[t], dim);
}

void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out) {
    for (size_t r = 0; r < n; ++r) {
        const uint8_t* code = codes + r * m;
        float acc0 = 0, acc1 = 0;
        size_t j = 0;
        for (; j + 2 <= m; j += 2) {
            acc0 += table[j * 256 + code[j]];
            acc1 += table[(j + 1) * 256 + code[j + 1]];
        }
        if (j < m) acc0 += table[j * 256 + code[j]];
        out[r] = offset + (acc0 + acc1);
    }
}

}  // namespace sparknn::kernels_scalar
