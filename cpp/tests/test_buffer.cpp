#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "sparknn/buffer.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SPARKNN_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SPARKNN_SANITIZED 1
#endif

namespace {

// The THPeligible line of /proc/self/smaps for the mapping holding `p` (-1 if not found).
int thp_eligible(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    const auto at = reinterpret_cast<uintptr_t>(p);
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        unsigned long long lo = 0, hi = 0;
        if (std::sscanf(line.c_str(), "%llx-%llx ", &lo, &hi) == 2) {  // a mapping's header line
            inside = lo <= at && at < hi;
        } else if (inside && line.rfind("THPeligible:", 0) == 0) {
            return std::atoi(line.c_str() + 12);
        }
    }
    return -1;
}

}  // namespace

TEST(IndexMemory, SmallArraysAreCacheLineAligned) {
    sparknn::AlignedVector<float> v(1000, 1.0f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u);
}

TEST(IndexMemory, LargeArraysStartOnHugePagesAndHoldTheirValues) {
    const size_t n = 3 * sparknn::kHugePagesFrom / sizeof(float) + 17;  // not a whole number of huge pages
    sparknn::AlignedVector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i % 1000);
    const auto at = reinterpret_cast<uintptr_t>(v.data());
    EXPECT_EQ(at % 64, 0u);
    if (sparknn::huge_pages_enabled()) {
        EXPECT_EQ(at % (size_t{2} << 20), 0u);
#if defined(__linux__) && !defined(SPARKNN_SANITIZED)
        // The advice reached the kernel where it can tell: 1 unless THP is off ("never") or absent
        // (-1: an old kernel without the line). Sanitizers allocate through their own mappings.
        std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
        std::string modes;
        std::getline(mode, modes);
        const int eligible = thp_eligible(v.data());
        if (eligible >= 0 && !modes.empty() && modes.find("[never]") == std::string::npos) EXPECT_EQ(eligible, 1);
#endif
    }
    // Growing past it moves the values into a new huge-page array, and shrinking back frees it
    // with the alignment it was allocated with (a mismatch would crash under the sanitizers).
    v.resize(2 * n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(v[i], static_cast<float>(i % 1000));
    v.resize(10);
    v.shrink_to_fit();
    EXPECT_EQ(v[9], 9.0f);
}
