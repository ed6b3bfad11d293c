"""A tiny HTTP client for the admin endpoint (urllib in a thread, so the test's loop runs)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback URLs built by tests
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://127.0.0.1:PORT/PATH."""
    return await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")


async def get_json(port: int, path: str) -> tuple[int, Any]:
    status, _, body = await get(port, path)
    return status, json.loads(body)


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0.0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and found == wanted:
            return float(value)
    return 0.0


def _request(
    port: int, method: str, path: str, form: dict[str, str] | None, headers: dict[str, str]
) -> tuple[int, dict[str, list[str]], str]:
    import http.client
    import urllib.parse

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = urllib.parse.urlencode(form) if form is not None else None
        if body is not None:
            headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        fields: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            fields.setdefault(name.lower(), []).append(value)
        return response.status, fields, response.read().decode()
    finally:
        conn.close()


async def request(
    port: int,
    method: str,
    path: str,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, list[str]], str]:
    """(status, header fields by lower-case name, body); redirects are not followed."""
    return await asyncio.to_thread(_request, port, method, path, form, headers or {})
