"""layergc.logs: one JSON object per line, readable text, and the run id on every line."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from layergc.logs import bind, bind_run, configure_logging, current_fields, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield buf
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_fields_and_run_id(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    log = logging.getLogger("layergc.test")
    with bind_run(42):
        log.info("deleted blob %s", "x", extra={"digest": "sha256:ab", "size": 3})
        get_logger("layergc.test2").warning("structlog style", count=2)
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it broke")
    log.info("after the run")
    log.debug("below the level")
    out = lines(stream)
    assert len(out) == 4
    first = out[0]
    assert first["event"] == "deleted blob x" and first["run_id"] == 42
    assert (first["digest"], first["size"], first["level"]) == ("sha256:ab", 3, "info")
    assert first["logger"] == "layergc.test" and first["timestamp"].endswith("Z")
    assert out[1]["count"] == 2 and out[1]["run_id"] == 42 and out[1]["level"] == "warning"
    assert "ValueError: boom" in out[2]["exception"] and out[2]["run_id"] == 42
    assert "run_id" not in out[3]


def test_text_format_is_readable(stream: io.StringIO) -> None:
    configure_logging("text", logging.DEBUG, stream=stream)
    with bind_run(5), bind(job="sweep"):
        logging.getLogger("layergc.t").debug("hello", extra={"k": "v"})
    text = stream.getvalue()
    assert "hello" in text and "k=v" in text and "run_id=5" in text and "job=sweep" in text
    assert not text.lstrip().startswith("{")


def test_bindings_are_per_thread(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    seen = []

    def other() -> None:
        seen.append(current_fields())
        logging.getLogger("layergc.t").info("other thread")

    with bind_run(1):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen == [{}]
    assert "run_id" not in lines(stream)[0]


def test_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    configure_logging("json", "info", stream=stream)
    logging.getLogger("layergc.t").info("once")
    assert len(lines(stream)) == 1


def test_bad_format() -> None:
    with pytest.raises(ValueError, match="xml"):
        configure_logging("xml")
