// The bf16 tile products (tile_bf16.h). This file alone is compiled with
// AVX512_BF16; callers check bf16_tiles_available() first. Raw pointers only:
// an inline std:: function instantiated here could be the one the linker keeps.
#include <immintrin.h>


#include "tile_bf16.h"

namespace sparknn::tile_bf16 {
namespace {

// 32 floats (a masked tail reads only n), less `centre` unless null -> 16 pairs of bf16.
// With a centre, lane by lane in float32: *dots += centre . (x - centre) and
// *squares += |x - centre|^2 (each unless null).
__m512i to_pairs(const float* x, const float* centre, size_t n, __m512* dots = nullptr, __m512* squares = nullptr) {
    const __mmask16 lo = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u);
    const __mmask16 hi = static_cast<__mmask16>(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1u);
    __m512 a = _mm512_maskz_loadu_ps(lo, x);
    __m512 b = _mm512_maskz_loadu_ps(hi, x + 16);
    if (centre != nullptr) {
        const __m512 ca = _mm512_maskz_loadu_ps(lo, centre), cb = _mm512_maskz_loadu_ps(hi, centre + 16);
        a = _mm512_sub_ps(a, ca);
        b = _mm512_sub_ps(b, cb);
        if (dots != nullptr) *dots = _mm512_fmadd_ps(cb, b, _mm512_fmadd_ps(ca, a, *dots));
        if (squares != nullptr) *squares = _mm512_fmadd_ps(b, b, _mm512_fmadd_ps(a, a, *squares));
    }
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));  // a's 16 values first
}

void pack_row(const float* row, size_t dim, const float* centre, uint32_t* out) {
    for (size_t d = 0; d < dim; d += 32) {
        const size_t n = dim - d < 32 ? dim - d : 32;
        const __m512i p = to_pairs(row + d, centre != nullptr ? centre + d : nullptr, n);
        _mm512_mask_storeu_epi32(out + d / 2, static_cast<__mmask16>(n >= 32 ? 0xFFFF : (1u << ((n + 1) / 2)) - 1u), p);
    }
}

// r[i] = 16 dwords of row i -> r[c] = dword c of rows 0..15: pairs within
// 128-bit lanes, then 64-bit halves, then the 4 x 4 lanes across registers.
void transpose16(__m512i* r) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {  // u[4i + e]: rows 4i..4i+3 at column 4 * lane + e
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int e = 0; e < 4; ++e) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44);  // lanes 0, 1 of both
        const __m512i v1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);  // lanes 2, 3
        const __m512i v2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44);
        const __m512i v3 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
        r[e] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[4 + e] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        r[8 + e] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[12 + e] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

// MR query rows against NP panels of 16 rows: MR * NP accumulators, one
// broadcast per query pair and one load per panel pair.
template <int MR, int NP>
void block(const uint32_t* a, size_t pairs, const uint32_t* b, size_t panel_stride, float* c, size_t ldc,
           __mmask16 last_mask) {
    __m512 acc[MR][NP];
    for (int i = 0; i < MR; ++i)
        for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
    for (size_t k = 0; k < pairs; ++k) {
        __m512bh x[NP];
        for (int p = 0; p < NP; ++p) {
            x[p] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + p * panel_stride + k * 16));
        }
        for (int i = 0; i < MR; ++i) {
            const __m512bh q = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(a[i * pairs + k])));
            for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_dpbf16_ps(acc[i][p], q, x[p]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        for (int p = 0; p < NP; ++p) {
            const __mmask16 mask = p == NP - 1 ? last_mask : static_cast<__mmask16>(0xFFFF);
            _mm512_mask_storeu_ps(c + i * ldc + p * 16, mask, acc[i][p]);
        }
    }
}

template <int NP>
void rows_against(const uint32_t* a, size_t m, const uint32_t* b, size_t pairs, float* c, size_t ldc,
                  __mmask16 last_mask) {
    const size_t stride = pairs * 16;
    size_t i = 0;
    for (; i + 8 <= m; i += 8) block<8, NP>(a + i * pairs, pairs, b, stride, c + i * ldc, ldc, last_mask);
    const uint32_t* ar = a + i * pairs;
    float* cr = c + i * ldc;
    switch (m - i) {  // the last rows of the block
        case 7: block<7, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        case 6: block<6, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        case 5: block<5, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        case 4: block<4, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        case 3: block<3, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        case 2: block<2, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        case 1: block<1, NP>(ar, pairs, b, stride, cr, ldc, last_mask); break;
        default: break;
    }
}

}  // namespace

void pack_rows(const float* rows, size_t m, size_t dim, const float* centre, uint32_t* out) {
    const size_t np = pairs(dim);
    for (size_t i = 0; i < m; ++i) pack_row(rows + i * dim, dim, centre, out + i * np);
}

void pack_panels(const float* rows, size_t n, size_t dim, const float* centre, uint32_t* out, float* centre_dots,
                 float* residual_norms) {
    const size_t np = pairs(dim);
    const __m512i zero = _mm512_setzero_si512();
    __m512i r[16];
    __m512 dots[16], squares[16];
    const bool want_dots = centre != nullptr && centre_dots != nullptr;
    const bool want_squares = centre != nullptr && residual_norms != nullptr;
    for (size_t p0 = 0; p0 < panel_rows(n); p0 += 16) {
        uint32_t* panel = out + p0 * np;
        for (size_t i = 0; i < 16; ++i) dots[i] = squares[i] = _mm512_setzero_ps();
        for (size_t k0 = 0; k0 < np; k0 += 16) {  // 16 pairs of 16 rows: one transpose
            const size_t d0 = 2 * k0, dn = dim - d0 < 32 ? dim - d0 : 32;
            const float* c = centre != nullptr ? centre + d0 : nullptr;
            for (size_t i = 0; i < 16; ++i) {
                r[i] = p0 + i < n ? to_pairs(rows + (p0 + i) * dim + d0, c, dn, want_dots ? &dots[i] : nullptr,
                                             want_squares ? &squares[i] : nullptr)
                                  : zero;
            }
            transpose16(r);
            const size_t kn = np - k0 < 16 ? np - k0 : 16;
            for (size_t k = 0; k < kn; ++k) _mm512_storeu_si512(panel + (k0 + k) * 16, r[k]);
        }
        for (size_t i = 0; i < 16 && p0 + i < n; ++i) {
            if (want_dots) centre_dots[p0 + i] = _mm512_reduce_add_ps(dots[i]);
            if (want_squares) residual_norms[p0 + i] = _mm512_reduce_add_ps(squares[i]);
        }
    }
}

void product(const uint32_t* a, size_t m, const uint32_t* b, size_t n, size_t pairs, float* c, size_t ldc) {
    size_t j = 0;
    for (; j + 32 <= n; j += 32) rows_against<2>(a, m, b + j * pairs, pairs, c + j, ldc, 0xFFFF);
    if (j + 16 < n) {
        rows_against<2>(a, m, b + j * pairs, pairs, c + j, ldc, static_cast<__mmask16>((1u << (n - j - 16)) - 1u));
    } else if (j < n) {
        const size_t rest = n - j;
        rows_against<1>(a, m, b + j * pairs, pairs, c + j, ldc,
                        static_cast<__mmask16>(rest == 16 ? 0xFFFF : (1u << rest) - 1u));
    }
}

}  // namespace sparknn::tile_bf16
