"""The `vapi-proxy` command: serve, check, sandbox, db, usage, hash-key.

Options map onto settings; anything not given here comes from the config file or the
environment (`VAPI_PROXY__SECTION__FIELD`). A bad config exits with status 2 and names the field.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import os
import secrets as secrets_module
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from pydantic import SecretStr
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from vapi_proxy import __version__
from vapi_proxy.auth import cli as auth_cli
from vapi_proxy.ledger import cli as ledger_cli
from vapi_proxy.sandbox import cli as sandbox_cli
from vapi_proxy.settings import (
    ConfigError,
    Secrets,
    Settings,
    apply_environment,
    load_secrets,
    load_settings,
    parse_settings,
    read_config_file,
    read_yaml,
)

EXIT_CONFIG = 2
SANDBOX_WEBHOOK_ENV = "VAPI_PROXY_SANDBOX_WEBHOOK_TOKEN"
SANDBOX_CREDENTIAL_ID = "sandbox-webhook"
logger = logging.getLogger("vapi_proxy.cli")


def _print_problems(error: ConfigError) -> None:
    print("vapi-proxy: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def example_config_text() -> str:
    return files("vapi_proxy.examples").joinpath("sandbox.yaml").read_text(encoding="utf-8")


def _config_path(args: argparse.Namespace) -> str | None:
    path: str | None = args.config or os.environ.get("VAPI_PROXY_CONFIG")
    return path


def describe_profiles(settings: Settings) -> dict[str, Any]:
    """The resolved profiles as `check` prints them (what each name will start)."""
    from vapi_proxy.policy.webcall import compile_profiles

    out: dict[str, Any] = {}
    for name, compiled in compile_profiles(settings.profiles).items():
        profile = compiled.profile
        target = {
            k: (v if k.endswith("Id") else f"<transient {k}>") for k, v in compiled.target.items()
        }
        out[name] = {
            "target": target,
            "max_duration_seconds": compiled.max_duration_seconds,
            "client_variables": {
                k: v.model_dump(exclude_defaults=True) or {"type": "string"}
                for k, v in profile.client_variables.items()
            },
            "server_variables": sorted(profile.variables),
            "access": profile.access.model_dump(exclude_defaults=True) or "signed-in callers",
            "expose": profile.expose,
        }
    return out


def cmd_check(args: argparse.Namespace) -> int:
    """Validate, cross-check, and optionally explain a token or probe the providers and Vapi.

    Exit status: 0 when nothing would stop the config from working (warnings allowed), 2 when
    it is invalid or a cross-check (or, with --online, a probe) found an error.
    """
    from vapi_proxy.configcheck import explain_token, lint, probe_online

    path = _config_path(args)
    if path is None:
        print("vapi-proxy check: give --config PATH (or set VAPI_PROXY_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    print(f"{path}: OK, {len(settings.profiles)} profile(s)")
    print(yaml.safe_dump({"profiles": describe_profiles(settings)}, sort_keys=False).rstrip())
    findings = lint(settings)
    if args.online:
        try:
            key = load_secrets().vapi_api_key
        except ConfigError as exc:
            _print_problems(exc)
            return EXIT_CONFIG
        findings += asyncio.run(
            probe_online(settings, key.get_secret_value() if key is not None else None)
        )
    for finding in findings:
        print(finding, file=sys.stdout if finding.severity == "ok" else sys.stderr)
    failed = any(f.severity == "error" for f in findings)
    if args.token is not None:
        from_stdin = args.token == "-"  # noqa: S105 (a CLI convention, not a password)
        given = sys.stdin.readline() if from_stdin else args.token
        report = asyncio.run(explain_token(settings, given))
        print("\n".join(report.lines))
        failed = failed or not report.admitted
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    if errors or warnings:
        print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return EXIT_CONFIG if failed else 0


def _uvicorn_kwargs(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return {
        "host": args.host,
        "port": args.port,
        "log_level": settings.logging.level,
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,  # the proxy's own trusted_proxies decide, not uvicorn
        "timeout_graceful_shutdown": settings.server.drain_seconds,
    }


def _validate_for_serve(path: str) -> Settings:
    """Everything `serve` (and a reload) checks before any worker starts."""
    settings = load_settings(path)
    secrets = load_secrets()
    if secrets.vapi_api_key is None:
        raise ConfigError(
            [
                "VAPI_API_KEY: not set (or set VAPI_API_KEY_FILE); "
                "to try the proxy without a key run: vapi-proxy serve --sandbox"
            ]
        )
    return settings


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, with a reload (SIGHUP) that validates the config first.

    uvicorn brings each replacement worker into service before retiring the old one and keeps
    the old one when the new one does not get ready, so a reload drops no request; checking
    the config here first means a bad edit is refused with a log line instead of tried.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        path: str,
        status_file: Path | None = None,
        metrics_dir: _MetricsDirectory | None = None,
    ) -> None:
        super().__init__(config, sockets)
        self.path = path
        self.status_file = status_file
        self.metrics_dir = metrics_dir
        self._worker_pids: set[int] = set()

    def handle_hup(self) -> None:
        try:
            _validate_for_serve(self.path)
        except ConfigError as exc:
            logger.error(
                "reload refused: the new configuration is invalid; the old one keeps serving",
                extra={"fields": {"problems": exc.problems}},
            )
            _write_reload_status(self.status_file, exc.problems)
            return
        logger.info("reloading: starting workers with the new configuration")
        before = list(self.processes)
        super().handle_hup()
        stuck = sum(old is new for old, new in zip(before, self.processes, strict=False))
        _write_reload_status(
            self.status_file,
            [f"{stuck} new worker(s) did not get ready; the old ones keep serving (see the log)"]
            if stuck
            else [],
        )

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._forget_gone_workers()

    def _forget_gone_workers(self) -> None:
        """Tell prometheus_client about workers that are gone (replaced by a reload, or died):
        their counters and histograms stay in the sum, their `live*` gauges must not."""
        from prometheus_client import multiprocess as prometheus_multiprocess

        current = {p.pid for p in self.processes if p.pid is not None}
        gone, self._worker_pids = self._worker_pids - current, current
        if self.metrics_dir is not None:
            for pid in gone:
                prometheus_multiprocess.mark_process_dead(pid, self.metrics_dir.path)  # type: ignore[no-untyped-call]

    def startup_failed(self) -> bool:
        return any(p.exitcode == STARTUP_FAILURE for p in self.processes)


def cmd_serve(args: argparse.Namespace) -> int:
    from vapi_proxy.logs import configure_logging

    if args.sandbox:
        return asyncio.run(_serve_sandbox(args))
    path = _config_path(args)
    if path is None:
        print(
            "vapi-proxy serve: give --config PATH (or set VAPI_PROXY_CONFIG), "
            "or try it without a Vapi account: vapi-proxy serve --sandbox",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.workers < 1:
        print("vapi-proxy serve: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = _validate_for_serve(path)
        memory = settings.limits.backend.startswith("memory")
        if args.workers > 1 and memory and settings.limits.rules:
            raise ConfigError(
                [
                    "limits.backend: memory:// counts per process, so with --workers "
                    f"{args.workers} every limit would be {args.workers} times too loose; use "
                    "sqlite:///path.db (one machine) or redis://... (several machines)"
                ]
            )
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format)
    # Workers are started (and, on SIGHUP, replaced) by a supervisor process, which also
    # means SIGTERM ends in exit status 0 after the drain. Each worker builds the app from
    # the config named here; metrics of all workers are summed through files in this folder.
    os.environ["VAPI_PROXY_CONFIG"] = str(Path(path).resolve())
    metrics_dir = _metrics_directory()
    config = uvicorn.Config(
        "vapi_proxy.app:app_from_environment",
        factory=True,
        workers=args.workers,
        # A replacement worker imports the whole app and migrates/opens its stores before it
        # answers the supervisor; on a busy host that takes a while, and giving up early
        # aborts a reload.
        timeout_worker_healthcheck=60,
        **_uvicorn_kwargs(args, settings),
    )
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n", encoding="utf-8")
    metrics_server = None
    if settings.metrics.enabled and settings.metrics.port is not None:
        metrics_server = _serve_metrics_port(args.host, settings.metrics.port)
    status_file = _reload_status_path(args.pid_file) if args.pid_file else None
    sockets = [config.bind_socket()]
    if settings.admin.key_hashes and settings.admin.port is not None:
        # The console's own port: every worker listens on it too; the admin routes answer only
        # there (and only from admin.allowed_networks).
        admin_config = uvicorn.Config(config.app, host=args.host, port=settings.admin.port)
        sockets.append(admin_config.bind_socket())
    supervisor = _Supervisor(config, sockets, path, status_file, metrics_dir)
    print(
        f"vapi-proxy {__version__} listening on http://{_url_host(args.host)}:{args.port} "
        f"({args.workers} worker(s), config {path})",
        flush=True,
    )
    try:
        supervisor.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)
        if status_file is not None:
            status_file.unlink(missing_ok=True)
        if metrics_dir.created:
            shutil.rmtree(metrics_dir.path, ignore_errors=True)
    return 1 if supervisor.startup_failed() else 0


@dataclass(frozen=True)
class _MetricsDirectory:
    path: str
    created: bool
    """True when `serve` made it (and removes it on exit); False when the operator named it."""


def _metrics_directory() -> _MetricsDirectory:
    """Where every worker keeps its metric values (`PROMETHEUS_MULTIPROC_DIR`), for any number
    of workers: a scrape sums the files of all workers, those a reload or a crash replaced
    included, so no event is lost with its worker. Even one worker is replaced on SIGHUP, and
    its in-memory counters would go with it. An operator's own folder is used as it is."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return _MetricsDirectory(given, created=False)
    made = tempfile.mkdtemp(prefix="vapi-proxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return _MetricsDirectory(made, created=True)


def _serve_metrics_port(host: str, port: int) -> Any:
    """Serve every worker's metrics, summed, on their own port from the supervisor."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as prometheus_multiprocess

    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reload_status_path(pid_file: str) -> Path:
    """Where the supervisor reports each reload's outcome, beside its pid file."""
    return Path(f"{pid_file}.reload.json")


def _write_reload_status(path: Path | None, problems: list[str]) -> None:
    """Record a reload's outcome for `vapi-proxy reload`, which waits for the sequence to move."""
    if path is None:
        return
    previous = _read_reload_status(path)
    status = {"seq": int(previous.get("seq", 0)) + 1, "ok": not problems, "problems": problems}
    scratch = path.with_name(path.name + ".tmp")
    try:
        scratch.write_text(json.dumps(status), encoding="utf-8")
        os.replace(scratch, path)
    except OSError as exc:
        logger.warning("cannot write the reload status", extra={"fields": {"error": str(exc)}})


def _read_reload_status(path: Path) -> dict[str, Any]:
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate the config, ask the running proxy (by its pid file) to reload it, and wait for
    the outcome: exit 0 once new workers serve it, 2 if the proxy refused it, 1 without an
    answer in time."""
    path = _config_path(args)
    if path is not None:
        try:
            # The file only: the key lives in the server's environment, which the supervisor
            # checks itself before it replaces any worker.
            load_settings(path)
        except ConfigError as exc:
            _print_problems(exc)
            return EXIT_CONFIG
    try:
        pid = int(Path(args.pid_file).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        print(f"vapi-proxy reload: cannot read a pid from {args.pid_file}", file=sys.stderr)
        return 1
    status_file = _reload_status_path(args.pid_file)
    before = int(_read_reload_status(status_file).get("seq", 0))
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"vapi-proxy reload: no process {pid} (is the proxy running?)", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}; waiting for the new workers (up to {args.wait:g} s)", flush=True)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = _read_reload_status(status_file)
        if int(status.get("seq", 0)) > before:
            if status.get("ok"):
                print("reloaded: the proxy now serves the new configuration")
                return 0
            print(
                "vapi-proxy reload: refused; the proxy keeps serving the old configuration:",
                file=sys.stderr,
            )
            for problem in status.get("problems") or []:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_CONFIG
        time.sleep(0.1)
    print(
        f"vapi-proxy reload: no outcome from {pid} within {args.wait:g} s; see the proxy's log",
        file=sys.stderr,
    )
    return 1


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
    path: str | None, *, proxy_url: str, sandbox_url: str, demo_hash: str, scratch: str
) -> Settings:
    if path is not None:
        raw = read_config_file(path)
        base_dir: Path | None = Path(path).resolve().parent
    else:
        raw = read_yaml(example_config_text())
        base_dir = None
    rewired = _sandbox_raw(
        apply_environment(raw, os.environ),
        proxy_url=proxy_url,
        sandbox_url=sandbox_url,
        demo_hash=demo_hash,
        scratch=scratch,
    )
    return parse_settings(rewired, base_dir=base_dir, environ={})


async def _serve_sandbox(args: argparse.Namespace) -> int:
    from vapi_proxy.app import create_app
    from vapi_proxy.auth.api_key import generate_key, hash_key
    from vapi_proxy.logs import configure_logging
    from vapi_proxy.sandbox import BearerCredential, SandboxSettings, SeededAssistant
    from vapi_proxy.sandbox import create_app as create_sandbox

    if args.workers > 1:
        print(
            "vapi-proxy serve --sandbox runs one worker (the simulator lives in-process)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    path = _config_path(args)
    proxy_url = f"http://{_url_host(args.host)}:{args.port}"
    sandbox_url = f"http://{_url_host(args.host)}:{args.sandbox_port}"
    # The demo closes the loop as in production: the simulator signs its webhooks with a
    # bearer credential, and calls the proxy creates point Vapi at the proxy's /webhook.
    webhook_token = secrets_module.token_urlsafe(32)
    os.environ[SANDBOX_WEBHOOK_ENV] = webhook_token
    demo_key = generate_key()
    scratch = tempfile.mkdtemp(prefix="vapi-proxy-sandbox-")
    try:
        settings = _load_sandbox_config(
            path,
            proxy_url=proxy_url,
            sandbox_url=sandbox_url,
            demo_hash=hash_key(demo_key),
            scratch=scratch,
        )
    except ConfigError as exc:
        _print_problems(exc)
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
        _QuietServer(uvicorn.Config(proxy_app, **_uvicorn_kwargs(args, settings))),
        *(
            [
                _QuietServer(
                    uvicorn.Config(
                        proxy_app,
                        **{**_uvicorn_kwargs(args, settings), "port": settings.admin.port},
                    )
                )
            ]
            if settings.admin.key_hashes and settings.admin.port is not None
            else []
        ),
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
    await asyncio.gather(*(server.serve() for server in servers))
    return 0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vapi-proxy", description="A backend proxy for the Vapi voice-AI platform."
    )
    parser.add_argument("--version", action="version", version=f"vapi-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config (default: $VAPI_PROXY_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="run against an in-process Vapi simulator (no Vapi account needed)",
    )
    serve.add_argument(
        "--sandbox-port",
        type=int,
        default=8787,
        help="port of the in-process simulator with --sandbox (default 8787)",
    )
    serve.add_argument("--pid-file", help="write the supervisor's pid here (for `reload`)")
    serve.set_defaults(handler=cmd_serve)

    reload_cmd = commands.add_parser(
        "reload", help="validate the config, then make the running proxy reload it"
    )
    reload_cmd.add_argument("--pid-file", required=True, help="the file given to serve --pid-file")
    reload_cmd.add_argument(
        "--config", help="validate this config first (default: $VAPI_PROXY_CONFIG)"
    )
    reload_cmd.add_argument(
        "--wait",
        type=float,
        default=180,
        help="seconds to wait for the proxy to confirm the reload (default 180)",
    )
    reload_cmd.set_defaults(handler=cmd_reload)

    check = commands.add_parser(
        "check",
        help="validate a config, cross-check it, print the resolved profiles",
        description="Validate a config and cross-check its sections: errors where it cannot "
        "work, warnings where it is probably wrong. Exits 2 on any error.",
    )
    check.add_argument("--config", help="YAML config (default: $VAPI_PROXY_CONFIG)")
    check.add_argument(
        "--token",
        metavar="JWT",
        help="explain why this token (from your identity provider) would be admitted or "
        "refused, and which profiles it may start; '-' reads it from standard input",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also fetch each JWKS and issuer, prove VAPI_API_KEY works, and confirm every "
        "assistant_id, squad_id and workflow_id exists at Vapi",
    )
    check.set_defaults(handler=cmd_check)

    sandbox = commands.add_parser("sandbox", help="run the local Vapi simulator")
    sandbox_cli.configure_parser(sandbox)
    sandbox.set_defaults(handler=sandbox_cli.run)

    db = commands.add_parser("db", help="ledger database: migrate or show its revision")
    ledger_cli.configure_db_parser(db)
    db.set_defaults(handler=ledger_cli.run_db)

    usage = commands.add_parser("usage", help="calls, minutes and cost from the ledger")
    ledger_cli.configure_usage_parser(usage)
    usage.set_defaults(handler=ledger_cli.run_usage)

    hash_key = commands.add_parser("hash-key", help="hash an API key for the config")
    auth_cli.configure_parser(hash_key)
    hash_key.set_defaults(handler=auth_cli.run)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
