import contextlib

import numpy as np

from engine.coreset import CoresetConfig, coreset_size, greedy_k_center
from engine.index import NearestNeighbourIndex


def test_size_is_clamped_and_few_shot_keeps_everything() -> None:
    cfg = CoresetConfig(rate=0.1, min_size=100, max_size=1000)
    assert coreset_size(50, cfg) == 50  # fewer patches than the minimum: keep all
    assert coreset_size(500, cfg) == 100
    assert coreset_size(5000, cfg) == 500
    assert coreset_size(50_000, cfg) == 1000


def test_every_cluster_gets_a_centre_and_selection_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 32)) * 20
    points = np.concatenate([c + rng.normal(size=(200, 32)) for c in centres]).astype(np.float32)
    chosen = greedy_k_center(points, 8, projection_dim=16, seed=1)
    assert len(set(chosen.tolist())) == 8
    assert sorted({int(i) // 200 for i in chosen}) == list(range(8))
    assert (greedy_k_center(points, 8, projection_dim=16, seed=1) == chosen).all()


def test_greedy_covers_clustered_data_better_than_random_choice() -> None:
    # Patch embeddings are clustered (texture kinds of unequal frequency), which is where
    # k-center beats sampling: rare clusters still get a centre.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 64)) * 5
    points = np.concatenate(
        [
            c + rng.normal(size=(int(rng.integers(10, 200)), 64)) * rng.uniform(0.2, 2)
            for c in centres
        ]
    ).astype(np.float16)

    def radius(idx: np.ndarray) -> float:
        index = NearestNeighbourIndex.build(points[idx], "l2")
        return float(index.nearest_distance(points).max())

    greedy = radius(greedy_k_center(points, 60, projection_dim=32))
    random = radius(rng.choice(len(points), 60, replace=False))
    assert greedy < 0.6 * random


def test_checkpoint_is_polled_and_can_abort() -> None:
    points = np.random.default_rng(2).normal(size=(2000, 8)).astype(np.float32)
    calls = []

    def checkpoint() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise InterruptedError

    with contextlib.suppress(InterruptedError):
        greedy_k_center(points, 1000, checkpoint=checkpoint)
    assert len(calls) == 2


def test_index_metrics_and_round_trip() -> None:
    bank = np.array([[1, 0], [0, 2]], np.float32)
    cos = NearestNeighbourIndex.build(bank, "cosine")
    assert cos.nearest_distance(np.array([[3, 0]], np.float32))[0] < 1e-6
    l2 = NearestNeighbourIndex.build(bank, "l2")
    assert l2.nearest_distance(np.array([[0, 5]], np.float32))[0] == np.float32(3.0)
    again = NearestNeighbourIndex.deserialize(l2.serialize(), "l2")
    assert again.nearest_distance(np.array([[0, 5]], np.float32))[0] == np.float32(3.0)
