// Parquet pages of a dense vector column, written here byte by byte (Thrift
// compact headers, hybrid RLE / bit-packed levels and indices) so each rule of
// the decoder is tested on its own; python/tests/test_vector_pages.py compares
// it with Arrow's reader on files Arrow writes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "sparknn/parquet_pages.h"

namespace sparknn::parquet {
namespace {

using Bytes = std::vector<uint8_t>;

void varint(Bytes& out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<uint8_t>(v | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<uint8_t>(v));
}

// Thrift compact structs: fields in increasing id order.
struct Thrift {
    Bytes out;
    std::vector<int16_t> last{0};
    void field(int16_t id, uint8_t type) {
        int16_t delta = static_cast<int16_t>(id - last.back());
        if (delta > 0 && delta <= 15) {
            out.push_back(static_cast<uint8_t>(delta << 4 | type));
        } else {
            out.push_back(type);
            varint(out, static_cast<uint64_t>((id << 1) ^ (id >> 15)));
        }
        last.back() = id;
    }
    void i32(int16_t id, int32_t v) {
        field(id, 5);
        varint(out, static_cast<uint32_t>((v << 1) ^ (v >> 31)));
    }
    void begin(int16_t id) {
        field(id, 12);
        last.push_back(0);
    }
    void end() {
        out.push_back(0);
        last.pop_back();
    }
};

Bytes header(int32_t type, size_t size, int32_t num_values, int32_t encoding, int v2_rep = -1, int v2_def = -1,
             bool statistics = false) {
    Thrift t;
    t.i32(1, type);
    t.i32(2, static_cast<int32_t>(size));
    t.i32(3, static_cast<int32_t>(size));
    if (type == kDataPage) {
        t.begin(5);
        t.i32(1, num_values);
        t.i32(2, encoding);
        t.i32(3, kRle);
        t.i32(4, kRle);
        if (statistics) {  // a statistics struct with a binary and a list: skipped
            t.begin(5);
            t.field(1, 8);
            t.out.insert(t.out.end(), {3, 'a', 'b', 'c'});
            t.field(2, 9);
            t.out.push_back(0x25);  // two i32
            t.out.insert(t.out.end(), {2, 4});
            t.end();
        }
        t.end();
    } else if (type == kDictionaryPage) {
        t.begin(7);
        t.i32(1, num_values);
        t.i32(2, encoding);
        t.end();
    } else {
        t.begin(8);
        t.i32(1, num_values);
        t.i32(2, 0);
        t.i32(3, num_values);
        t.i32(4, encoding);
        t.i32(5, v2_def);
        t.i32(6, v2_rep);
        t.end();
    }
    t.field(20, 6);  // a field of a newer writer: an i64
    varint(t.out, 99);
    t.out.push_back(0);
    return t.out;
}

// Values in the hybrid encoding: a bit-packed group of 8 for each 8 values.
Bytes packed(const std::vector<uint32_t>& values, int width) {
    Bytes out;
    size_t groups = (values.size() + 7) / 8;
    varint(out, groups << 1 | 1);
    Bytes bits(groups * static_cast<size_t>(width), 0);
    for (size_t i = 0; i < values.size(); ++i)
        for (int b = 0; b < width; ++b)
            if (values[i] >> b & 1) bits[(i * width + b) / 8] |= static_cast<uint8_t>(1 << ((i * width + b) % 8));
    out.insert(out.end(), bits.begin(), bits.end());
    return out;
}

Bytes run(uint32_t value, uint64_t n, int width) {
    Bytes out;
    varint(out, n << 1);
    for (int b = 0; b < (width + 7) / 8; ++b) out.push_back(static_cast<uint8_t>(value >> (8 * b)));
    return out;
}

Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

Bytes with_length(const Bytes& section) {
    Bytes out;
    for (int b = 0; b < 4; ++b) out.push_back(static_cast<uint8_t>(section.size() >> (8 * b)));
    return cat({out, section});
}

// Repetition levels of values [first, first + n) of rows of `dim`: bit-packed.
Bytes repetition(int64_t first, int64_t n, int64_t dim) {
    std::vector<uint32_t> levels;
    for (int64_t i = first; i < first + n; ++i) levels.push_back(i % dim == 0 ? 0 : 1);
    return packed(levels, 1);
}

Bytes floats(const std::vector<float>& v) {
    Bytes out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

DenseListColumn column_of(int64_t dim, const std::vector<float>* dictionary = nullptr) {
    DenseListColumn c;
    c.dim = dim;
    c.max_definition_level = 3;
    c.max_repetition_level = 1;
    if (dictionary) {
        c.dictionary = dictionary->data();
        c.dictionary_size = static_cast<int64_t>(dictionary->size());
    }
    return c;
}

PageHeader parse_one(const Bytes& head, const Bytes& body) {
    Bytes chunk = cat({head, body});
    std::vector<PageHeader> pages;
    EXPECT_TRUE(read_page_headers(chunk.data(), chunk.size(), pages));
    EXPECT_EQ(pages.size(), 1u);
    return pages.empty() ? PageHeader{} : pages[0];
}

TEST(ParquetPages, HeadersOfAChunkInOrderWithTheirBodies) {
    std::vector<float> dictionary = {0.5f, -1.0f, 7.0f};
    Bytes dict_body = floats(dictionary);
    Bytes data_body = Bytes(10, 0xab);
    Bytes chunk = cat({header(kDictionaryPage, dict_body.size(), 3, kPlain), dict_body,
                       header(kDataPage, data_body.size(), 6, kRleDictionary, -1, -1, true), data_body});
    std::vector<PageHeader> pages;
    ASSERT_TRUE(read_page_headers(chunk.data(), chunk.size(), pages));
    ASSERT_EQ(pages.size(), 2u);
    EXPECT_EQ(pages[0].type, kDictionaryPage);
    EXPECT_EQ(pages[0].num_values, 3);
    EXPECT_EQ(std::memcmp(chunk.data() + pages[0].offset, dict_body.data(), dict_body.size()), 0);
    EXPECT_EQ(pages[1].type, kDataPage);
    EXPECT_EQ(pages[1].num_values, 6);
    EXPECT_EQ(pages[1].encoding, kRleDictionary);
    EXPECT_EQ(pages[1].offset + 10, static_cast<int64_t>(chunk.size()));
    // one header at a time: its offset is its own length
    PageHeader one;
    ASSERT_TRUE(read_page_header(chunk.data() + pages[0].offset + 12, chunk.size() - pages[0].offset - 12, one));
    EXPECT_EQ(one.type, kDataPage);
    EXPECT_EQ(pages[0].offset + 12 + one.offset, pages[1].offset);
    EXPECT_FALSE(read_page_header(chunk.data() + pages[0].offset + 12, 3, one));  // cut short
    // A chunk cut short, or with bytes after its last page, is not read
    EXPECT_FALSE(read_page_headers(chunk.data(), chunk.size() - 1, pages));
    chunk.push_back(0);
    EXPECT_FALSE(read_page_headers(chunk.data(), chunk.size(), pages));
}

TEST(ParquetPages, RowsSplitAcrossPagesLandWhereTheirValuesBelong) {
    // 3 rows of 4: page 1 holds values 0..4 (row 0 and the first of row 1), page 2 the rest
    const int64_t dim = 4, rows = 3;
    std::vector<float> expected(rows * dim);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<float>(i) * 1.5f - 2.0f;
    std::vector<float> out(rows * dim, -99.0f);
    const DenseListColumn column = column_of(dim);
    int64_t first = 0;
    for (int64_t n : {5, 7}) {
        std::vector<float> values(expected.begin() + first, expected.begin() + first + n);
        Bytes body = cat({with_length(repetition(first, n, dim)), with_length(run(3, n, 2)), floats(values)});
        PageHeader page = parse_one(header(kDataPage, body.size(), static_cast<int32_t>(n), kPlain), body);
        ASSERT_TRUE(decode_page_v1(column, page, body.data(), body.size(), first, out.data(), rows * dim));
        first += n;
    }
    EXPECT_EQ(out, expected);
}

TEST(ParquetPages, DictionaryIndicesInRunsAndPacked) {
    const int64_t dim = 3;
    std::vector<float> dictionary = {10, 20, 30, 40, 50};
    // indices: a run of 4 twos, then 8 packed at width 3
    std::vector<uint32_t> tail = {0, 1, 2, 3, 4, 4, 3, 2};
    Bytes values = cat({Bytes{3}, run(2, 4, 3), packed(tail, 3)});
    Bytes levels = cat({repetition(0, 12, dim), run(3, 12, 2)});
    Bytes rep = repetition(0, 12, dim);
    PageHeader page = parse_one(header(kDataPageV2, values.size() + levels.size(), 12, kRleDictionary,
                                       static_cast<int>(rep.size()), static_cast<int>(levels.size() - rep.size())),
                                cat({levels, values}));
    std::vector<float> out(12);
    ASSERT_TRUE(decode_page_v2(column_of(dim, &dictionary), page, levels.data(), levels.size(), values.data(),
                               values.size(), 0, out.data(), 12));
    std::vector<float> expected = {30, 30, 30, 30, 10, 20, 30, 40, 50, 50, 40, 30};
    EXPECT_EQ(out, expected);
    // an index past the dictionary's end
    std::vector<float> short_dictionary = {10, 20, 30, 40};
    EXPECT_FALSE(decode_page_v2(column_of(dim, &short_dictionary), page, levels.data(), levels.size(), values.data(),
                                values.size(), 0, out.data(), 12));
    // no dictionary at all
    EXPECT_FALSE(decode_page_v2(column_of(dim), page, levels.data(), levels.size(), values.data(), values.size(), 0,
                                out.data(), 12));
}

TEST(ParquetPages, ByteStreamSplitValues) {
    const int64_t dim = 2;
    std::vector<float> expected = {1.25f, -3.5f, 1e-3f, 6e7f};
    Bytes plain = floats(expected), split(plain.size());
    for (size_t i = 0; i < expected.size(); ++i)
        for (size_t b = 0; b < 4; ++b) split[b * expected.size() + i] = plain[i * 4 + b];
    Bytes body = cat({with_length(repetition(0, 4, dim)), with_length(run(3, 4, 2)), split});
    PageHeader page = parse_one(header(kDataPage, body.size(), 4, kByteStreamSplit), body);
    std::vector<float> out(4);
    ASSERT_TRUE(decode_page_v1(column_of(dim), page, body.data(), body.size(), 0, out.data(), 4));
    EXPECT_EQ(out, expected);
}

// A well-formed page of 2 rows of 3 values, with one thing changed.
struct Case {
    const char* what;
    Bytes rep, def;
    int32_t num_values = 6;
    int64_t first = 0, out_size = 6;
    int32_t encoding = kPlain;
    size_t values = 6;
};

TEST(ParquetPages, PagesThatAreNotDenseRowsOfDimAreLeftToArrow) {
    const int64_t dim = 3;
    std::vector<Case> cases = {
        {"a null element", repetition(0, 6, dim), packed({3, 3, 2, 3, 3, 3}, 2)},
        {"an empty list", cat({packed({0, 1, 1, 0}, 1), run(1, 2, 1)}), packed({3, 3, 3, 1, 3, 3}, 2)},
        {"rows of 2 and 4", packed({0, 1, 0, 1, 1, 1}, 1), run(3, 6, 2)},
        {"one row of 6 in runs", cat({run(0, 1, 1), run(1, 5, 1)}), run(3, 6, 2)},
        {"a level above the maximum", repetition(0, 6, dim), run(4, 6, 3)},
        {"a run of row starts", cat({run(0, 2, 1), packed({1, 1, 0, 1}, 1)}), run(3, 6, 2)},
        {"levels that end early", repetition(0, 4, dim), run(3, 6, 2)},
        {"values that end early", repetition(0, 6, dim), run(3, 6, 2), 6, 0, 6, kPlain, 5},
        {"an encoding not decoded here", repetition(0, 6, dim), run(3, 6, 2), 6, 0, 6, 5},
        {"past the matrix's end", repetition(3, 6, dim), run(3, 6, 2), 6, 3, 6},
        {"a first value not at a row start for its levels", repetition(0, 6, dim), run(3, 6, 2), 6, 1, 7},
        {"a bit-packed run of no groups", Bytes{1, 0}, run(3, 6, 2)},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        std::vector<float> values(c.values, 1.0f);
        Bytes body = cat({with_length(c.rep), with_length(c.def), floats(values)});
        PageHeader page = parse_one(header(kDataPage, body.size(), c.num_values, c.encoding), body);
        std::vector<float> out(static_cast<size_t>(c.out_size));
        EXPECT_FALSE(decode_page_v1(column_of(dim), page, body.data(), body.size(), c.first, out.data(), c.out_size));
    }
    // the same page unchanged decodes (the cases above fail for their one reason)
    Bytes body = cat({with_length(repetition(0, 6, dim)), with_length(run(3, 6, 2)), floats(std::vector<float>(6))});
    PageHeader page = parse_one(header(kDataPage, body.size(), 6, kPlain), body);
    std::vector<float> out(6);
    EXPECT_TRUE(decode_page_v1(column_of(dim), page, body.data(), body.size(), 0, out.data(), 6));
    // a v1 page given to the v2 decoder, and a v2 page with nulls
    EXPECT_FALSE(decode_page_v2(column_of(dim), page, body.data(), 0, body.data(), body.size(), 0, out.data(), 6));
}

TEST(ParquetPages, MangledBytesAreRefusedOrDecodedNeverReadPastTheirEnd) {
    // Every byte of a valid chunk flipped in turn, and random cuts: no read out of
    // bounds (ASan in CI) and no page decodes to more values than it holds.
    const int64_t dim = 4;
    std::vector<float> dictionary = {1, 2, 3};
    std::vector<uint32_t> indices = {0, 1, 2, 0, 1, 2, 0, 1};
    Bytes values = cat({Bytes{2}, packed(indices, 2)});
    Bytes body = cat({with_length(repetition(0, 8, dim)), with_length(run(3, 8, 2)), values});
    Bytes dict_body = floats(dictionary);
    Bytes chunk = cat({header(kDictionaryPage, dict_body.size(), 3, kPlain), dict_body,
                       header(kDataPage, body.size(), 8, kRleDictionary), body});
    std::mt19937 rng(7);
    for (size_t at = 0; at < chunk.size(); ++at) {
        for (uint8_t flip : {0x01, 0x80, 0xff}) {
            Bytes mangled = chunk;
            mangled[at] ^= flip;
            size_t cut = rng() % (mangled.size() + 1);
            for (size_t size : {mangled.size(), cut}) {
                Bytes exact(mangled.begin(), mangled.begin() + static_cast<long>(size));  // ASan sees the end
                std::vector<PageHeader> pages;
                if (!read_page_headers(exact.data(), exact.size(), pages)) continue;
                std::vector<float> out(8);
                int64_t first = 0;
                for (const PageHeader& page : pages) {
                    if (page.type != kDataPage) continue;
                    Bytes own(exact.begin() + page.offset, exact.begin() + page.offset + page.compressed_size);
                    if (decode_page_v1(column_of(dim, &dictionary), page, own.data(), own.size(), first, out.data(), 8))
                        first += page.num_values;
                }
                EXPECT_LE(first, 8);
            }
        }
    }
}

}  // namespace
}  // namespace sparknn::parquet
