import numpy as np
import pytest
import torch

from moerec.config import EvalConfig
from moerec.data.sequences import Sequences
from moerec.data.split import EvalSet
from moerec.evaluation import evaluate, target_ranks
from moerec.evaluation.evaluator import exclude_seen, rank_eval_set
from moerec.evaluation.ranking import Exclusions, chunk_bounds, chunked_ranks, chunked_topk
from moerec.inference import Predictor, Query
from tests.helpers import assert_same_recommendation

CHUNKS = [1, 7, 64, 300, 301, 10_000]  # 301 columns: one chunk from 301 on
NUM_ITEMS = 300


@pytest.fixture(scope="module")
def scores() -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    matrix = torch.randn(6, NUM_ITEMS + 1, generator=generator)  # (B, V) distinct reals
    matrix[:, 0] = float("-inf")  # padding
    return matrix


@pytest.fixture(scope="module")
def histories() -> Sequences:
    rng = np.random.default_rng(12)
    return Sequences.from_lists(
        [
            rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False)
            for n in (3, 0, 40, 7, 1, 90)
        ]
    )


def test_chunks_cover_the_catalogue_once_with_the_asked_one_first():
    bounds = chunk_bounds(23, 5, first=17)
    assert bounds[0] == (15, 20)
    assert sorted(bounds) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_topk_equals_topk_of_the_whole_masked_row(scores, histories, chunk):
    rows = np.arange(6)
    whole = scores.clone()
    exclude_seen(whole, histories.offsets, histories.items, rows)
    expected_values, expected_ids = whole.topk(10, dim=1)

    exclusions = Exclusions.from_histories(histories.offsets, histories.items, rows)
    values, ids = chunked_topk(
        lambda start, stop: scores[:, start:stop].clone(), NUM_ITEMS + 1, 10, chunk, exclusions
    )
    assert torch.equal(values, expected_values)
    assert torch.equal(ids, expected_ids)
    seen = set(histories[2].tolist())
    assert not seen & set(ids[2].tolist())


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_ranks_equal_ranks_against_the_whole_masked_row(scores, histories, chunk):
    rows = np.arange(6)
    whole = scores.clone()
    exclude_seen(whole, histories.offsets, histories.items, rows)
    # every target in one chunk, as the evaluator batches them; one target is a history item
    lead = (150 // chunk) * chunk
    span = min(chunk, NUM_ITEMS + 1 - lead)
    targets = torch.tensor([lead + (i * 37) % span for i in range(6)])
    targets[targets == 0] = 1  # not the padding column
    repeats = [h for h in histories[2].tolist() if lead <= h < lead + span]
    if repeats:  # a target the user already has: masked, so it ranks behind every real item
        targets[2] = repeats[0]
    expected = target_ranks(whole, targets)

    exclusions = Exclusions.from_histories(histories.offsets, histories.items, rows)
    ranks, top = chunked_ranks(
        lambda start, stop: scores[:, start:stop].clone(), NUM_ITEMS + 1, targets, 10, chunk,
        exclusions,
    )  # fmt: skip
    assert torch.equal(ranks, expected)
    assert torch.equal(top, whole.topk(10, dim=1).indices)


def test_chunked_ranks_refuse_targets_from_different_chunks(scores):
    with pytest.raises(ValueError, match="same chunk"):
        chunked_ranks(lambda a, b: scores[:, a:b], NUM_ITEMS + 1, torch.tensor([1, 200]), 5, 100)


@pytest.mark.parametrize("exclude_history", [True, False])
def test_evaluation_metrics_do_not_depend_on_the_chunk_size(scores, histories, exclude_history):
    rng = np.random.default_rng(13)
    targets = rng.integers(1, NUM_ITEMS + 1, size=6)
    targets[3] = histories[3][0]  # a repeat: masked when the history is excluded
    eval_set = EvalSet(users=np.arange(6), histories=histories, targets=targets)

    def score(rows):
        return scores[torch.from_numpy(rows)].clone()

    results = [
        rank_eval_set(
            eval_set,
            NUM_ITEMS,
            score,
            EvalConfig(
                ks=(1, 5, 150), batch_size=4, exclude_history=exclude_history,
                score_chunk_items=chunk,
            ),
        ).metrics
        for chunk in CHUNKS
    ]  # fmt: skip
    assert all(metrics == results[-1] for metrics in results)
    assert 0.0 < results[-1]["hr@150"] < 1.0  # some hits, some misses: the ranks mattered


def test_model_evaluation_in_chunks_matches_one_pass(trained, tiny_dataset):
    one_pass = evaluate(trained.model, tiny_dataset.split.test, EvalConfig())
    chunked = evaluate(trained.model, tiny_dataset.split.test, EvalConfig(score_chunk_items=16))
    assert chunked.metrics == one_pass.metrics
    # users are batched by their target's chunk: the same routing, summed in another order
    for mine, theirs in zip(chunked.routing.layers, one_pass.routing.layers, strict=True):
        assert torch.equal(mine.expert_counts, theirs.expert_counts)
        assert mine.entropy_sum == pytest.approx(theirs.entropy_sum, rel=1e-6)


def _queries(dataset) -> list[Query]:
    history = dataset.sequences
    return [
        Query(history[0], k=10),
        Query(history[1], k=5, exclude_history=False),
        Query(history[2], k=8, exclude=np.array([5, 6, 7, 8, 9, 10])),
        Query(history[3], k=4, candidates=np.array([3, 40, 40, 77, 100, 12, *history[3][:2]])),
        Query(history[4], k=3, candidates=np.array([9, 2, 9]), exclude=np.array([2])),
        Query(history[5], candidates=np.array([11, 4, 11, *history[5][:1]]), score_only=True),
        Query(history[6], k=200),  # more than the catalogue: only real items come back
    ]


@pytest.mark.parametrize("chunk", [1, 16, 50])
def test_chunked_predictor_answers_as_the_whole_catalogue_path_does(predictor, tiny_dataset, chunk):
    chunked = Predictor(predictor.artefact, score_chunk_items=chunk)
    assert chunked.model.config.num_items + 1 > chunk  # really the chunked path
    queries = _queries(tiny_dataset)
    expected = predictor.run(queries)
    actual = chunked.run(queries)
    for one, other in zip(actual, expected, strict=True):
        assert_same_recommendation(one, other)
    assert len(actual[-1].items) == tiny_dataset.num_items - len(
        set(tiny_dataset.sequences[6].tolist())
    )
