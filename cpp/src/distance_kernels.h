// Per-instruction-set kernels; each namespace lives in its own translation unit,
// compiled with that instruction set's flags only (see cpp/CMakeLists.txt).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparknn {

#define SPARKNN_DECLARE_KERNELS(ns)                                                                    \
    namespace ns {                                                                                     \
    float l2sq(const float* a, const float* b, size_t dim);                                            \
    float dot(const float* a, const float* b, size_t dim);                                             \
    void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out); \
    }

SPARKNN_DECLARE_KERNELS(kernels_scalar)
#if defined(__x86_64__) || defined(_M_X64)
SPARKNN_DECLARE_KERNELS(kernels_avx2)
SPARKNN_DECLARE_KERNELS(kernels_avx512)
#endif
#if defined(__aarch64__)
SPARKNN_DECLARE_KERNELS(kernels_neon)
#endif

#undef SPARKNN_DECLARE_KERNELS

}  // namespace sparknn
