#include "sparknn/buffer.h"

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sparknn {

namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

// The alignment of an array of `bytes`: a function of the size alone, so that
// free_index_memory finds the one allocate_index_memory used.
std::size_t alignment_of(std::size_t bytes) {
    return bytes >= kHugePagesFrom && huge_pages_enabled() ? kHugePage : AlignedAllocator<char>::kAlign;
}

}  // namespace

bool huge_pages_enabled() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    static const bool enabled = [] {
        const char* env = std::getenv("SPARKNN_HUGE_PAGES");
        return env == nullptr || std::strcmp(env, "0") != 0;
    }();
    return enabled;
#else
    return false;
#endif
}

void* allocate_index_memory(std::size_t bytes) {
    const std::size_t align = alignment_of(bytes);
    void* p = ::operator new(bytes, std::align_val_t(align));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Before any page is touched, so that the first touch faults in a huge page.
    // Advice only: a kernel without THP (or with it off) says no, and 4 KiB pages serve.
    if (align == kHugePage) (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

void free_index_memory(void* p, std::size_t bytes) noexcept { ::operator delete(p, std::align_val_t(alignment_of(bytes))); }

}  // namespace sparknn
