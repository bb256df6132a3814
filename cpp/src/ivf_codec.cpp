// The choice of codec, and the sgemm scan shared by the codecs that decode
// block by block (float32, fp16, bf16, sq8).
#include "ivf_codec.h"

#include <cstring>
#include <string>
#include <vector>

#include "gemm_scan.h"
#include "sparknn/error.h"

namespace sparknn {

std::unique_ptr<IvfCodec> make_ivf_codec(IvfParams& params, size_t dim, Metric metric) {
    switch (params.storage) {
        case Storage::Sq8:
            return make_sq8_codec(dim, metric);
        case Storage::Pq:
            return make_pq_codec(dim, metric, params.pq_m);
        case Storage::Float16:
        case Storage::BFloat16:
            return make_half_codec(dim, metric, params.storage);
        default:
            return make_float32_codec(dim, metric);
    }
}

namespace {

class BlockScanner final : public IvfListScanner {
  public:
    BlockScanner(const BlockCodec& codec, size_t dim, Metric metric, TileProducts products)
        : codec_(codec),
          dim_(dim),
          metric_(metric),
          scanner_(metric, dim, products),
          qbuf_(kListQueries * dim),
          qnorm_(kListQueries),
          decoded_(codec.needs_scratch() ? kScanBaseBlock * dim : 0),
          decoded_norms_(kScanBaseBlock) {
        scanner_.centre_float32(GemmScanner::Centring::Auto);  // lists far from the origin
    }

    void scan(const IvfListView& list, const float* queries, const uint32_t* qs, size_t m,
              TopK* const* heaps) override {
        // Queries taken list after list (a self-join) probe their own list as
        // consecutive rows of the batch: they are read in place, not gathered.
        const float* block = queries + size_t{qs[0]} * dim_;
        if (qs[m - 1] - qs[0] + 1 != m) {
            for (size_t i = 0; i < m; ++i) {
                std::memcpy(&qbuf_[i * dim_], queries + size_t{qs[i]} * dim_, dim_ * sizeof(float));
            }
            block = qbuf_.data();
        }
        if (list.panels != nullptr) {  // packed once: no sgemm packing per call
            const bool l2 = metric_ == Metric::L2;
            scanner_.scan_panels(block, m, list.panels, l2 ? list.panel_norms : nullptr, list.size, list.labels, heaps,
                                 l2 ? list.centroid : nullptr);
            return;
        }
        if (metric_ == Metric::L2) squared_norms(block, m, dim_, qnorm_.data());
        for (size_t r0 = 0; r0 < list.size; r0 += kScanBaseBlock) {
            const size_t count = std::min(kScanBaseBlock, list.size - r0);
            const float* norms = nullptr;
            const float* base = codec_.rows(list, r0, count, decoded_.data(), &norms, decoded_norms_.data());
            scanner_.scan(block, qnorm_.data(), m, base, norms, count, list.labels + r0, 0, heaps, list.centroid);
        }
    }

  private:
    const BlockCodec& codec_;
    size_t dim_;
    Metric metric_;
    GemmScanner scanner_;
    std::vector<float> qbuf_, qnorm_;
    std::vector<float> decoded_, decoded_norms_;
};

}  // namespace

std::unique_ptr<IvfListScanner> BlockCodec::scanner(TileProducts products) const {
    return std::make_unique<BlockScanner>(*this, dim_, metric_, products);
}

}  // namespace sparknn
