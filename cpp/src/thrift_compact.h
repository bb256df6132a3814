// A bounds-checked reader of Thrift's compact protocol, enough for Parquet's
// page headers: integers, booleans, and skipping any other field (nested
// structs, lists, maps, binaries) a newer writer may add. Every read answers
// false on bytes that run out or do not parse; nothing is trusted.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparknn::thrift {

enum Type : uint8_t {
    kStop = 0,
    kTrue = 1,
    kFalse = 2,
    kByte = 3,
    kI16 = 4,
    kI32 = 5,
    kI64 = 6,
    kDouble = 7,
    kBinary = 8,
    kList = 9,
    kSet = 10,
    kMap = 11,
    kStruct = 12,
};

class CompactReader {
  public:
    CompactReader(const uint8_t* data, size_t size) : p_(data), begin_(data), end_(data + size) {}

    size_t consumed() const { return static_cast<size_t>(p_ - begin_); }

    bool varint(uint64_t& value) {
        value = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (p_ == end_) return false;
            uint8_t byte = *p_++;
            value |= static_cast<uint64_t>(byte & 0x7f) << shift;
            if (!(byte & 0x80)) return true;
        }
        return false;  // longer than 10 bytes
    }

    bool i64(int64_t& value) {
        uint64_t raw;
        if (!varint(raw)) return false;
        value = static_cast<int64_t>(raw >> 1) ^ -static_cast<int64_t>(raw & 1);  // zigzag
        return true;
    }

    bool i32(int32_t& value) {
        int64_t wide;
        if (!i64(wide) || wide < INT32_MIN || wide > INT32_MAX) return false;
        value = static_cast<int32_t>(wide);
        return true;
    }

    // A field's header: `type` kStop at the end of a struct. `last` is the
    // previous field's id (ids are stored as deltas).
    bool field(int16_t& last, int16_t& id, uint8_t& type) {
        if (p_ == end_) return false;
        uint8_t byte = *p_++;
        type = byte & 0x0f;
        if (type == kStop) return true;
        uint8_t delta = byte >> 4;
        if (delta) {
            id = static_cast<int16_t>(last + delta);
        } else {
            int32_t wide;
            if (!i32(wide) || wide < INT16_MIN || wide > INT16_MAX) return false;
            id = static_cast<int16_t>(wide);
        }
        last = id;
        return true;
    }

    // Skips a value of `type` (a field's, or an element's when `element`:
    // booleans in lists take a byte, in fields none).
    bool skip(uint8_t type, int depth, bool element = false) {
        if (depth > kMaxDepth) return false;
        switch (type) {
            case kTrue:
            case kFalse:
                return !element || advance(1);
            case kByte:
                return advance(1);
            case kI16:
            case kI32:
            case kI64: {
                uint64_t ignored;
                return varint(ignored);
            }
            case kDouble:
                return advance(8);
            case kBinary: {
                uint64_t length;
                return varint(length) && advance(length);
            }
            case kList:
            case kSet: {
                if (p_ == end_) return false;
                uint8_t byte = *p_++;
                uint64_t count = byte >> 4;
                if (count == 15 && !varint(count)) return false;
                for (uint64_t i = 0; i < count; ++i)
                    if (!skip(byte & 0x0f, depth + 1, true)) return false;
                return true;
            }
            case kMap: {
                uint64_t count;
                if (!varint(count)) return false;
                if (count == 0) return true;
                if (p_ == end_) return false;
                uint8_t types = *p_++;
                for (uint64_t i = 0; i < count; ++i)
                    if (!skip(types >> 4, depth + 1, true) || !skip(types & 0x0f, depth + 1, true)) return false;
                return true;
            }
            case kStruct: {
                int16_t last = 0, id = 0;
                for (;;) {
                    uint8_t field_type;
                    if (!field(last, id, field_type)) return false;
                    if (field_type == kStop) return true;
                    if (!skip(field_type, depth + 1)) return false;
                }
            }
            default:
                return false;
        }
    }

  private:
    static constexpr int kMaxDepth = 32;  // a crafted header nests no deeper than this

    bool advance(uint64_t bytes) {
        if (bytes > static_cast<uint64_t>(end_ - p_)) return false;
        p_ += bytes;
        return true;
    }

    const uint8_t* p_;
    const uint8_t* begin_;
    const uint8_t* end_;
};

// Reads a struct field by field: on_field(reader, id, type) reads or skips the
// field's value and answers whether that went well.
template <class OnField>
bool read_struct(CompactReader& in, OnField on_field) {
    int16_t last = 0, id = 0;
    for (;;) {
        uint8_t type;
        if (!in.field(last, id, type)) return false;
        if (type == kStop) return true;
        if (!on_field(id, type)) return false;
    }
}

}  // namespace sparknn::thrift
