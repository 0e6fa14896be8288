"""``python -m bench [NAME ...] [--runs N]``: run the benchmarks (all by default)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench import (
    across,
    failover,
    forms,
    freeze,
    freeze_postgres,
    routing,
    slack_ack,
    stateless,
    volume_copy,
)
from bench.harness import check_image

BENCHMARKS: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
    stateless.NAME: stateless.main,
    volume_copy.NAME: volume_copy.main,
    freeze.NAME: freeze.main,
    freeze_postgres.NAME: freeze_postgres.main,
    routing.NAME: routing.main,
    failover.NAME: failover.main,
    slack_ack.NAME: slack_ack.main,
    forms.NAME: forms.main,
    across.NAME: across.main,
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--runs", type=int, help="repetitions of each (overrides BENCH_RUNS)")
    args = parser.parse_args(argv)
    if unknown := [n for n in args.names if n not in BENCHMARKS]:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


async def _run(name: str) -> None:
    await check_image()
    await BENCHMARKS[name]()


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in turn; exit 1 if any failed (the others still run)."""
    args = _arguments(argv)
    if args.runs is not None:
        os.environ["BENCH_RUNS"] = str(args.runs)
    failed = []
    for name in args.names or list(BENCHMARKS):
        try:
            asyncio.run(_run(name))
        except Exception as exc:  # report it and go on with the next benchmark
            print(f"\n{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
