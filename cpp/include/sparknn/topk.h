// Top-k selection: keeps the k smallest (distance, label) pairs. Ties are
// broken by the label's user id (order_ties_by(ids): ids[label]; else by the
// label itself), so results are deterministic whatever the push order and,
// given ids, whatever order the vectors were stored in. The id is looked up
// only when two distances are equal: the common comparisons stay one float
// compare.
//
// A reservoir rather than a heap: a candidate that beats the threshold is
// appended (a store), and only when the buffer is full (2k entries by default,
// see reset) is it cut back to the k best with one selection. A scan pushes
// most candidates early and few late, so this costs O(1) per push where a heap
// costs O(log k) swaps of 16-byte entries; it is what the IVF and flat scans
// spend most time in after the GEMM itself (faiss selects the same way in its
// ReservoirTopN).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace sparknn {

class TopK {
  public:
    using Entry = std::pair<float, int64_t>;  // (distance, label)

    explicit TopK(size_t k = 0) { reset(k); }
    static constexpr size_t kReservedAtMost = 512;  // entries reserved up front (8 KB)

    // Equal distances are ordered by ids[label] (null: by label). Kept by reset.
    void order_ties_by(const int64_t* ids) { ids_ = ids; }

    // The buffer holds up to `slack` * k entries before it is cut back to k: a
    // larger slack cuts less often (each cut is an nth_element over the buffer)
    // for a looser threshold in between and more memory per selection. 2 suits
    // the many selections an IVF batch keeps at once; the flat scan, with 256
    // selections per block, measured 9-22% faster at k = 16 with 4 (A/B runs).
    void reset(size_t k, size_t slack = 2) {
        k_ = k;
        capacity_ = k <= 1 ? k : slack * k;
        threshold_ = std::numeric_limits<float>::infinity();
        buffer_.clear();
        // Large selections grow as they fill: an exact answer's deep ones (k in the thousands,
        // most holding a few hundred) reserved 128 KB each, thousands per batch, fresh memory
        // each time (malloc maps blocks that large).
        buffer_.reserve(std::min(capacity_, kReservedAtMost));
    }

    // reset with room for `pushes` entries before the first cut: a selection of k among that
    // many known candidates (an exact re-rank) then selects once, at the end.
    void reset_for(size_t k, size_t pushes) { reset(k, std::max<size_t>(2, (pushes + k - 1) / std::max<size_t>(k, 1) + 1)); }

    size_t k() const { return k_; }

    // The distance a candidate must not exceed to enter; +inf until k are
    // kept. A candidate equal to it may still lose on its id.
    float threshold() const { return threshold_; }

    void push(float distance, int64_t label) {
        if (distance > threshold_ || k_ == 0) return;
        if (k_ == 1) {  // an argmin (k-means assignment): no buffer to cut
            if (buffer_.empty()) {
                buffer_.emplace_back(distance, label);
            } else if (before(Entry(distance, label), buffer_[0])) {
                buffer_[0] = Entry(distance, label);
            }
            threshold_ = buffer_[0].first;
            return;
        }
        buffer_.emplace_back(distance, label);
        if (buffer_.size() == capacity_) shrink();
    }

    // Cuts back to the k best when it holds more; returns the threshold.
    float tighten() {
        if (k_ > 1 && buffer_.size() >= k_) shrink();
        return threshold_;
    }

    // Rejects from now on anything farther than `bound`, which must have k
    // entries within it: the k-th distance of another selection over the same
    // query, or of candidates about to be pushed. Entries kept so far beyond it
    // lose to those at the next cut.
    void limit(float bound) { threshold_ = std::min(threshold_, bound); }

    void merge(const TopK& other) {
        for (const Entry& e : other.buffer_) push(e.first, e.second);
    }

    // Writes the entries nearest first; pads to k with (-1, +inf). Leaves the
    // selection empty (reset it to reuse).
    template <class LabelToId>
    void write_sorted(int64_t* ids, float* distances, LabelToId&& label_to_id) {
        if (buffer_.size() > k_) shrink();
        std::sort(buffer_.begin(), buffer_.end(), [this](const Entry& a, const Entry& b) { return before(a, b); });
        size_t i = 0;
        for (; i < buffer_.size(); ++i) {
            ids[i] = label_to_id(buffer_[i].second);
            distances[i] = buffer_[i].first;
        }
        for (; i < k_; ++i) {
            ids[i] = -1;
            distances[i] = std::numeric_limits<float>::infinity();
        }
        buffer_.clear();
    }

    // The min(k, pushed) smallest entries, in no particular order.
    const std::vector<Entry>& entries() {
        if (buffer_.size() > k_) shrink();
        return buffer_;
    }

    // Every entry held now, unselected (more than k while the buffer fills): each a pushed one.
    const std::vector<Entry>& buffered() const { return buffer_; }

    // Whether a comes before b: nearer, or as near with a smaller id.
    bool before(const Entry& a, const Entry& b) const {
        if (a.first != b.first) return a.first < b.first;
        return ids_ != nullptr ? ids_[a.second] < ids_[b.second] : a.second < b.second;
    }

    // The value that would stand at position `nth` of keys[0, n) sorted (no NaN), reordering
    // them: quickselect with a branchless Lomuto partition (every element swapped, the boundary
    // moved by the comparison's result), as random distances mispredict half of a branchy
    // partition's compares. Past 64 rounds (an unlucky run of pivots), std::nth_element finishes.
    static float kth_smallest(float* keys, size_t n, size_t nth) {
        size_t lo = 0, hi = n;  // nth lies in [lo, hi)
        for (int round = 0; hi - lo > 16 && round < 64; ++round) {
            const size_t mid = lo + (hi - lo) / 2;
            // median of three to the end, as the pivot
            float a = keys[lo], b = keys[mid], c = keys[hi - 1];
            const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
            size_t at = pivot == a ? lo : pivot == b ? mid : hi - 1;
            std::swap(keys[at], keys[hi - 1]);
            size_t store = lo;
            for (size_t i = lo; i + 1 < hi; ++i) {
                const float v = keys[i];
                keys[i] = keys[store];
                keys[store] = v;
                store += v < pivot ? 1 : 0;
            }
            std::swap(keys[store], keys[hi - 1]);  // the pivot at its place
            if (nth == store) return pivot;
            if (nth < store) {
                hi = store;
                continue;
            }
            size_t above = store + 1;
            if (store == lo) {  // nothing below the pivot: its ties next to it (equal distances: one round)
                for (size_t i = above; i < hi; ++i) {
                    const float v = keys[i];
                    keys[i] = keys[above];
                    keys[above] = v;
                    above += v == pivot ? 1 : 0;
                }
                if (nth < above) return pivot;
            }
            lo = above;
        }
        std::nth_element(keys + lo, keys + nth, keys + hi);
        return keys[nth];
    }

  private:
    // Keeps the k smallest pairs; the k-th becomes the threshold. The k-th distance is selected
    // among the distances alone (4-byte keys, one float compare each), then the entries nearer
    // than it are kept, and of those at it the first by id: the k an nth_element over the pairs
    // by before() keeps (which was 7-9% of a Fashion-MNIST self-join: its compares mispredict).
    void shrink() {
        // the keys in a scratch of the thread's own, not a member: selections are copied and
        // held by the million (a tuning's per-rank selections)
        thread_local std::vector<float> keys;
        keys.resize(buffer_.size());
        for (size_t i = 0; i < buffer_.size(); ++i) {  // NaN as +inf: the selection needs an order
            const float d = buffer_[i].first;
            keys[i] = d == d ? d : std::numeric_limits<float>::infinity();
        }
        const float kth = kth_smallest(keys.data(), keys.size(), k_ - 1);
        // those at most the k-th to the front (branchless, as kth_smallest); k of them unless
        // others share the k-th distance, of which the first by id are kept
        size_t at = 0;
        for (size_t i = 0; i < buffer_.size(); ++i) {
            const Entry e = buffer_[i];
            buffer_[i] = buffer_[at];
            buffer_[at] = e;
            at += e.first <= kth ? 1 : 0;
        }
        if (at > k_) {
            size_t nearer = 0;
            for (size_t i = 0; i < at; ++i) {
                if (buffer_[i].first < kth) std::swap(buffer_[i], buffer_[nearer++]);
            }
            std::nth_element(buffer_.begin() + static_cast<std::ptrdiff_t>(nearer),
                             buffer_.begin() + static_cast<std::ptrdiff_t>(k_ - 1),
                             buffer_.begin() + static_cast<std::ptrdiff_t>(at),
                             [this](const Entry& a, const Entry& b) { return before(a, b); });
        }
        threshold_ = kth;
        buffer_.resize(k_);
    }

    size_t k_ = 0;
    size_t capacity_ = 0;
    float threshold_ = std::numeric_limits<float>::infinity();
    std::vector<Entry> buffer_;
    const int64_t* ids_ = nullptr;
};

}  // namespace sparknn
