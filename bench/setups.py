"""What the bench runs: the simulator, nginx (stub and reverse proxy) and the proxy variants,
each as a config written to a temp dir. No I/O beyond writing those files."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ASSISTANT_ID = "5a1d0c1e-0000-4000-8000-00000000be0c"
PRIVATE_KEY = "bench-" + uuid.uuid4().hex  # the simulator's private key, for this run only
PROFILE = "bench"
FULL = "jwt+limits"  # the full policy: JWT + limits with rules + SQLite ledger
WORKER, BARE = "worker", "bare-starlette"  # the two baselines every variant is compared with
GRANIAN_BARE = "exp:granian-bare"  # `bare-starlette` under granian (an experiment)
CLIENT_BODY = json.dumps({"assistantId": PROFILE}).encode()
# What the proxy sends upstream for that body, roughly: the simulator sees the same shape direct.
DIRECT_BODY = json.dumps(
    {
        "assistantId": ASSISTANT_ID,
        "assistantOverrides": {
            "variableValues": {"plan": "bench"},
            "maxDurationSeconds": 300,
            "metadata": {
                "vapiProxy": {
                    "profile": PROFILE,
                    "requestId": "0123456789abcdef0123456789abcdef",
                    "identity": "0123456789abcdef",
                }
            },
        },
    }
).encode()
# Generous on purpose: nothing may be refused, so every request does the whole admission work.
# Concurrency slots are never settled (the simulator sends no webhooks here) and live for
# max_duration + grace, so the cap must exceed every request of the run.
GENEROUS_RULES = [
    {
        "name": "bench",
        "rate": {"per_second": 1_000_000, "per_minute": 100_000_000},
        "quota": {"per_day": 1_000_000_000},
        "concurrency": 1_000_000_000,
        "budget": {"minutes_per_day": 1e12},
    }
]


@dataclass
class Variant:
    name: str
    label: str
    kind: str  # direct | nginx-stub | nginx-proxy | proxy
    body: bytes = CLIENT_BODY
    headers: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # proxy settings (YAML)
    needs_services: bool = False
    module: str = "vapi_proxy"  # what `python -m` runs: bench.nowrite for the experiment
    workers: int = 1  # `serve --workers`
    server: str = "uvicorn"  # or "granian" (the exp:granian-* variants, bench/granian_app.py)


def sandbox_config() -> dict[str, Any]:
    return {
        "private_key": PRIVATE_KEY,
        "assistants": [{"id": ASSISTANT_ID, "name": "Bench", "voice": {"provider": "vapi"}}],
        "request_log_enabled": False,
        "max_calls": 20_000,
        "lifecycle": {"ringing_after": 3600, "in_progress_after": 3600, "duration": 3600},
    }


@dataclass(frozen=True)
class JwtKeys:
    public_pem: str
    token: str


def jwt_keys() -> JwtKeys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": "bench-user", "iat": now, "exp": now + dt.timedelta(days=1)}
    return JwtKeys(public_pem, jwt.encode(claims, key, algorithm="RS256"))


def _proxy_base(ledger_url: str, limits_backend: str = "memory://") -> dict[str, Any]:
    return {
        # The access log is off, as in nginx below: both measure the request path, not logging.
        "logging": {"level": "warning", "access_log": False},
        "ledger": {"url": ledger_url},
        "limits": {"backend": limits_backend, "rules": []},
        "profiles": {
            PROFILE: {
                "assistant_id": ASSISTANT_ID,
                "variables": {"plan": "bench"},
                "max_duration_seconds": 300,
            }
        },
    }


def proxy_variants(
    tmp: Path,
    keys: JwtKeys,
    services: dict[str, str] | None,
    bench_db: str | None,
    *,
    experiments: bool = False,
) -> list[Variant]:
    anon = _proxy_base(f"sqlite:///{tmp / 'open.db'}")
    anon["auth"] = {"methods": [{"type": "anonymous"}]}
    anon["profiles"][PROFILE]["access"] = {"anonymous": True}

    jwt_auth = {
        "methods": [{"type": "jwt", "public_key": keys.public_pem, "algorithms": ["RS256"]}]
    }
    bearer = {"Authorization": f"Bearer {keys.token}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}

    auth_only = _proxy_base(f"sqlite:///{tmp / 'jwt.db'}")
    auth_only["auth"] = jwt_auth

    full = _proxy_base(f"sqlite:///{tmp / 'full.db'}")
    full["auth"] = jwt_auth
    full["limits"]["rules"] = GENEROUS_RULES

    ledger_limits = _proxy_base(f"sqlite:///{tmp / 'embedded.db'}", limits_backend="ledger://")
    ledger_limits["auth"] = jwt_auth
    ledger_limits["limits"]["rules"] = GENEROUS_RULES
    ledger_limits_2w = {**ledger_limits, "ledger": {"url": f"sqlite:///{tmp / 'embedded2.db'}"}}
    auth_only_2w = {**auth_only, "ledger": {"url": f"sqlite:///{tmp / 'jwt2.db'}"}}

    variants = [
        Variant("open", "proxy: anonymous, no limit rules", "proxy", headers=plain, config=anon),
        Variant(
            "jwt", "proxy: RS256 JWT, no limit rules", "proxy", headers=bearer, config=auth_only
        ),
        Variant(
            FULL,
            "proxy: JWT + memory limits with rules + SQLite ledger (the issue's full policy)",
            "proxy",
            headers=bearer,
            config=full,
        ),
        Variant(
            "jwt+limits-ledger",
            "proxy: JWT + the default durable limits (in-process, kept in the ledger's file)",
            "proxy",
            headers=bearer,
            config=ledger_limits,
        ),
        Variant(
            "jwt+limits-ledger-2w",
            "proxy: the same with `serve --workers 2` (both on the server's CPU unless `--no-pin`)",
            "proxy",
            headers=bearer,
            config=ledger_limits_2w,
            workers=2,
        ),
        Variant(
            "jwt-2w",
            "control: `jwt` (no limit rules) under `serve --workers 2`: what a second worker"
            " costs without any limits",
            "proxy",
            headers=bearer,
            config=auth_only_2w,
            workers=2,
        ),
    ]
    if experiments:
        variants.append(
            Variant(
                "exp:no-ledger-write",
                "experiment: jwt+limits with the ledger write skipped (not a product mode)",
                "proxy",
                headers=bearer,
                config={**full, "ledger": {"url": f"sqlite:///{tmp / 'nowrite.db'}"}},
                module="bench.nowrite",
            )
        )
        variants.append(
            Variant(
                "exp:granian-" + FULL,
                "experiment: jwt+limits under granian (ASGI, 1 worker, uvloop) instead of"
                " uvicorn; granian is not a dependency",
                "proxy",
                headers=bearer,
                config={**full, "ledger": {"url": f"sqlite:///{tmp / 'granian.db'}"}},
                server="granian",
            )
        )
    if services is not None and bench_db is not None:
        scaled = _proxy_base(bench_db, limits_backend=services["redis"])
        scaled["auth"] = jwt_auth
        scaled["limits"]["rules"] = GENEROUS_RULES
        scaled["limits"]["namespace"] = f"vapi-proxy-bench-{uuid.uuid4().hex[:8]}"
        variants.append(
            Variant(
                "jwt+redis+pg",
                "proxy: JWT + Redis limits + PostgreSQL ledger",
                "proxy",
                headers=bearer,
                config=scaled,
                needs_services=True,
            )
        )
    return variants


def write_proxy_config(tmp: Path, variant: Variant) -> Path:
    path = tmp / f"proxy-{variant.name}.yaml"
    path.write_text(yaml.safe_dump(variant.config, sort_keys=False))
    return path


def proxy_command(
    config: Path, port: int, module: str = "vapi_proxy", workers: int = 1
) -> list[str]:
    cmd = [sys.executable, "-m", module, "serve", "--config", str(config), "--port", str(port)]
    return cmd + (["--workers", str(workers)] if workers != 1 else [])


def proxy_launch(
    variant: Variant, config: Path, port: int, tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """The command that serves proxy `variant` and the environment it needs beyond the bench's
    own (PYTHONPATH excepted): `vapi-proxy serve` (or a `bench.` module with the same CLI), or,
    for the granian experiment, granian building the app as `serve`'s workers do."""
    if variant.server != "granian":
        return proxy_command(config, port, variant.module, variant.workers), {}
    from bench import granian_app

    cmd = granian_app.granian_command("bench.granian_app:app", port, factory=True)
    if cmd is None:
        raise RuntimeError("granian is not importable (pip install granian)")
    env = {
        granian_app.CONFIG_ENV: str(config),
        granian_app.METRICS_ENV: str(tmp / f"metrics-{port}"),
    }
    return cmd, env


def sandbox_command(config: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vapi_proxy",
        "sandbox",
        "--config",
        str(config),
        "--port",
        str(port),
    ]


def stub_call() -> str:
    """The upstream stub's reply: a Call object like Vapi's for a web call (≈1.5 KB), its id
    nginx's `$request_id` (32 fresh hex digits per request), so every ledger row is new."""
    call: dict[str, Any] = {
        "id": "$request_id",
        "orgId": "0b5e7a11-0000-4000-8000-00000000b0a2",
        "type": "webCall",
        "status": "queued",
        "assistantId": ASSISTANT_ID,
        "assistantOverrides": {"variableValues": {"plan": "bench"}, "maxDurationSeconds": 300},
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00.000Z",
        "cost": 0,
        "costBreakdown": {"transport": 0, "stt": 0, "llm": 0, "tts": 0, "vapi": 0, "total": 0},
        "webCallUrl": "https://vapi.daily.co/$request_id",
        "transport": {
            "provider": "daily",
            "callUrl": "https://vapi.daily.co/$request_id",
            "callToken": "eyJhbGciOiJIUzI1NiJ9." + "b" * 180 + ".c2lnbmF0dXJl",
            "assistantVideoEnabled": False,
        },
        "artifactPlan": {"recordingEnabled": True, "videoRecordingEnabled": False},
        "assistant": {
            "name": "Bench",
            "voice": {"provider": "vapi", "voiceId": "Elliot"},
            "model": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.7},
            "transcriber": {"provider": "deepgram", "model": "nova-3", "language": "en"},
            "firstMessage": "Hello! This is the bench assistant. How can I help you today?",
        },
        "monitor": {
            "listenUrl": "wss://phone-call-websocket.example.vapi.ai/$request_id/listen",
            "controlUrl": "https://phone-call-websocket.example.vapi.ai/$request_id/control",
        },
    }
    text = json.dumps(call, separators=(",", ":"))
    size = len(text.replace("$request_id", "0" * 32))
    if size < 1500:  # round it up to ≈1.5 KB with a harmless field
        call["phoneCallProviderDetails"] = "x" * max(1, 1500 - size - 30)
        text = json.dumps(call, separators=(",", ":"))
    return text


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_config(tmp: Path, stub_port: int, stub_body: str) -> str:
    """One nginx answering every request with `stub_body` (201); no master process (runs as
    whoever starts it), everything under `tmp`. `$request_id` in the body is nginx's."""
    temps = "\n".join(
        f"    {name}_temp_path {tmp / (name + '_temp')};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp / "nginx.pid"};
error_log {tmp / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
{temps}
    server {{
        listen 127.0.0.1:{stub_port};
        location / {{
            default_type application/json;
            return 201 {_nginx_string(stub_body)};
        }}
    }}
}}
"""


def upstream_variant() -> Variant:
    return Variant(
        "upstream",
        "the nginx stub hit directly (the floor; added p50 is over this)",
        "upstream",
        DIRECT_BODY,
        simulator_headers(),
    )


def baselines(*, experiments: bool = False) -> list[Variant]:
    """The peers, sent the same client body as the proxy: the guide's Worker in workerd and a
    bare pass-through on the proxy's stack (and on aiohttp.web alone); with `experiments`, the
    bare pass-through under granian too."""
    plain = {"Content-Type": "application/json"}
    granian = [
        Variant(
            GRANIAN_BARE,
            "experiment: the bare Starlette pass-through under granian (ASGI, 1 worker, uvloop)",
            "baseline",
            headers=plain,
            module="bench.bare_starlette",
            server="granian",
        )
    ]
    return [
        Variant(WORKER, "the guide's Worker in workerd (the peer)", "baseline", headers=plain),
        Variant(
            BARE,
            "bare Starlette + uvicorn + aiohttp pass-through",
            "baseline",
            headers=plain,
            module="bench.bare_starlette",
        ),
        Variant(
            "bare-aiohttp",
            "aiohttp.web pass-through",
            "baseline",
            headers=plain,
            module="bench.bare_aiohttp",
        ),
    ] + (granian if experiments else [])


def workerd_binary() -> Path | None:
    """bench/worker/node_modules/.bin/workerd (scripts/bench-setup), else one on PATH."""
    path = Path(__file__).resolve().parent / "worker" / "node_modules" / ".bin" / "workerd"
    if path.exists():
        return path
    found = shutil.which("workerd")
    return Path(found) if found else None


def workerd_files(tmp: Path, port: int) -> Path:
    """Copies the Worker and its config (port filled in) into `tmp`; returns the config."""
    here = Path(__file__).resolve().parent / "worker"
    (tmp / "worker.js").write_text((here / "worker.js").read_text())
    config = tmp / "config.capnp"
    config.write_text((here / "config.capnp.in").read_text().replace("@PORT@", str(port)))
    return config


def baseline_command(variant: Variant, config: Path | None, port: int) -> list[str]:
    if variant.server == "granian":
        from bench.granian_app import granian_command

        cmd = granian_command(f"{variant.module}:app", port)
        if cmd is None:
            raise RuntimeError("granian is not importable (pip install granian)")
        return cmd
    if variant.name == WORKER:
        binary = workerd_binary()
        if binary is None or config is None:
            raise RuntimeError("workerd is not installed (scripts/bench-setup)")
        return [str(binary), "serve", str(config)]
    return [sys.executable, "-m", variant.module, str(port)]


def simulator_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {PRIVATE_KEY}", "Content-Type": "application/json"}
