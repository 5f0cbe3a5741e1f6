"""`python -m backups.jobs <kind> <params JSON>`: one job, in a process of its own."""

from __future__ import annotations

import importlib
import json
import signal
import sys

from backups.jobs.protocol import Reporter

# Each kind's pure entry point: a module with `run(params, reporter) -> int` (the exit status).
ENTRY_POINTS = {
    "verify": "backups.verification.job",
    "offsite": "backups.offsite.job",
    "restore": "backups.restore.job",
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ENTRY_POINTS:
        print(f"usage: python -m backups.jobs {{{'|'.join(ENTRY_POINTS)}}} <params JSON>", file=sys.stderr)
        return 2
    try:
        params = json.loads(argv[2])
    except ValueError:
        print("the job's parameters are not JSON", file=sys.stderr)
        return 2
    # Cancel and timeout end the job's group with SIGTERM: unwind (finally blocks drop scratch
    # databases, remove half-written folders) rather than die where it stands.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    module = importlib.import_module(ENTRY_POINTS[argv[1]])
    return int(module.run(params, Reporter()))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
