// libFuzzer target: arbitrary bytes as a Parquet column chunk of dense vectors.
// The first two bytes choose the rows' length (1-16) and the maximum definition
// level (1-4); the rest is the chunk. Its page headers are read, a PLAIN
// dictionary page taken as the dictionary, and every data page decoded (as its
// page version says, its levels and values as stored) one after another into a
// matrix: any input must be refused or decoded within the matrix, never read or
// written out of bounds (ASan+UBSan), never crash.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "sparknn/parquet_pages.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace sparknn::parquet;
    if (size < 2) return 0;
    DenseListColumn column;
    column.dim = 1 + data[0] % 16;
    column.max_definition_level = 1 + data[1] % 4;
    const uint8_t* chunk = data + 2;
    const size_t chunk_size = size - 2;
    std::vector<PageHeader> pages;
    if (!read_page_headers(chunk, chunk_size, pages)) return 0;
    std::vector<float> dictionary, out(static_cast<size_t>(column.dim) * 64);
    int64_t first = 0;
    for (const PageHeader& page : pages) {
        if (page.offset < 0 ||
            static_cast<size_t>(page.offset) + static_cast<size_t>(page.compressed_size) > chunk_size)
            std::abort();  // read_page_headers promised pages within the chunk
        const uint8_t* body = chunk + page.offset;
        const size_t body_size = static_cast<size_t>(page.compressed_size);
        if (page.type == kDictionaryPage) {
            dictionary.assign(body_size / 4, 0.0f);
            if (!dictionary.empty()) std::memcpy(dictionary.data(), body, dictionary.size() * 4);
            column.dictionary = dictionary.data();
            column.dictionary_size = static_cast<int64_t>(dictionary.size());
            continue;
        }
        bool ok = false;
        if (page.type == kDataPage) {
            ok = decode_page_v1(column, page, body, body_size, first, out.data(), static_cast<int64_t>(out.size()));
        } else if (page.type == kDataPageV2) {
            size_t levels = static_cast<size_t>(page.repetition_levels_bytes) + page.definition_levels_bytes;
            if (levels <= body_size)
                ok = decode_page_v2(column, page, body, levels, body + levels, body_size - levels, first, out.data(),
                                    static_cast<int64_t>(out.size()));
        }
        if (ok) first += page.num_values;
        if (first > static_cast<int64_t>(out.size())) std::abort();  // decoded past the matrix
    }
    return 0;
}
