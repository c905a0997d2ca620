"""Measurements that print tables and write JSON; not tests."""

import json
from pathlib import Path


def emit(result: dict, out: Path) -> dict:
    """Write `result` as JSON to `out` (atomically), print its "markdown" table and where it went."""
    from dreamenv.atomic import atomic_write_bytes  # here: a benchmark sets JAX's options before dreamenv loads

    atomic_write_bytes(out, json.dumps(result, indent=1).encode())
    print(result["markdown"])
    print(f"-> {out}")
    return result
