#!/usr/bin/env python3
"""Log fan-out: many EventSource clients watching one running build.

Measured: how many engine log streams the service opens for the build (a counting proxy sits
between ``swarmbinder serve`` and the Docker engine's socket, and counts ``GET
/services/<build>/logs?follow=1``), the delay from a log line reaching the service (the proxy
passing it on) to reaching each client, and the service's peak RSS (``VmHWM`` in
``/proc/<pid>/status`` of the serving process).

The build's Dockerfile sleeps while the clients connect, then prints numbered marks four
times a second. A mark counts for a client only if it reached the service after that client's
first event, so a late subscriber's replayed tail is not taken for delay. The clients run in
``--workers`` processes of their own (the proxy and the sampling stay in this one), and
every process reads the same monotonic clock. Each client is a bare protocol on its socket,
timing a read as the event loop hands it over (``--client aiohttp`` reads through aiohttp
and the SSE decoder instead, whose cost in the client processes then counts as delay).

Also measured: the service's CPU time per delivered line (``/proc/<pid>/stat`` over the marks'
window), which depends less than the delays on what else the machine runs.

    bench/fanout.py [--clients 1000] [--workers 2] [--client raw|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import benchlib as b

from swarmbinder.events import SSEDecoder

MARK = re.compile(r"fanmark-(\d+)")
MARK_BYTES = re.compile(rb"fanmark-(\d+)")
# Not anchored at the start: a request body has no line end, so the next request's line
# follows it on the same "line".
REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (/\S*) HTTP/1\.[01]$")
MARKS = 40


def dockerfile(singleuser: str, nonce: str, wait: int) -> str:
    return (
        f"FROM {singleuser}\n"
        f"RUN echo {nonce} && sleep {wait} && "
        f"for i in $(seq 1 {MARKS}); do echo fanmark-$i; sleep 0.25; done\n"
    )


# --------------------------------------------------------------------------- the proxy


class CountingProxy:
    """TCP on 127.0.0.1 to the engine's unix socket, noting requests and marks on the way."""

    def __init__(self, socket_path: str = "/var/run/docker.sock") -> None:
        self.socket_path = socket_path
        self.requests: list[str] = []
        self.mark_seen: dict[int, float] = {}
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def log_streams(self, service_prefix: str = "") -> list[str]:
        return [
            r
            for r in self.requests
            if "/services/" in r
            and "/logs" in r
            and re.search(r"follow=(1|true)", r)
            and service_prefix in r
        ]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, self._requests_in),
            self._pipe(up_reader, writer, self._marks_in),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scan: Any
    ) -> None:
        carry = b""
        try:
            while chunk := await reader.read(65536):
                carry = scan(carry + chunk)
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

    def _requests_in(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\r\n")
        for line in lines:
            match = REQUEST_LINE.search(line)
            if match:
                self.requests.append(f"{match.group(1).decode()} {match.group(2).decode()}")
        return rest[-4096:]

    def _marks_in(self, data: bytes) -> bytes:
        now = time.monotonic()
        for match in MARK_BYTES.finditer(data):
            self.mark_seen.setdefault(int(match.group(1)), now)
        # a mark split across two reads is found whole next time (setdefault keeps the first)
        return data[-16:]


# --------------------------------------------------------------------------- the clients


class Arrivals:
    """Set once every client has had its first event (or failed)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all = asyncio.Event()

    def arrived(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.all.set()


# A mark's frame is whole when its message's escaped newline follows the number: a frame
# split across two reads is timed when its end arrives.
FRAME_MARK = re.compile(rb"fanmark-(\d+)\\n")
FRAME_PHASE = re.compile(rb'"phase":"(\w+)"')


class RawClient(asyncio.Protocol):
    """One EventSource client at the socket: each read is timed as the event loop hands it
    over and scanned for marks, with no HTTP client, decoder or task in between. A thousand
    of these cost their process little, so the delay measured is the service's, not that of
    a client process starved of CPU (the aiohttp client added tens of milliseconds)."""

    def __init__(self, request: bytes, record: dict[str, Any], arrivals: Arrivals) -> None:
        self.request = request
        self.record = record
        self.arrivals = arrivals
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        record = self.record
        if "error" in record:
            return
        if "first" not in record:
            self.head += data
            if not self.head.startswith(b"HTTP/1.1 200"):
                status, crlf, _ = self.head.partition(b"\r\n")
                if crlf:
                    self._fail(f"status {status.decode(errors='replace')!r}")
                return
            if b"data:" not in self.head:
                return
            record["first"] = now
            self.arrivals.arrived()
            data, self.head = self.head, b""
        for match in FRAME_MARK.finditer(data):
            record["marks"].append([int(match.group(1)), now])
        phases = FRAME_PHASE.findall(data)
        if phases:
            record["last"] = phases[-1].decode()
            if record["last"] in ("ready", "failed") and self.transport is not None:
                self.transport.close()

    def _fail(self, error: str) -> None:
        self.record["error"] = error
        self.arrivals.arrived()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if "first" not in self.record and "error" not in self.record:
            self._fail(f"connection lost: {exc!r}"[:200])
        if not self.done.done():
            self.done.set_result(None)


async def raw_client(
    url: str, headers: dict[str, str], record: dict[str, Any], arrivals: Arrivals
) -> None:
    parts = urlsplit(url)
    lines = [f"GET {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_connection(
            lambda: RawClient(request, record, arrivals), parts.hostname, parts.port
        )
    except OSError as exc:
        record["error"] = repr(exc)[:200]
        arrivals.arrived()
        return
    await protocol.done


async def aiohttp_client(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    record: dict[str, Any],
    arrivals: Arrivals,
) -> None:
    """The same client through aiohttp and the SSE decoder, as a browser-like client would
    read (``--client aiohttp``): its own cost shows in the delays."""
    decoder = SSEDecoder()
    try:
        async with session.get(url, headers=headers) as resp:
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                for event in decoder.feed(chunk):
                    if "first" not in record:
                        record["first"] = now
                        arrivals.arrived()
                    found = MARK.search(str(event.get("message", "")))
                    if found:
                        record["marks"].append([int(found.group(1)), now])
                    record["last"] = event.get("phase")
                if record.get("last") in ("ready", "failed"):
                    return
    except Exception as exc:  # reported, not raised: one client's failure is a result
        record["error"] = repr(exc)[:200]
        if "first" not in record:
            arrivals.arrived()


async def worker(url: str, token: str, clients: int, kind: str) -> None:
    headers = {**b.SSE, "Authorization": f"Bearer {token}"}
    records: list[dict[str, Any]] = [{"marks": []} for _ in range(clients)]
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        tasks = []
        arrivals = Arrivals(clients)
        for i, record in enumerate(records):
            if kind == "aiohttp":
                client = aiohttp_client(session, url, headers, record, arrivals)
            else:
                client = raw_client(url, headers, record, arrivals)
            tasks.append(asyncio.create_task(client))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # a ramp, not a SYN flood
        await arrivals.all.wait()
        print(json.dumps({"connected": time.monotonic()}), flush=True)
        await asyncio.gather(*tasks)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = round(usage.ru_utime + usage.ru_stime, 2)
    print(json.dumps({"records": records, "cpu_seconds": cpu}), flush=True)


# --------------------------------------------------------------------------- coordinator


async def run_worker(
    url: str, token: str, clients: int, kind: str, connected: list[float], cpu: list[float]
) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", url, token, str(clients), kind,
        stdout=asyncio.subprocess.PIPE, limit=2**26,
    )  # fmt: skip
    assert proc.stdout is not None
    records: list[dict[str, Any]] = []
    async for line in proc.stdout:
        message = json.loads(line)
        if "connected" in message:
            connected.append(message["connected"])
        else:
            records = message["records"]
            cpu.append(message["cpu_seconds"])
    await proc.wait()
    return records


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample_service(
    server: b.Server, samples: list[tuple[float, int, float]], stop: asyncio.Event
) -> None:
    """(time, VmRSS, CPU seconds) of the service every 0.1 s."""
    while not stop.is_set():
        now = time.monotonic()
        samples.append((now, server.memory()["VmRSS"], cpu_seconds(server.proc.pid)))
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


def cpu_per_line(
    samples: list[tuple[float, int, float]], first: float, last: float, lines: int
) -> float | None:
    """The service's CPU microseconds per delivered line, from the last sample before the
    first mark reached it to the first sample 0.5 s after the last one (all of its work in
    that window counts: the engine's log stream, the polling, the clients)."""
    before = [s for s in samples if s[0] <= first]
    after = [s for s in samples if s[0] >= last + 0.5]
    if not before or not after or not lines:
        return None
    return round((after[0][2] - before[-1][2]) / lines * 1e6, 1)


async def measure(clients: int, workers: int, wait: int, kind: str) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    repo = b.Repo(g, f"bench-fanout-{run}")
    proxy = CountingProxy()
    await proxy.start()
    samples: list[tuple[float, int, float]] = []
    connected: list[float] = []
    client_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = b.service_config(g, run, Path(tmp), docker_host=f"tcp://127.0.0.1:{proxy.port}")
        try:
            sha = repo.commit(
                {"Dockerfile": dockerfile(g["images"]["singleuser"], uuid.uuid4().hex, wait)}
            )
            async with b.serve(config) as server:
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_service(server, samples, stop))
                url = f"{server.url}/build/{b.git_spec(repo.url, sha)}?build_only=true"
                share = [clients // workers + (i < clients % workers) for i in range(workers)]
                b.say(f"{clients} {kind} clients in {workers} processes")
                token = config["admin_token"]
                results = await asyncio.gather(
                    *(run_worker(url, token, n, kind, connected, client_cpu) for n in share)
                )
                stop.set()
                await sampler
                memory = server.memory()
        finally:
            await proxy.close()
            b.clean_up(config["image_prefix"])
            repo.remove()
    records = [r for batch in results for r in batch]
    delays: list[float] = []
    delivered = 0
    worst: dict[int, float] = {}
    for record in records:
        first = record.get("first")
        for mark, seen in record["marks"]:
            at_service = proxy.mark_seen.get(mark)
            delivered += at_service is not None
            if first is not None and at_service is not None and at_service > first:
                delays.append(seen - at_service)
                worst[mark] = max(worst.get(mark, 0.0), seen - at_service)
    # One late mark for every client is a stall (of the service, or of the whole machine);
    # late clients on every mark is a service too slow for that many.
    slowest = sorted(worst.items(), key=lambda item: -item[1])[:3]
    seen_at = list(proxy.mark_seen.values())
    phases: dict[str, int] = {}
    for record in records:
        key = str(record.get("last") or record.get("error") or "none")
        phases[key] = phases.get(key, 0) + 1
    # The service adopts every build service it finds on the swarm at start (those of other
    # deployments sharing it too), and follows each: only streams of our build count. Its
    # service name carries the commit's short sha.
    streams = [r for r in proxy.log_streams() if f"-{sha[:7]}-" in r]
    return {
        "clients": clients,
        "client_processes": workers,
        "final_phases": phases,
        "engine_log_streams_opened": len(streams),
        "engine_log_stream_requests": streams,
        "engine_requests_seen": len(proxy.requests),
        "other_log_streams_opened": len(proxy.log_streams()) - len(streams),
        "marks_at_service": len(proxy.mark_seen),
        "all_connected_before_first_mark": bool(connected)
        and max(connected) < min(proxy.mark_seen.values(), default=float("inf")),
        "delay_ms": b.summary(delays, scale=1000, digits=1),
        "slowest_marks_ms": [[mark, round(delay * 1000, 1)] for mark, delay in slowest],
        "median_mark_worst_ms": round(b.percentile(list(worst.values()), 50) * 1000, 1),
        "service_peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "service_rss_during_mib": round(max((s[1] for s in samples), default=0) / 1024, 1),
        "service_cpu_us_per_line": cpu_per_line(
            samples, min(seen_at, default=0), max(seen_at, default=0), delivered
        ),
        "client_kind": kind,
        "client_cpu_seconds": client_cpu,
        "target": "1 engine log stream, delay p99 <= 100 ms, RSS <= 200 MB",
    }


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="EventSource clients (1000)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--wait", type=int, default=20, help="seconds the build waits for clients (20)"
    )
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="raw: timed at the socket (the default); aiohttp: through aiohttp and the SSE "
        "decoder, whose own cost is then part of the delay",
    )
    args = parser.parse_args()
    started, load = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.clients, args.workers, args.wait, args.client))
    b.emit("fanout", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
