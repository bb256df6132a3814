// The index file container: a fixed 64-byte header, a section table and
// 64-byte aligned sections, each with a CRC-32C. See docs/FORMAT.md.
//
// Reading validates before anything is trusted: magic, format version, sizes
// (with overflow-checked arithmetic), section bounds and alignment, then the
// checksums. Writing is atomic: a temporary file in the same directory is
// written, flushed and renamed over the destination.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sparknn/buffer.h"
#include "sparknn/distance.h"

namespace sparknn {

inline constexpr char kFileMagic[8] = {'S', 'P', 'A', 'R', 'K', 'N', 'N', '\0'};
// 2: 16-bit vector storage (the Vectors16 section, the flat / hnsw "storage"
// parameter, ivf storages fp16 and bf16). Version 1 files read as before.
inline constexpr uint32_t kFormatVersion = 2;
inline constexpr size_t kHeaderSize = 64;
inline constexpr size_t kSectionEntrySize = 32;
inline constexpr size_t kSectionAlign = 64;
inline constexpr uint32_t kMaxSections = 64;

enum class IndexKind : uint32_t { Flat = 1, Hnsw = 2, Ivf = 3 };
const char* kind_name(IndexKind kind);
IndexKind kind_from_string(const std::string& name);

// Section types. Values are part of the format: never renumber. Readers ignore
// types they do not know (see docs/FORMAT.md, "Compatibility").
enum class SectionType : uint32_t {
    Params = 1,             // named uint64 parameters (ParamRecord[])
    Vectors = 2,            // float32 [count, dim]
    Ids = 3,                // int64 [count], user ids
    SideFiles = 4,          // digests of files kept beside this one (SideFileRecord[])
    Vectors16 = 5,          // uint16 [count, dim]: fp16 or bf16 values, as the "storage" param says (v2)
    HnswLevels = 10,        // uint8 [count], top level of each node
    HnswLinks0 = 11,        // uint32 [count, 1 + M0]: degree, then neighbours
    HnswUpperOffsets = 12,  // uint64 [count + 1] into HnswUpperLinks
    HnswUpperLinks = 13,    // uint32: per node, per level >= 1: degree, then M slots
    IvfCentroids = 20,      // float32 [nlist, dim]
    IvfListOffsets = 21,    // uint64 [nlist + 1] into labels/codes (lists are contiguous)
    IvfLabels = 22,         // int64 [count], internal labels (positions in Ids) in list order
    IvfCodes = 23,          // uint8 [count, code_size] in list order
    IvfSq8Min = 24,         // float32 [dim], SQ8 range start per dimension
    IvfSq8Step = 25,        // float32 [dim], SQ8 step per dimension
    IvfPqCodebooks = 26,    // float32 [pq_m, 256, dim / pq_m]
    IvfRerankVectors = 27,  // float32 [count, dim] in label order (stored vectors, for re-ranking)
    IvfFirstPassBasis = 28,  // float32 [dims, dim]: the first pass's orthonormal basis (optional)
};
const char* section_name(SectionType type);

// The fixed header, as decoded.
struct FileHeader {
    uint32_t format_version = kFormatVersion;
    IndexKind kind = IndexKind::Flat;
    Metric metric = Metric::L2;
    uint64_t dim = 0;
    uint64_t count = 0;
};

// Named integer parameters; floats are stored as their bit pattern by callers.
struct ParamRecord {
    char name[24];
    uint64_t value;
};
static_assert(sizeof(ParamRecord) == 32, "ParamRecord is part of the file format");

// The digest of a file that belongs beside an index file (e.g. the user's
// string ids, a partition's items), by role. Written into the index file so a
// missing, damaged or foreign side file is detected when it is read.
struct SideFileRecord {
    char role[32];  // NUL-terminated printable ASCII, e.g. "ids"
    uint64_t bytes;
    uint32_t crc32c;
    uint32_t reserved;
};
static_assert(sizeof(SideFileRecord) == 48, "SideFileRecord is part of the file format");

struct SideFile {
    std::string role;
    uint64_t bytes = 0;
    uint32_t crc32c = 0;
};

// Collects sections (pointers, not copies) and writes the file atomically.
class FileWriter {
  public:
    explicit FileWriter(const FileHeader& header) : header_(header) {}
    void add_section(SectionType type, const void* data, size_t bytes);
    // A section stored as the concatenation of parts (e.g. one per inverted
    // list), written and checksummed in order without building it in memory.
    using Part = std::pair<const void*, size_t>;
    void add_section_parts(SectionType type, std::vector<Part> parts);
    void add_param(const std::string& name, uint64_t value);
    // Records a side file's digest (SideFiles section); roles are distinct.
    void add_side_file(const SideFile& file);
    // Keeps memory built only for this write (e.g. concatenated lists) alive until the writer dies.
    void keep_alive(std::shared_ptr<const void> owner) { owners_.push_back(std::move(owner)); }
    // Atomic (temporary file, then rename); durable when `sync` (fsync of the
    // file and its directory): a scratch file that need not survive a crash skips it.
    void write(const std::string& path, bool sync = true);

  private:
    struct Pending {
        SectionType type;
        std::vector<Part> parts;
        size_t bytes;
    };
    FileHeader header_;
    std::vector<Pending> sections_;
    std::vector<ParamRecord> params_;
    std::vector<SideFileRecord> side_files_;
    std::vector<std::shared_ptr<const void>> owners_;
};

// A validated, read-only index file: mapped (shared page cache) or read into memory.
class IndexFile {
  public:
    // Opens and validates `path`. With verify_checksums, every section's
    // CRC-32C is checked (reads the whole file once).
    static std::shared_ptr<const IndexFile> open(const std::string& path, bool mmap, bool verify_checksums = true);
    // Validates an in-memory image (copied to 64-byte aligned memory; the fuzzer's entry point).
    static std::shared_ptr<const IndexFile> from_bytes(std::vector<uint8_t> bytes, bool verify_checksums = true);
    ~IndexFile();
    IndexFile(const IndexFile&) = delete;
    IndexFile& operator=(const IndexFile&) = delete;

    const FileHeader& header() const { return header_; }
    const std::string& path() const { return path_; }
    bool is_mapped() const { return mapped_; }
    size_t file_size() const { return size_; }

    bool has_section(SectionType type) const;
    // The section's bytes; throws FileFormatError if it is missing or its size
    // differs from `expected_bytes` (when given).
    const uint8_t* section(SectionType type, size_t* bytes) const;
    const uint8_t* section_exact(SectionType type, size_t expected_bytes) const;
    template <class T>
    const T* typed_section(SectionType type, size_t expected_count) const {
        return reinterpret_cast<const T*>(section_exact(type, checked_mul(expected_count, sizeof(T))));
    }

    // A parameter from the Params section; throws FileFormatError if absent.
    uint64_t param(const std::string& name) const;
    uint64_t param_or(const std::string& name, uint64_t fallback) const;
    // The SideFiles section's records (empty when the file has none).
    const std::vector<SideFile>& side_files() const { return side_files_; }

    // Overflow-checked a * b for sizes read from a file.
    static size_t checked_mul(uint64_t a, uint64_t b);

    // Throws FileFormatError "<path> is not a valid sparknn index: <what>";
    // index kinds use it for their own checks of a file's content.
    [[noreturn]] void fail(const std::string& what) const;

  private:
    IndexFile() = default;
    void parse(bool verify_checksums);

    struct Section {
        SectionType type;
        uint64_t offset;
        uint64_t size;
    };
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    bool mapped_ = false;
    AlignedVector<uint8_t> owned_;  // read mode: 64-byte aligned like a mapping
    FileHeader header_;
    std::vector<Section> sections_;
    std::vector<ParamRecord> params_;
    std::vector<SideFile> side_files_;
};

uint32_t crc32c(const void* data, size_t bytes, uint32_t seed = 0);

}  // namespace sparknn
