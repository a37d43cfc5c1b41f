"""Structured logging: structlog rendering on top of the standard `logging` module.

Modules keep using `logging.getLogger(__name__)` and pass their fields in
`extra={...}`; `configure_logging` makes every record, from layergc or from a
library, come out on stderr as one JSON object per line (`json`) or as a
readable line (`text`), with the fields bound by `bind_run` / `bind` (the run
id above all) added to every line logged in that context.

    configure_logging("json", "info")
    with bind_run(7):
        log.info("deleted blob", extra={"digest": d, "size": n})
    -> {"event": "deleted blob", "digest": "sha256:...", "size": 9, "run_id": 7,
        "level": "info", "logger": "layergc.gc.sweep", "timestamp": "..."}
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import structlog

FORMATS = ("text", "json")
_HANDLER_NAME = "layergc"


def _shared_processors() -> list[Any]:
    # Run for records from stdlib loggers and structlog loggers alike.
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    fmt: str = "text", level: int | str = "info", *, stream: IO[str] | None = None
) -> None:
    """Send every log record to `stream` (stderr) in `fmt`; safe to call again."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    stream = stream if stream is not None else sys.stderr
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer(default=str)
        # A string traceback: one line of JSON, and no local variables (secrets).
        final = [structlog.processors.format_exc_info, renderer]
    else:
        colors = bool(getattr(stream, "isatty", lambda: False)())
        final = [structlog.dev.ConsoleRenderer(colors=colors)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # APScheduler announces every job and Alembic every migration step at INFO;
    # layergc logs its own run and migration lines.
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger (keyword fields: `log.info("deleted", digest=d)`)."""
    return structlog.stdlib.get_logger(name)


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` to every log line of this thread (context) until the block ends."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield


@contextmanager
def bind_run(run_id: Any) -> Iterator[None]:
    """Every log line inside the block carries `run_id`."""
    with bind(run_id=run_id):
        yield


def current_fields() -> dict[str, Any]:
    """The fields bound in this context (to carry them into a worker thread)."""
    return structlog.contextvars.get_contextvars()
