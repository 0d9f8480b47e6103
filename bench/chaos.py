"""Run the streaming chaos scenario for many seeds (not part of CI).

``python -m bench.chaos --rounds 20 --seed 1`` runs seeds 1..20 one after the
other, each on a fresh broker (Tansu on s3 storage against a local moto
server, so that the broker itself can be restarted), and prints one line per
round and a summary. It stops at the first failing round unless
``--keep-going``; the failing round's worker logs stay in its directory.
``--memory`` runs on the test broker's memory storage instead (no broker
restart), where heavier rounds fit: ``--memory --steps 30 --disruptions 12``
is the churn of issue 9's report. The scenario and its checks are in
``tests/streaming/chaos.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests import servers
from tests.streaming import chaos


async def _round(config: chaos.Config, verbose: bool, memory: bool) -> chaos.Report:
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{config.seed}-"))
    log = print if verbose else lambda line: None
    if memory:
        tansu = servers.tansu(workdir).start()
        try:
            report = await chaos.run(config, workdir, f"127.0.0.1:{tansu.port}", None, log=log)
        finally:
            tansu.stop()
    else:
        broker = chaos.Broker(workdir)
        try:
            bootstrap = broker.start()
            restart = broker.restart if config.restart_broker else None
            report = await chaos.run(config, workdir, bootstrap, restart, log=log)
        finally:
            broker.stop()
    if report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="seed of the first round")
    parser.add_argument("--workflows", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--disruptions", type=int, default=6)
    parser.add_argument("--fetch-wait-ms", type=int, default=chaos.Config.fetch_wait_ms)
    parser.add_argument("--no-broker-restart", action="store_true")
    parser.add_argument(
        "--memory", action="store_true", help="memory storage: no broker restart, faster"
    )
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each disruption")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the broker restart is expected
    clean = 0
    durations = []
    started = time.monotonic()
    for seed in range(args.seed, args.seed + args.rounds):
        config = chaos.Config(
            seed=seed,
            workflows=args.workflows,
            steps=args.steps,
            partitions=args.partitions,
            disruptions=args.disruptions,
            fetch_wait_ms=10 if args.memory else args.fetch_wait_ms,
            restart_broker=not (args.no_broker_restart or args.memory),
        )
        report = asyncio.run(_round(config, args.verbose, args.memory))
        print(report.summary(), flush=True)
        if report.ok:
            clean += 1
            durations.append(report.finished - report.started)
            continue
        for problem in report.problems:
            print(f"  {problem}", flush=True)
        if not args.keep_going:
            break
    total = time.monotonic() - started
    print(
        f"{clean} of {args.rounds} rounds clean in {total:.0f}s"
        + (f"; workflows done in {min(durations):.1f}-{max(durations):.1f}s" if durations else "")
    )
    return 0 if clean == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
