// Exact search: every query against every stored vector, as a blocked matrix
// product through BLAS sgemm followed by a top-k selection, on all threads.
// It is the ground truth of every recall figure. With 16-bit storage the rows
// are widened block by block before the sgemm: exact on the stored values.
#pragma once

#include <memory>

#include "sparknn/index.h"
#include "sparknn/vector_store.h"

namespace sparknn {

class FlatIndex final : public Index {
  public:
    FlatIndex(size_t dim, Metric metric, Storage storage = Storage::Float32)
        : Index(dim, metric), store_(dim, storage) {}
    IndexKind kind() const override { return IndexKind::Flat; }
    Storage storage() const override { return store_.storage(); }
    const float* vector_of(size_t label) const override {
        return store_.f32() ? store_.f32() + label * dim_ : nullptr;
    }

    static std::unique_ptr<FlatIndex> load(const std::shared_ptr<const IndexFile>& file);

    // An approximate first pass, for the engine's own indexes of a few rows searched
    // by many queries (the IVF quantizer, k-means): bf16 tile products of rows and
    // queries less the rows' mean (tile_bf16.h, twice sgemm's rate), then each query's
    // best k + extra candidates measured exactly in float32 (the answer and its
    // distances). Only on CPUs with bf16 tiles and float32 rows; 0 (the default): off.
    void set_bf16_first_pass(size_t extra) { bf16_extra_ = extra; }
    // The same through a projection instead (the IVF first pass: ivf.h): rows and queries
    // projected onto basis [dims, dim] (orthonormal rows), each query's best k + extra
    // candidates there measured exactly. Replaces the rows' projection; dims = 0: off.
    // Not synchronised: set before the searches (IvfIndex sets it on its quantizer at train).
    void set_projected_first_pass(const float* basis, size_t dims, size_t extra);
    size_t projected_first_pass_dims() const { return projected_ ? projected_->dim() : 0; }
    // The projected first pass's search of queries [nq, dim] (as stored: unit under cosine)
    // whose projections [nq, dims] onto the basis the caller computed already (gemm_abt_rows,
    // blocks of kProjectBlock rows: the bits search computes them with). Needs the pass set.
    void search_projected(size_t nq, const float* queries, const float* projected, size_t k, int64_t* out_ids,
                          float* out_distances, int threads) const;
    static constexpr size_t kProjectBlock = 1024;

  protected:
    void add_impl(size_t n, const float* vectors) override;
    void check_adoptable(size_t rows) const override;
    void adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order) override;
    void search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                     const SearchParams& params) const override;
    void save_sections(FileWriter& writer) const override;
    void reconstruct_impl(size_t begin, size_t count, float* out) const override { store_.decode(begin, count, out); }
    void gather_labels(size_t n, const int64_t* labels, float* out) const override { store_.gather(n, labels, out); }

  private:
    void compute_norms(size_t begin, size_t end, int threads);
    // L2: adds rows [begin, end) to sums_ and norm_sum_ (compute_norms first).
    void accumulate_sums(size_t begin, size_t end, int threads);
    // The rows' mean into `mean`; returns whether L2 distances are taken less it (the
    // mean's squared norm exceeds kCentreWhen (gemm_scan.h) times the rows' spread about
    // it: |q|^2 + |x|^2 - 2 q.x would cancel most of float32's bits).
    bool centre_on_mean(std::vector<float>& mean) const;

    size_t bf16_extra_ = 0;          // set_bf16_first_pass
    // set_projected_first_pass: the basis [dims, dim], the rows projected (an index of dims:
    // L2 under L2 and cosine, else inner product), the candidates beyond k
    std::vector<float> basis_;
    std::unique_ptr<FlatIndex> projected_;
    size_t projected_extra_ = 0;
    VectorStore store_;              // [n, dim] (unit rows under cosine)
    AlignedVector<float> sq_norms_;  // [n], L2 only: |x|^2 of the stored rows, recomputed on load
    std::vector<double> sums_;       // [dim], L2 only: the stored rows summed, recomputed on load
    double norm_sum_ = 0;            // L2 only: sum of sq_norms_
};

}  // namespace sparknn
