// IvfIndex: lists that keep a RowBlock's rows where they are (adopt_rows), and the
// rows of every list as one array when they lie in list order (an adopted block,
// a loaded file): a self-join's queries without a copy.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "blas.h"
#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/error.h"
#include "sparknn/flat.h"
#include "sparknn/ivf.h"
#include "sparknn/parallel.h"
#include "sparknn/row_block.h"

namespace sparknn {

void IvfIndex::adopt_rows(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* lists,
                          const int64_t* order) {
    adopt_with(
        block, ids, order, [&] { if (lists != nullptr) check_lists(block->rows(), 1, lists, "lists"); },
        [&] { lists != nullptr ? place_rows(block, lists, order) : adopt_impl(block, order); });
}

void IvfIndex::adopt_rows_nearest(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* order,
                                  size_t width, int64_t* nearest) {
    adopt_with(
        block, ids, order,
        [&] {
            SPARKNN_CHECK_ARG(width >= 1 && width <= lists_.size(),
                              "the nearest lists' width must be in [1, nlist=", lists_.size(), "], got ", width);
        },
        [&] { place_nearest(block, order, width, nearest); });
}

void IvfIndex::check_adoptable(size_t) const {
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "adopt_rows needs a trained IVF index: call train() first");
    SPARKNN_CHECK_ARG(params_.storage == Storage::Float32 && !params_.keeps_float_copies(),
                      "adopt_rows keeps the rows as they are, so it needs float32 lists; this index stores ",
                      storage_name(params_.storage), ": use add");
}

// The lists found here: every row's nearest, from the rows as stored (normalised under cosine).
void IvfIndex::adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order) {
    std::vector<int64_t> nearest(block->rows());
    place_nearest(block, order, 1, nearest.data());
}

// The rows' lists found here (each label's nearest `width` into nearest), then placed: with the
// quantizer's projected pass (a first pass trained in its subspace) the rows are projected once,
// for their lists and as the first pass's projected lists.
void IvfIndex::place_nearest(const std::shared_ptr<RowBlock>& block, const int64_t* order, size_t width,
                             int64_t* nearest) {
    // the rows are checked (and normalised under cosine) now, as nearest_lists' queries would be
    const size_t n = block->rows();
    const float* rows = block->data();
    std::vector<int64_t> of_row(n * width);  // of each row of the block
    AlignedVector<float> projected;
    const size_t dims = quantizer_->projected_first_pass_dims();
    if (dims > 0) {  // the quantizer's projection is the first pass's basis (train_on_sample)
        std::vector<float> basis;
        {
            std::lock_guard<std::mutex> guard(first_pass_mutex_);
            if (first_pass_.dims == dims) basis = first_pass_.basis;
        }
        if (!basis.empty()) {
            projected.resize(n * dims);
            gemm_abt_rows(n, dims, dim_, rows, basis.data(), projected.data(), threads(), FlatIndex::kProjectBlock);
            // in chunks: the search's candidates (width + extra per row) stay small
            constexpr size_t kChunk = 65536;
            std::vector<float> distances(std::min(n, kChunk) * width);
            for (size_t r0 = 0; r0 < n; r0 += kChunk) {
                const size_t m = std::min(kChunk, n - r0);
                quantizer_->search_projected(m, rows + r0 * dim_, projected.data() + r0 * dims, width,
                                             of_row.data() + r0 * width, distances.data(), threads());
            }
        }
    }
    if (projected.empty()) assign(n, rows, width, of_row.data(), threads());
    std::vector<int64_t> assigned(n);
    for (size_t r = 0; r < n; ++r) {
        const size_t row = order != nullptr ? static_cast<size_t>(order[r]) : r;
        assigned[r] = of_row[row * width];
        std::copy_n(of_row.data() + row * width, width, nearest + r * width);
    }
    place_rows(block, assigned.data(), order, projected.empty() ? nullptr : &projected, dims);
}

// Everything that can fail is allocated before the first row moves; the commit cannot fail.
void IvfIndex::place_rows(const std::shared_ptr<RowBlock>& block, const int64_t* assigned, const int64_t* order,
                          AlignedVector<float>* projected, size_t dims) {
    const size_t n = block->rows(), nlist = lists_.size();
    std::vector<size_t> start(nlist + 1, 0);
    for (size_t i = 0; i < n; ++i) ++start[static_cast<size_t>(assigned[i]) + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<size_t> to(n);
    std::vector<AlignedVector<int64_t>> labels(nlist);
    std::vector<AlignedVector<float>> norms(codec_->keeps_norms() ? nlist : 0);
    for (size_t l = 0; l < nlist; ++l) {
        labels[l].resize(start[l + 1] - start[l]);
        if (!norms.empty()) norms[l].resize(labels[l].size());
    }
    {  // label r (row order[r] of the block) goes next into its list: a list holds its labels ascending, as add leaves it
        std::vector<size_t> fill(start.begin(), start.end() - 1);
        for (size_t r = 0; r < n; ++r) {
            const size_t l = static_cast<size_t>(assigned[r]);
            labels[l][fill[l] - start[l]] = static_cast<int64_t>(r);  // labels start at 0: the index was empty
            to[order != nullptr ? static_cast<size_t>(order[r]) : r] = fill[l]++;
        }
    }
    float* rows = block->data();
    if (projected != nullptr) permute_rows(projected->data(), n, dims, to);  // before the rows: it may throw
    permute_rows(rows, n, dim_, to);
    const size_t cs = codec_->code_size();
    parallel_for(nlist, 16, threads(), [&](size_t b, size_t e, int) {
        for (size_t l = b; l < e; ++l) {
            const size_t count = start[l + 1] - start[l];
            if (count == 0) continue;
            const float* first = rows + start[l] * dim_;
            if (!norms.empty()) squared_norms(first, count, dim_, norms[l].data());
            List& list = lists_[l];
            list.labels.mutate().swap(labels[l]);
            list.codes.set_view(reinterpret_cast<const uint8_t*>(first), count * cs, block);
            if (!norms.empty()) list.norms.swap(norms[l]);
        }
    });
    if (projected != nullptr) {
        std::lock_guard<std::mutex> guard(first_pass_mutex_);
        if (first_pass_.dims == dims) first_pass_.given = std::move(*projected);
    }
}

PinnedView<float> IvfIndex::view_rows_in_list_order() const {
    auto lock = reading();
    SPARKNN_THROW_IF_NOT(params_.storage == Storage::Float32, Unsupported, "this index stores ",
                         storage_name(params_.storage), " codes, not float32 rows: use reconstruct");
    const uint8_t* base = nullptr;
    size_t bytes = 0;
    for (const List& list : lists_) {
        if (list.codes.size() == 0) continue;
        if (base == nullptr) base = list.codes.data();
        SPARKNN_THROW_IF_NOT(list.codes.data() == base + bytes, Unsupported,
                             "this index's lists do not lie in one array (rows were added to them): use "
                             "reconstruct");
        bytes += list.codes.size();
    }
    return {reinterpret_cast<const float*>(base), size(), dim_, pin()};
}

}  // namespace sparknn
