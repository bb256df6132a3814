// HNSW parameters, construction and search. Building lives in hnsw_build.cpp,
// file save/load (with structural validation) in hnsw_io.cpp.
#include "sparknn/hnsw.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <type_traits>
#include <vector>

#include "hnsw_graph.h"
#include "sparknn/error.h"
#include "sparknn/parallel.h"
#include "sparknn/topk.h"

namespace sparknn {

using hnsw::CandidatePool;
using hnsw::GraphView;
using hnsw::VisitedSet;

HnswParams HnswParams::from(const IndexOptions& o) { return {o.M, o.ef_construction, o.ef_search, o.seed}; }

void HnswParams::validate() const {
    SPARKNN_CHECK_ARG(M >= 2, "M must be >= 2 (neighbours per node; 12-48 is typical), got ", M);
    SPARKNN_CHECK_ARG(M <= kHnswMaxM, "M must be <= ", kHnswMaxM, " (12-48 is typical), got ", M);
    SPARKNN_CHECK_ARG(ef_construction >= 1, "ef_construction must be >= 1 (100-400 is typical), got ", ef_construction);
    SPARKNN_CHECK_ARG(ef_search >= 1, "ef_search must be >= 1, got ", ef_search);
}

// Search buffers (visited tags sized to the index, candidate pool) are kept
// between calls: allocating and zeroing them per query would cost more than
// the search itself on large indexes.
struct HnswIndex::ScratchPool {
    struct Item {
        VisitedSet visited;
        CandidatePool pool;
        std::vector<uint32_t> batch;
        std::vector<std::pair<float, int64_t>> ranked;  // (distance, id) of tied results
    };
    std::mutex mutex;
    std::vector<std::unique_ptr<Item>> free;

    std::unique_ptr<Item> acquire() {
        std::lock_guard<std::mutex> lock(mutex);
        if (free.empty()) return std::make_unique<Item>();
        std::unique_ptr<Item> item = std::move(free.back());
        free.pop_back();
        return item;
    }
    void release(std::unique_ptr<Item> item) {
        std::lock_guard<std::mutex> lock(mutex);
        free.push_back(std::move(item));
    }
};

HnswIndex::HnswIndex(size_t dim, Metric metric, const HnswParams& params, Storage storage)
    : Index(dim, metric), params_(params), store_(dim, storage), scratch_(std::make_unique<ScratchPool>()) {
    params_.validate();
    level_mult_ = 1.0 / std::log(static_cast<double>(params_.M));
    upper_offsets_.mutate().push_back(0);
}

HnswIndex::~HnswIndex() = default;

const float* HnswIndex::vector_of(size_t label) const {
    return store_.f32() ? store_.f32() + label * dim_ : nullptr;
}

HnswParams HnswIndex::params() const {
    auto lock = reading();
    return params_;
}

void HnswIndex::set_ef_search(size_t ef) {
    SPARKNN_CHECK_ARG(ef >= 1, "ef_search must be >= 1, got ", ef);
    auto lock = writing();
    params_.ef_search = ef;
}

int HnswIndex::max_level() const {
    auto lock = reading();
    return max_level_;
}

size_t HnswIndex::entry_point() const {
    auto lock = reading();
    return entry_point_;
}

template <class T>
GraphView<T> HnswIndex::view() const {
    GraphView<T> g;
    if constexpr (std::is_same_v<T, float>) {
        g.vectors = store_.f32();
    } else {
        g.vectors = store_.u16();
    }
    g.dim = dim_;
    g.prefetch_lines = std::min<size_t>((dim_ * sizeof(T) + 63) / 64, hnsw::kMaxPrefetchLines);
    g.levels = levels_.data();
    g.links0 = links0_.data();
    g.stride0 = 1 + 2 * params_.M;
    g.upper_offsets = upper_offsets_.data();
    g.upper_links = upper_links_.data();
    g.stride_up = 1 + params_.M;
    return g;
}

// hnsw_build.cpp builds through these views too.
template GraphView<float> HnswIndex::view<float>() const;
template GraphView<uint16_t> HnswIndex::view<uint16_t>() const;

void HnswIndex::search_impl(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                            const SearchParams& params) const {
    const size_t ef = std::max(params.ef != 0 ? params.ef : params_.ef_search, k);
    hnsw::with_distance(metric_, store_.storage(), [&](const auto& dist) {
        // A candidate list as long as the index visits every node anyway: scan
        // instead, which is exact even if some node were unreachable.
        if (ef >= size()) {
            search_exact(nq, queries, k, out_ids, out_distances, dist, params.threads);
        } else {
            search_graph(nq, queries, k, ef, out_ids, out_distances, dist, params.threads);
        }
    });
}

template <class Dist>
void HnswIndex::search_graph(size_t nq, const float* queries, size_t k, size_t ef, int64_t* out_ids,
                             float* out_distances, const Dist& dist, int threads) const {
    const GraphView<typename Dist::Elem> g = view<typename Dist::Elem>();
    const size_t n = size();
    parallel_for(nq, 4, threads, [&](size_t begin, size_t end, int) {
        std::unique_ptr<ScratchPool::Item> s = scratch_->acquire();
        s->visited.prepare(n);
        s->batch.resize(g.stride0);
        for (size_t qi = begin; qi < end; ++qi) {
            const float* q = queries + qi * dim_;
            uint32_t cur = static_cast<uint32_t>(entry_point_);
            float dcur = dist(q, g.vec(cur), dim_);
            for (int level = max_level_; level >= 1; --level) {
                hnsw::greedy_descend<false>(g, dist, q, level, cur, dcur);
            }
            s->visited.next_epoch();
            s->visited.visit(cur);
            s->pool.reset(ef);
            s->pool.insert(dcur, cur);
            hnsw::search_layer<false>(g, dist, q, 0, s->pool, s->visited, s->batch.data());

            int64_t* ids = out_ids + qi * k;
            float* dists = out_distances + qi * k;
            const size_t found = std::min(k, s->pool.size());
            write_results(s->pool, found, s->ranked, ids, dists);
            for (size_t i = found; i < k; ++i) {
                ids[i] = -1;
                dists[i] = std::numeric_limits<float>::infinity();
            }
        }
        scratch_->release(std::move(s));
    });
}

// The pool's first `found` results, ordered by (distance, id): the pool holds
// equal distances in the order it met them, which depends on the graph. Where
// the found-th distance is shared by later pool entries, the smaller ids win.
// Only a pool with equal distances pays for the sort.
void HnswIndex::write_results(const CandidatePool& pool, size_t found, std::vector<std::pair<float, int64_t>>& ranked,
                              int64_t* ids, float* dists) const {
    if (found == 0) return;
    size_t end = found;
    while (end < pool.size() && pool.dist(end) == pool.dist(found - 1)) ++end;
    bool tied = end > found;
    for (size_t i = 1; i < found && !tied; ++i) tied = pool.dist(i) == pool.dist(i - 1);
    if (!tied) {
        for (size_t i = 0; i < found; ++i) {
            ids[i] = ids_[pool.id(i)];
            dists[i] = pool.dist(i);
        }
        return;
    }
    ranked.clear();
    for (size_t i = 0; i < end; ++i) ranked.emplace_back(pool.dist(i), ids_[pool.id(i)]);
    std::sort(ranked.begin(), ranked.end());
    for (size_t i = 0; i < found; ++i) {
        ids[i] = ranked[i].second;
        dists[i] = ranked[i].first;
    }
}

template <class Dist>
void HnswIndex::search_exact(size_t nq, const float* queries, size_t k, int64_t* out_ids, float* out_distances,
                             const Dist& dist, int threads) const {
    const size_t n = size();
    const GraphView<typename Dist::Elem> g = view<typename Dist::Elem>();
    parallel_for(nq, 16, threads, [&](size_t begin, size_t end, int) {
        TopK top(k);
        top.order_ties_by(ids_.data());
        for (size_t qi = begin; qi < end; ++qi) {
            top.reset(k);
            const float* q = queries + qi * dim_;
            for (size_t i = 0; i < n; ++i) {
                top.push(dist(q, g.vec(static_cast<uint32_t>(i)), dim_), static_cast<int64_t>(i));
            }
            top.write_sorted(out_ids + qi * k, out_distances + qi * k,
                             [&](int64_t label) { return ids_[static_cast<size_t>(label)]; });
        }
    });
}

}  // namespace sparknn
