// Portable 16-bit storage kernels: the fallback and the reference the SIMD
// ones are tested against. Distances decode each value and accumulate as the
// float32 kernels do (four accumulators, the same order).
#include "distance_kernels.h"
#include "half_convert.h"

namespace sparknn::kernels_scalar {
namespace {

template <float (*Decode)(uint16_t)>
float l2sq_16(const float* a, const uint16_t* b, size_t dim) {
    float acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4) {
        for (size_t j = 0; j < 4; ++j) {
            const float d = a[i + j] - Decode(b[i + j]);
            acc[j] += d * d;
        }
    }
    for (; i < dim; ++i) {
        const float d = a[i] - Decode(b[i]);
        acc[0] += d * d;
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <float (*Decode)(uint16_t)>
float dot_16(const float* a, const uint16_t* b, size_t dim) {
    float acc[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= dim; i += 4) {
        for (size_t j = 0; j < 4; ++j) acc[j] += a[i + j] * Decode(b[i + j]);
    }
    for (; i < dim; ++i) acc[0] += a[i] * Decode(b[i]);
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace

float l2sq_fp16(const float* a, const uint16_t* b, size_t dim) { return l2sq_16<half::fp16_to_float>(a, b, dim); }
float dot_fp16(const float* a, const uint16_t* b, size_t dim) { return dot_16<half::fp16_to_float>(a, b, dim); }
float l2sq_bf16(const float* a, const uint16_t* b, size_t dim) { return l2sq_16<half::bf16_to_float>(a, b, dim); }
float dot_bf16(const float* a, const uint16_t* b, size_t dim) { return dot_16<half::bf16_to_float>(a, b, dim); }

void l2sq_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    for (int t = 0; t < 4; ++t) out[t] = l2sq_fp16(a, b[t], dim);
}
void dot_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    for (int t = 0; t < 4; ++t) out[t] = dot_fp16(a, b[t], dim);
}
void l2sq_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    for (int t = 0; t < 4; ++t) out[t] = l2sq_bf16(a, b[t], dim);
}
void dot_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    for (int t = 0; t < 4; ++t) out[t] = dot_bf16(a, b[t], dim);
}

void decode_fp16(const uint16_t* in, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half::fp16_to_float(in[i]);
}
void encode_fp16(const float* in, size_t n, uint16_t* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half::fp16_from_float(in[i]);
}
void decode_bf16(const uint16_t* in, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half::bf16_to_float(in[i]);
}
void encode_bf16(const float* in, size_t n, uint16_t* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half::bf16_from_float(in[i]);
}

}  // namespace sparknn::kernels_scalar
