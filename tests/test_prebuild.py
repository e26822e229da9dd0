"""Prebuild over fakes: spec input, the run's rules, the displays, the job's spec, the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from swarmbinder import cli
from swarmbinder.config import load_config
from swarmbinder.errors import RefNotFound, RegistryError, SpecError
from swarmbinder.events import MSG_DONE_BUILT, MSG_DONE_FOUND, BuildEvent, Phase
from swarmbinder.labels import DOCKER_SOCKET
from swarmbinder.prebuild.jobs import JobTarget, job_config_yaml, job_spec
from swarmbinder.prebuild.run import Item, Report, State, run_prebuild
from swarmbinder.prebuildcmd import collect_specs, parse_spec_lines
from swarmbinder.prebuilddisplay import (
    JsonDisplay,
    LiveDisplay,
    PlainDisplay,
    progress_line,
    summary_table,
)
from swarmbinder.swarm import SecretInfo


class FakeBackend:
    """Specs map to images; ``bad`` specs do not resolve, ``failing`` images fail to build."""

    def __init__(
        self,
        images: dict[str, str],
        *,
        in_registry: set[str] | None = None,
        failing: set[str] | None = None,
        push: bool = True,
    ) -> None:
        self.images = images
        self.registry = set(in_registry or ())
        self.failing = failing or set()
        self.push = push
        self.built: list[str] = []
        self.running = 0
        self.most_running = 0
        self.resolved: list[str] = []
        self.build_started_after_all_resolved = True

    async def resolve(self, spec: str) -> str:
        await asyncio.sleep(0)
        if spec not in self.images:
            raise RefNotFound(f"no ref for {spec}", user_message=f"Could not resolve {spec}")
        self.resolved.append(spec)
        return self.images[spec]

    async def in_registry(self, image: str) -> bool:
        return image in self.registry

    async def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        if len(self.resolved) < len(self.images):
            self.build_started_after_all_resolved = False
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            yield BuildEvent.waiting()
            yield BuildEvent(Phase.FETCHING, "Cloning...\n")
            await asyncio.sleep(0.01)
            yield BuildEvent(Phase.BUILDING, "Step 1/2 : FROM base\n")
            assert image is not None
            if image in self.failing:
                yield BuildEvent.failed("Build failed: repo2docker exited with code 3\n")
                return
            self.built.append(image)
            if self.push:
                self.registry.add(image)
            yield BuildEvent.built(image)
        finally:
            self.running -= 1


def items(*specs: str) -> list[Item]:
    return [Item(spec) for spec in specs]


# --- input ---------------------------------------------------------------------------------


def test_spec_file_ignores_comments_and_blank_lines() -> None:
    text = "# course images\ngh/org/one/main\n\n  gh/org/two/v1  # the old one\n#gh/org/off/main\n"
    assert parse_spec_lines(text) == ["gh/org/one/main", "gh/org/two/v1"]


@pytest.mark.parametrize("line", ["justaword", "gh/org/repo main", "/"])
def test_spec_file_names_the_bad_line(line: str) -> None:
    with pytest.raises(SpecError, match=r"specs\.txt, line 2: .* is not <provider>/<spec>"):
        parse_spec_lines(f"gh/a/b/main\n{line}\n", "specs.txt")


def test_specs_are_taken_once_in_order_and_some_are_needed() -> None:
    assert collect_specs(["gh/a/b/main", "gh/c/d/x/"], ["gh/a/b/main", "gl/e/f/y"]) == [
        "gh/a/b/main",
        "gh/c/d/x",
        "gl/e/f/y",
    ]
    with pytest.raises(SpecError, match="no specs"):
        collect_specs([], [])
    with pytest.raises(SpecError, match="'nope' is not"):
        collect_specs(["nope"])


# --- the run -------------------------------------------------------------------------------


async def test_unresolved_specs_are_reported_and_the_others_built() -> None:
    backend = FakeBackend({"gh/a/one/main": "reg/one:1", "gh/a/two/main": "reg/two:2"})
    seen: list[tuple[str, State]] = []
    work = items("gh/a/one/main", "gh/a/nope/main", "gh/a/two/main")

    report = await run_prebuild(work, backend, on_change=lambda i: seen.append((i.spec, i.state)))

    assert [i.state for i in report.items] == [State.BUILT, State.UNRESOLVED, State.BUILT]
    assert report.items[1].detail == "Could not resolve gh/a/nope/main"
    assert sorted(backend.built) == ["reg/one:1", "reg/two:2"]
    assert backend.build_started_after_all_resolved
    assert not report.ok
    # Every spec went through the build phases it was told about.
    one = [state for spec, state in seen if spec == "gh/a/one/main"]
    assert one[0] is State.RESOLVING and one[-1] is State.BUILT
    assert {State.WAITING, State.FETCHING, State.BUILDING} <= set(one)


async def test_images_in_the_registry_are_skipped() -> None:
    backend = FakeBackend(
        {"gh/a/one/main": "reg/one:1", "gh/a/two/main": "reg/two:2"}, in_registry={"reg/one:1"}
    )
    report = await run_prebuild(items("gh/a/one/main", "gh/a/two/main"), backend)
    assert [i.state for i in report.items] == [State.FOUND, State.BUILT]
    assert backend.built == ["reg/two:2"]
    assert report.ok
    again = await run_prebuild(items("gh/a/one/main", "gh/a/two/main"), backend)
    assert [i.state for i in again.items] == [State.FOUND, State.FOUND]
    assert backend.built == ["reg/two:2"]


async def test_two_specs_of_one_image_build_once() -> None:
    backend = FakeBackend({"gh/a/one/main": "reg/one:abc", "gh/a/one/abc": "reg/one:abc"})
    report = await run_prebuild(items("gh/a/one/main", "gh/a/one/abc"), backend)
    assert backend.built == ["reg/one:abc"]
    assert [i.state for i in report.items] == [State.BUILT, State.BUILT]
    assert all(i.image == "reg/one:abc" for i in report.items)


async def test_a_failed_build_fails_the_run_but_not_the_others() -> None:
    backend = FakeBackend(
        {"gh/a/one/main": "reg/one:1", "gh/a/bad/main": "reg/bad:1"}, failing={"reg/bad:1"}
    )
    report = await run_prebuild(items("gh/a/bad/main", "gh/a/one/main"), backend)
    assert [i.state for i in report.items] == [State.FAILED, State.BUILT]
    assert report.items[0].detail == "Build failed: repo2docker exited with code 3"
    assert not report.ok


async def test_a_build_that_pushed_nothing_is_a_failure() -> None:
    backend = FakeBackend({"gh/a/one/main": "reg/one:1"}, push=False)
    report = await run_prebuild(items("gh/a/one/main"), backend)
    assert report.items[0].state is State.FAILED
    assert "not in the registry" in report.items[0].detail


async def test_a_registry_that_fails_fails_its_items() -> None:
    class Broken(FakeBackend):
        async def in_registry(self, image: str) -> bool:
            raise RegistryError("down", user_message="The registry is not answering.")

    report = await run_prebuild(items("gh/a/one/main"), Broken({"gh/a/one/main": "reg/one:1"}))
    assert report.items[0].state is State.FAILED
    assert report.items[0].detail == "registry: The registry is not answering."


async def test_parallel_caps_builds_in_flight() -> None:
    specs = [f"gh/a/r{n}/main" for n in range(6)]
    backend = FakeBackend({spec: f"reg/{n}:1" for n, spec in enumerate(specs)})
    report = await run_prebuild(items(*specs), backend, parallel=2)
    assert report.ok and backend.most_running == 2
    unlimited = FakeBackend({spec: f"reg/{n}:1" for n, spec in enumerate(specs)})
    await run_prebuild(items(*specs), unlimited)
    assert unlimited.most_running == 6


class StreamBackend:
    """A back end that resolves while building, as a running swarmbinder does."""

    def __init__(self, streams: dict[str, list[BuildEvent]]) -> None:
        self.streams = streams

    async def resolve(self, spec: str) -> None:
        return None

    async def in_registry(self, image: str) -> bool:
        return True

    async def build(self, spec: str, image: str | None) -> AsyncIterator[BuildEvent]:
        for event in self.streams[spec]:
            yield event


async def test_a_service_stream_is_read_as_binderhub_sends_it() -> None:
    backend = StreamBackend(
        {
            "gh/a/found/main": [BuildEvent.image_ready("reg/found:1", MSG_DONE_FOUND)],
            "gh/a/new/main": [
                BuildEvent.waiting(),
                BuildEvent(Phase.BUILDING, "Step 2/2\n"),
                BuildEvent.image_ready("reg/new:1", MSG_DONE_BUILT),
            ],
            "gh/a/nope/main": [BuildEvent.failed("Could not resolve ref", 404)],
            "gh/a/limited/main": [BuildEvent.failed("Too many requests", 429)],
            "gh/a/login/main": [BuildEvent.failed("Log in first", 403)],
            "gh/a/broken/main": [BuildEvent.waiting(), BuildEvent.failed("Build failed", 400)],
        }
    )
    work = items(*backend.streams)
    report = await run_prebuild(work, backend)
    states = {i.spec: (i.state, i.image) for i in report.items}
    assert states == {
        "gh/a/found/main": (State.FOUND, "reg/found:1"),
        "gh/a/new/main": (State.BUILT, "reg/new:1"),
        "gh/a/nope/main": (State.UNRESOLVED, ""),
        "gh/a/limited/main": (State.FAILED, ""),
        "gh/a/login/main": (State.FAILED, ""),
        "gh/a/broken/main": (State.FAILED, ""),
    }


# --- displays ------------------------------------------------------------------------------


def test_progress_line_shows_state_elapsed_spec_and_last_line() -> None:
    item = Item("git/http%3A%2F%2Fh%2Fr.git/main", State.BUILDING, detail="Step 1/2", started=10)
    line = progress_line(item, now=75.5)
    assert line == "building     1m05s  git/http://h/r.git/main  Step 1/2"
    assert len(progress_line(item, now=75.5, width=20)) == 19


def test_plain_display_prints_changes_of_state_then_a_summary_table() -> None:
    out = io.StringIO()
    display = PlainDisplay(out, clock=lambda: 3.0)
    one = Item("gh/a/one/main", started=1.0)
    two = Item("gh/a/two/main", started=1.0)
    display.changed(one)
    one.state, one.detail = State.BUILDING, "Step 1/2"
    display.changed(one)
    one.detail = "Step 2/2"
    display.changed(one)  # a new log line only: no new line in a log file
    one.state, one.image, one.finished = State.BUILT, "reg/one:1", 2.5
    two.state, two.detail, two.finished = State.UNRESOLVED, "Could not resolve ref", 1.2
    display.changed(one)
    display.changed(two)
    display.close(Report([one, two], clock=lambda: 3.0))
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[:4]] == [
        "resolving",
        "building",
        "built",
        "unresolved",
    ]
    assert lines[5].split() == ["SPEC", "RESULT", "TIME", "IMAGE", "/", "REASON"]
    assert lines[6].split() == ["gh/a/one/main", "built", "1.5s", "reg/one:1"]
    assert lines[7].split()[:3] == ["gh/a/two/main", "unresolved", "0.2s"]
    assert lines[7].endswith("Could not resolve ref")
    assert lines[-1] == "1 built, 0 already in the registry, 1 did not resolve"


def test_json_display_gives_progress_lines_then_one_summary() -> None:
    out = io.StringIO()
    now = [0.0]
    display = JsonDisplay(out, clock=lambda: now[0], log_interval=1.0)
    item = Item("gh/a/one/main", State.BUILDING, detail="a")
    display.changed(item)
    item.detail = "b"
    display.changed(item)  # same state within a second: dropped
    now[0] = 1.5
    item.detail = "c"
    display.changed(item)
    item.state, item.image, item.detail, item.finished = State.BUILT, "reg/one:1", "", 1.5
    display.changed(item)
    display.close(Report([item], clock=lambda: now[0]))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["type"], x.get("state"), x.get("detail")) for x in lines[:-1]] == [
        ("progress", "building", "a"),
        ("progress", "building", "c"),
        ("progress", "built", ""),
    ]
    assert lines[-1]["type"] == "summary" and lines[-1]["ok"] is True
    assert lines[-1]["built"] == 1 and lines[-1]["items"][0]["image"] == "reg/one:1"


def test_live_display_redraws_a_line_per_spec_then_prints_the_summary() -> None:
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, color_system=None, width=60, height=10)
    now = [1.0]
    one = Item("gh/a/one/main", started=0.0)
    two = Item("gh/a/two%2Fx/main", started=0.0)
    display = LiveDisplay([one, two], terminal, clock=lambda: now[0])
    display.start()
    one.state, one.detail = State.BUILDING, "[bold]Step[/bold] 1/2"
    display.refresh()
    now[0] = 2.0
    one.state, one.detail, one.image, one.finished = State.BUILT, "", "reg/one:1", 2.0
    two.state, two.finished = State.UNRESOLVED, 1.5
    two.detail = "Could not resolve ref [red]main[/red] in the repository"
    report = Report([one, two], clock=lambda: now[0])
    display.close(report)
    display.stop()
    # What the terminal shows, without rich's cursor moves: each redraw, then the summary.
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", out.getvalue())
    # Repositories' words are shown as they are, never read as markup.
    assert "building      1.0s  gh/a/one/main  [bold]Step[/bold] 1/2\n" in text
    # Lines are cut to the width, never wrapped, so each spec keeps one line.
    final = [progress_line(one, 2.0), progress_line(two, 2.0)[:60]]
    assert text.endswith("\n".join(final) + "\n\n" + summary_table(report) + "\n")


def test_summary_table_lists_every_result() -> None:
    report = Report(
        [
            Item("gh/a/b/main", State.FOUND, image="reg/b:1"),
            Item("gh/a/c/main", State.FAILED, image="reg/c:1", detail="exit 3"),
        ],
        clock=lambda: 0.0,
    )
    table = summary_table(report)
    assert "reg/b:1" in table and "exit 3" in table and "reg/c:1" not in table
    assert table.endswith("0 built, 1 already in the registry, 1 failed")


def test_the_service_imports_neither_the_displays_nor_rich() -> None:
    code = (
        "import sys, swarmbinder.app, swarmbinder.handlers.admin;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'rich'"
        " or m in ('swarmbinder.prebuildcmd', 'swarmbinder.prebuilddisplay'));"
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- the job -------------------------------------------------------------------------------


def test_job_config_holds_the_changed_options_and_the_mounted_socket(tmp_path: Path) -> None:
    token = tmp_path / "password"
    token.write_text("s3cret\n")
    config_file = tmp_path / "binder.yaml"
    config_file.write_text(
        "image_prefix: reg.example.org/binder-\n"
        "registry_username: robot\n"
        f"registry_password_file: {token}\n"
        "docker_host: unix:///run/user/1000/docker.sock\n"
        "github:\n  access_token: gh-token\n"
    )
    config = load_config(config_file, env={})
    written = yaml.safe_load(job_config_yaml(config))
    assert written == {
        "image_prefix": "reg.example.org/binder-",
        "registry_username": "robot",
        "registry_password": "s3cret",
        "docker_host": f"unix://{DOCKER_SOCKET}",
        # (api_base_url is written as it was expanded from its {hostname} default)
        "github": {"api_base_url": "https://api.github.com", "access_token": "gh-token"},
    }
    # What the job reads back is the same config.
    again = tmp_path / "again.yaml"
    again.write_bytes(job_config_yaml(config))
    reloaded = load_config(again, env={})
    assert reloaded.registry == config.registry
    assert reloaded.providers == config.providers

    secret = SecretInfo("sid", "swarmbinder-prebuild-x", {})
    spec = job_spec(
        "swarmbinder-prebuild-x",
        image="swarmbinder/swarmbinder:1",
        specs=["gh/a/b/main", "-looks-like-a-flag/x"],
        target=JobTarget(config=config),
        secret=secret,
        parallel=3,
    ).to_api()
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Args"] == [
        "prebuild",
        "--json",
        "--config",
        "/run/secrets/swarmbinder-prebuild",
        "--parallel",
        "3",
        "--",
        "gh/a/b/main",
        "-looks-like-a-flag/x",
    ]
    assert container["Mounts"][0]["Source"] == "/run/user/1000/docker.sock"
    assert container["Mounts"][0]["Target"] == DOCKER_SOCKET
    assert container["Secrets"][0]["File"]["Mode"] == 0o400
    assert spec["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}}
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert spec["Labels"]["swarmbinder.kind"] == "prebuild"
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==manager"]
    assert "s3cret" not in json.dumps(spec)


def test_a_url_job_gets_the_token_file_and_no_socket() -> None:
    secret = SecretInfo("sid", "n", {})
    spec = job_spec(
        "n",
        image="img",
        specs=["gh/a/b/main"],
        target=JobTarget(url="http://binder:8585/", token="t0ken"),
        secret=secret,
    ).to_api()
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Args"][:6] == [
        "prebuild",
        "--json",
        "--url",
        "http://binder:8585/",
        "--token-file",
        "/run/secrets/swarmbinder-prebuild",
    ]
    assert "Mounts" not in container and "t0ken" not in json.dumps(spec)


# --- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prebuild"], "no specs to prebuild"),
        (["prebuild", "justaword"], "'justaword' is not <provider>/<spec>"),
        (["prebuild", "--url", "http://x/", "--config", "c.yaml", "gh/a/b/c"], "not both"),
        (["prebuild", "--detach", "gh/a/b/c"], "--detach goes with --as-job"),
        (["prebuild", "--parallel", "-1", "gh/a/b/c"], "--parallel must be 0 or more"),
        (["prebuild", "--url", "http://x/", "gh/a/b/c"], "--url needs the admin token"),
        (["prebuild", "--file", "/nonexistent/specs.txt"], "cannot read /nonexistent/specs.txt"),
        (["prebuild", "--url", "ftp://x/", "--token-file", "TOKEN", "gh/a/b/c"], "ftp://x/"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("SWARMBINDER_ADMIN_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "TOKEN").write_text("t\n")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("swarmbinder: error: ")
    assert message in err


def test_a_bad_line_in_the_spec_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = tmp_path / "specs.txt"
    specs.write_text("# workshop\ngh/a/b/main\nnot a spec\n")
    assert cli.main(["prebuild", "--file", str(specs)]) == 2
    assert f"{specs}, line 3: 'not a spec'" in capsys.readouterr().err
