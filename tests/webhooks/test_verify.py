"""Verification of each credential kind Vapi can send, on raw bytes, as a table of cases."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import pytest

from vapi_proxy.configbase import config_context
from vapi_proxy.webhooks.config import WebhookSettings
from vapi_proxy.webhooks.forward import sign, verify_signature
from vapi_proxy.webhooks.verify import VerificationError, WebhookVerifier, server_headers

NOW = 1_800_000_000.0
URL = "https://proxy.example.com/webhook"
BODY = b'{"message":{"type":"status-update","status":"ended"}}'


def verifier(
    tmp_path: Path,
    entries: list[dict[str, Any]],
    environ: dict[str, str] | None = None,
    **kw: Any,
) -> WebhookVerifier:
    settings = WebhookSettings.model_validate(
        {"verify": entries, **kw}, context=config_context(environ or {})
    )
    return WebhookVerifier(
        settings.verify, url=URL, allow_unverified=settings.allow_unverified, clock=lambda: NOW
    )


def secret_file(tmp_path: Path, value: str) -> str:
    path = tmp_path / secrets.token_hex(4)
    path.write_text(value + "\n")
    return str(path)


def sig(key: bytes, data: bytes, algo: str = "sha256") -> str:
    return hmac.new(key, data, getattr(hashlib, algo)).hexdigest()


def test_bearer_with_and_without_prefix_and_custom_header(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    v = verifier(tmp_path, [{"type": "bearer", "secret_file": secret_file(tmp_path, token)}])
    assert v.verify({"authorization": f"Bearer {token}"}, BODY).kind == "bearer"
    for bad in ({"authorization": "Bearer nope"}, {"authorization": token}, {}):
        with pytest.raises(VerificationError):
            v.verify(bad, BODY)
    custom = verifier(
        tmp_path,
        [
            {
                "type": "bearer",
                "header": "X-Token",
                "prefix": False,
                "secret_file": secret_file(tmp_path, token),
            }
        ],
    )
    assert custom.verify({"x-token": token}, BODY).kind == "bearer"
    with pytest.raises(VerificationError, match="bearer_mismatch"):
        custom.verify({"x-token": token + "x"}, BODY)


def test_legacy_x_vapi_secret(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    v = verifier(tmp_path, [{"type": "x-vapi-secret", "secret_file": secret_file(tmp_path, token)}])
    assert v.verify({"x-vapi-secret": token}, BODY).kind == "x_vapi_secret"
    with pytest.raises(VerificationError, match="x_vapi_secret_mismatch"):
        v.verify({"x-vapi-secret": "other"}, BODY)


def test_rotation_accepts_every_configured_secret(tmp_path: Path) -> None:
    old, new = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    v = verifier(
        tmp_path,
        [{"type": "bearer", "secret_env": "HOOK_OLD", "secret_file": secret_file(tmp_path, new)}],
        environ={"HOOK_OLD": old},
    )
    for token in (old, new):
        assert v.verify({"authorization": f"Bearer {token}"}, BODY)


def test_missing_secret_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_NOT_SET", raising=False)
    with pytest.raises(ValueError, match="HOOK_NOT_SET"):
        WebhookSettings.model_validate(
            {"verify": [{"type": "bearer", "secret_env": "HOOK_NOT_SET"}]}
        )
    with pytest.raises(ValueError, match="never inline"):
        WebhookSettings.model_validate({"verify": [{"type": "bearer"}]})


@pytest.mark.parametrize(
    ("stamp", "ok", "reason"),
    [
        (str(int(NOW)), True, None),
        (str(int(NOW * 1000)), True, None),  # milliseconds are accepted too
        (str(int(NOW) - 299), True, None),
        (str(int(NOW) - 301), False, "hmac_expired"),
        (str(int(NOW) + 301), False, "hmac_expired"),
        (str(int(NOW * 1000) - 301_000), False, "hmac_expired"),
        ("yesterday", False, "hmac_bad_timestamp"),
        # Not plain digits: float() read these, and nan compares false with the window.
        ("nan", False, "hmac_bad_timestamp"),
        ("NaN", False, "hmac_bad_timestamp"),
        ("-nan", False, "hmac_bad_timestamp"),
        ("inf", False, "hmac_bad_timestamp"),
        ("-Infinity", False, "hmac_bad_timestamp"),
        (f"{NOW:.0f}.5", False, "hmac_bad_timestamp"),
        (f"{NOW:.0f}.0", False, "hmac_bad_timestamp"),
        ("1.8e9", False, "hmac_bad_timestamp"),
        (f"+{NOW:.0f}", False, "hmac_bad_timestamp"),
        (f" {NOW:.0f}", False, "hmac_bad_timestamp"),
        (f"{NOW:.0f}"[:4] + "_" + f"{NOW:.0f}"[4:], False, "hmac_bad_timestamp"),
        ("\u0661\u0668" + "0" * 8, False, "hmac_bad_timestamp"),  # Arabic-Indic digits
        ("9" * 400, False, "hmac_bad_timestamp"),
        ("0", False, "hmac_expired"),
    ],
)
def test_hmac_default_format_and_replay_window(
    tmp_path: Path, stamp: str, ok: bool, reason: str | None
) -> None:
    key = secrets.token_urlsafe(24)
    v = verifier(tmp_path, [{"type": "hmac", "secret_file": secret_file(tmp_path, key)}])
    headers = {"x-signature": sig(key.encode(), stamp.encode() + b"." + BODY), "x-timestamp": stamp}
    if ok:
        assert v.verify(headers, BODY).kind == "hmac"
    else:
        with pytest.raises(VerificationError, match=reason):
            v.verify(headers, BODY)


def test_an_unsigned_message_id_is_not_a_dedupe_key(tmp_path: Path) -> None:
    # With the default payload the id is not signed: a replayed delivery with a fresh id must
    # not look like a new message, so the verifier does not vouch for the id.
    key = secrets.token_urlsafe(24)
    v = verifier(
        tmp_path,
        [
            {
                "type": "hmac",
                "secret_file": secret_file(tmp_path, key),
                "message_id_header": "svix-id",
            }
        ],
    )
    stamp = str(int(NOW))
    headers = {
        "x-signature": sig(key.encode(), stamp.encode() + b"." + BODY),
        "x-timestamp": stamp,
        "svix-id": "msg_chosen_by_whoever_replays",
    }
    verified = v.verify(headers, BODY)
    assert verified.kind == "hmac"
    assert verified.message_id is None


def test_hmac_wrong_signature_body_or_missing_timestamp(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(24)
    v = verifier(tmp_path, [{"type": "hmac", "secret_file": secret_file(tmp_path, key)}])
    stamp = str(int(NOW))
    good = sig(key.encode(), stamp.encode() + b"." + BODY)
    cases = [
        ({"x-signature": sig(b"other", stamp.encode() + b"." + BODY), "x-timestamp": stamp}, BODY),
        ({"x-signature": good, "x-timestamp": stamp}, BODY + b" "),
        ({"x-signature": good}, BODY),
        ({"x-signature": "zz-not-hex", "x-timestamp": stamp}, BODY),
    ]
    for headers, body in cases:
        with pytest.raises(VerificationError):
            v.verify(headers, body)


def test_hmac_sha512_base64_prefix_and_base64_secret(tmp_path: Path) -> None:
    raw = secrets.token_bytes(48)
    v = verifier(
        tmp_path,
        [
            {
                "type": "hmac",
                "algorithm": "sha512",
                "secret_is_base64": True,
                "signature_prefix": "sha512=",
                "signature_encoding": "base64",
                "signature_header": "X-Vapi-Signature",
                "secret_file": secret_file(tmp_path, base64.b64encode(raw).decode()),
            }
        ],
    )
    stamp = str(int(NOW * 1000))
    mac = hmac.new(raw, stamp.encode() + b"." + BODY, hashlib.sha512).digest()
    value = "sha512=" + base64.b64encode(mac).decode()
    assert v.verify({"x-vapi-signature": value, "x-timestamp": stamp}, BODY)
    with pytest.raises(VerificationError, match="hmac_bad_prefix"):
        v.verify({"x-vapi-signature": value[7:], "x-timestamp": stamp}, BODY)


def test_hmac_custom_payload_with_svix_id_gives_the_message_id(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(24)
    v = verifier(
        tmp_path,
        [
            {
                "type": "hmac",
                "algorithm": "sha1",
                "payload_format": "{svix-id}.{timestamp}.{method}.{url}.{body}",
                "message_id_header": "svix-id",
                "secret_file": secret_file(tmp_path, key),
            }
        ],
    )
    stamp = str(int(NOW))
    data = f"msg_1.{stamp}.POST.{URL}.".encode() + BODY
    headers = {
        "x-signature": sig(key.encode(), data, "sha1"),
        "x-timestamp": stamp,
        "svix-id": "msg_1",
    }
    assert v.verify(headers, BODY).message_id == "msg_1"
    with pytest.raises(VerificationError):
        v.verify({**headers, "svix-id": "msg_2"}, BODY)


def test_without_timestamp_when_not_included(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(24)
    v = verifier(
        tmp_path,
        [
            {
                "type": "hmac",
                "include_timestamp": False,
                "payload_format": "{body}",
                "signature_prefix": "sha256=",
                "signature_header": "x-vapi-signature",
                "secret_file": secret_file(tmp_path, key),
            }
        ],
    )
    assert v.verify({"x-vapi-signature": "sha256=" + sig(key.encode(), BODY)}, BODY)


def test_no_credential_is_refused_unless_explicitly_allowed(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="no_credential"):
        verifier(tmp_path, []).verify({}, BODY)
    assert verifier(tmp_path, [], allow_unverified=True).verify({}, BODY).kind == "unverified"


def test_unknown_payload_placeholder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        WebhookSettings.model_validate(
            {
                "verify": [
                    {
                        "type": "hmac",
                        "payload_format": "{nonce}.{body}",
                        "secret_file": secret_file(tmp_path, "k" * 32),
                    }
                ]
            }
        )


def test_secret_headers_for_the_server_object(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    settings = WebhookSettings.model_validate(
        {
            "verify": [
                {
                    "type": "bearer",
                    "send_in_headers": True,
                    "secret_file": secret_file(tmp_path, token),
                },
                {"type": "hmac", "secret_file": secret_file(tmp_path, "k" * 32)},
            ]
        }
    )
    assert server_headers(settings.verify) == {"Authorization": f"Bearer {token}"}
    assert token not in repr(settings)


@pytest.mark.parametrize(
    "stamp", ["+1800000000", "1_800_000_000", " 1800000000", "\u0661800000000", "nan", ""]
)
def test_the_apps_forward_signature_check_reads_plain_digits_only(stamp: str) -> None:
    # The proxy signs forwards as `t=<digits>,v1=<hex>`; int() also read these spellings of
    # the same moment, so one captured signature had many valid headers.
    secret = secrets.token_bytes(32)
    mac = sign(secret, BODY, int(NOW)).split("v1=")[1]
    assert verify_signature([secret], f"t={int(NOW)},v1={mac}", BODY, now=NOW)
    assert not verify_signature([secret], f"t={stamp},v1={mac}", BODY, now=NOW)


def vapi_signed(payload_format: str, body: bytes, stamp: str, message_id: str) -> bytes:
    """What a signer following Vapi's `payloadFormat` signs, written out independently of the
    verifier: placeholders replaced in the text, the body put where the first `{body}` was."""
    text = (
        payload_format.replace("{timestamp}", stamp)
        .replace("{method}", "POST")
        .replace("{url}", URL)
        .replace("{svix-id}", message_id)
    )
    head, found, tail = text.partition("{body}")
    return head.encode() + body + tail.encode() if found else text.encode()


@pytest.mark.parametrize(
    "payload_format",
    [
        "{timestamp}.{body}",
        "{body}",
        "{timestamp}",
        "{method} {url}\n{timestamp}\n{body}",
        "{svix-id}.{timestamp}.{method}.{url}.{body}",
        "v1:{body}:{timestamp}:{svix-id}",  # fields after the body
        "{timestamp}{timestamp}.{body}",  # a field twice
        "{body}|{body}",  # only the first {body} is the body; the second is text
        "plain text, no fields",
    ],
)
def test_hmac_signs_exactly_the_configured_payload_with_every_secret(
    tmp_path: Path, payload_format: str
) -> None:
    old, new = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    v = verifier(
        tmp_path,
        [
            {
                "type": "hmac",
                "payload_format": payload_format,
                "message_id_header": "svix-id",
                "secret_env": "HOOK_OLD",
                "secret_file": secret_file(tmp_path, new),
            }
        ],
        environ={"HOOK_OLD": old},
    )
    stamp, message_id = str(int(NOW)), "msg_2f9"
    data = vapi_signed(payload_format, BODY, stamp, message_id)
    for key in (old, new):  # rotation: either secret proves the delivery
        headers = {"x-signature": sig(key.encode(), data), "x-timestamp": stamp}
        verified = v.verify({**headers, "svix-id": message_id}, BODY)
        assert verified.kind == "hmac"
        assert verified.message_id == (message_id if "{svix-id}" in payload_format else None)
    headers = {"x-signature": sig(old.encode(), data), "x-timestamp": stamp}
    # A signature over anything else is refused: another body (when the body is signed),
    # another time, another message id (when they are signed), another secret.
    wrong: list[tuple[dict[str, str], bytes]] = [
        ({**headers, "x-signature": sig(b"not-a-configured-secret", data)}, BODY),
    ]
    if "{body}" in payload_format:
        wrong.append((headers, BODY.replace(b"ended", b"ended ")))
    if "{timestamp}" in payload_format:
        wrong.append(({**headers, "x-timestamp": str(int(NOW) - 1)}, BODY))
    if "{svix-id}" in payload_format:
        wrong.append(({**headers, "svix-id": "msg_other"}, BODY))
    for bad_headers, body in wrong:
        with pytest.raises(VerificationError, match="hmac_mismatch"):
            v.verify({"svix-id": message_id, **bad_headers}, body)
