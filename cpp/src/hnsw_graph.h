// Internal building blocks of the HNSW index, shared by build and search: a
// view of the graph arrays, the visited set, the candidate pool, per-metric
// distances and the layer searches.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/storage.h"

namespace sparknn::hnsw {

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// Vectors whose lines are requested ahead of the distance loop, and the most
// lines requested per vector. Measured on Fashion-MNIST (784 dims, 10k
// queries, ef 10-32, AMD Zen 4): from (3, all 49) to (6, 8), with four rows per
// distance call, 1.34x the queries per second (2026-12-04); 2-12 lines and 4-12
// vectors ahead all gave the same within noise.
inline constexpr uint32_t kPrefetchAhead = 6;
inline constexpr size_t kMaxPrefetchLines = 8;

// Pointers into the graph arrays. All rows are [degree, slot...]. T is the
// stored value type: float, or uint16_t for fp16 / bf16 rows.
template <class T>
struct GraphView {
    const T* vectors = nullptr;
    size_t dim = 0;
    // Cache lines of a vector prefetched before its distance: all of a short
    // one, the first kMaxPrefetchLines of a long one (the hardware prefetcher
    // streams the rest once the first lines miss; asking for all 48 lines of a
    // 768-dim row, several rows ahead, overflows the miss buffers instead).
    size_t prefetch_lines = 0;
    const uint8_t* levels = nullptr;
    const uint32_t* links0 = nullptr;
    size_t stride0 = 0;  // 1 + M0
    const uint64_t* upper_offsets = nullptr;
    const uint32_t* upper_links = nullptr;
    size_t stride_up = 0;  // 1 + M

    const T* vec(uint32_t i) const { return vectors + size_t{i} * dim; }
    const uint32_t* row(uint32_t node, int level) const {
        return level == 0 ? links0 + size_t{node} * stride0
                          : upper_links + upper_offsets[node] + size_t(level - 1) * stride_up;
    }
    uint32_t capacity(int level) const { return static_cast<uint32_t>((level == 0 ? stride0 : stride_up) - 1); }
    void prefetch_vector(uint32_t i) const;
};

template <class T>
void GraphView<T>::prefetch_vector(uint32_t i) const {
    const char* p = reinterpret_cast<const char*>(vec(i));
    for (size_t l = 0; l < prefetch_lines; ++l) prefetch(p + 64 * l);
}

// Reads of link rows. While the graph is being built, other threads rewrite
// rows under their node's lock, so readers load each word atomically (plain
// moves on x86/arm64): a reader may see a row mid-update, but every word it
// sees is a valid label and the degree never exceeds the capacity.
template <bool kConcurrent>
inline uint32_t load_degree(const uint32_t* row) {
    if constexpr (kConcurrent) return __atomic_load_n(row, __ATOMIC_ACQUIRE);
    return row[0];
}
template <bool kConcurrent>
inline uint32_t load_link(const uint32_t* p) {
    if constexpr (kConcurrent) return __atomic_load_n(p, __ATOMIC_RELAXED);
    return *p;
}
inline void store_link(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline void store_degree(uint32_t* row, uint32_t v) { __atomic_store_n(row, v, __ATOMIC_RELEASE); }

// Per-metric distance from a float32 query to a stored row of T, with the
// kernel pointers hoisted out of the loops. as_float gives a stored row as a
// query (for distances between two stored nodes while building): in place for
// float rows, decoded into `scratch` [dim] for 16-bit ones.
template <class T>
struct StoredRows {
    using Elem = T;
    using Fn = float (*)(const float*, const T*, size_t);
    using X4Fn = void (*)(const float*, const T* const*, size_t, float*);
    Fn fn;
    HalfDecodeFn decode;  // null for float rows
    X4Fn fn_x4;           // four rows in one pass (their misses overlap): out[t] = fn(a, b[t]), the same bits
    const float* as_float(const T* x, float* scratch, size_t dim) const {
        if constexpr (std::is_same_v<T, float>) {
            return x;
        } else {
            decode(x, dim, scratch);
            return scratch;
        }
    }
};
// The metric's distance from the kernel's value: l2sq as it is; the inner
// product negated (ip) or taken from 1 (cosine, unit rows).
struct L2Finish {
    static float apply(float l2sq) { return l2sq; }
};
struct IpFinish {
    static float apply(float dot) { return -dot; }
};
struct CosineFinish {
    static float apply(float dot) { return 1.0f - dot; }
};

template <class T, class Finish>
struct Distance : StoredRows<T> {
    float operator()(const float* a, const T* b, size_t dim) const { return Finish::apply(this->fn(a, b, dim)); }
    void x4(const float* a, const T* const* b, size_t dim, float* out) const {
        this->fn_x4(a, b, dim, out);
        for (int t = 0; t < 4; ++t) out[t] = Finish::apply(out[t]);
    }
};

template <class T, class F>
decltype(auto) with_metric(Metric metric, typename StoredRows<T>::Fn l2sq, typename StoredRows<T>::Fn dot,
                           HalfDecodeFn decode, typename StoredRows<T>::X4Fn l2sq_x4,
                           typename StoredRows<T>::X4Fn dot_x4, F&& f) {
    switch (metric) {
        case Metric::InnerProduct:
            return f(Distance<T, IpFinish>{{dot, decode, dot_x4}});
        case Metric::Cosine:
            return f(Distance<T, CosineFinish>{{dot, decode, dot_x4}});
        case Metric::L2:
        default:
            return f(Distance<T, L2Finish>{{l2sq, decode, l2sq_x4}});
    }
}

// Calls f(distance functor) for `metric` and `storage` (float32, fp16 or
// bf16), so loops are compiled per metric and value type.
template <class F>
decltype(auto) with_distance(Metric metric, Storage storage, F&& f) {
    const DistanceKernels& k = kernels();
    switch (storage) {
        case Storage::Float16:
            return with_metric<uint16_t>(metric, k.fp16.l2sq, k.fp16.dot, k.fp16.decode, k.fp16.l2sq_x4,
                                         k.fp16.dot_x4, f);
        case Storage::BFloat16:
            return with_metric<uint16_t>(metric, k.bf16.l2sq, k.bf16.dot, k.bf16.decode, k.bf16.l2sq_x4,
                                         k.bf16.dot_x4, f);
        default:
            return with_metric<float>(metric, k.l2sq, k.dot, nullptr, k.l2sq_x4, k.dot_x4, f);
    }
}

// Which nodes a search has touched: a tag per node equal to the current epoch.
// Starting a new search is O(1) (the epoch advances); the array is cleared only
// when the 16-bit epoch wraps.
class VisitedSet {
  public:
    void prepare(size_t n) {
        if (tags_.size() < n) {
            tags_.assign(n, 0);
            epoch_ = 0;
        }
    }
    void next_epoch() {
        if (++epoch_ == 0) {
            std::fill(tags_.begin(), tags_.end(), uint16_t{0});
            epoch_ = 1;
        }
    }
    // True the first time `i` is seen in this epoch.
    bool visit(uint32_t i) {
        if (tags_[i] == epoch_) return false;
        tags_[i] = epoch_;
        return true;
    }
    bool seen(uint32_t i) const { return tags_[i] == epoch_; }
    const uint16_t* tag_address(uint32_t i) const { return tags_.data() + i; }

  private:
    std::vector<uint16_t> tags_;
    uint16_t epoch_ = 0;
};

struct Candidate {
    float dist;
    uint32_t id;
};

// The search's candidate list: the `capacity` nearest nodes seen so far, kept
// sorted by distance, with a cursor at the nearest one not yet expanded. It is
// the paper's pair of heaps in one array: a candidate that falls out of the
// list could never be expanded anyway (it is farther than every kept one), so
// "no unexpanded entry left" is exactly the paper's stopping rule. Insertion is
// a short memmove; no allocation happens per search.
class CandidatePool {
  public:
    static constexpr uint32_t kExpanded = 0x80000000u;

    void reset(size_t capacity) {
        capacity_ = std::max<size_t>(capacity, 1);
        if (data_.size() < capacity_ + 1) data_.resize(capacity_ + 1);
        size_ = 0;
        cursor_ = 0;
    }
    size_t size() const { return size_; }
    bool full() const { return size_ == capacity_; }
    // Distance a new candidate must beat to enter.
    float bound() const { return full() ? data_[size_ - 1].dist : std::numeric_limits<float>::infinity(); }
    uint32_t id(size_t i) const { return data_[i].id & ~kExpanded; }
    float dist(size_t i) const { return data_[i].dist; }

    // Inserts (d, id) at its sorted place (after equal distances); false if it
    // does not beat the bound. NaN never enters.
    bool insert(float d, uint32_t id) {
        if (!(d < bound())) return false;
        size_t lo = 0, hi = size_;
        while (lo < hi) {
            const size_t mid = (lo + hi) / 2;
            if (data_[mid].dist <= d)
                lo = mid + 1;
            else
                hi = mid;
        }
        const size_t moved = (full() ? size_ - 1 : size_) - lo;
        std::memmove(&data_[lo + 1], &data_[lo], moved * sizeof(Candidate));
        data_[lo] = {d, id};
        if (!full()) ++size_;
        if (lo < cursor_) cursor_ = lo;
        return true;
    }

    bool has_next() const { return cursor_ < size_; }
    // The nearest unexpanded candidate, marked expanded.
    uint32_t pop_next() {
        const uint32_t id = data_[cursor_].id;
        data_[cursor_].id = id | kExpanded;
        ++cursor_;
        while (cursor_ < size_ && (data_[cursor_].id & kExpanded)) ++cursor_;
        return id;
    }
    // The candidate pop_next() would return (valid only when has_next()).
    uint32_t peek_next() const { return data_[cursor_].id; }

  private:
    std::vector<Candidate> data_;
    size_t capacity_ = 1;
    size_t size_ = 0;
    size_t cursor_ = 0;
};

// Greedy descent on an upper layer: moves to the nearest neighbour while one
// is nearer than the current node. Distances strictly decrease, so it ends.
template <bool kConcurrent, class G, class Dist>
void greedy_descend(const G& g, const Dist& dist, const float* q, int level, uint32_t& cur, float& dcur) {
    const uint32_t cap = g.capacity(level);
    for (bool moved = true; moved;) {
        moved = false;
        const uint32_t* row = g.row(cur, level);
        const uint32_t deg = std::min(load_degree<kConcurrent>(row), cap);
        for (uint32_t j = 0; j < deg; ++j) g.prefetch_vector(load_link<kConcurrent>(row + 1 + j));
        for (uint32_t j = 0; j < deg; ++j) {
            const uint32_t e = load_link<kConcurrent>(row + 1 + j);
            const float d = dist(q, g.vec(e), g.dim);
            if (d < dcur) {
                dcur = d;
                cur = e;
                moved = true;
            }
        }
    }
}

// Best-first search of one layer from the entries already in `pool` (and
// marked in `visited`). `batch` holds at least capacity(level) labels.
template <bool kConcurrent, class G, class Dist>
void search_layer(const G& g, const Dist& dist, const float* q, int level, CandidatePool& pool,
                  VisitedSet& visited, uint32_t* batch) {
    constexpr uint32_t kAhead = kPrefetchAhead;
    const uint32_t cap = g.capacity(level);
    while (pool.has_next()) {
        const uint32_t c = pool.pop_next();
        if (pool.has_next()) prefetch(g.row(pool.peek_next() & ~CandidatePool::kExpanded, level));
        const uint32_t* row = g.row(c, level);
        const uint32_t deg = std::min(load_degree<kConcurrent>(row), cap);
        uint32_t m = 0;
        for (uint32_t j = 0; j < deg; ++j) {
            const uint32_t e = load_link<kConcurrent>(row + 1 + j);
            if (visited.visit(e)) batch[m++] = e;
        }
        for (uint32_t j = 0; j < std::min(m, kAhead); ++j) g.prefetch_vector(batch[j]);
        // Four neighbours per distance call: their rows are read in one pass, so
        // their cache misses overlap (faiss' HNSW batches four alike).
        uint32_t j = 0;
        for (; j + 4 <= m; j += 4) {
            for (uint32_t t = 0; t < 4; ++t) {
                if (j + kAhead + t < m) g.prefetch_vector(batch[j + kAhead + t]);
            }
            const typename Dist::Elem* rows[4] = {g.vec(batch[j]), g.vec(batch[j + 1]), g.vec(batch[j + 2]),
                                                  g.vec(batch[j + 3])};
            float d[4];
            dist.x4(q, rows, g.dim, d);
            for (uint32_t t = 0; t < 4; ++t) pool.insert(d[t], batch[j + t]);
        }
        for (; j < m; ++j) {
            if (j + kAhead < m) g.prefetch_vector(batch[j + kAhead]);
            const uint32_t e = batch[j];
            const float d = dist(q, g.vec(e), g.dim);
            pool.insert(d, e);
        }
    }
}

// Spin lock for one node's link rows: one byte per node, held only while a
// row is rewritten (microseconds), so spinning beats sleeping; it yields if
// the holder was descheduled.
class SpinLock {
  public:
    void lock() {
        for (int spins = 0; flag_.exchange(true, std::memory_order_acquire);) {
            while (flag_.load(std::memory_order_relaxed)) {
                if (++spins > 64) std::this_thread::yield();
            }
        }
    }
    void unlock() { flag_.store(false, std::memory_order_release); }

  private:
    std::atomic<bool> flag_{false};
};

}  // namespace sparknn::hnsw
