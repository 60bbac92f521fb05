import asyncio

import numpy as np
import pytest

from moerec import MoerecError
from moerec.inference import BatcherClosedError, BatchReport, MicroBatcher, Query
from tests.helpers import assert_same_recommendation


def histories(dataset, n):
    return [dataset.sequences[u] for u in range(n)]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_forward_passes_and_match_direct_calls(predictor, tiny_dataset):
    reports: list[BatchReport] = []
    users = histories(tiny_dataset, 12)

    async def scenario():
        # a generous wait so that all twelve requests can join the first batches
        async with MicroBatcher(predictor, max_batch_size=32, max_wait_ms=200,
                                on_batch=reports.append) as batcher:  # fmt: skip
            return await asyncio.gather(*(batcher.recommend(h, k=5) for h in users))

    results = run(scenario())
    assert sum(r.size for r in reports) == 12
    assert len(reports) < 12  # fewer forward passes than requests
    for history, result in zip(users, results, strict=True):
        assert_same_recommendation(result, predictor.recommend([history], k=5)[0])


def test_batches_never_exceed_max_batch_size(predictor, tiny_dataset):
    reports: list[BatchReport] = []

    async def scenario():
        async with MicroBatcher(predictor, max_batch_size=4, max_wait_ms=200,
                                on_batch=reports.append) as batcher:  # fmt: skip
            await asyncio.gather(*(batcher.recommend(h) for h in histories(tiny_dataset, 10)))

    run(scenario())
    assert max(r.size for r in reports) <= 4
    assert sum(r.size for r in reports) == 10


def test_each_request_gets_its_own_k_and_exclusion(predictor, tiny_dataset):
    history = tiny_dataset.sequences[3]

    async def scenario():
        async with MicroBatcher(predictor, max_wait_ms=200) as batcher:
            return await asyncio.gather(
                batcher.recommend(history, k=3),
                batcher.recommend(history, k=7, exclude_history=False),
            )

    short, unfiltered = run(scenario())
    assert len(short.items) == 3
    assert len(unfiltered.items) == 7
    assert unfiltered.items == predictor.recommend([history], k=7, exclude_history=False)[0].items


def test_a_bad_request_fails_alone(predictor, tiny_dataset):
    async def scenario():
        async with MicroBatcher(predictor, max_wait_ms=200) as batcher:
            return await asyncio.gather(
                batcher.recommend(np.array([], dtype=np.int64)),
                batcher.recommend(tiny_dataset.sequences[0]),
                return_exceptions=True,
            )

    failed, served = run(scenario())
    assert isinstance(failed, MoerecError)
    assert len(served.items) == 10


def test_requests_before_start_are_refused(predictor, tiny_dataset):
    batcher = MicroBatcher(predictor)
    with pytest.raises(BatcherClosedError, match="start"):
        run(batcher.recommend(tiny_dataset.sequences[0]))


def test_invalid_settings_are_refused(predictor):
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(predictor, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(predictor, max_wait_ms=-1)


def test_requests_that_queued_during_a_forward_pass_share_the_next_one(predictor, tiny_dataset):
    # All 20 are queued before the worker first runs: with no waiting allowed, each batch must
    # still take every request already queued (up to the maximum), not one at a time.
    reports: list[BatchReport] = []

    async def run():
        async with MicroBatcher(predictor, max_batch_size=4, max_wait_ms=0,
                                on_batch=reports.append) as batcher:  # fmt: skip
            await asyncio.gather(*(batcher.recommend(h) for h in histories(tiny_dataset, 20)))

    asyncio.run(run())
    assert [r.size for r in reports] == [4] * 5


def test_a_lone_request_does_not_wait_for_companions(predictor, tiny_dataset):
    # Requests a second apart: the batcher has no reason to expect a companion, so even a
    # generous max_wait is never spent (each answer takes a forward pass, not 300 ms).
    reports: list[BatchReport] = []

    async def scenario():
        async with MicroBatcher(predictor, max_wait_ms=300, on_batch=reports.append) as batcher:
            for history in histories(tiny_dataset, 3):
                await batcher.recommend(history)
                await asyncio.sleep(0.4)

    run(scenario())
    assert [r.size for r in reports] == [1, 1, 1]
    assert max(r.oldest_wait_seconds for r in reports) < 0.15


def test_under_steady_traffic_the_batcher_waits_for_companions(predictor, tiny_dataset):
    # One request every 10 ms, 100 ms of allowed wait: once the batcher has seen the pace,
    # it holds batches open and they fill up.
    reports: list[BatchReport] = []

    async def scenario():
        async with MicroBatcher(predictor, max_wait_ms=100, on_batch=reports.append) as batcher:
            pending = []
            for history in histories(tiny_dataset, 30):
                pending.append(asyncio.ensure_future(batcher.recommend(history)))
                await asyncio.sleep(0.01)
            await asyncio.gather(*pending)

    run(scenario())
    assert sum(r.size for r in reports) == 30
    assert max(r.size for r in reports) >= 4


def test_a_model_in_a_child_process_answers_like_the_one_in_process(predictor, tiny_dataset):
    from moerec.inference import PredictorProcess, PredictorProcessError

    users = histories(tiny_dataset, 12)
    child = PredictorProcess(predictor.artefact.path)
    child.start()
    try:

        async def run():
            async with MicroBatcher(predictor, runner=child.run) as batcher:
                return await asyncio.gather(*(batcher.recommend(h, k=5) for h in users))

        for history, result in zip(users, asyncio.run(run()), strict=True):
            assert_same_recommendation(result, predictor.recommend([history], k=5)[0])

        async def run_async():  # the event-loop path the service uses
            async with MicroBatcher(predictor, async_runner=child.run_async) as batcher:
                return await asyncio.gather(*(batcher.recommend(h, k=5) for h in users))

        for history, result in zip(users, asyncio.run(run_async()), strict=True):
            assert_same_recommendation(result, predictor.recommend([history], k=5)[0])
        with pytest.raises(PredictorProcessError, match="model failed"):
            child.run([Query(np.asarray([10**9]), k=1)])  # an id outside the catalogue
        assert child.alive  # one bad batch does not kill the process
    finally:
        child.close()
    assert not child.alive
    with pytest.raises(PredictorProcessError, match="not running"):
        child.run([Query(users[0], k=1)])


def test_a_child_process_that_cannot_load_the_model_says_why(tmp_path):
    from moerec.inference import PredictorProcess, PredictorProcessError

    with pytest.raises(PredictorProcessError, match="could not load"):
        PredictorProcess(tmp_path).start()
