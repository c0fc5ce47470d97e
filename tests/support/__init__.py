"""Helpers shared by the test suite, one module per concern; fixtures stay in conftest.py files.

Import them one way everywhere: `from tests.support.<module> import name`. No test module
imports from another test module or from a conftest.py.
"""
