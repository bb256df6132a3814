// Thin nanobind bindings of the C++ core. Argument checking and conversion of
// numpy inputs live in python/sparknn/index.py; this file only moves pointers,
// releases the GIL and maps C++ exceptions to Python ones.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>

#include "sparknn/distance.h"
#include "sparknn/error.h"
#include "sparknn/file.h"
#include "sparknn/hnsw.h"
#include "sparknn/index.h"
#include "sparknn/ivf.h"

namespace nb = nanobind;
using namespace nb::literals;

using Matrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using IdVector = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutIds = nb::ndarray<int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using ListMatrix = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using OutDist = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

namespace {

void check_dim(const sparknn::Index& index, const Matrix& x, const char* what) {
    if (x.shape(1) != index.dim()) {
        throw sparknn::InvalidArgument(sparknn::detail::concat(what, " have dimension ", x.shape(1),
                                                               " but the index has dim=", index.dim()));
    }
}

const sparknn::IvfIndex& as_ivf(const sparknn::Index& index, const char* what) {
    auto* ivf = dynamic_cast<const sparknn::IvfIndex*>(&index);
    if (ivf == nullptr) {
        throw sparknn::InvalidArgument(sparknn::detail::concat(what, " applies to ivf indexes only (this index is ",
                                                               sparknn::kind_name(index.kind()), ")"));
    }
    return *ivf;
}

sparknn::IvfIndex& as_ivf_mut(sparknn::Index& index, const char* what) {
    return const_cast<sparknn::IvfIndex&>(as_ivf(index, what));
}

// A numpy array that owns `v` (moved to the heap, freed with the array): no copy.
template <class T>
nb::ndarray<nb::numpy, T> owned_array(std::vector<T>&& v, std::initializer_list<size_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
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
    m.attr("FORMAT_VERSION") = sparknn::kFormatVersion;
    m.def(
        "crc32c",
        [](nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> data, uint32_t seed) {
            nb::gil_scoped_release release;
            return sparknn::crc32c(data.data(), data.shape(0), seed);
        },
        "data"_a, "seed"_a = 0,
        "CRC-32C of a uint8 array (the checksum of index file sections), continued from seed");

    nb::class_<sparknn::Index>(m, "Index")
        .def_prop_ro("dim", &sparknn::Index::dim)
        .def_prop_ro("metric", [](const sparknn::Index& i) { return std::string(sparknn::metric_name(i.metric())); })
        .def_prop_ro("kind", [](const sparknn::Index& i) { return std::string(sparknn::kind_name(i.kind())); })
        .def("__len__", &sparknn::Index::size)
        .def_prop_rw("threads", &sparknn::Index::threads,
                     [](sparknn::Index& index, int threads) {
                         nb::gil_scoped_release release;  // waits for running searches
                         index.set_threads(threads);
                     })
        .def(
            "add",
            [](sparknn::Index& index, Matrix x, std::optional<IdVector> ids, std::optional<IdVector> lists) {
                check_dim(index, x, "vectors");
                if (ids && ids->shape(0) != x.shape(0)) {
                    throw sparknn::InvalidArgument(sparknn::detail::concat(
                        "ids has ", ids->shape(0), " entries but vectors has ", x.shape(0), " rows"));
                }
                if (lists && lists->shape(0) != x.shape(0)) {
                    throw sparknn::InvalidArgument(sparknn::detail::concat(
                        "lists has ", lists->shape(0), " entries but vectors has ", x.shape(0), " rows"));
                }
                const int64_t* id_ptr = ids ? ids->data() : nullptr;
                if (lists) {
                    auto& ivf = as_ivf_mut(index, "add(lists=...)");
                    nb::gil_scoped_release release;
                    ivf.add_to_lists(x.shape(0), x.data(), id_ptr, lists->data());
                    return;
                }
                nb::gil_scoped_release release;
                index.add(x.shape(0), x.data(), id_ptr);
            },
            "vectors"_a, "ids"_a.none(), "lists"_a.none() = nb::none())
        .def(
            "search",
            [](const sparknn::Index& index, Matrix q, size_t k, size_t ef, size_t nprobe, OutIds out_ids,
               OutDist out_dist, std::optional<ListMatrix> lists, bool widen, int threads) {
                check_dim(index, q, "queries");
                if (lists) {
                    as_ivf(index, "search(lists=...)");
                    if (lists->shape(0) != q.shape(0) || lists->shape(1) != nprobe) {
                        throw sparknn::InvalidArgument("lists must have shape [nq, nprobe]");
                    }
                }
                if (out_ids.shape(0) != q.shape(0) || out_ids.shape(1) != k || out_dist.shape(0) != q.shape(0) ||
                    out_dist.shape(1) != k) {
                    throw sparknn::InvalidArgument("output arrays must have shape [nq, k]");
                }
                sparknn::SearchParams params;
                params.ef = ef;
                params.nprobe = nprobe;
                if (lists) params.lists = lists->data();
                params.widen = widen;
                params.threads = threads;
                nb::gil_scoped_release release;
                index.search(q.shape(0), q.data(), k, out_ids.data(), out_dist.data(), params);
            },
            "queries"_a, "k"_a, "ef"_a, "nprobe"_a, "out_ids"_a, "out_distances"_a, "lists"_a.none() = nb::none(),
            "widen"_a = true, "threads"_a = -1)
        .def(
            "train",
            [](sparknn::Index& index, Matrix x) {
                auto* ivf = dynamic_cast<sparknn::IvfIndex*>(&index);
                if (ivf == nullptr) throw sparknn::InvalidArgument("train() applies to ivf indexes only");
                check_dim(index, x, "training vectors");
                nb::gil_scoped_release release;
                ivf->train(x.shape(0), x.data());
            },
            "vectors"_a)
        .def_prop_ro("is_trained",
                     [](const sparknn::Index& index) {
                         auto* ivf = dynamic_cast<const sparknn::IvfIndex*>(&index);
                         nb::gil_scoped_release release;
                         return ivf == nullptr || ivf->is_trained();
                     })
        .def(
            "ideal_query_batch",
            [](const sparknn::Index& index, size_t nprobe) {
                const auto& ivf = as_ivf(index, "ideal_query_batch()");
                nb::gil_scoped_release release;
                return ivf.ideal_query_batch(nprobe);
            },
            "nprobe"_a)
        .def(
            "nearest_lists",
            [](const sparknn::Index& index, Matrix q, size_t nprobe, OutIds out, int threads) {
                const auto& ivf = as_ivf(index, "nearest_lists()");
                check_dim(index, q, "queries");
                if (out.shape(0) != q.shape(0) || out.shape(1) != nprobe) {
                    throw sparknn::InvalidArgument("output array must have shape [nq, nprobe]");
                }
                nb::gil_scoped_release release;
                ivf.nearest_lists(q.shape(0), q.data(), nprobe, out.data(), threads);
            },
            "queries"_a, "nprobe"_a, "out_lists"_a, "threads"_a = -1)
        .def("centroids",
             [](const sparknn::Index& index) {
                 // A copy: train may replace them, and they may live in a mapped file owned by the index.
                 const auto& ivf = as_ivf(index, "centroids");
                 std::vector<float> c;
                 {
                     nb::gil_scoped_release release;
                     c = ivf.centroids();
                 }
                 const size_t d = index.dim(), n = c.size() / d;
                 return owned_array(std::move(c), {n, d});
             })
        .def("list_sizes",
             [](const sparknn::Index& index) {
                 const auto& ivf = as_ivf(index, "list_sizes");
                 std::vector<size_t> sizes;
                 {
                     nb::gil_scoped_release release;
                     sizes = ivf.list_sizes();
                 }
                 std::vector<int64_t> out(sizes.begin(), sizes.end());
                 const size_t n = out.size();
                 return owned_array(std::move(out), {n});
             })
        .def_prop_rw(
            "nprobe",
            [](const sparknn::Index& index) -> size_t {
                auto* ivf = dynamic_cast<const sparknn::IvfIndex*>(&index);
                nb::gil_scoped_release release;
                return ivf ? ivf->params().nprobe : 0;
            },
            [](sparknn::Index& index, size_t nprobe) {
                auto* ivf = dynamic_cast<sparknn::IvfIndex*>(&index);
                if (ivf == nullptr) throw sparknn::InvalidArgument("nprobe applies to ivf indexes only");
                nb::gil_scoped_release release;  // waits for running searches
                ivf->set_nprobe(nprobe);
            })
        .def(
            "save",
            [](const sparknn::Index& index, const std::string& path, bool sync,
               const std::vector<std::tuple<std::string, uint64_t, uint32_t>>& side_files) {
                std::vector<sparknn::SideFile> files;
                for (const auto& [role, bytes, crc] : side_files) files.push_back({role, bytes, crc});
                nb::gil_scoped_release release;
                index.save(path, sync, files);
            },
            "path"_a, "sync"_a = true, "side_files"_a = std::vector<std::tuple<std::string, uint64_t, uint32_t>>{})
        .def("side_files",
             [](const sparknn::Index& index) {
                 std::vector<std::tuple<std::string, uint64_t, uint32_t>> out;
                 for (const auto& f : index.side_files()) out.emplace_back(f.role, f.bytes, f.crc32c);
                 return out;
             })
        .def(
            "ids",
            [](nb::handle_t<sparknn::Index> self) {
                // Zero-copy and read-only; while it (or any view of it) lives, add raises.
                const sparknn::Index& index = nb::cast<const sparknn::Index&>(self);
                sparknn::PinnedView<int64_t> view;
                {
                    nb::gil_scoped_release release;
                    view = index.view_ids();
                }
                const size_t rows = view.rows;
                return pinned_array(self, std::move(view), {rows});
            })
        .def(
            "vectors",
            [](nb::handle_t<sparknn::Index> self) {
                // As ids(): zero-copy, read-only, pins the index against add.
                const sparknn::Index& index = nb::cast<const sparknn::Index&>(self);
                sparknn::PinnedView<float> view;
                {
                    nb::gil_scoped_release release;
                    view = index.view_vectors();
                }
                const size_t rows = view.rows, cols = view.cols;
                return pinned_array(self, std::move(view), {rows, cols});
            })
        .def(
            "reconstruct",
            [](const sparknn::Index& index, size_t start, size_t stop) {
                // Sizes only grow, so a range checked here stays valid; reconstruct checks again under its lock.
                if (start > stop || stop > index.size()) {
                    throw sparknn::InvalidArgument(sparknn::detail::concat(
                        "reconstruct: rows [", start, ", ", stop, ") outside [0, ", index.size(), ")"));
                }
                const size_t n = stop - start, d = index.dim();
                auto* out = new float[n * d];
                nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                {
                    nb::gil_scoped_release release;
                    index.reconstruct(start, n, out);
                }
                return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {n, d}, owner);
            },
            "start"_a, "stop"_a)
        .def(
            "reconstruct_labels",
            [](const sparknn::Index& index, nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig> labels) {
                const size_t n = labels.shape(0), d = index.dim();
                const int64_t* at = labels.data();
                auto* out = new float[n * d];
                nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                {
                    nb::gil_scoped_release release;
                    index.reconstruct_labels(n, at, out);
                }
                return nb::ndarray<nb::numpy, float, nb::ndim<2>>(out, {n, d}, owner);
            },
            "labels"_a)
        .def("list_labels",
             [](const sparknn::Index& index) {
                 const auto& ivf = as_ivf(index, "list_labels");
                 std::vector<int64_t> labels;
                 {
                     nb::gil_scoped_release release;
                     labels = ivf.list_labels();
                 }
                 const size_t n = labels.size();
                 return owned_array(std::move(labels), {n});
             })
        .def_prop_rw(
            "ef_search",
            [](const sparknn::Index& index) -> size_t {
                auto* h = dynamic_cast<const sparknn::HnswIndex*>(&index);
                nb::gil_scoped_release release;
                return h ? h->params().ef_search : 0;
            },
            [](sparknn::Index& index, size_t ef) {
                auto* h = dynamic_cast<sparknn::HnswIndex*>(&index);
                if (h == nullptr) throw sparknn::InvalidArgument("ef_search applies to hnsw indexes only");
                nb::gil_scoped_release release;  // waits for running searches
                h->set_ef_search(ef);
            })
        .def_prop_ro("params", [](const sparknn::Index& index) {
            nb::dict d;
            if (auto* h = dynamic_cast<const sparknn::HnswIndex*>(&index)) {
                sparknn::HnswParams p;
                {
                    nb::gil_scoped_release release;
                    p = h->params();
                }
                d["M"] = p.M;
                d["ef_construction"] = p.ef_construction;
                d["ef_search"] = p.ef_search;
                d["seed"] = p.seed;
            }
            if (auto* ivf = dynamic_cast<const sparknn::IvfIndex*>(&index)) {
                sparknn::IvfParams p;
                {
                    nb::gil_scoped_release release;
                    p = ivf->params();  // one snapshot (train sets nlist to the lists it made)
                }
                d["nlist"] = p.nlist;
                d["nprobe"] = p.nprobe;
                d["storage"] = std::string(sparknn::storage_name(p.storage));
                d["train_size"] = p.train_size;
                d["pq_m"] = p.pq_m;
                d["rerank"] = p.rerank;
                d["seed"] = p.seed;
            }
            return d;
        });

    m.def(
        "make_index",
        [](const std::string& kind, size_t dim, const std::string& metric, size_t M, size_t ef_construction,
           size_t ef_search, uint64_t seed, size_t nlist, size_t nprobe, const std::string& storage,
           size_t train_size, size_t pq_m, size_t rerank) {
            sparknn::IndexOptions o;
            o.M = M;
            o.ef_construction = ef_construction;
            o.ef_search = ef_search;
            o.seed = seed;
            o.nlist = nlist;
            o.nprobe = nprobe;
            o.storage = storage;
            o.train_size = train_size;
            o.pq_m = pq_m;
            o.rerank = rerank;
            return sparknn::make_index(sparknn::kind_from_string(kind), dim, sparknn::metric_from_string(metric), o);
        },
        "kind"_a, "dim"_a, "metric"_a, "M"_a, "ef_construction"_a, "ef_search"_a, "seed"_a, "nlist"_a = 0,
        "nprobe"_a = 16, "storage"_a = "float32", "train_size"_a = 0,
        "pq_m"_a = 0, "rerank"_a = 0);

    m.def(
        "load_index",
        [](const std::string& path, bool mmap, bool verify) {
            nb::gil_scoped_release release;
            return sparknn::load_index(path, mmap, verify);
        },
        "path"_a, "mmap"_a, "verify"_a);
}
