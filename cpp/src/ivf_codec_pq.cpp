// IVF PQ storage: the residual of each vector to its list centroid, product-
// quantised (pq.h) to pq_m bytes; a list is scanned with per-query lookup
// tables (asymmetric distances), not decoded.
#include <algorithm>
#include <vector>

#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/pq.h"

namespace sparknn {
namespace {

// The default PQ size: about 4 dimensions per byte, on a divisor of dim.
size_t default_pq_m(size_t dim) {
    for (size_t m = std::max<size_t>(1, dim / 4); m > 1; --m) {
        if (dim % m == 0) return m;
    }
    return 1;
}

class PqCodec final : public IvfCodec {
  public:
    PqCodec(size_t dim, Metric metric, size_t m) : IvfCodec(dim, metric), pq_(dim, m) {}
    size_t code_size() const override { return pq_.code_size(); }
    const ProductQuantizer& pq() const { return pq_; }
    Metric metric() const { return metric_; }
    size_t dim() const { return dim_; }

    void train(size_t n, const float* x, const FlatIndex& quantizer, const float* centroids, uint64_t seed,
               size_t iterations, int threads) override {
        // Residuals to the list centroid: they are smaller and more alike
        // across lists than the vectors themselves.
        const size_t pq_n = std::min<size_t>(n, 65536);
        std::vector<int64_t> assigned(pq_n);
        std::vector<float> unused(pq_n);
        SearchParams p;
        p.threads = threads;
        quantizer.search(pq_n, x, 1, assigned.data(), unused.data(), p);
        std::vector<float> residuals(pq_n * dim_);
        for (size_t i = 0; i < pq_n; ++i) {
            const float* c = centroids + static_cast<size_t>(assigned[i]) * dim_;
            for (size_t j = 0; j < dim_; ++j) residuals[i * dim_ + j] = x[i * dim_ + j] - c[j];
        }
        pq_.train(pq_n, residuals.data(), seed, threads, iterations);
    }

    void encode(const float* x, const float* centroid, uint8_t* code) const override {
        thread_local std::vector<float> residual;
        residual.resize(dim_);
        for (size_t j = 0; j < dim_; ++j) residual[j] = x[j] - centroid[j];
        pq_.encode(residual.data(), code);
    }

    void decode(const uint8_t* code, const float* centroid, float* out) const override {
        pq_.decode(code, out);  // the residual
        for (size_t j = 0; j < dim_; ++j) out[j] = centroid[j] + out[j];
    }

    std::unique_ptr<IvfListScanner> scanner(TileProducts) const override;

    void save(FileWriter& writer) const override {
        writer.add_section(SectionType::IvfPqCodebooks, pq_.codebooks().data(), pq_.codebooks().size() * sizeof(float));
    }

    void load(const IndexFile& file) override {
        const size_t values =
            IndexFile::checked_mul(IndexFile::checked_mul(pq_.m(), ProductQuantizer::kCentroids), pq_.dsub());
        pq_.set_codebooks(file.typed_section<float>(SectionType::IvfPqCodebooks, values));
    }

  private:
    ProductQuantizer pq_;
};

// Per query: a [pq_m, 256] table of distances to every sub-centroid (of the
// residual to the list centroid under L2), then sums of pq_m lookups per code.
class PqScanner final : public IvfListScanner {
  public:
    explicit PqScanner(const PqCodec& codec)
        : codec_(codec),
          table_(codec.pq().m() * ProductQuantizer::kCentroids),
          residual_(codec.dim()),
          dist_(kScanBaseBlock) {}

    void scan(const IvfListView& list, const float* queries, const uint32_t* qs, size_t m,
              TopK* const* heaps) override {
        const ProductQuantizer& pq = codec_.pq();
        const size_t dim = codec_.dim(), pm = pq.m();
        const Metric metric = codec_.metric();
        const DistanceKernels& kern = kernels();
        for (size_t i = 0; i < m; ++i) {
            const float* q = queries + size_t{qs[i]} * dim;
            float offset = 0.0f;
            if (metric == Metric::L2) {
                for (size_t j = 0; j < dim; ++j) residual_[j] = q[j] - list.centroid[j];
                pq.l2_table(residual_.data(), table_.data());
            } else {
                // q . x = q . centre + q . residual; the table holds -q . residual
                pq.ip_table(q, table_.data());
                offset = (metric == Metric::Cosine ? 1.0f : 0.0f) - kern.dot(q, list.centroid, dim);
            }
            for (size_t r0 = 0; r0 < list.size; r0 += kScanBaseBlock) {
                const size_t count = std::min(kScanBaseBlock, list.size - r0);
                kern.pq_scan(table_.data(), list.codes + r0 * pm, count, pm, offset, dist_.data());
                select_row(*heaps[i], dist_.data(), count, list.labels + r0, 0);
            }
        }
    }

  private:
    const PqCodec& codec_;
    std::vector<float> table_, residual_, dist_;
};

std::unique_ptr<IvfListScanner> PqCodec::scanner(TileProducts) const { return std::make_unique<PqScanner>(*this); }

}  // namespace

std::unique_ptr<IvfCodec> make_pq_codec(size_t dim, Metric metric, size_t& pq_m) {
    if (pq_m == 0) pq_m = default_pq_m(dim);
    return std::make_unique<PqCodec>(dim, metric, pq_m);
}

}  // namespace sparknn
