"""Upstream: the one seam through which the proxy speaks to Vapi."""
