"""`vapi-proxy serve --sandbox`: the proxy and the Vapi simulator in one process, the user's
config rewired to the simulator. The one module here that uses the product; the simulator
itself imports nothing of it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import secrets as secrets_module
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from vapi_proxy import __version__
from vapi_proxy.cli.common import (
    EXIT_CONFIG,
    bind_sockets,
    config_path,
    print_problems,
    uvicorn_kwargs,
)
from vapi_proxy.listening import CannotListenError, listen, url_host
from vapi_proxy.settings import (
    ConfigError,
    Secrets,
    Settings,
    apply_environment,
    parse_settings,
    read_config_file,
    read_yaml,
    without_overrides,
)

SANDBOX_WEBHOOK_ENV = "VAPI_PROXY_SANDBOX_WEBHOOK_TOKEN"
SANDBOX_CREDENTIAL_ID = "sandbox-webhook"


def example_config_text() -> str:
    return files("vapi_proxy.examples").joinpath("sandbox.yaml").read_text(encoding="utf-8")


SANDBOX_KEY_NAME = "sandbox-demo"


def _sandbox_raw(
    raw: dict[str, Any], *, proxy_url: str, sandbox_url: str, demo_hash: str, scratch: str
) -> dict[str, Any]:
    """The user's config (environment applied) rewired to run against the simulator.

    Vapi, webhooks and stores are the sandbox's; profiles, auth and limit rules stay the
    user's. Webhook verification is the one thing replaced: the simulator signs with a bearer
    secret generated here, which the proxy is told to verify, so deliveries are accepted and
    calls settle whatever the user's own verifiers name (their secrets need not be set).
    """
    data = copy.deepcopy(raw)
    data.setdefault("vapi", {})["base_url"] = sandbox_url
    data["public_url"] = proxy_url
    hooks = data.setdefault("webhooks", {})
    hooks["verify"] = [{"type": "bearer", "secret_env": [SANDBOX_WEBHOOK_ENV]}]
    hooks["vapi_credential_id"] = SANDBOX_CREDENTIAL_ID
    hooks["allow_unverified"] = False
    # Simulated calls go to a throwaway ledger and limit counters, never the user's stores.
    data.setdefault("ledger", {})["url"] = f"sqlite:///{scratch}/ledger.db"
    data.setdefault("limits", {})["backend"] = "memory://"
    auth = data.setdefault("auth", {})
    methods = auth.setdefault("methods", [])
    demo = {"name": SANDBOX_KEY_NAME, "hash": demo_hash}
    own = [m for m in methods if isinstance(m, dict) and m.get("type") == "api_key"]
    if own:
        # One api_key method only (the first would shadow a second): the demo key joins theirs.
        keys = own[0].setdefault("keys", [])
        taken = {k.get("name") for k in keys if isinstance(k, dict)}
        while demo["name"] in taken:
            demo["name"] += "-1"
        keys.append(demo)
    else:
        methods.insert(0, {"type": "api_key", "header": "X-API-Key", "keys": [demo]})
    return data


def _sample_variables(profile: Any) -> dict[str, Any]:
    """Values for the profile's required client variables, so the printed request works."""
    values: dict[str, Any] = {}
    for name, spec in profile.client_variables.items():
        if not spec.required or spec.default is not None:
            continue
        if spec.enum:
            values[name] = spec.enum[0]
        elif spec.type in ("integer", "number"):
            values[name] = int(spec.minimum) if spec.minimum is not None else 1
        elif spec.type == "boolean":
            values[name] = True
        else:
            values[name] = "Ada"[: spec.max_length].ljust(spec.min_length, "a")
    return values


def _first_admitted(settings: Settings, identity: Any) -> str | None:
    """The profile to show `identity`'s request with: for a signed-in caller, preferably one an
    anonymous caller could not start (it shows what signing in gives)."""
    from vapi_proxy.errors import ProxyError
    from vapi_proxy.policy.access import check_access

    admitted = []
    for name, profile in settings.profiles.items():
        try:
            check_access(profile.access, identity, name)
        except ProxyError:
            continue
        admitted.append(name)
    if identity.method != "anonymous":
        signed_in_only = [n for n in admitted if not settings.profiles[n].access.anonymous]
        admitted = signed_in_only or admitted
    return admitted[0] if admitted else None


def _curl(settings: Settings, proxy_url: str, profile: str, header: str | None) -> str:
    body: dict[str, Any] = {"assistantId": profile}
    variables = _sample_variables(settings.profiles[profile])
    if variables:
        body["assistantOverrides"] = {"variableValues": variables}
    auth = f" -H '{header}'" if header else ""
    return (
        f"curl -s -X POST {proxy_url}/call/web -H 'Content-Type: application/json'{auth} "
        f"-d '{json.dumps(body, separators=(',', ':'))}'"
    )


def _sandbox_banner(
    settings: Settings, *, proxy_url: str, sandbox_url: str, demo_key: str, path: str | None
) -> str:
    """What `serve --sandbox` prints: where things are, and a working request per auth method."""
    from vapi_proxy.auth.config import AnonymousMethod, ApiKeyMethod, JwtMethod
    from vapi_proxy.auth.identity import Identity

    lines = [
        f"vapi-proxy {__version__} (sandbox) listening on {proxy_url}",
        f"  config:          {path or 'the built-in demo (src/vapi_proxy/examples/sandbox.yaml)'}",
        f"  simulated Vapi:  {sandbox_url}  (inspect: {sandbox_url}/__sandbox/requests, "
        f"{sandbox_url}/__sandbox/webhooks)",
        f"  profiles:        {', '.join(settings.profiles) or '(none)'}",
        "  webhooks:        the simulator signs them with a generated secret the proxy verifies"
        + (" (your webhooks.verify is not used here)" if path else ""),
        "  ledger, limits:  throwaway (a scratch SQLite file, in-memory counters)",
        f"  demo API key:    {demo_key}  (X-API-Key: <key> or Authorization: Bearer <key>)",
        "try:",
    ]
    first = next(iter(settings.profiles), None)
    for method in settings.auth.methods:
        if isinstance(method, ApiKeyMethod):
            who = Identity(subject=SANDBOX_KEY_NAME, method="api_key")
            name = _first_admitted(settings, who)
            if name is None:
                lines.append("  api_key: no profile admits an API key caller (see access:)")
                continue
            lines.append(f"  # api_key, profile {name}")
            lines.append("  " + _curl(settings, proxy_url, name, f"X-API-Key: {demo_key}"))
        elif isinstance(method, AnonymousMethod) and method.enabled:
            name = _first_admitted(settings, Identity(subject="127.0.0.1", method="anonymous"))
            if name is None:
                lines.append("  anonymous: no profile has access: {anonymous: true}")
                continue
            lines.append(f"  # anonymous (no credential), profile {name}")
            lines.append("  " + _curl(settings, proxy_url, name, None))
        elif isinstance(method, JwtMethod):
            claims: dict[str, Any] = {"sub": "sandbox-user"}
            name = _first_admitted(settings, Identity(subject="sandbox-user", method="jwt"))
            name = name or first
            if name is None:
                continue
            label = f"  # jwt{f' ({method.issuer})' if method.issuer else ''}, profile {name}"
            if method.secret is not None:
                token = _mint_token(method, claims)
                lines.append(label + " (a token signed with your shared secret, valid 1 h)")
                lines.append(
                    "  " + _curl(settings, proxy_url, name, f"Authorization: Bearer {token}")
                )
            else:
                lines.append(label + ": TOKEN=<a fresh token from your identity provider>")
                lines.append(
                    "  " + _curl(settings, proxy_url, name, "Authorization: Bearer $TOKEN")
                )
                lines.append(
                    "  # refused? vapi-proxy check"
                    + (f" --config {path}" if path else "")
                    + " --token $TOKEN  explains why"
                )
    if not settings.auth.methods:
        lines.append("  (no auth methods: every request is refused)")
    anonymous = settings.auth.anonymous_enabled and _first_admitted(
        settings, Identity(subject="127.0.0.1", method="anonymous")
    )
    if anonymous:
        lines.append(f"web:  new Vapi('', '{proxy_url}').start('{anonymous}')  (no sign-in)")
    elif first is not None:
        lines.append(f"web:  new Vapi(<a fresh user token>, '{proxy_url}').start('{first}')")
    return "\n".join(lines)


def _mint_token(method: Any, claims: dict[str, Any]) -> str:
    """A token the proxy accepts, for a jwt method with a shared secret (sandbox only)."""
    import jwt

    now = int(time.time())
    body = {**claims, "iat": now, "exp": now + 3600}
    if method.issuer is not None:
        body["iss"] = method.issuer
    audience = method.audience
    if audience is not None:
        body["aud"] = audience if isinstance(audience, str) else audience[0]
    return jwt.encode(body, method.secret.get_secret_value(), algorithm=method.algorithms[0])


def _load_sandbox_config(
    path: str | None,
    *,
    proxy_url: str,
    sandbox_url: str,
    demo_hash: str,
    scratch: str,
    webhook_token: str,
    environ: Mapping[str, str],
) -> Settings:
    if path is not None:
        raw = read_config_file(path)
        base_dir: Path | None = Path(path).resolve().parent
    else:
        raw = read_yaml(example_config_text())
        base_dir = None
    rewired = _sandbox_raw(
        apply_environment(raw, environ),
        proxy_url=proxy_url,
        sandbox_url=sandbox_url,
        demo_hash=demo_hash,
        scratch=scratch,
    )
    # The overrides are applied before the rewiring (they must not undo it); the secrets the
    # config names (a JWT secret, the simulator's webhook token) come from this environment.
    secrets = {**without_overrides(environ), SANDBOX_WEBHOOK_ENV: webhook_token}
    return parse_settings(rewired, base_dir=base_dir, environ=secrets)


async def serve_sandbox(args: argparse.Namespace) -> int:
    if args.workers > 1:
        print(
            "vapi-proxy serve --sandbox runs one worker (the simulator lives in-process)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    # The ledger is throwaway: its folder goes when the sandbox stops, however it stops short
    # of SIGKILL (a config error, Ctrl-C, SIGTERM, an exception).
    with tempfile.TemporaryDirectory(
        prefix="vapi-proxy-sandbox-", ignore_cleanup_errors=True
    ) as scratch:
        return await _serve_sandbox_in(args, scratch)


async def _serve_sandbox_in(args: argparse.Namespace, scratch: str) -> int:
    from vapi_proxy.app import create_app
    from vapi_proxy.auth.api_key import generate_key, hash_key
    from vapi_proxy.logs import configure_logging
    from vapi_proxy.sandbox import BearerCredential, SandboxSettings, SeededAssistant
    from vapi_proxy.sandbox import create_app as create_sandbox

    path = config_path(args)
    proxy_url = f"http://{url_host(args.host)}:{args.port}"
    sandbox_url = f"http://{url_host(args.host)}:{args.sandbox_port}"
    # The demo closes the loop as in production: the simulator signs its webhooks with a
    # bearer credential, and calls the proxy creates point Vapi at the proxy's /webhook.
    webhook_token = secrets_module.token_urlsafe(32)
    demo_key = generate_key()
    try:
        settings = _load_sandbox_config(
            path,
            proxy_url=proxy_url,
            sandbox_url=sandbox_url,
            demo_hash=hash_key(demo_key),
            scratch=scratch,
            webhook_token=webhook_token,
            environ=os.environ,
        )
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    saved = sorted({p.assistant_id for p in settings.profiles.values() if p.assistant_id})
    sandbox_settings = SandboxSettings(
        host=args.host,
        port=args.sandbox_port,
        admin_enabled=True,
        assistants=[
            SeededAssistant(
                id=a, name="Sandbox assistant", voice={"provider": "vapi", "voiceId": "Elliot"}
            )
            for a in saved
        ],
        credentials=[
            BearerCredential(
                id=SANDBOX_CREDENTIAL_ID, type="bearer", token=SecretStr(webhook_token)
            )
        ],
    )
    configure_logging(settings.logging.level, settings.logging.format)
    key = sandbox_settings.private_key
    proxy_app = create_app(settings, Secrets(vapi_api_key=SecretStr(key.get_secret_value())))
    # The console's own port is a second socket of the proxy's one server, as in `serve`.
    proxy_config = uvicorn.Config(proxy_app, **uvicorn_kwargs(args, settings))
    # Every port is bound before the banner says where to go: a simulator port in use used to
    # fail after it, inside the server, with a traceback.
    proxy_sockets = bind_sockets(proxy_config, settings)
    try:
        simulator_socket = listen(args.host, args.sandbox_port, "the simulator, --sandbox-port")
    except CannotListenError:
        for sock in proxy_sockets:
            sock.close()
        raise
    servers = [
        _QuietServer(
            uvicorn.Config(
                create_sandbox(sandbox_settings),
                host=args.host,
                port=args.sandbox_port,
                log_level="warning",
                access_log=False,
            )
        ),
        _QuietServer(proxy_config),
    ]
    print(
        _sandbox_banner(
            settings,
            proxy_url=proxy_url,
            sandbox_url=sandbox_url,
            demo_key=demo_key,
            path=path,
        ),
        flush=True,
    )

    # Two servers share one loop: the signals stop both, and neither re-raises them on exit
    # (uvicorn's own handling would kill the process with the signal once the first one ends).
    def stop_all() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_all)
    simulator, proxy = servers
    await asyncio.gather(
        simulator.serve(sockets=[simulator_socket]), proxy.serve(sockets=proxy_sockets)
    )
    return 0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
