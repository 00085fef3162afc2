"""`python -m junodcs.wms.pilot --server URL --site S --ce C ...`: the pilot without the `dcs` CLI.

This is what CE backends start on worker nodes: it needs only the standard library, httpx and the client
side of junodcs (so it also runs from a bare PYTHONPATH inside a batch system's chroot or container).
`dcs pilot` takes the same options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcs pilot", description="Run a junodcs pilot on this worker node.")
    p.add_argument("--server", required=True, help="central server URL")
    p.add_argument("--site", required=True)
    p.add_argument("--ce", required=True)
    p.add_argument("--pilot-id", default=None, help="pilot reference (default: a new unique one)")
    p.add_argument("--token-file", default=None, help="file holding the pilot's access token (re-read when changed)")
    p.add_argument("--client-id", default=None, help="robot client with the Pilot property")
    p.add_argument("--client-secret-file", default=None)
    p.add_argument("--ca-file", default=None, help="CA bundle that signs the server's certificate")
    p.add_argument("--memory-mb", type=int, default=2000)
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--platform", default=None)
    p.add_argument("--tag", action="append", default=[], dest="tags")
    p.add_argument("--required-tag", action="append", default=[], dest="required_tags")
    p.add_argument("--job-type", action="append", default=[], dest="job_types")
    p.add_argument("--lifetime", type=float, default=86400.0, help="seconds this pilot may run")
    p.add_argument("--min-time-left", type=float, default=360.0)
    p.add_argument("--max-jobs", type=int, default=None)
    p.add_argument("--max-wall", type=float, default=None, help="most wall-clock seconds per payload")
    p.add_argument("--stop-after-failed-matches", type=int, default=1)
    p.add_argument("--workdir", default=None)
    p.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--poll", type=float, default=0.2)
    p.add_argument("--retry-seconds", type=float, default=300.0)
    p.add_argument("--keep-workdir", action="store_true")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from junodcs.core.client import ClientConfig
    from junodcs.core.errors import DCSError
    from junodcs.wms.pilot.pilot import PilotOptions, TokenSource, run_pilot

    config = ClientConfig.load()
    config.server_url = args.server
    if args.ca_file:
        config.ca_file = args.ca_file
    secret = Path(args.client_secret_file).read_text().strip() if args.client_secret_file else None
    try:
        tokens = TokenSource(args.server, token_file=args.token_file, client_id=args.client_id,
                             client_secret=secret, config=config)
        options = PilotOptions(server_url=args.server, site=args.site, ce=args.ce, memory_mb=args.memory_mb,
                               cores=args.cores, platform=args.platform, tags=args.tags,
                               required_tags=args.required_tags, job_types=args.job_types, lifetime=args.lifetime,
                               min_time_left=args.min_time_left, max_jobs=args.max_jobs, max_wall=args.max_wall,
                               stop_after_failed_matches=args.stop_after_failed_matches,
                               workdir=Path(args.workdir or Path.cwd() / "pilot-work").resolve(), grace=args.grace,
                               poll=args.poll, keep_workdir=args.keep_workdir, retry_seconds=args.retry_seconds)
        if args.pilot_id:
            options.pilot_id = args.pilot_id
        return run_pilot(options, tokens, config)
    except DCSError as exc:
        print(f"error[{exc.code}]: {exc.detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
