"""KNN(targetRecall=R) on a real local Spark: the model's nprobe / efSearch are chosen at fit so
that similarItems reaches R against exact search, the choice is reported and saved, and the
builds not supported yet are refused before any job."""

import numpy as np
import pytest
from conftest import clustered, exact_knn, spark_items

pyspark = pytest.importorskip("pyspark")
from sparknn.errors import InvalidArgumentError
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


def test_target_recall_refused_where_not_supported_yet(spark):
    df = spark_items(spark, clustered(200, 8, 4, seed=1)).withColumn("g", pyspark.sql.functions.lit(1))
    with pytest.raises(InvalidArgumentError, match="not supported with groupCol"):
        KNN(featuresCol="vector", groupCol="g", targetRecall=0.9).fit(df)
    for bad in (0, 1.5, -0.2):
        with pytest.raises((ValueError, TypeError), match="recall must be a number in"):
            KNN(featuresCol="vector", targetRecall=bad)
    flat = KNN(featuresCol="vector", indexType="flat", targetRecall=0.99).fit(df)
    assert flat.tuning is None  # exact: nothing to tune
