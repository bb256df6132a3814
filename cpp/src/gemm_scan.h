// Exact distances of a block of queries to a block of base vectors through one
// BLAS sgemm per tile, fed into per-query top-k heaps. Shared by the flat index
// (whole base) and the IVF index (one inverted list at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "sparknn/distance.h"
#include "sparknn/topk.h"

namespace sparknn {

// A [kScanQueryBlock, kScanBaseBlock] float tile (2 MiB) is one sgemm call, then
// turned into distances and scanned. 1024 queries rather than 256: OpenBLAS packs
// both operands on every call, so each base block was packed once per query
// block; the taller tile took flat search at 100k x 768 on the Intel Xeon from
// 83-88% to 89-100% of one big sgemm's rate (bench/README.md). The tile outgrows
// L2, but the scan reads it once, sequentially.
inline constexpr size_t kScanQueryBlock = 1024;
inline constexpr size_t kScanBaseBlock = 512;
// Queries an IVF list is scanned for at once (a work item): its rows are read
// (and packed, for bf16 tiles) once for all of them.
inline constexpr size_t kListQueries = kScanQueryBlock;

// How a tile's inner products are computed: float32 sgemm (exact up to float32
// rounding), or bf16 (tile_bf16.h: twice as fast on AMD, about 3 significant digits;
// for a first pass whose candidates are re-ranked exactly).
enum class TileProducts { Float32, Bf16 };
// Fewer queries than this are scanned in float32 even by a bf16 scanner.
inline constexpr size_t kMinBf16Queries = 8;
// L2 rows whose offset from the origin (squared) exceeds this many times their spread are
// scanned less a centre: 16 costs |q|^2 + |x|^2 - 2 q.x four of float32's 24 bits; rows of
// 1000 +- 1 (a ratio of 1e6) kept recall@10 0.28 without it.
inline constexpr double kCentreWhen = 16.0;

class GemmScanner {
  public:
    // Bf16 requires bf16_tiles_available() (tile_bf16.h).
    GemmScanner(Metric metric, size_t dim, TileProducts products = TileProducts::Float32);

    // Scans m queries [m, dim] against nb base rows [nb, dim].
    // qnorm [m] and bnorm [nb] are squared norms, read only under L2. Pushes
    // (distance, labels ? labels[j] : first_label + j) into heaps[i]. `centre`
    // [dim] (an IVF list's centroid, or null): bf16 products are taken of
    // residuals to it (tile_bf16.h), which keep far more of their bits.
    void scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm, size_t nb,
              const int64_t* labels, int64_t first_label, TopK* heaps, const float* centre = nullptr);
    // The same, with the heap of query i at *heaps[i] (queries gathered from a batch).
    void scan(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm, size_t nb,
              const int64_t* labels, int64_t first_label, TopK* const* heaps, const float* centre = nullptr);
    // Whether float32 products are taken of residuals to `centre` too (a copy of each block
    // less it; L2 then needs no |q|^2 + |x|^2, which cancel for rows far from the origin).
    // Off: float32 products ignore the centre (bf16 ones always take it). Auto (an IVF
    // list's centroid): L2 scans whose centre is more than kCentreWhen times as far from
    // the origin as from the queries, on average.
    enum class Centring { Off, On, Auto };
    void centre_float32(Centring mode) { centre_float32_ = mode; }

    // Scans m queries [m, dim] against nb rows packed once by tile_f32::pack_panels (the
    // IVF first pass's lists), through tile_f32::product instead of sgemm. Under L2 the rows
    // were packed less `centre` and row_terms [nb] holds their |x - c|^2: the queries are
    // taken less it too (residuals keep their bits far from the origin, as Centring::On).
    // Inner product: no centre, no row_terms. Needs an AVX-512 CPU (tile_f32::product).
    void scan_panels(const float* queries, size_t m, const float* panels, const float* row_terms, size_t nb,
                     const int64_t* labels, TopK* const* heaps, const float* centre);

  private:
    template <class HeapAt>
    void scan_impl(const float* queries, const float* qnorm, size_t m, const float* base, const float* bnorm,
                   size_t nb, const int64_t* labels, int64_t first_label, const float* centre, HeapAt&& heap_at);

    // bf16 tiles: the operands into packed_queries_ / packed_base_.
    void pack_queries(const float* queries, size_t m, const float* centre);
    void pack_base(const float* base, size_t cols, const float* centre);
    // The tile at least as large as a scan of m queries against nb rows takes.
    void grow_tile(size_t m, size_t nb);
    // float32 with a centre: rows less it into `out`, and each row's term as pack_base's.
    void centre_rows(const float* rows, size_t n, const float* centre, std::vector<float>& out, float* terms) const;
    // tile_[i * cols + j] = queries_{q0 + i} . base_j, i < m <= kScanQueryBlock, j < cols;
    // bf16: from the packed operands.
    void products(bool bf16, const float* queries, size_t q0, size_t m, const float* base, size_t cols);

    Metric metric_;
    size_t dim_;
    TileProducts products_;
    // The tile, grown to what a scan needs and never cleared (every entry read is written first).
    std::unique_ptr<float[]> tile_;
    size_t tile_capacity_ = 0;
    std::vector<uint32_t> packed_queries_;  // bf16: the queries' pairs [m, pairs]
    std::vector<uint32_t> packed_base_;     // bf16: the base block's panels
    std::vector<float> query_centre_;       // bf16 with a centre: queries_i . centre [m]
    std::vector<float> row_terms_;          // with a centre: per base row of the block
    Centring centre_float32_ = Centring::Off;
    std::vector<float> centred_queries_, centred_base_;  // float32 with a centre
};

// Pushes into `heap` the entries of row [cols] within its threshold, labelled
// labels[j] (or first_label + j when labels is null).
void select_row(TopK& heap, const float* row, size_t cols, const int64_t* labels, int64_t first_label);

// out[i] = |x_i|^2 for n rows of x [n, dim].
void squared_norms(const float* x, size_t n, size_t dim, float* out);

}  // namespace sparknn
