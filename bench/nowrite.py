"""An experiment, not a product mode: `vapi-proxy` with `Ledger.record_call` replaced by a
no-op, so a bench run shows beside the real variants what the rest of `/call/web` costs.

    python -m bench.nowrite serve --config proxy.yaml --port 8080   (what `--experiments` runs)

The patch is applied at import, not under `__main__`: `vapi-proxy serve` starts its worker
with multiprocessing's spawn, which re-imports this module (as `__mp_main__`) in the worker.
"""

from __future__ import annotations

import sys
from typing import Any

from vapi_proxy.ledger.store import Ledger


async def _skip(self: Ledger, **_: Any) -> bool:
    return True


Ledger.record_call = _skip  # type: ignore[method-assign]

if __name__ == "__main__":
    from vapi_proxy.cli import main

    sys.exit(main())
