"""Which class and lane each request falls in: decided from the path, query and headers."""

from __future__ import annotations

import pytest

from provisiond.api.admission import classify
from provisiond.lanes import Lane


@pytest.mark.parametrize(
    ("path", "query", "headers", "expected"),
    [
        ("/api/v1/machines", b"", [], ("api", Lane.API)),
        ("/api/v1/allocations/a1", b"wait=0", [], ("api", Lane.API)),
        ("/api/v1/allocations/a1", b"wait=30&since_state=pending", [], ("watch", Lane.API)),
        ("/api/v1/allocations/a1/events", b"", [], ("watch", Lane.API)),
        ("/api/v1/events", b"limit=5", [], ("api", Lane.API)),
        # a header or a query parameter does not buy an ordinary call a watch slot
        ("/api/v1/events", b"", [(b"accept", b"text/event-stream")], ("api", Lane.API)),
        ("/api/v1/machines", b"wait=30", [], ("api", Lane.API)),
        ("/api/v1/machines", b"stream=true", [], ("api", Lane.API)),
        ("/api/v1/allocations/a1", b"wait=abc", [], ("api", Lane.API)),
        ("/api/v1/allocations/a1/renew", b"wait=30", [], ("api", Lane.API)),
        ("/api/v1/discovery", b"stream=true", [], ("watch", Lane.API)),
        ("/api/v1/discovery", b"stream=false", [], ("api", Lane.API)),
        ("/api/v1/agent/u1/heartbeat", b"", [], ("boot", Lane.BOOT)),
        ("/boot/52-54-00-00-00-01.ipxe", b"", [], ("boot", Lane.BOOT)),
        ("/boot/callback/u1", b"token=t", [], ("boot", Lane.BOOT)),
        ("/meta/u1/user-data", b"", [], ("boot", Lane.BOOT)),
        ("/images/debian/vmlinuz", b"", [], ("files", Lane.BOOT)),
        ("/healthz", b"", [], ("health", Lane.SYSTEM)),
        ("/metrics", b"", [], ("health", Lane.SYSTEM)),
        ("/docs", b"", [], ("api", Lane.API)),
    ],
)
def test_classify(
    path: str, query: bytes, headers: list[tuple[bytes, bytes]], expected: tuple[str, Lane]
) -> None:
    scope = {"type": "http", "path": path, "query_string": query, "headers": headers}
    assert classify(scope) == expected
