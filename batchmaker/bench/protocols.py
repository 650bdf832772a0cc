"""``batchmaker bench-protocols``: what the KServe v2 protocol costs against batchmaker.v1.

One ``batchmaker serve`` subprocess serves both protocols on one port and one engine
(``server/kserve.py``), so any difference between them is the protocol's: its messages,
its servicer and how a client drives it. One recorded trace is replayed open-loop
(``openloop.replay``) down three paths, in one run:

- ``v1``: ``batchmaker.v1.Inference/InferStream``, one server-streaming call per request,
  the best two ids per step, through the asyncio client (as ``bench-overhead``'s gRPC
  path);
- ``v2-stream``: ``inference.GRPCInferenceService/ModelStreamInfer`` with one
  bidirectional stream per request: the request written, the stream half-closed, the
  responses read until ``triton_final_response`` (what a client does that opens a
  stream per call);
- ``v2-mux``: the same RPC with every request of the replay multiplexed on shared
  streams, one per ``--mux-requests`` (64) consecutive requests of the trace, responses
  routed back by their echoed ``id`` (what a Triton client does with ``start_stream``
  and many ``async_stream_infer`` calls). 64 is the engine's default max batch: at
  saturation a stream carries about one batch of requests, so the server's per-stream
  write lock and reader are shared as a busy client would share them, and there are
  still several streams (seven for 400 requests), as a pool of client workers has.

v2 requests are what ``tritonclient`` sends: ``INPUT_IDS`` INT64 ``[T]`` as raw
little-endian bytes, ``top_k`` 2, outputs ``TOP_IDS`` and ``TOP_SCORES``; responses
are read from ``raw_output_contents``. Each v2 client builds its message inside the
send, as the v1 client does, so both pay their client's encoding and decoding in the
timed replay (client and server share this machine's cores).

At *saturation* (the whole trace at once; throughput = completed requests / makespan)
and, unless ``--no-half-load``, at *half load* (half the median v1 saturation
throughput: latency p50/p99, time to first output), after ``--warmup-rounds`` (1)
uncounted saturated replays down each path. Each round runs every path once, in an
order rotated by one per round, so each path takes each position once every three rounds
and drift in this machine's speed is shared. The headline is the per-round ratio of each
v2 path's saturation throughput over v1's in the same round: median and range.

Every response, on every path and round, is checked against its request run alone in
plain torch (``reference.check_runs``): each step's best id and the scores of the best
two, and as many steps; the second id tells a tie from a wrong id. The report is
``valid`` only if all match and nothing failed; the command fails otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import grpc
import numpy as np

from batchmaker.bench import openloop, overhead
from batchmaker.bench.launcher import ServerProcess
from batchmaker.bench.openloop import Send
from batchmaker.bench.overhead import grpc_sender, serve_args
from batchmaker.bench.reference import TOP_K, Fingerprint, check_runs, plain_reference
from batchmaker.bench.trace import Trace, make_trace
from batchmaker.client import AsyncClient
from batchmaker.client.channel import DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, open_channel
from batchmaker.config import EngineConfig
from batchmaker.errors import BatchMakerError, Code, error_for
from batchmaker.kserve import open_inference_pb2 as kpb
from batchmaker.kserve import open_inference_pb2_grpc as kpb_grpc
from batchmaker.models.builtin import builtin_models
from batchmaker.types import StepOutput
from batchmaker.wire.kserve import FINAL, INPUT_IDS, TOP_IDS, TOP_SCORES

V1, V2_STREAM, V2_MUX = "v1", "v2-stream", "v2-mux"
PATHS = (V1, V2_STREAM, V2_MUX)
SATURATION_RATE = 1e6
"""Requests/s: every arrival within a millisecond, so the server always has a backlog."""
MUX_REQUESTS = 64
"""Requests of the trace per shared stream on ``v2-mux`` (the default max batch)."""
TARGET_RATIO = 0.9
"""v2 over v1 saturation throughput we aim for."""


@dataclass
class RunResult(overhead.RunResult):
    """One replay of the trace down one path at one load, in one round."""

    load: str = ""
    round: int = 0


@dataclass
class ProtocolsReport:
    config: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    medians: dict[str, dict[str, float]] = field(default_factory=dict)
    """``"load/path"`` -> median ``throughput_rps`` (with its ``_min``/``_max``), ``p50``,
    ``p99``, ``ttft_p50`` and the offered ``rate``."""
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``"v2-stream/v1"`` and ``"v2-mux/v1"``: saturation throughput over v1's in the same
    round, ``median``, ``min``, ``max`` and ``per_round``; the headline."""
    mismatches: list[str] = field(default_factory=list)
    """Which load, round, path and request differed from plain torch (the first 20)."""
    valid: bool = True
    server_exit_code: int | None = None
    outputs: list[list[Fingerprint]] = field(default_factory=list, repr=False)
    """Per run (as ``runs``), each request's best ids and scores per step."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["outputs"]
        return d


# ---- the v2 senders -------------------------------------------------------------------


def v2_request(model: str, tokens: np.ndarray, request_id: str) -> kpb.ModelInferRequest:
    """A token request as ``tritonclient`` sends it: raw little-endian INT64 bytes."""
    ids = np.ascontiguousarray(tokens, dtype="<i8")
    msg = kpb.ModelInferRequest(model_name=model, id=request_id)
    msg.parameters["top_k"].int64_param = TOP_K
    tensor = msg.inputs.add(name=INPUT_IDS, datatype="INT64")
    tensor.shape.append(len(ids))
    msg.outputs.add(name=TOP_IDS)
    msg.outputs.add(name=TOP_SCORES)
    msg.raw_input_contents.append(ids.tobytes())
    return msg


def decode(resp: kpb.ModelStreamInferResponse) -> tuple[list[StepOutput], bool]:
    """One stream response: its steps and whether it is its request's last. An in-band
    error is raised as the typed error its code names, as the v1 client raises it."""
    if resp.error_message:
        raise _in_band_error(resp.error_message)
    r = resp.infer_response
    params = r.parameters
    final = FINAL in params and params[FINAL].bool_param
    ids = scores = None
    for j, out in enumerate(r.outputs):
        if out.name == TOP_IDS:
            ids = np.frombuffer(r.raw_output_contents[j], dtype="<i8").reshape(tuple(out.shape))
        elif out.name == TOP_SCORES:
            scores = np.frombuffer(r.raw_output_contents[j], dtype="<f4").reshape(tuple(out.shape))
    if ids is None or len(ids) == 0:
        return [], final
    first = params["first_step"].int64_param if "first_step" in params else 0
    return [
        StepOutput(first + s, None, ids[s], None if scores is None else scores[s])
        for s in range(len(ids))
    ], final


def _in_band_error(text: str) -> BatchMakerError:
    """``[request id: X] CODE: message`` -> the error for ``CODE``."""
    rest = text.split("] ", 1)[1] if text.startswith("[request id:") else text
    name, _, message = rest.partition(": ")
    code = Code.__members__.get(name, Code.INTERNAL)
    return error_for(code, message or rest)


def _translate(exc: grpc.RpcError) -> BatchMakerError:
    code = Code.__members__.get(exc.code().name, Code.INTERNAL)
    return error_for(code, exc.details() or "")


def stream_sender(
    stub: kpb_grpc.GRPCInferenceServiceStub, model: str, tokens: Sequence[np.ndarray]
) -> Send:
    """Request ``i`` on a ``ModelStreamInfer`` stream of its own."""

    async def send(i: int) -> AsyncGenerator[list[StepOutput], None]:
        call = stub.ModelStreamInfer(iter((v2_request(model, tokens[i], str(i)),)))
        try:
            async for resp in call:
                steps, final = decode(resp)
                if steps:
                    yield steps
                if final:
                    return
            raise BatchMakerError(f"request {i}: the stream ended without a final response")
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        finally:
            call.cancel()  # a no-op once it ended

    return send


class _SharedStream:
    """One ``ModelStreamInfer`` call that many requests share: writes go through a queue
    (grpc's own writer drains it), one reader routes responses to requests by ``id``."""

    def __init__(self, stub: kpb_grpc.GRPCInferenceServiceStub, num_requests: int) -> None:
        self._outbox: asyncio.Queue[kpb.ModelInferRequest | None] = asyncio.Queue()
        self._left = num_requests
        self._inboxes: dict[str, asyncio.Queue[kpb.ModelStreamInferResponse | Exception]] = {}
        self._call = stub.ModelStreamInfer(self._requests())
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncGenerator[kpb.ModelInferRequest, None]:
        while (msg := await self._outbox.get()) is not None:
            yield msg

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                inbox = self._inboxes.get(resp.infer_response.id)
                if inbox is not None:
                    inbox.put_nowait(resp)
        except grpc.RpcError as exc:
            for inbox in self._inboxes.values():
                inbox.put_nowait(_translate(exc))
            return
        for inbox in self._inboxes.values():  # requests the stream ended without answering
            inbox.put_nowait(BatchMakerError("the shared stream ended early"))

    def submit(
        self, msg: kpb.ModelInferRequest
    ) -> asyncio.Queue[kpb.ModelStreamInferResponse | Exception]:
        inbox: asyncio.Queue[kpb.ModelStreamInferResponse | Exception] = asyncio.Queue()
        self._inboxes[msg.id] = inbox
        self._outbox.put_nowait(msg)
        self._left -= 1
        if self._left == 0:
            self._outbox.put_nowait(None)  # the last one: half-close
        return inbox

    def done(self, request_id: str) -> None:
        self._inboxes.pop(request_id, None)

    async def close(self) -> None:
        """Half-close if not yet, and wait for the server to end the stream."""
        if self._left > 0:
            self._left = 0
            self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 30.0)
        except TimeoutError:
            self._call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class MuxSender:
    """Requests of one replay on shared streams: request ``i`` on stream ``i // per``,
    each opened by its first request and half-closed after its last. One per replay."""

    def __init__(
        self,
        stub: kpb_grpc.GRPCInferenceServiceStub,
        model: str,
        tokens: Sequence[np.ndarray],
        per: int = MUX_REQUESTS,
    ) -> None:
        self._stub, self._model, self._tokens, self._per = stub, model, tokens, per
        self._streams: dict[int, _SharedStream] = {}

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def _stream(self, i: int) -> _SharedStream:
        g = i // self._per
        if g not in self._streams:
            size = min(self._per, len(self._tokens) - g * self._per)
            self._streams[g] = _SharedStream(self._stub, size)
        return self._streams[g]

    async def send(self, i: int) -> AsyncGenerator[list[StepOutput], None]:
        stream = self._stream(i)
        rid = str(i)
        inbox = stream.submit(v2_request(self._model, self._tokens[i], rid))
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, Exception):
                    raise item
                steps, final = decode(item)
                if steps:
                    yield steps
                if final:
                    return
        finally:
            stream.done(rid)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._streams.values()))


# ---- the benchmark --------------------------------------------------------------------


async def replay(
    path: str, load: str, k: int, send: Send, trace: Trace, rate: float
) -> tuple[RunResult, list[Fingerprint]]:
    r, outputs = await overhead.replay_outputs(path, send, trace, rate)
    return RunResult(**{f.name: getattr(r, f.name) for f in fields(r)}, load=load, round=k), outputs


def round_order(k: int) -> tuple[str, ...]:
    """Round ``k``'s order of the paths: rotated by one per round."""
    s = k % len(PATHS)
    return PATHS[s:] + PATHS[:s]


async def run_protocols(args: argparse.Namespace, config: EngineConfig) -> ProtocolsReport:
    if args.rounds < 1 or args.num_requests < 1 or args.mux_requests < 1 or args.warmup_rounds < 0:
        raise ValueError(
            "--rounds, --num-requests and --mux-requests must be >= 1, --warmup-rounds >= 0"
        )
    (model,) = builtin_models([args.model])
    trace = make_trace(
        args.num_requests,
        vocab_size=model.cell.input_dim,
        seed=args.seed,
        arrival=args.arrival,
        max_len=model.max_input_len,
    )
    loads = ("saturation",) if args.no_half_load else ("saturation", "half")
    report = ProtocolsReport(
        config={
            "model": args.model,
            "engine": {k: v for k, v in asdict(config).items() if k != "max_batch_per_cell"},
            "trace": trace.summary(),
            "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds,
            "loads": list(loads),
            "mux_requests": args.mux_requests,
            "mux_streams": math.ceil(len(trace) / args.mux_requests),
            "v2_request": "INPUT_IDS INT64 raw bytes, top_k 2, outputs TOP_IDS and TOP_SCORES",
        }
    )
    server = ServerProcess(serve_args(args.model, config))
    try:
        async with AsyncClient(server.address) as client:
            channel = open_channel(
                grpc.aio, server.address, None, DEFAULT_MAX_RECEIVE_MESSAGE_BYTES, (), None
            )
            try:
                stub = kpb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                v1 = grpc_sender(client, model.name, trace.tokens, top_k=TOP_K)
                per_request = stream_sender(stub, model.name, trace.tokens)

                async def run_path(
                    path: str, load: str, k: int, rate: float
                ) -> tuple[RunResult, list[Fingerprint]]:
                    if path != V2_MUX:
                        send = v1 if path == V1 else per_request
                        return await replay(path, load, k, send, trace, rate)
                    mux = MuxSender(stub, model.name, trace.tokens, args.mux_requests)
                    try:
                        return await replay(path, load, k, mux.send, trace, rate)
                    finally:
                        await mux.close()

                warm = MuxSender(stub, model.name, trace.tokens, args.mux_requests)
                await openloop.warm_up({V1: v1, V2_STREAM: per_request, V2_MUX: warm.send})
                await warm.close()
                # Uncounted: a fresh server tries its CPU kernels on each new plan shape
                # and learns its plan costs during its first saturated replay, which
                # would otherwise slow whichever path ran first.
                for _ in range(args.warmup_rounds):
                    for path in PATHS:
                        r, _ = await run_path(path, "warm-up", -1, SATURATION_RATE)
                        _log(f"warm-up    {path:9s} {r.throughput_rps:6.1f} req/s (not counted)")
                rate = SATURATION_RATE
                for load in loads:
                    for k in range(args.rounds):
                        for path in round_order(k):
                            r, outputs = await run_path(path, load, k, rate)
                            _log(
                                f"{load:10s} round {k} {path:9s} "
                                f"{r.rate if load == 'half' else 0:7.1f} req/s offered: "
                                f"{r.throughput_rps:6.1f} req/s, p50 {r.p50 * 1e3:7.1f} ms, "
                                f"p99 {r.p99 * 1e3:7.1f} ms, ttft {r.ttft_p50 * 1e3:6.1f} ms"
                                + (f", {r.num_failed} failed" if r.num_failed else "")
                            )
                            report.runs.append(r)
                            report.outputs.append(outputs)
                            report.valid &= r.num_failed == 0 and r.num_completed == len(trace)
                    # Half load: half what v1 sustains, so every path has room to spare.
                    rate = 0.5 * float(
                        np.median([r.throughput_rps for r in _select(report, "saturation", V1)])
                    )
            finally:
                await channel.close()
    finally:
        report.server_exit_code = server.stop()
    _check_outputs(report, plain_reference(model, trace.tokens))
    report.valid &= report.server_exit_code == 0
    _summarize(report, loads)
    return report


def _select(report: ProtocolsReport, load: str, path: str) -> list[RunResult]:
    return [r for r in report.runs if r.load == load and r.path == path]


def _check_outputs(report: ProtocolsReport, reference: list[Fingerprint]) -> None:
    """Every run's responses against plain torch's (``reference``), request by request."""
    found = check_runs(
        reference,
        (
            (f"{r.load} round {r.round} {r.path}", outputs)
            for r, outputs in zip(report.runs, report.outputs, strict=True)
        ),
    )
    report.valid &= not found
    report.mismatches += found[:20]


def _summarize(report: ProtocolsReport, loads: Sequence[str]) -> None:
    for load in loads:
        for path in PATHS:
            runs = _select(report, load, path)
            tput = [r.throughput_rps for r in runs]
            m = {
                q: float(np.median([getattr(r, q) for r in runs]))
                for q in ("throughput_rps", "p50", "p99", "ttft_p50")
            }
            m["throughput_rps_min"], m["throughput_rps_max"] = float(min(tput)), float(max(tput))
            m["rate"] = runs[0].rate
            report.medians[f"{load}/{path}"] = m
    v1 = {r.round: r.throughput_rps for r in _select(report, "saturation", V1)}
    for path in (V2_STREAM, V2_MUX):
        per_round = [
            r.throughput_rps / v1[r.round] if v1[r.round] > 0 else 0.0
            for r in _select(report, "saturation", path)
        ]
        report.ratios[f"{path}/v1"] = {
            "median": float(np.median(per_round)),
            "min": float(min(per_round)),
            "max": float(max(per_round)),
            "per_round": per_round,
        }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_table(report: ProtocolsReport) -> None:
    m = report.medians
    print(f"\n{'':22s} {'v1':>22s} {'v2 stream/request':>22s} {'v2 shared streams':>22s}")
    sat = "saturation req/s"
    cells = []
    for path in PATHS:
        x = m[f"saturation/{path}"]
        lo, hi = x["throughput_rps_min"], x["throughput_rps_max"]
        cells.append(f"{x['throughput_rps']:.1f} [{lo:.1f}, {hi:.1f}]")
    print(f"{sat:22s} " + " ".join(f"{c:>22s}" for c in cells))
    ratio_cells = ["1.00"]
    for path in (V2_STREAM, V2_MUX):
        q = report.ratios[f"{path}/v1"]
        ratio_cells.append(f"{q['median']:.2f} [{q['min']:.2f}, {q['max']:.2f}]")
    print(f"{'over v1, per round':22s} " + " ".join(f"{c:>22s}" for c in ratio_cells))
    if "half/v1" in m:
        for name, key in (("p50", "p50"), ("p99", "p99"), ("TTFT p50", "ttft_p50")):
            row = " ".join(f"{m[f'half/{p}'][key] * 1e3:>22.1f}" for p in PATHS)
            print(f"{'half load ' + name + ' ms':22s} {row}")
    print(
        f"\nv2/v1 at saturation (median of per-round ratios, target >= {TARGET_RATIO}): "
        f"stream per request {report.ratios[f'{V2_STREAM}/v1']['median']:.2f}, "
        f"shared streams {report.ratios[f'{V2_MUX}/v1']['median']:.2f}; valid: {report.valid}, "
        f"server exit code {report.server_exit_code}"
    )
    for line in report.mismatches:
        print(f"mismatch: {line}")


def run_protocols_cli(args: argparse.Namespace, config: EngineConfig) -> int:
    """``batchmaker bench-protocols``; ``config``: the server's engine."""
    import uvloop

    report = uvloop.run(run_protocols(args, config))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.to_json(), indent=2))
    print(json.dumps({k: v["median"] for k, v in report.ratios.items()} | {"valid": report.valid}))
    print_table(report)
    _log(f"wrote {args.out}")
    return 0 if report.valid else 1
