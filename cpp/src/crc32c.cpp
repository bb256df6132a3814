// CRC-32C (Castagnoli), the checksum of every file section. On x86-64 with
// SSE4.2 the crc32 instruction runs three independent streams to hide its
// latency; elsewhere a byte-wise table is used.
#include <cstring>

#include "sparknn/file.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace sparknn {
namespace {

struct Table {
    uint32_t t[256];
    Table() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[i] = c;
        }
    }
};

uint32_t crc_table(const uint8_t* p, size_t n, uint32_t crc) {
    static const Table table;
    for (size_t i = 0; i < n; ++i) crc = table.t[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw(const uint8_t* p, size_t n, uint32_t crc) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        std::memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = static_cast<uint32_t>(c);
    while (n > 0) {
        c32 = _mm_crc32_u8(c32, *p++);
        --n;
    }
    return c32;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t bytes, uint32_t seed) {
    const auto* p = static_cast<const uint8_t*>(data);
    uint32_t crc = ~seed;
#if defined(__x86_64__)
    static const bool hw = __builtin_cpu_supports("sse4.2");
    crc = hw ? crc_hw(p, bytes, crc) : crc_table(p, bytes, crc);
#else
    crc = crc_table(p, bytes, crc);
#endif
    return ~crc;
}

}  // namespace sparknn
