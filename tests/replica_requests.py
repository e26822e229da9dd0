"""Requests to one Binder replica of a deployed stack, made inside its own container.

Each replica listens on its own 127.0.0.1; the tests reach it there with ``docker exec`` and
a short Python program (the service image has Python, not curl), never by an overlay address.
The program binds its end of the connection to a loopback address the test picks (any of
127.0.0.0/8), so each check is a client of its own to the per-IP rate limit, with no header a
client could forge. With ``admin`` it sends the admin token, read from the replica's secret
file inside the container: the token never reaches the test or its output.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: One request; prints one JSON object: status, headers, then ``events`` (an event stream, to
#: its ``ready`` or ``failed``), ``json`` or ``text``, and ``started``/``ended`` (time.time()).
#: With ``"lines": true`` each event is printed on a line of its own as it comes.
REQUEST = r"""
import http.client, json, sys, time
req = json.loads(sys.argv[1])
headers = dict(req.get("headers") or {})
if req.get("path", "").startswith("/build/"):
    headers.setdefault("Accept", "text/event-stream")
if req.get("admin"):
    with open("/run/secrets/admin_token") as f:
        headers["Authorization"] = "Bearer " + f.read().strip()
body = req.get("json")
if body is not None:
    body = json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
conn = http.client.HTTPConnection(
    "127.0.0.1", 8585, timeout=req.get("timeout", 30), source_address=(req["source"], 0)
)
out = {"started": time.time()}
conn.request(req.get("method", "GET"), req["path"], body=body, headers=headers)
resp = conn.getresponse()
out["status"] = resp.status
out["headers"] = {k.lower(): v for k, v in resp.getheaders()}
if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
    events, buf = [], b""
    while not events or events[-1].get("phase") not in ("ready", "failed"):
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            frame, buf = buf.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    events.append(json.loads(line[5:]))
                    if req.get("lines"):
                        print(json.dumps({"event": events[-1]}), flush=True)
    out["events"] = events
else:
    text = resp.read().decode()
    try:
        out["json"] = json.loads(text)
    except ValueError:
        out["text"] = text
out["ended"] = time.time()
print(json.dumps(out), flush=True)
"""

#: A baseline request (printed), ``ready``, then the same request again and again, each from
#: the next loopback address of ``prefix`` (so the rate limit never answers instead), until its
#: last event says ``refused``; prints when (time.time()) and how many requests it took.
POLL = r"""
import http.client, json, sys, time
path, prefix, refused, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
def last_event(n):
    conn = http.client.HTTPConnection(
        "127.0.0.1", 8585, timeout=10, source_address=(f"{prefix}.{n % 250 + 1}", 0)
    )
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    body = conn.getresponse().read().decode()
    frames = [l[5:] for l in body.splitlines() if l.startswith("data:")]
    return json.loads(frames[-1])
print(json.dumps({"baseline": last_event(0)}), flush=True)
deadline, n = time.monotonic() + seconds, 1
while time.monotonic() < deadline:
    event = last_event(n)
    if refused in event.get("message", ""):
        print(json.dumps({"refused_at": time.time(), "requests": n, "event": event}), flush=True)
        break
    n += 1
    time.sleep(0.02)
else:
    print(json.dumps({"refused_at": None, "requests": n}), flush=True)
"""


def request_in(
    container: str,
    path: str,
    *,
    source: str,
    method: str = "GET",
    admin: bool = False,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """One request to the replica in ``container`` from loopback address ``source``."""
    request = {"path": path, "source": source, "method": method, "admin": admin}
    request |= {"json": body, "headers": headers or {}, "timeout": timeout}
    proc = subprocess.run(
        ["docker", "exec", container, "python3", "-c", REQUEST, json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def last_event(result: dict[str, Any]) -> dict[str, Any]:
    events = result.get("events") or [{}]
    event: dict[str, Any] = events[-1]
    return event


class Lines:
    """A command's output lines, read by a thread, each waited for with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next line as JSON; ``None`` at the end. Raises ``queue.Empty`` after
        ``timeout`` seconds without one."""
        line = self._lines.get(timeout=timeout)
        if line is None:
            return None
        parsed: dict[str, Any] = json.loads(line)
        return parsed


@contextmanager
def running_in(container: str, program: str, *args: str) -> Iterator[Lines]:
    """``program`` running in ``container``; stopped when the block ends, however it ends."""
    proc = subprocess.Popen(
        ["docker", "exec", container, "python3", "-c", program, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield Lines(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def stream_in(container: str, path: str, *, source: str, timeout: float) -> list[str]:
    """The arguments :func:`running_in` takes for a /build stream printed event by event."""
    request = {"path": path, "source": source, "lines": True, "timeout": timeout}
    return [container, REQUEST, json.dumps(request)]
