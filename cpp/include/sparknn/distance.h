// Distance kernels and the metric enum.
//
// Every distance is "smaller is closer":
//   l2      squared Euclidean distance  sum (a_i - b_i)^2
//   ip      negated inner product       -sum a_i b_i
//   cosine  1 - cos(a, b); vectors are normalised once when added, so this is
//           1 - sum a_i b_i on stored vectors, in [0, 2].
//
// Kernels are compiled once per instruction set (scalar, AVX2+FMA, AVX-512 on
// x86-64; NEON on arm64) and chosen at run time from the CPU in hand, so a
// build made on one machine runs on an older one. SPARKNN_SIMD=scalar|avx2|avx512
// lowers the level (for tests and for working around a bad CPU).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sparknn {

enum class Metric : uint32_t { L2 = 1, InnerProduct = 2, Cosine = 3 };

Metric metric_from_string(const std::string& name);
const char* metric_name(Metric metric);

enum class SimdLevel : int { Scalar = 0, Neon = 1, Avx2 = 2, Avx512 = 3 };

const char* simd_level_name(SimdLevel level);

// The best level this CPU supports (ignores the environment override).
SimdLevel cpu_simd_level();
// The level in use: cpu_simd_level() lowered by SPARKNN_SIMD, or by set_simd_level.
SimdLevel simd_level();
// Selects the kernels of `level`; throws Unsupported if the CPU lacks it.
void set_simd_level(SimdLevel level);
// Whether the engine scans in bf16 tiles by default (ivf float32 lists with rerank,
// their k-means and quantizer): where available and faster than float32 sgemm. That
// is AMD's AVX512_BF16 CPUs (Zen 4 on): their 512-bit float32 FMAs run as two
// 256-bit halves, and vdpbf16ps does twice the multiply-adds. Intel Xeons run two
// full 512-bit float32 FMAs a cycle, as many multiply-adds as vdpbf16ps: there the
// packing and re-ranking were pure cost (Emerald Rapids, `sparknn similar` of
// 500k x 768: 21-24 s in bf16, 19-20 s in float32 with the same rerank). SPARKNN_BF16_TILES=1 / 0
// overrides the choice (read once; =1 still needs AVX512_BF16 and the avx512 kernels).
bool bf16_tiles_preferred();

using DistanceFn = float (*)(const float* a, const float* b, size_t dim);
// out[t] = the DistanceFn of a and b[t], t < 4, bit for bit: four rows read in
// one pass, so their cache misses overlap (a graph search's batch of neighbours).
using DistanceX4Fn = void (*)(const float* a, const float* const* b, size_t dim, float* out);
// out[r] = offset + sum_j table[j * 256 + codes[r * m + j]] for n codes of m
// bytes: product-quantizer distances by table lookups (gathers where the ISA has them).
using PqScanFn = void (*)(const float* table, const uint8_t* codes, size_t n, size_t m, float offset, float* out);

// A float32 query against a stored row of 16-bit values (fp16 or bf16), and
// the conversions of n values between the two (rounding to nearest even).
using HalfDistanceFn = float (*)(const float* a, const uint16_t* b, size_t dim);
using HalfDecodeFn = void (*)(const uint16_t* in, size_t n, float* out);
using HalfEncodeFn = void (*)(const float* in, size_t n, uint16_t* out);
// Four 16-bit rows at once: out[t] = the one-row kernel of (a, b[t]), the same bits.
using HalfX4Fn = void (*)(const float* a, const uint16_t* const* b, size_t dim, float* out);
struct HalfKernels {
    HalfDistanceFn l2sq;
    HalfDistanceFn dot;
    HalfDecodeFn decode;
    HalfEncodeFn encode;
    HalfX4Fn l2sq_x4;
    HalfX4Fn dot_x4;
};

struct DistanceKernels {
    DistanceFn l2sq;  // sum (a-b)^2
    DistanceFn dot;   // sum a*b
    PqScanFn pq_scan;
    DistanceX4Fn l2sq_x4;
    DistanceX4Fn dot_x4;
    HalfKernels fp16;
    HalfKernels bf16;
};

// Kernels for the level in use; cheap to call (one atomic load).
const DistanceKernels& kernels();
// Kernels for a given level (tests compare levels against each other).
const DistanceKernels& kernels_for(SimdLevel level);

// Distance between two stored vectors under `metric` ("smaller is closer").
inline float distance(Metric metric, const DistanceKernels& k, const float* a, const float* b,
                      size_t dim) {
    switch (metric) {
        case Metric::L2:
            return k.l2sq(a, b, dim);
        case Metric::InnerProduct:
            return -k.dot(a, b, dim);
        case Metric::Cosine:
            return 1.0f - k.dot(a, b, dim);
    }
    return 0.0f;
}

// distance() of a and each of four rows b[t], in one pass over a (the x4 kernels: the same
// bits as four calls of distance()).
inline void distance_x4(Metric metric, const DistanceKernels& k, const float* a, const float* const* b, size_t dim,
                        float* out) {
    if (metric == Metric::L2) {
        k.l2sq_x4(a, b, dim, out);
        return;
    }
    k.dot_x4(a, b, dim, out);
    for (size_t t = 0; t < 4; ++t) out[t] = metric == Metric::Cosine ? 1.0f - out[t] : -out[t];
}

}  // namespace sparknn
