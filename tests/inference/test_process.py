"""The model process: pipelined calls, merged forward passes, failures that stay contained."""

import asyncio
import os
import signal

import numpy as np
import pytest

from moerec.inference import BatchReport, MicroBatcher, PredictorProcess, PredictorProcessError
from moerec.inference.predictor import Query
from tests.helpers import assert_same_recommendation


@pytest.fixture(scope="module")
def child(predictor):
    passes: list[BatchReport] = []
    process = PredictorProcess(predictor.artefact.path, max_batch_size=64, on_pass=passes.append)
    process.start()
    process.passes = passes  # type: ignore[attr-defined]
    yield process
    process.close()


def users(dataset, n):
    return [dataset.sequences[u % len(dataset.sequences)] for u in range(n)]


def test_calls_in_flight_together_are_merged_into_fewer_forward_passes(
    child, predictor, tiny_dataset
):
    histories = users(tiny_dataset, 48)
    child.passes.clear()

    async def scenario():
        # A large first call keeps the child busy while the small ones queue up behind it.
        first = asyncio.ensure_future(child.run_async([Query(h, k=5) for h in histories[:32]]))
        rest = [child.run_async([Query(h, k=5)]) for h in histories[32:]]
        return [*(await first), *[r[0] for r in await asyncio.gather(*rest)]]

    results = asyncio.run(scenario())
    for history, result in zip(histories, results, strict=True):
        assert_same_recommendation(result, predictor.recommend([history], k=5)[0])
    assert sum(p.size for p in child.passes) == 48
    assert len(child.passes) < 17  # 17 calls: at least two of them shared a pass
    assert all(p.seconds > 0 and p.oldest_wait_seconds >= 0 for p in child.passes)


def test_a_bad_query_fails_only_its_own_call_when_passes_are_merged(child, predictor, tiny_dataset):
    histories = users(tiny_dataset, 8)

    async def scenario():
        calls = [child.run_async([Query(h, k=3)]) for h in histories]
        calls.insert(4, child.run_async([Query(np.asarray([10**9]), k=3)]))  # not in catalogue
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[4], PredictorProcessError)
    assert "model failed" in str(outcomes[4])
    good = outcomes[:4] + outcomes[5:]
    for history, result in zip(histories, good, strict=True):
        assert_same_recommendation(result[0], predictor.recommend([history], k=3)[0])
    assert child.alive


def test_a_cancelled_call_leaves_the_others_and_later_calls_correct(child, predictor, tiny_dataset):
    histories = users(tiny_dataset, 6)

    async def scenario():
        calls = [asyncio.ensure_future(child.run_async([Query(h, k=4)])) for h in histories]
        calls[2].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        later = await child.run_async([Query(histories[2], k=4)])
        return done, later

    done, later = asyncio.run(scenario())
    assert isinstance(done[2], asyncio.CancelledError)
    for i, history in enumerate(histories):
        if i != 2:
            assert_same_recommendation(done[i][0], predictor.recommend([history], k=4)[0])
    assert_same_recommendation(later[0], predictor.recommend([histories[2]], k=4)[0])
    # The blocking path still works once nothing is in flight.
    assert_same_recommendation(
        child.run([Query(histories[0], k=4)])[0], predictor.recommend([histories[0]], k=4)[0]
    )


def test_the_micro_batcher_keeps_at_most_two_batches_in_flight(predictor, tiny_dataset):
    histories = users(tiny_dataset, 40)
    process = PredictorProcess(predictor.artefact.path, max_batch_size=4)
    process.start()
    peak = 0
    try:
        batcher = MicroBatcher(
            predictor, max_batch_size=4, max_wait_ms=0, async_runner=process.run_async,
            pipelined=True,
        )  # fmt: skip

        async def scenario():
            nonlocal peak
            await batcher.start()

            async def watch():
                nonlocal peak
                while True:
                    peak = max(peak, batcher._in_flight)
                    await asyncio.sleep(0)

            watcher = asyncio.ensure_future(watch())
            results = await asyncio.gather(*(batcher.recommend(h, k=5) for h in histories))
            watcher.cancel()
            await batcher.stop()
            return results

        results = asyncio.run(scenario())
    finally:
        process.close()
    for history, result in zip(histories, results, strict=True):
        assert_same_recommendation(result, predictor.recommend([history], k=5)[0])
    assert 4 < peak <= 8  # more than one batch was handed over, never more than two


def test_calls_in_flight_fail_instead_of_hanging_when_the_child_dies(predictor, tiny_dataset):
    histories = users(tiny_dataset, 64)
    process = PredictorProcess(predictor.artefact.path)
    process.start()
    try:

        async def scenario():
            calls = [
                asyncio.ensure_future(process.run_async([Query(h, k=5) for h in histories]))
                for _ in range(8)
            ]
            await asyncio.sleep(0)
            os.kill(process._process.pid, signal.SIGKILL)
            return await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), timeout=30
            )

        outcomes = asyncio.run(scenario())
    finally:
        process.close()
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert failed, "the child was killed with calls in flight"
    assert all(isinstance(o, PredictorProcessError) for o in failed)
    assert not process.alive


def test_close_fails_calls_still_in_flight(predictor, tiny_dataset):
    histories = users(tiny_dataset, 64)
    process = PredictorProcess(predictor.artefact.path)
    process.start()

    async def scenario():
        calls = [
            asyncio.ensure_future(process.run_async([Query(h, k=5) for h in histories]))
            for _ in range(8)
        ]
        await asyncio.sleep(0)
        await asyncio.to_thread(process.close)  # as a reload closes the old model's process
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)

    outcomes = asyncio.run(scenario())
    assert any(isinstance(o, PredictorProcessError) for o in outcomes)
    assert all(isinstance(o, list | PredictorProcessError) for o in outcomes)
    with pytest.raises(PredictorProcessError, match="not running"):
        process.run([Query(histories[0], k=1)])
