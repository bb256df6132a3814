// libFuzzer target: arbitrary bytes as an index file. Every input must either
// be rejected with a sparknn::FileFormatError or load into an index that can
// be searched, added to and saved; anything else (a crash, a sanitizer report,
// another exception type, an answer that breaks the search contract) is a bug.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/file.h"
#include "sparknn/index.h"

namespace {

// Random mutations almost never keep the header checksum valid; recomputing it
// lets the fuzzer explore the structural checks behind it (the checksum check
// itself is covered by the unit tests). Section checksums are skipped by
// loading with verify_checksums = false.
void reseal_header(std::vector<uint8_t>& b) {
    if (b.size() < sparknn::kHeaderSize) return;
    uint32_t n;
    std::memcpy(&n, b.data() + 20, 4);
    if (n > sparknn::kMaxSections || sparknn::kHeaderSize + size_t{n} * sparknn::kSectionEntrySize > b.size()) return;
    uint32_t crc = sparknn::crc32c(b.data(), 60);
    crc = sparknn::crc32c(b.data() + sparknn::kHeaderSize, size_t{n} * sparknn::kSectionEntrySize, crc);
    std::memcpy(b.data() + 60, &crc, 4);
}

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "contract violated: %s\n", what);
        std::abort();
    }
}

void exercise(sparknn::Index& index) {
    index.set_threads(1);
    const size_t dim = index.dim(), n = index.size(), k = 3;
    std::vector<float> queries(2 * dim);
    for (size_t i = 0; i < queries.size(); ++i) queries[i] = static_cast<float>(i % 7) - 3.0f;
    std::vector<int64_t> ids(2 * k);
    std::vector<float> dist(2 * k);
    index.search(2, queries.data(), k, ids.data(), dist.data());
    // (With checksums off, stored vectors may hold NaN, which never ranks, so
    // padding can start early; it must never be missing.)
    for (size_t i = 0; i < ids.size(); ++i) {
        check(ids[i] >= -1, "ids are stored ids or -1");
        check(i % k < n || ids[i] == -1, "padding beyond the stored count");
        check(ids[i] != -1 || std::isinf(dist[i]), "padding has distance +inf");
        check(i % k == 0 || !(dist[i] < dist[i - 1]), "distances sorted nearest first");
    }
    // Copy-on-write of the file's arrays, then a second search and a save.
    try {
        index.add(1, queries.data(), nullptr);
    } catch (const sparknn::InvalidArgument&) {
        return;  // e.g. no automatic id left after INT64_MAX
    }
    index.search(2, queries.data(), k, ids.data(), dist.data());
    // One scratch file per fuzzing process, removed when it exits.
    static const struct Scratch {
        std::string path = "/tmp/sparknn_fuzz_" + std::to_string(::getpid()) + ".snn";
        ~Scratch() { ::unlink(path.c_str()); }
    } scratch;
    index.save(scratch.path);
    auto again = sparknn::load_index(scratch.path, /*mmap=*/false);
    check(again->size() == n + 1 && again->dim() == dim, "saved index reloads with the same shape");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<uint8_t> bytes(data, data + size);
    reseal_header(bytes);
    std::unique_ptr<sparknn::Index> index;
    try {
        index = sparknn::load_index(sparknn::IndexFile::from_bytes(std::move(bytes), /*verify_checksums=*/false));
    } catch (const sparknn::FileFormatError&) {
        return 0;  // a clear rejection is the expected outcome for most inputs
    }
    // Any other exception (InvalidArgument from a loader, bad_alloc from a
    // size taken on trust) escapes and is reported as a crash.
    exercise(*index);
    return 0;
}
