// AVX-512F kernels for 16-bit storage: sixteen values widened to float32 per
// step (vcvtph2ps for fp16, a 16-bit shift for bf16), then the float32
// kernels' FMAs. Compiled with -mavx512f only; tails are copied into a zeroed
// block (masked 16-bit loads would need AVX-512BW).
#include <immintrin.h>

#include <cstring>

#include "distance_kernels.h"
#include "half_convert.h"
#include "simd_avx512.h"

namespace sparknn::kernels_avx512 {
namespace {

struct Fp16 {
    static __m512 load16(const uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static float one(uint16_t h) { return half::fp16_to_float(h); }
};
struct Bf16 {
    static __m512 load16(const uint16_t* p) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    static float one(uint16_t h) { return half::bf16_to_float(h); }
};

// The last n < 16 values of b, zero-padded (zero decodes to 0.0 in both formats).
template <class F>
__m512 load_tail(const uint16_t* b, size_t n) {
    alignas(32) uint16_t tail[16] = {};
    std::memcpy(tail, b, n * sizeof(uint16_t));
    return F::load16(tail);
}

template <class F>
float l2sq_16(const float* a, const uint16_t* b, size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), F::load16(b + i));
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), F::load16(b + i + 16));
        acc0 = _mm512_fmadd_ps(d0, d0, acc0);
        acc1 = _mm512_fmadd_ps(d1, d1, acc1);
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), F::load16(b + i));
        acc0 = _mm512_fmadd_ps(d, d, acc0);
    }
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), load_tail<F>(b + i, dim - i));
        acc1 = _mm512_fmadd_ps(d, d, acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

template <class F>
float dot_16(const float* a, const uint16_t* b, size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), F::load16(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), F::load16(b + i + 16), acc1);
    }
    for (; i + 16 <= dim; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), F::load16(b + i), acc0);
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load_tail<F>(b + i, dim - i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// Four rows at once, each accumulated exactly as l2sq_16 / dot_16 accumulate
// one (the same lanes, the same order), so the results are the same bits.
template <class F, bool kL2>
void x4_16(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    __m512 acc0[4], acc1[4];
    for (int t = 0; t < 4; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + 16);
        for (int t = 0; t < 4; ++t) {
            acc0[t] = term<kL2>(a0, F::load16(b[t] + i), acc0[t]);
            acc1[t] = term<kL2>(a1, F::load16(b[t] + i + 16), acc1[t]);
        }
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 a0 = _mm512_loadu_ps(a + i);
        for (int t = 0; t < 4; ++t) acc0[t] = term<kL2>(a0, F::load16(b[t] + i), acc0[t]);
    }
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        const __m512 a0 = _mm512_maskz_loadu_ps(m, a + i);
        for (int t = 0; t < 4; ++t) acc1[t] = term<kL2>(a0, load_tail<F>(b[t] + i, dim - i), acc1[t]);
    }
    for (int t = 0; t < 4; ++t) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
}

template <class F>
void decode_16(const uint16_t* in, size_t n, float* out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, F::load16(in + i));
    for (; i < n; ++i) out[i] = F::one(in[i]);
}

}  // namespace

float l2sq_fp16(const float* a, const uint16_t* b, size_t dim) { return l2sq_16<Fp16>(a, b, dim); }
float dot_fp16(const float* a, const uint16_t* b, size_t dim) { return dot_16<Fp16>(a, b, dim); }
float l2sq_bf16(const float* a, const uint16_t* b, size_t dim) { return l2sq_16<Bf16>(a, b, dim); }
float dot_bf16(const float* a, const uint16_t* b, size_t dim) { return dot_16<Bf16>(a, b, dim); }
void l2sq_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    x4_16<Fp16, true>(a, b, dim, out);
}
void dot_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    x4_16<Fp16, false>(a, b, dim, out);
}
void l2sq_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    x4_16<Bf16, true>(a, b, dim, out);
}
void dot_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out) {
    x4_16<Bf16, false>(a, b, dim, out);
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
