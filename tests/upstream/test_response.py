"""Endpoint labels: ids never become metric labels, and the fixed creation paths (labelled once
at import) get the same label the pattern gives."""

from __future__ import annotations

import pytest

from vapi_proxy.upstream.response import _FIXED_LABELS, _ID_SEGMENT, endpoint_label


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/call", "/call"),
        ("/call/web", "/call/web"),
        ("/chat", "/chat"),
        ("/chat/web/responses", "/chat/web/responses"),
        ("/call/0193a1b2-c3d4", "/call/{id}"),
        ("/call/0193a1b2-c3d4?x=1", "/call/{id}"),
        ("/assistant/a1/phone-number/p2", "/assistant/{id}/phone-number/{id}"),
    ],
)
def test_endpoint_labels(path: str, label: str) -> None:
    assert endpoint_label(path) == label


def test_the_fixed_labels_are_what_the_pattern_gives() -> None:
    for path, label in _FIXED_LABELS.items():
        assert label == _ID_SEGMENT.sub("/{id}", path)
