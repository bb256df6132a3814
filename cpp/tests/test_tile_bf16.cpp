// The bf16 tile products (cpp/src/tile_bf16.h) against a double-precision
// product of the same bf16-rounded values, at every shape the packing and the
// register blocks split: odd dims, dims past a pack chunk, partial panels and
// partial row blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "test_util.h"
#include "tile_bf16.h"

namespace sparknn {
namespace {

float round_bf16(float x) {  // nearest even, as vcvtne2ps2bf16 (finite inputs)
    uint32_t u;
    std::memcpy(&u, &x, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    float r;
    std::memcpy(&r, &u, 4);
    return r;
}

TEST(TileBf16, ProductEqualsRoundedReference) {
    if (!bf16_tiles_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    for (size_t dim : {1, 2, 3, 31, 32, 33, 64, 784, 2049}) {
        for (size_t m : {1, 7, 8, 9, 17}) {
            for (size_t n : {1, 15, 16, 17, 31, 32, 33, 100}) {
                const auto a = test::random_vectors(m, dim, 10 + dim + m);
                const auto b = test::random_vectors(n, dim, 20 + dim + n);
                std::vector<uint32_t> pa(m * tile_bf16::pairs(dim));
                std::vector<uint32_t> pb(tile_bf16::panel_rows(n) * tile_bf16::pairs(dim));
                tile_bf16::pack_rows(a.data(), m, dim, nullptr, pa.data());
                tile_bf16::pack_panels(b.data(), n, dim, nullptr, pb.data());
                const size_t ldc = n + 3;  // a row stride wider than n: nothing past n is written
                std::vector<float> c(m * ldc, -7.0f);
                tile_bf16::product(pa.data(), m, pb.data(), n, tile_bf16::pairs(dim), c.data(), ldc);
                for (size_t i = 0; i < m; ++i) {
                    for (size_t j = 0; j < n; ++j) {
                        double want = 0, scale = 0;
                        for (size_t d = 0; d < dim; ++d) {
                            const double p = double(round_bf16(a[i * dim + d])) * round_bf16(b[j * dim + d]);
                            want += p;
                            scale += std::fabs(p);
                        }
                        ASSERT_NEAR(c[i * ldc + j], want, 1e-6 * scale + 1e-30)
                            << "dim " << dim << " m " << m << " n " << n << " at " << i << "," << j;
                    }
                    for (size_t j = n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], -7.0f) << "wrote past n";
                }
            }
        }
    }
}

// With a centre the panels hold the rows less it, centre_dots c . (x - c) and
// residual_norms |x - c|^2 in float32 (the terms the scan adds back), for every row
// of a partial panel too.
TEST(TileBf16, PanelsLessACentreGiveItsDots) {
    if (!bf16_tiles_available()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
    for (size_t dim : {1, 33, 784}) {
        for (size_t n : {1, 17, 40}) {
            const auto b = test::random_vectors(n, dim, 30 + dim + n);
            const auto c = test::random_vectors(1, dim, 40 + dim);
            const auto a = test::random_vectors(3, dim, 50 + dim);
            std::vector<uint32_t> pb(tile_bf16::panel_rows(n) * tile_bf16::pairs(dim));
            std::vector<uint32_t> pa(3 * tile_bf16::pairs(dim));
            std::vector<float> dots(n + 1, -7.0f), squares(n + 1, -7.0f);
            tile_bf16::pack_panels(b.data(), n, dim, c.data(), pb.data(), dots.data(), squares.data());
            tile_bf16::pack_rows(a.data(), 3, dim, c.data(), pa.data());
            std::vector<float> prod(3 * n);
            tile_bf16::product(pa.data(), 3, pb.data(), n, tile_bf16::pairs(dim), prod.data(), n);
            for (size_t j = 0; j < n; ++j) {
                double want = 0, scale = 0, square = 0;
                for (size_t d = 0; d < dim; ++d) {
                    const double p = double(c[d]) * (double(b[j * dim + d]) - c[d]);
                    want += p;
                    scale += std::fabs(p);
                    square += (double(b[j * dim + d]) - c[d]) * (double(b[j * dim + d]) - c[d]);
                }
                ASSERT_NEAR(dots[j], want, 1e-5 * scale + 1e-30) << "dim " << dim << " n " << n << " row " << j;
                ASSERT_NEAR(squares[j], square, 1e-5 * square + 1e-30) << "dim " << dim << " n " << n << " row " << j;
                for (size_t i = 0; i < 3; ++i) {  // (a - c) . (b - c), rounded to bf16
                    double r = 0, rs = 0;
                    for (size_t d = 0; d < dim; ++d) {
                        const double p = double(round_bf16(a[i * dim + d] - c[d])) * round_bf16(b[j * dim + d] - c[d]);
                        r += p;
                        rs += std::fabs(p);
                    }
                    ASSERT_NEAR(prod[i * n + j], r, 1e-6 * rs + 1e-30);
                }
            }
            EXPECT_EQ(dots[n], -7.0f) << "wrote past n";
            EXPECT_EQ(squares[n], -7.0f) << "wrote past n";
        }
    }
}

TEST(TileBf16, OffBelowAvx512) {
    const SimdLevel level = simd_level();
    set_simd_level(SimdLevel::Scalar);
    EXPECT_FALSE(bf16_tiles_available());
    set_simd_level(level);
}

}  // namespace
}  // namespace sparknn
