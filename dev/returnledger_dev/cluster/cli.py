"""``returnledger cluster start|stop|status`` (a ``returnledger.commands`` entry point)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from returnledger_dev.cluster.processes import ClusterError, start, status, stop
from returnledger_dev.cluster.spec import spec_from_env


def _cmd_cluster(args) -> int:
    root = Path(args.root) if args.root else None
    if args.action == "start":
        try:
            start(spec_from_env(root, port=args.port, workers=args.workers, fresh=args.fresh))
        except ClusterError as e:
            print(f"cluster: {e}", file=sys.stderr)
            return 1
        print("stop it with: make cluster-stop (or returnledger cluster stop)")
    elif args.action == "stop":
        stop(root)
    else:
        print(json.dumps(status(root), indent=1, default=str))
    return 0


def register(subparsers) -> None:
    """`returnledger cluster start|stop|status`."""
    p = subparsers.add_parser(
        "cluster",
        help="local Airflow on CeleryExecutor: api-server, scheduler, "
        "dag-processor, triggerer, two Celery workers",
    )
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument(
        "--port", type=int, default=None, help="api-server port (default 8080 or RETURNLEDGER_CLUSTER_PORT)"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="start with an empty Airflow metadata database")
    p.add_argument("--root", default=None, help="state folder (default .local/cluster)")
    p.set_defaults(func=_cmd_cluster)
