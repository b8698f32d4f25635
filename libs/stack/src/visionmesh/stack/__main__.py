"""`python -m visionmesh.stack up`: start the platform, print endpoints, Ctrl-C stops all."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from visionmesh.common.embedded import ProcessError
from visionmesh.stack._stack import Stack, data_dir_from_env


async def _up(data_dir: Path) -> int:
    stack = Stack(data_dir=data_dir)
    print(f"starting visionmesh in {stack.data_dir} (logs in {stack.logs}) ...", flush=True)
    try:
        await stack.start()
    except ProcessError as exc:
        print(f"\n{exc}\n--- last log lines ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    width = max(len(name) for name in stack.endpoints())
    print("\nvisionmesh is up:")
    for name, where in stack.endpoints().items():
        print(f"  {name.ljust(width)}  {where}")
    print("\nCtrl-C stops everything.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # `make up` is the supervisor: a process that exits is restarted with backoff, and the
    # rest of the platform keeps serving meanwhile.
    supervisor = asyncio.create_task(stack.supervise())
    await stop.wait()
    supervisor.cancel()
    print("\nstopping ...", flush=True)
    await stack.stop()
    print("stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visionmesh-stack", description=__doc__)
    parser.add_argument("command", choices=["up"])
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default $VISIONMESH_DATA_DIR or ./.visionmesh"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_up(args.data_dir or data_dir_from_env()))


if __name__ == "__main__":
    sys.exit(main())
