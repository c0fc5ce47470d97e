"""Verify that a delivery comes from Vapi: bearer token, legacy `X-Vapi-Secret`, or HMAC.

Checked on the raw body bytes before anything parses them. Every comparison is constant-time
(`hmac.compare_digest`), every configured secret is tried (rotation), and a failure says why
in words that never include a secret. Vapi facts §4.4 lists the credential fields mirrored here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from vapi_proxy.webhooks.config import (
    BearerVerifier,
    HmacVerifier,
    SecretHeaderVerifier,
    Verifier,
)

MS_THRESHOLD = 10**11
"""Timestamps above this are epoch milliseconds (1e11 s is the year 5138)."""
_TIMESTAMP = re.compile(r"[0-9]{1,16}")
"""Epoch seconds or milliseconds as plain ASCII digits. Vapi does not say which unit it sends
(Vapi facts §8), so both are read; nothing else is: `float()` took `nan` (which compares
false with everything, so it passed the age check), `inf`, `1e9`, and `int()` takes `+`, `_`,
spaces and other scripts' digits, none of which a signer sends."""


class VerificationError(Exception):
    """The delivery is not proven to come from Vapi; `reason` is a short counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Verified:
    """A delivery that passed: which credential type proved it, and its message id if any."""

    kind: str
    message_id: str | None = None


class _Check:
    kind: str

    def check(
        self, headers: Mapping[str, str], body: bytes, method: str, now: float
    ) -> Verified | None:
        """Verified, None if this credential is absent, or raise if present and wrong."""
        raise NotImplementedError


class _TokenCheck(_Check):
    def __init__(self, kind: str, header: str, prefix: str, secrets: Sequence[bytes]) -> None:
        self.kind = kind
        self.header = header.lower()
        self.prefix = prefix
        self.secrets = tuple(secrets)

    def check(
        self, headers: Mapping[str, str], body: bytes, method: str, now: float
    ) -> Verified | None:
        value = headers.get(self.header)
        if value is None:
            return None
        if self.prefix:
            scheme, _, token = value.partition(" ")
            if scheme.lower() != self.prefix.lower():
                raise VerificationError(f"{self.kind}_bad_scheme")
            value = token.strip()
        given = value.encode()
        # Compare against every secret (no early exit) so timing does not tell which matched.
        ok = False
        for secret in self.secrets:
            ok |= hmac.compare_digest(given, secret)
        if not ok:
            raise VerificationError(f"{self.kind}_mismatch")
        return Verified(self.kind)


_FIELD = re.compile(r"(\{(?:timestamp|method|url|svix-id)\})")


def _template(payload_format: str, url: str) -> tuple[bytes | str | None, ...]:
    """`payload_format` split once into literal bytes, the names of the fields filled per
    delivery (`timestamp`, `method`, `svix-id`) and None where the raw body goes, so a check
    joins pieces instead of rescanning the format. Only the first `{body}` is the body (a second
    one is literal text); the URL is a constant."""
    head, has_body, tail = payload_format.partition("{body}")

    def pieces(text: str) -> list[bytes | str]:
        out: list[bytes | str] = []
        for i, piece in enumerate(_FIELD.split(text)):
            if i % 2 == 0:
                if piece:
                    out.append(piece.encode())
            elif piece == "{url}":
                out.append(url.encode())
            else:
                out.append(piece[1:-1])
        return out

    if not has_body:
        return tuple(pieces(head))
    return (*pieces(head), None, *pieces(tail))


class _HmacCheck(_Check):
    kind = "hmac"

    def __init__(self, conf: HmacVerifier, secrets: Sequence[bytes], url: str) -> None:
        self.conf = conf
        self.algorithm = conf.algorithm
        self.keys = tuple(secrets)
        self.url = url
        self.sig_header = conf.signature_header.lower()
        self.ts_header = conf.timestamp_header.lower()
        self.id_header = conf.message_id_header.lower() if conf.message_id_header else None
        self._template = _template(conf.payload_format, url)
        self._signs_message_id = "{svix-id}" in conf.payload_format

    def _signed(self, body: bytes, stamp: str, method: str, message_id: str) -> bytes:
        fields = {"timestamp": stamp, "method": method, "svix-id": message_id}
        return b"".join(
            body if piece is None else piece if isinstance(piece, bytes) else fields[piece].encode()
            for piece in self._template
        )

    def _decode(self, value: str) -> bytes:
        prefix = self.conf.signature_prefix
        if prefix:
            if not value.startswith(prefix):
                raise VerificationError("hmac_bad_prefix")
            value = value[len(prefix) :]
        value = value.strip()
        try:
            if self.conf.signature_encoding == "hex":
                return bytes.fromhex(value)
            return base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise VerificationError("hmac_bad_encoding") from None

    def check(
        self, headers: Mapping[str, str], body: bytes, method: str, now: float
    ) -> Verified | None:
        value = headers.get(self.sig_header)
        if value is None:
            return None
        given = self._decode(value)
        stamp = ""
        if self.conf.include_timestamp:
            stamp = headers.get(self.ts_header, "")
            if not stamp:
                raise VerificationError("hmac_no_timestamp")
            if not _TIMESTAMP.fullmatch(stamp):
                raise VerificationError("hmac_bad_timestamp")
            moment = int(stamp)
            seconds = moment / 1000 if moment > MS_THRESHOLD else float(moment)
            # Written so that anything not provably inside the window is refused.
            if not abs(now - seconds) <= self.conf.max_age_seconds:
                raise VerificationError("hmac_expired")
        message_id = headers.get(self.id_header, "") if self.id_header else ""
        signed = self._signed(body, stamp, method, message_id)
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(hmac.digest(key, signed, self.algorithm), given)
        if not ok:
            raise VerificationError("hmac_mismatch")
        # The message id becomes the dedupe key only when the signature covers it: an unsigned
        # id can be changed by whoever replays a captured delivery inside the window.
        signed_id = self._signs_message_id and message_id
        return Verified("hmac", signed_id or None)


def _secret_bytes(conf: Verifier) -> list[bytes]:
    out = []
    for secret in conf.secrets:
        text = secret.get_secret_value()
        if isinstance(conf, HmacVerifier) and conf.secret_is_base64:
            out.append(base64.b64decode(text))
        else:
            out.append(text.encode())
    return out


class WebhookVerifier:
    """Tries each configured credential; the first present one decides."""

    def __init__(
        self,
        verifiers: Sequence[Verifier],
        *,
        url: str,
        allow_unverified: bool = False,
        clock: Callable[[], float],
    ) -> None:
        self._checks: list[_Check] = []
        for conf in verifiers:
            secrets = _secret_bytes(conf)
            if isinstance(conf, BearerVerifier):
                prefix = "Bearer" if conf.prefix else ""
                self._checks.append(_TokenCheck("bearer", conf.header, prefix, secrets))
            elif isinstance(conf, SecretHeaderVerifier):
                self._checks.append(_TokenCheck("x_vapi_secret", "x-vapi-secret", "", secrets))
            else:
                self._checks.append(_HmacCheck(conf, secrets, url))
        self._allow_unverified = allow_unverified
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes, method: str = "POST") -> Verified:
        """Raise `VerificationError` unless a configured credential proves the delivery."""
        now = self._clock()
        failure: VerificationError | None = None
        for check in self._checks:
            try:
                found = check.check(headers, body, method, now)
            except VerificationError as exc:
                failure = failure or exc
                continue
            if found is not None:
                return found
        if failure is not None:
            raise failure
        if self._allow_unverified:
            return Verified("unverified")
        raise VerificationError("no_credential")


def server_headers(verifiers: Sequence[Verifier]) -> dict[str, str]:
    """Headers for `server.headers` from credentials with `send_in_headers` (first secret)."""
    out: dict[str, str] = {}
    for conf in verifiers:
        if isinstance(conf, BearerVerifier) and conf.send_in_headers:
            token = conf.secrets[0].get_secret_value()
            out[conf.header] = f"Bearer {token}" if conf.prefix else token
        elif isinstance(conf, SecretHeaderVerifier) and conf.send_in_headers:
            out["X-Vapi-Secret"] = conf.secrets[0].get_secret_value()
    return out
