"""Running coroutines in tests on a private event loop: asyncio.run() would leave the main thread without a current
loop, which the Pulumi mock runtime in other tests of the same session relies on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()
