"""Composition root of the validator: settings -> contracts -> runtime -> consumer."""

from __future__ import annotations

import asyncio

from loopline_core import runtime
from loopline_core.contracts import Contracts
from loopline_core.service import serve_until, start_runtime
from loopline_core.settings import load

from loopline_validator.handlers.ingested import IngestedHandler
from loopline_validator.settings import Settings


async def main(stop: asyncio.Event) -> None:
    settings = load(Settings, "validator")
    rt = await start_runtime("validator", settings)
    contracts = Contracts.load(settings.contracts_dir)
    for dataset in settings.datasets:
        contracts.current(dataset)  # a dataset without a contract stops the start, not the first record
    handler = IngestedHandler(rt.publisher, rt.namer, contracts)
    rt.subscribe([rt.namer.ingested(d) for d in settings.datasets], handler.decode, handler.on_ingested)
    await serve_until(rt, stop)


def run() -> None:
    runtime.run(main)
