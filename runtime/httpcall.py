"""One HTTP(S) request, for call-web-service-server (NS) and call-web-service-client (agent)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from protocol.states import InstanceState
from protocol.tasks import replace_tokens
from runtime.runner import Outcome


def _request(
    method: str, url: str, headers: dict[str, str], body: bytes | None, timeout_s: float, limit: int
) -> tuple[int, dict[str, str], bytes, int]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({})
    )  # never via a proxy from the environment
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            data = resp.read(limit + 1)
            return resp.status, dict(resp.headers.items()), data[:limit], max(len(data) - limit, 0)
    except urllib.error.HTTPError as exc:
        data = exc.read(limit + 1) if exc.fp is not None else b""
        return (
            exc.code,
            dict(exc.headers.items()) if exc.headers else {},
            data[:limit],
            max(len(data) - limit, 0),
        )


async def call(params: dict[str, Any], tokens: dict[str, str]) -> Outcome:
    """Make the request the parameters describe; succeed on an expected status (default 2xx)."""
    started = time.time()
    url = replace_tokens(str(params["url"]), tokens)
    body = replace_tokens(str(params.get("body", "")), tokens).encode() or None
    headers = {
        str(k): replace_tokens(str(v), tokens) for k, v in (params.get("headers") or {}).items()
    }
    limit = int(params.get("output_limit_bytes", 65_536))
    try:
        status, resp_headers, data, cut = await asyncio.to_thread(
            _request,
            str(params.get("method", "GET")),
            url,
            headers,
            body,
            float(params.get("request_timeout_s", 30)),
            limit,
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(
            InstanceState.FAILED,
            None,
            "",
            f"request to {url} failed: {reason}",
            started,
            time.time(),
        )
    text = data.decode("utf-8", errors="replace")
    if cut:
        text += f"\n[output cut at {limit} bytes]"
    output = json.dumps({"status": status, "headers": resp_headers, "body": text}, indent=1)
    expected = params.get("expected_status") or []
    ok = status in expected if expected else 200 <= status < 300
    reason = "" if ok else f"HTTP status {status} is not an expected status ({expected or '2xx'})"
    return Outcome(
        InstanceState.SUCCEEDED if ok else InstanceState.FAILED,
        status,
        output,
        reason,
        started,
        time.time(),
    )
