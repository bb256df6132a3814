// The index file: round trips, atomic saves, and every kind of damaged or
// foreign file (each must raise FileFormatError or IoError, never crash or
// load garbage).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "sparknn/error.h"
#include "sparknn/file.h"
#include "sparknn/flat.h"
#include "test_util.h"

namespace sparknn {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// Field offsets as docs/FORMAT.md states them (deliberately not taken from file.cpp).
constexpr size_t kVersionAt = 8, kKindAt = 12, kMetricAt = 16, kSectionsAt = 20, kDimAt = 24, kCountAt = 32,
                 kFileSizeAt = 40, kTableAt = 48, kHeaderCrcAt = 60;
constexpr size_t kEntryType = 0, kEntryOffset = 8, kEntrySize = 16, kEntryCrc = 24;
constexpr Metric kMetrics[] = {Metric::L2, Metric::InnerProduct, Metric::Cosine};

template <class T>
T get(const Bytes& b, size_t at) {
    T v;
    std::memcpy(&v, b.data() + at, sizeof(T));
    return v;
}
template <class T>
void put(Bytes& b, size_t at, T v) {
    std::memcpy(b.data() + at, &v, sizeof(T));
}

// Recomputes the header checksum, so a test reaches the check behind it.
void reseal(Bytes& b) {
    const uint32_t n = get<uint32_t>(b, kSectionsAt);
    uint32_t crc = crc32c(b.data(), kHeaderCrcAt);
    crc = crc32c(b.data() + kHeaderSize, size_t{n} * kSectionEntrySize, crc);
    put<uint32_t>(b, kHeaderCrcAt, crc);
}

size_t entry_of(const Bytes& b, SectionType type) {
    for (uint32_t i = 0; i < get<uint32_t>(b, kSectionsAt); ++i) {
        const size_t e = kHeaderSize + i * kSectionEntrySize;
        if (get<uint32_t>(b, e + kEntryType) == static_cast<uint32_t>(type)) return e;
    }
    ADD_FAILURE() << "no section " << section_name(type);
    return 0;
}

void write_file(const fs::path& p, const Bytes& b) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::unique_ptr<Index> make_flat(Metric metric, size_t n, size_t dim, uint64_t seed, int64_t first_id = 0) {
    auto index = std::make_unique<FlatIndex>(dim, metric);
    index->set_threads(1);
    const std::vector<float> x = test::random_vectors(n, dim, seed);
    std::vector<int64_t> ids(n);
    for (size_t i = 0; i < n; ++i) ids[i] = first_id + 3 * static_cast<int64_t>(i);
    index->add(n, x.data(), ids.data());
    return index;
}

using test::Results;
using test::search;

class FileTest : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        dir_ = fs::temp_directory_path() /
               ("sparknn_test_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    // A small valid file's bytes (flat, l2, 20 x 8).
    Bytes valid_image() {
        const fs::path p = dir_ / "valid.snn";
        make_flat(Metric::L2, 20, 8, 7, 100)->save(p);
        return test::read_bytes(p);
    }

    // Loads `bytes` every way a user can (in memory, mapped, read) and expects
    // FileFormatError whose message contains `needle`.
    void expect_rejected(const Bytes& bytes, const std::string& needle, bool verify = true) {
        const fs::path p = dir_ / "bad.snn";
        write_file(p, bytes);
        for (int way = 0; way < 3; ++way) {
            SCOPED_TRACE(way == 0 ? "from_bytes" : way == 1 ? "mmap" : "read");
            try {
                if (way == 0) {
                    load_index(IndexFile::from_bytes(bytes, verify));
                } else {
                    load_index(p.string(), way == 1, verify);
                }
                ADD_FAILURE() << "loaded without error; expected '" << needle << "'";
            } catch (const FileFormatError& e) {
                EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
            }
        }
    }

    fs::path dir_;
};

// ------------------------------------------------------------ round trips

TEST_F(FileTest, RoundTripGivesIdenticalResultsForEveryMetricAndMode) {
    const size_t dim = 17;
    const std::vector<float> queries = test::random_vectors(25, dim, 99);
    for (Metric metric : kMetrics) {
        auto index = make_flat(metric, 300, dim, 5, 1000);
        const Results before = search(*index, queries, 12);
        const fs::path p = dir_ / "rt.snn";
        index->save(p);
        for (bool mmap : {true, false}) {
            SCOPED_TRACE(std::string(metric_name(metric)) + (mmap ? " mmap" : " read"));
            auto loaded = load_index(p.string(), mmap);
            loaded->set_threads(1);
            EXPECT_EQ(loaded->kind(), IndexKind::Flat);
            EXPECT_EQ(loaded->metric(), metric);
            EXPECT_EQ(loaded->dim(), dim);
            ASSERT_EQ(loaded->size(), 300u);
            EXPECT_EQ(search(*loaded, queries, 12), before);
            for (size_t i = 0; i < 300; ++i) ASSERT_EQ(loaded->id_of(i), index->id_of(i));
            EXPECT_EQ(std::memcmp(loaded->vector_of(0), index->vector_of(0), 300 * dim * sizeof(float)), 0);
        }
    }
}

TEST_F(FileTest, EmptyIndexRoundTrips) {
    FlatIndex empty(5, Metric::Cosine);
    const fs::path p = dir_ / "empty.snn";
    empty.save(p);
    for (bool mmap : {true, false}) {
        auto loaded = load_index(p.string(), mmap);
        EXPECT_EQ(loaded->size(), 0u);
        EXPECT_EQ(loaded->dim(), 5u);
        const std::vector<float> q(5, 1.0f);
        const Results r = search(*loaded, q, 3);
        EXPECT_EQ(r.ids, std::vector<int64_t>(3, -1));
    }
}

TEST_F(FileTest, MappedIndexCopiesOnWriteAndSavesAgain) {
    const size_t dim = 8;
    auto original = make_flat(Metric::L2, 50, dim, 3);
    const fs::path p = dir_ / "a.snn", q = dir_ / "b.snn";
    original->save(p);
    const Bytes on_disk = test::read_bytes(p);

    auto loaded = load_index(p.string(), /*mmap=*/true);
    const std::vector<float> extra = test::random_vectors(10, dim, 4);
    loaded->add(10, extra.data(), nullptr);  // ids continue after the largest (147)
    EXPECT_EQ(loaded->size(), 60u);
    EXPECT_EQ(loaded->id_of(50), 148);
    EXPECT_EQ(test::read_bytes(p), on_disk) << "adding to a mapped index must not write through to the file";

    loaded->save(q);
    auto again = load_index(q.string(), true);
    original->add(10, extra.data(), nullptr);
    const std::vector<float> queries = test::random_vectors(7, dim, 8);
    again->set_threads(1);
    EXPECT_EQ(search(*again, queries, 9), search(*original, queries, 9));
    // Saving over the file a mapped index came from is safe: the mapping keeps the old inode.
    loaded->save(p);
    EXPECT_EQ(load_index(p.string())->size(), 60u);
}

TEST_F(FileTest, ReaderKeepsItsMappingWhenTheFileIsReplaced) {
    const fs::path p = dir_ / "shared.snn";
    make_flat(Metric::Cosine, 40, 6, 1)->save(p);
    auto reader = load_index(p.string(), true);
    reader->set_threads(1);
    const std::vector<float> queries = test::random_vectors(4, 6, 2);
    const Results before = search(*reader, queries, 5);
    make_flat(Metric::Cosine, 10, 6, 9)->save(p);  // atomic replace while mapped
    EXPECT_EQ(search(*reader, queries, 5), before);
    EXPECT_EQ(load_index(p.string())->size(), 10u);
}

// ------------------------------------------------------------ atomic saves

TEST_F(FileTest, SaveReplacesAnExistingFileAndLeavesNoTemporaries) {
    const fs::path p = dir_ / "index.snn";
    make_flat(Metric::L2, 30, 4, 1)->save(p);
    make_flat(Metric::L2, 12, 4, 2)->save(p);
    EXPECT_EQ(load_index(p.string())->size(), 12u);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    EXPECT_EQ(names, std::vector<std::string>{"index.snn"});
}

TEST_F(FileTest, SaveIntoMissingDirectoryThrowsIoErrorAndWritesNothing) {
    const fs::path p = dir_ / "no" / "such" / "index.snn";
    EXPECT_THROW(make_flat(Metric::L2, 3, 4, 1)->save(p), IoError);
    EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(FileTest, SaveOverADirectoryThrowsIoErrorAndCleansUp) {
    fs::create_directory(dir_ / "taken");
    EXPECT_THROW(make_flat(Metric::L2, 3, 4, 1)->save(dir_ / "taken"), IoError);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    EXPECT_EQ(names, std::vector<std::string>{"taken"});
}

TEST_F(FileTest, MissingFileOrDirectoryIsAnIoError) {
    EXPECT_THROW(load_index((dir_ / "missing.snn").string()), IoError);
    EXPECT_THROW(load_index(dir_.string()), IoError);
    EXPECT_THROW(load_index(dir_.string(), false), IoError);
}

// ------------------------------------------------------------ the container itself

TEST(FileFormat, Crc32cMatchesTheStandardCheckValue) {
    EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);                 // RFC 3720 / iSCSI
    EXPECT_EQ(crc32c("56789", 5, crc32c("1234", 4)), 0xE3069283u);  // chained
}

TEST_F(FileTest, LayoutMatchesTheDocumentation) {
    const Bytes b = valid_image();
    EXPECT_EQ(std::memcmp(b.data(), "SPARKNN\0", 8), 0);
    EXPECT_EQ(get<uint32_t>(b, kVersionAt), kFormatVersion);
    EXPECT_EQ(get<uint32_t>(b, kKindAt), 1u);
    EXPECT_EQ(get<uint32_t>(b, kMetricAt), 1u);
    EXPECT_EQ(get<uint64_t>(b, kDimAt), 8u);
    EXPECT_EQ(get<uint64_t>(b, kCountAt), 20u);
    EXPECT_EQ(get<uint64_t>(b, kFileSizeAt), b.size());
    EXPECT_EQ(get<uint32_t>(b, kTableAt), 64u);
    const uint32_t n = get<uint32_t>(b, kSectionsAt);
    for (uint32_t i = 0; i < n; ++i) {
        const size_t e = kHeaderSize + i * kSectionEntrySize;
        const uint64_t off = get<uint64_t>(b, e + kEntryOffset), size = get<uint64_t>(b, e + kEntrySize);
        EXPECT_EQ(off % 64, 0u);
        EXPECT_EQ(get<uint32_t>(b, e + 24), crc32c(b.data() + off, size));
    }
    const size_t ids = entry_of(b, SectionType::Ids);
    EXPECT_EQ(get<uint64_t>(b, ids + kEntrySize), 20u * 8);
    EXPECT_EQ(get<int64_t>(b, get<uint64_t>(b, ids + kEntryOffset) + 8), 103);  // second id
    EXPECT_EQ(get<uint64_t>(b, entry_of(b, SectionType::Vectors) + kEntrySize), 20u * 8 * 4);
}

TEST_F(FileTest, ParamsRoundTrip) {
    FileHeader h;
    h.dim = 4;
    FileWriter w(h);
    const int64_t no_ids[1] = {0};
    w.add_section(SectionType::Ids, no_ids, 0);
    w.add_param("M", 16);
    w.add_param("ef_search_bits", uint64_t{1} << 40);
    EXPECT_THROW(w.add_param(std::string(24, 'x'), 1), InvalidArgument);
    w.add_section(SectionType::Ids, no_ids, 0);  // a duplicate type: write() refuses it before touching the disk
    const fs::path p = dir_ / "params.snn";
    EXPECT_THROW(w.write(p), InvalidArgument);
    EXPECT_FALSE(fs::exists(p));
    FileWriter ok(h);
    ok.add_section(SectionType::Ids, no_ids, 0);
    ok.add_param("M", 16);
    ok.add_param("ef_search_bits", uint64_t{1} << 40);
    ok.write(p);
    auto f = IndexFile::open(p, true);
    EXPECT_EQ(f->param("M"), 16u);
    EXPECT_EQ(f->param("ef_search_bits"), uint64_t{1} << 40);
    EXPECT_EQ(f->param_or("absent", 7), 7u);
    EXPECT_THROW(f->param("absent"), FileFormatError);
    EXPECT_THROW(f->section_exact(SectionType::Ids, 8), FileFormatError);
    EXPECT_THROW(f->typed_section<float>(SectionType::Vectors, 1), FileFormatError);
}

TEST_F(FileTest, SideFilesRoundTripAndAreNotCarriedIntoANewSave) {
    auto index = make_flat(Metric::L2, 20, 8, 7, 100);
    EXPECT_TRUE(index->side_files().empty());
    const fs::path p = dir_ / "sides.snn";
    index->save(p, true, {{"ids", 123, 0xdeadbeefu}, {"items", 0, 0}});
    auto loaded = load_index(p.string());
    ASSERT_EQ(loaded->side_files().size(), 2u);
    EXPECT_EQ(loaded->side_files()[0].role, "ids");
    EXPECT_EQ(loaded->side_files()[0].bytes, 123u);
    EXPECT_EQ(loaded->side_files()[0].crc32c, 0xdeadbeefu);
    EXPECT_EQ(loaded->side_files()[1].role, "items");
    // The digests describe files written for that save: saving again without them records none.
    loaded->save(dir_ / "again.snn");
    EXPECT_TRUE(load_index((dir_ / "again.snn").string())->side_files().empty());
    // Bad roles and duplicates are refused before anything is written.
    for (const std::string& role : {std::string(), std::string("two words"), std::string(32, 'r')}) {
        EXPECT_THROW(index->save(dir_ / "bad.snn", true, {{role, 1, 1}}), InvalidArgument) << role;
    }
    EXPECT_THROW(index->save(dir_ / "bad.snn", true, {{"ids", 1, 1}, {"ids", 2, 2}}), InvalidArgument);
    EXPECT_FALSE(fs::exists(dir_ / "bad.snn"));
}

TEST_F(FileTest, DamagedSideFileRecordsAreRejected) {
    const fs::path p = dir_ / "sides.snn";
    make_flat(Metric::L2, 20, 8, 7, 100)->save(p, true, {{"ids", 123, 7}, {"probes", 5, 9}});
    const Bytes good = test::read_bytes(p);
    const size_t e = entry_of(good, SectionType::SideFiles);
    const auto at = static_cast<size_t>(get<uint64_t>(good, e + kEntryOffset));
    // Each case rewrites the section and its checksum, so the record check itself is reached.
    auto damaged = [&](const std::function<void(Bytes&)>& edit) {
        Bytes b = good;
        edit(b);
        const auto size = static_cast<size_t>(get<uint64_t>(b, e + kEntrySize));
        put<uint32_t>(b, e + kEntryCrc, crc32c(b.data() + at, size));
        reseal(b);
        return b;
    };
    expect_rejected(damaged([&](Bytes& b) { b[at + 1] = ' '; }), "invalid role");
    expect_rejected(damaged([&](Bytes& b) { b[at] = 0; }), "invalid role");
    expect_rejected(damaged([&](Bytes& b) { std::fill(b.begin() + at, b.begin() + at + 32, 'x'); }), "invalid role");
    expect_rejected(damaged([&](Bytes& b) { std::copy(b.begin() + at, b.begin() + at + 32, b.begin() + at + 48); }),
                    "recorded twice");
    expect_rejected(damaged([&](Bytes& b) { put<uint64_t>(b, e + kEntrySize, 47); }), "partial record");
    // A flipped byte without a new checksum is a checksum mismatch, as in any section.
    Bytes flipped = good;
    flipped[at + 40] ^= 1;
    expect_rejected(flipped, "checksum mismatch");
}

// The golden fixtures (cpp/tests/data) are checked in test_fixtures.cpp.

// ------------------------------------------------------------ damaged and foreign files

TEST_F(FileTest, EmptyAndShortFilesAreRejected) {
    expect_rejected({}, "shorter than the 64-byte header");
    expect_rejected(Bytes(10, 0), "shorter than the 64-byte header");
    Bytes b = valid_image();
    b.resize(63);
    expect_rejected(b, "shorter than the 64-byte header");
}

TEST_F(FileTest, TruncatedFilesAreRejected) {
    const Bytes full = valid_image();
    const size_t ids = get<uint64_t>(full, entry_of(full, SectionType::Ids) + kEntryOffset);
    const size_t vecs = get<uint64_t>(full, entry_of(full, SectionType::Vectors) + kEntryOffset);
    // Inside the section table, right after it, inside each section, one byte short.
    for (size_t at : {kHeaderSize + 16, kHeaderSize + 64, ids + 3, vecs + 100, full.size() - 1}) {
        SCOPED_TRACE(at);
        expect_rejected(Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(at)), "truncated");
    }
}

TEST_F(FileTest, EveryTruncationIsRejected) {
    const Bytes full = valid_image();
    for (size_t len = 0; len < full.size(); ++len) {
        EXPECT_THROW(load_index(IndexFile::from_bytes(Bytes(full.begin(), full.begin() + len))), FileFormatError)
            << len;
    }
}

TEST_F(FileTest, ForeignFilesAreRejected) {
    // An Annoy-like file (raw floats, no magic), random bytes, a text file, a NumPy array.
    const std::vector<float> floats = test::random_vectors(256, 1, 3);
    Bytes annoy(floats.size() * 4);
    std::memcpy(annoy.data(), floats.data(), annoy.size());
    expect_rejected(annoy, "bad magic");
    std::mt19937_64 rng(11);
    Bytes noise(4096);
    for (auto& x : noise) x = static_cast<uint8_t>(rng());
    expect_rejected(noise, "bad magic");
    const std::string text = "id,vector\n1,\"[0.1, 0.2, 0.3]\"\n2,\"[0.4, 0.5, 0.6]\"\n3,\"[0.7, 0.8, 0.9]\"\n";
    expect_rejected(Bytes(text.begin(), text.end()), "bad magic");
    Bytes npy(128, ' ');
    std::memcpy(npy.data(), "\x93NUMPY\x01\x00", 8);
    expect_rejected(npy, "bad magic");
}

TEST_F(FileTest, NewerVersionAsksToUpgrade) {
    Bytes b = valid_image();
    put<uint32_t>(b, kVersionAt, kFormatVersion + 1);  // not resealed: checked before the checksum
    expect_rejected(b, "newer sparknn");
    expect_rejected(b, "upgrade sparknn");
    put<uint32_t>(b, kVersionAt, 0xFFFFFFFFu);
    expect_rejected(b, "upgrade sparknn");
    put<uint32_t>(b, kVersionAt, 0);
    reseal(b);
    expect_rejected(b, "format version 0");
}

TEST_F(FileTest, UnknownKindOrMetricIsRejected) {
    for (uint32_t kind : {0u, 4u, 99u}) {
        Bytes b = valid_image();
        put<uint32_t>(b, kKindAt, kind);
        reseal(b);
        expect_rejected(b, "unknown index kind " + std::to_string(kind));
    }
    for (uint32_t metric : {0u, 4u, 0xFFFFFFFFu}) {
        Bytes b = valid_image();
        put<uint32_t>(b, kMetricAt, metric);
        reseal(b);
        expect_rejected(b, "unknown metric " + std::to_string(metric));
    }
}

TEST_F(FileTest, HeaderChecksumCoversHeaderAndSectionTable) {
    const Bytes good = valid_image();
    const uint32_t n = get<uint32_t>(good, kSectionsAt);
    // Every header byte but the checksum itself, and every section table byte.
    for (size_t at = 0; at < kHeaderSize + n * kSectionEntrySize; ++at) {
        if (at < 8 || (at >= kVersionAt && at < kVersionAt + 4) || (at >= kHeaderCrcAt && at < kHeaderSize)) {
            continue;  // magic and version are checked before the checksum; the checksum itself
        }
        Bytes b = good;
        b[at] ^= 0x01;
        try {
            load_index(IndexFile::from_bytes(b));
            ADD_FAILURE() << "flipped byte " << at << " went unnoticed";
        } catch (const FileFormatError& e) {
            const std::string what = e.what();
            // Section count and table offset are range-checked before the checksum.
            const bool structural =
                (at >= kSectionsAt && at < kSectionsAt + 4) || (at >= kTableAt && at < kTableAt + 4);
            if (!structural) EXPECT_NE(what.find("header checksum mismatch"), std::string::npos) << at << ": " << what;
        }
    }
    Bytes b = good;
    b[kHeaderCrcAt] ^= 0x80;
    expect_rejected(b, "header checksum mismatch");
}

TEST_F(FileTest, SectionChecksumCatchesAFlippedByteInEachSection) {
    const Bytes good = valid_image();
    for (SectionType type : {SectionType::Ids, SectionType::Vectors}) {
        SCOPED_TRACE(section_name(type));
        const size_t e = entry_of(good, type);
        const uint64_t off = get<uint64_t>(good, e + kEntryOffset), size = get<uint64_t>(good, e + kEntrySize);
        for (uint64_t at : {off, off + size / 2, off + size - 1}) {
            Bytes b = good;
            b[at] ^= 0x04;
            expect_rejected(b, std::string("checksum mismatch in section"));
        }
    }
    // verify=false skips section checksums (structure is still validated): a
    // flipped vector byte then loads.
    Bytes b = good;
    b[get<uint64_t>(good, entry_of(good, SectionType::Vectors) + kEntryOffset) + 1] ^= 0x04;
    EXPECT_NO_THROW(load_index(IndexFile::from_bytes(b, /*verify_checksums=*/false)));
}

TEST_F(FileTest, FileSizeFieldMustMatch) {
    Bytes b = valid_image();
    put<uint64_t>(b, kFileSizeAt, b.size() + 64);
    reseal(b);
    expect_rejected(b, "truncated");
    put<uint64_t>(b, kFileSizeAt, b.size() - 64);
    reseal(b);
    expect_rejected(b, "trailing bytes");
}

TEST_F(FileTest, TrailingGarbageIsRejected) {
    Bytes b = valid_image();
    b.insert(b.end(), {'g', 'a', 'r', 'b', 'a', 'g', 'e'});
    expect_rejected(b, "trailing bytes");
}

TEST_F(FileTest, SectionBoundsAreChecked) {
    const Bytes good = valid_image();
    const size_t vecs = entry_of(good, SectionType::Vectors), ids = entry_of(good, SectionType::Ids);
    const uint64_t vec_off = get<uint64_t>(good, vecs + kEntryOffset);
    const uint64_t ids_off = get<uint64_t>(good, ids + kEntryOffset);
    struct Case {
        size_t field;
        uint64_t value;
        std::string needle;
    };
    const std::vector<Case> cases = {
        {vecs + kEntryOffset, good.size() + 64, "outside the file"},
        {vecs + kEntryOffset, uint64_t{1} << 63, "outside the file"},
        {vecs + kEntryOffset, vec_off + 8, "not 64-byte aligned"},
        {vecs + kEntryOffset, 64, "overlaps the header or the section table"},
        {vecs + kEntryOffset, 0, "overlaps the header or the section table"},
        {vecs + kEntrySize, std::numeric_limits<uint64_t>::max(), "outside the file"},
        {vecs + kEntrySize, good.size() - vec_off + 1, "outside the file"},
        {ids + kEntryOffset, vec_off, "overlap"},               // Ids inside Vectors
        {ids + kEntrySize, vec_off - ids_off + 64, "overlap"},  // Ids runs into Vectors
        {vecs + kEntrySize, 20 * 8 * 4 - 4, "Vectors section has"},
        {ids + kEntrySize, 20 * 8 - 8, "Ids section has"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.needle + " field " + std::to_string(c.field) + " = " + std::to_string(c.value));
        Bytes b = good;
        put<uint64_t>(b, c.field, c.value);
        reseal(b);
        expect_rejected(b, c.needle, /*verify=*/false);
    }
}

TEST_F(FileTest, SectionTableItselfIsChecked) {
    const Bytes good = valid_image();
    for (uint32_t n : {kMaxSections + 1, 0xFFFFFFFFu}) {
        Bytes b = good;
        put<uint32_t>(b, kSectionsAt, n);
        expect_rejected(b, "section count");
    }
    Bytes b = good;
    put<uint32_t>(b, kTableAt, 128);
    reseal(b);
    expect_rejected(b, "section table offset");
    // More entries than the table holds: the table then overlaps the first section.
    b = good;
    put<uint32_t>(b, kSectionsAt, get<uint32_t>(good, kSectionsAt) + 2);  // 64 more bytes of table
    reseal(b);
    expect_rejected(b, "overlaps the header or the section table", false);
    // A table longer than a (truncated) file.
    b = Bytes(good.begin(), good.begin() + 100);
    put<uint32_t>(b, kSectionsAt, 2);
    expect_rejected(b, "section table runs past the end");
}

TEST_F(FileTest, ImplausibleCountsAndDimensionsAreRejected) {
    struct Case {
        uint64_t dim, count;
        std::string needle;
    };
    const std::vector<Case> cases = {
        {0, 20, "dimension 0"},
        {(uint64_t{1} << 20) + 1, 20, "dimension"},
        {uint64_t{1} << 20, uint64_t{1} << 62, "more than a"},  // count * dim * 4 overflows
        {8, std::numeric_limits<uint64_t>::max(), "more than a"},
        {8, 21, "Ids section has"},  // count disagrees with the sections
        {9, 20, "Vectors section has"},
        {uint64_t{1} << 20, 20, "Vectors section has"},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.needle);
        Bytes b = valid_image();
        put<uint64_t>(b, kDimAt, c.dim);
        put<uint64_t>(b, kCountAt, c.count);
        reseal(b);
        expect_rejected(b, c.needle);
    }
    EXPECT_THROW(IndexFile::checked_mul(uint64_t{1} << 33, uint64_t{1} << 31), FileFormatError);
    EXPECT_EQ(IndexFile::checked_mul(uint64_t{1} << 32, uint64_t{1} << 31), uint64_t{1} << 63);
}

TEST_F(FileTest, DuplicateMissingAndUnknownSections) {
    const Bytes good = valid_image();
    Bytes b = good;
    put<uint32_t>(b, entry_of(good, SectionType::Vectors) + kEntryType, static_cast<uint32_t>(SectionType::Ids));
    reseal(b);
    expect_rejected(b, "appears twice");
    // A section type this version does not know is ignored (see FORMAT.md),
    // so renaming a required one makes it missing.
    for (SectionType type : {SectionType::Ids, SectionType::Vectors}) {
        b = good;
        put<uint32_t>(b, entry_of(good, type) + kEntryType, 777);
        reseal(b);
        expect_rejected(b, std::string("missing the ") + section_name(type) + " section");
    }
}

TEST_F(FileTest, NegativeIdsInAFileAreRejected) {
    Bytes b = valid_image();
    const size_t e = entry_of(b, SectionType::Ids);
    put<int64_t>(b, get<uint64_t>(b, e + kEntryOffset) + 8, -5);
    expect_rejected(b, "is negative", /*verify=*/false);
}

TEST_F(FileTest, LargestIdDoesNotOverflowLaterAdds) {
    FlatIndex index(2, Metric::L2);
    const float v[4] = {1, 2, 3, 4};
    const int64_t big[1] = {std::numeric_limits<int64_t>::max()};
    index.add(1, v, big);
    EXPECT_THROW(index.add(1, v + 2, nullptr), InvalidArgument);  // no automatic id left
    const int64_t small[1] = {5};
    index.add(1, v + 2, small);
    const fs::path p = dir_ / "big.snn";
    index.save(p);
    auto loaded = load_index(p.string());
    EXPECT_EQ(loaded->id_of(0), big[0]);
    EXPECT_THROW(loaded->add(1, v, nullptr), InvalidArgument);
}

// Every single-bit flip anywhere in a file is either rejected or (in bytes no
// checksum covers: alignment padding) harmless. With checksums off, nothing crashes.
TEST_F(FileTest, EveryFlippedByteIsDetectedOrHarmless) {
    const Bytes good = valid_image();
    const std::vector<float> queries = test::random_vectors(3, 8, 1);
    auto reference = load_index(IndexFile::from_bytes(good));
    reference->set_threads(1);
    const Results expected = search(*reference, queries, 4);
    size_t rejected = 0;
    for (size_t at = 0; at < good.size(); ++at) {
        Bytes b = good;
        b[at] ^= static_cast<uint8_t>(1u << (at % 8));
        try {
            auto index = load_index(IndexFile::from_bytes(b, true));
            index->set_threads(1);
            EXPECT_EQ(search(*index, queries, 4), expected) << "flipped byte " << at << " changed the answers";
        } catch (const FileFormatError&) {
            ++rejected;
        }
        try {
            auto index = load_index(IndexFile::from_bytes(b, false));
            index->set_threads(1);
            search(*index, queries, 4);
        } catch (const FileFormatError&) {
        }
    }
    EXPECT_GT(rejected, good.size() / 2);
}

}  // namespace
}  // namespace sparknn
