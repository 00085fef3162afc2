"""Transfer service (FTS3-like): queued file transfers per link, executed by HTTP-TPC, retried, verified.

* `models`   the FTS3 wire format (submit body, job and file records) and link/SE configuration;
* `db`       tables and SQL;
* `logic`    the state machines (one transition table each), error classification, checksum rules,
             scheduling and the `TransferService` the router, the agents and other systems call;
* `optimizer` the per-link concurrency optimizer (FTS3's algorithm);
* `agents`   transfer workers (claim files with leases, run copies), staging/archiving pollers, optimizer;
* `shaping`  token-bucket link shaping used by the local grid's SEs;
* `router`   the FTS3-compatible REST API at `/fts` and monitoring at `/api/v1/transfer`;
* `client`   the HTTP client (CLI, request management system, other services).
"""
