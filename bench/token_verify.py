"""Warm-cache access-token verification rate of `TokenVerifier` against a bare PyJWT `jwt.decode`
with a fixed ES256 key (issue: >= 5,000 tokens/s in one process).

`token_verify`: keys cached, every token's signature checked (the verified-token cache is off), so
it compares like with like against the baseline; the verifier also applies the issuer, kid, WLCG
profile, audience and leeway rules. `token_verify_repeat`: the verifier as deployed, where a client
presents the same token many times and only the time claims are re-checked after the first time.

Prints JSON lines: {"bench", "value", "unit", "baseline", "baseline_value", "ratio"}.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import jwt

SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
DISTINCT_TOKENS = 200


def rate(function, tokens: list[str]) -> float:
    """Tokens per second over at least SECONDS of wall time (cycling through distinct tokens)."""
    for token in tokens[:20]:
        function(token)  # warm caches
    count = 0
    start = time.perf_counter()
    deadline = start + SECONDS
    while True:
        for token in tokens:
            function(token)
        count += len(tokens)
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DCS_HOME"] = tmp
        from junodcs.auth.registry import Registry
        from junodcs.auth.tokens import WLCG_ANY_AUDIENCE, TokenIssuer, TokenVerifier
        from junodcs.core.gridconfig import example_grid_path, load_grid_config
        from junodcs.db.engine import create_engine
        from junodcs.db.migrate import upgrade

        engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade(engine)
        grid = load_grid_config(example_grid_path())
        issuer = TokenIssuer(engine, "https://dcs.example.org", Registry(grid))
        verifier = TokenVerifier(("https://dcs.example.org",), issuer, (), verified_cache_size=0)
        deployed = TokenVerifier(("https://dcs.example.org",), issuer, ())
        scopes = ("compute.read", "compute.create", "storage.read:/juno", "storage.modify:/juno/user/a/alice")
        tokens = [issuer.issue_access_token(username="alice", group="juno_user", scopes=scopes)[0]
                  for _ in range(DISTINCT_TOKENS)]
        public_key = issuer.signing_key().private_key.public_key()

        def baseline(token: str) -> object:
            return jwt.decode(token, public_key, algorithms=["ES256"], audience=WLCG_ANY_AUDIENCE)

        baseline_value = rate(baseline, tokens)
        value = rate(verifier.verify, tokens)
        repeat_value = rate(deployed.verify, tokens)
        engine.dispose()
    for name, measured in (("token_verify", value), ("token_verify_repeat", repeat_value)):
        print(json.dumps({
            "bench": name,
            "value": round(measured, 1),
            "unit": "tokens/s",
            "baseline": "pyjwt_decode_es256",
            "baseline_value": round(baseline_value, 1),
            "ratio": round(measured / baseline_value, 3),
        }))


if __name__ == "__main__":
    main()
