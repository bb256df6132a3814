// Index::adopt_rows: an index takes a RowBlock's rows as its own vectors in place,
// the checks every kind shares (each kind's adopt_impl places the rows).
#include <vector>

#include "sparknn/error.h"
#include "sparknn/index.h"
#include "sparknn/row_block.h"
#include "sparknn/storage.h"

namespace sparknn {

void Index::adopt_rows(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* order) {
    adopt_with(block, ids, order, nullptr, [&] { adopt_impl(block, order); });
}

void Index::check_adoptable(size_t) const {
    throw Unsupported(detail::concat("this index kind cannot keep a block's rows in place: use add"));
}

void Index::check_adoptable_storage() const {
    SPARKNN_CHECK_ARG(storage() == Storage::Float32,
                      "adopt_rows keeps the rows as they are, so it needs float32 storage; this index stores ",
                      storage_name(storage()), ": use add");
}

void Index::adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t*) { check_adoptable(block->rows()); }

void Index::adopt_with(const std::shared_ptr<RowBlock>& block, const int64_t* ids, const int64_t* order,
                       const std::function<void()>& check, const std::function<void()>& place) {
    SPARKNN_CHECK_ARG(block != nullptr, "adopt_rows: the block is null");
    auto lock = writing();
    check_unpinned("adopt_rows");
    check_adoptable(block->rows());
    SPARKNN_CHECK_ARG(block->dim() == dim_, "adopt_rows: the block's rows have dimension ", block->dim(),
                      " but the index has dim=", dim_);
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
    if (check) check();
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
    add_with(n, rows, ids, [&](const float*) { place(); }, rows);
    claim.kept = true;
    adopted_ = block;
}

}  // namespace sparknn
