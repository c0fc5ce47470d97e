"""Webhooks: Vapi's server messages to the proxy — verification, settlement, answers, forwarding."""
