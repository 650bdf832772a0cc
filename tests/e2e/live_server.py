"""A real gRPC server on loopback for end-to-end tests, and what they share.

``LiveServer`` runs ``InferenceServer`` on ``127.0.0.1:0`` with its own uvloop
event loop in a background thread, the way ``batchmaker serve`` runs it, so
tests talk to it through the real ``Client`` over a real channel. Its engine's
executor is the engine tests' ``GatedExecutor``: open by default, or closed
(``gated=True``) so a test decides when each step runs, e.g. to keep a stream
in flight while it cancels, lets a deadline pass, or drains the server.

Everything that touches the engine runs on the server's loop (``run``), as
the servicer does; nothing here sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import uvloop
from harness import GUARD_S, GatedExecutor, engine_config, small_model

from batchmaker import EngineConfig, Model, SequenceModel
from batchmaker.client import Client
from batchmaker.config import ServerConfig
from batchmaker.models.seq2seq import seq2seq_model
from batchmaker.models.tree import tree_model
from batchmaker.repository.manager import ModelManager
from batchmaker.runtime.executor import Executor
from batchmaker.runtime.torch_executor import TorchExecutor
from batchmaker.server.lifecycle import InferenceServer

T = TypeVar("T")


def e2e_models() -> list[SequenceModel]:
    """Token LSTM (two versions), token GRU and a vector-input GRU: every input path."""
    return [
        small_model("lstm", num_layers=2, name="lstm", seed=1),
        small_model("lstm", num_layers=2, name="lstm", seed=2, version=2),
        small_model("gru", name="gru", seed=3),
        small_model("gru", vectors=True, name="vec", seed=4),
    ]


def every_family() -> list[Model]:
    """``e2e_models()`` plus a GRU seq2seq and a binary TreeLSTM: every family and input
    path, for the tests of the protocols that must carry them all."""
    s2s = seq2seq_model(
        "s2s",
        "gru",
        source_vocab=30,
        target_vocab=12,
        hidden_size=24,
        bos=1,
        eos=0,
        seed=0,
        max_input_len=32,
        max_decode_len=16,
    )
    tree = tree_model(
        "tree", vocab_size=16, hidden_size=16, num_classes=10, seed=3, max_nodes=48, max_depth=12
    )
    return [*e2e_models(), s2s, tree]


def e2e_config(**overrides: object) -> EngineConfig:
    """Room for 64 live requests: the e2e tests run dozens of concurrent streams."""
    fields: dict[str, object] = {"max_batch": 8, "max_num_live_requests": 64, "num_slots": 64}
    fields.update(overrides)
    return engine_config(**fields)


class LiveServer:
    """``with LiveServer(...) as live``: a started server; ``live.client()`` talks to it."""

    def __init__(
        self,
        models: Sequence[Model] | Callable[[], Sequence[Model]] | None = None,
        config: EngineConfig | None = None,
        *,
        gated: bool = False,
        server_config: ServerConfig | None = None,
        manager: ModelManager | None = None,
    ) -> None:
        self._factory = models if callable(models) else (lambda: list(models or e2e_models()))
        self.engine_config = config or e2e_config()
        if gated:
            # A gated server holds streams mid-request by counting steps: one step per plan.
            # (Multi-step and fused plans are tested ungated here, and gated in-process.)
            self.engine_config = dataclasses.replace(
                self.engine_config, max_steps_per_plan=1, fused_baselines=False
            )
        self.server_config = server_config or ServerConfig(port=0, warmup=False)
        self._gated = gated
        self.gate: GatedExecutor | None = None
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-server-loop")
        self.server = InferenceServer(
            self.server_config,
            self.engine_config,
            self._factory,
            manager=manager,
            executor_factory=self._gated_executor,
        )
        self._clients: list[Client] = []

    def _gated_executor(self, device: str) -> Executor:
        self.gate = GatedExecutor(TorchExecutor(device), self.loop)
        if not self._gated:
            self.gate.open()
        return self.gate

    # ---- lifecycle ----------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        """Start the loop and the server; ``wait=False`` returns while it still loads."""
        self._thread.start()
        self._starting = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        if wait:
            self._starting.result(GUARD_S)

    def wait_started(self) -> None:
        self._starting.result(GUARD_S)

    def stop(self, grace: float = 0.0) -> None:
        if self.gate is not None:
            self.gate.open()
        self.run(self.server.stop(grace))

    def close(self) -> None:
        for c in self._clients:
            c.close()
        if self._thread.is_alive():
            try:
                self.stop()
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(GUARD_S)
        self.loop.close()

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- access -------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.server.address

    def client(self, **kwargs: Any) -> Client:
        c = Client(self.address, **kwargs)
        self._clients.append(c)
        return c

    def run(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` on the server's loop, from the test's thread."""

        async def guarded() -> T:
            return await asyncio.wait_for(aw, GUARD_S)

        return asyncio.run_coroutine_threadsafe(guarded(), self.loop).result(GUARD_S + 5)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the server's loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (engine state lives there)."""

        async def once() -> T:
            return fn()

        return self.run(once())

    def free_slots(self) -> dict[str, int]:
        return self.call(lambda: self.server.engine.device_stats()[0].num_free_slots)

    def num_live(self) -> int:
        return self.call(lambda: self.server.engine.num_live)

    def wait_until(self, cond: Callable[[], bool]) -> None:
        """Wait, on the loop, until ``cond()`` holds there (checked after each loop turn)."""

        async def poll() -> None:
            while not cond():
                await asyncio.sleep(0.005)

        self.run(poll())

    def wait_idle(self) -> None:
        """Until no request is live in the engine and no call is in progress."""
        self.wait_until(
            lambda: self.server.engine.num_live == 0 and self.server.gate.num_active == 0
        )
