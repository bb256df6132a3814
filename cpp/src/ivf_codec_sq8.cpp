// IVF SQ8 storage: one byte per value, 256 steps over the per-dimension range
// of the training sample (4x smaller than float32); decoded block by block
// into the sgemm scan.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gemm_scan.h"
#include "ivf_codec.h"

namespace sparknn {
namespace {

class Sq8Codec final : public BlockCodec {
  public:
    using BlockCodec::BlockCodec;
    size_t code_size() const override { return dim_; }
    bool needs_scratch() const override { return true; }

    void train(size_t n, const float* x, const FlatIndex&, const float*, uint64_t, size_t, int) override {
        std::vector<float> lo(dim_, std::numeric_limits<float>::infinity());
        std::vector<float> hi(dim_, -std::numeric_limits<float>::infinity());
        for (size_t i = 0; i < n; ++i) {
            for (size_t j = 0; j < dim_; ++j) {
                lo[j] = std::min(lo[j], x[i * dim_ + j]);
                hi[j] = std::max(hi[j], x[i * dim_ + j]);
            }
        }
        min_ = lo;
        step_.resize(dim_);
        for (size_t j = 0; j < dim_; ++j) step_[j] = hi[j] > lo[j] ? (hi[j] - lo[j]) / 255.0f : 1.0f;
    }

    void encode(const float* x, const float*, uint8_t* code) const override {
        for (size_t j = 0; j < dim_; ++j) {
            const float q = std::nearbyint((x[j] - min_[j]) / step_[j]);
            code[j] = static_cast<uint8_t>(std::clamp(q, 0.0f, 255.0f));  // values outside the trained range saturate
        }
    }

    void decode(const uint8_t* code, const float*, float* out) const override { decode_row(code, out); }

    const float* rows(const IvfListView& list, size_t begin, size_t count, float* scratch, const float** norms,
                      float* norm_scratch) const override {
        const uint8_t* codes = list.codes + begin * dim_;
        for (size_t i = 0; i < count; ++i) decode_row(codes + i * dim_, scratch + i * dim_);
        if (metric_ == Metric::L2) {
            squared_norms(scratch, count, dim_, norm_scratch);
            *norms = norm_scratch;
        } else {
            *norms = nullptr;
        }
        return scratch;
    }

    void save(FileWriter& writer) const override {
        writer.add_section(SectionType::IvfSq8Min, min_.data(), dim_ * sizeof(float));
        writer.add_section(SectionType::IvfSq8Step, step_.data(), dim_ * sizeof(float));
    }

    void load(const IndexFile& file) override {
        const float* lo = file.typed_section<float>(SectionType::IvfSq8Min, dim_);
        const float* step = file.typed_section<float>(SectionType::IvfSq8Step, dim_);
        for (size_t j = 0; j < dim_; ++j) {
            if (!std::isfinite(lo[j]) || !std::isfinite(step[j]) || step[j] <= 0) file.fail("ivf: invalid SQ8 ranges");
        }
        min_.assign(lo, lo + dim_);
        step_.assign(step, step + dim_);
    }

  private:
    void decode_row(const uint8_t* code, float* out) const {
        for (size_t j = 0; j < dim_; ++j) out[j] = min_[j] + step_[j] * static_cast<float>(code[j]);
    }

    std::vector<float> min_, step_;  // per dimension: value = min + step * code
};

}  // namespace

std::unique_ptr<IvfCodec> make_sq8_codec(size_t dim, Metric metric) { return std::make_unique<Sq8Codec>(dim, metric); }

}  // namespace sparknn
