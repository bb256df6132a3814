// How an index stores its vectors. One enum for every kind, because its values
// are written into index files (the "storage" parameter): flat and hnsw keep
// float32, fp16 or bf16 rows; ivf keeps any of them per list, or compressed
// codes (sq8, pq). Values are part of the file format: never renumber.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sparknn {

enum class Storage : uint32_t {
    Float32 = 0,
    Sq8 = 1,       // ivf: one byte per value over the trained range
    Pq = 2,        // ivf: product quantisation, pq_m bytes per vector
    Float16 = 3,   // IEEE binary16: 11 significant bits, |x| <= 65504
    BFloat16 = 4,  // bfloat16: float32's range, 8 significant bits
};
inline constexpr uint32_t kMaxStorage = 4;

// "float32", "sq8", "pq", "fp16", "bf16" (aliases: "float", "flat", "float16",
// "half", "bfloat16"); throws InvalidArgument naming the choices.
Storage storage_from_string(const std::string& name);
const char* storage_name(Storage storage);

// Whether a storage keeps each vector as one row of values (flat and hnsw
// accept only these), and those values' size in bytes.
inline bool is_row_storage(Storage s) {
    return s == Storage::Float32 || s == Storage::Float16 || s == Storage::BFloat16;
}
inline bool is_half_storage(Storage s) { return s == Storage::Float16 || s == Storage::BFloat16; }
inline size_t row_value_bytes(Storage s) { return s == Storage::Float32 ? 4 : 2; }

}  // namespace sparknn
