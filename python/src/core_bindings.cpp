// Thin nanobind bindings of the C++ core. Argument checking and conversion of
// numpy inputs live in python/sparknn/index.py; this file only moves pointers,
// releases the GIL and maps C++ exceptions to Python ones.
//
// One Python class per index kind (as voyager does): _core.Index has what every
// kind has, and FlatIndex, HnswIndex and IvfIndex derive from it, each with only
// its own methods. nanobind returns the most-derived registered class for a
// polymorphic sparknn::Index, so make_index and load_index need no casts.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>

#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "sparknn/file.h"
#include "sparknn/flat.h"
#include "sparknn/hnsw.h"
#include "sparknn/index.h"
#include "sparknn/ivf.h"
#include "sparknn/parquet_pages.h"
#include "sparknn/row_block.h"

namespace nb = nanobind;
using namespace nb::literals;

using Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using IdVector = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutIds = nb::ndarray<int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using ListMatrix = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using OutDist = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using SideFileRecords = std::vector<std::tuple<std::string, uint64_t, uint32_t>>;

namespace {

void check_dim(const sparknn::Index& index, const Matrix& x, const char* what) {
    if (x.shape(1) != index.dim()) {
        throw sparknn::InvalidArgument(
            sparknn::detail::concat(what, " have dimension ", x.shape(1), " but the index has dim=", index.dim()));
    }
}

// The checks of every add: dimension, and one id per row.
void check_add(const sparknn::Index& index, const Matrix& x, const std::optional<IdVector>& ids) {
    check_dim(index, x, "vectors");
    if (ids && ids->shape(0) != x.shape(0)) {
        throw sparknn::InvalidArgument(
            sparknn::detail::concat("ids has ", ids->shape(0), " entries but vectors has ", x.shape(0), " rows"));
    }
}

// adopt_rows takes one id, list and order entry per row of the block (each optional).
void check_adopt(const sparknn::RowBlock& block, const std::optional<IdVector>& ids,
                 const std::optional<IdVector>& lists, const std::optional<IdVector>& order) {
    const size_t n = block.rows();
    if ((ids && ids->shape(0) != n) || (lists && lists->shape(0) != n) || (order && order->shape(0) != n)) {
        throw sparknn::InvalidArgument(sparknn::detail::concat(
            "adopt_rows takes one id, list and order entry per row: the block has ", n, " rows, ids ",
            ids ? ids->shape(0) : n, ", lists ", lists ? lists->shape(0) : n, ", order ", order ? order->shape(0) : n));
    }
}

// Every kind's search; `lists` is ivf's (null elsewhere), its shape checked by the caller.
void search_into(const sparknn::Index& index, const Matrix& q, size_t k, size_t ef, size_t nprobe, OutIds& out_ids,
                 OutDist& out_dist, const int64_t* lists, bool widen, int threads) {
    check_dim(index, q, "queries");
    if (out_ids.shape(0) != q.shape(0) || out_ids.shape(1) != k || out_dist.shape(0) != q.shape(0) ||
        out_dist.shape(1) != k) {
        throw sparknn::InvalidArgument("output arrays must have shape [nq, k]");
    }
    sparknn::SearchParams params;
    params.ef = ef;
    params.nprobe = nprobe;
    params.lists = lists;
    params.widen = widen;
    params.threads = threads;
    nb::gil_scoped_release release;
    index.search(q.shape(0), q.data(), k, out_ids.data(), out_dist.data(), params);
}

// A numpy array that owns `v` (moved to the heap, freed with the array): no copy.
template <class T>
nb::ndarray<nb::numpy, T> owned_array(std::vector<T>&& v, std::initializer_list<size_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
}

// A float32 [n, dim] numpy array filled by `fill(out)` with the GIL released.
template <class Fill>
nb::ndarray<nb::numpy, float, nb::ndim<2>> filled_rows(size_t n, size_t dim, Fill&& fill) {
    auto* out = new float[n * dim];
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    {
        nb::gil_scoped_release release;
        fill(out);
    }
    return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {n, dim}, owner);
}

// What keeps a zero-copy view valid: the Python index object (so the memory
// is not freed) and the pin (so add refuses to move it); see PinnedView.
struct ViewOwner {
    nb::object index;
    std::shared_ptr<const void> pin;
};

template <class T>
nb::ndarray<nb::numpy, const T> pinned_array(nb::handle self, sparknn::PinnedView<T>&& view,
                                             std::initializer_list<size_t> shape) {
    auto* owner = new ViewOwner{nb::borrow(self), std::move(view.pin)};
    nb::capsule capsule(owner, [](void* p) noexcept { delete static_cast<ViewOwner*>(p); });
    return nb::ndarray<nb::numpy, const T>(view.data, shape, capsule);
}

void bind_options(nb::module_& m) {
    using sparknn::IndexOptions;
    const IndexOptions d;  // the C++ defaults are the only ones
    nb::class_<IndexOptions>(m, "IndexOptions",
                             "Parameters of make_index: hnsw reads M, ef_construction, ef_search and seed; "
                             "ivf reads nlist, nprobe, storage, train_size, pq_m, rerank and seed")
        .def(
            "__init__",
            [](IndexOptions* o, size_t M, size_t ef_construction, size_t ef_search, uint64_t seed, size_t nlist,
               size_t nprobe, const std::string& storage, size_t train_size, size_t pq_m, size_t rerank) {
                auto* options = new (o) IndexOptions();
                options->M = M;
                options->ef_construction = ef_construction;
                options->ef_search = ef_search;
                options->seed = seed;
                options->nlist = nlist;
                options->nprobe = nprobe;
                options->storage = storage;
                options->train_size = train_size;
                options->pq_m = pq_m;
                options->rerank = rerank;
            },
            nb::kw_only(), "M"_a = d.M, "ef_construction"_a = d.ef_construction, "ef_search"_a = d.ef_search,
            "seed"_a = d.seed, "nlist"_a = d.nlist, "nprobe"_a = d.nprobe, "storage"_a = d.storage,
            "train_size"_a = d.train_size, "pq_m"_a = d.pq_m, "rerank"_a = d.rerank)
        .def_rw("M", &IndexOptions::M)
        .def_rw("ef_construction", &IndexOptions::ef_construction)
        .def_rw("ef_search", &IndexOptions::ef_search)
        .def_rw("seed", &IndexOptions::seed)
        .def_rw("nlist", &IndexOptions::nlist)
        .def_rw("nprobe", &IndexOptions::nprobe)
        .def_rw("storage", &IndexOptions::storage)
        .def_rw("train_size", &IndexOptions::train_size)
        .def_rw("pq_m", &IndexOptions::pq_m)
        .def_rw("rerank", &IndexOptions::rerank)
        .def("__repr__", [](const IndexOptions& o) {
            return sparknn::detail::concat(
                "IndexOptions(M=", o.M, ", ef_construction=", o.ef_construction, ", ef_search=", o.ef_search,
                ", seed=", o.seed, ", nlist=", o.nlist, ", nprobe=", o.nprobe, ", storage='", o.storage,
                "', train_size=", o.train_size, ", pq_m=", o.pq_m, ", rerank=", o.rerank, ")");
        });
}

// Rows a reader fills through a numpy view and an ivf index then keeps in place (adopt_rows).
void bind_row_block(nb::module_& m) {
    using sparknn::RowBlock;
    nb::class_<RowBlock>(m, "RowBlock", "float32 rows [rows, dim], uninitialised, that an ivf index can take "
                                        "without a copy (IvfIndex.adopt_rows)")
        .def(nb::init<size_t, size_t>(), "rows"_a, "dim"_a)
        .def_prop_ro("rows", &RowBlock::rows)
        .def_prop_ro("dim", &RowBlock::dim)
        .def_prop_ro("taken", &RowBlock::taken)
        .def(
            "array",
            [](nb::handle_t<RowBlock> self) {
                RowBlock& block = nb::cast<RowBlock&>(self);
                if (block.taken()) {
                    throw sparknn::InvalidArgument("this block's rows belong to an index now: read them from it");
                }
                return nb::ndarray<nb::numpy, float, nb::ndim<2>>(block.data(), {block.rows(), block.dim()}, self);
            },
            "A writable numpy view [rows, dim] of the rows (keeps the block alive); none once an index took them");
}

// What every kind has.
// ids() / vectors(): zero-copy and read-only; while the array (or any view of it) lives, add raises.
template <class T, bool matrix>
auto pinned_view(sparknn::PinnedView<T> (sparknn::Index::*view_of)() const) {
    return [view_of](nb::handle_t<sparknn::Index> self) {
        const sparknn::Index& index = nb::cast<const sparknn::Index&>(self);
        sparknn::PinnedView<T> view;
        {
            nb::gil_scoped_release release;
            view = (index.*view_of)();
        }
        const size_t rows = view.rows, cols = view.cols;
        if constexpr (matrix) {
            return pinned_array(self, std::move(view), {rows, cols});
        } else {
            return pinned_array(self, std::move(view), {rows});
        }
    };
}

// A search setting (ef_search, nprobe) read and set with the GIL released: both take the
// index's lock, and the setter waits for running searches.
template <class Kind, class Get>
auto search_setting(Get get) {
    return [get](const Kind& index) {
        nb::gil_scoped_release release;
        return get(index);
    };
}

template <class Kind>
auto setting_setter(void (Kind::*set)(size_t)) {
    return [set](Kind& index, size_t value) {
        nb::gil_scoped_release release;
        (index.*set)(value);
    };
}

void bind_index(nb::module_& m) {
    using sparknn::Index;
    nb::class_<Index>(m, "Index", "An index of any kind (the classes below add what their kind has)")
        .def_prop_ro("dim", &Index::dim)
        .def_prop_ro("metric", [](const Index& i) { return std::string(sparknn::metric_name(i.metric())); })
        .def_prop_ro("kind", [](const Index& i) { return std::string(sparknn::kind_name(i.kind())); })
        .def_prop_ro("storage", [](const Index& i) { return std::string(sparknn::storage_name(i.storage())); })
        .def("__len__", &Index::size)
        .def_prop_rw("threads", &Index::threads,
                     [](Index& index, int threads) {
                         nb::gil_scoped_release release;  // waits for running searches
                         index.set_threads(threads);
                     })
        .def(
            "add",
            [](Index& index, Matrix x, std::optional<IdVector> ids) {
                check_add(index, x, ids);
                nb::gil_scoped_release release;
                index.add(x.shape(0), x.data(), ids ? ids->data() : nullptr);
            },
            "vectors"_a, "ids"_a.none())
        .def(
            "adopt_rows",
            [](Index& index, std::shared_ptr<sparknn::RowBlock> block, std::optional<IdVector> ids,
               std::optional<IdVector> order) {
                check_adopt(*block, ids, std::nullopt, order);
                nb::gil_scoped_release release;
                index.adopt_rows(block, ids ? ids->data() : nullptr, order ? order->data() : nullptr);
            },
            "block"_a, "ids"_a.none(), "order"_a.none() = nb::none())
        .def("shrink_to_fit",
             [](Index& index) {
                 nb::gil_scoped_release release;
                 index.shrink_to_fit();
             })
        .def(
            "search",
            [](const Index& index, Matrix q, size_t k, size_t ef, size_t nprobe, OutIds out_ids, OutDist out_dist,
               bool widen,
               int threads) { search_into(index, q, k, ef, nprobe, out_ids, out_dist, nullptr, widen, threads); },
            "queries"_a, "k"_a, "ef"_a, "nprobe"_a, "out_ids"_a, "out_distances"_a, "widen"_a = true, "threads"_a = -1)
        .def(
            "save",
            [](const Index& index, const std::string& path, bool sync, const SideFileRecords& side_files) {
                std::vector<sparknn::SideFile> files;
                for (const auto& [role, bytes, crc] : side_files) files.push_back({role, bytes, crc});
                nb::gil_scoped_release release;
                index.save(path, sync, files);
            },
            "path"_a, "sync"_a = true, "side_files"_a = SideFileRecords{})
        .def("side_files",
             [](const Index& index) {
                 SideFileRecords out;
                 for (const auto& f : index.side_files()) out.emplace_back(f.role, f.bytes, f.crc32c);
                 return out;
             })
        .def("ids", pinned_view<int64_t, false>(&Index::view_ids))  // 1-D
        .def("vectors", pinned_view<float, true>(&Index::view_vectors))  // [n, dim]
        .def(
            "reconstruct",
            [](const Index& index, size_t start, size_t stop) {
                // Sizes only grow, so a range checked here stays valid; reconstruct checks again under its lock.
                if (start > stop || stop > index.size()) {
                    throw sparknn::InvalidArgument(sparknn::detail::concat("reconstruct: rows [", start, ", ", stop,
                                                                           ") outside [0, ", index.size(), ")"));
                }
                return filled_rows(stop - start, index.dim(),
                                   [&](float* out) { index.reconstruct(start, stop - start, out); });
            },
            "start"_a, "stop"_a)
        .def(
            "reconstruct_labels",
            [](const Index& index, nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig> labels) {
                const size_t n = labels.shape(0);
                const int64_t* at = labels.data();
                return filled_rows(n, index.dim(), [&](float* out) { index.reconstruct_labels(n, at, out); });
            },
            "labels"_a)
        // The kinds with more parameters replace this.
        .def_prop_ro("params", [](const Index& i) {
            nb::dict d;
            d["storage"] = std::string(sparknn::storage_name(i.storage()));
            return d;
        });
}

void bind_flat(nb::module_& m) {
    nb::class_<sparknn::FlatIndex, sparknn::Index>(m, "FlatIndex", "Exact search (BLAS)");
}

void bind_hnsw(nb::module_& m) {
    using sparknn::HnswIndex;
    nb::class_<HnswIndex, sparknn::Index>(m, "HnswIndex", "An approximate graph index (HNSW)")
        .def_prop_rw("ef_search", search_setting<HnswIndex>([](const HnswIndex& h) { return h.params().ef_search; }),
                     setting_setter<HnswIndex>(&HnswIndex::set_ef_search))
        .def_prop_ro("params", [](const HnswIndex& h) {
            sparknn::HnswParams p;
            {
                nb::gil_scoped_release release;
                p = h.params();
            }
            nb::dict d;
            d["M"] = p.M;
            d["ef_construction"] = p.ef_construction;
            d["ef_search"] = p.ef_search;
            d["seed"] = p.seed;
            d["storage"] = std::string(sparknn::storage_name(h.storage()));
            return d;
        });
}

void bind_ivf(nb::module_& m) {
    using sparknn::IvfIndex;
    nb::class_<IvfIndex, sparknn::Index>(m, "IvfIndex", "An inverted-file index of k-means lists")
        .def(
            "add",
            [](IvfIndex& ivf, Matrix x, std::optional<IdVector> ids, std::optional<IdVector> lists) {
                check_add(ivf, x, ids);
                const int64_t* id_ptr = ids ? ids->data() : nullptr;
                if (!lists) {
                    nb::gil_scoped_release release;
                    ivf.add(x.shape(0), x.data(), id_ptr);
                    return;
                }
                if (lists->shape(0) != x.shape(0)) {
                    throw sparknn::InvalidArgument(sparknn::detail::concat(
                        "lists has ", lists->shape(0), " entries but vectors has ", x.shape(0), " rows"));
                }
                nb::gil_scoped_release release;
                ivf.add_to_lists(x.shape(0), x.data(), id_ptr, lists->data());
            },
            "vectors"_a, "ids"_a.none(), "lists"_a.none() = nb::none())
        .def(
            "adopt_rows",
            [](IvfIndex& ivf, std::shared_ptr<sparknn::RowBlock> block, std::optional<IdVector> ids,
               std::optional<IdVector> lists, std::optional<IdVector> order) {
                check_adopt(*block, ids, lists, order);
                nb::gil_scoped_release release;
                ivf.adopt_rows(block, ids ? ids->data() : nullptr, lists ? lists->data() : nullptr,
                               order ? order->data() : nullptr);
            },
            "block"_a, "ids"_a.none(), "lists"_a.none() = nb::none(), "order"_a.none() = nb::none())
        .def(
            "adopt_rows_nearest",
            [](IvfIndex& ivf, std::shared_ptr<sparknn::RowBlock> block, std::optional<IdVector> ids,
               std::optional<IdVector> order, OutIds out) {
                check_adopt(*block, ids, std::nullopt, order);
                if (out.shape(0) != block->rows()) {
                    throw sparknn::InvalidArgument("out_lists must have one row per row of the block");
                }
                nb::gil_scoped_release release;
                ivf.adopt_rows_nearest(block, ids ? ids->data() : nullptr, order ? order->data() : nullptr,
                                       out.shape(1), out.data());
            },
            "block"_a, "ids"_a.none(), "order"_a.none(), "out_lists"_a)
        .def("rows_in_list_order", [](nb::handle_t<IvfIndex> self) {
            const IvfIndex& ivf = nb::cast<const IvfIndex&>(self);
            sparknn::PinnedView<float> view;
            {
                nb::gil_scoped_release release;
                view = ivf.view_rows_in_list_order();
            }
            const size_t rows = view.rows, cols = view.cols;
            return pinned_array(self, std::move(view), {rows, cols});
        })
        .def(
            "reserve_lists",
            [](IvfIndex& ivf, IdVector extra) {
                if (!ivf.is_trained()) {
                    throw sparknn::InvalidArgument("reserve_lists needs a trained IVF index: call train() first");
                }
                if (extra.shape(0) != ivf.nlist()) {
                    throw sparknn::InvalidArgument(sparknn::detail::concat(
                        "reserve_lists takes one count per list: ", extra.shape(0), " given, the index has nlist=",
                        ivf.nlist()));
                }
                nb::gil_scoped_release release;
                ivf.reserve_lists(extra.data());
            },
            "extra"_a)
        .def(
            "search",
            [](const IvfIndex& ivf, Matrix q, size_t k, size_t ef, size_t nprobe, OutIds out_ids, OutDist out_dist,
               bool widen, int threads, std::optional<ListMatrix> lists) {
                if (lists && (lists->shape(0) != q.shape(0) || lists->shape(1) != nprobe)) {
                    throw sparknn::InvalidArgument("lists must have shape [nq, nprobe]");
                }
                search_into(ivf, q, k, ef, nprobe, out_ids, out_dist, lists ? lists->data() : nullptr, widen, threads);
            },
            "queries"_a, "k"_a, "ef"_a, "nprobe"_a, "out_ids"_a, "out_distances"_a, "widen"_a = true, "threads"_a = -1,
            "lists"_a.none() = nb::none())
        .def(
            "search_nprobes",
            [](const IvfIndex& ivf, Matrix q, size_t k, std::vector<size_t> nprobes, int threads) {
                check_dim(ivf, q, "queries");
                const size_t nq = q.shape(0), count = nprobes.size();
                std::vector<int64_t> ids(count * nq * k);
                std::vector<float> dist(count * nq * k);
                {
                    nb::gil_scoped_release release;
                    ivf.search_nprobes(nq, q.data(), k, nprobes.data(), count, ids.data(), dist.data(), threads);
                }
                return std::make_pair(owned_array(std::move(ids), {count, nq, k}),
                                      owned_array(std::move(dist), {count, nq, k}));
            },
            "queries"_a, "k"_a, "nprobes"_a, "threads"_a = -1)
        .def(
            "search_ladder_and_exact",
            [](const IvfIndex& ivf, Matrix q, size_t k, std::vector<size_t> nprobes, int threads) {
                check_dim(ivf, q, "queries");
                const size_t nq = q.shape(0), count = nprobes.size();
                std::vector<int64_t> ids((count + 1) * nq * k);
                std::vector<float> dist((count + 1) * nq * k);
                std::vector<uint8_t> proven(nq);
                {
                    nb::gil_scoped_release release;
                    ivf.search_ladder_and_exact(nq, q.data(), k, nprobes.data(), count, ids.data(), dist.data(),
                                                proven.data(), threads);
                }
                return std::make_tuple(owned_array(std::move(ids), {count + 1, nq, k}),
                                       owned_array(std::move(dist), {count + 1, nq, k}),
                                       owned_array(std::move(proven), {nq}));
            },
            "queries"_a, "k"_a, "nprobes"_a, "threads"_a = -1)
        .def(
            "train",
            [](IvfIndex& ivf, Matrix x) {
                check_dim(ivf, x, "training vectors");
                nb::gil_scoped_release release;
                ivf.train(x.shape(0), x.data());
            },
            "vectors"_a)
        .def_prop_ro("is_trained",
                     [](const IvfIndex& ivf) {
                         nb::gil_scoped_release release;
                         return ivf.is_trained();
                     })
        .def(
            "ideal_query_batch",
            [](const IvfIndex& ivf, size_t nprobe) {
                nb::gil_scoped_release release;
                return ivf.ideal_query_batch(nprobe);
            },
            "nprobe"_a)
        .def(
            "nearest_lists",
            [](const IvfIndex& ivf, Matrix q, size_t nprobe, OutIds out, int threads) {
                check_dim(ivf, q, "queries");
                if (out.shape(0) != q.shape(0) || out.shape(1) != nprobe) {
                    throw sparknn::InvalidArgument("output array must have shape [nq, nprobe]");
                }
                nb::gil_scoped_release release;
                ivf.nearest_lists(q.shape(0), q.data(), nprobe, out.data(), threads);
            },
            "queries"_a, "nprobe"_a, "out_lists"_a, "threads"_a = -1)
        .def(
            "probe_lists",
            [](const IvfIndex& ivf, Matrix q, size_t nprobe, size_t need, std::optional<IdVector> list_sizes,
               std::optional<ListMatrix> nearest, int threads) {
                check_dim(ivf, q, "queries");
                if (nearest && nearest->shape(0) != q.shape(0)) {
                    throw sparknn::InvalidArgument("nearest must have one row per query");
                }
                if (list_sizes && list_sizes->shape(0) != ivf.nlist()) {  // the engine reads nlist of them
                    throw sparknn::InvalidArgument(sparknn::detail::concat(
                        "list_sizes has ", list_sizes->shape(0), " entries but the index has nlist=", ivf.nlist()));
                }
                sparknn::ProbePlan plan;
                {
                    nb::gil_scoped_release release;
                    plan = ivf.probe_lists(q.shape(0), q.data(), nprobe, need,
                                           list_sizes ? list_sizes->data() : nullptr,
                                           nearest ? nearest->data() : nullptr, nearest ? nearest->shape(1) : 0,
                                           threads);
                }
                const size_t rows = plan.offsets.size(), total = plan.lists.size();
                return std::make_pair(owned_array(std::move(plan.offsets), {rows}),
                                      owned_array(std::move(plan.lists), {total}));
            },
            "queries"_a, "nprobe"_a, "need"_a, "list_sizes"_a.none() = nb::none(), "nearest"_a.none() = nb::none(),
            "threads"_a = -1)
        .def("centroids",
             [](const IvfIndex& ivf) {
                 // A copy: train may replace them, and they may live in a mapped file owned by the index.
                 std::vector<float> c;
                 {
                     nb::gil_scoped_release release;
                     c = ivf.centroids();
                 }
                 const size_t d = ivf.dim(), n = c.size() / d;
                 return owned_array(std::move(c), {n, d});
             })
        .def("list_sizes",
             [](const IvfIndex& ivf) {
                 std::vector<size_t> sizes;
                 {
                     nb::gil_scoped_release release;
                     sizes = ivf.list_sizes();
                 }
                 std::vector<int64_t> out(sizes.begin(), sizes.end());
                 const size_t n = out.size();
                 return owned_array(std::move(out), {n});
             })
        .def("list_labels",
             [](const IvfIndex& ivf) {
                 std::vector<int64_t> labels;
                 {
                     nb::gil_scoped_release release;
                     labels = ivf.list_labels();
                 }
                 const size_t n = labels.size();
                 return owned_array(std::move(labels), {n});
             })
        .def_prop_rw("nprobe", search_setting<IvfIndex>([](const IvfIndex& ivf) { return ivf.params().nprobe; }),
                     setting_setter<IvfIndex>(&IvfIndex::set_nprobe))
        // -1: auto (IvfIndex::kFirstPassAuto)
        .def_prop_rw("first_pass_dims",
                     search_setting<IvfIndex>([](const IvfIndex& ivf) -> int64_t {
                         const size_t d = ivf.first_pass_dims();
                         return d == IvfIndex::kFirstPassAuto ? -1 : static_cast<int64_t>(d);
                     }),
                     [](IvfIndex& ivf, int64_t dims) {
                         if (dims < -1) throw sparknn::InvalidArgument("first_pass_dims must be -1 (auto), 0 or more");
                         nb::gil_scoped_release release;
                         ivf.set_first_pass_dims(dims == -1 ? IvfIndex::kFirstPassAuto : static_cast<size_t>(dims));
                     })
        .def(
            "first_pass_in_use",
            [](const IvfIndex& ivf, int threads) {
                nb::gil_scoped_release release;
                return ivf.first_pass_in_use(threads);
            },
            "threads"_a = -1)
        .def_prop_ro("params", [](const IvfIndex& ivf) {
            sparknn::IvfParams p;
            {
                nb::gil_scoped_release release;
                p = ivf.params();  // one snapshot (train sets nlist to the lists it made)
            }
            nb::dict d;
            d["nlist"] = p.nlist;
            d["nprobe"] = p.nprobe;
            d["storage"] = std::string(sparknn::storage_name(p.storage));
            d["train_size"] = p.train_size;
            d["pq_m"] = p.pq_m;
            d["rerank"] = p.rerank;
            d["seed"] = p.seed;
            return d;
        });
}

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Floats = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutRows = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

sparknn::parquet::DenseListColumn dense_list_column(const OutRows& out, std::optional<Floats>& dictionary,
                                                    int32_t max_definition_level) {
    sparknn::parquet::DenseListColumn column;
    column.dim = static_cast<int64_t>(out.shape(1));
    column.max_definition_level = max_definition_level;
    if (dictionary) {
        column.dictionary = dictionary->data();
        column.dictionary_size = static_cast<int64_t>(dictionary->shape(0));
    }
    return column;
}

void bind_parquet_pages(nb::module_& m) {
    using sparknn::parquet::PageHeader;
    nb::class_<PageHeader>(m, "ParquetPageHeader")
        .def_ro("type", &PageHeader::type)
        .def_ro("uncompressed_size", &PageHeader::uncompressed_size)
        .def_ro("compressed_size", &PageHeader::compressed_size)
        .def_ro("has_crc", &PageHeader::has_crc)
        .def_ro("crc", &PageHeader::crc)
        .def_ro("num_values", &PageHeader::num_values)
        .def_ro("encoding", &PageHeader::encoding)
        .def_ro("num_nulls", &PageHeader::num_nulls)
        .def_ro("definition_levels_bytes", &PageHeader::definition_levels_bytes)
        .def_ro("repetition_levels_bytes", &PageHeader::repetition_levels_bytes)
        .def_ro("is_compressed", &PageHeader::is_compressed)
        .def_ro("offset", &PageHeader::offset);
    m.def(
        "parquet_page_header",
        [](Bytes data) -> std::optional<PageHeader> {
            PageHeader page;
            if (!sparknn::parquet::read_page_header(data.data(), data.shape(0), page)) return std::nullopt;
            return page;
        },
        "data"_a,
        "The Parquet page header at the start of data (its offset: the header's length), or None when the "
        "bytes do not start with one");
    m.def(
        "decode_vector_page_v1",
        [](const PageHeader& page, Bytes body, int64_t first_value, OutRows out, std::optional<Floats> dictionary,
           int32_t max_definition_level) {
            auto column = dense_list_column(out, dictionary, max_definition_level);
            nb::gil_scoped_release release;
            return sparknn::parquet::decode_page_v1(column, page, body.data(), body.shape(0), first_value, out.data(),
                                                    static_cast<int64_t>(out.size()));
        },
        "page"_a, "body"_a, "first_value"_a, "out"_a, "dictionary"_a.none(), "max_definition_level"_a,
        "Decodes a v1 data page (decompressed) of dense list<float> rows into out (flat from first_value); "
        "False when the page holds anything else (the caller reads with Arrow)");
    m.def(
        "decode_vector_page_v2",
        [](const PageHeader& page, Bytes levels, Bytes values, int64_t first_value, OutRows out,
           std::optional<Floats> dictionary, int32_t max_definition_level) {
            auto column = dense_list_column(out, dictionary, max_definition_level);
            nb::gil_scoped_release release;
            return sparknn::parquet::decode_page_v2(column, page, levels.data(), levels.shape(0), values.data(),
                                                    values.shape(0), first_value, out.data(),
                                                    static_cast<int64_t>(out.size()));
        },
        "page"_a, "levels"_a, "values"_a, "first_value"_a, "out"_a, "dictionary"_a.none(), "max_definition_level"_a,
        "Decodes a v2 data page (levels as stored, values decompressed) like decode_vector_page_v1");
}

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "sparknn native core (use the sparknn package, not this module)";

    nb::exception<sparknn::FileFormatError>(m, "IndexFileError", PyExc_ValueError);
    nb::exception<sparknn::InvalidArgument>(m, "InvalidArgumentError", PyExc_ValueError);
    nb::exception<sparknn::IoError>(m, "IndexIOError", PyExc_OSError);
    nb::exception<sparknn::Unsupported>(m, "UnsupportedError", PyExc_NotImplementedError);

    m.def("ivf_default_nlist", &sparknn::ivf_default_nlist, "n"_a,
          "nlist an ivf index trained on n vectors picks when nlist=0 (about 4 sqrt(n))");
    m.def("ivf_default_train_size", &sparknn::ivf_default_train_size, "nlist"_a, "n"_a,
          "vectors an ivf index samples for k-means when train_size=0");
    m.def("simd_level", [] { return std::string(sparknn::simd_level_name(sparknn::simd_level())); });
    m.def("cpu_simd_level", [] { return std::string(sparknn::simd_level_name(sparknn::cpu_simd_level())); });
    m.def("bf16_tiles_preferred", &sparknn::bf16_tiles_preferred,
          "whether ivf float32 lists (with rerank) and flat scan in bf16 tiles here by default");
    m.attr("FORMAT_VERSION") = sparknn::kFormatVersion;
    m.attr("IVF_ONE_SCAN_LADDER_TOP") = sparknn::IvfIndex::kRankHeapsTop;
    m.def(
        "crc32c",
        [](nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> data, uint32_t seed) {
            nb::gil_scoped_release release;
            return sparknn::crc32c(data.data(), data.shape(0), seed);
        },
        "data"_a, "seed"_a = 0, "CRC-32C of a uint8 array (the checksum of index file sections), continued from seed");

    bind_options(m);
    bind_row_block(m);
    bind_index(m);
    bind_flat(m);
    bind_hnsw(m);
    bind_ivf(m);
    bind_parquet_pages(m);

    m.def(
        "make_index",
        [](const std::string& kind, size_t dim, const std::string& metric, const sparknn::IndexOptions& options) {
            return sparknn::make_index(sparknn::kind_from_string(kind), dim, sparknn::metric_from_string(metric),
                                       options);
        },
        "kind"_a, "dim"_a, "metric"_a, "options"_a = sparknn::IndexOptions{},
        "A new, empty index of the given kind (an instance of its class: FlatIndex, HnswIndex or IvfIndex)");

    m.def(
        "load_index",
        [](const std::string& path, bool mmap, bool verify) {
            nb::gil_scoped_release release;
            return sparknn::load_index(path, mmap, verify);
        },
        "path"_a, "mmap"_a, "verify"_a, "Loads an index file of any kind (an instance of its kind's class)");
}
