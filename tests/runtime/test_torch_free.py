"""The engine runs without torch: one request through ``Engine`` on the shared gate over
the ``FakeExecutor``, serving a ``FakeChainModel``, in a fresh interpreter that ends with
torch not imported.

This tier's point is that the engine's logic needs no torch (ruff's TID251 bans the
import here, tests/architecture checks the source's imports); only a fresh process can
show that nothing reached on the way, the engine's lazy defaults and the package face
included, loads torch indirectly. In-process it proves nothing: another tier may have
imported torch already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gate import GUARD_S

REPO = Path(__file__).resolve().parents[2]

# Run by a fresh interpreter from the repository root. It prints the first-party import
# chain that loaded torch, if anything did.
_SCRIPT = """
import asyncio, sys, traceback
sys.path[:0] = ["tests/runtime", "tests/engine"]
chain = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not chain:
            chain.extend(
                f"{f.filename}:{f.lineno}: {f.line}"
                for f in traceback.extract_stack()[:-1]
                if not f.filename.startswith("<frozen")
            )
        return None
sys.meta_path.insert(0, Spy())

from fakes import FakeChainModel, FakeExecutor
from gate import GatedExecutor

from batchmaker import Engine, EngineConfig, InferRequest
from scheduler import ManualClock

async def main():
    loop = asyncio.get_running_loop()
    model = FakeChainModel()
    gates = []
    def factory(device):
        gates.append(GatedExecutor(FakeExecutor(device), loop))
        return gates[-1]
    engine = Engine(EngineConfig(), [model], executor_factory=factory, clock=ManualClock())
    gates[0].open()
    request = InferRequest(model.name, [4, 8, 15, 16, 23, 42], top_k=2)
    async with engine:
        outputs = await asyncio.wait_for(engine.infer(request), 30)
    got = [o.vector.tolist() for o in outputs]
    assert got == model.reference(request).tolist(), got
    assert len(gates[0].steps) == len(request.inputs)

asyncio.run(main())
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
if loaded:
    print("torch was imported:", *chain, sep="\\n")
    sys.exit(3)
print("ok")
"""


def test_one_request_through_the_engine_on_the_fake_never_imports_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=4 * GUARD_S,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 3, f"the engine on the fake imported torch:\n{output}"
    assert result.returncode == 0, output
    assert result.stdout.strip() == "ok", output
