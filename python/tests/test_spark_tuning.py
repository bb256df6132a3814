"""KNN(targetRecall=R) on a real local Spark: the model's nprobe / efSearch are chosen at fit so
that similarItems reaches R against exact search, the choice is reported and saved; a grouped
model's choices are made per group."""

import numpy as np
import pytest
from conftest import clustered, exact_knn, spark_items

pyspark = pytest.importorskip("pyspark")
from sparknn.spark import KNN, KNNModel

pytestmark = pytest.mark.spark

TOLERANCE = 0.02  # a 1000-item sample estimates recall@10 to about +-0.01


def _hard_data():
    """Many overlapping clusters: nprobe 16 is not enough for 0.99 here, 2 is for 0.8."""
    rng = np.random.default_rng(4)
    return (clustered(12_000, 24, 300, seed=3) * 0.4 + rng.standard_normal((12_000, 24))).astype(np.float32)


def _recall(model, x, ids=None):
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    position = {v: i for i, v in enumerate(ids.tolist())}
    got = {position[r["id"]]: [position[n["id"]] for n in r["neighbors"]] for r in model.similarItems().collect()}
    truth, _ = exact_knn(x, x, 11, "l2")
    want = [t[t != i][:10] for i, t in enumerate(truth)]
    return np.mean([len(set(got[i]) & set(want[i].tolist())) / 10 for i in range(len(x))])


@pytest.mark.parametrize("target", [0.8, 0.99])
def test_driver_ivf_nprobe_is_chosen_for_the_target(spark, tmp_path, target):
    x = _hard_data()
    df = spark_items(spark, x)
    model = KNN(k=10, metric="l2", featuresCol="vector", targetRecall=target).fit(df)
    chosen = model.tuning
    assert chosen.param == "nprobe" and chosen.reached and model.getNprobe() == chosen.value
    assert (chosen.value < 16) if target == 0.8 else (chosen.value > 16), chosen
    assert _recall(model, x) >= target - TOLERANCE
    model.write().save(str(tmp_path / "m"))
    loaded = KNNModel.load(str(tmp_path / "m"))
    assert loaded.getNprobe() == chosen.value and loaded.getTargetRecall() == target and loaded.tuning is None


def test_driver_hnsw_ef_is_chosen_for_the_target(spark):
    x = _hard_data()
    model = KNN(k=10, metric="l2", featuresCol="vector", indexType="hnsw", M=8, efConstruction=64,
                targetRecall=0.97).fit(spark_items(spark, x))
    assert model.tuning.param == "ef" and model.getEfSearch() == model.tuning.value and model.tuning.reached
    assert _recall(model, x) >= 0.97 - TOLERANCE


def test_sharded_hnsw_ef_is_chosen_for_the_target(spark):
    """Shards built on executors: the sample's true neighbours by a Spark job, every shard searched
    and merged on the driver up the ef ladder; string ids (stored by position per shard)."""
    x = _hard_data()
    ids = [f"item-{i}" for i in range(len(x))]
    df = spark_items(spark, x, ids=ids, id_type="string", partitions=4)
    model = KNN(k=10, metric="l2", featuresCol="vector", indexType="hnsw", numShards=2, M=8, efConstruction=64,
                targetRecall=0.97).fit(df)
    chosen = model.tuning
    assert len(model.layout.shards) == 2 and chosen.param == "ef" and chosen.reached, chosen
    assert model.getEfSearch() == chosen.value >= 11 and chosen.sample >= 900
    got = _recall(model, x, ids)
    assert got >= 0.97 - TOLERANCE, (chosen, got)
    # The least that reaches it: well below the chosen ef, the join falls short of the target.
    if chosen.value >= 22:
        lower = model.copy()
        lower.setEfSearch(chosen.value // 2)
        assert _recall(lower, x, ids) < got


def test_routed_ivf_nprobe_from_the_true_neighbours_lists(spark):
    x = _hard_data()
    ids = [f"item-{i}" for i in range(len(x))]
    df = spark_items(spark, x, ids=ids, id_type="string", partitions=4)
    model = KNN(k=10, metric="l2", featuresCol="vector", indexType="ivf", ivfMode="routed", nlist=64,
                targetPartBytes=300_000, targetRecall=0.95).fit(df)
    assert model.layout.mode == "routed" and model.tuning.param == "nprobe" and model.tuning.reached
    assert model.getNprobe() == model.tuning.value
    got = _recall(model, x, ids)
    assert got >= 0.95 - TOLERANCE, (model.tuning, got)
    # The estimate is the search's own recall (float32 lists are scanned exactly): one step below
    # the chosen nprobe falls short.
    if model.tuning.value > 1:
        lower = model.copy()
        lower.setNprobe(model.tuning.value - 1)
        assert _recall(lower, x, ids) < 0.95 + TOLERANCE


def _hard_groups():
    """Overlapping clusters in a large group (6000 items), a smaller one (3000) and a small one (500)."""
    return _hard_data()[:9500], np.repeat([0, 1, 2], [6000, 3000, 500])


def _group_recall(got: dict, x, codes, group, queries=None):
    """recall@10 of ``got`` (row -> neighbour rows) for the items of ``group`` (or ``queries`` of
    it, not items), against exact search within the group."""
    members = np.flatnonzero(codes == group)
    own = queries is None
    q = x[members] if own else queries
    truth, _ = exact_knn(x[members], q, 11 if own else 10, "l2")
    hits = []
    for i, t in enumerate(truth):
        want = members[t[t != i][:10]] if own else members[t[:10]]
        hits.append(len(set(got[members[i] if own else i]) & set(want.tolist())) / 10)
    return float(np.mean(hits))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("where", ["own shards at fit", "hashed shard when searched"])
def test_grouped_model_tunes_each_large_group_for_the_target(spark, tmp_path, monkeypatch, kind, where):
    """groupCol with targetRecall: a large group's index (two pieces here) is tuned on its own items
    by its build task, the choice kept in the model; a group on a hashed shard (none is large when
    MAX_LARGE is 1) is tuned when its index is built for a search. Both reach the target where the
    fixed knobs given beside it fall short."""
    from pyspark.sql import functions as F
    from sparknn.grouped import GroupTunings
    from sparknn.spark import group_plan

    if where == "hashed shard when searched":
        monkeypatch.setattr(group_plan, "MAX_LARGE", 1)
    x, codes = _hard_groups()
    mapping = spark.createDataFrame([(i, int(c)) for i, c in enumerate(codes)], ["id", "category"])
    df = spark_items(spark, x, partitions=3).join(mapping, "id")
    model = KNN(k=10, metric="l2", featuresCol="vector", groupCol="category", indexType=kind, nprobe=2, efSearch=10,
                M=8, efConstruction=60, targetRecall=0.95).fit(df)
    chosen = model.tuning
    assert isinstance(chosen, GroupTunings) and model.getTargetRecall() == 0.95
    if where == "own shards at fit":
        assert [(v, c) for v, _, c in model.layout.group_pieces] == [(0, 2)]
        assert len(chosen.chosen) == len(model.layout.shard_tunings) == 2 and chosen.reached, chosen.describe()
        assert all(t.param == ("nprobe" if kind == "ivf" else "ef") and t.sample >= 900 for _, t in chosen.chosen)
        assert "2 large group index(es)" in chosen.describe()
    else:
        assert model.layout.group_pieces == () and chosen.chosen == ()
        assert "tuned when searched" in chosen.describe(), chosen.describe()

    def neighbours(m):
        return {r["id"]: [n["id"] for n in r["neighbors"]] for r in m.similarItems().collect()}

    got = neighbours(model)
    assert _group_recall(got, x, codes, 0) >= 0.95 - TOLERANCE
    assert _group_recall(got, x, codes, 1) == 1.0, "groups up to grouped.SMALL stay exact"
    fixed = model.copy()
    fixed.clear(fixed.targetRecall)
    assert _group_recall(neighbours(fixed), x, codes, 0) < 0.95 - TOLERANCE, "the fixed knobs must fall short"
    # Queries of the large group, not items: searched with the same choices.
    rng = np.random.default_rng(9)
    q = x[rng.choice(6000, 300, replace=False)] + rng.standard_normal((300, 24)).astype(np.float32) * 0.3
    qdf = spark_items(spark, q, ids=list(range(300))).withColumn("category", F.lit(0).cast("bigint"))
    out = {r["id"]: [n["id"] for n in r["neighbors"]] for r in model.transform(qdf).collect()}
    assert _group_recall(out, x, codes, 0, queries=q) >= 0.95 - 2 * TOLERANCE
    # The choices and the target are saved with the model.
    model.write().save(str(tmp_path / "m"))
    loaded = KNNModel.load(str(tmp_path / "m"))
    assert loaded.layout.shard_tunings == model.layout.shard_tunings and loaded.getTargetRecall() == 0.95


def test_target_recall_bad_values_and_flat(spark):
    df = spark_items(spark, clustered(200, 8, 4, seed=1)).withColumn("g", pyspark.sql.functions.lit(1))
    for bad in (0, 1.5, -0.2):
        with pytest.raises((ValueError, TypeError), match="recall must be a number in"):
            KNN(featuresCol="vector", targetRecall=bad)
    flat = KNN(featuresCol="vector", indexType="flat", targetRecall=0.99).fit(df)
    assert flat.tuning is None  # exact: nothing to tune
    grouped_flat = KNN(featuresCol="vector", indexType="flat", groupCol="g", targetRecall=0.99).fit(df)
    assert grouped_flat.tuning is None and len(grouped_flat.similarItems().collect()) == 200
