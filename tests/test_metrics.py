from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from swarmbinder.buildjob import BuildRequest
from swarmbinder.errors import QuotaExceeded
from swarmbinder.launch_flow import LaunchRequest
from swarmbinder.metrics import (
    LAUNCH_EVENT_LOGGER,
    OTHER_REPOS,
    LaunchEventLog,
    LaunchStatus,
    Metrics,
    MetricsObserver,
    RepoLabels,
)
from swarmbinder.resolve import Resolved

REPO = "https://github.com/org/repo"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scrape(metrics: Metrics) -> dict[str, float]:
    """Every sample of the exposition, keyed ``name{label="value",...}``."""
    samples: dict[str, float] = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def count(
    metrics: Metrics, metric: str, status: str, provider: str = "GitHub", repo: str = REPO
) -> float:
    key = f'binderhub_{metric}_count_total{{provider="{provider}",repo="{repo}",status="{status}"}}'
    return scrape(metrics)[key]


def test_binderhubs_names_types_labels_and_buckets() -> None:
    text = generate_latest(Metrics().registry).decode()
    types = {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }
    assert types["binderhub_build_time_seconds"] == "histogram"
    assert types["binderhub_launch_time_seconds"] == "histogram"
    assert types["binderhub_inprogress_builds"] == "gauge"
    assert types["binderhub_inprogress_launches"] == "gauge"
    # Pre-created outcome series with BinderHub's buckets.
    build_buckets = re.findall(
        r'^binderhub_build_time_seconds_bucket\{le="([^"]+)",status="success"\}', text, re.M
    )
    assert build_buckets == ["60.0", "120.0", "300.0", "600.0", "1800.0", "3600.0", "7200.0"] + [
        "+Inf"
    ]
    assert (
        'binderhub_launch_time_seconds_bucket{le="2.0",retries="-1",status="failure"} 0.0' in text
    )
    assert 'binderhub_launch_time_seconds_bucket{le="600.0",retries="0",status="success"}' in text


def test_own_registry_not_the_global_one() -> None:
    Metrics()
    Metrics()  # a second one would clash in a shared registry
    assert b"binderhub_build_time_seconds" not in generate_latest(REGISTRY)


def test_build_success_and_failure_are_counted_and_timed() -> None:
    clock = Clock()
    metrics = Metrics(clock=clock)
    tracker = metrics.start_build("GitHub", REPO)
    assert scrape(metrics)["binderhub_inprogress_builds{}"] == 1
    clock.now += 90
    tracker.finish("success")
    tracker.finish("failure")  # ignored: one outcome per build
    metrics.start_build("GitHub", REPO).finish("failure")
    s = scrape(metrics)
    assert s["binderhub_inprogress_builds{}"] == 0
    assert count(metrics, "build", "success") == 1
    assert count(metrics, "build", "failure") == 1
    assert s['binderhub_build_time_seconds_bucket{le="60.0",status="success"}'] == 0
    assert s['binderhub_build_time_seconds_bucket{le="120.0",status="success"}'] == 1
    assert s['binderhub_build_time_seconds_sum{status="success"}'] == 90


def test_launch_retries_label_follows_binderhub() -> None:
    metrics = Metrics(clock=Clock())
    metrics.start_launch("GitLab", REPO).finish(LaunchStatus.SUCCESS, retries=2)
    metrics.start_launch("GitLab", REPO).finish(LaunchStatus.FAILURE, retries=2)
    metrics.count_quota_refusal("GitLab", REPO, "repo_quota")
    s = scrape(metrics)
    assert s['binderhub_launch_time_seconds_count{retries="2",status="success"}'] == 1
    assert s['binderhub_launch_time_seconds_count{retries="-1",status="failure"}'] == 1
    assert count(metrics, "launch", "repo_quota", "GitLab") == 1
    assert s["binderhub_inprogress_launches{}"] == 0


def test_repo_label_can_be_turned_off() -> None:
    metrics = Metrics(repo_label=False)
    metrics.start_build("GitHub", REPO).finish("success")
    assert (
        scrape(metrics)['binderhub_build_count_total{provider="GitHub",repo="",status="success"}']
        == 1
    )


def repo_values(metrics: Metrics) -> set[str]:
    """The distinct values of the repo label in the exposition."""
    return {
        key.split('repo="', 1)[1].split('"', 1)[0] for key in scrape(metrics) if 'repo="' in key
    }


def test_a_flood_of_distinct_repos_leaves_the_series_bounded() -> None:
    """A hostile script asks for 20,000 repositories, each once, each build failing and each
    launch refused: the exposition keeps at most the limit's repositories plus ``other``, and
    every request is still counted."""
    metrics = Metrics(repo_label_limit=50)
    flood = 20_000
    for i in range(flood):
        repo = f"https://github.com/flood/r{i}"
        metrics.start_build("GitHub", repo).finish("failure")
        metrics.count_quota_refusal("GitHub", repo, "repo_quota")
    samples = scrape(metrics)
    repos = repo_values(metrics)
    assert len(repos) == 50 + 1 and OTHER_REPOS in repos
    counted = [k for k in samples if re.match(r"binderhub_(build|launch)_count_total", k)]
    assert len(counted) == 2 * (50 + 1)  # not 40,000 series
    builds = sum(v for k, v in samples.items() if k.startswith("binderhub_build_count_total"))
    refused = sum(v for k, v in samples.items() if k.startswith("binderhub_launch_count_total"))
    assert builds == flood and refused == flood
    assert count(metrics, "build", "failure", repo=OTHER_REPOS) == flood - 50


def test_repos_in_use_keep_their_label_through_a_flood() -> None:
    """The repositories counted again and again keep their own series while one-off ones
    pass through ``other``; a one-off seen twice takes the label of the least recently used."""
    metrics = Metrics(repo_label_limit=3)
    popular = [f"https://github.com/org/p{i}" for i in range(3)]
    for repo in popular:
        metrics.start_build("GitHub", repo).finish("success")
    for i in range(1000):
        metrics.start_launch("GitHub", popular[i % 3]).finish("success", retries=0)
        metrics.start_launch("GitHub", f"https://github.com/flood/r{i}").finish("success")
    assert repo_values(metrics) == {*popular, OTHER_REPOS}
    assert count(metrics, "launch", "success", repo=popular[0]) == 334

    newcomer = "https://github.com/org/new"
    metrics.start_build("GitHub", newcomer).finish("success")  # first sight: other
    metrics.start_launch("GitHub", newcomer).finish("success")  # its launch: still other
    metrics.start_build("GitHub", popular[1]).finish("success")
    metrics.start_build("GitHub", popular[2]).finish("success")
    metrics.start_launch("GitHub", newcomer).finish("success")  # launched again: p0 gives way
    assert repo_values(metrics) == {popular[1], popular[2], newcomer, OTHER_REPOS}
    assert count(metrics, "launch", "success", repo=newcomer) == 1
    assert count(metrics, "launch", "success", repo=OTHER_REPOS) == 1000 + 1


def test_repo_labels_remember_a_bounded_number_of_candidates() -> None:
    evicted: list[str] = []
    labels = RepoLabels(2, evicted.append)
    assert [labels.label(r) for r in ("a", "b", "c", "d", "e")] == ["a", "b", *[OTHER_REPOS] * 3]
    assert labels.label("c") == OTHER_REPOS  # forgotten: only the last 2 candidates are kept
    assert labels.label("e") == "e" and evicted == ["a"]
    assert labels.labelled == ["b", "e"]
    assert labels.label("c", "launch") == OTHER_REPOS  # another kind of count: not "again"
    assert labels.label("c") == "c" and evicted == ["a", "b"]
    with pytest.raises(ValueError):
        RepoLabels(0, evicted.append)


def test_a_limit_of_zero_sends_an_empty_repo_label() -> None:
    metrics = Metrics(repo_label_limit=0)
    metrics.start_build("GitHub", REPO).finish("success")
    assert repo_values(metrics) == {""}


def test_context_form_returns_gauges_to_zero_on_error() -> None:
    metrics = Metrics()
    with metrics.track_build("GitHub", REPO):
        pass
    with pytest.raises(RuntimeError), metrics.track_launch("GitHub", REPO):
        raise RuntimeError("boom")
    s = scrape(metrics)
    assert s["binderhub_inprogress_builds{}"] == 0
    assert s["binderhub_inprogress_launches{}"] == 0
    assert count(metrics, "build", "success") == 1
    assert count(metrics, "launch", "failure") == 1


async def test_cancellation_returns_gauges_to_zero() -> None:
    metrics = Metrics()
    started = asyncio.Event()

    async def build() -> None:
        with metrics.track_build("GitHub", REPO):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(build())
    await started.wait()
    assert scrape(metrics)["binderhub_inprogress_builds{}"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = scrape(metrics)
    assert s["binderhub_inprogress_builds{}"] == 0
    assert count(metrics, "build", "failure") == 1


def test_swarm_gauges() -> None:
    metrics = Metrics()
    metrics.build_queue_length.set(3)
    metrics.set_swarm_nodes({("ready", "active"): 2, ("down", "drain"): 1})
    metrics.set_swarm_nodes({("ready", "active"): 3})
    s = scrape(metrics)
    assert s["swarmbinder_build_queue_length{}"] == 3
    assert s['swarmbinder_swarm_nodes{availability="active",state="ready"}'] == 3
    assert 'swarmbinder_swarm_nodes{availability="drain",state="down"}' not in s


FIXED = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)


def test_launch_event_is_one_json_line_with_binderhubs_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "launches.jsonl"
    events = LaunchEventLog(path, clock=lambda: FIXED)
    try:
        with caplog.at_level(logging.INFO, logger=LAUNCH_EVENT_LOGGER):
            events.emit(
                provider="GitHub",
                spec="org/repo/HEAD",
                ref="a" * 40,
                build_token=False,
                origin="binder.example.org",
                request_origin="same-origin",
            )
    finally:
        events.close()
    events.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "timestamp": "2024-05-06T07:08:09.123456Z",
        "schema": "binderhub.jupyter.org/launch",
        "version": 6,
        "provider": "GitHub",
        "spec": "org/repo/HEAD",
        "ref": "a" * 40,
        "status": "success",
        "build_token": False,
        "origin": "binder.example.org",
        "request_origin": "same-origin",
    }
    assert [json.loads(r.getMessage())["spec"] for r in caplog.records] == ["org/repo/HEAD"]


def test_observer_fits_the_launch_flow(tmp_path: Path) -> None:
    path = tmp_path / "launches.jsonl"
    metrics = Metrics()
    observer = MetricsObserver(metrics, LaunchEventLog(path))
    build = BuildRequest(
        provider="gh",
        spec="org/repo/HEAD",
        repo_url=REPO,
        ref="b" * 40,
        build_slug="org-repo",
        image="registry/org-repo:" + "b" * 40,
    )
    finished = observer.build_started(build)
    finished("success")
    observer.launch_started(build)("failure")
    observer.quota_refused(build, QuotaExceeded("full", quota=1, used=1, scope="pod_quota"))
    request = LaunchRequest(
        provider_prefix="gh",
        spec="org/repo/HEAD",
        launch_host="https://binder.example.org/",
        origin="binder.example.org",
        request_origin="",
        have_build_token=True,
    )
    launched_images: list[str] = []
    observer.listen_launched(launched_images.append)  # the retention's record of use
    observer.launched(request, Resolved(build=build, ref_url="", resolved_spec=""))
    assert launched_images == ["registry/org-repo:" + "b" * 40]
    assert observer.events is not None
    observer.events.close()
    event = json.loads(path.read_text())
    assert (event["provider"], event["ref"], event["build_token"]) == ("GitHub", "b" * 40, True)
    assert count(metrics, "build", "success") == 1
    assert count(metrics, "launch", "failure") == 1
    assert count(metrics, "launch", "pod_quota") == 1


def test_warm_pools_are_read_when_scraped() -> None:
    from types import SimpleNamespace

    metrics = Metrics()
    pools = [
        SimpleNamespace(pattern="^gh/a/", size=2, waiting=1, starting=1, handed_out_last_hour=3),
        SimpleNamespace(pattern="^gh/a/", size=2, waiting=2, starting=0, handed_out_last_hour=1),
        SimpleNamespace(pattern="^gl/b/", size=1, waiting=0, starting=1, handed_out_last_hour=0),
    ]
    metrics.watch_pools(lambda: pools)
    pools[2].waiting = 1  # read at scrape time, not when watched

    def value(pool: str, state: str) -> float:
        families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
        (family,) = [f for f in families if f.name == "swarmbinder_warm_pool_servers"]
        (sample,) = [s for s in family.samples if s.labels == {"pool": pool, "state": state}]
        return sample.value

    assert value("^gh/a/", "size") == 4 and value("^gh/a/", "waiting") == 3
    assert value("^gh/a/", "handed_out_last_hour") == 4
    assert value("^gl/b/", "waiting") == 1 and value("^gl/b/", "starting") == 1
