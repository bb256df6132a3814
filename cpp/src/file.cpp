// Index file writing (atomic) and reading (validated, optionally mmapped).
#include "sparknn/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "sparknn/error.h"

// The format is little-endian and fields are copied as they are in memory.
// A big-endian port would byte-swap in put/get; until then, refuse to build.
static_assert(std::endian::native == std::endian::little, "sparknn's file format code assumes a little-endian host");

namespace sparknn {
namespace {

template <class T>
void put(uint8_t* dst, T value) {
    std::memcpy(dst, &value, sizeof(T));
}

template <class T>
T get(const uint8_t* src) {
    T value;
    std::memcpy(&value, src, sizeof(T));
    return value;
}

size_t align_up(size_t x) { return (x + kSectionAlign - 1) / kSectionAlign * kSectionAlign; }

std::string os_error(const std::string& what, const std::string& path) {
    return what + " '" + path + "': " + std::strerror(errno);
}

void write_all(int fd, const void* data, size_t bytes, const std::string& path) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
        const size_t chunk = std::min<size_t>(bytes, size_t{1} << 30);
        const ssize_t n = ::write(fd, p, chunk);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw IoError(os_error("cannot write", path));
        }
        p += n;
        bytes -= static_cast<size_t>(n);
    }
}

// Offsets of the header fields; docs/FORMAT.md lists the same table.
constexpr size_t kOffVersion = 8, kOffKind = 12, kOffMetric = 16, kOffSections = 20, kOffDim = 24, kOffCount = 32,
                 kOffFileSize = 40, kOffTable = 48, kOffCrc = 60;
// Offsets inside a section table entry.
constexpr size_t kEntType = 0, kEntOffset = 8, kEntSize = 16, kEntCrc = 24;
constexpr uint64_t kMaxDim = uint64_t{1} << 20;

// Makes the rename durable: a crash right after save() must not lose it.
void sync_directory_of(const std::string& path) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;  // best effort: the data itself is already flushed
    ::fsync(fd);
    ::close(fd);
}

// Temporary names are unique per process and per call, so concurrent saves
// (threads or processes) to one destination never write the same temporary.
std::string temporary_name(const std::string& path) {
    static std::atomic<uint64_t> counter{0};
    return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
}

}  // namespace

const char* section_name(SectionType type) {
    switch (type) {
        case SectionType::Params:
            return "Params";
        case SectionType::Vectors:
            return "Vectors";
        case SectionType::Vectors16:
            return "Vectors16";
        case SectionType::Ids:
            return "Ids";
        case SectionType::SideFiles:
            return "SideFiles";
        case SectionType::HnswLevels:
            return "HnswLevels";
        case SectionType::HnswLinks0:
            return "HnswLinks0";
        case SectionType::HnswUpperOffsets:
            return "HnswUpperOffsets";
        case SectionType::HnswUpperLinks:
            return "HnswUpperLinks";
        case SectionType::IvfCentroids:
            return "IvfCentroids";
        case SectionType::IvfListOffsets:
            return "IvfListOffsets";
        case SectionType::IvfLabels:
            return "IvfLabels";
        case SectionType::IvfCodes:
            return "IvfCodes";
        case SectionType::IvfSq8Min:
            return "IvfSq8Min";
        case SectionType::IvfSq8Step:
            return "IvfSq8Step";
        case SectionType::IvfPqCodebooks:
            return "IvfPqCodebooks";
        case SectionType::IvfRerankVectors:
            return "IvfRerankVectors";
        case SectionType::IvfFirstPassBasis:
            return "IvfFirstPassBasis";
    }
    return "unknown";
}

const char* kind_name(IndexKind kind) {
    switch (kind) {
        case IndexKind::Flat:
            return "flat";
        case IndexKind::Hnsw:
            return "hnsw";
        case IndexKind::Ivf:
            return "ivf";
    }
    return "unknown";
}

IndexKind kind_from_string(const std::string& name) {
    if (name == "flat" || name == "exact") return IndexKind::Flat;
    if (name == "hnsw") return IndexKind::Hnsw;
    if (name == "ivf") return IndexKind::Ivf;
    throw InvalidArgument("unknown index kind '" + name + "': use 'flat', 'hnsw' or 'ivf'");
}

// ---------------------------------------------------------------- writing

void FileWriter::add_section(SectionType type, const void* data, size_t bytes) {
    add_section_parts(type, {Part{data, bytes}});
}

void FileWriter::add_section_parts(SectionType type, std::vector<Part> parts) {
    size_t bytes = 0;
    for (const Part& p : parts) bytes += p.second;
    sections_.push_back({type, std::move(parts), bytes});
}

void FileWriter::add_param(const std::string& name, uint64_t value) {
    SPARKNN_CHECK_ARG(name.size() < sizeof(ParamRecord::name), "parameter name too long: ", name);
    ParamRecord r{};
    std::memcpy(r.name, name.data(), name.size());
    r.value = value;
    params_.push_back(r);
}

namespace {

// A role names a side file in messages and in Python: short, printable, no NUL.
bool valid_role(const char* role, size_t max) {
    size_t n = 0;
    for (; n < max && role[n] != '\0'; ++n) {
        if (role[n] < 0x21 || role[n] > 0x7e) return false;
    }
    return n > 0 && n < max;
}

}  // namespace

void FileWriter::add_side_file(const SideFile& file) {
    SideFileRecord r{};
    SPARKNN_CHECK_ARG(file.role.size() < sizeof(r.role) && valid_role(file.role.c_str(), sizeof(r.role)),
                      "side file role must be 1-31 printable ASCII characters without spaces: '", file.role, "'");
    for (const SideFileRecord& other : side_files_) {
        SPARKNN_CHECK_ARG(file.role != other.role, "side file role '", file.role, "' given twice");
    }
    std::memcpy(r.role, file.role.data(), file.role.size());
    r.bytes = file.bytes;
    r.crc32c = file.crc32c;
    side_files_.push_back(r);
}

void FileWriter::write(const std::string& path, bool sync) {
    std::vector<Pending> all = sections_;
    if (!params_.empty()) {
        const size_t bytes = params_.size() * sizeof(ParamRecord);
        all.insert(all.begin(), Pending{SectionType::Params, {Part{params_.data(), bytes}}, bytes});
    }
    if (!side_files_.empty()) {
        const size_t bytes = side_files_.size() * sizeof(SideFileRecord);
        all.push_back(Pending{SectionType::SideFiles, {Part{side_files_.data(), bytes}}, bytes});
    }
    SPARKNN_CHECK_ARG(all.size() <= kMaxSections, "too many sections");
    for (size_t i = 0; i < all.size(); ++i) {
        for (size_t j = 0; j < i; ++j) {
            SPARKNN_CHECK_ARG(all[i].type != all[j].type, "section ", section_name(all[i].type), " added twice");
        }
    }

    // Header + section table, then sections at 64-byte aligned offsets.
    std::vector<uint8_t> head(align_up(kHeaderSize + all.size() * kSectionEntrySize), 0);
    size_t offset = head.size();
    std::vector<size_t> offsets;
    for (size_t i = 0; i < all.size(); ++i) {
        offsets.push_back(offset);
        uint8_t* e = head.data() + kHeaderSize + i * kSectionEntrySize;
        put<uint32_t>(e + kEntType, static_cast<uint32_t>(all[i].type));
        put<uint64_t>(e + kEntOffset, offset);
        put<uint64_t>(e + kEntSize, all[i].bytes);
        uint32_t crc = 0;
        for (const Part& p : all[i].parts) crc = crc32c(p.first, p.second, crc);
        put<uint32_t>(e + kEntCrc, crc);
        offset = align_up(offset + all[i].bytes);
    }
    const size_t file_size = offset;
    std::memcpy(head.data(), kFileMagic, sizeof(kFileMagic));
    put<uint32_t>(head.data() + kOffVersion, kFormatVersion);
    put<uint32_t>(head.data() + kOffKind, static_cast<uint32_t>(header_.kind));
    put<uint32_t>(head.data() + kOffMetric, static_cast<uint32_t>(header_.metric));
    put<uint32_t>(head.data() + kOffSections, static_cast<uint32_t>(all.size()));
    put<uint64_t>(head.data() + kOffDim, header_.dim);
    put<uint64_t>(head.data() + kOffCount, header_.count);
    put<uint64_t>(head.data() + kOffFileSize, file_size);
    put<uint32_t>(head.data() + kOffTable, static_cast<uint32_t>(kHeaderSize));
    // The header checksum covers the header (without itself) and the section table.
    uint32_t crc = crc32c(head.data(), kOffCrc);
    crc = crc32c(head.data() + kHeaderSize, all.size() * kSectionEntrySize, crc);
    put<uint32_t>(head.data() + kOffCrc, crc);

    SPARKNN_CHECK_ARG(path.find('\0') == std::string::npos, "path '", path, "' contains a NUL byte");
    // The rename below replaces whatever is at `path`: a device (root saving to /dev/null), pipe or
    // socket would be lost, so only a regular file (or a symlink, itself replaced) may be there.
    struct stat existing {};
    if (::lstat(path.c_str(), &existing) == 0 && !S_ISREG(existing.st_mode) && !S_ISLNK(existing.st_mode)) {
        throw IoError("cannot save '" + path + "': it exists and is not a regular file (" +
                      (S_ISDIR(existing.st_mode) ? "a directory" : "a device, pipe or socket") +
                      "), which a save never replaces");
    }
    const std::string tmp = temporary_name(path);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw IoError(os_error("cannot save '" + path + "': cannot create", tmp));
    try {
        write_all(fd, head.data(), head.size(), tmp);
        static const uint8_t zeros[kSectionAlign] = {};
        size_t written = head.size();
        for (size_t i = 0; i < all.size(); ++i) {
            for (const Part& p : all[i].parts) write_all(fd, p.first, p.second, tmp);
            written += all[i].bytes;
            const size_t pad = align_up(written) - written;
            write_all(fd, zeros, pad, tmp);
            written += pad;
        }
        if (sync && ::fsync(fd) != 0) throw IoError(os_error("cannot flush", tmp));
        if (::close(fd) != 0) {
            throw IoError(os_error("cannot close", tmp));
        }
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const std::string msg = os_error("cannot rename to", path);
        ::unlink(tmp.c_str());
        throw IoError(msg);
    }
    if (sync) sync_directory_of(path);
}

// ---------------------------------------------------------------- reading

IndexFile::~IndexFile() {
    if (mapped_ && data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

size_t IndexFile::checked_mul(uint64_t a, uint64_t b) {
    if (a != 0 && b > std::numeric_limits<size_t>::max() / a) {
        throw FileFormatError("index file sizes overflow (corrupt header)");
    }
    return static_cast<size_t>(a * b);
}

void IndexFile::fail(const std::string& what) const {
    const std::string where = path_.empty() ? "index image" : "'" + path_ + "'";
    throw FileFormatError(where + " is not a valid sparknn index: " + what);
}

std::shared_ptr<const IndexFile> IndexFile::open(const std::string& path, bool mmap, bool verify_checksums) {
    SPARKNN_CHECK_ARG(path.find('\0') == std::string::npos, "path '", path, "' contains a NUL byte");
    // O_NONBLOCK: opening a named pipe would wait for a writer (forever); regular files ignore it.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw IoError(os_error("cannot open", path));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const std::string msg = os_error("cannot stat", path);
        ::close(fd);
        throw IoError(msg);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw IoError("'" + path + "' is not a regular file");
    }
    std::shared_ptr<IndexFile> file(new IndexFile());
    file->path_ = path;
    file->size_ = static_cast<size_t>(st.st_size);
    if (file->size_ < kHeaderSize) {
        ::close(fd);
        file->fail("file is " + std::to_string(file->size_) + " bytes, shorter than the 64-byte header (truncated?)");
    }
    if (mmap) {
        void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_SHARED, fd, 0);
        const int err = errno;
        ::close(fd);
        if (p == MAP_FAILED) {
            errno = err;
            throw IoError(os_error("cannot map", path));
        }
        file->data_ = static_cast<const uint8_t*>(p);
        file->mapped_ = true;
    } else {
        file->owned_.resize(file->size_);
        size_t done = 0;
        while (done < file->size_) {
            const ssize_t n = ::read(fd, file->owned_.data() + done, file->size_ - done);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                const std::string msg = os_error("cannot read", path);
                ::close(fd);
                throw IoError(msg);
            }
            if (n == 0) {
                ::close(fd);
                throw IoError("'" + path + "' shrank while it was being read (is another process writing it?)");
            }
            done += static_cast<size_t>(n);
        }
        ::close(fd);
        file->data_ = file->owned_.data();
    }
    file->parse(verify_checksums);
    return file;
}

std::shared_ptr<const IndexFile> IndexFile::from_bytes(std::vector<uint8_t> bytes, bool verify_checksums) {
    std::shared_ptr<IndexFile> file(new IndexFile());
    file->owned_.assign(bytes.begin(), bytes.end());
    file->data_ = file->owned_.data();
    file->size_ = file->owned_.size();
    if (file->size_ < kHeaderSize) file->fail("image shorter than the 64-byte header");
    file->parse(verify_checksums);
    return file;
}

// Validation order matters: nothing is interpreted before what vouches for it.
// The magic and version come first (a newer version may lay the header out
// differently); then the header checksum, which also covers the section table;
// then every field, size and section bound (with overflow-checked arithmetic);
// then, optionally, the section checksums. Only then are sections handed out.
void IndexFile::parse(bool verify_checksums) {
    if (std::memcmp(data_, kFileMagic, sizeof(kFileMagic)) != 0) {
        fail("bad magic bytes (not a sparknn index, or a different library's file)");
    }
    const uint32_t version = get<uint32_t>(data_ + kOffVersion);
    if (version > kFormatVersion) {
        fail("format version " + std::to_string(version) + " was written by a newer sparknn; this build reads up to " +
             std::to_string(kFormatVersion) + ": upgrade sparknn");
    }
    if (version == 0) fail("format version 0 does not exist (corrupt header)");
    header_.format_version = version;

    const uint32_t nsections = get<uint32_t>(data_ + kOffSections);
    const uint32_t table = get<uint32_t>(data_ + kOffTable);
    if (nsections > kMaxSections) {
        fail("section count " + std::to_string(nsections) + " is larger than " + std::to_string(kMaxSections) +
             " (corrupt header)");
    }
    if (table != kHeaderSize) fail("section table offset " + std::to_string(table) + " is not 64 (corrupt header)");
    const size_t table_end = kHeaderSize + size_t{nsections} * kSectionEntrySize;
    if (table_end > size_) {
        fail("the section table runs past the end of the file (" + std::to_string(size_) + " bytes): truncated file");
    }
    uint32_t crc = crc32c(data_, kOffCrc);
    crc = crc32c(data_ + kHeaderSize, size_t{nsections} * kSectionEntrySize, crc);
    if (crc != get<uint32_t>(data_ + kOffCrc)) fail("header checksum mismatch (corrupted file)");

    const uint64_t declared = get<uint64_t>(data_ + kOffFileSize);
    if (declared != size_) {
        fail("header says the file is " + std::to_string(declared) + " bytes but it is " + std::to_string(size_) +
             (declared > size_ ? " (truncated: was the copy or download interrupted?)" : " (trailing bytes)"));
    }

    const uint32_t kind = get<uint32_t>(data_ + kOffKind);
    if (kind < static_cast<uint32_t>(IndexKind::Flat) || kind > static_cast<uint32_t>(IndexKind::Ivf)) {
        fail("unknown index kind " + std::to_string(kind));
    }
    header_.kind = static_cast<IndexKind>(kind);
    const uint32_t metric = get<uint32_t>(data_ + kOffMetric);
    if (metric < static_cast<uint32_t>(Metric::L2) || metric > static_cast<uint32_t>(Metric::Cosine)) {
        fail("unknown metric " + std::to_string(metric));
    }
    header_.metric = static_cast<Metric>(metric);
    header_.dim = get<uint64_t>(data_ + kOffDim);
    header_.count = get<uint64_t>(data_ + kOffCount);
    if (header_.dim == 0 || header_.dim > kMaxDim)
        fail("dimension " + std::to_string(header_.dim) + " is out of range");
    // Every kind stores an 8-byte id per vector, so count is bounded by the file
    // size; with dim <= 2^20 no later count * dim * element size can overflow.
    if (header_.count > size_ / sizeof(int64_t)) {
        fail("header claims " + std::to_string(header_.count) + " vectors, more than a " + std::to_string(size_) +
             "-byte file can hold");
    }

    sections_.reserve(nsections);
    for (uint32_t i = 0; i < nsections; ++i) {
        const uint8_t* e = data_ + kHeaderSize + size_t{i} * kSectionEntrySize;
        const Section s{static_cast<SectionType>(get<uint32_t>(e + kEntType)), get<uint64_t>(e + kEntOffset),
                        get<uint64_t>(e + kEntSize)};
        const std::string name = "section " + std::to_string(i) + " (" + section_name(s.type) + ")";
        if (s.offset % kSectionAlign != 0) fail(name + " is not 64-byte aligned");
        if (s.offset < table_end) fail(name + " overlaps the header or the section table");
        if (s.offset > size_ || s.size > size_ - s.offset) fail(name + " lies outside the file");
        for (const Section& other : sections_) {
            if (other.type == s.type) fail(name + " appears twice");
        }
        sections_.push_back(s);
    }
    // Sections may not overlap each other (empty sections may share an offset).
    std::vector<Section> by_offset = sections_;
    std::sort(by_offset.begin(), by_offset.end(), [](const Section& a, const Section& b) {
        return a.offset != b.offset ? a.offset < b.offset : a.size < b.size;
    });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        if (by_offset[i - 1].offset + by_offset[i - 1].size > by_offset[i].offset) {
            fail(std::string("sections ") + section_name(by_offset[i - 1].type) + " and " +
                 section_name(by_offset[i].type) + " overlap");
        }
    }
    if (verify_checksums) {
        for (uint32_t i = 0; i < nsections; ++i) {
            const uint8_t* e = data_ + kHeaderSize + size_t{i} * kSectionEntrySize;
            const Section& s = sections_[i];
            if (crc32c(data_ + s.offset, s.size) != get<uint32_t>(e + kEntCrc)) {
                fail("checksum mismatch in section " + std::to_string(i) + " (" + section_name(s.type) +
                     "): corrupted file");
            }
        }
    }
    if (has_section(SectionType::Params)) {
        size_t bytes = 0;
        const uint8_t* p = section(SectionType::Params, &bytes);
        if (bytes % sizeof(ParamRecord) != 0) fail("parameter section has a partial record");
        params_.resize(bytes / sizeof(ParamRecord));
        if (bytes > 0) std::memcpy(params_.data(), p, bytes);
        for (ParamRecord& r : params_) r.name[sizeof(r.name) - 1] = '\0';
    }
    if (has_section(SectionType::SideFiles)) {
        size_t bytes = 0;
        const uint8_t* p = section(SectionType::SideFiles, &bytes);
        if (bytes % sizeof(SideFileRecord) != 0) fail("side file section has a partial record");
        for (size_t at = 0; at < bytes; at += sizeof(SideFileRecord)) {
            SideFileRecord r;
            std::memcpy(&r, p + at, sizeof(r));
            if (!valid_role(r.role, sizeof(r.role))) fail("side file record with an invalid role");
            SideFile f{std::string(r.role), r.bytes, r.crc32c};
            for (const SideFile& other : side_files_) {
                if (other.role == f.role) fail("side file role '" + f.role + "' recorded twice");
            }
            side_files_.push_back(std::move(f));
        }
    }
}

bool IndexFile::has_section(SectionType type) const {
    for (const Section& s : sections_) {
        if (s.type == type) return true;
    }
    return false;
}

const uint8_t* IndexFile::section(SectionType type, size_t* bytes) const {
    for (const Section& s : sections_) {
        if (s.type == type) {
            *bytes = static_cast<size_t>(s.size);
            return data_ + s.offset;
        }
    }
    fail(std::string("missing the ") + section_name(type) + " section");
}

const uint8_t* IndexFile::section_exact(SectionType type, size_t expected_bytes) const {
    size_t bytes = 0;
    const uint8_t* p = section(type, &bytes);
    if (bytes != expected_bytes) {
        fail(std::string("the ") + section_name(type) + " section has " + std::to_string(bytes) + " bytes, expected " +
             std::to_string(expected_bytes) + " for the header's count and dimension");
    }
    return p;
}

uint64_t IndexFile::param(const std::string& name) const {
    for (const ParamRecord& r : params_) {
        if (name == r.name) return r.value;
    }
    fail("missing parameter '" + name + "'");
}

uint64_t IndexFile::param_or(const std::string& name, uint64_t fallback) const {
    for (const ParamRecord& r : params_) {
        if (name == r.name) return r.value;
    }
    return fallback;
}

}  // namespace sparknn
