// AVX2 + FMA + F16C kernels for 16-bit storage: eight values widened to float32
// per step (vcvtph2ps for fp16, a 16-bit shift for bf16), then the float32
// kernels' accumulation (simd_avx2.h). Compiled with -mavx2 -mfma -mf16c;
// called after the dispatcher has checked the CPU. Tails go through the scalar
// conversions.
#include <immintrin.h>

#include "distance_kernels.h"
#include "half_convert.h"
#include "simd_avx2.h"

namespace sparknn::kernels_avx2 {
namespace {

struct Fp16 {
    using Value = uint16_t;
    static __m256 load(const uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static float one(uint16_t h) { return half::fp16_to_float(h); }
};
struct Bf16 {
    using Value = uint16_t;
    static __m256 load(const uint16_t* p) {
        const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    static float one(uint16_t h) { return half::bf16_to_float(h); }
};

template <class F>
void decode_16(const uint16_t* in, size_t n, float* out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, F::load(in + i));
    for (; i < n; ++i) out[i] = F::one(in[i]);
}

}  // namespace

float l2sq_fp16(const float* a, const uint16_t* b, size_t dim) { return row<Fp16, true>(a, b, dim); }
float dot_fp16(const float* a, const uint16_t* b, size_t dim) { return row<Fp16, false>(a, b, dim); }
float l2sq_bf16(const float* a, const uint16_t* b, size_t dim) { return row<Bf16, true>(a, b, dim); }
float dot_bf16(const float* a, const uint16_t* b, size_t dim) { return row<Bf16, false>(a, b, dim); }
void l2sq_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    rows4<Fp16, true>(a, b, dim, out);
}
void dot_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    rows4<Fp16, false>(a, b, dim, out);
}
void l2sq_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    rows4<Bf16, true>(a, b, dim, out);
}
void dot_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    rows4<Bf16, false>(a, b, dim, out);
}
void decode_fp16(const uint16_t* in, size_t n, float* out) { decode_16<Fp16>(in, n, out); }
void decode_bf16(const uint16_t* in, size_t n, float* out) { decode_16<Bf16>(in, n, out); }

void encode_fp16(const float* in, size_t n, uint16_t* out) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
    }
    for (; i < n; ++i) out[i] = half::fp16_from_float(in[i]);
}

// Integer rounding, which the compiler vectorises; not on a hot path (add only).
void encode_bf16(const float* in, size_t n, uint16_t* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half::bf16_from_float(in[i]);
}

}  // namespace sparknn::kernels_avx2
