// Storage that either owns its elements or views a read-only memory-mapped
// file section. Indexes keep every array in a Buffer, so a loaded index costs
// no copy; the first mutation of a mapped buffer copies it (copy-on-write).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace sparknn {

// Memory of `bytes` for an index array, 64-byte aligned: rows start on cache
// lines, SIMD loads never split. Arrays of kHugePagesFrom bytes or more start
// on a 2 MiB boundary and ask Linux for transparent huge pages (MADV_HUGEPAGE;
// most distributions enable them only where asked): a graph search or a
// re-rank reads rows at random over hundreds of MB, and with 4 KiB pages
// nearly every row read also misses the TLB (a page walk), while 2 MiB pages
// map 1 GB in 512 TLB entries; filling fresh memory also faults 512x less
// often. SPARKNN_HUGE_PAGES=0 turns this off (read once). free_index_memory
// takes the same `bytes`.
void* allocate_index_memory(std::size_t bytes);
void free_index_memory(void* p, std::size_t bytes) noexcept;
inline constexpr std::size_t kHugePagesFrom = std::size_t{4} << 20;
// Whether arrays of kHugePagesFrom bytes or more get huge pages here: on Linux,
// unless SPARKNN_HUGE_PAGES=0.
bool huge_pages_enabled();

template <class T>
struct AlignedAllocator {
    using value_type = T;
    static constexpr std::size_t kAlign = 64;
    AlignedAllocator() = default;
    template <class U>
    AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
        return static_cast<T*>(allocate_index_memory(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept { free_index_memory(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const AlignedAllocator<U>&) const noexcept { return true; }
};

template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

template <class T>
class Buffer {
  public:
    Buffer() = default;

    const T* data() const { return view_ != nullptr ? view_ : owned_.data(); }
    size_t size() const { return view_ != nullptr ? view_size_ : owned_.size(); }
    bool is_view() const { return view_ != nullptr; }
    const T& operator[](size_t i) const { return data()[i]; }

    // Points at memory kept alive by `owner` (a mapped file). No copy.
    void set_view(const T* data, size_t size, std::shared_ptr<const void> owner) {
        owned_.clear();
        owned_.shrink_to_fit();
        view_ = data;
        view_size_ = size;
        owner_ = std::move(owner);
    }

    // Returns an owned vector's memory reserved for growth; a view is left as it is.
    void shrink_to_fit() {
        if (view_ == nullptr) owned_.shrink_to_fit();
    }

    // The owned vector for mutation; a view is copied into it first.
    AlignedVector<T>& mutate() {
        if (view_ != nullptr) {
            owned_.assign(view_, view_ + view_size_);
            view_ = nullptr;
            view_size_ = 0;
            owner_.reset();
        }
        return owned_;
    }

  private:
    AlignedVector<T> owned_;
    const T* view_ = nullptr;
    size_t view_size_ = 0;
    std::shared_ptr<const void> owner_;
};

}  // namespace sparknn
