"""Benchmarks of the proxy against baselines measured in the same run: `python -m bench`.

Modules: `procs` (start, pin, sample and stop processes), `load` (wrk or a Python load
generator), `setups` (configs for the simulator, nginx and proxy variants), `run` (the
measurement plan), `report` (Markdown, JSON, PNG), `extras` (the SSE and webhook benches).
"""
