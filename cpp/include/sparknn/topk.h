// Top-k selection: a bounded max-heap keeping the k smallest (distance, label)
// pairs. Ties are broken by label so results are deterministic.
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

    void reset(size_t k) {
        k_ = k;
        heap_.clear();
        heap_.reserve(k);
    }

    size_t k() const { return k_; }
    size_t size() const { return heap_.size(); }
    bool full() const { return heap_.size() == k_; }

    // The distance a candidate must beat to enter; +inf while not full.
    float threshold() const {
        return full() && k_ > 0 ? heap_.front().first : std::numeric_limits<float>::infinity();
    }

    void push(float distance, int64_t label) {
        if (k_ == 0) return;
        const Entry e{distance, label};
        if (!full()) {
            heap_.push_back(e);
            std::push_heap(heap_.begin(), heap_.end());
        } else if (e < heap_.front()) {
            std::pop_heap(heap_.begin(), heap_.end());
            heap_.back() = e;
            std::push_heap(heap_.begin(), heap_.end());
        }
    }

    void merge(const TopK& other) {
        for (const Entry& e : other.heap_) push(e.first, e.second);
    }

    // Writes the entries nearest first; pads to k with (-1, +inf).
    template <class LabelToId>
    void write_sorted(int64_t* ids, float* distances, LabelToId&& label_to_id) {
        std::sort_heap(heap_.begin(), heap_.end());
        size_t i = 0;
        for (; i < heap_.size(); ++i) {
            ids[i] = label_to_id(heap_[i].second);
            distances[i] = heap_[i].first;
        }
        for (; i < k_; ++i) {
            ids[i] = -1;
            distances[i] = std::numeric_limits<float>::infinity();
        }
        heap_.clear();
    }

    const std::vector<Entry>& entries() const { return heap_; }

  private:
    size_t k_ = 0;
    std::vector<Entry> heap_;
};

}  // namespace sparknn
