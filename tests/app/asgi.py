"""A fake ASGI client for driving responses as uvicorn does, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message


class Client:
    """The ASGI side of one connection: records what the server sends; can leave at a chosen moment."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.leave = asyncio.Event()
        self.response_complete = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        # uvicorn answers "disconnect" when the client leaves, and also once the response is complete
        leaving = asyncio.ensure_future(self.leave.wait())
        complete = asyncio.ensure_future(self.response_complete.wait())
        try:
            await asyncio.wait({leaving, complete}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            complete.cancel()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.response_complete.set()

    @property
    def body(self) -> str:
        return "".join(m["body"].decode() for m in self.sent if m["type"] == "http.response.body")
