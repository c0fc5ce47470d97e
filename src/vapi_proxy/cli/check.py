"""`vapi-proxy check`: validate a config, cross-check it, print the resolved profiles, and
optionally explain a token or probe the identity providers and Vapi."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import yaml

from vapi_proxy.cli.common import EXIT_CONFIG, config_path, print_problems
from vapi_proxy.settings import ConfigError, Settings, load_secrets, load_settings


def describe_profiles(settings: Settings) -> dict[str, Any]:
    """The resolved profiles as `check` prints them (what each name will start)."""
    from vapi_proxy.policy.compiled import compile_profiles

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

    path = config_path(args)
    if path is None:
        print("vapi-proxy check: give --config PATH (or set VAPI_PROXY_CONFIG)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print_problems(exc)
        return EXIT_CONFIG
    print(f"{path}: OK, {len(settings.profiles)} profile(s)")
    print(yaml.safe_dump({"profiles": describe_profiles(settings)}, sort_keys=False).rstrip())
    findings = lint(settings)
    if args.online:
        try:
            key = load_secrets().vapi_api_key
        except ConfigError as exc:
            print_problems(exc)
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
