"""A new champion replaces the served model while callers keep calling: no call fails, and each
caller's answers switch from the old version to the new one and never back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from loopline_core import grpcx
from loopline_stack.services import ServiceSet
from loopline_testing.builders import FEATURES, make_model, register_signed_model, set_alias

CALLERS = 8
ENOUGH = 5
"""Answers each caller must get from a version before the test moves on."""


@dataclass
class Caller:
    answers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    def seen(self, version: str) -> int:
        return sum(1 for v, _ in self.answers if v == version)


async def _wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


async def test_calls_in_flight_survive_a_reload_and_switch_versions(
        isolated: dict[str, str], services: Callable[..., ServiceSet]) -> None:
    # Reconcile rarely: the reload must come from the model event, while calls are in flight.
    svc = services("registry", "inference", env={"inference": {"LOOPLINE_INFERENCE_RECONCILE_S": "600"}})
    registry = svc.addr("registry")
    v1 = await register_signed_model(isolated, registry, "fraud", seed=1)
    await set_alias(registry, "fraud", "champion", v1.version)

    x = np.random.default_rng(7).normal(size=(4, len(FEATURES))).astype(np.float32)
    inp = tg.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = grpcx.with_auth(tga.InferenceServerClient(svc.addr("inference")))
    callers = [Caller() for _ in range(CALLERS)]
    done = asyncio.Event()

    async def call(c: Caller) -> None:
        while not done.is_set():
            try:
                res = await client.infer("fraud", [inp], outputs=[tg.InferRequestedOutput("score")])
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                c.failures.append(exc)
                continue
            c.answers.append((res.get_response().model_version, res.as_numpy("score")))

    try:
        async with asyncio.timeout(60):
            while not await client.is_model_ready("fraud"):
                await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(call(c)) for c in callers]
        try:
            await _wait_for(lambda: all(c.seen(str(v1.version)) >= ENOUGH for c in callers))
            v2 = await register_signed_model(isolated, registry, "fraud", seed=2)
            await set_alias(registry, "fraud", "champion", v2.version)
            await _wait_for(lambda: all(c.seen(str(v2.version)) >= ENOUGH for c in callers) or
                            any(c.failures for c in callers))
        finally:
            done.set()
            await asyncio.gather(*tasks)
    finally:
        await client.close()

    assert [f for c in callers for f in c.failures] == [], "no call fails during the reload"
    expected = {str(v1.version): make_model(1).predict(x), str(v2.version): make_model(2).predict(x)}
    for c in callers:
        versions = [v for v, _ in c.answers]
        switch = versions.index(str(v2.version))
        assert set(versions[:switch]) == {str(v1.version)} and set(versions[switch:]) == {str(v2.version)}, \
            "old version until the switch, the new one after it, never back"
        for v, scores in c.answers:
            np.testing.assert_allclose(scores, expected[v], rtol=1e-5, err_msg=f"answer labelled v{v}")
