// The float32 panel products (cpp/src/tile_f32.h): each product the same float32
// sum, dimension after dimension, that a fused multiply-add chain gives (so a
// misplaced panel, lane or row cannot hide in a tolerance), at every shape the
// panels and the register blocks split; and the packing less a centre. The IVF
// first pass through them: test_ivf_first_pass.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "test_util.h"
#include "tile_f32.h"

namespace sparknn {
namespace {

TEST(TileF32, ProductIsTheFusedSumOfEachPair) {
    if (!tile_f32::available()) GTEST_SKIP() << "no AVX-512 on this CPU";
    for (size_t dim : {1, 3, 16, 17, 96, 784}) {
        for (size_t m : {1, 5, 6, 7, 13}) {
            for (size_t n : {1, 15, 16, 17, 31, 32, 33, 48, 100}) {
                const size_t lda = dim + 2;  // a row stride wider than dim: only dim values read
                auto a = test::random_vectors(m, lda, 10 + dim + m);
                const auto b = test::random_vectors(n, dim, 20 + dim + n);
                std::vector<float> panels(tile_f32::panel_rows(n) * dim, -1.0f);
                tile_f32::pack_panels(b.data(), n, dim, nullptr, panels.data(), nullptr);
                const size_t ldc = n + 3;  // nothing past n is written
                std::vector<float> c(m * ldc, -7.0f);
                tile_f32::product(a.data(), lda, m, panels.data(), n, dim, c.data(), ldc);
                for (size_t i = 0; i < m; ++i) {
                    for (size_t j = 0; j < n; ++j) {
                        float want = 0.0f;
                        for (size_t d = 0; d < dim; ++d) want = std::fma(a[i * lda + d], b[j * dim + d], want);
                        ASSERT_EQ(c[i * ldc + j], want) << "dim " << dim << " m " << m << " n " << n << " at " << i
                                                        << "," << j;
                    }
                    for (size_t j = n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], -7.0f) << "wrote past n";
                }
            }
        }
    }
}

// Panels hold the rows less the centre exactly as float32 subtracts them, zero past n, and
// the residuals' squared norms.
TEST(TileF32, PanelsLessACentreAndTheirNorms) {
    for (size_t dim : {1, 17, 96}) {
        for (size_t n : {1, 16, 40}) {
            const auto b = test::random_vectors(n, dim, 30 + dim + n);
            const auto centre = test::random_vectors(1, dim, 40 + dim);
            std::vector<float> panels(tile_f32::panel_rows(n) * dim, -1.0f), norms(n, -1.0f);
            tile_f32::pack_panels(b.data(), n, dim, centre.data(), panels.data(), norms.data());
            for (size_t r = 0; r < tile_f32::panel_rows(n); ++r) {
                double square = 0.0;
                for (size_t d = 0; d < dim; ++d) {
                    const float got = panels[(r / 16) * dim * 16 + d * 16 + r % 16];
                    const float want = r < n ? b[r * dim + d] - centre[d] : 0.0f;
                    ASSERT_EQ(got, want) << "row " << r << " dim " << d;
                    square += double(want) * want;
                }
                if (r < n) EXPECT_NEAR(norms[r], square, 1e-5 * square) << "row " << r;
            }
        }
    }
}

}  // namespace
}  // namespace sparknn
