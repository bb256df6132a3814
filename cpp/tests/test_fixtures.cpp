// Golden index files (data/README.md): every committed fixture of every format
// version still loads, mapped and read, with its recorded kind, shape and
// parameters, and answers its recorded queries; the current version's
// fixtures are byte for byte what the writer produces today, and cover every
// index kind and storage.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "sparknn/file.h"
#include "sparknn/hnsw.h"
#include "sparknn/index.h"
#include "sparknn/ivf.h"
#include "test_util.h"

namespace sparknn {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

struct Expected {
    std::string metric;
    size_t dim = 0, count = 0, k = 0;
    std::map<std::string, std::string> params;
    std::vector<float> queries;
    std::vector<int64_t> ids;
    std::vector<float> dist;
};

Expected read_expected(const fs::path& p) {
    Expected e;
    std::ifstream in(p);
    EXPECT_TRUE(in.good()) << "missing " << p;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream s(line);
        std::string key;
        s >> key;
        if (key == "metric") s >> e.metric;
        if (key == "dim") s >> e.dim;
        if (key == "count") s >> e.count;
        if (key == "k") s >> e.k;
        if (key == "param") {
            std::string name, value;
            s >> name >> value;
            e.params[name] = value;
        }
        if (key == "query") {
            for (float v; s >> v;) e.queries.push_back(v);
        }
        if (key == "result") {
            int64_t id;
            float d;
            while (s >> id >> d) {
                e.ids.push_back(id);
                e.dist.push_back(d);
            }
        }
    }
    return e;
}


uint32_t format_version_of(const Bytes& b) {
    uint32_t v = 0;
    if (b.size() >= 12) std::memcpy(&v, b.data() + 8, 4);  // FORMAT.md: u32 at offset 8
    return v;
}

// The parameters a loaded index reports, named as in the .expected files.
std::map<std::string, std::string> params_of(const Index& index) {
    std::map<std::string, std::string> p;
    // flat and hnsw files name their storage when it is not float32 (from version 2)
    if (index.kind() != IndexKind::Ivf && index.storage() != Storage::Float32) p["storage"] = storage_name(index.storage());
    if (const auto* h = dynamic_cast<const HnswIndex*>(&index)) {
        p["M"] = std::to_string(h->params().M);
        p["ef_construction"] = std::to_string(h->params().ef_construction);
        p["ef_search"] = std::to_string(h->params().ef_search);
        p["seed"] = std::to_string(h->params().seed);
    }
    if (const auto* ivf = dynamic_cast<const IvfIndex*>(&index)) {
        p["nlist"] = std::to_string(ivf->nlist());
        p["nprobe"] = std::to_string(ivf->params().nprobe);
        p["storage"] = storage_name(ivf->params().storage);
        p["pq_m"] = std::to_string(ivf->params().pq_m);
        p["rerank"] = std::to_string(ivf->params().rerank);
        p["seed"] = std::to_string(ivf->params().seed);
        if (ivf->first_pass_dims() != 0) p["first_pass_dims"] = std::to_string(ivf->first_pass_dims());
    }
    return p;
}

std::vector<fs::path> fixtures() {
    std::vector<fs::path> out;
    for (const auto& entry : fs::directory_iterator(SPARKNN_TEST_DATA_DIR)) {
        if (entry.path().extension() == ".snn") out.push_back(entry.path());
    }
    std::sort(out.begin(), out.end());
    return out;
}

class GoldenFixture : public ::testing::TestWithParam<fs::path> {};

TEST_P(GoldenFixture, LoadsAndAnswersAsRecorded) {
    const fs::path& path = GetParam();
    const Expected e = read_expected(fs::path(path).replace_extension(".expected"));
    ASSERT_GT(e.dim, 0u);
    ASSERT_GT(e.k, 0u);
    ASSERT_EQ(e.queries.size() % e.dim, 0u);
    const size_t nq = e.queries.size() / e.dim;
    ASSERT_GT(nq, 0u);
    ASSERT_EQ(e.ids.size(), nq * e.k);
    // File names start with the kind: flat_..., hnsw_..., ivf_...
    const std::string name = path.filename().string();
    const std::string kind = name.substr(0, name.find('_'));

    for (bool mmap : {true, false}) {
        SCOPED_TRACE(mmap ? "mmap" : "read");
        auto index = load_index(path.string(), mmap);
        EXPECT_EQ(kind_name(index->kind()), kind);
        EXPECT_EQ(metric_name(index->metric()), e.metric);
        EXPECT_EQ(index->dim(), e.dim);
        EXPECT_EQ(index->size(), e.count);
        EXPECT_EQ(params_of(*index), e.params);
        if (index->kind() == IndexKind::Hnsw) {
            // Otherwise search scans exactly and the graph sections go untested.
            ASSERT_LT(dynamic_cast<const HnswIndex&>(*index).params().ef_search, e.count);
        }
        std::vector<int64_t> ids(nq * e.k);
        std::vector<float> dist(nq * e.k);
        index->search(nq, e.queries.data(), e.k, ids.data(), dist.data());
        EXPECT_EQ(ids, e.ids);
        for (size_t i = 0; i < dist.size(); ++i) {
            EXPECT_NEAR(dist[i], e.dist[i], 1e-5 * std::max(1.0f, std::fabs(e.dist[i]))) << "at " << i;
        }
    }

    const Bytes bytes = test::read_bytes(path);
    if (format_version_of(bytes) == kFormatVersion) {
        const fs::path resaved =
            fs::temp_directory_path() / ("sparknn_fixture_" + std::to_string(::getpid()) + "_" + name);
        const auto loaded = load_index(path.string());
        loaded->save(resaved, true, loaded->side_files());
        const Bytes again = test::read_bytes(resaved);
        fs::remove(resaved);
        EXPECT_EQ(again, bytes) << "the writer no longer produces this version's layout";
    }
}

std::string test_name(const ::testing::TestParamInfo<fs::path>& info) {
    std::string s = info.param.stem().string();
    for (char& c : s) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    return s;
}

INSTANTIATE_TEST_SUITE_P(Data, GoldenFixture, ::testing::ValuesIn(fixtures()), test_name);

// Side-file digests (the SideFiles section, optional in version 1) are read back as written.
TEST(GoldenFixtures, SideFilesAreReadBack) {
    const auto index = load_index(std::string(SPARKNN_TEST_DATA_DIR) + "/flat_l2_sidefiles_v1.snn");
    ASSERT_EQ(index->side_files().size(), 2u);
    EXPECT_EQ(index->side_files()[0].role, "ids");
    EXPECT_EQ(index->side_files()[0].bytes, 1234u);
    EXPECT_EQ(index->side_files()[0].crc32c, 0x0badcafeu);
    EXPECT_EQ(index->side_files()[1].role, "items");
    EXPECT_TRUE(load_index(std::string(SPARKNN_TEST_DATA_DIR) + "/flat_l2_v1.snn")->side_files().empty());
}

// A format version is pinned only if its fixtures hold every kind with every
// storage it keeps, and re-ranking.
TEST(GoldenFixtures, CurrentVersionCoversEveryKindAndStorage) {
    std::set<std::string> covered;
    for (const fs::path& path : fixtures()) {
        if (format_version_of(test::read_bytes(path)) != kFormatVersion) continue;
        auto index = load_index(path.string());
        covered.insert(kind_name(index->kind()));
        covered.insert(std::string(kind_name(index->kind())) + " " + storage_name(index->storage()));
        if (const auto* ivf = dynamic_cast<const IvfIndex*>(index.get())) {
            if (ivf->params().rerank > 0) covered.insert("ivf rerank");
            if (ivf->first_pass_in_use().first > 0) covered.insert("ivf first pass");
        }
    }
    for (const char* required : {"flat float32", "flat fp16", "flat bf16", "hnsw float32", "hnsw fp16", "hnsw bf16",
                                 "ivf float32", "ivf fp16", "ivf bf16", "ivf sq8", "ivf pq", "ivf rerank",
                                 "ivf first pass"}) {
        EXPECT_TRUE(covered.count(required))
            << "no " << required << " fixture of format version " << kFormatVersion << " (see data/README.md)";
    }
}

}  // namespace
}  // namespace sparknn
