"""Helpers shared by the test suite, one module per concern. Fixtures are registered in
conftest.py files; those two test packages share are defined here (`hook_fixtures`) and
imported by each package's conftest.py.

Import them one way everywhere: `from tests.support.<module> import name`. No test module
imports from another test module or from a conftest.py.
"""
