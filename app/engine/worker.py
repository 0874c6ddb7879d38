"""The engine process: owns the model and runs the batch loop, apart from the HTTP process.

A separate process, as in vLLM's V1 engine core: model steps and the HTTP event loop no longer take turns on
one interpreter lock, so request parsing and token streaming run on another core while the model computes.
Messages are the typed records of messages.py over two one-way pipes (framing: wire.py).

The engine steps as soon as it has work: a request that reaches an idle engine is prefilled at once, and a burst
of clients overlaps its hand-over with that first prefill (see QUIET_S for how the rest of a burst is grouped).
"""

from __future__ import annotations

import gc
import logging
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from app.engine import tensor_parallel
from app.engine.batch_loop import BatchLoop
from app.engine.grammar import GrammarError, Grammars
from app.engine.messages import Add, Cancel, Failed, FailedRequests, FromEngine, Progress, Ready, Refused, Step
from app.engine.spec import KVCacheSpec, WorkerSpec
from app.engine.tensor_parallel import HEARTBEAT_S, ReplicatedLoop, TensorParallelError
from app.engine.types import Grammar, GrammarKind, SamplingParams
from app.engine.wire import BlockingReader, write_all
from app.model import hardware
from app.model.loader import LoadedWeights, check_split, load_weights, resolve_device
from app.model.source import ModelLoadError, load_tokenizer

logger = logging.getLogger(__name__)


# The KV cache's share of the memory free once the weights are in, by device, when no size is given. A GPU: 0.9,
# as vLLM users expect (activations of a step and the CUDA context need the rest). A CPU machine: 0.5 of the memory
# available, as the HTTP process, the tokenizer and the page cache share it; pages are only resident once used.
KV_CACHE_FRACTION = {"cpu": 0.5, "cuda": 0.9}


def kv_cache_bytes(spec: KVCacheSpec, device: torch.device) -> int:
    """The KV cache's budget in bytes: the size given, else the device's share of its free memory."""
    if spec.memory is not None:
        return spec.memory
    fraction = spec.fraction if spec.fraction is not None else KV_CACHE_FRACTION.get(device.type, 0.9)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else hardware.available_memory()
    return int(free * fraction)


# Chunked prefill's chunk by device, when --prefill-chunk-tokens is unset. CPU: measured (bench/results/
# cpu-2core-avx2-engine-figures.txt: 256 and 128 alike, the stall then set by the padded batch). GPU: not measured
# here (no GPU was lent); a 256-token chunk would leave most of a GPU idle each step, so 2048.
DEFAULT_CHUNK_TOKENS = {"cpu": 256, "cuda": 2048}


def chunk_tokens(setting: int | None, device_type: str) -> int:
    """The chunk size the batch loop runs with: the setting, else the device's default."""
    return setting if setting is not None else DEFAULT_CHUNK_TOKENS.get(device_type, DEFAULT_CHUNK_TOKENS["cuda"])


def cpu_threads(ranks: int = 1) -> tuple[int, int]:
    """Torch threads for (prefill, decode) on a CPU: every core, and every core but the HTTP process's one; with
    tensor-parallel ranks, each rank's share of them."""
    available = max(1, hardware.cpu_count() // ranks)
    return available, max(1, available - 1) if ranks == 1 else available


def run_worker(inbox: Connection, outbox: Connection, spec: WorkerSpec) -> None:
    # The API process owns shutdown and drains first: a Ctrl-C or SIGTERM to the process group must not kill
    # the engine under requests that are still streaming.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from app.logs import configure_logging

    configure_logging(spec.log_level)

    def send(message: FromEngine) -> None:
        write_all(outbox.fileno(), message)

    followers: list[subprocess.Popen[bytes]] = []
    try:
        try:
            followers = start_ranks(spec)
            weights = load_weights(spec.weights, lambda text: send(Progress(text)))
            budget = rank_kv_budget(spec, weights)
            if followers:
                tensor_parallel.check_split(weights.model, len(followers) + 1)
                # Every rank's pool must have the same blocks, and building a loop runs a forward pass (with the
                # ranks' all-reduces): the ranks agree on the budget first (the smallest any of them can hold),
                # then all build theirs together.
                budget = tensor_parallel.smallest(budget)
            built = build_loop(spec, weights, send, budget)
            loop: BatchLoop | ReplicatedLoop = ReplicatedLoop(built, followers) if followers else built
            send(Progress(_describe_kv(loop)))
            if followers:
                send(Progress(f"tensor parallel: {len(followers) + 1} ranks"))
            if loop.kv_cache_tokens < spec.weights.max_model_len:
                raise ModelLoadError(
                    f"the KV cache holds {loop.kv_cache_tokens} tokens, fewer than one request of --max-model-len "
                    f"{spec.weights.max_model_len} may need: raise --kv-cache-memory (or --kv-cache-memory-fraction) "
                    "or lower --max-model-len"
                )
            _warm_up(loop, spec.max_batch_size, chunk_tokens(spec.prefill_chunk_tokens, weights.model.device.type))
        except ModelLoadError as error:
            send(Failed(str(error)))
            return
        except Exception as error:  # torch or transformers failed in a way we did not foresee: still one line
            send(Failed(f"the model could not be loaded: {type(error).__name__}: {error}"))
            return
        gc.freeze()  # the model and libraries live as long as the process: keep the collector from walking them
        send(Ready(weights.description, loop.cache_config))
        try:
            _serve(loop, BlockingReader(inbox.fileno()), send, HEARTBEAT_S if followers else None)
        finally:
            if isinstance(loop, ReplicatedLoop):
                loop.stop()
    except (EOFError, BrokenPipeError, OSError):
        return  # the API process closed the pipes (shutdown) or is gone: nothing left to serve
    except TensorParallelError as error:
        logger.error(str(error), extra={"event": "engine_failed"})
        return  # the engine exits: the API process reports it lost, /healthz turns 503
    finally:
        tensor_parallel.stop_ranks(followers)  # none is left behind, whatever ended this process


def start_ranks(spec: WorkerSpec) -> list[subprocess.Popen[bytes]]:
    """With --tensor-parallel-size N > 1: check the model splits N ways here, start ranks 1..N-1, and join them in
    one process group as rank 0; [] otherwise."""
    size = spec.weights.tensor_parallel_size
    if size == 1:
        return []
    device = resolve_device(spec.weights.device).type
    check_split(spec.weights, device)
    init_method = tensor_parallel.free_init_method()
    followers = []
    for rank in range(1, size):
        process = subprocess.Popen([sys.executable, "-m", "app.engine.rank"], stdin=subprocess.PIPE)
        assert process.stdin is not None
        process.stdin.write(pickle.dumps((spec, rank, init_method, device)))
        process.stdin.close()
        followers.append(process)
    tensor_parallel.join_group(0, size, init_method, device)
    return followers


def build_loop(
    spec: WorkerSpec, weights: LoadedWeights, send: Callable[[FromEngine], None], kv_cache_budget: int
) -> BatchLoop:
    """The batch loop over the loaded weights, as every rank builds it, with a KV cache of `kv_cache_budget` bytes."""
    device_type = weights.model.device.type
    ranks = spec.weights.tensor_parallel_size
    return BatchLoop(
        weights.model,
        weights.eos_token_ids,
        spec.max_batch_size,
        cpu_threads=cpu_threads(ranks) if device_type == "cpu" else None,
        prefill_chunk_tokens=chunk_tokens(spec.prefill_chunk_tokens, device_type),
        kv_cache_bytes=kv_cache_budget,
        prefix_caching=spec.kv_cache.prefix_caching,
        block_size=spec.kv_cache.block_size,
        grammars=structured_outputs(spec.weights.directory, weights.model, weights.eos_token_ids, send),
    )


def rank_kv_budget(spec: WorkerSpec, weights: LoadedWeights) -> int:
    """The KV bytes this rank can hold: on a GPU, its own share of its own memory; on a CPU, whose memory the ranks
    share, its share of the machine's."""
    budget = kv_cache_bytes(spec.kv_cache, weights.model.device)
    return budget // spec.weights.tensor_parallel_size if weights.model.device.type == "cpu" else budget


def structured_outputs(
    directory: str, model: Any, eos: set[int], send: Callable[[FromEngine], None]
) -> Grammars | None:
    """The grammar index of the served tokenizer, over the model's whole output width (which may be wider)."""
    started = time.perf_counter()
    try:
        tokenizer = load_tokenizer(Path(directory), lambda text: None)
        grammars = Grammars(tokenizer, int(model.get_output_embeddings().out_features), eos)
    except Exception as error:  # a tokenizer xgrammar cannot index: serve, refusing only constrained requests
        logger.warning(f"structured outputs are off: {type(error).__name__}: {error}")
        return None
    send(Progress(f"structured outputs: grammar index built in {time.perf_counter() - started:.1f}s"))
    return grammars


def _describe_kv(loop: BatchLoop | ReplicatedLoop) -> str:
    gib = loop.kv_cache_tokens * loop.kv_bytes_per_token / 1024**3
    return (
        f"KV cache: {loop.kv_cache_tokens} tokens ({gib:.2f} GiB, {loop.kv_bytes_per_token} bytes a token), "
        f"prefix caching {'on' if loop.prefix_caching else 'off'}"
    )


WARM_UP_TOKENS = 2048  # prompt tokens of the full-batch warm-up prefill, at most


def _warm_up(loop: BatchLoop | ReplicatedLoop, max_batch_size: int, chunk_tokens: int) -> None:
    """Generate before saying ready, so the first clients do not pay for lazy initialisation: one short request
    alone (the lone path), then a full batch joining it while it runs (group prefill, batched decode over the pool),
    and, with chunked prefill on, a prompt of two chunks prefilled beside them.

    Measured on the built-in model: the first prefill of a 31-prompt burst took 35-40 ms after the lone warm-up
    alone, 28-29 ms after this one (later ones ~26 ms); the server's first benchmark run was its slowest."""
    greedy = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    loop.add(-1, [0, 1, 2, 3], greedy)
    loop.step()  # its prefill; it keeps running while the others join
    rows = max(1, max_batch_size - 2 if chunk_tokens else max_batch_size - 1)
    width = max(4, min(64, WARM_UP_TOKENS // rows))
    if chunk_tokens:
        loop.add(-2 - rows, list(range(min(2 * chunk_tokens, WARM_UP_TOKENS))), greedy)
    for row in range(rows):
        loop.add(-2 - row, list(range(row, row + width)), greedy)  # distinct: each prompt is computed
    if loop.structured_outputs:  # a constrained row too: on a GPU its masking kernel is compiled on first use
        loop.add(-3 - rows, [4, 5, 6], SamplingParams(max_tokens=3, grammar=Grammar(GrammarKind.JSON_OBJECT)))
    while not loop.idle:
        loop.step()
    loop.restart_counters()


# Requests that arrive while a step runs are prefilled together at the next step. When several came in meanwhile,
# more than the batch already running, a burst of clients is probably still being handed over (the HTTP process
# parses one every ~0.3 ms, with gaps of up to ~1.5 ms while it also streams tokens): the engine then waits until
# the pipe has been quiet this long, so the burst's tail joins its group instead of waiting a whole prefill behind
# it. The wait delays the running rows' next token, hence only when the newcomers outnumber them, and never longer
# than the cap. A request reaching an idle engine is not delayed at all.
QUIET_S = 0.002
GATHER_CAP_S = 0.010


def _serve(
    loop: BatchLoop | ReplicatedLoop,
    inbox: BlockingReader,
    send: Callable[[FromEngine], None],
    idle_wait: float | None = None,
) -> None:
    """Serve until the inbox closes. An idle loop sleeps until a message comes, or `idle_wait` seconds (tensor
    parallel: the other ranks must hear from rank 0 within their collectives' timeout)."""
    reported = (0, 0)
    while True:
        arrived = _take_messages(loop, inbox, send, 0.0)  # what came in during the last step
        if arrived >= 2 and arrived > loop.running:
            deadline = time.monotonic() + GATHER_CAP_S
            while (left := deadline - time.monotonic()) > 0 and inbox.poll(min(QUIET_S, left)):
                _take_messages(loop, inbox, send, 0.0)
        elif loop.idle and (loop.waiting, loop.running) == reported:
            _take_messages(loop, inbox, send, idle_wait)  # nothing to do or to report: sleep until a request comes
        try:
            outputs = loop.step()
        except TensorParallelError:
            raise  # the ranks are out of step: nothing left to serve with
        except Exception as error:
            # A step that raises (out of memory, a kernel error) leaves the batch in an unknown state: fail the
            # requests in it, log why, and keep serving new ones rather than taking the whole server down.
            logger.exception("engine step failed", extra={"event": "engine_step_failed"})
            send(FailedRequests(loop.reset(), f"{type(error).__name__}: {error}"))
            outputs = []
        for request_id, reason, field in loop.failed:
            send(Refused(request_id, reason, field))
        counts = (loop.waiting, loop.running)
        if outputs or counts != reported:  # a cancelled request changes the counts without producing a token
            reported = counts
            stats = loop.last
            send(
                Step(
                    [
                        (o.request_id, o.token, o.finish.value if o.finish else None, o.is_eos, o.logprobs)
                        for o in outputs
                    ],
                    loop.waiting,
                    loop.running,
                    stats.rows,
                    loop.kv,
                )
            )
            if outputs and logger.isEnabledFor(logging.DEBUG):
                logger.debug(stats.kind, extra={"rows": stats.rows, "ms": round(stats.seconds * 1000, 2)})


def _take_messages(
    loop: BatchLoop | ReplicatedLoop, inbox: BlockingReader, send: Callable[[FromEngine], None], timeout: float | None
) -> int:
    """Handle every message that is ready (waiting up to timeout for the first); return how many were adds."""
    added = 0
    while inbox.poll(timeout):
        match inbox.recv():
            case Add(request_id, prompt, params):
                added += 1
                try:
                    loop.add(request_id, prompt, params)
                except GrammarError as error:
                    field = params.grammar.field if params.grammar is not None else "response_format"
                    send(Refused(request_id, str(error), field))
                except Exception as error:  # e.g. a seed torch cannot take: fail that request, not the engine
                    send(FailedRequests([request_id], f"{type(error).__name__}: {error}"))
            case Cancel(request_id):
                loop.cancel(request_id)
            case unknown:  # a mismatch between the two processes' code: say so, and serve on
                logger.error(f"the engine got a message it does not know: {unknown!r}")
        timeout = 0.0
    return added
