"""The proxy's test suite; helpers shared between test modules live in tests/support/."""

import pytest

# Helpers in tests/support/ assert too: rewrite them so a failure shows the values, as in a test.
pytest.register_assert_rewrite("tests.support")
