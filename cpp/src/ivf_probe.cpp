// Which lists each IVF query scans: the quantizer's nearest lists, widened for
// a query whose lists hold too few vectors. search (SearchParams::widen) and
// probe_lists (for callers that scan the lists themselves) share this policy.
#include <algorithm>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/ivf.h"

namespace sparknn {

void IvfIndex::nearest_lists(size_t nq, const float* queries, size_t nprobe, int64_t* out_lists, int threads) const {
    const int t = call_threads(threads);
    auto lock = reading();
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "the IVF index is not trained: call train() or add()");
    SPARKNN_CHECK_ARG(nprobe >= 1 && nprobe <= lists_.size(), "nprobe must be in [1, nlist=", lists_.size(), "], got ",
                      nprobe);
    if (nq == 0) return;
    AlignedVector<float> scratch;
    const float* q = prepare_queries(nq, queries, scratch, t);
    assign(nq, q, nprobe, out_lists, t);
}

void IvfIndex::assign(size_t nq, const float* queries, size_t nprobe, int64_t* out_lists, int threads) const {
    std::vector<float> dist(nq * nprobe);
    SearchParams p;
    p.threads = threads;
    quantizer_->search(nq, queries, nprobe, out_lists, dist.data(), p);
}

namespace {

// Vectors in list l: the given sizes, or the list's own.
template <class Lists>
size_t size_of(const Lists& lists, const int64_t* sizes, int64_t l) {
    return sizes ? static_cast<size_t>(sizes[l]) : lists[static_cast<size_t>(l)].labels.size();
}

// How many of `lists` (nearest first) hold `need` vectors: the shortest such
// prefix, or 0 when all of them hold fewer. Counts down, so huge sizes cannot overflow.
template <class Lists>
size_t prefix_holding(const Lists& all, const int64_t* sizes, const int64_t* lists, size_t width, size_t need) {
    size_t missing = need;
    for (size_t j = 0; j < width; ++j) {
        const size_t s = size_of(all, sizes, lists[j]);
        if (s >= missing) return j + 1;
        missing -= s;
    }
    return 0;
}

}  // namespace

std::vector<size_t> IvfIndex::short_rows(size_t nq, size_t nprobe, const int64_t* probes, size_t need,
                                         const int64_t* sizes) const {
    std::vector<size_t> rows;
    if (need == 0) return rows;
    for (size_t q = 0; q < nq; ++q) {
        if (prefix_holding(lists_, sizes, probes + q * nprobe, nprobe, need) == 0) rows.push_back(q);
    }
    return rows;
}

ProbePlan IvfIndex::widen(const std::vector<size_t>& rows, const float* queries, size_t nprobe, size_t need,
                          const int64_t* sizes, bool trim, int threads) const {
    const size_t nlist = lists_.size();
    std::vector<std::vector<int64_t>> chosen(rows.size());
    std::vector<size_t> pending(rows.size());  // indices into rows
    for (size_t i = 0; i < rows.size(); ++i) pending[i] = i;
    AlignedVector<float> gathered;
    std::vector<int64_t> wide;
    for (size_t width = nprobe; !pending.empty();) {
        width = std::min(nlist, 2 * width);
        const size_t m = pending.size();
        gathered.resize(m * dim_);
        for (size_t i = 0; i < m; ++i) {
            std::copy_n(queries + rows[pending[i]] * dim_, dim_, gathered.data() + i * dim_);
        }
        wide.resize(m * width);
        assign(m, gathered.data(), width, wide.data(), threads);
        std::vector<size_t> still;
        for (size_t i = 0; i < m; ++i) {
            const int64_t* row = wide.data() + i * width;
            const size_t used = prefix_holding(lists_, sizes, row, width, need);
            if (used == 0 && width < nlist) {
                still.push_back(pending[i]);
                continue;
            }
            chosen[pending[i]].assign(row, row + (trim && used > 0 ? used : width));
        }
        pending.swap(still);
    }
    ProbePlan plan;
    plan.offsets.assign(1, 0);
    for (const std::vector<int64_t>& lists : chosen) {
        plan.lists.insert(plan.lists.end(), lists.begin(), lists.end());
        plan.offsets.push_back(static_cast<int64_t>(plan.lists.size()));
    }
    return plan;
}

ProbePlan IvfIndex::probe_lists(size_t nq, const float* queries, size_t nprobe, size_t need, const int64_t* list_sizes,
                                const int64_t* nearest, size_t nearest_width, int threads) const {
    const int t = call_threads(threads);
    auto lock = reading();
    SPARKNN_THROW_IF_NOT(trained(), InvalidArgument, "the IVF index is not trained: call train() or add()");
    SPARKNN_CHECK_ARG(nprobe >= 1, "nprobe must be >= 1, got ", nprobe);
    const size_t nlist = lists_.size();
    nprobe = std::min(nprobe, nlist);
    for (size_t l = 0; list_sizes != nullptr && l < nlist; ++l) {
        SPARKNN_CHECK_ARG(list_sizes[l] >= 0, "list_sizes[", l, "] = ", list_sizes[l], " is negative");
    }
    ProbePlan plan;
    plan.offsets.assign(nq + 1, 0);
    if (nq == 0) return plan;
    SPARKNN_CHECK_ARG(queries != nullptr, "queries is null");
    std::vector<int64_t> probes(nq * nprobe);
    if (nearest != nullptr) {
        SPARKNN_CHECK_ARG(nearest_width >= nprobe, "nearest holds ", nearest_width,
                          " lists per query, fewer than nprobe=", nprobe);
        for (size_t q = 0; q < nq; ++q) std::copy_n(nearest + q * nearest_width, nprobe, probes.data() + q * nprobe);
        check_lists(nq, nprobe, probes.data(), "nearest");
    }
    AlignedVector<float> scratch;
    const float* x = prepare_queries(nq, queries, scratch, t);
    if (nearest == nullptr) assign(nq, x, nprobe, probes.data(), t);
    const std::vector<size_t> rows = short_rows(nq, nprobe, probes.data(), need, list_sizes);
    const ProbePlan wide = widen(rows, x, nprobe, need, list_sizes, /*trim=*/true, t);
    plan.lists.reserve((nq - rows.size()) * nprobe + wide.lists.size());
    for (size_t q = 0, next = 0; q < nq; ++q) {
        const int64_t* begin = probes.data() + q * nprobe;
        const int64_t* end = begin + nprobe;
        if (next < rows.size() && rows[next] == q) {
            begin = wide.lists.data() + wide.offsets[next];
            end = wide.lists.data() + wide.offsets[next + 1];
            ++next;
        }
        plan.lists.insert(plan.lists.end(), begin, end);
        plan.offsets[q + 1] = static_cast<int64_t>(plan.lists.size());
    }
    return plan;
}

}  // namespace sparknn
