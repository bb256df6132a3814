// tile_f32.h: what runs on any CPU (the packing, once per list). The product is
// tile_f32_avx512.cpp's.
#include "tile_f32.h"

#include "sparknn/distance.h"

namespace sparknn::tile_f32 {

bool available() {
#if defined(SPARKNN_TILE_BF16)  // the x86 build that compiles the AVX-512 files
    return simd_level() == SimdLevel::Avx512;
#else
    return false;
#endif
}

void pack_panels(const float* rows, size_t n, size_t dim, const float* centre, float* out, float* residual_norms) {
    for (size_t p0 = 0; p0 < panel_rows(n); p0 += 16) {
        float* panel = out + p0 * dim;
        for (size_t i = 0; i < 16; ++i) {
            const float* row = p0 + i < n ? rows + (p0 + i) * dim : nullptr;
            float square = 0.0f;
            for (size_t d = 0; d < dim; ++d) {
                const float v = row == nullptr ? 0.0f : centre != nullptr ? row[d] - centre[d] : row[d];
                panel[d * 16 + i] = v;
                square += v * v;
            }
            if (row != nullptr && residual_norms != nullptr) residual_norms[p0 + i] = square;
        }
    }
}

}  // namespace sparknn::tile_f32
