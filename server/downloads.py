"""Downloads in progress hold their job, so pruning never removes a folder while it is sent.

A pure ASGI middleware around ``GET /v1/jobs/{id}/result`` and ``/v1/jobs/{id}/files/...``:
the hold (:meth:`JobStore.hold`) is taken before the route runs and given back once the
response is sent or the client has gone, whatever happens in between. The routes cannot do
this themselves: a FileResponse sends its file after the route has returned.
"""

from __future__ import annotations

import re

_DOWNLOAD = re.compile(r"^/v1/jobs/([0-9a-f]{20})/(?:result|files/.*)$")


class DownloadHolds:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        match = _DOWNLOAD.match(scope.get("path", "")) if scope["type"] == "http" else None
        store = getattr(scope["app"].state, "store", None) if match else None
        if store is None or not store.hold(match.group(1)):
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            store.release(match.group(1))
