// HNSW construction: nodes are inserted in parallel (Algorithm 1 of the paper,
// with hnswlib's neighbour-selection heuristic), each thread searching the
// graph while others extend it.
//
// Concurrency: a node's rows are rewritten only under its spin lock; readers
// take no lock and load words atomically (see hnsw_graph.h), so a search never
// waits on a writer. The entry point and top level change under `top_`, which
// an insertion holds throughout only when it raises the top level (rare).
// Every allocation happens before the threads start, so inserting cannot fail
// half way.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "hnsw_graph.h"
#include "sparknn/error.h"
#include "sparknn/hnsw.h"
#include "sparknn/parallel.h"

namespace sparknn {
namespace {

using hnsw::Candidate;
using hnsw::CandidatePool;
using hnsw::GraphView;
using hnsw::SpinLock;
using hnsw::VisitedSet;

uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// The paper's level distribution floor(-ln(U) * mult), with U drawn from a
// hash of (seed, label): the same node gets the same level however the data
// is split into add() calls and whichever thread inserts it.
int random_level(uint64_t seed, uint64_t label, double mult) {
    const uint64_t h = splitmix64(splitmix64(seed) ^ label);
    const double u = (static_cast<double>(h >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double level = -std::log(u) * mult;
    return level >= kHnswMaxLevel ? kHnswMaxLevel : static_cast<int>(level);
}

bool closer(const Candidate& a, const Candidate& b) { return a.dist < b.dist || (a.dist == b.dist && a.id < b.id); }

struct BuildScratch {
    VisitedSet visited;
    CandidatePool pool;
    std::vector<uint32_t> batch;
    std::vector<Candidate> candidates;
    std::vector<uint32_t> selected;
    // 16-bit rows decoded as queries [dim] each: the node being inserted, the
    // node whose row is rewritten (set_links, connect), a candidate (select).
    std::vector<float> inserted, rewritten, candidate;
};

template <class Dist>
class Builder {
  public:
    using Graph = GraphView<typename Dist::Elem>;
    Builder(const Graph& g, const Dist& dist, const HnswParams& p, SpinLock* locks, size_t& entry_point,
            int& max_level)
        : g_(g),
          dist_(dist),
          M_(static_cast<uint32_t>(p.M)),
          ef_(std::max(p.ef_construction, p.M)),
          locks_(locks),
          entry_point_(entry_point),
          max_level_(max_level) {}

    size_t ef() const { return ef_; }

    void insert(uint32_t q, BuildScratch& s) {
        const float* qv = dist_.as_float(g_.vec(q), s.inserted.data(), g_.dim);
        const int level = g_.levels[q];
        std::unique_lock<std::mutex> top(top_);
        const int top_level = max_level_;
        uint32_t cur = static_cast<uint32_t>(entry_point_);
        if (top_level < 0) {  // the first node: nothing to link to
            entry_point_ = q;
            max_level_ = level;
            return;
        }
        if (level <= top_level) top.unlock();

        float dcur = dist_(qv, g_.vec(cur), g_.dim);
        for (int l = top_level; l > level; --l) hnsw::greedy_descend<true>(g_, dist_, qv, l, cur, dcur);
        for (int l = std::min(level, top_level); l >= 0; --l) {
            s.visited.next_epoch();
            s.visited.visit(q);
            s.visited.visit(cur);
            s.pool.reset(ef_);
            s.pool.insert(dcur, cur);
            hnsw::search_layer<true>(g_, dist_, qv, l, s.pool, s.visited, s.batch.data());

            const size_t found = s.pool.size();
            if (found == 0) continue;  // only with non-finite distances
            for (size_t i = 0; i < found; ++i) s.candidates[i] = {s.pool.dist(i), s.pool.id(i)};
            // the nearest node found is the next layer's entry point
            cur = s.candidates[0].id;
            dcur = s.candidates[0].dist;
            const size_t kept = select(s.candidates.data(), found, M_, s.selected.data(), s);
            set_links(q, l, s.selected.data(), kept, s);
            for (size_t i = 0; i < kept; ++i) connect(s.selected[i], q, l, s);
        }
        if (level > top_level) {
            entry_point_ = q;
            max_level_ = level;
        }
    }

  private:
    // Rows of the nodes being built live in owned (mutated) buffers.
    uint32_t* mutable_row(uint32_t node, int level) const { return const_cast<uint32_t*>(g_.row(node, level)); }

    // hnswlib's heuristic (the paper's Algorithm 4): walking candidates from
    // the nearest, keep one only if it is nearer to the base node than to every
    // kept one, so links spread in different directions instead of into one
    // cluster. `cands` is sorted nearest first.
    uint32_t select(const Candidate* cands, size_t n, uint32_t m, uint32_t* out, BuildScratch& s) const {
        if (n <= m) {
            for (size_t i = 0; i < n; ++i) out[i] = cands[i].id;
            return static_cast<uint32_t>(n);
        }
        uint32_t kept = 0;
        for (size_t i = 0; i < n && kept < m; ++i) {
            const float* v = dist_.as_float(g_.vec(cands[i].id), s.candidate.data(), g_.dim);
            bool good = true;
            for (uint32_t j = 0; j < kept; ++j) {
                if (dist_(v, g_.vec(out[j]), g_.dim) < cands[i].dist) {
                    good = false;
                    break;
                }
            }
            if (good) out[kept++] = cands[i].id;
        }
        return kept;
    }

    // Rewrites `node`'s row at `level` with `cands` (sorted), pruned to capacity.
    void write_pruned(uint32_t node, int level, Candidate* cands, size_t n, BuildScratch& s) {
        uint32_t* row = mutable_row(node, level);
        const uint32_t kept = select(cands, n, g_.capacity(level), s.selected.data() + g_.stride0, s);
        const uint32_t* chosen = s.selected.data() + g_.stride0;
        for (uint32_t j = 0; j < kept; ++j) hnsw::store_link(row + 1 + j, chosen[j]);
        hnsw::store_degree(row, kept);
    }

    // Sets q's own links. Another thread may already have linked itself to q
    // here (q was its entry point); those links are kept, merged and pruned.
    void set_links(uint32_t q, int level, const uint32_t* sel, size_t k, BuildScratch& s) {
        std::lock_guard<SpinLock> lock(locks_[q]);
        uint32_t* row = mutable_row(q, level);
        const uint32_t deg = row[0];
        if (deg == 0) {
            for (size_t j = 0; j < k; ++j) hnsw::store_link(row + 1 + j, sel[j]);
            hnsw::store_degree(row, static_cast<uint32_t>(k));
            return;
        }
        Candidate* cands = s.candidates.data();
        size_t n = 0;
        const float* qv = dist_.as_float(g_.vec(q), s.rewritten.data(), g_.dim);
        for (uint32_t j = 0; j < deg; ++j) cands[n++] = {dist_(qv, g_.vec(row[1 + j]), g_.dim), row[1 + j]};
        for (size_t j = 0; j < k; ++j) {
            if (std::find(row + 1, row + 1 + deg, sel[j]) == row + 1 + deg) {
                cands[n++] = {dist_(qv, g_.vec(sel[j]), g_.dim), sel[j]};
            }
        }
        std::sort(cands, cands + n, closer);
        write_pruned(q, level, cands, n, s);
    }

    // Adds the back link e -> q; a full row is re-selected with the heuristic.
    void connect(uint32_t e, uint32_t q, int level, BuildScratch& s) {
        std::lock_guard<SpinLock> lock(locks_[e]);
        uint32_t* row = mutable_row(e, level);
        const uint32_t deg = row[0];
        if (std::find(row + 1, row + 1 + deg, q) != row + 1 + deg) return;
        if (deg < g_.capacity(level)) {
            hnsw::store_link(row + 1 + deg, q);
            hnsw::store_degree(row, deg + 1);
            return;
        }
        Candidate* cands = s.candidates.data();
        const float* ev = dist_.as_float(g_.vec(e), s.rewritten.data(), g_.dim);
        for (uint32_t j = 0; j < deg; ++j) cands[j] = {dist_(ev, g_.vec(row[1 + j]), g_.dim), row[1 + j]};
        cands[deg] = {dist_(ev, g_.vec(q), g_.dim), q};
        std::sort(cands, cands + deg + 1, closer);
        write_pruned(e, level, cands, deg + 1, s);
    }

    const Graph& g_;
    const Dist& dist_;
    const uint32_t M_;
    const size_t ef_;
    SpinLock* locks_;
    size_t& entry_point_;
    int& max_level_;
    std::mutex top_;
};

}  // namespace

void HnswIndex::add_impl(size_t n, const float* vectors) {
    grow(n, [&] { store_.append(n, vectors); });
}

void HnswIndex::check_adoptable(size_t rows) const {
    check_adoptable_storage();
    SPARKNN_CHECK_ARG(rows <= kHnswMaxCount, "an hnsw index holds at most ", kHnswMaxCount, " vectors; adopting ",
                      rows, " would exceed it");  // here, before cosine rows are normalised in place
}

void HnswIndex::adopt_impl(const std::shared_ptr<RowBlock>& block, const int64_t* order) {
    const size_t n = block->rows();
    std::vector<size_t> to = order != nullptr ? rows_into_order(order, n) : std::vector<size_t>();
    grow(n, [&] {
        if (order != nullptr) permute_rows(block->data(), n, dim_, to);
        store_.adopt(block);
    });
}

void HnswIndex::grow(size_t n, const std::function<void()>& store) {
    const size_t first = size(), total = first + n;
    SPARKNN_CHECK_ARG(total <= kHnswMaxCount, "an hnsw index holds at most ", kHnswMaxCount, " vectors; adding ", n,
                      " to ", first, " would exceed it");
    const size_t M = params_.M;
    const size_t stride0 = 1 + 2 * M, stride_up = 1 + M;
    // Grow every array before any thread starts; if an allocation fails, shrink
    // back so the index is unchanged. The rows are stored last: adopting a block
    // reorders its rows, and a block handed back after a failure must be as given.
    try {
        AlignedVector<uint8_t>& levels = levels_.mutate();
        AlignedVector<uint64_t>& offsets = upper_offsets_.mutate();
        levels.reserve(total);
        offsets.reserve(total + 1);
        for (size_t i = first; i < total; ++i) {
            const int level = random_level(params_.seed, i, level_mult_);
            levels.push_back(static_cast<uint8_t>(level));
            offsets.push_back(offsets.back() + static_cast<uint64_t>(level) * stride_up);
        }
        upper_links_.mutate().resize(offsets.back(), 0);
        links0_.mutate().resize(total * stride0, 0);
        store();
        hnsw::with_distance(metric_, store_.storage(), [&](const auto& dist) { build(first, n, dist); });
    } catch (...) {
        store_.truncate(first);
        levels_.mutate().resize(first);
        upper_offsets_.mutate().resize(first + 1);
        upper_links_.mutate().resize(upper_offsets_[first]);
        links0_.mutate().resize(first * stride0);
        throw;
    }
}

template <class Dist>
void HnswIndex::build(size_t first, size_t n, const Dist& dist) {
    const size_t total = first + n;
    const GraphView<typename Dist::Elem> g = view<typename Dist::Elem>();
    std::unique_ptr<SpinLock[]> locks(new SpinLock[total]);
    // A candidate list longer than the graph never fills: capping it changes
    // nothing but keeps a huge ef_construction (say, read from a file) from
    // allocating memory it cannot use.
    HnswParams params = params_;
    params.ef_construction = std::min(params.ef_construction, total);
    Builder<Dist> builder(g, dist, params, locks.get(), entry_point_, max_level_);
    constexpr size_t kChunk = 4;
    const size_t workers = std::min<size_t>(resolve_threads(threads()), (n + kChunk - 1) / kChunk);
    std::vector<BuildScratch> scratch(workers);
    for (BuildScratch& s : scratch) {
        s.visited.prepare(total);
        s.pool.reset(builder.ef());
        s.batch.resize(g.stride0);
        s.candidates.resize(builder.ef() + 2 * g.stride0);
        s.selected.resize(2 * g.stride0);
        if (!std::is_same_v<typename Dist::Elem, float>) {
            s.inserted.resize(dim_);
            s.rewritten.resize(dim_);
            s.candidate.resize(dim_);
        }
    }
    // Inserting allocates nothing, so no node is left half linked. (`workers`
    // is passed on, so worker indexes stay within `scratch`.)
    parallel_for(n, kChunk, static_cast<int>(workers), [&](size_t begin, size_t end, int worker) {
        for (size_t i = begin; i < end; ++i) builder.insert(static_cast<uint32_t>(first + i), scratch[worker]);
    });
}

}  // namespace sparknn
