"""An upload in a process of its own, for the tests that kill one half-way and resume in another.

The job comes as JSON in OFFSITE_CHILD_JOB; `pause` seconds are slept at every `should_stop()` check
(once per part), so the parent can see parts arrive and kill the process between them."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    from backups.offsite import StoreSettings, upload_backup

    job = json.loads(os.environ["OFFSITE_CHILD_JOB"])
    folder = Path(job["folder"])
    pause = float(job.get("pause", 0))

    def should_stop() -> bool:
        if pause:
            time.sleep(pause)
        return False

    result = upload_backup(
        StoreSettings(**job["store"]),
        job["backup_id"],
        [(rel, size) for rel, size in job["listing"]],
        lambda rel: open(folder / rel, "rb"),  # noqa: SIM115  (the uploader closes it)
        metadata=job.get("metadata", {}),
        state_dir=Path(job["state_dir"]),
        recipients=job.get("recipients", []),
        should_stop=should_stop,
        part_size=int(job["part_size"]),
        concurrency=int(job.get("concurrency", 1)),
    )
    print(json.dumps(result.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
