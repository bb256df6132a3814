// Tile products in bf16: C = round(A) * round(B)^T with A and B rounded to
// bf16 (nearest even) and products summed in float32, through AVX512_BF16's
// vdpbf16ps (two multiply-adds per lane and instruction: twice the float32
// FMA's rate on AMD's Zen 4, the same on Intel Xeons: bf16_tiles_preferred; and
// half the bytes). An approximate first pass, for an IVF scan
// whose candidates are then re-ranked exactly (IvfParams::rerank).
//
// Operands are packed first: a query block as rows of bf16 pairs, a base block
// as panels of 16 rows interleaved pair by pair, so that one 512-bit load holds
// one pair of 16 rows and one broadcast one pair of a query.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparknn/distance.h"

namespace sparknn {

// Whether this CPU runs the bf16 tile products (AVX512_BF16) and the kernels
// in use are AVX-512's: SPARKNN_SIMD / set_simd_level below avx512 turn them off.
bool bf16_tiles_available();
// bf16_tiles_preferred() (sparknn/distance.h): whether the engine scans in them by default.

namespace tile_bf16 {

inline size_t pairs(size_t dim) { return (dim + 1) / 2; }
inline size_t panel_rows(size_t n) { return (n + 15) / 16 * 16; }

// Both pack their rows less `centre` [dim] when it is not null: vectors near a centre far
// from the origin keep their differences in bf16 only as residuals (q . x = q . c + c . (x - c)
// + (q - c) . (x - c), the first two in float32).
// rows [m, dim] -> out [m, pairs(dim)]: each pair two bf16, the odd tail zero.
void pack_rows(const float* rows, size_t m, size_t dim, const float* centre, uint32_t* out);
// rows [n, dim] -> out [panel_rows(n) / 16][pairs(dim)][16]; rows past n zero. With a
// centre, in float32 as the rows pass, each [n] unless null: centre_dots gets
// centre . (row_i - centre) (an inner product's float32 term, without x . c - |c|^2's
// cancellation) and residual_norms |row_i - centre|^2 (an L2 distance's).
void pack_panels(const float* rows, size_t n, size_t dim, const float* centre, uint32_t* out,
                 float* centre_dots = nullptr, float* residual_norms = nullptr);
// c[i * ldc + j] = a_i . b_j for i < m, j < n (a: pack_rows, b: pack_panels).
void product(const uint32_t* a, size_t m, const uint32_t* b, size_t n, size_t pairs, float* c, size_t ldc);

}  // namespace tile_bf16
}  // namespace sparknn
