#include "sparknn/flat.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "blas.h"
#include "gemm_scan.h"
#include "tile_bf16.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"

namespace sparknn {
namespace {

// Selection slack of the flat scan (see TopK::reset): its selections per query
// block are few, so each may hold 4k entries between cuts.
constexpr size_t kFlatSlack = 4;
// Fewer queries a thread than this are one query block over a base split among the
// threads (each reads part of the base) rather than blocks over the whole base.
constexpr size_t kSplitBaseBelow = 64;

}  // namespace

void FlatIndex::add_impl(size_t n, const float* vectors) {
    const size_t old = store_.rows();
    store_.append(n, vectors);
    if (metric_ == Metric::L2) {
        try {
            sq_norms_.resize(old + n);
        } catch (...) {
            store_.truncate(old);
            throw;
        }
        compute_norms(old, old + n, threads());
        accumulate_sums(old, old + n, threads());
    }
}

void FlatIndex::check_adoptable(size_t) const { check_adoptable_storage(); }

// Allocations first: once a row moves, nothing but the norms' threads can fail.
void FlatIndex::adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order) {
    const size_t n = block->rows();
    if (metric_ == Metric::L2) sq_norms_.resize(n);
    if (order != nullptr) permute_rows(block->data(), n, dim_, rows_into_order(order, n));
    store_.adopt(block);
    if (metric_ == Metric::L2) {
        try {
            compute_norms(0, n, threads());
            accumulate_sums(0, n, threads());
        } catch (...) {
            store_.truncate(0);
            sq_norms_.clear();
            sums_.clear();
            norm_sum_ = 0;
            throw;
        }
    }
}

void FlatIndex::accumulate_sums(size_t begin, size_t end, int threads) {
    if (sums_.size() != dim_) sums_.assign(dim_, 0.0);
    std::mutex merge;
    parallel_for(end - begin, 8192, threads, [&](size_t b, size_t e, int) {
        std::vector<double> local(dim_, 0.0);
        std::vector<float> scratch(store_.f32() ? 0 : kScanBaseBlock * dim_);
        double norms = 0;
        for (size_t r = begin + b; r < begin + e; r += kScanBaseBlock) {
            const size_t count = std::min(kScanBaseBlock, begin + e - r);
            const float* rows = store_.rows(r, count, scratch.data());
            for (size_t i = 0; i < count; ++i) {
                for (size_t d = 0; d < dim_; ++d) local[d] += rows[i * dim_ + d];
                norms += sq_norms_[r + i];
            }
        }
        std::lock_guard<std::mutex> lock(merge);
        for (size_t d = 0; d < dim_; ++d) sums_[d] += local[d];
        norm_sum_ += norms;
    });
}

bool FlatIndex::centre_on_mean(std::vector<float>& mean) const {
    const size_t n = size();
    if (metric_ != Metric::L2 || n == 0 || sums_.size() != dim_) return false;
    mean.resize(dim_);
    double squared = 0;
    for (size_t d = 0; d < dim_; ++d) {
        const double m = sums_[d] / static_cast<double>(n);
        mean[d] = static_cast<float>(m);
        squared += m * m;
    }
    const double spread = norm_sum_ / static_cast<double>(n) - squared;
    return squared > kCentreWhen * std::max(spread, 0.0);
}

// Norms of the stored rows (decoded under 16-bit storage), so that the
// distances sgemm turns them into are those of the stored vectors.
void FlatIndex::compute_norms(size_t begin, size_t end, int threads) {
    parallel_for(end - begin, 8192, threads, [&](size_t b, size_t e, int) {
        std::vector<float> scratch(store_.f32() ? 0 : kScanBaseBlock * dim_);
        for (size_t r = begin + b; r < begin + e; r += kScanBaseBlock) {
            const size_t count = std::min(kScanBaseBlock, begin + e - r);
            squared_norms(store_.rows(r, count, scratch.data()), count, dim_, sq_norms_.data() + r);
        }
    });
}

void FlatIndex::set_projected_first_pass(const float* basis, size_t dims, size_t extra) {
    SPARKNN_CHECK_ARG(dims < dim_, "set_projected_first_pass: dims ", dims, " must be below dim=", dim_);
    projected_.reset();
    basis_.clear();
    if (dims == 0 || store_.f32() == nullptr) return;
    const size_t n = size();
    basis_.assign(basis, basis + dims * dim_);
    std::vector<float> rows(n * dims);
    gemm_abt(static_cast<int>(n), static_cast<int>(dims), static_cast<int>(dim_), store_.f32(), basis_.data(),
             rows.data());
    projected_ = std::make_unique<FlatIndex>(dims, metric_ == Metric::InnerProduct ? Metric::InnerProduct : Metric::L2);
    projected_->add(n, rows.data(), nullptr);
    projected_extra_ = extra;
}

void FlatIndex::search_projected(size_t nq, const float* queries, const float* projected, size_t k, int64_t* out_ids,
                                 float* out_distances, int threads) const {
    auto lock = reading();
    SPARKNN_THROW_IF_NOT(projected_ != nullptr && projected_->size() == size(), Error,
                         "search_projected: no projected first pass");
    threads = resolve_threads(threads);
    // The best k + extra in the subspace, then measured exactly (ties by id, as search_impl's).
    const size_t n = size(), kept = std::min(n, k + projected_extra_);
    std::vector<int64_t> labels(nq * kept);
    std::vector<float> scanned(nq * kept);
    SearchParams inner;
    inner.threads = threads;
    projected_->search(nq, projected, kept, labels.data(), scanned.data(), inner);
    const DistanceKernels& kern = kernels();
    parallel_for(nq, 256, threads, [&](size_t b, size_t e, int) {
        std::vector<int64_t> found(kept);
        for (size_t q = b; q < e; ++q) {
            TopK exact(k);
            exact.order_ties_by(ids_.data());
            size_t m = 0;
            for (size_t j = 0; j < kept; ++j) {
                const int64_t label = labels[q * kept + j];  // the inner index's ids are its labels
                if (label >= 0) found[m++] = label;
            }
            const float* query = queries + q * dim_;
            auto row = [&](size_t j) { return store_.f32() + static_cast<size_t>(found[j]) * dim_; };
            size_t j = 0;
            for (; j + 4 <= m; j += 4) {  // four rows per pass over the query
                const float* rows[4] = {row(j), row(j + 1), row(j + 2), row(j + 3)};
                float d[4];
                distance_x4(metric_, kern, query, rows, dim_, d);
                for (size_t t = 0; t < 4; ++t) exact.push(d[t], found[j + t]);
            }
            for (; j < m; ++j) exact.push(distance(metric_, kern, query, row(j), dim_), found[j]);
            exact.write_sorted(out_ids + q * k, out_distances + q * k,
                               [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
        }
    });
}

void FlatIndex::search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                            const SearchParams& params) const {
    const size_t n = size();
    const int threads = resolve_threads(params.threads);
    if (projected_ != nullptr && projected_->size() == n) {
        std::vector<float> projected(nq * projected_->dim());
        gemm_abt_rows(nq, projected_->dim(), dim_, queries, basis_.data(), projected.data(), threads, kProjectBlock);
        search_projected(nq, queries, projected.data(), k, out_ids, out_distances, threads);
        return;
    }
    // L2 rows far from the origin are searched less their mean (centre_on_mean). A bf16
    // first pass takes the mean as its tiles' centre too (a data set far from the origin
    // keeps its differences in bf16 only as residuals); its candidates are then re-ranked.
    std::vector<float> mean;
    const bool centred = centre_on_mean(mean);
    const bool bf16 = bf16_extra_ > 0 && store_.f32() != nullptr && bf16_tiles_preferred();
    const size_t kept = bf16 ? k + bf16_extra_ : k;
    if (bf16 && mean.empty()) {  // not L2: the mean of the rows, here
        std::vector<double> sum(dim_, 0.0);
        for (size_t r = 0; r < n; ++r) {
            const float* row = store_.f32() + r * dim_;
            for (size_t d = 0; d < dim_; ++d) sum[d] += row[d];
        }
        mean.resize(dim_);
        for (size_t d = 0; d < dim_; ++d) mean[d] = static_cast<float>(sum[d] / static_cast<double>(n));
    }
    const float* centre = bf16 || centred ? mean.data() : nullptr;
    const auto to_id = [&](int64_t label) { return ids_[static_cast<size_t>(label)]; };
    const DistanceKernels& kern = kernels();
    // A query's answer from its selection: written, or re-ranked exactly first.
    auto finish = [&](TopK& h, size_t q) {
        if (!bf16) {
            h.write_sorted(out_ids + q * k, out_distances + q * k, to_id);
            return;
        }
        TopK exact(k);
        exact.order_ties_by(ids_.data());
        for (const TopK::Entry& e : h.entries()) {
            exact.push(distance(metric_, kern, queries + q * dim_, store_.f32() + static_cast<size_t>(e.second) * dim_,
                                dim_),
                       e.second);
        }
        exact.write_sorted(out_ids + q * k, out_distances + q * k, to_id);
    };

    // Work items are (query block, base range): as many equal query blocks of at most
    // kScanQueryBlock as make a multiple of the threads (1500 queries on 2 threads are two
    // blocks of 750, not 1024 and 476). Below kSplitBaseBelow queries a thread, the scan is
    // bound by reading the base, so the queries are one block and the base is split among
    // the threads instead; partial top-k are merged per query.
    const size_t per_round = static_cast<size_t>(threads) * kScanQueryBlock;
    const size_t qblocks =
        nq < static_cast<size_t>(threads) * kSplitBaseBelow ? 1 : threads * ((nq + per_round - 1) / per_round);
    const size_t qblock = (nq + qblocks - 1) / qblocks;  // the largest block
    const auto block_begin = [&](size_t qb) { return nq * qb / qblocks; };
    size_t parts = 1;
    if (qblocks < static_cast<size_t>(threads)) {
        parts = std::min((static_cast<size_t>(threads) + qblocks - 1) / qblocks,
                         (n + kScanBaseBlock - 1) / kScanBaseBlock);
        parts = std::max<size_t>(parts, 1);
    }
    const size_t part_len = (n + parts - 1) / parts;
    std::vector<TopK> partial(parts == 1 ? 0 : nq * parts);

    parallel_for(qblocks * parts, 1, threads, [&](size_t begin, size_t end, int) {
        GemmScanner scanner(metric_, dim_, bf16 ? TileProducts::Bf16 : TileProducts::Float32);
        scanner.centre_float32(centred ? GemmScanner::Centring::On : GemmScanner::Centring::Off);
        std::vector<float> qnorm(qblock);
        // 16-bit rows are widened a block at a time; float32 ones are scanned in place.
        std::vector<float> decoded(store_.f32() ? 0 : kScanBaseBlock * dim_);
        const size_t chunk = store_.f32() ? n : kScanBaseBlock;
        std::vector<TopK> local;
        for (size_t item = begin; item < end; ++item) {
            const size_t qb = item / parts, part = item % parts;
            const size_t q0 = block_begin(qb), m = block_begin(qb + 1) - q0;
            const size_t b0 = part * part_len, b1 = std::min(n, b0 + part_len);
            TopK* heaps;
            if (parts == 1) {
                local.resize(m);
                heaps = local.data();
            } else {
                heaps = &partial[q0 * parts + part * m];
            }
            for (size_t i = 0; i < m; ++i) {
                heaps[i].reset(kept, kFlatSlack);
                heaps[i].order_ties_by(ids_.data());  // ties by user id, not position
            }
            if (metric_ == Metric::L2) squared_norms(queries + q0 * dim_, m, dim_, qnorm.data());
            for (size_t c0 = b0; c0 < b1; c0 += chunk) {
                const size_t count = std::min(chunk, b1 - c0);
                const float* bnorm = metric_ == Metric::L2 ? sq_norms_.data() + c0 : nullptr;
                scanner.scan(queries + q0 * dim_, qnorm.data(), m, store_.rows(c0, count, decoded.data()), bnorm,
                             count, nullptr, static_cast<int64_t>(c0), heaps, centre);
            }
            if (parts == 1) {
                for (size_t i = 0; i < m; ++i) finish(local[i], q0 + i);
            }
        }
    });
    if (parts > 1) {
        // partial is laid out per query block: [q0 * parts + part * m + i]
        for (size_t qb = 0; qb < qblocks; ++qb) {
            const size_t q0 = block_begin(qb), m = block_begin(qb + 1) - q0;
            for (size_t i = 0; i < m; ++i) {
                TopK& first = partial[q0 * parts + i];
                for (size_t part = 1; part < parts; ++part) first.merge(partial[q0 * parts + part * m + i]);
                finish(first, q0 + i);
            }
        }
    }
}

void FlatIndex::save_sections(FileWriter& writer) const { store_.save(writer); }

std::unique_ptr<FlatIndex> FlatIndex::load(const std::shared_ptr<const IndexFile>& file) {
    const FileHeader& h = file->header();
    auto index = std::make_unique<FlatIndex>(h.dim, h.metric, VectorStore::storage_in(*file));
    index->load_common(file);
    index->store_.load(file, h.count);
    if (h.metric == Metric::L2) {
        index->sq_norms_.resize(h.count);
        index->compute_norms(0, h.count, 0);
        index->accumulate_sums(0, h.count, 0);
    }
    return index;
}

}  // namespace sparknn
