"""docs/troubleshooting.md is keyed by messages users see: each one quoted must still be one the
code can produce, or the page sends people searching for text that no longer exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Messages assembled from parts at run time (who, how many, which period): the fixed part is
# checked instead of the example as a whole.
COMPOSED: dict[str, tuple[str, ...]] = {
    "You have 2 calls in progress, the most allowed at once; try again when one ends.": (
        "most allowed at once; try again when one ends.",
    ),
    "Too many calls: the limit is 5 per minute. Try again in 12 seconds.": ("Try again in ",),
    "ledger.url: the folder … does not exist": ("does not exist: create it, or use an absolute",),
    "configure the api_key method at most once: put all keys in one": (
        "method at most once",
        ": put all keys in one",
    ),
    "the shared secret must be at least 32 bytes for HS256": (
        "the shared secret must be at least ",
    ),
    "cannot listen on 127.0.0.1:8080 (the proxy, --port): the port is in use": (
        "cannot listen on ",
        "the proxy, --port",
        "the port is in use",
    ),
    "Vapi is busy or unavailable right now; try again in N seconds.": (
        "Vapi is busy or unavailable right now; try again",
    ),
}


def source_strings() -> list[str]:
    """Every string constant in the package, f-strings' fixed parts included."""
    found: list[str] = []
    for path in (ROOT / "src" / "vapi_proxy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return found


def quoted_messages() -> list[str]:
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    headings = re.findall(r"^\*\*(.*?)\*\*", text, re.M)
    return [m for heading in headings for m in re.findall(r"`([^`]+)`", heading)]


def test_every_quoted_message_is_one_the_code_produces() -> None:
    strings = source_strings()
    messages = quoted_messages()
    assert len(messages) > 20
    missing = []
    for message in messages:
        pieces = (
            [COMPOSED[message]]
            if message in COMPOSED
            else [
                piece.strip(" .:")
                for piece in re.split(
                    r"…|'[^']*'|\b\d+\b|\b[NX]\b|\(the value comes|VAPI_PROXY__", message
                )
            ]
        )
        for piece in pieces:
            if len(piece) >= 10 and not any(piece in s for s in strings):
                missing.append(f"{message!r}: {piece!r}")
    assert missing == [], missing
