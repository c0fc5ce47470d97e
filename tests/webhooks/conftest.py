"""Fixtures for webhook tests: the simulator's, from tests/support/hook_fixtures.py (shared with
the console's tests)."""

from tests.support.hook_fixtures import (  # noqa: F401  (fixtures, used by name)
    app_secret,
    clock,
    hook_sandbox,
    keys,
    make_hook_proxy,
)
