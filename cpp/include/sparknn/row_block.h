// Rows of float32 vectors [rows, dim] in one 64-byte aligned allocation that an
// index can take over instead of copying (Index::adopt_rows): a reader fills it
// (Python: through a numpy view), the index keeps the same memory as its vectors
// (flat, hnsw) or lists (ivf).
// A build that holds its input and then copies it into the index's lists needs
// twice the vectors' memory, and first touches of fresh memory are the slowest
// step of a cold build on some machines (page faults through a VM's host).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace sparknn {

class RowBlock {
  public:
    // Uninitialised: every row is to be written before the block is used.
    // Throws InvalidArgument when rows * dim floats cannot be addressed or allocated.
    RowBlock(size_t rows, size_t dim);

    float* data() { return data_.get(); }
    const float* data() const { return data_.get(); }
    size_t rows() const { return rows_; }
    size_t dim() const { return dim_; }
    // Claimed by the index that takes the block: its rows are the index's from then on
    // (reordered in place), so no one else may write or take them. claim() is atomic (two
    // indexes given one block: one wins); release() hands back a claim whose taking failed.
    bool taken() const { return taken_.load(std::memory_order_acquire); }
    bool claim() { return !taken_.exchange(true, std::memory_order_acq_rel); }
    void release() { taken_.store(false, std::memory_order_release); }

  private:
    struct Free {
        void operator()(float* p) const noexcept;
    };
    std::unique_ptr<float, Free> data_;
    size_t rows_, dim_;
    std::atomic<bool> taken_{false};
};

// Moves row i of x [n, dim] to row to[i] in place (to: a permutation of 0..n-1), each
// cycle carried along by one row's buffer: every row is copied about twice, and no
// second array of the rows is needed.
void permute_rows(float* x, size_t n, size_t dim, const std::vector<size_t>& to);

// The moves that put row order[r] at row r (order: each of 0..n-1 once): permute_rows' `to`.
std::vector<size_t> rows_into_order(const int64_t* order, size_t n);

}  // namespace sparknn
