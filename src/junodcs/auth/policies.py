"""The access-policy mechanism every router uses. Deny by default.

Each router module defines one `AccessPolicy` subclass per system; its docstring states the rules in
words and its `allows` method encodes them. A route declares its policy with `requires(Policy, action)`
as a FastAPI dependency. The dependency authenticates the caller, evaluates the coarse rule for
`action` at once, and hands the route a `Guard` with which it evaluates resource-dependent rules
(`guard.check(Action.WRITE, path="/juno/production/x")`).

The server refuses to start if a mounted route declares no policy (see `server.app`), so a route
without a policy is a start-up error, not a hole. A policy that has no rule for an action denies it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, ClassVar

from fastapi import Depends, Request

from junodcs.auth.identity import Identity
from junodcs.core.errors import Forbidden, Unauthenticated

POLICY_MARKER = "__access_policy__"


class AccessPolicy:
    """Base class: allows nothing. Subclasses state their rules in their docstring."""

    #: Public policies skip authentication entirely (health, discovery, JWKS, the token endpoint).
    public: ClassVar[bool] = False

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        return False

    @classmethod
    def check(cls, identity: Identity, action: StrEnum, **context: Any) -> None:
        if cls.allows(identity, action, **context):
            return
        if identity.is_anonymous:
            raise Unauthenticated(
                f"{action} needs credentials: log in with `dcs login`, or present a token or a proxy",
                action=str(action),
            )
        if not identity.is_known:
            raise Forbidden(
                f"{identity.subject or 'this identity'} is not registered in VO {identity.vo}",
                action=str(action),
            )
        raise Forbidden(
            f"{identity.username} (group {identity.group}) may not {action}"
            + (f" {context_description(context)}" if context else ""),
            action=str(action),
        )


def context_description(context: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in context.items())


class PublicAccess(AccessPolicy):
    """Anyone, authenticated or not. Only for routes that must answer before a caller can authenticate:
    health, metrics, OpenID discovery, the JWKS and the token endpoint (which authenticates its clients
    itself)."""

    public = True

    @classmethod
    def allows(cls, identity: Identity, action: StrEnum, **context: Any) -> bool:
        return True


class Guard:
    """The authenticated caller plus the route's policy, for checks that need the resource."""

    __slots__ = ("identity", "policy")

    def __init__(self, policy: type[AccessPolicy], identity: Identity) -> None:
        self.policy = policy
        self.identity = identity

    def check(self, action: StrEnum, **context: Any) -> None:
        self.policy.check(self.identity, action, **context)

    def allows(self, action: StrEnum, **context: Any) -> bool:
        return self.policy.allows(self.identity, action, **context)


def requires(policy: type[AccessPolicy], action: StrEnum | None = None) -> Any:
    """FastAPI dependency: authenticate, apply `policy` to `action` (when given), return a `Guard`."""

    async def dependency(request: Request) -> Guard:
        if policy.public:
            identity = Identity.anonymous(request.app.state.grid.vo)
        else:
            from junodcs.auth.authenticate import authenticate_request

            identity = await authenticate_request(request)
        guard = Guard(policy, identity)
        if action is not None:
            guard.check(action)
        return guard

    setattr(dependency, POLICY_MARKER, policy)
    dependency.__name__ = f"requires_{policy.__name__}"
    return Depends(dependency)


def declared_policies(call: Callable[..., Any], dependant: Any) -> list[type[AccessPolicy]]:
    """Every policy a route's dependency tree declares (used by the start-up check)."""
    found: list[type[AccessPolicy]] = []
    stack = [dependant]
    while stack:
        current = stack.pop()
        policy = getattr(current.call, POLICY_MARKER, None) if current.call else None
        if policy is not None:
            found.append(policy)
        stack.extend(current.dependencies)
    return found
