// The 16-bit storage kernels (fp16, bf16): conversions against an independent
// double-precision rounding, identical bits at every SIMD level, distances
// equal to the float32 kernels on the widened values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "sparknn/distance.h"
#include "test_util.h"

namespace sparknn {
namespace {

// Rounds v to `bits` significant bits with exponent at least min_exp (below
// it: the format's subnormal step), to nearest even, in double (exact here).
double round_to_format(double v, int bits, int min_exp, double max_finite) {
    if (v == 0) return v;
    const int e = std::max(static_cast<int>(std::floor(std::log2(std::fabs(v)))), min_exp);
    const double ulp = std::ldexp(1.0, e - (bits - 1));
    const double r = std::nearbyint(v / ulp) * ulp;  // default rounding mode: to nearest even
    if (std::fabs(r) > max_finite) return std::copysign(std::numeric_limits<double>::infinity(), v);
    return r;
}
double fp16_reference(float v) { return round_to_format(v, 11, -14, 65504.0); }
double bf16_reference(float v) { return round_to_format(v, 8, -126, 3.3895313892515355e38); }

// Random floats over many binades, plus the values where rounding is decided:
// ties, the largest finite values and the overflow edge, subnormals.
std::vector<float> conversion_cases() {
    std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, -65504.0f, 65519.99f, 65520.0f, 1e-8f,
                            5.9604645e-8f,  // 2^-24, the smallest fp16 subnormal
                            2.9802322e-8f,  // 2^-25: a tie, rounds to zero
                            4.4703484e-8f,  // 1.5 * 2^-25: rounds up to 2^-24
                            6.1035156e-5f,  // 2^-14, the smallest fp16 normal
                            1.00048828125f,  // 1 + 2^-11: an fp16 tie, rounds to even (1)
                            1.00146484375f,  // 1 + 3 * 2^-11: a tie, rounds up to odd + 1
                            1.00390625f,     // 1 + 2^-8: a bf16 tie
                            3.0e38f, 3.3961e38f};
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> exponent(-30.0, 17.0), mantissa(1.0, 2.0);
    std::uniform_int_distribution<uint32_t> any_bits;
    for (int i = 0; i < 20000; ++i) {
        const double x = mantissa(rng) * std::exp2(std::floor(exponent(rng)));
        v.push_back(static_cast<float>(i % 2 ? x : -x));
    }
    for (int i = 0; i < 20000; ++i) {  // any finite float32 bit pattern
        uint32_t b = any_bits(rng);
        float f;
        std::memcpy(&f, &b, sizeof f);
        if (std::isfinite(f)) v.push_back(f);
    }
    return v;
}

TEST(Half, Fp16ConversionRoundsToNearestEvenAtEveryLevel) {
    const std::vector<float> x = conversion_cases();
    for (SimdLevel level : test::supported_levels()) {
        const HalfKernels& k = kernels_for(level).fp16;
        std::vector<uint16_t> h(x.size());
        std::vector<float> back(x.size());
        k.encode(x.data(), x.size(), h.data());
        k.decode(h.data(), h.size(), back.data());
        for (size_t i = 0; i < x.size(); ++i) {
            const double want = fp16_reference(x[i]);
            if (std::isinf(want)) {
                EXPECT_TRUE(std::isinf(back[i]) && std::signbit(back[i]) == std::signbit(x[i]))
                    << simd_level_name(level) << " " << x[i];
            } else {
                ASSERT_EQ(static_cast<double>(back[i]), want) << simd_level_name(level) << " value " << x[i];
            }
        }
    }
}

TEST(Half, Bf16ConversionRoundsToNearestEvenAtEveryLevel) {
    const std::vector<float> x = conversion_cases();
    for (SimdLevel level : test::supported_levels()) {
        const HalfKernels& k = kernels_for(level).bf16;
        std::vector<uint16_t> h(x.size());
        std::vector<float> back(x.size());
        k.encode(x.data(), x.size(), h.data());
        k.decode(h.data(), h.size(), back.data());
        for (size_t i = 0; i < x.size(); ++i) {
            if (std::fabs(x[i]) < 1.1754944e-38f) continue;  // float32 subnormals: the bit rounding keeps them too
            const double want = bf16_reference(x[i]);
            if (std::isinf(want)) {
                EXPECT_TRUE(std::isinf(back[i])) << simd_level_name(level) << " " << x[i];
            } else {
                ASSERT_EQ(static_cast<double>(back[i]), want) << simd_level_name(level) << " value " << x[i];
            }
        }
    }
}

// Every level writes the same bits (files are portable) and reads them back alike.
TEST(Half, EveryLevelEncodesAndDecodesTheSameBits) {
    const std::vector<float> x = conversion_cases();
    for (bool bf16 : {false, true}) {
        const HalfKernels& ref = bf16 ? kernels_for(SimdLevel::Scalar).bf16 : kernels_for(SimdLevel::Scalar).fp16;
        std::vector<uint16_t> want(x.size());
        ref.encode(x.data(), x.size(), want.data());
        std::vector<float> want_back(x.size());
        ref.decode(want.data(), want.size(), want_back.data());
        for (SimdLevel level : test::supported_levels()) {
            const HalfKernels& k = bf16 ? kernels_for(level).bf16 : kernels_for(level).fp16;
            for (size_t n : {x.size(), size_t{1}, size_t{7}, size_t{15}, size_t{17}, size_t{33}}) {
                std::vector<uint16_t> got(n);
                k.encode(x.data(), n, got.data());
                EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << simd_level_name(level) << " n " << n;
                std::vector<float> back(n);
                k.decode(want.data(), n, back.data());
                EXPECT_EQ(std::memcmp(back.data(), want_back.data(), n * sizeof(float)), 0)
                    << simd_level_name(level) << " n " << n;
            }
        }
    }
}

class HalfDistanceTest : public ::testing::TestWithParam<size_t> {};

// A float32 query against 16-bit rows: the float32 kernels' result on the
// widened rows, within rounding, at every level and odd dimension.
TEST_P(HalfDistanceTest, MatchesFloatKernelsOnWidenedRows) {
    const size_t dim = GetParam();
    const auto a = test::random_vectors(5, dim, 1);
    const auto b = test::random_vectors(5, dim, 2);
    for (bool bf16 : {false, true}) {
        const HalfKernels& ref = bf16 ? kernels_for(SimdLevel::Scalar).bf16 : kernels_for(SimdLevel::Scalar).fp16;
        std::vector<uint16_t> h(b.size());
        ref.encode(b.data(), b.size(), h.data());
        std::vector<float> wide(b.size());
        ref.decode(h.data(), h.size(), wide.data());
        for (SimdLevel level : test::supported_levels()) {
            const DistanceKernels& k = kernels_for(level);
            const HalfKernels& hk = bf16 ? k.bf16 : k.fp16;
            for (size_t r = 0; r < 5; ++r) {
                const float* q = &a[r * dim];
                const double l2 = test::ref_distance(Metric::L2, q, &wide[r * dim], dim);
                const double ip = -test::ref_distance(Metric::InnerProduct, q, &wide[r * dim], dim);
                const double tol = 1e-5 * (1.0 + static_cast<double>(dim));
                EXPECT_NEAR(hk.l2sq(q, &h[r * dim], dim), l2, tol * (1 + l2 / dim))
                    << simd_level_name(level) << (bf16 ? " bf16" : " fp16") << " dim " << dim;
                EXPECT_NEAR(hk.dot(q, &h[r * dim], dim), ip, tol)
                    << simd_level_name(level) << (bf16 ? " bf16" : " fp16") << " dim " << dim;
            }
        }
    }
}

// Four 16-bit rows in one pass give the same bits as one at a time (hnsw mixes
// the two; equal distances must stay equal), at every level and odd dimension.
TEST_P(HalfDistanceTest, FourRowKernelsEqualOneRowKernelsBitForBit) {
    const size_t dim = GetParam();
    const auto a = test::random_vectors(1, dim, 3);
    const auto b = test::random_vectors(4, dim, 4);
    for (bool bf16 : {false, true}) {
        std::vector<uint16_t> h(b.size());
        const HalfKernels& ref = bf16 ? kernels_for(SimdLevel::Scalar).bf16 : kernels_for(SimdLevel::Scalar).fp16;
        ref.encode(b.data(), b.size(), h.data());
        const uint16_t* rows[4] = {&h[0], &h[dim], &h[2 * dim], &h[3 * dim]};
        for (SimdLevel level : test::supported_levels()) {
            const HalfKernels& hk = bf16 ? kernels_for(level).bf16 : kernels_for(level).fp16;
            float l2[4], ip[4];
            hk.l2sq_x4(a.data(), rows, dim, l2);
            hk.dot_x4(a.data(), rows, dim, ip);
            for (int t = 0; t < 4; ++t) {
                EXPECT_EQ(l2[t], hk.l2sq(a.data(), rows[t], dim))
                    << simd_level_name(level) << (bf16 ? " bf16" : " fp16") << " dim " << dim;
                EXPECT_EQ(ip[t], hk.dot(a.data(), rows[t], dim))
                    << simd_level_name(level) << (bf16 ? " bf16" : " fp16") << " dim " << dim;
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(OddDims, HalfDistanceTest,
                         ::testing::Values(1, 3, 7, 8, 15, 16, 17, 31, 33, 100, 768, 784, 785));

}  // namespace
}  // namespace sparknn
