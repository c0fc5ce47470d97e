"""Load the deployment files under deploy/ (compose, Kubernetes) for the checks."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATION = KUBERNETES / "kustomization.yaml"
SECRET_TEMPLATE = KUBERNETES / "secret.example.yaml"


@functools.cache
def load_all(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of `path` (cached: callers only read them)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise TypeError(f"{path.name}: a document is not a mapping")
    return docs


def kubernetes_files() -> list[Path]:
    """Every Kubernetes manifest (the kustomization itself excluded)."""
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p != KUSTOMIZATION)


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in kubernetes_files() for doc in load_all(path)]


def find(kind: str) -> dict[str, Any]:
    found = [doc for _path, doc in kubernetes_objects() if doc.get("kind") == kind]
    if len(found) != 1:
        raise LookupError(f"expected one {kind}, found {len(found)}")
    return found[0]


def deployment() -> dict[str, Any]:
    return find("Deployment")


def compose() -> dict[str, Any]:
    (doc,) = load_all(DEPLOY / "compose.yaml")
    return doc
