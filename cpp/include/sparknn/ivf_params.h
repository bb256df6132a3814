// What an IVF index is made of before it exists: its parameters, its storage
// codec's name, and the defaults it picks for nlist and the k-means sample. Its
// own header so that the storage codecs (cpp/src/ivf_codec.h) depend on these,
// not on the IvfIndex that uses them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sparknn/storage.h"

namespace sparknn {

struct IndexOptions;  // sparknn/index.h: what make_index takes, every kind's options


// The choices an IvfIndex makes when nlist or train_size is 0, for n training
// vectors; exposed so a distributed build (the Spark layer) makes the same.
// nlist: about 4 sqrt(n) (faiss' rule of thumb). Sample: 16 vectors per list,
// at least 10,000 (all n when fewer): measured, 32 per list gave the same recall
// (Fashion-MNIST, clustered 500k x 100) for twice the k-means time.
size_t ivf_default_nlist(size_t n);
size_t ivf_default_train_size(size_t nlist, size_t n);

struct IvfParams {
    size_t nlist = 0;     // lists; 0 = chosen when trained: about 4 * sqrt(n)
    size_t nprobe = 16;   // lists scanned per query by default
    Storage storage = Storage::Float32;
    size_t train_size = 0;         // k-means sample; 0 = ivf_default_train_size
    size_t kmeans_iterations = 10;  // Lloyd iterations (faiss trains IVF quantizers with 10 too)
    size_t pq_m = 0;    // pq: bytes per vector; 0 = dim / 4 (rounded to a divisor of dim)
    // Re-rank the rerank * k best candidates of an approximate scan by exact
    // distance; 0 = off. sq8 and pq scan their codes and keep float32 copies to
    // re-rank with; float32 scans in bf16 on CPUs with AVX512_BF16 (about twice
    // as fast) and re-ranks from its own lists (elsewhere it scans in float32 sgemm
    // and re-ranks the same way: sgemm's rounding depends on a row's place in the
    // product, the re-ranked distances do not). fp16 and bf16 refuse it.
    size_t rerank = 0;
    uint64_t seed = 42;

    static IvfParams from(const IndexOptions& options);
    void validate() const;
    // Whether the index keeps float32 copies of its vectors to re-rank with.
    bool keeps_float_copies() const { return rerank > 0 && !is_row_storage(storage); }
};

}  // namespace sparknn
