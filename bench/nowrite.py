"""An experiment, not a product mode: `vapi-proxy` with `Ledger.record_call` replaced by a
no-op, so a bench run shows beside the real variants what the rest of `/call/web` costs.

    python -m bench.nowrite serve --config proxy.yaml --port 8080   (what `--experiments` runs)
"""

from __future__ import annotations

import sys
from typing import Any

from vapi_proxy.cli import main
from vapi_proxy.ledger.store import Ledger


async def _skip(self: Ledger, **_: Any) -> bool:
    return True


if __name__ == "__main__":
    Ledger.record_call = _skip  # type: ignore[method-assign]
    sys.exit(main())
