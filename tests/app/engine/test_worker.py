"""The engine process's serving loop (app/engine/worker.py): when it steps, and which requests each step takes.

The batch loop is replaced by a recorder whose steps take a set time; messages come through a real pipe from a
thread that plays the HTTP process and waits for the steps it needs to see begin. The quiet window and cap are
stretched so that scheduling noise on a busy CI machine cannot change the outcome.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from app.engine import worker
from app.engine.batch_loop import StepOutput, StepStats
from app.engine.grammar import GrammarError
from app.engine.messages import Add, Cancel, FailedRequests, Refused, Step
from app.engine.spec import KVCacheSpec
from app.engine.types import KVStats, SamplingParams
from app.engine.wire import BlockingReader, frame, write_all
from app.model import hardware

PARAMS = SamplingParams(max_tokens=1)
Write = Callable[..., None]  # write(*messages): the messages go into the pipe in one write, so they arrive together


class RecordingLoop:
    """Takes every waiting request in one step (as a prefill does); each step lasts `step_s`. A request then stays
    in the running batch for `decode_steps` more steps (decode steps take no new requests)."""

    def __init__(self, step_s: float, decode_steps: int = 0) -> None:
        self.step_s = step_s
        self.decode_steps = decode_steps
        self.waiting_ids: list[int] = []
        self.running_ids: dict[int, int] = {}  # request id -> decode steps left
        self.steps: list[tuple[float, list[int]]] = []  # (when the step started, the requests it took)
        self.calls = 0
        self.last = StepStats()
        self.kv = KVStats(0.0, 0, 0, 0)
        self.failed: list[tuple[int, str, str]] = []  # rows a step ended with their own error
        self._step_started = threading.Condition()

    def wait_for_steps(self, count: int) -> None:
        """Block the caller (the fake HTTP process) until `count` steps with work have begun."""
        with self._step_started:
            assert self._step_started.wait_for(lambda: len(self.steps) >= count, timeout=10)

    def wait_for_requests(self, count: int) -> None:
        """Block the caller until `count` requests have been taken into steps."""
        with self._step_started:
            assert self._step_started.wait_for(lambda: sum(map(len, self.groups)) >= count, timeout=10)

    @property
    def idle(self) -> bool:
        return not self.waiting_ids and not self.running_ids

    @property
    def waiting(self) -> int:
        return len(self.waiting_ids)

    @property
    def running(self) -> int:
        return len(self.running_ids)

    def add(self, request_id: int, prompt: list[int], params: SamplingParams) -> None:
        self.waiting_ids.append(request_id)

    def cancel(self, request_id: int) -> None:
        if request_id in self.waiting_ids:
            self.waiting_ids.remove(request_id)
        self.running_ids.pop(request_id, None)

    def reset(self) -> list[int]:
        dropped = [*self.running_ids, *self.waiting_ids]
        self.waiting_ids, self.running_ids = [], {}
        return dropped

    def step(self) -> list[StepOutput]:
        self.calls += 1
        if self.idle:
            self.last = StepStats()
            return []
        taken, self.waiting_ids = self.waiting_ids, []
        with self._step_started:
            self.steps.append((time.monotonic(), taken))
            self._step_started.notify_all()
        time.sleep(self.step_s)
        rows = taken or list(self.running_ids)
        for request_id in taken:
            self.running_ids[request_id] = self.decode_steps + 1
        for request_id in rows:
            self.running_ids[request_id] -= 1
            if self.running_ids[request_id] == 0:
                del self.running_ids[request_id]
        self.last = StepStats("prefill" if taken else "decode", len(rows), self.step_s)
        return [StepOutput(request_id, 0, None) for request_id in rows]

    @property
    def groups(self) -> list[list[int]]:
        """The requests each prefill took, in order."""
        return [taken for _, taken in self.steps if taken]


@pytest.fixture
def pipes() -> Iterator[tuple[int, int, int, int]]:
    inbox_read, inbox_write = os.pipe()
    outbox_read, outbox_write = os.pipe()
    yield inbox_read, inbox_write, outbox_read, outbox_write
    for fd in (inbox_read, inbox_write, outbox_read, outbox_write):
        with contextlib.suppress(OSError):  # the test closed it already
            os.close(fd)


def serve(loop: RecordingLoop, pipes: tuple[int, int, int, int], feed: Callable[[Write], None]) -> list[Any]:
    """Run the serving loop while `feed(write)` plays the HTTP process; return what the engine sent back."""
    inbox_read, inbox_write, outbox_read, outbox_write = pipes
    received: list[Any] = []  # Step and FailedRequests records
    ended: list[BaseException] = []

    def engine() -> None:
        try:
            worker._serve(loop, BlockingReader(inbox_read), lambda message: write_all(outbox_write, message))  # type: ignore[arg-type]
        except BaseException as error:
            ended.append(error)
        finally:
            os.close(outbox_write)

    def collect() -> None:
        reader = BlockingReader(outbox_read)
        with contextlib.suppress(EOFError):
            while True:
                received.append(reader.recv())

    threads = [threading.Thread(target=engine), threading.Thread(target=collect)]
    for thread in threads:
        thread.start()
    try:
        feed(lambda *messages: write_together(inbox_write, messages))
    finally:
        os.close(inbox_write)  # the API process closing the pipe means stop
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "the serving loop did not stop when its inbox closed"
    assert len(ended) == 1
    assert isinstance(ended[0], EOFError)
    unexpected = [message for message in received if not isinstance(message, Step | FailedRequests | Refused)]
    assert not unexpected, f"the serving loop sent {unexpected}"
    return received


def write_together(fd: int, messages: tuple[tuple[Any, ...], ...]) -> None:
    """Messages written one by one can reach the engine one at a time (the first stepped alone, as it should be),
    which would make a test depend on the scheduler; one write puts them in the pipe at the same moment."""
    data = b"".join(frame(message) for message in messages)
    assert len(data) <= select.PIPE_BUF  # so the pipe takes it whole, in one piece
    written = os.write(fd, data)  # not inside the assert: `python -O` would drop the write with it
    assert written == len(data)


def stretch(monkeypatch: pytest.MonkeyPatch, quiet_s: float, cap_s: float) -> None:
    monkeypatch.setattr(worker, "QUIET_S", quiet_s)
    monkeypatch.setattr(worker, "GATHER_CAP_S", cap_s)


def test_a_request_reaching_an_idle_engine_is_stepped_at_once(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stretch(monkeypatch, quiet_s=3.0, cap_s=10.0)  # waiting would show as seconds, a loaded machine as less
    loop = RecordingLoop(step_s=0.0)
    sent_at: list[float] = []

    def feed(write: Write) -> None:
        sent_at.append(time.monotonic())
        write(Add(1, [1, 2], PARAMS))
        loop.wait_for_steps(1)

    serve(loop, pipes, feed)
    (started, taken), *_ = loop.steps
    assert taken == [1]
    assert started - sent_at[0] < 1.5  # far less than the (stretched) quiet window


def test_a_burst_arriving_during_a_step_is_gathered_into_the_next_one(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stretch(monkeypatch, quiet_s=0.3, cap_s=10.0)
    loop = RecordingLoop(step_s=0.2)

    def feed(write: Write) -> None:
        write(Add(0, [1], PARAMS))  # the first of the burst reaches an idle engine
        loop.wait_for_steps(1)
        for request_id in range(1, 21):  # the rest trickle in for ~0.6 s, well past the first step
            write(Add(request_id, [1], PARAMS))
            time.sleep(0.03)
        loop.wait_for_steps(2)

    received = serve(loop, pipes, feed)
    assert loop.groups == [[0], list(range(1, 21))]
    assert [len(message.tokens) for message in received] == [1, 20]  # one step message per step, a token per row


def test_gathering_stops_at_the_cap_when_requests_never_stop_coming(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stretch(monkeypatch, quiet_s=0.5, cap_s=0.3)
    loop = RecordingLoop(step_s=0.1)

    def feed(write: Write) -> None:
        for request_id in range(40):  # one every 20 ms for 0.8 s: the pipe is never quiet for 0.5 s
            write(Add(request_id, [1], PARAMS))
            time.sleep(0.02)
        # Closing the inbox stops the engine at once; on a loaded machine the last arrivals may not be stepped yet.
        loop.wait_for_requests(40)

    serve(loop, pipes, feed)
    assert [request_id for group in loop.groups for request_id in group] == list(range(40))
    assert len(loop.groups) >= 3  # the cap cut the stream into several steps instead of waiting for its end


def test_a_single_arrival_during_a_step_does_not_wait(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stretch(monkeypatch, quiet_s=2.0, cap_s=5.0)
    loop = RecordingLoop(step_s=0.2)

    def feed(write: Write) -> None:
        write(Add(0, [1], PARAMS))
        loop.wait_for_steps(1)
        write(Add(1, [1], PARAMS))  # arrives during the first step: steady traffic, not a burst
        loop.wait_for_steps(2)

    serve(loop, pipes, feed)
    (first_at, first), (second_at, second) = loop.steps
    assert (first, second) == ([0], [1])
    assert second_at - first_at < 1.0  # stepped right after the first step, not after the 2 s quiet window


def test_arrivals_that_do_not_outnumber_the_running_batch_do_not_hold_it_up(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    stretch(monkeypatch, quiet_s=2.0, cap_s=5.0)
    loop = RecordingLoop(step_s=0.1, decode_steps=10_000)  # a batch that keeps decoding

    def feed(write: Write) -> None:
        write(*[Add(request_id, [1], PARAMS) for request_id in range(4)])
        loop.wait_for_steps(1)  # their prefill runs; four rows will be decoding after it
        write(Add(4, [1], PARAMS), Add(5, [1], PARAMS))  # two arrive meanwhile: fewer than the four
        loop.wait_for_steps(2)

    serve(loop, pipes, feed)
    assert loop.groups[:2] == [[0, 1, 2, 3], [4, 5]]
    (first_at, _), (joined_at, _), *_ = loop.steps
    assert joined_at - first_at < 1.0  # prefilled right after the first step, not after a 2 s quiet window


def test_the_gather_also_takes_cancellations(pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    stretch(monkeypatch, quiet_s=1.0, cap_s=10.0)
    loop = RecordingLoop(step_s=0.2)

    def feed(write: Write) -> None:
        write(Add(0, [1], PARAMS))
        loop.wait_for_steps(1)
        write(*[Add(request_id, [1], PARAMS) for request_id in (1, 2, 3)])
        time.sleep(0.4)  # the first step is over; the engine is gathering (1 s quiet window)
        write(Cancel(2))
        loop.wait_for_steps(2)

    serve(loop, pipes, feed)
    assert loop.groups == [[0], [1, 3]]


def test_a_cancelled_last_request_is_reported_before_the_engine_sleeps(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = RecordingLoop(step_s=0.05, decode_steps=10_000)  # generates until cancelled
    calls_at_cancel: list[int] = []

    def feed(write: Write) -> None:
        write(Add(0, [1], PARAMS))
        loop.wait_for_steps(3)
        calls_at_cancel.append(loop.calls)
        write(Cancel(0))  # the client went away
        time.sleep(0.6)  # an engine that kept stepping would make ~12 more steps meanwhile

    received = serve(loop, pipes, feed)
    counts = [(message.waiting, message.running) for message in received]
    assert counts[0] == (0, 1)
    assert counts[-1] == (0, 0)  # the autoscaler's gauges must not stay at one running request
    assert loop.calls - calls_at_cancel[0] <= 3  # and then it slept instead of stepping an empty batch for 0.6 s


def test_warm_up_runs_the_lone_path_then_a_full_batch_joining_it(builtin_weights: Any) -> None:
    from app.engine.batch_loop import BatchLoop

    class Recorded(BatchLoop):
        def __init__(self, chunk_tokens: int) -> None:
            weights = builtin_weights
            super().__init__(weights.model, weights.eos_token_ids, max_batch_size=8, prefill_chunk_tokens=chunk_tokens)
            self.kinds: list[tuple[str, int]] = []

        def step(self) -> list[StepOutput]:
            outputs = super().step()
            self.kinds.append((self.last.kind, self.last.rows))
            return outputs

    loop = Recorded(chunk_tokens=0)
    worker._warm_up(loop, max_batch_size=8, chunk_tokens=0)
    assert loop.idle
    # lone, then a group prefilled alone (ahead of the running row's token), then the full batch
    assert loop.kinds[:3] == [("prefill", 1), ("prefill", 7), ("decode", 8)]
    assert loop.kv == KVStats(0.0, 0, 0, 0)  # the warm-up's prompts are neither counted nor cached

    # With chunked prefill on, a prompt of two chunks' work is prefilled beside the batch, a chunk a step (the
    # batch's own prompts, 64 tokens, are short enough to be prefilled whole).
    loop = Recorded(chunk_tokens=64)
    worker._warm_up(loop, max_batch_size=8, chunk_tokens=64)
    assert loop.idle
    # it holds a batch slot while its chunks run (its first chunk starts once the group has been prefilled)
    assert loop.kinds[:4] == [("prefill", 1), ("prefill", 6), ("chunk", 8), ("chunk", 8)]


class FailingStepLoop(RecordingLoop):
    """The first step with work raises, as an out-of-memory in a kernel would."""

    def __init__(self) -> None:
        super().__init__(step_s=0.0)
        self.raised = False

    def step(self) -> list[StepOutput]:
        if not self.idle and not self.raised:
            self.raised = True
            with self._step_started:
                self.steps.append((time.monotonic(), list(self.waiting_ids)))
                self._step_started.notify_all()
            raise RuntimeError("CUDA out of memory")
        return super().step()


def test_a_failing_step_ends_only_its_batch_and_the_engine_serves_the_next(pipes: tuple[int, int, int, int]) -> None:
    loop = FailingStepLoop()

    def feed(write: Write) -> None:
        write(Add(1, [1], PARAMS), Add(2, [1], PARAMS))
        loop.wait_for_steps(1)
        write(Add(3, [1], PARAMS))
        loop.wait_for_requests(3)

    received = serve(loop, pipes, feed)
    failures = [message for message in received if isinstance(message, FailedRequests)]
    assert len(failures) == 1
    assert sorted(failures[0].request_ids) == [1, 2] and "CUDA out of memory" in failures[0].reason
    served = [token[0] for message in received if isinstance(message, Step) for token in message.tokens]
    assert served == [3]


class RefusingLoop(RecordingLoop):
    """Refuses request 2 when it is added, with `refusal`."""

    refusal: Exception = ValueError("seed out of range")

    def add(self, request_id: int, prompt: list[int], params: SamplingParams) -> None:
        if request_id == 2:
            raise self.refusal
        super().add(request_id, prompt, params)


def test_a_request_the_loop_cannot_take_fails_alone(pipes: tuple[int, int, int, int]) -> None:
    loop = RefusingLoop(step_s=0.0)

    def feed(write: Write) -> None:
        write(Add(1, [1], PARAMS), Add(2, [1], PARAMS), Add(3, [1], PARAMS))
        loop.wait_for_requests(2)

    received = serve(loop, pipes, feed)
    failures = [message for message in received if isinstance(message, FailedRequests)]
    assert [f.request_ids for f in failures] == [[2]] and "seed out of range" in failures[0].reason
    served = sorted(token[0] for message in received if isinstance(message, Step) for token in message.tokens)
    assert served == [1, 3]


class GrammarLoop(RefusingLoop):
    """Refuses request 2's grammar when it is added; ends request 3 with an error of its own at its first step."""

    refusal = GrammarError("the JSON schema could not be compiled: Unsupported type")

    def step(self) -> list[StepOutput]:
        outputs = super().step()
        self.failed = (
            [(3, "the grammar allows no further token", "tools")] if any(o.request_id == 3 for o in outputs) else []
        )
        return [o for o in outputs if o.request_id != 3]


def test_grammar_refusals_are_sent_as_the_requests_own_errors(pipes: tuple[int, int, int, int]) -> None:
    loop = GrammarLoop(step_s=0.0)

    def feed(write: Write) -> None:
        write(Add(1, [1], PARAMS), Add(2, [1], PARAMS), Add(3, [1], PARAMS))
        loop.wait_for_requests(2)

    received = serve(loop, pipes, feed)
    refused = [message for message in received if isinstance(message, Refused)]
    assert refused == [
        Refused(2, "the JSON schema could not be compiled: Unsupported type", "response_format"),
        Refused(3, "the grammar allows no further token", "tools"),
    ]
    assert not [message for message in received if isinstance(message, FailedRequests)]


def test_the_prefill_chunk_follows_the_device_unless_set() -> None:
    assert worker.chunk_tokens(None, "cpu") == 256
    assert worker.chunk_tokens(None, "cuda") == 2048
    assert worker.chunk_tokens(0, "cpu") == 0  # off: every prompt whole
    assert worker.chunk_tokens(512, "cuda") == 512


def test_the_kv_cache_budget_is_the_size_given_else_the_devices_share_of_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    assert worker.kv_cache_bytes(KVCacheSpec(memory=123 * 2**20), cpu) == 123 * 2**20
    monkeypatch.setattr(hardware, "available_memory", lambda: 10 * 2**30)
    assert worker.kv_cache_bytes(KVCacheSpec(), cpu) == 5 * 2**30  # half of a CPU machine's available memory
    assert worker.kv_cache_bytes(KVCacheSpec(fraction=0.25), cpu) == 10 * 2**30 // 4
