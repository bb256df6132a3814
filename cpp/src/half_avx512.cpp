// AVX-512F kernels for 16-bit storage: sixteen values widened to float32 per
// step (vcvtph2ps for fp16, a 16-bit shift for bf16), then the float32
// kernels' accumulation (simd_avx512.h). Compiled with -mavx512f only.
#include <immintrin.h>

#include <cstring>

#include "distance_kernels.h"
#include "half_convert.h"
#include "simd_avx512.h"

namespace sparknn::kernels_avx512 {
namespace {

// What the two 16-bit loaders share: the tail copied into a zeroed block
// (masked 16-bit loads would need AVX-512BW; zero decodes to 0.0 in both).
template <class F>
struct Loader16 {
    using Value = uint16_t;
    static __m512 tail(const uint16_t* p, size_t n) {
        alignas(32) uint16_t block[16] = {};
        std::memcpy(block, p, n * sizeof(uint16_t));
        return F::load(block);
    }
};
struct Fp16 : Loader16<Fp16> {
    static __m512 load(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static float one(uint16_t h) { return half::fp16_to_float(h); }
};
struct Bf16 : Loader16<Bf16> {
    static __m512 load(const uint16_t* p) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    static float one(uint16_t h) { return half::bf16_to_float(h); }
};

template <class F>
void decode_16(const uint16_t* in, size_t n, float* out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, F::load(in + i));
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
    for (; i + 16 <= n; i += 16) {
        const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), h);
    }
    for (; i < n; ++i) out[i] = half::fp16_from_float(in[i]);
}

void encode_bf16(const float* in, size_t n, uint16_t* out) {
    for (size_t i = 0; i < n; ++i) out[i] = half::bf16_from_float(in[i]);
}

}  // namespace sparknn::kernels_avx512
