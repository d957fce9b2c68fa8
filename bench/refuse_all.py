"""The overload scenario's floor: a Granian RSGI app that reads each request's body and answers
503, nothing else, served like our server (one worker, uvloop, HTTP/1). Under the same paced
flood, how fast it refuses is the best any app on this interface can do on this machine, with
the load generator on the same cores (bench/robustness.py ``refusal_floor``).

    cd bench && granian --interface rsgi --loop uvloop --workers 1 --http 1 refuse_all:app
"""

from __future__ import annotations

from typing import Any

BODY = b'{"error": "overloaded; retry later", "reason": "overloaded"}'
HEADERS = [("content-type", "application/json"), ("retry-after", "1")]


class RefuseAll:
    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        await protocol()  # the body, so that the connection stays usable: no reconnection
        protocol.response_bytes(503, HEADERS, BODY)


app = RefuseAll()
