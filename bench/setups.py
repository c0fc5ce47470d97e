"""What the bench runs: the simulator, nginx (stub and reverse proxy) and the proxy variants,
each as a config written to a temp dir. No I/O beyond writing those files."""

from __future__ import annotations

import datetime as dt
import json
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

    full_sqlite = _proxy_base(
        f"sqlite:///{tmp / 'embedded.db'}", limits_backend=f"sqlite:///{tmp / 'embedded.db'}"
    )
    full_sqlite["auth"] = jwt_auth
    full_sqlite["limits"]["rules"] = GENEROUS_RULES

    variants = [
        Variant("open", "proxy: anonymous, no limit rules", "proxy", headers=plain, config=anon),
        Variant(
            "jwt", "proxy: RS256 JWT, no limit rules", "proxy", headers=bearer, config=auth_only
        ),
        Variant(
            "jwt+limits",
            "proxy: JWT + memory limits + SQLite ledger",
            "proxy",
            headers=bearer,
            config=full,
        ),
        Variant(
            "jwt+limits-sqlite",
            "proxy: JWT + SQLite limits + SQLite ledger (embedded default)",
            "proxy",
            headers=bearer,
            config=full_sqlite,
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


def proxy_command(config: Path, port: int, module: str = "vapi_proxy") -> list[str]:
    return [
        sys.executable,
        "-m",
        module,
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
    ]


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


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_config(tmp: Path, stub_port: int, proxy_port: int, upstream: int, stub_body: str) -> str:
    """One nginx, no master process (runs as whoever starts it), everything under `tmp`."""
    temps = "\n".join(
        f"    {name}_temp_path {tmp / (name + '_temp')};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp / "nginx.pid"};
error_log {tmp / "nginx-error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    upstream simulator {{ server 127.0.0.1:{upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{stub_port};
        location / {{
            default_type application/json;
            return 201 {_nginx_string(stub_body)};
        }}
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def baseline_variants(sim_headers: dict[str, str]) -> list[Variant]:
    return [
        Variant("direct", "simulator, hit directly", "direct", DIRECT_BODY, sim_headers),
        Variant(
            "nginx-stub", "nginx `return 201` stub (floor)", "nginx-stub", DIRECT_BODY, sim_headers
        ),
        Variant(
            "nginx-proxy",
            "nginx reverse proxy → simulator",
            "nginx-proxy",
            DIRECT_BODY,
            sim_headers,
        ),
    ]


def simulator_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {PRIVATE_KEY}", "Content-Type": "application/json"}
