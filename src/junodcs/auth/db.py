"""Tables and SQL of the token issuer: signing keys, OAuth clients, refresh tokens.

Why these shapes:

* Signing keys live in the database, not in files, so that every server process against one database
  signs with, and publishes, the same keys, and a rotation done by one process is seen by all. A retired
  key stays published (`publish_until`) until every token it signed has expired.
* A client secret is stored only as a scrypt hash; a refresh token only as its SHA-256 (it is a long
  random string, so a fast hash is enough and lets us look it up by hash). A database dump leaks no
  usable credential.
* Refresh tokens rotate: each use marks the row used and issues a successor in the same `family_id`.
  Presenting a used token again means it was copied, so the whole family is revoked (OAuth 2.0 Security
  BCP, refresh token rotation with reuse detection).

All times are stored as naive UTC (`UTCDateTime`) so SQLite, PostgreSQL and MariaDB agree. Every indexed
string has a length (MariaDB cannot index unbounded TEXT, nor use it as a primary key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    String,
    Table,
    Text,
    TypeDecorator,
    delete,
    insert,
    or_,
    select,
    update,
)

from junodcs.db.metadata import metadata


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (identical on the three back ends)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


signing_keys = Table(
    "auth_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("private_key_pem", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime, nullable=True, comment="no longer signs new tokens after this"),
    Column("publish_until", UTCDateTime, nullable=True, comment="dropped from the JWKS after this"),
)

oauth_clients = Table(
    "auth_clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("secret_hash", String(255), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("group_name", String(64), nullable=False),
    Column("scopes", Text, nullable=False, comment="space-separated allowed scopes"),
    Column("description", String(255), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Index("ix_auth_clients_owner", "owner"),
)

refresh_tokens = Table(
    "auth_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True, comment="hex SHA-256 of the opaque token"),
    Column("family_id", String(36), nullable=False),
    Column("username", String(64), nullable=False),
    Column("group_name", String(64), nullable=False),
    Column("client_id", String(128), nullable=True),
    Column("scopes", Text, nullable=False),
    Column("audience", Text, nullable=False, comment="space-separated audiences of the access tokens"),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Index("ix_auth_refresh_tokens_family_id", "family_id"),
    Index("ix_auth_refresh_tokens_username", "username"),
    Index("ix_auth_refresh_tokens_expires_at", "expires_at"),
)


# -- signing keys ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    kid: str
    algorithm: str
    private_key_pem: str
    created_at: datetime
    retired_at: datetime | None
    publish_until: datetime | None


def _key_row(row: Any) -> SigningKeyRow:
    return SigningKeyRow(
        kid=row.kid,
        algorithm=row.algorithm,
        private_key_pem=row.private_key_pem,
        created_at=row.created_at,
        retired_at=row.retired_at,
        publish_until=row.publish_until,
    )


def insert_signing_key(conn: Connection, kid: str, algorithm: str, pem: str, now: datetime) -> None:
    conn.execute(
        insert(signing_keys).values(kid=kid, algorithm=algorithm, private_key_pem=pem, created_at=now)
    )


def active_signing_key(conn: Connection) -> SigningKeyRow | None:
    """The newest key that is not retired (two processes may race to create one: the newest wins)."""
    row = conn.execute(
        select(signing_keys)
        .where(signing_keys.c.retired_at.is_(None))
        .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid.desc())
        .limit(1)
    ).first()
    return _key_row(row) if row else None


def published_signing_keys(conn: Connection, now: datetime) -> list[SigningKeyRow]:
    rows = conn.execute(
        select(signing_keys)
        .where(or_(signing_keys.c.publish_until.is_(None), signing_keys.c.publish_until > now))
        .order_by(signing_keys.c.created_at.desc())
    )
    return [_key_row(r) for r in rows]


def retire_signing_keys(conn: Connection, except_kid: str, now: datetime, publish_until: datetime) -> None:
    conn.execute(
        update(signing_keys)
        .where(signing_keys.c.kid != except_kid, signing_keys.c.retired_at.is_(None))
        .values(retired_at=now, publish_until=publish_until)
    )


def purge_unpublished_keys(conn: Connection, now: datetime) -> int:
    """Delete private keys nobody can need any more (past their publication window)."""
    result = conn.execute(
        delete(signing_keys).where(signing_keys.c.publish_until.is_not(None), signing_keys.c.publish_until <= now)
    )
    return result.rowcount or 0


# -- OAuth clients -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRow:
    client_id: str
    secret_hash: str
    owner: str
    group: str
    scopes: tuple[str, ...]
    description: str
    created_at: datetime
    disabled: bool

    def public_view(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "owner": self.owner,
            "group": self.group,
            "scopes": list(self.scopes),
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "disabled": self.disabled,
        }


def _client_row(row: Any) -> ClientRow:
    return ClientRow(
        client_id=row.client_id,
        secret_hash=row.secret_hash,
        owner=row.owner,
        group=row.group_name,
        scopes=tuple(row.scopes.split()),
        description=row.description or "",
        created_at=row.created_at,
        disabled=bool(row.disabled),
    )


def insert_client(
    conn: Connection,
    *,
    client_id: str,
    secret_hash: str,
    owner: str,
    group: str,
    scopes: tuple[str, ...],
    description: str,
    now: datetime,
) -> None:
    conn.execute(
        insert(oauth_clients).values(
            client_id=client_id,
            secret_hash=secret_hash,
            owner=owner,
            group_name=group,
            scopes=" ".join(scopes),
            description=description,
            created_at=now,
            disabled=False,
        )
    )


def get_client(conn: Connection, client_id: str) -> ClientRow | None:
    row = conn.execute(select(oauth_clients).where(oauth_clients.c.client_id == client_id)).first()
    return _client_row(row) if row else None


def list_clients(conn: Connection, owner: str | None = None) -> list[ClientRow]:
    query = select(oauth_clients).order_by(oauth_clients.c.created_at, oauth_clients.c.client_id)
    if owner is not None:
        query = query.where(oauth_clients.c.owner == owner)
    return [_client_row(r) for r in conn.execute(query)]


def delete_client(conn: Connection, client_id: str) -> bool:
    return bool(conn.execute(delete(oauth_clients).where(oauth_clients.c.client_id == client_id)).rowcount)


# -- refresh tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshRow:
    token_hash: str
    family_id: str
    username: str
    group: str
    client_id: str | None
    scopes: tuple[str, ...]
    audience: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


def _refresh_row(row: Any) -> RefreshRow:
    return RefreshRow(
        token_hash=row.token_hash,
        family_id=row.family_id,
        username=row.username,
        group=row.group_name,
        client_id=row.client_id,
        scopes=tuple(row.scopes.split()),
        audience=tuple(row.audience.split()),
        issued_at=row.issued_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
    )


def insert_refresh_token(
    conn: Connection,
    *,
    token_hash: str,
    family_id: str,
    username: str,
    group: str,
    client_id: str | None,
    scopes: tuple[str, ...],
    audience: tuple[str, ...],
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    conn.execute(
        insert(refresh_tokens).values(
            token_hash=token_hash,
            family_id=family_id,
            username=username,
            group_name=group,
            client_id=client_id,
            scopes=" ".join(scopes),
            audience=" ".join(audience),
            issued_at=issued_at,
            expires_at=expires_at,
        )
    )


def get_refresh_token(conn: Connection, token_hash: str) -> RefreshRow | None:
    row = conn.execute(select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)).first()
    return _refresh_row(row) if row else None


def mark_refresh_token_used(conn: Connection, token_hash: str, now: datetime) -> bool:
    """Atomically claim a refresh token; False if it was already used or revoked (a replay or a race)."""
    result = conn.execute(
        update(refresh_tokens)
        .where(
            refresh_tokens.c.token_hash == token_hash,
            refresh_tokens.c.used_at.is_(None),
            refresh_tokens.c.revoked_at.is_(None),
        )
        .values(used_at=now)
    )
    return result.rowcount == 1


def revoke_family(conn: Connection, family_id: str, now: datetime) -> int:
    result = conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount or 0


def purge_expired_refresh_tokens(conn: Connection, now: datetime) -> int:
    return conn.execute(delete(refresh_tokens).where(refresh_tokens.c.expires_at <= now)).rowcount or 0
