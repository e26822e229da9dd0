#!/usr/bin/env python3
"""Render a ``bench/run`` results file as the README's Markdown table.

.venv/bin/python bench/table.py bench/results/<date>.json
.venv/bin/python bench/table.py bench/results/<date>T<time>-<name>.json   # one benchmark
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    if "launch" in r:
        x = r["launch"]
        ours, raw = x["swarmbinder_seconds"], x["raw_spawn_seconds"]
        out.append((
            f"Cached launch, /build to ready ({x['count']} each, interleaved)",
            f"p50 {_s(ours['p50'])}, p95 {_s(ours['p95'])}",
            f"raw hub spawn p50 {_s(raw['p50'])}, p95 {_s(raw['p95'])}",
            f"{x['ratio_p50']}x (p95 {x['ratio_p95']}x)",
            "p50 ≤ 1.15x",
            _met(x["ratio_p50"] <= 1.15),
        ))  # fmt: skip
    if "pooled" in r:
        x = r["pooled"]
        one, many = x["pooled"], x["simultaneous"]
        cold = r.get("coldlaunch", {}).get("seconds", {}).get("swarmbinder", {})
        floor = f"cached cold launch p50 {_s(cold['p50'])}" if cold.get("p50") else ""
        load = "load {}-{}".format(*one["load_range"]) if one.get("load_range") else ""
        for label, part, target, met in [
            (
                f"Pooled launch, /build to ready (pool of {one['pool_size']}, "
                f"{one['count']} launches one at a time; {load})",
                one,
                "p50 ≤ 0.3 s",
                x["target_met"]["pooled"],
            ),
            (
                f"{many['size']} simultaneous pooled launches (pool of {many['size']}; "
                f"load {many['load']})",
                many,
                "all ready, p50 ≤ 0.5 s",
                x["target_met"]["simultaneous"],
            ),
        ]:
            s = part["seconds"]
            got = f"p50 {_s(s['p50'])}, p95 {_s(s['p95'])}" if s.get("n") else "none"
            if part is many:
                got = f"{many['ready_from_pool']}/{many['size']} ready from the pool, {got}"
            elif one["cold_fallbacks"]:
                got += f" ({one['cold_fallbacks']} not from the pool)"
            ratio = f"{round(s['p50'] / cold['p50'], 3)}x" if floor and s.get("n") else ""
            out.append((label, got, floor, ratio, target, _met(met)))
    if "coldlaunch" in r:
        x = r["coldlaunch"]
        s, q = x["seconds"], x["ratios_p50"]
        load = "load {}-{}".format(*x["load_range"]) if x.get("load_range") else ""
        floors = [("bare_docker_run", "bare docker run"), ("binderhub_local", "BinderHub local")]
        for kind, label in [("swarmbinder", "swarmbinder"), ("swarmbinder_baseline", "baseline")]:
            if kind not in s:
                continue
            for floor, floor_label in floors:
                if floor not in s:
                    continue
                ratio = q[f"{kind}_to_{floor}"]
                target = "≤ 1.3x" if floor == "bare_docker_run" else "< 1x"
                met = ratio <= 1.3 if floor == "bare_docker_run" else ratio < 1
                out.append((
                    f"Cached cold launch, {label} ({x['count']} rounds, interleaved; {load})",
                    f"p50 {_s(s[kind]['p50'])}, p95 {_s(s[kind]['p95'])}",
                    f"{floor_label} p50 {_s(s[floor]['p50'])}",
                    f"{ratio}x",
                    target if kind == "swarmbinder" else "",
                    _met(met) if kind == "swarmbinder" else "",
                ))  # fmt: skip
    if "burst" in r:
        x = r["burst"]
        burst = x["burst_seconds"]
        got = f"{x['succeeded']}/{x['size']} ready"
        if burst.get("n"):
            got += f", p50 {_s(burst['p50'])}, p95 {_s(burst['p95'])}"
        raw = f"{x['raw_burst_succeeded']}/{x['size']} raw spawns ready"
        if x["raw_burst_seconds"].get("n"):
            raw += f" (p50 {_s(x['raw_burst_seconds']['p50'])})"
        out.append((
            f"Burst of {x['size']} cached launches",
            got,
            f"single launch p50 {_s(x['single_launch_seconds']['p50'])}; {raw}",
            f"{x['ratio_p50_to_single']}x" if burst.get("n") else "n/a",
            "all succeed, p50 ≤ 2x single",
            _met(x["succeeded"] == x["size"] and x["ratio_p50_to_single"] <= 2),
        ))  # fmt: skip
    if "build" in r:
        x = r["build"]
        for cache in ("warm", "cold"):
            c = x[cache]
            out.append((
                f"Build, {cache} layer cache ({x['count']} each)",
                f"p50 {_s(c['swarmbinder_seconds']['p50'])}",
                f"raw repo2docker p50 {_s(c['raw_repo2docker_seconds']['p50'])}",
                f"{c['ratio_p50']}x ({c['overhead_p50_seconds']:+.2f} s)",
                "≤ 1.05x",
                _met(c["ratio_p50"] <= 1.05),
            ))  # fmt: skip
    if "sticky" in r:
        x = r["sticky"]
        out.append((
            f"Sticky rebuild after a one-file change ({x['count']} each)",
            f"p50 {_s(x['sticky_rebuild_seconds']['p50'])}",
            f"node cache cleared p50 {_s(x['cleared_cache_rebuild_seconds']['p50'])}",
            f"{x['speedup_p50']}x faster",
            "≥ 5x faster",
            _met(x["speedup_p50"] >= 5),
        ))  # fmt: skip
    if "placement" in r:
        x = r["placement"]
        out.append((
            f"Launch on the node holding the image, 3 nodes ({x['rounds']} each, "
            f"{x['image_layer_mib']} MiB image layer)",
            f"p50 {_s(x['launch_on_node_with_image_seconds']['p50'])}; "
            f"choosing the node p50 {x['preference_ms']['p50']} ms",
            f"node without the image p50 {_s(x['launch_on_node_without_image_seconds']['p50'])}",
            f"{x['speedup_p50']}x faster ({x['saved_p50_seconds']:+.2f} s)",
            "no pull on the holding node",
            _met(x["speedup_p50"] > 1),
        ))  # fmt: skip
    if "fanout" in r:
        x = r["fanout"]
        d = x["delay_ms"]
        # Results from before these fields have neither: their clients read through aiohttp.
        cpu = x.get("service_cpu_us_per_line")
        per_line = f"; service CPU {cpu} µs per delivered line" if cpu is not None else ""
        clients = x.get("client_kind", "aiohttp")
        out.append((
            f"Log fan-out, {x['clients']} EventSource clients ({clients}) on one build",
            f"{x['engine_log_streams_opened']} engine log stream; delay p50 {d['p50']} ms, "
            f"p99 {d['p99']} ms; peak RSS {x['service_peak_rss_mib']} MiB{per_line}",
            f"{sum(x['final_phases'].values())} clients, final phases {x['final_phases']}",
            "",
            "1 stream, p99 ≤ 100 ms, RSS ≤ 200 MB",
            _met(
                x["engine_log_streams_opened"] == 1
                and d["p99"] <= 100
                and x["service_peak_rss_mib"] * 2**20 <= 200e6
            ),
        ))  # fmt: skip
    if "latency" in r:
        x = r["latency"]
        f, br, ls = x["first_event_ms"], x["first_event_branch_ref_ms"], x["git_ls_remote_alone_ms"]
        out.append((
            "Time to first /build event, cached image",
            f"full sha: p50 {f['p50']} ms, p99 {f['p99']} ms; "
            f"branch: p50 {br['p50']} ms, p99 {br['p99']} ms",
            f"git ls-remote alone p50 {ls['p50']} ms",
            "",
            "p50 ≤ 20 ms",
            f"{_met(f['p50'] <= 20)} (sha); {_met(br['p50'] <= 20)} (branch)",
        ))  # fmt: skip
        for path, t in x["throughput"].items():
            out.append((
                f"{path} throughput",
                f"{t['requests_per_second']:.0f} req/s ({t['requests']} requests, "
                f"{t['errors']} errors, p99 {t['latency_ms']['p99']} ms)",
                f"{x['load_generator']['concurrency']} connections from 127.0.0.1",
                "",
                "",
                "",
            ))  # fmt: skip
    if "admission" in r:
        x = r["admission"]
        a, c = x["admission_ms"], x["launch_claim_ms"]
        out.append((
            f"Admission with PostgreSQL: bans, quota lookup, rate-limit increment "
            f"({a['n']} requests)",
            f"p50 {a['p50']:.2f} ms, p99 {a['p99']:.2f} ms",
            f"launch claim (once per launch with a quota) p50 {c['p50']:.2f} ms, "
            f"p99 {c['p99']:.2f} ms",
            "",
            "p50 ≤ 2 ms",
            _met(a["p50"] <= 2),
        ))  # fmt: skip
    return out


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: bench/table.py RESULTS.json", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        data = json.load(f)
    # A bench/run file holds each benchmark's result by name; one benchmark's file is its own.
    results = {data["benchmark"]: data} if "benchmark" in data else data.get("results", data)
    print("| Benchmark | swarmbinder | floor | ratio | target | |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows(results):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
