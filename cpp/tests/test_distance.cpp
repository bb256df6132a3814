#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "test_util.h"

namespace sparknn {
namespace {

class DistanceTest : public ::testing::TestWithParam<size_t> {};

// Every kernel at every level this CPU has, against a double reference.
TEST_P(DistanceTest, KernelsMatchReferenceAtEveryLevel) {
    const size_t dim = GetParam();
    const auto a = test::random_vectors(7, dim, 1);
    const auto b = test::random_vectors(7, dim, 2);
    for (SimdLevel level : test::supported_levels()) {
        const DistanceKernels& k = kernels_for(level);
        for (size_t r = 0; r < 7; ++r) {
            const float* x = &a[r * dim];
            const float* y = &b[r * dim];
            const double l2 = test::ref_distance(Metric::L2, x, y, dim);
            const double ip = -test::ref_distance(Metric::InnerProduct, x, y, dim);
            const double tol = 1e-5 * (1.0 + static_cast<double>(dim));
            EXPECT_NEAR(k.l2sq(x, y, dim), l2, tol * (1 + l2 / dim)) << simd_level_name(level) << " dim " << dim;
            EXPECT_NEAR(k.dot(x, y, dim), ip, tol) << simd_level_name(level) << " dim " << dim;
        }
    }
}

// Four rows in one pass give the same bits as one at a time (a graph search
// mixes the two; equal distances must stay equal).
TEST_P(DistanceTest, FourRowKernelsEqualOneRowKernelsBitForBit) {
    const size_t dim = GetParam();
    const auto a = test::random_vectors(1, dim, 3);
    const auto b = test::random_vectors(4, dim, 4);
    const float* rows[4] = {&b[0], &b[dim], &b[2 * dim], &b[3 * dim]};
    for (SimdLevel level : test::supported_levels()) {
        const DistanceKernels& k = kernels_for(level);
        float l2[4], ip[4];
        k.l2sq_x4(a.data(), rows, dim, l2);
        k.dot_x4(a.data(), rows, dim, ip);
        for (int t = 0; t < 4; ++t) {
            EXPECT_EQ(l2[t], k.l2sq(a.data(), rows[t], dim)) << simd_level_name(level) << " dim " << dim;
            EXPECT_EQ(ip[t], k.dot(a.data(), rows[t], dim)) << simd_level_name(level) << " dim " << dim;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(OddDims, DistanceTest, ::testing::Values(1, 3, 7, 8, 15, 16, 17, 31, 33, 100, 128, 769, 784));

// PQ table lookups (gathers on AVX2 / AVX-512) against a double sum, for code
// lengths around the 8- and 16-lane steps, extreme code bytes included.
TEST(Distance, PqScanMatchesTableSumsAtEveryLevel) {
    for (size_t m : {1u, 7u, 8u, 9u, 15u, 16u, 17u, 32u, 33u, 64u}) {
        const auto table = test::random_vectors(m, 256, 3);
        std::vector<uint8_t> codes(5 * m);
        for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>((i * 97 + 13) % 256);
        codes[0] = 0;
        codes[codes.size() - 1] = 255;
        for (SimdLevel level : test::supported_levels()) {
            std::vector<float> out(5);
            kernels_for(level).pq_scan(table.data(), codes.data(), 5, m, 0.5f, out.data());
            for (size_t r = 0; r < 5; ++r) {
                double want = 0.5;
                for (size_t j = 0; j < m; ++j) want += table[j * 256 + codes[r * m + j]];
                EXPECT_NEAR(out[r], want, 1e-5 * (1.0 + static_cast<double>(m))) << simd_level_name(level) << " m " << m;
            }
        }
    }
}

TEST(Distance, MetricDefinitionsSmallerIsCloser) {
    const float a[3] = {1, 0, 0}, b[3] = {0, 1, 0}, c[3] = {1, 0, 0};
    const DistanceKernels& k = kernels();
    EXPECT_FLOAT_EQ(distance(Metric::L2, k, a, b, 3), 2.0f);
    EXPECT_FLOAT_EQ(distance(Metric::InnerProduct, k, a, c, 3), -1.0f);
    EXPECT_FLOAT_EQ(distance(Metric::Cosine, k, a, c, 3), 0.0f);
    EXPECT_FLOAT_EQ(distance(Metric::Cosine, k, a, b, 3), 1.0f);
}

TEST(Distance, SetLevelRejectsUnsupportedAndRestores) {
    const SimdLevel before = simd_level();
    set_simd_level(SimdLevel::Scalar);
    EXPECT_EQ(simd_level(), SimdLevel::Scalar);
#if defined(__x86_64__)
    EXPECT_THROW(set_simd_level(SimdLevel::Neon), Unsupported);
#endif
    set_simd_level(before);
    EXPECT_EQ(simd_level(), before);
}

TEST(Distance, MetricNames) {
    EXPECT_EQ(metric_from_string("cosine"), Metric::Cosine);
    EXPECT_EQ(metric_from_string("angular"), Metric::Cosine);
    EXPECT_EQ(metric_from_string("l2"), Metric::L2);
    EXPECT_EQ(metric_from_string("ip"), Metric::InnerProduct);
    EXPECT_THROW(metric_from_string("manhattan"), InvalidArgument);
}

}  // namespace
}  // namespace sparknn
