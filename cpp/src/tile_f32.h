// Tile products in float32 against rows packed once into panels: C = A B^T for
// queries A (rows as they are) and base rows B laid out as panels of 16 rows,
// dimension after dimension, so that one 512-bit load holds one dimension of 16
// rows and one broadcast one dimension of a query (tile_bf16.h does the same in
// bf16). For base rows scanned again and again in a short dimension: the IVF
// first pass's projected lists (ivf_first_pass.cpp), whose sgemm calls (a
// list's rows against its few queries) spent as long packing the rows as
// multiplying them. Products are summed dimension by dimension in float32, as
// sgemm's kernel sums them.
#pragma once

#include <cstddef>

namespace sparknn::tile_f32 {

// Whether this build and CPU run the AVX-512 product (and the engine's kernels are AVX-512's:
// SPARKNN_SIMD / set_simd_level below avx512 turn it off).
bool available();

inline size_t panel_rows(size_t n) { return (n + 15) / 16 * 16; }

// rows [n, dim] -> out [panel_rows(n) / 16][dim][16], less `centre` [dim] unless null; rows past
// n zero. residual_norms [n] (unless null): |row_i - centre|^2 of the values packed.
void pack_panels(const float* rows, size_t n, size_t dim, const float* centre, float* out, float* residual_norms);

// c[i * ldc + j] = a_i . b_j for i < m, j < n: a [m, dim] with row stride lda, b packed by
// pack_panels (its first n rows). Needs an AVX-512 CPU (available(), or panels packed while it was).
void product(const float* a, size_t lda, size_t m, const float* b, size_t n, size_t dim, float* c, size_t ldc);

}  // namespace sparknn::tile_f32
