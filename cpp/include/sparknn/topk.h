// Top-k selection: keeps the k smallest (distance, label) pairs. Ties are
// broken by the label's user id (order_ties_by(ids): ids[label]; else by the
// label itself), so results are deterministic whatever the push order and,
// given ids, whatever order the vectors were stored in. The id is looked up
// only when two distances are equal: the common comparisons stay one float
// compare.
//
// A reservoir rather than a heap: a candidate that beats the threshold is
// appended (a store), and only when the buffer is full (2k entries by default,
// see reset) is it cut back to the k best with one nth_element. A scan pushes
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
        buffer_.reserve(capacity_);
    }

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

  private:
    // Keeps the k smallest pairs; the k-th becomes the threshold.
    void shrink() {
        std::nth_element(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(k_ - 1), buffer_.end(),
                         [this](const Entry& a, const Entry& b) { return before(a, b); });
        threshold_ = buffer_[k_ - 1].first;
        buffer_.resize(k_);
    }

    size_t k_ = 0;
    size_t capacity_ = 0;
    float threshold_ = std::numeric_limits<float>::infinity();
    std::vector<Entry> buffer_;
    const int64_t* ids_ = nullptr;
};

}  // namespace sparknn
