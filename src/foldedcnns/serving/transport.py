"""One write per response: a response's head held until its body, so both go out in one segment.

uvicorn writes a response's status line and headers when the app sends ``http.response.start`` and the body
when it sends ``http.response.body``: two ``send`` system calls, two TCP segments, and a client that wakes
twice, for a response of a few hundred bytes. :class:`HeadWithBody` wraps the transport of one
request-response cycle and joins the two. An interim ``100 Continue`` is never held (the client waits for it
before it sends the body), and closing the transport writes a held head first. Measured in docs/serving.md
("Where the time goes").
"""

from __future__ import annotations

from typing import Any

_STATUS_LINE = b"HTTP/1."
_CONTINUE = b" 100 "


class HeadWithBody:
    """A transport that holds a write starting with a status line (except ``100 Continue``) until the next one."""

    __slots__ = ("held", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport, self.held = transport, b""

    def write(self, data: bytes) -> None:
        if self.held:
            data, self.held = self.held + data, b""
        elif data.startswith(_STATUS_LINE) and data[8:13] != _CONTINUE:
            self.held = data
            return
        self.transport.write(data)

    def close(self) -> None:
        if self.held:
            self.write(b"")
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the transport's own
        return getattr(self.transport, name)


def join_head_and_body(cycle: Any) -> None:
    """Wrap the transport of uvicorn's request-response ``cycle`` (None: nothing) in :class:`HeadWithBody`."""
    if cycle is not None and not isinstance(cycle.transport, HeadWithBody):
        cycle.transport = HeadWithBody(cycle.transport)
