// IvfIndex: lists that keep a RowBlock's rows where they are (adopt_rows), and the
// rows of every list as one array when they lie in list order (an adopted block,
// a loaded file): a self-join's queries without a copy.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "gemm_scan.h"
#include "ivf_codec.h"
#include "sparknn/error.h"
#include "sparknn/ivf.h"
#include "sparknn/parallel.h"
#include "sparknn/row_block.h"

namespace sparknn {

namespace {

// Moves row i of x [n, dim] to row to[i] in place (to: a permutation of 0..n-1),
// each cycle carried along by one row's buffer: every row is copied about twice.
void permute_rows(float* x, size_t n, size_t dim, const std::vector<size_t>& to) {
    std::vector<bool> done(n, false);
    AlignedVector<float> carry(dim), swap(dim);
    const size_t bytes = dim * sizeof(float);
    for (size_t i = 0; i < n; ++i) {
        if (done[i] || to[i] == i) continue;
        std::memcpy(carry.data(), x + i * dim, bytes);
        for (size_t j = to[i]; j != i; j = to[j]) {
            __builtin_prefetch(x + to[j] * dim);
            std::memcpy(swap.data(), x + j * dim, bytes);
            std::memcpy(x + j * dim, carry.data(), bytes);
            carry.swap(swap);
            done[j] = true;
        }
        std::memcpy(x + i * dim, carry.data(), bytes);
        done[i] = true;
    }
}

}  // namespace

void IvfIndex::adopt_rows(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* lists,
                          const int64_t* order) {
    SPARKNN_CHECK_ARG(block != nullptr, "adopt_rows: the block is null");
    auto lock = writing();
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "adopt_rows needs a trained IVF index: call train() first");
    check_unpinned("adopt_rows");
    SPARKNN_CHECK_ARG(block->dim() == dim_, "adopt_rows: the block's rows have dimension ", block->dim(),
                      " but the index has dim=", dim_);
    SPARKNN_CHECK_ARG(params_.storage == Storage::Float32 && !params_.keeps_float_copies(),
                      "adopt_rows keeps the rows as they are, so it needs float32 lists; this index stores ",
                      storage_name(params_.storage), ": use add");
    SPARKNN_CHECK_ARG(size() == 0, "adopt_rows needs an empty index (this one holds ", size(),
                      " vectors): use add to append");
    const size_t n = block->rows();
    if (n == 0) return;
    SPARKNN_CHECK_ARG(block->claim(), "adopt_rows: this block's rows belong to an index already");
    struct Claim {  // handed back unless the rows were taken
        RowBlock& block;
        bool kept = false;
        ~Claim() {
            if (!kept) block.release();
        }
    } claim{*block};
    if (lists != nullptr) check_lists(n, 1, lists, "lists");
    if (order != nullptr) {  // a permutation of the block's rows
        std::vector<bool> seen(n, false);
        for (size_t r = 0; r < n; ++r) {
            SPARKNN_CHECK_ARG(order[r] >= 0 && static_cast<size_t>(order[r]) < n && !seen[order[r]],
                              "adopt_rows: order[", r, "] = ", order[r], " is outside the block's rows [0, ", n,
                              ") or names one twice: order must name each row once");
            seen[order[r]] = true;
        }
    }
    float* rows = block->data();
    add_with(
        n, rows, ids,
        [&](const float* stored) {
            std::vector<int64_t> assigned;  // of each label
            if (lists == nullptr) {
                std::vector<int64_t> of_row(n);
                assign(n, stored, 1, of_row.data(), threads());
                assigned.resize(n);
                for (size_t r = 0; r < n; ++r) assigned[r] = of_row[order != nullptr ? order[r] : r];
            }
            place_rows(block, lists != nullptr ? lists : assigned.data(), order);
        },
        rows);
    claim.kept = true;
}

// Everything that can fail is allocated before the first row moves; the commit cannot fail.
void IvfIndex::place_rows(const std::shared_ptr<RowBlock>& block, const int64_t* assigned, const int64_t* order) {
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
