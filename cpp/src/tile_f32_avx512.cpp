// The float32 panel product (tile_f32.h). This file alone is compiled with
// AVX-512; callers check tile_f32::available() first. Raw pointers only: an
// inline std:: function instantiated here could be the one the linker keeps.
#include <immintrin.h>

#include "tile_f32.h"

namespace sparknn::tile_f32 {
namespace {

// MR query rows against NP panels of 16 rows: MR * NP accumulators (at most 16 of the 32
// registers), one broadcast per query dimension and one load per panel dimension.
template <int MR, int NP>
void block(const float* a, size_t lda, const float* b, size_t panel_stride, size_t dim, float* c, size_t ldc,
           __mmask16 last_mask) {
    // (the register loops unrolled whatever the optimisation level: at -O2 GCC kept the
    // accumulators in memory, at half the speed)
    __m512 acc[MR][NP];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
        for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
    for (size_t k = 0; k < dim; ++k) {
        __m512 x[NP];
#pragma GCC unroll 16
        for (int p = 0; p < NP; ++p) x[p] = _mm512_loadu_ps(b + p * panel_stride + k * 16);
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const __m512 q = _mm512_set1_ps(a[i * lda + k]);
#pragma GCC unroll 16
            for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_fmadd_ps(q, x[p], acc[i][p]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        for (int p = 0; p < NP; ++p) {
            const __mmask16 mask = p == NP - 1 ? last_mask : static_cast<__mmask16>(0xFFFF);
            _mm512_mask_storeu_ps(c + i * ldc + p * 16, mask, acc[i][p]);
        }
    }
}

// Every row of a against NP panels, MR rows at a time, the last few one by one.
template <int NP, int MR>
void rows_against(const float* a, size_t lda, size_t m, const float* b, size_t dim, float* c, size_t ldc,
                  __mmask16 last_mask) {
    const size_t stride = dim * 16;
    size_t i = 0;
    for (; i + MR <= m; i += MR) block<MR, NP>(a + i * lda, lda, b, stride, dim, c + i * ldc, ldc, last_mask);
    for (; i < m; ++i) block<1, NP>(a + i * lda, lda, b, stride, dim, c + i * ldc, ldc, last_mask);
}

__mmask16 first_lanes(size_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u); }

}  // namespace

void product(const float* a, size_t lda, size_t m, const float* b, size_t n, size_t dim, float* c, size_t ldc) {
    size_t j = 0;
    for (; j + 32 <= n; j += 32) rows_against<2, 6>(a, lda, m, b + j * dim, dim, c + j, ldc, 0xFFFF);
    if (j + 16 < n) {
        rows_against<2, 6>(a, lda, m, b + j * dim, dim, c + j, ldc, first_lanes(n - j - 16));
    } else if (j < n) {
        rows_against<1, 8>(a, lda, m, b + j * dim, dim, c + j, ldc, first_lanes(n - j));
    }
}

}  // namespace sparknn::tile_f32
