"""Reading server-sent events (GET /v1/jobs/<id>/events) line by line."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    data: str


def events(lines: Iterable[str]) -> Iterator[Event]:
    """Each event of an SSE stream; comments (': keep-alive') and retry lines are skipped."""
    event_id, name, data = "", "message", []
    for line in lines:
        if not line:
            if data:
                yield Event(event_id, name, "\n".join(data))
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
