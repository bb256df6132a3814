#include "sparknn/flat.h"

#include <algorithm>
#include <cmath>

#include "blas.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"

namespace sparknn {
namespace {

// Block sizes: a [kQueryBlock, kBaseBlock] float tile (512 KiB) stays in L2
// while it is scanned; the base block is reused across the query block.
constexpr size_t kQueryBlock = 256;
constexpr size_t kBaseBlock = 512;

// Turns a row of inner products into distances, in place (vectorised loop).
void to_distances_l2(float* row, size_t cols, float qnorm, const float* xnorm) {
    // |q-x|^2 = |q|^2 + |x|^2 - 2 q.x; rounding can dip below zero: clamp
    for (size_t j = 0; j < cols; ++j) row[j] = std::max(qnorm + xnorm[j] - 2.0f * row[j], 0.0f);
}

void to_distances_dot(float* row, size_t cols, float offset) {
    for (size_t j = 0; j < cols; ++j) row[j] = offset - row[j];
}

// Pushes the entries of `row` that beat the heap's threshold. Most blocks hold
// no candidate once the heap is full, so 16 entries are tested at once with a
// branch-free (vectorisable) reduction before looking at any one of them.
void select_into(TopK& heap, const float* row, size_t cols, int64_t first_label) {
    float worst = heap.threshold();
    size_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        bool any = false;
        for (size_t t = 0; t < 16; ++t) any |= row[j + t] <= worst;
        if (!any) continue;
        for (size_t t = 0; t < 16; ++t) {
            if (row[j + t] <= worst) {
                heap.push(row[j + t], first_label + static_cast<int64_t>(j + t));
                worst = heap.threshold();
            }
        }
    }
    for (; j < cols; ++j) {
        if (row[j] <= worst) {
            heap.push(row[j], first_label + static_cast<int64_t>(j));
            worst = heap.threshold();
        }
    }
}

}  // namespace

void FlatIndex::add_impl(size_t n, const float* vectors) {
    AlignedVector<float>& all = vectors_.mutate();
    all.insert(all.end(), vectors, vectors + n * dim_);
    if (metric_ == Metric::L2) {
        const size_t old = sq_norms_.size();
        sq_norms_.resize(old + n);
        const DistanceKernels& k = kernels();
        for (size_t i = 0; i < n; ++i) sq_norms_[old + i] = k.dot(vectors + i * dim_, vectors + i * dim_, dim_);
    }
}

void FlatIndex::search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                            const SearchParams&) const {
    blas_use_one_thread();
    const size_t n = size();
    const float* base = vectors_.data();
    const int threads = resolve_threads(threads_);
    const DistanceKernels& kern = kernels();

    // Work items are (query block, base range). With few queries, the base is
    // split so every thread has work; partial top-k are merged per query.
    const size_t qblocks = (nq + kQueryBlock - 1) / kQueryBlock;
    size_t parts = 1;
    if (qblocks < static_cast<size_t>(threads)) {
        parts = std::min((static_cast<size_t>(threads) + qblocks - 1) / qblocks, (n + kBaseBlock - 1) / kBaseBlock);
        parts = std::max<size_t>(parts, 1);
    }
    const size_t part_len = (n + parts - 1) / parts;
    std::vector<TopK> partial(parts == 1 ? 0 : nq * parts);

    parallel_for(qblocks * parts, 1, threads, [&](size_t begin, size_t end, int) {
        std::vector<float> tile(kQueryBlock * kBaseBlock);
        std::vector<float> qnorm(kQueryBlock);
        std::vector<TopK> local;
        for (size_t item = begin; item < end; ++item) {
            const size_t qb = item / parts, part = item % parts;
            const size_t q0 = qb * kQueryBlock, q1 = std::min(nq, q0 + kQueryBlock), m = q1 - q0;
            const size_t b0 = part * part_len, b1 = std::min(n, b0 + part_len);
            TopK* heaps;
            if (parts == 1) {
                local.resize(m);
                for (auto& h : local) h.reset(k);
                heaps = local.data();
            } else {
                heaps = &partial[q0 * parts + part * m];
                for (size_t i = 0; i < m; ++i) heaps[i].reset(k);
            }
            if (metric_ == Metric::L2) {
                for (size_t i = 0; i < m; ++i) {
                    const float* q = queries + (q0 + i) * dim_;
                    qnorm[i] = kern.dot(q, q, dim_);
                }
            }
            for (size_t c0 = b0; c0 < b1; c0 += kBaseBlock) {
                const size_t c1 = std::min(b1, c0 + kBaseBlock), cols = c1 - c0;
                gemm_abt(static_cast<int>(m), static_cast<int>(cols), static_cast<int>(dim_), queries + q0 * dim_,
                         base + c0 * dim_, tile.data());
                for (size_t i = 0; i < m; ++i) {
                    float* row = tile.data() + i * cols;
                    if (metric_ == Metric::L2) {
                        to_distances_l2(row, cols, qnorm[i], sq_norms_.data() + c0);
                    } else {
                        to_distances_dot(row, cols, metric_ == Metric::Cosine ? 1.0f : 0.0f);
                    }
                    select_into(heaps[i], row, cols, static_cast<int64_t>(c0));
                }
            }
            if (parts == 1) {
                for (size_t i = 0; i < m; ++i) {
                    local[i].write_sorted(out_ids + (q0 + i) * k, out_distances + (q0 + i) * k,
                                          [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
                }
            }
        }
    });
    if (parts > 1) {
        // partial is laid out per query block: [q0 * parts + part * m + i]
        for (size_t qb = 0; qb < qblocks; ++qb) {
            const size_t q0 = qb * kQueryBlock, m = std::min(nq, q0 + kQueryBlock) - q0;
            for (size_t i = 0; i < m; ++i) {
                TopK& first = partial[q0 * parts + i];
                for (size_t part = 1; part < parts; ++part) first.merge(partial[q0 * parts + part * m + i]);
                first.write_sorted(out_ids + (q0 + i) * k, out_distances + (q0 + i) * k,
                                   [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
            }
        }
    }
}

void FlatIndex::save_sections(FileWriter& writer) const {
    writer.add_section(SectionType::Vectors, vectors_.data(), vectors_.size() * sizeof(float));
}

std::unique_ptr<FlatIndex> FlatIndex::load(const std::shared_ptr<const IndexFile>& file) {
    const FileHeader& h = file->header();
    auto index = std::make_unique<FlatIndex>(h.dim, h.metric);
    index->load_common(file);
    const size_t values = IndexFile::checked_mul(h.count, h.dim);
    index->vectors_.set_view(file->typed_section<float>(SectionType::Vectors, values), values, file);
    if (h.metric == Metric::L2) {
        index->sq_norms_.resize(h.count);
        const DistanceKernels& k = kernels();
        const float* v = index->vectors_.data();
        parallel_for(h.count, 8192, 0, [&](size_t b, size_t e, int) {
            for (size_t i = b; i < e; ++i) index->sq_norms_[i] = k.dot(v + i * h.dim, v + i * h.dim, h.dim);
        });
    }
    return index;
}

}  // namespace sparknn
