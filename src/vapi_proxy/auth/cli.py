"""`vapi-proxy hash-key`: make an API key (or read one on stdin) and print the hash to configure,
as a caller's API key or (`--admin`) an operator's admin key."""

from __future__ import annotations

import argparse
import sys

from vapi_proxy.auth.api_key import check_key_format, generate_key, hash_key


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the hash of an API key for the `auth.methods[].keys[].hash` setting. Without "
        "--stdin a new random key is generated and shown once: store it now, the proxy keeps "
        "only the hash."
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read an existing key from standard input instead of generating one",
    )
    parser.add_argument(
        "--name", default="my-key", help="name to put in the printed config snippet"
    )
    parser.add_argument(
        "--admin",
        action="store_true",
        help="print the snippet for an operator key (`admin.key_hashes`: the console and "
        "GET /admin/usage) instead of a caller's API key",
    )


def run(args: argparse.Namespace) -> int:
    if args.stdin:
        key = sys.stdin.readline().strip()
        try:
            check_key_format(key)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        key = generate_key()
        # Printed this once only: the proxy keeps the hash, so a lost key is replaced, not found.
        print(f"key:  {key}")
        print("      (shown once: give it to the caller now; the proxy stores only the hash)")
    digest = hash_key(key)
    print(f"hash: {digest}")
    if args.admin:
        print("config (send the key as Authorization: Bearer <key> to /admin/...):")
        print("admin:")
        print("  key_hashes:")
        print(f"    - {digest}")
        return 0
    print("config:")
    print(f"  - name: {args.name}")
    print(f"    hash: {digest}")
    return 0
