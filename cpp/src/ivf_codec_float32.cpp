// IVF float32 storage: vectors as they are, scanned in place (no decoding);
// under L2 each list keeps the squared norms the sgemm scan needs.
#include <cstring>

#include "gemm_scan.h"
#include "ivf_codec.h"

namespace sparknn {
namespace {

class Float32Codec final : public BlockCodec {
  public:
    using BlockCodec::BlockCodec;
    size_t code_size() const override { return dim_ * sizeof(float); }
    bool keeps_norms() const override { return metric_ == Metric::L2; }
    bool needs_scratch() const override { return false; }

    void encode(const float* x, const float*, uint8_t* code) const override {
        std::memcpy(code, x, dim_ * sizeof(float));
    }
    void decode(const uint8_t* code, const float*, float* out) const override {
        std::memcpy(out, code, dim_ * sizeof(float));
    }
    const float* rows(const IvfListView& list, size_t begin, size_t, float*, const float** norms,
                      float*) const override {
        *norms = list.norms ? list.norms + begin : nullptr;
        return reinterpret_cast<const float*>(list.codes) + begin * dim_;
    }
};

}  // namespace

std::unique_ptr<IvfCodec> make_float32_codec(size_t dim, Metric metric) {
    return std::make_unique<Float32Codec>(dim, metric);
}

}  // namespace sparknn
