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

}  // namespace sparknn::kernels_scalar
