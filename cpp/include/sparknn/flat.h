// Exact search: every query against every stored vector, as a blocked matrix
// product through BLAS sgemm followed by a top-k selection, on all threads.
// It is the ground truth of every recall figure.
#pragma once

#include <memory>

#include "sparknn/index.h"

namespace sparknn {

class FlatIndex final : public Index {
  public:
    FlatIndex(size_t dim, Metric metric) : Index(dim, metric) {}
    IndexKind kind() const override { return IndexKind::Flat; }
    const float* vector_of(size_t label) const override { return vectors_.data() + label * dim_; }

    static std::unique_ptr<FlatIndex> load(const std::shared_ptr<const IndexFile>& file);

  protected:
    void add_impl(size_t n, const float* vectors) override;
    void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                     const SearchParams& params) const override;
    void save_sections(FileWriter& writer) const override;

  private:
    Buffer<float> vectors_;   // [n, dim] (unit rows under cosine)
    AlignedVector<float> sq_norms_;  // [n], L2 only: |x|^2, recomputed on load
};

}  // namespace sparknn
