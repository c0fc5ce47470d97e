"""`python -m vapi_proxy` is the `vapi-proxy` command."""

import sys

from vapi_proxy.cli import main

sys.exit(main())
