// Per-instruction-set kernels; each namespace lives in its own translation units
// (distance_<isa>.cpp, half_<isa>.cpp), compiled with that instruction set's
// flags only (see cpp/CMakeLists.txt). NEON has no half kernels of its own yet:
// it uses the scalar ones.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparknn {

#define SPARKNN_DECLARE_KERNELS(ns)                                                                    \
    namespace ns {                                                                                     \
    float l2sq(const float* a, const float* b, size_t dim);                                            \
    float dot(const float* a, const float* b, size_t dim);                                             \
    void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out); \
    void l2sq_x4(const float* a, const float* const* b, size_t dim, float* out);                      \
    void dot_x4(const float* a, const float* const* b, size_t dim, float* out);                       \
    float l2sq_fp16(const float* a, const uint16_t* b, size_t dim);                                    \
    float dot_fp16(const float* a, const uint16_t* b, size_t dim);                                     \
    void decode_fp16(const uint16_t* in, size_t n, float* out);                                        \
    void encode_fp16(const float* in, size_t n, uint16_t* out);                                        \
    float l2sq_bf16(const float* a, const uint16_t* b, size_t dim);                                    \
    float dot_bf16(const float* a, const uint16_t* b, size_t dim);                                     \
    void decode_bf16(const uint16_t* in, size_t n, float* out);                                        \
    void encode_bf16(const float* in, size_t n, uint16_t* out);                                        \
    void l2sq_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out);              \
    void dot_fp16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out);               \
    void l2sq_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out);              \
    void dot_bf16_x4(const float* a, const uint16_t* const* b, size_t dim, float* out);               \
    }

SPARKNN_DECLARE_KERNELS(kernels_scalar)
#if defined(__x86_64__) || defined(_M_X64)
SPARKNN_DECLARE_KERNELS(kernels_avx2)
SPARKNN_DECLARE_KERNELS(kernels_avx512)
#endif
#if defined(__aarch64__)
namespace kernels_neon {
float l2sq(const float* a, const float* b, size_t dim);
float dot(const float* a, const float* b, size_t dim);
void pq_scan(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out);
}  // namespace kernels_neon
#endif

#undef SPARKNN_DECLARE_KERNELS

}  // namespace sparknn
