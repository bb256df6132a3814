// Pieces shared by the AVX-512 kernel files (the float32 and the 16-bit ones).
// Include only from files compiled with -mavx512f.
#pragma once

#include <immintrin.h>

namespace sparknn::kernels_avx512 {

// One step of an accumulation: acc + (a - b)^2 (kL2) or acc + a * b, fused.
template <bool kL2>
inline __m512 term(__m512 a, __m512 b, __m512 acc) {
    if constexpr (kL2) {
        const __m512 d = _mm512_sub_ps(a, b);
        return _mm512_fmadd_ps(d, d, acc);
    } else {
        return _mm512_fmadd_ps(a, b, acc);
    }
}

}  // namespace sparknn::kernels_avx512
