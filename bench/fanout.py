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
every process reads the same monotonic clock.

    bench/fanout.py [--clients 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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


async def one_client(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    record: dict[str, Any],
    arrivals: Arrivals,
) -> None:
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


async def worker(url: str, token: str, clients: int) -> None:
    headers = {**b.SSE, "Authorization": f"Bearer {token}"}
    records: list[dict[str, Any]] = [{"marks": []} for _ in range(clients)]
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        tasks = []
        arrivals = Arrivals(clients)
        for i, record in enumerate(records):
            client = one_client(session, url, headers, record, arrivals)
            tasks.append(asyncio.create_task(client))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # a ramp, not a SYN flood
        await arrivals.all.wait()
        print(json.dumps({"connected": time.monotonic()}), flush=True)
        await asyncio.gather(*tasks)
    print(json.dumps({"records": records}), flush=True)


# --------------------------------------------------------------------------- coordinator


async def run_worker(
    url: str, token: str, clients: int, connected: list[float]
) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", url, token, str(clients),
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
    await proc.wait()
    return records


async def sample_rss(server: b.Server, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(server.memory()["VmRSS"])
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except TimeoutError:
            pass


async def measure(clients: int, workers: int, wait: int) -> dict[str, Any]:
    g = b.ground()
    run = b.run_id()
    repo = b.Repo(g, f"bench-fanout-{run}")
    proxy = CountingProxy()
    await proxy.start()
    rss: list[int] = []
    connected: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = b.service_config(g, run, Path(tmp), docker_host=f"tcp://127.0.0.1:{proxy.port}")
        try:
            sha = repo.commit(
                {"Dockerfile": dockerfile(g["images"]["singleuser"], uuid.uuid4().hex, wait)}
            )
            async with b.serve(config) as server:
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_rss(server, rss, stop))
                url = f"{server.url}/build/{b.git_spec(repo.url, sha)}?build_only=true"
                share = [clients // workers + (i < clients % workers) for i in range(workers)]
                b.say(f"{clients} clients in {workers} processes")
                results = await asyncio.gather(
                    *(run_worker(url, config["admin_token"], n, connected) for n in share)
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
    for record in records:
        first = record.get("first")
        for mark, seen in record["marks"]:
            at_service = proxy.mark_seen.get(mark)
            if first is not None and at_service is not None and at_service > first:
                delays.append(seen - at_service)
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
        "service_peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "service_rss_during_mib": round(max(rss, default=0) / 1024, 1),
        "target": "1 engine log stream, delay p99 <= 100 ms, RSS <= 200 MB",
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="EventSource clients (1000)")
    parser.add_argument("--workers", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--wait", type=int, default=20, help="seconds the build waits for clients (20)"
    )
    args = parser.parse_args()
    started, load = time.monotonic(), b.loadavg()
    result = asyncio.run(measure(args.clients, args.workers, args.wait))
    b.emit("fanout", result, started=started, load_before=load)


if __name__ == "__main__":
    main()
