"""The SageMaker hosting contract: ``/ping``, ``/invocations`` and ``/execution-parameters``.

SageMaker runs every deployment type from one container started as ``docker run IMAGE
serve`` (``batchmaker serve --sagemaker``), and talks to it over HTTP on port 8080. These
routes are mounted on the HTTP door's aiohttp application (``server/http.py``), beside
the KServe v2 routes, on the same port, loop and ``CallGate``: a record is counted,
limited, drained, measured (``protocol="sagemaker"``) and logged as any other call.

- ``GET /ping``: 200 once the models are loaded and while the server is not draining,
  else 503. SageMaker routes no traffic to a container until it answers 200.
- ``POST /invocations``: the records of ``wire/records.py``. ``application/json``: one
  record, answered with one JSON object (an error is ``{"error": message}`` with its
  HTTP status). ``application/jsonlines`` (batch transform's ``SplitType=Line`` with
  ``BatchStrategy=MultiRecord`` sends many lines per call) or ``text/plain`` (a sequence
  per line): one answer line per record, in order, each its outputs or its error, through
  the window ``batchmaker transform`` uses (``server/records.py``) so a call's records
  share batches. A record names its ``model``, or runs on the only model served.
- ``GET /execution-parameters``: what batch transform should send, when its job does not
  say (``SageMakerConfig``).

A body over ``max_payload_mb`` is 413, one that is not what its content type says 400,
an unknown content type 415. A JSON Lines call during a drain: its records already
running finish; if any could not start because the server is shutting down the whole
call is 503, which SageMaker retries (``InvocationsMaxRetries``), rather than 200 with
lines that were never run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from batchmaker.config import SageMakerConfig
from batchmaker.errors import BatchMakerError, Code, InvalidRequestError
from batchmaker.server import logs
from batchmaker.server.calls import CallGate
from batchmaker.server.records import (
    Window,
    answer_line,
    collect,
    ordered,
    patiently,
    resolve,
)
from batchmaker.wire import records as wire
from batchmaker.wire.kserve_http import JSON_TYPE

if TYPE_CHECKING:
    from batchmaker.runtime.engine import Engine
    from batchmaker.runtime.stream import RequestStream

log = logging.getLogger(__name__)

PROTOCOL = "sagemaker"
METHOD = "Invocations"
JSONLINES_TYPE = "application/jsonlines"
OPEN_PATHS = frozenset({"/ping", "/execution-parameters"})
"""SageMaker's own calls carry no bearer token."""
CONTENT_TYPES: dict[str, wire.Format | None] = {
    "application/json": None,
    "application/jsonlines": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "text/plain": "text",
}
"""Each accepted content type: ``None`` for one record, else how its lines are read."""
_UNAVAILABLE = b'"code":"UNAVAILABLE"'


class PayloadTooLargeError(BatchMakerError):
    """A body over ``max_payload_mb``: RESOURCE_EXHAUSTED in the metrics, 413 on the wire."""

    code = Code.RESOURCE_EXHAUSTED
    http_status = 413


class UnsupportedMediaError(BatchMakerError):
    code = Code.INVALID_ARGUMENT
    http_status = 415


class NotAcceptableError(BatchMakerError):
    code = Code.INVALID_ARGUMENT
    http_status = 406


class SageMakerDoor:
    """The three routes, over the server's gate."""

    def __init__(
        self,
        gate: CallGate,
        config: SageMakerConfig,
        error_response: Callable[[BatchMakerError], web.Response],
    ) -> None:
        """``error_response``: the HTTP door's one mapping of an error to its response
        (``{"error": message}`` with the status of its code, or its own ``http_status``)."""
        self.gate = gate
        self.config = config
        self._error = error_response
        self.window = Window(max_in_flight=config.max_records_in_flight)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/execution-parameters", self.execution_parameters)
        app.router.add_post("/invocations", self.invocations)

    # ---- health and parameters ----------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        engine = self.gate.engine_or_none
        ready = self.gate.ready and engine is not None and bool(engine.models)
        return web.Response(status=200 if ready else 503)

    async def execution_parameters(self, request: web.Request) -> web.Response:
        cfg = self.config
        doc = {
            "MaxConcurrentTransforms": cfg.max_concurrent_transforms,
            "BatchStrategy": cfg.batch_strategy,
            "MaxPayloadInMB": cfg.max_payload_mb,
        }
        return web.Response(body=json.dumps(doc).encode(), content_type=JSON_TYPE)

    # ---- invocations --------------------------------------------------------------

    async def invocations(self, request: web.Request) -> web.Response:
        try:
            self.gate.serving_engine()  # starting or draining: 503 before the body is read
            fmt = self._format(request)
            body = await self._body(request)
        except BatchMakerError as exc:
            # Refused before any record was read: one failed call for the metrics.
            with self.gate.active(METHOD, "", protocol=PROTOCOL) as obs:
                return self._error(self.gate.fail(METHOD, obs, exc))
        if fmt is None:
            return await self._one(body)
        return await self._many(body, fmt)

    def _format(self, request: web.Request) -> wire.Format | None:
        ctype = request.content_type.lower()
        if ctype not in CONTENT_TYPES:
            raise UnsupportedMediaError(
                f"Content-Type {ctype!r} is not one this endpoint reads: application/json (one "
                "request), application/jsonlines (one request per line) or text/plain (one "
                "sequence per line)"
            )
        fmt = CONTENT_TYPES[ctype]
        accept = request.headers.get("Accept", "*/*")
        answer = JSON_TYPE if fmt is None else JSONLINES_TYPE
        wanted = [a.split(";")[0].strip().lower() for a in accept.split(",")]
        if not any(a in ("*/*", "application/*", answer) for a in wanted):
            raise NotAcceptableError(
                f"Accept {accept!r}: this call is answered as {answer} (a {ctype} body)"
            )
        return fmt

    async def _body(self, request: web.Request) -> bytes:
        limit = self.config.max_payload_bytes
        too_large = PayloadTooLargeError(
            f"request body: larger than this endpoint's limit of {self.config.max_payload_mb} "
            "MB (SAGEMAKER_MAX_PAYLOAD_IN_MB, --sagemaker-max-payload-mb)"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        # Read here, not with request.read(): the limit is this route's, not the v2 door's.
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body.strip():
            raise InvalidRequestError("request body: empty; send a request (or one per line)")
        return body

    def _default_model(self, engine: Engine) -> str:
        """The model a record that names none runs on: the only one served."""
        names = sorted({m.name for m in engine.models})
        if len(names) == 1:
            return names[0]
        raise InvalidRequestError(
            f"model: required, this endpoint serves {len(names)} models "
            f"({', '.join(names) or 'none yet'}); name one in the request"
        )

    async def _run(
        self, line: int | None, raw: bytes, fmt: wire.Format, *, patient: bool
    ) -> tuple[bytes, web.Response | None]:
        """One record as one call: its answer line, and for a lone request its response
        (an error status instead of an error line)."""
        gate = self.gate
        key = wire.RecordKey(line)
        with gate.active(METHOD, "", protocol=PROTOCOL) as obs:
            try:
                doc = wire.read_line(raw, line=line, fmt=fmt)
                key = wire.RecordKey(line, wire.record_id(doc))
                if key.id is not None:
                    obs.request_id = str(key.id)
                    logs.request_id.set(obs.request_id)
                engine = gate.serving_engine()
                default = doc["model"] if "model" in doc else self._default_model(engine)
                record, model = resolve(engine, doc, key, default)
                gate.begin(obs, record.model, len(record.inputs))
                request = record.request()

                async def submit() -> RequestStream:
                    return gate.submit(engine, obs, request)

                stream = await (patiently(submit) if patient else submit())
                try:
                    blocks = await collect(stream)
                finally:
                    gate.observe_end(obs, stream)
                obs.num_steps = sum(len(b) for b in blocks)
                return answer_line(record, model, stream, blocks), None
            except Exception as exc:
                error = gate.fail(METHOD, obs, exc)
                return wire.dumps(wire.error_answer(key, error)), self._error(error)

    async def _one(self, body: bytes) -> web.Response:
        out, failure = await self._run(None, body, "jsonl", patient=False)
        if failure is not None:
            return failure
        return web.Response(body=out, content_type=JSON_TYPE)

    async def _many(self, body: bytes, fmt: wire.Format) -> web.Response:
        unavailable = 0

        async def lines() -> AsyncIterator[tuple[int, bytes]]:
            for n, raw in enumerate(body.splitlines(), start=1):
                if raw.strip():
                    yield n, raw

        async def run(item: tuple[int, bytes]) -> bytes:
            nonlocal unavailable
            out, _ = await self._run(item[0], item[1], fmt, patient=True)
            if _UNAVAILABLE in out:
                unavailable += 1
            return out

        answers: list[bytes] = [out async for out in ordered(lines(), run, self.window)]
        if unavailable:
            log.warning(
                "invocation: %d of %d records refused while shutting down",
                unavailable,
                len(answers),
            )
            return self._error(
                BatchMakerError(
                    f"the server is shutting down: {unavailable} of {len(answers)} records "
                    "could not run; send the request again",
                    code=Code.UNAVAILABLE,
                )
            )
        return web.Response(body=b"".join(answers), content_type=JSONLINES_TYPE)
