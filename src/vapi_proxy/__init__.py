"""vapi-proxy: a backend that stands between an app's users and Vapi.

The browser's Web SDK talks to the proxy as if it were Vapi; the proxy decides who the caller is
and what they may start, then calls Vapi with the private key.
"""

__version__ = "0.1.0"
