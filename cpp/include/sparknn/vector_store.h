// The stored vectors of a flat or hnsw index, one row per label, in the
// index's storage: float32 as given, or 16-bit (fp16 / bf16), half the memory
// and file size, rounded to nearest even when added and widened to float32
// when read (exactly: every 16-bit value is a float32). A loaded store views
// its file section without a copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "sparknn/buffer.h"
#include "sparknn/distance.h"
#include "sparknn/file.h"
#include "sparknn/row_block.h"
#include "sparknn/storage.h"

namespace sparknn {

// Throws InvalidArgument naming the first value of rows x [n, dim] that
// `storage` cannot hold (fp16: |v| >= 65520 would become infinite; bf16:
// beyond float32's largest), or, for fp16, the first row too small for it: one
// whose values below fp16's normal range (2^-14, about 6.1e-5; subnormals keep
// a fixed step of 2^-24 and values below 2^-25 become 0) would move it, once
// rounded, by more than 1% of its norm. Rows within the normal range move by at
// most 2^-11 of their norm, so only rows of tiny norm are refused (never a unit
// row, as cosine stores). bf16 has float32's exponent range and keeps
// subnormals, so it needs no such check. A no-op for the other storages. `what`
// names the rows in the message ("vector").
void check_storage_range(Storage storage, size_t n, size_t dim, const float* x, const char* what, int threads);

// The kernels of a 16-bit storage (fp16 or bf16) at the SIMD level in use;
// looked up per call, since the level may be lowered while an index lives.
inline const HalfKernels& half_kernels(Storage storage) {
    return storage == Storage::BFloat16 ? kernels().bf16 : kernels().fp16;
}

class VectorStore {
  public:
    // Throws InvalidArgument unless `storage` keeps rows (float32, fp16, bf16).
    VectorStore(size_t dim, Storage storage);

    Storage storage() const { return storage_; }
    size_t rows() const { return (storage_ == Storage::Float32 ? f32_.size() : u16_.size()) / dim_; }

    // Keeps the block's rows as the store's, in place (float32 and empty only; the block
    // shared, not copied: a later append copies them first, as it copies a mapped file's).
    void adopt(const std::shared_ptr<RowBlock>& block);
    // Appends n rows (checked by check_storage_range first); truncate drops rows from the end.
    void append(size_t n, const float* x);
    void truncate(size_t rows);

    // The rows in place: float32 (null unless the storage is float32) or 16-bit (null unless half).
    const float* f32() const { return storage_ == Storage::Float32 ? f32_.data() : nullptr; }
    const uint16_t* u16() const { return storage_ == Storage::Float32 ? nullptr : u16_.data(); }

    // Rows [begin, begin + count) as float32: in place (float32) or decoded into scratch [count, dim].
    const float* rows(size_t begin, size_t count, float* scratch) const;
    // Rows [begin, begin + count), or the rows of n labels, decoded into out.
    void decode(size_t begin, size_t count, float* out) const;
    void gather(size_t n, const int64_t* labels, float* out) const;

    // The "storage" param and the rows' section (Vectors or Vectors16).
    void save(FileWriter& writer) const;
    // The storage a file declares (absent, as in version 1: float32); fails on
    // anything but a row storage.
    static Storage storage_in(const IndexFile& file);
    // Views the rows' section of `file` (count rows), as storage_in says.
    void load(const std::shared_ptr<const IndexFile>& file, size_t count);

  private:
    size_t dim_;
    Storage storage_;
    Buffer<float> f32_;     // [rows, dim] when float32
    Buffer<uint16_t> u16_;  // [rows, dim] when fp16 / bf16
};

}  // namespace sparknn
