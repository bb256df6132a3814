// How an IVF index stores its vectors (Storage): one class per codec behind
// one interface, as faiss keeps one inverted-list scanner per codec. IvfIndex
// owns the quantizer and the lists (labels, codes); its codec trains on the
// k-means sample, encodes and decodes vectors, scans a list for a block of
// queries, and writes and reads its own file sections. The calls are per
// vector (encode, decode: add and reconstruct), per list (scan) or per block
// of rows (BlockCodec::rows): never per value in a hot loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "gemm_scan.h"
#include "sparknn/distance.h"
#include "sparknn/file.h"
#include "sparknn/flat.h"
#include "sparknn/ivf_params.h"
#include "sparknn/topk.h"

namespace sparknn {

// One inverted list as a codec reads it.
struct IvfListView {
    const int64_t* labels;  // [size]
    const uint8_t* codes;   // [size, code_size]
    const float* norms;     // [size]: |x|^2 when the codec keeps_norms, else null
    size_t size;
    const float* centroid;  // [dim]: the list's centroid
    // The IVF first pass's projected lists on AVX-512 (float32 codec): the rows packed
    // (tile_f32::pack_panels, less the centroid under L2), and under L2 their |x - c|^2.
    const float* panels = nullptr;
    const float* panel_norms = nullptr;
};

// Scans lists for blocks of queries. One per worker thread: it holds that
// thread's scratch (tiles, lookup tables), allocated once per search.
class IvfListScanner {
  public:
    virtual ~IvfListScanner() = default;
    // Pushes (distance, label) of every vector of `list` for the queries
    // rows qs[0..m) of `queries` [*, dim] (m <= kListQueries) into *heaps[i].
    virtual void scan(const IvfListView& list, const float* queries, const uint32_t* qs, size_t m,
                      TopK* const* heaps) = 0;
};

class IvfCodec {
  public:
    IvfCodec(size_t dim, Metric metric) : dim_(dim), metric_(metric) {}
    virtual ~IvfCodec() = default;

    virtual size_t code_size() const = 0;  // bytes per vector
    // Whether each list keeps |x|^2 of its vectors, computed on add and load.
    virtual bool keeps_norms() const { return false; }
    // Trains on the k-means sample x [n, dim], once its centroids exist.
    virtual void train(size_t n, const float* x, const FlatIndex& quantizer, const float* centroids, uint64_t seed,
                       size_t iterations, int threads) {}
    // x [dim], which goes to the list of `centroid`, into code [code_size].
    virtual void encode(const float* x, const float* centroid, uint8_t* code) const = 0;
    // The stored approximation of a vector of the list of `centroid`.
    virtual void decode(const uint8_t* code, const float* centroid, float* out) const = 0;
    // products: how a block codec's tiles are computed (TileProducts::Bf16 only
    // where bf16_tiles_available()); codecs that scan otherwise ignore it.
    virtual std::unique_ptr<IvfListScanner> scanner(TileProducts products) const = 0;
    // The codec's own sections, written after the lists; load validates them.
    virtual void save(FileWriter& writer) const {}
    virtual void load(const IndexFile& file) {}

  protected:
    size_t dim_;
    Metric metric_;
};

// A codec whose lists read as float32 rows block by block: its scanner turns
// each block into distances with the sgemm tile scan of exact search.
class BlockCodec : public IvfCodec {
  public:
    using IvfCodec::IvfCodec;
    // Float rows [count, dim] of list rows [begin, begin + count), count <=
    // kScanBaseBlock: a pointer into the list, or decoded into scratch
    // [kScanBaseBlock, dim]. *norms: their |x|^2 under L2 (the list's or
    // computed into norm_scratch [kScanBaseBlock]), else null.
    virtual const float* rows(const IvfListView& list, size_t begin, size_t count, float* scratch, const float** norms,
                              float* norm_scratch) const = 0;
    virtual bool needs_scratch() const = 0;  // whether rows() decodes
    std::unique_ptr<IvfListScanner> scanner(TileProducts products) const override;
};

// The codec of params.storage; resolves its defaults in params (pq_m = 0).
std::unique_ptr<IvfCodec> make_ivf_codec(IvfParams& params, size_t dim, Metric metric);
// One per codec file.
std::unique_ptr<IvfCodec> make_float32_codec(size_t dim, Metric metric);
std::unique_ptr<IvfCodec> make_sq8_codec(size_t dim, Metric metric);
std::unique_ptr<IvfCodec> make_pq_codec(size_t dim, Metric metric, size_t& pq_m);
std::unique_ptr<IvfCodec> make_half_codec(size_t dim, Metric metric, Storage storage);  // fp16, bf16

}  // namespace sparknn
