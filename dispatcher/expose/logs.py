"""Log lines: text, or one JSON object a line (`--log-format json`), for every process.

Owns: the two line formats and the set-up of the root logger, for the process that was started and
for each `--workers` process (which must write the same format as its master).
Rules: standard library only; no imports from the rest of the package (workers and cli both use it).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`--log-format json`: one JSON object a line, for log pipelines (Loki, Elasticsearch, journald's
    JSON readers) that would otherwise parse text with a regex. Keys: `time` (UTC, ISO 8601 with
    milliseconds), `level`, `logger`, `message`, and `exception` (the traceback) when there is one;
    `fields` are added to every line (a worker's name, say)."""

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, str] = {
            "time": time.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str | int, form: str, fields: dict[str, str] | None = None) -> None:
    """The root logger to stderr at `level`, as text lines or (`json`) JSON objects; `fields` label
    every line (a worker's name)."""
    handler = logging.StreamHandler()
    if form == "json":
        handler.setFormatter(JsonFormatter(fields))
    else:
        label = "".join(f" {value}" for value in (fields or {}).values())
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace(" %(name)s", label + " %(name)s")))
    logging.basicConfig(level=level, handlers=[handler])


def current_format() -> str:
    """The format the root logger writes now: what a worker process is to write too."""
    handlers = logging.getLogger().handlers
    return "json" if handlers and isinstance(handlers[0].formatter, JsonFormatter) else "text"
