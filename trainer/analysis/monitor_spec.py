"""`--monitor` values: which judge a monitor is, and what the user called it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

# NAME=URL: a name is a word (letters, digits, . _ - and spaces), so "=" inside a URL's query
# is never read as one.
_NAMED = re.compile(r"^\s*([\w. -]+?)\s*=\s*(https?://.*)$")


@dataclass(frozen=True)
class MonitorSpec:
    """One monitor judge: a server URL, the rubric it scores with (its default when None) and
    the name the user gave it (None: named from the server's /info)."""

    url: str
    rubric: str | None
    name: str | None = None

    @property
    def address(self) -> str:
        """host:port, plus ``#rubric`` when one is given: the name of last resort."""
        return urlsplit(self.url).netloc + (f"#{self.rubric}" if self.rubric else "")

    @classmethod
    def parse(cls, spec: str) -> MonitorSpec:
        """``[NAME=]URL[#rubric]``, e.g. ``http://judge:8000``, ``http://judge:8000#harmless`` or
        ``big-judge=http://judge:8000#harmless``."""
        named = _NAMED.match(spec)
        name, rest = (named.group(1), named.group(2)) if named else (None, spec.strip())
        url, _, rubric = rest.partition("#")
        url = url.rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"monitor {spec!r}: expected [NAME=]URL[#rubric], with an http(s) URL")
        return cls(url, rubric or None, name)
