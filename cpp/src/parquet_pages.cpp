// Parquet page headers and the data pages of a dense vector column (see
// parquet_pages.h). Levels and dictionary indices are in Parquet's RLE /
// bit-packed hybrid encoding: runs of one repeated value, or groups of 8 values
// packed `width` bits each, least significant bit first.
#include "sparknn/parquet_pages.h"

#include <cstring>
#include <utility>

#include "thrift_compact.h"

namespace sparknn::parquet {
namespace {

using thrift::CompactReader;

bool read_i32(CompactReader& in, uint8_t type, int32_t& value) { return type == thrift::kI32 && in.i32(value); }

bool read_bool(uint8_t type, bool& value) {
    if (type != thrift::kTrue && type != thrift::kFalse) return false;
    value = type == thrift::kTrue;
    return true;
}

bool read_data_page_header(CompactReader& in, PageHeader& page) {
    return thrift::read_struct(in, [&](int16_t id, uint8_t type) {
        switch (id) {
            case 1:
                return read_i32(in, type, page.num_values);
            case 2:
                return read_i32(in, type, page.encoding);
            case 3:
                return read_i32(in, type, page.definition_level_encoding);
            case 4:
                return read_i32(in, type, page.repetition_level_encoding);
            default:
                return in.skip(type, 1);  // statistics
        }
    });
}

bool read_dictionary_page_header(CompactReader& in, PageHeader& page) {
    return thrift::read_struct(in, [&](int16_t id, uint8_t type) {
        switch (id) {
            case 1:
                return read_i32(in, type, page.num_values);
            case 2:
                return read_i32(in, type, page.encoding);
            default:
                return in.skip(type, 1);  // is_sorted
        }
    });
}

bool read_data_page_header_v2(CompactReader& in, PageHeader& page) {
    return thrift::read_struct(in, [&](int16_t id, uint8_t type) {
        switch (id) {
            case 1:
                return read_i32(in, type, page.num_values);
            case 2:
                return read_i32(in, type, page.num_nulls);
            case 3:
                return read_i32(in, type, page.num_rows);
            case 4:
                return read_i32(in, type, page.encoding);
            case 5:
                return read_i32(in, type, page.definition_levels_bytes);
            case 6:
                return read_i32(in, type, page.repetition_levels_bytes);
            case 7:
                return read_bool(type, page.is_compressed);
            default:
                return in.skip(type, 1);  // statistics
        }
    });
}

// One page header at the start of `data`; `header_size` its bytes.
bool read_one_header(const uint8_t* data, size_t size, PageHeader& page, size_t& header_size) {
    CompactReader in(data, size);
    bool has_type = false, has_sizes[2] = {false, false}, has_kind_header = false;
    bool ok = thrift::read_struct(in, [&](int16_t id, uint8_t type) {
        switch (id) {
            case 1:
                return has_type = read_i32(in, type, page.type);
            case 2:
                return has_sizes[0] = read_i32(in, type, page.uncompressed_size);
            case 3:
                return has_sizes[1] = read_i32(in, type, page.compressed_size);
            case 4: {
                int32_t crc;
                if (!read_i32(in, type, crc)) return false;
                page.has_crc = true;
                page.crc = static_cast<uint32_t>(crc);
                return true;
            }
            case 5:
                if (type != thrift::kStruct || page.type != kDataPage) return false;
                return has_kind_header = read_data_page_header(in, page);
            case 7:
                if (type != thrift::kStruct || page.type != kDictionaryPage) return false;
                return has_kind_header = read_dictionary_page_header(in, page);
            case 8:
                if (type != thrift::kStruct || page.type != kDataPageV2) return false;
                return has_kind_header = read_data_page_header_v2(in, page);
            default:
                return in.skip(type, 1);  // the index page's header, fields of newer writers
        }
    });
    header_size = in.consumed();
    if (!ok || !has_type || !has_sizes[0] || !has_sizes[1]) return false;
    // what Arrow's reader refuses in a header, refused here too (its error then names it)
    if (page.compressed_size < 0 || page.uncompressed_size < 0 || page.num_values < 0) return false;
    if (page.type == kDataPageV2 && (page.num_rows < 0 || page.num_nulls < 0 || page.num_nulls > page.num_values ||
                                     page.definition_levels_bytes < 0 || page.repetition_levels_bytes < 0))
        return false;
    return page.type == kIndexPage || has_kind_header;
}

// Value i of `count` values packed `width` bits each in bytes [data, data + size).
inline uint32_t unpack(const uint8_t* data, size_t size, int width, int64_t i) {
    uint64_t bit = static_cast<uint64_t>(i) * static_cast<uint64_t>(width);
    size_t byte = bit >> 3;
    uint64_t window = 0;
    if (byte + 8 <= size) {
        std::memcpy(&window, data + byte, 8);
    } else if (byte < size) {
        std::memcpy(&window, data + byte, size - byte);
    }
    uint64_t mask = width == 32 ? 0xffffffffull : (1ull << width) - 1;
    return static_cast<uint32_t>((window >> (bit & 7)) & mask);
}

// out[i] = dictionary[index i] for n indices packed W bits each, in groups of
// 8 (W bytes): W a constant, each index a shift of an 8-byte load; a group too
// near the buffer's end for those loads is copied out first. False when an
// index is past the dictionary.
template <int W>
bool gather_packed_width(const uint8_t* data, size_t size, int64_t n, const float* dictionary, uint64_t entries,
                         float* out) {
    constexpr uint64_t mask = W == 32 ? 0xffffffffull : (1ull << W) - 1;
    constexpr size_t reach = (7 * W) / 8 + 8;  // bytes a group's loads read from its start
    uint64_t bad = 0;
    auto index = [&](const uint8_t* group, int i) {
        uint64_t window;
        std::memcpy(&window, group + (i * W) / 8, 8);
        uint64_t at = (window >> ((i * W) % 8)) & mask;
        bad |= at >= entries;
        return at < entries ? at : 0;
    };
    for (int64_t g = 0; g * 8 < n; ++g) {
        const uint8_t* group = data + g * W;
        uint8_t padded[W + 8] = {};
        const size_t start = static_cast<size_t>(g) * W;
        if (start + reach > size) {
            std::memcpy(padded, group, size - start < W ? size - start : W);
            group = padded;
        }
        float* to = out + g * 8;
        if (n - g * 8 >= 8) {
            for (int i = 0; i < 8; ++i) to[i] = dictionary[index(group, i)];
        } else {
            for (int i = 0; i < n - g * 8; ++i) to[i] = dictionary[index(group, i)];
        }
    }
    return !bad;
}

template <int... W>
bool gather_packed_any(int width, const uint8_t* data, size_t size, int64_t n, const float* dictionary,
                       uint64_t entries, float* out, std::integer_sequence<int, W...>) {
    bool ok = false;
    ((width == W + 1 ? (ok = gather_packed_width<W + 1>(data, size, n, dictionary, entries, out), true) : false) ||
     ...);
    return ok;
}

bool gather_packed(int width, const uint8_t* data, size_t size, int64_t n, const float* dictionary, uint64_t entries,
                   float* out) {
    return gather_packed_any(width, data, size, n, dictionary, entries, out, std::make_integer_sequence<int, 32>{});
}

// Walks `count` values of a hybrid-encoded stream: on_run(value, n) for a run
// of one value, on_packed(data, size, n) for n bit-packed values. False when
// the stream is malformed or ends early, or a callback answers false.
template <class OnRun, class OnPacked>
bool hybrid_runs(const uint8_t* p, size_t size, int width, int64_t count, OnRun on_run, OnPacked on_packed) {
    const size_t value_bytes = (static_cast<size_t>(width) + 7) / 8;
    size_t at = 0;
    while (count > 0) {
        CompactReader in(p + at, size - at);  // only for its varint
        uint64_t header;
        if (!in.varint(header)) return false;
        at += in.consumed();
        const size_t left = size - at;
        if (header & 1) {  // bit-packed: header >> 1 groups of 8 values, `width` >= 1 bytes each
            const uint64_t groups = header >> 1;
            if (width == 0 || groups == 0 || groups > left / static_cast<size_t>(width)) return false;
            const size_t bytes = groups * static_cast<size_t>(width);
            const int64_t n = groups * 8 < static_cast<uint64_t>(count) ? static_cast<int64_t>(groups * 8) : count;
            if (!on_packed(p + at, bytes, n)) return false;
            count -= n;
            at += bytes;
        } else {  // a run of header >> 1 copies of one value
            const uint64_t repeats = header >> 1;
            if (repeats == 0 || value_bytes > left) return false;
            uint32_t value = 0;
            for (size_t b = 0; b < value_bytes; ++b) value |= static_cast<uint32_t>(p[at + b]) << (8 * b);
            if (width < 32 && (value >> width)) return false;
            const int64_t n = repeats < static_cast<uint64_t>(count) ? static_cast<int64_t>(repeats) : count;
            if (!on_run(value, n)) return false;
            count -= n;
            at += value_bytes;
        }
    }
    return true;
}

int bit_width(int32_t max_level) {
    int width = 0;
    while ((1ll << width) <= max_level) ++width;
    return width;
}

// Repetition levels of values first_value.. that start a row exactly at the
// multiples of dim: 0 there, max elsewhere.
bool check_repetition(const uint8_t* p, size_t size, const DenseListColumn& column, int64_t first_value,
                      int64_t count) {
    const int32_t max = column.max_repetition_level;
    const int64_t dim = column.dim;
    int64_t col = first_value % dim;  // position within its row of the next value
    auto on_run = [&](uint32_t value, int64_t n) {
        if (dim == 1) return value == 0;
        if (value == 0) {
            if (n != 1 || col != 0) return false;
            col = 1;
            return true;
        }
        if (static_cast<int32_t>(value) != max || col == 0 || col + n > dim) return false;
        col = (col + n) % dim;
        return true;
    };
    auto on_packed = [&](const uint8_t* data, size_t bytes, int64_t n) {
        int width = bit_width(max);
        for (int64_t i = 0; i < n; ++i) {
            uint32_t want = col == 0 ? 0u : static_cast<uint32_t>(max);
            if (unpack(data, bytes, width, i) != want) return false;
            if (++col == dim) col = 0;
        }
        return true;
    };
    return hybrid_runs(p, size, bit_width(max), count, on_run, on_packed);
}

// Definition levels all at the maximum: no null list, no null element.
bool check_definition(const uint8_t* p, size_t size, int32_t max, int64_t count) {
    int width = bit_width(max);
    auto on_run = [&](uint32_t value, int64_t) { return static_cast<int32_t>(value) == max; };
    auto on_packed = [&](const uint8_t* data, size_t bytes, int64_t n) {
        for (int64_t i = 0; i < n; ++i)
            if (static_cast<int32_t>(unpack(data, bytes, width, i)) != max) return false;
        return true;
    };
    return hybrid_runs(p, size, width, count, on_run, on_packed);
}

bool decode_values(const DenseListColumn& column, int32_t encoding, const uint8_t* p, size_t size, int64_t count,
                   float* out) {
    const size_t bytes = static_cast<size_t>(count) * sizeof(float);
    switch (encoding) {
        case kPlain:
            if (size < bytes) return false;
            std::memcpy(out, p, bytes);
            return true;
        case kByteStreamSplit: {  // byte b of value i at p[b * count + i]
            if (size != bytes) return false;
            for (int64_t i = 0; i < count; ++i) {
                uint8_t v[4] = {p[i], p[count + i], p[2 * count + i], p[3 * count + i]};
                std::memcpy(out + i, v, 4);
            }
            return true;
        }
        case kPlainDictionary:
        case kRleDictionary: {
            if (count == 0) return true;
            if (size < 1 || p[0] > 32 || column.dictionary == nullptr) return false;
            const int width = p[0];
            const float* dictionary = column.dictionary;
            const uint64_t entries = static_cast<uint64_t>(column.dictionary_size);
            float* next = out;
            auto on_run = [&](uint32_t index, int64_t n) {
                if (index >= entries) return false;
                float value = dictionary[index];
                for (int64_t i = 0; i < n; ++i) next[i] = value;
                next += n;
                return true;
            };
            auto on_packed = [&](const uint8_t* data, size_t packed, int64_t n) {
                bool in_range = gather_packed(width, data, packed, n, dictionary, entries, next);
                next += n;
                return in_range;
            };
            if (width == 0) return entries > 0 && on_run(0, count);
            return hybrid_runs(p + 1, size - 1, width, count, on_run, on_packed);
        }
        default:
            return false;
    }
}

bool fits(const DenseListColumn& column, int64_t first_value, int64_t count, int64_t out_size) {
    return column.dim > 0 && column.max_repetition_level == 1 && column.max_definition_level >= 1 && first_value >= 0 &&
           count >= 0 && first_value <= out_size && count <= out_size - first_value;
}

// A v1 level section: a 4-byte little-endian length, then that many bytes.
bool level_section(const uint8_t*& p, size_t& size, const uint8_t*& section, size_t& section_size) {
    if (size < 4) return false;
    uint32_t length = static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                      static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
    if (length > size - 4) return false;
    section = p + 4;
    section_size = length;
    p += 4 + length;
    size -= 4 + static_cast<size_t>(length);
    return true;
}

}  // namespace

bool read_page_header(const uint8_t* data, size_t size, PageHeader& page) {
    size_t header_size = 0;
    page = PageHeader{};
    if (!read_one_header(data, size, page, header_size)) return false;
    page.offset = static_cast<int64_t>(header_size);
    return true;
}

bool read_page_headers(const uint8_t* chunk, size_t size, std::vector<PageHeader>& pages) {
    pages.clear();
    size_t at = 0;
    while (at < size) {
        PageHeader page;
        size_t header_size = 0;
        if (!read_one_header(chunk + at, size - at, page, header_size)) return false;
        at += header_size;
        if (static_cast<size_t>(page.compressed_size) > size - at) return false;
        page.offset = static_cast<int64_t>(at);
        at += static_cast<size_t>(page.compressed_size);
        pages.push_back(page);
    }
    return !pages.empty();
}

bool decode_page_v1(const DenseListColumn& column, const PageHeader& page, const uint8_t* body, size_t size,
                    int64_t first_value, float* out, int64_t out_size) {
    const int64_t count = page.num_values;
    if (page.type != kDataPage || !fits(column, first_value, count, out_size)) return false;
    if (page.repetition_level_encoding != kRle || page.definition_level_encoding != kRle) return false;
    const uint8_t *repetition, *definition;
    size_t repetition_size, definition_size;
    if (!level_section(body, size, repetition, repetition_size) ||
        !level_section(body, size, definition, definition_size))
        return false;
    return check_repetition(repetition, repetition_size, column, first_value, count) &&
           check_definition(definition, definition_size, column.max_definition_level, count) &&
           decode_values(column, page.encoding, body, size, count, out + first_value);
}

bool decode_page_v2(const DenseListColumn& column, const PageHeader& page, const uint8_t* levels, size_t levels_size,
                    const uint8_t* values, size_t values_size, int64_t first_value, float* out, int64_t out_size) {
    const int64_t count = page.num_values;
    if (page.type != kDataPageV2 || page.num_nulls != 0 || !fits(column, first_value, count, out_size)) return false;
    if (page.repetition_levels_bytes < 0 || page.definition_levels_bytes < 0 ||
        levels_size !=
            static_cast<size_t>(page.repetition_levels_bytes) + static_cast<size_t>(page.definition_levels_bytes))
        return false;
    const size_t repetition_size = static_cast<size_t>(page.repetition_levels_bytes);
    return check_repetition(levels, repetition_size, column, first_value, count) &&
           check_definition(levels + repetition_size, levels_size - repetition_size, column.max_definition_level,
                            count) &&
           decode_values(column, page.encoding, values, values_size, count, out + first_value);
}

}  // namespace sparknn::parquet
