from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from swarmbinder.events import (
    KEEPALIVE_FRAME,
    KEEPALIVE_INTERVAL,
    MSG_FOUND_BUILT,
    TERMINAL_BUILD_PHASES,
    BuildEvent,
    Phase,
    SSEDecoder,
    parse_repo2docker_line,
    parse_sse,
    sse_frame,
)

FIXTURES = Path(__file__).parent / "fixtures"

REF = "50533eb4e8c6b5fab2a14e4a2f0eb1ea0f67e6e6"
IMAGE = f"registry.local:5000/binder-2dexamples-2drequirements-55ab5c:{REF}"
READY = BuildEvent.ready(
    url="http://binder.local/user/binder-examples-requirements-abc123de/",
    token="tY_U1yMSSeKyCKPMg6GVIg",
    image=IMAGE,
    repo_url="https://github.com/binder-examples/requirements",
    binder_ref_url="https://github.com/binder-examples/requirements/tree/50533eb4e8c6b5fab2a14e4a2f0eb1ea0f67e6e6",
    binder_launch_host="http://binder.local/",
    binder_request="v2/gh/binder-examples/requirements/HEAD",
    binder_persistent_request="v2/gh/binder-examples/requirements/50533eb4e8c6b5fab2a14e4a2f0eb1ea0f67e6e6",
    binder_client_ip="203.0.113.7",
)

# repo2docker --json-logs output, as python-json-logger writes it
R2D_FETCH = [
    '{"message": "Picked Git content provider.\\n"}',
    '{"message": "Cloning into \'/tmp/repo2dockerq8x1k2\'...\\n", "phase": "fetching"}',
    '{"message": "HEAD is now at 50533eb Merge pull request #11\\n", "phase": "fetching"}',
]
R2D_BUILD = [
    '{"message": "Using PythonBuildPack builder\\n", "phase": "building"}',
    '{"message": "Step 1/3 : FROM docker.io/library/buildpack-deps:jammy", "phase": "building"}',
    '{"message": "\\n", "phase": "building"}',
    '{"message": "Fetching base image...\\r", "phase": "building"}',
    '{"message": " ---> Using cache\\n", "phase": "building"}',
    '{"message": "Successfully tagged r2d:latest\\n", "phase": "building", "taskName": null}',
]
R2D_PUSH = [
    '{"message": "Pushing image\\n", "progress": {"a1b2c3": {"current": 1024, "total": 4096},'
    ' "d4e5f6": "Pushed", "0a0b0c": "Layer already exists"}, "layers": {"a1b2c3": {"id":'
    ' "a1b2c3", "status": "Pushing"}}, "phase": "pushing"}',
    '{"message": "Successfully pushed ' + IMAGE + '\\n", "phase": "pushing"}',
]
R2D_FAIL = [
    '{"message": "Step 2/3 : RUN pip install no-such-package-xyz", "phase": "building"}',
    '{"message": "\\n", "phase": "building"}',
    "ERROR: No matching distribution found for no-such-package-xyz",
    '{"message": "The command \'/bin/sh -c pip install no-such-package-xyz\' returned a'
    ' non-zero code: 1", "phase": "failed"}',
]


def parsed(lines: list[str]) -> list[BuildEvent]:
    return [parse_repo2docker_line(line) for line in lines]


GOLDEN: dict[str, list[BuildEvent | None]] = {
    # None marks a keepalive comment frame
    "cached_launch": [
        BuildEvent.built(IMAGE, MSG_FOUND_BUILT),
        BuildEvent.launching(),
        BuildEvent.launching("Server requested"),
        BuildEvent.launching("Server ready at /user/binder-examples-requirements-abc123de/"),
        READY,
    ],
    "fresh_build": [
        BuildEvent.waiting(1, "Waiting for a build slot: position 1 in the queue\n"),
        BuildEvent.waiting(),
        *parsed(R2D_FETCH),
        *parsed(R2D_BUILD[:3]),
        None,
        *parsed(R2D_BUILD[3:]),
        *parsed(R2D_PUSH),
        BuildEvent.built(IMAGE),
        BuildEvent.launching(),
        READY,
    ],
    "failed_build": [
        BuildEvent.waiting(),
        *parsed(R2D_FETCH),
        *parsed(R2D_FAIL),
    ],
}


def serialise(events: list[BuildEvent | None]) -> bytes:
    return b"".join(KEEPALIVE_FRAME if e is None else sse_frame(e) for e in events)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_stream_is_reproduced_byte_for_byte(name: str) -> None:
    golden = (FIXTURES / f"{name}.eventsource").read_bytes()
    assert serialise(GOLDEN[name]) == golden


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_stream_parses_back_to_the_events(name: str) -> None:
    golden = (FIXTURES / f"{name}.eventsource").read_bytes()
    events = [e for e in GOLDEN[name] if e is not None]
    assert parse_sse(golden) == [e.to_wire() for e in events]
    assert [BuildEvent.from_wire(p) for p in parse_sse(golden)] == events


def test_golden_phase_sequences() -> None:
    def phases(name: str) -> list[str]:
        seq: list[str] = []
        for payload in parse_sse((FIXTURES / f"{name}.eventsource").read_bytes()):
            if not seq or seq[-1] != payload["phase"]:
                seq.append(payload["phase"])
        return seq

    assert phases("cached_launch") == ["built", "launching", "ready"]
    assert [p for p in phases("fresh_build") if p != "unknown"] == [
        "waiting",
        "fetching",
        "building",
        "pushing",
        "built",
        "launching",
        "ready",
    ]
    assert phases("failed_build")[-1] == "failed"


def test_ready_carries_what_binderhub_client_reads() -> None:
    # binderhub-client's client.js documents these fields on phase=ready
    wire = READY.to_wire()
    assert set(wire) == {
        "phase",
        "message",
        "url",
        "token",
        "image",
        "repo_url",
        "binder_ref_url",
        "binder_launch_host",
        "binder_request",
        "binder_persistent_request",
        "binder_client_ip",
    }
    assert wire["message"] == f"server running at {wire['url']}\n"


def test_binderhub_messages_and_fields() -> None:
    assert BuildEvent.waiting().to_wire() == {
        "phase": "waiting",
        "message": "Waiting for build to start...\n",
    }
    assert BuildEvent.built("img:1").to_wire() == {
        "phase": "built",
        "message": "Built image, launching...\n",
        "imageName": "img:1",
    }
    assert BuildEvent.built("img:1", MSG_FOUND_BUILT).message == "Found built image, launching...\n"
    assert BuildEvent.launching().to_wire() == {
        "phase": "launching",
        "message": "Launching server...\n",
    }
    assert BuildEvent.failed("No provider found for prefix xx").to_wire() == {
        "phase": "failed",
        "message": "No provider found for prefix xx\n",
        "status_code": 500,
    }
    assert BuildEvent.failed("Too many users", 429).fields == {"status_code": 429}
    assert BuildEvent.failed("banned", None).to_wire() == {"phase": "failed", "message": "banned\n"}
    assert BuildEvent.image_ready("img:1").to_wire() == {
        "phase": "ready",
        "message": "Done! Image built\n",
        "imageName": "img:1",
    }


def test_messages_are_whole_lines_without_doubled_newlines() -> None:
    assert BuildEvent.log(Phase.BUILDING, "step").message == "step\n"
    assert BuildEvent.log(Phase.BUILDING, "step\n").message == "step\n"
    assert BuildEvent.failed("boom\n").message == "boom\n"
    assert BuildEvent.launching("Server requested").message == "Server requested\n"
    assert BuildEvent.ready("u", "t", "i", "r", "b", "h", "q", "p", message="up").message == "up\n"


def test_waiting_position_is_an_extra_field() -> None:
    assert BuildEvent.waiting(3, "third").to_wire() == {
        "phase": "waiting",
        "message": "third\n",
        "position": 3,
    }


def test_event_is_immutable_and_fields_are_copied() -> None:
    source: dict[str, Any] = {"imageName": "a"}
    event = BuildEvent(Phase.BUILT, "x\n", source)
    source["imageName"] = "b"
    assert event.fields["imageName"] == "a"
    with pytest.raises(TypeError):
        event.fields["imageName"] = "c"  # type: ignore[index]
    assert hash(event) == hash(BuildEvent(Phase.BUILT, "x\n", {"imageName": "zzz"}))


def test_fields_cannot_override_phase_or_message() -> None:
    with pytest.raises(ValueError):
        BuildEvent(Phase.BUILT, "", {"phase": "ready"})


def test_terminal_build_phases() -> None:
    assert TERMINAL_BUILD_PHASES == {Phase.BUILT, Phase.FAILED}


def test_keepalive_is_an_sse_comment_often_enough() -> None:
    assert KEEPALIVE_FRAME == b":keepalive\n\n"
    assert KEEPALIVE_INTERVAL <= 25
    assert parse_sse(KEEPALIVE_FRAME * 3) == []


def test_frame_is_one_ascii_line_whatever_the_message() -> None:
    event = BuildEvent.log(Phase.BUILDING, 'multi\nline\r\n"quoted" \u2603 \x00 \ud800 end')
    frame = sse_frame(event)
    assert frame.startswith(b"data: {") and frame.endswith(b"}\n\n")
    assert frame.count(b"\n") == 2 and b"\r" not in frame
    assert frame.isascii()
    assert parse_sse(frame) == [event.to_wire()]


# repo2docker lines


def test_repo2docker_phases_and_messages_pass_through_untouched() -> None:
    event = parse_repo2docker_line(R2D_BUILD[1])
    assert event == BuildEvent(
        Phase.BUILDING, "Step 1/3 : FROM docker.io/library/buildpack-deps:jammy"
    )
    assert parse_repo2docker_line(R2D_BUILD[3]).message == "Fetching base image...\r"
    assert parse_repo2docker_line(R2D_FETCH[1]).phase is Phase.FETCHING


def test_repo2docker_line_without_phase_is_unknown() -> None:
    assert parse_repo2docker_line(R2D_FETCH[0]) == BuildEvent(
        Phase.UNKNOWN, "Picked Git content provider.\n"
    )


def test_repo2docker_push_progress_is_kept_and_the_rest_dropped() -> None:
    event = parse_repo2docker_line(R2D_PUSH[0])
    assert event.phase is Phase.PUSHING
    assert event.to_wire() == {
        "phase": "pushing",
        "message": "Pushing image\n",
        "progress": {
            "a1b2c3": {"current": 1024, "total": 4096},
            "d4e5f6": "Pushed",
            "0a0b0c": "Layer already exists",
        },
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"message": "Subdirectory x does not exist", "phase": "failed"}',
            "Subdirectory x does not exist\n",
        ),
        ('{"message": "boom\\n", "phase": "failure"}', "boom\n"),
        ('{"message": "boom", "phase": "FAILED"}', "boom\n"),
        ('{"error": "manifest unknown"}', "manifest unknown\n"),
        (
            '{"message": "Error during build: x", "exc_info": "Traceback...", "phase": "failed"}',
            "Error during build: x\n",
        ),
    ],
)
def test_repo2docker_failures(line: str, message: str) -> None:
    assert parse_repo2docker_line(line) == BuildEvent(Phase.FAILED, message)


def test_raw_docker_stream_line_is_read_as_building_output() -> None:
    event = parse_repo2docker_line('{"stream": "Step 1/3 : FROM x\\n", "phase": "building"}')
    assert event == BuildEvent(Phase.BUILDING, "Step 1/3 : FROM x\n")


@pytest.mark.parametrize("phase", ["built", "launching", "ready", "waiting", "running", "Deleted"])
def test_a_build_log_cannot_claim_a_launch_phase(phase: str) -> None:
    line = json.dumps({"message": "hi\n", "phase": phase, "url": "http://evil/", "token": "x"})
    assert parse_repo2docker_line(line) == BuildEvent(Phase.UNKNOWN, "hi\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ERROR: something", "ERROR: something\n"),
        ("plain text\n", "plain text\n"),
        ("crlf\r\n", "crlf\n"),
        ("", "\n"),
        ("[1, 2]", "[1, 2]\n"),
        ('"just a string"', '"just a string"\n'),
        ("null", "null\n"),
        ('{"message": NaN}', '{"message": NaN}\n'),
        ("{" * 100_000, "{" * 100_000 + "\n"),
    ],
)
def test_lines_that_are_not_json_objects_are_unknown(line: str, message: str) -> None:
    assert parse_repo2docker_line(line) == BuildEvent(Phase.UNKNOWN, message)


def test_bytes_are_decoded_leniently() -> None:
    event = parse_repo2docker_line(b'{"message": "caf\xc3\xa9 \xff", "phase": "building"}')
    assert event == BuildEvent(Phase.BUILDING, "caf\u00e9 \ufffd")
    assert parse_repo2docker_line(b"\xff\xfe\n").phase is Phase.UNKNOWN


def test_odd_json_values_still_serialise() -> None:
    for line in [
        '{"message": 42, "phase": "building"}',
        '{"message": {"a": [1, null]}, "phase": "fetching"}',
        '{"message": null, "phase": "pushing", "progress": "not a map"}',
        '{"message": "p", "phase": "pushing", "progress": {"x": Infinity}}',
        '{"phase": ["building"]}',
        '{"message": "' + "\\ud800" + '", "phase": "building"}',
    ]:
        event = parse_repo2docker_line(line)
        assert parse_sse(sse_frame(event)) == [event.to_wire()]


def test_parser_never_raises_on_random_input() -> None:
    rng = random.Random(1234)
    alphabet = '{}[]":,\\ \n\r\tabcnulltruefalse0123456789.eE-+phasemessageprogress\x00\u2603'
    fragments = [
        '{"message": ',
        '"phase": "building"',
        '"progress": {',
        "NaN",
        "\\ud800",
        "}",
        "]",
        '"',
    ]
    for _ in range(3000):
        kind = rng.randrange(3)
        line: str | bytes
        if kind == 0:
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
        elif kind == 1:
            line = "".join(rng.choice(alphabet) for _ in range(rng.randrange(80)))
        else:
            line = "".join(rng.choice(fragments) for _ in range(rng.randrange(12)))
        event = parse_repo2docker_line(line)
        assert isinstance(event.phase, Phase)
        assert parse_sse(sse_frame(event)) == [event.to_wire()]


# SSE decoding


def test_decoder_handles_split_chunks_and_every_line_ending() -> None:
    events = [BuildEvent.waiting(), BuildEvent.built("i"), READY]
    stream = serialise([events[0], None, events[1], events[2]])
    for ending in (b"\n", b"\r\n", b"\r"):
        data = stream.replace(b"\n", ending)
        for size in (1, 2, 3, 7, len(data)):
            decoder = SSEDecoder()
            got: list[dict[str, Any]] = []
            for i in range(0, len(data), size):
                got.extend(decoder.feed(data[i : i + size]))
            got.extend(decoder.close())
            assert got == [e.to_wire() for e in events], (ending, size)


def test_decoder_joins_data_lines_and_ignores_other_fields() -> None:
    stream = b'id: 1\nevent: message\ndata: {"phase":\ndata:"ready"}\nretry: 10\n\n'
    assert parse_sse(stream) == [{"phase": "ready"}]


def test_unterminated_last_event_is_not_delivered() -> None:
    assert parse_sse(b'data: {"phase":"built"}\n\ndata: {"phase":"ready"}\n') == [
        {"phase": "built"}
    ]


def test_decoder_rejects_data_that_is_not_a_json_object() -> None:
    with pytest.raises(ValueError):
        parse_sse(b"data: [1]\n\n")
    with pytest.raises(ValueError):
        parse_sse(b"data: not json\n\n")


def test_from_wire_tolerates_what_other_servers_send() -> None:
    assert BuildEvent.from_wire({"message": "x"}) == BuildEvent(Phase.UNKNOWN, "x")
    assert BuildEvent.from_wire({"phase": "Ready", "url": "u"}) == BuildEvent(
        Phase.READY, "", {"url": "u"}
    )
    assert BuildEvent.from_wire({"phase": "Pending", "message": 3}).phase is Phase.UNKNOWN
