"""The demo's GUI stand-in: teaches the agent its ROI over HTTP, the way the GUI does.

Standard library only (urllib): the agent's runtime needs no HTTP client.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any


class AgentHttp:
    def __init__(self, base_url: str, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{self.base_url}{path}", data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:  # the contract's error body rides along
            return exc.code, json.loads(exc.read() or b"{}")

    def _ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        status, body = self._call(method, path, **kwargs)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {body.get('error', body)}")
        return body

    def wait_ready(self, timeout: float, alive: Callable[[], bool]) -> dict[str, Any]:
        """The health body once the model is loaded. Raises RuntimeError when the agent
        dies, reports an error, or is not ready in time."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError("the agent exited during start-up (see its log)")
            try:
                status, last = self._call("GET", "/health")
            except (OSError, ValueError):  # not listening yet
                status = 0
            if status == 200:
                return last
            if last.get("status") == "error":
                raise RuntimeError(f"the agent cannot load its model: {last.get('reason')}")
            time.sleep(0.3)
        raise RuntimeError(f"the agent was not ready after {timeout:.0f} s: {last}")

    def clear(self, role: str, roi: str, label: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"role_id": role, "roi_id": roi, "label": label})
        return self._ok("DELETE", f"/datasets/clear?{query}")

    def upload(self, route: str, fields: dict[str, Any], images: Sequence[bytes]) -> dict[str, Any]:
        """``/fit_ok`` or ``/send_ng``: form fields and ``images`` repeated."""
        body, content_type = _multipart(fields, images)
        return self._ok("POST", route, body=body, content_type=content_type)

    def calibrate(self, role: str, roi: str) -> dict[str, Any]:
        body = json.dumps({"role_id": role, "roi_id": roi}).encode()
        return self._ok("POST", "/calibrate_ng", body=body, content_type="application/json")


def _multipart(fields: dict[str, Any], images: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + text.encode()
            + b"\r\n"
        )
    for i, png in enumerate(images):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="disc_{i:03d}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts.append(head.encode() + png + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
