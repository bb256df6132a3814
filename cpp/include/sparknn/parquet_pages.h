// The pages of a Parquet column of dense vectors (list<float>, every row `dim`
// values, no null), decoded straight into a float32 [rows, dim] matrix, page by
// page. Arrow's reader builds list offsets and validity from the levels of every
// value, on one core per column chunk: 70k x 784 Fashion-MNIST took 0.5 s of a
// 2.3 s self-join. Here a page's levels are only checked against the shape the
// matrix implies, its values go where their position says, and the pages of a
// chunk can be decoded side by side.
//
// Narrow on purpose: anything else (a null, a row of another length, an encoding
// or a page kind this does not decode, a page that does not parse) answers
// `false`, and the caller reads the row group with Arrow, whose errors say what
// is wrong. Decompression and checksums stay with the caller (Arrow's codecs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparknn::parquet {

// Parquet's PageType and Encoding values (parquet.thrift).
enum PageType : int32_t { kDataPage = 0, kIndexPage = 1, kDictionaryPage = 2, kDataPageV2 = 3 };
enum Encoding : int32_t {
    kPlain = 0,
    kPlainDictionary = 2,
    kRle = 3,
    kBitPacked = 4,
    kRleDictionary = 8,
    kByteStreamSplit = 9,
};

// One page header (Thrift compact protocol) and where its page's bytes are.
struct PageHeader {
    int32_t type = -1;
    int32_t uncompressed_size = 0;
    int32_t compressed_size = 0;
    bool has_crc = false;
    uint32_t crc = 0;
    int32_t num_values = 0;  // levels in a data page (nulls included), values in a dictionary page
    int32_t encoding = -1;
    int32_t definition_level_encoding = -1;  // v1
    int32_t repetition_level_encoding = -1;  // v1
    int32_t num_nulls = 0;                   // v2
    int32_t num_rows = 0;                    // v2
    int32_t definition_levels_bytes = 0;     // v2: uncompressed, before the values
    int32_t repetition_levels_bytes = 0;     // v2
    bool is_compressed = true;               // v2: whether the values are
    int64_t offset = 0;                      // of the page's bytes (after its header) in the chunk
};

// The page header at the start of `data` (of `size` bytes); its `offset` is the
// header's own length (where the page's bytes start). False when the bytes do
// not start with a well-formed header.
bool read_page_header(const uint8_t* data, size_t size, PageHeader& page);

// The header of every page in a column chunk's bytes, in order. Returns false
// when the bytes are not a sequence of well-formed page headers whose pages
// fill the chunk exactly.
bool read_page_headers(const uint8_t* chunk, size_t size, std::vector<PageHeader>& pages);

// What a page of the column needs besides its own bytes.
struct DenseListColumn {
    int64_t dim = 0;                   // values of every row
    int32_t max_definition_level = 0;  // every value must be at it (no null list or element)
    int32_t max_repetition_level = 1;  // one level of lists
    const float* dictionary = nullptr;
    int64_t dictionary_size = 0;
};

// Decodes a data page whose first value is value `first_value` of the chunk
// (the values of the pages before it): its levels must put a row start exactly
// at the multiples of `dim`, and its values go to out[first_value ...]. `out`
// holds `out_size` floats (the row group's rows x dim).
// v1: `body` is the decompressed page (repetition levels, definition levels,
// values). v2: `levels` are the page's levels as stored, `values` its values
// decompressed. False when the page is not one this decodes (see above).
bool decode_page_v1(const DenseListColumn& column, const PageHeader& page, const uint8_t* body, size_t size,
                    int64_t first_value, float* out, int64_t out_size);
bool decode_page_v2(const DenseListColumn& column, const PageHeader& page, const uint8_t* levels, size_t levels_size,
                    const uint8_t* values, size_t values_size, int64_t first_value, float* out, int64_t out_size);

}  // namespace sparknn::parquet
