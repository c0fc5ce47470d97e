"""Example configurations shipped with the package (used by `vapi-proxy serve --sandbox`)."""
