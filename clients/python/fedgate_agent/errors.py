"""One exception hierarchy for the SDK.

Every exception is a :class:`FedgateError` with ``.reason`` (a SPEC section 10 reason code, one of
the gateway's :data:`EXTRA_REASONS`, a newer gateway's code passed on as received, or
``None`` where none applies, e.g. a connection that could not be made) and ``.link`` (the
0-based index of the offending link, where one is to blame). Messages never contain keys or
whole tokens.
"""

from __future__ import annotations

from typing import Any, Final, Mapping

REASONS: Final = (
    "malformed",
    "bad_alg",
    "bad_signature",
    "unknown_key",
    "bad_root",
    "broken_link",
    "wrong_signer",
    "bad_svid",
    "scope_escalation",
    "expired",
    "not_yet_valid",
    "expiry_extension",
    "task_mismatch",
    "too_deep",
    "too_large",
    "not_holder",
    "revoked",
    "replayed",
    "wrong_audience",
    "issuer_mismatch",
    "unknown_domain",
    "no_agreement",
    "agreement_expired",
    "agreement_mismatch",
    "rule_denied",
    "scope_exceeds_agreement",
    "approval_required",
    "route_denied",
    "policy_denied",
    "audit_unavailable",
    "partner_unavailable",
)
"""Every reason code of SPEC section 10, in its order."""

EXTRA_REASONS: Final = (
    "rate_limited",
    "state_unavailable",
    "bad_response_signature",
    "response_too_large",
    "response_invalid",
    "agreement_superseded",
    "agreement_terminated",
    "checkpoint_fork",
)
"""The gateway's reason codes beyond SPEC section 10 (``gateway/src/reason.rs``, spec-notes 17,
26, 31, 40 and 43), in the same denial shape. The SDK does not need to know a code to raise it: a
gateway denial is recognized by its shape (:func:`fedgate_agent.gateway.gateway_denial`)."""

ALL_REASONS: Final = REASONS + EXTRA_REASONS

PARTNER_RESPONSE_REASONS: Final = frozenset(
    {"bad_response_signature", "response_too_large", "response_invalid"}
)
"""The sending gateway refused the partner's *answer* (its signature, size or shape)."""

RETRYABLE_REASONS: Final = frozenset(
    {"rate_limited", "state_unavailable", "audit_unavailable", "partner_unavailable"}
)
"""Denials that say nothing about the request itself: the same request may succeed later."""

_CREDENTIAL: Final = frozenset(
    {
        "bad_alg",
        "bad_signature",
        "unknown_key",
        "bad_root",
        "broken_link",
        "wrong_signer",
        "bad_svid",
        "expired",
        "not_yet_valid",
        "expiry_extension",
        "task_mismatch",
        "not_holder",
        "replayed",
        "wrong_audience",
        "issuer_mismatch",
        "agreement_mismatch",
    }
)


def http_status(reason: str) -> int:
    """The HTTP status the gateway answers a denial with (``Reason::http_status``)."""
    if reason == "malformed":
        return 400
    if reason == "too_large":
        return 413
    if reason in _CREDENTIAL:
        return 401
    if reason in ("audit_unavailable", "state_unavailable"):
        return 503
    if reason == "partner_unavailable" or reason in PARTNER_RESPONSE_REASONS:
        return 502
    if reason == "rate_limited":
        return 429
    return 403


class FedgateError(Exception):
    """Base of every SDK error."""

    reason: str | None
    link: int | None
    message: str

    def __init__(self, message: str, *, reason: str | None = None, link: int | None = None):
        self.message = message
        self.reason = reason
        self.link = link
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"link {self.link}: " if self.link is not None else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"{where}{self.message}{why}"


class ConfigError(FedgateError):
    """The SDK was configured wrongly (missing files, no trust domain, ...)."""


class IdError(FedgateError, ValueError):
    """A string is not a valid SPIFFE ID or trust domain (reason ``malformed``)."""

    def __init__(self, message: str):
        super().__init__(message, reason="malformed")


class ScopeError(FedgateError, ValueError):
    """A scope or scope list breaks SPEC section 4 (reason ``malformed``)."""

    def __init__(self, message: str):
        super().__init__(message, reason="malformed")


class JoseError(FedgateError):
    """A compact JWS could not be parsed, uses a refused algorithm, or does not verify."""


class BundleError(FedgateError):
    """A trust bundle file is not a valid SPIFFE bundle (reason ``malformed``)."""

    def __init__(self, message: str):
        super().__init__(message, reason="malformed")


class SvidError(FedgateError):
    """An X509-SVID is not valid (reason ``bad_svid``, or ``unknown_domain``)."""

    def __init__(self, message: str, *, reason: str = "bad_svid", link: int | None = None):
        super().__init__(message, reason=reason, link=link)


class ChainError(FedgateError):
    """A delegation chain breaks a rule of SPEC section 3; ``reason`` is that rule's code."""

    reason: str


class ExtendError(ChainError):
    """``Chain.extend`` refused to sign: the new link would break a rule (nothing was signed)."""


class GatewayError(FedgateError):
    """The gateway (or the partner, through it) refused, or could not be reached.

    ``status`` is the HTTP status (``None`` when no response came), ``error`` the ``error``
    member of the body (an RFC 6749 code on the token endpoint), ``reason`` and ``crossing`` the
    gateway's reason code and crossing id.
    """

    status: int | None
    error: str | None
    error_description: str | None
    crossing: str | None
    body: Mapping[str, Any] | None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        status: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
        crossing: str | None = None,
        body: Mapping[str, Any] | None = None,
    ):
        self.status = status
        self.error = error
        self.error_description = error_description
        self.crossing = crossing
        self.body = body
        super().__init__(message, reason=reason)

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later unchanged (``rate_limited``,
        ``state_unavailable``, ``audit_unavailable``, ``partner_unavailable``, or no answer)."""
        return self.reason in RETRYABLE_REASONS or (self.status is None and self.reason is None)

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.reason:
            parts.append(f"reason {self.reason}")
        if self.crossing:
            parts.append(f"crossing {self.crossing}")
        return "; ".join(parts)


class GatewayUnavailable(GatewayError):
    """No answer: connection refused, timed out, or TLS failed for another reason."""


class GatewayIdentityError(GatewayError):
    """The server's certificate is not the expected SPIFFE identity (reason ``bad_svid``)."""


class TokenExchangeError(GatewayError):
    """``POST /v1/token`` answered an RFC 6749 error (base of the typed ones below)."""


class InvalidRequestError(TokenExchangeError):
    """RFC 6749 ``invalid_request`` (reasons ``malformed``, ``too_large``)."""


class InvalidGrantError(TokenExchangeError):
    """RFC 6749 ``invalid_grant``: the chain itself is not acceptable."""


class InvalidTargetError(TokenExchangeError):
    """RFC 8693 ``invalid_target``: no agreement or flow reaches the audience."""


class InvalidScopeError(TokenExchangeError):
    """RFC 6749 ``invalid_scope``: escalation, beyond the agreement, or approval missing."""


class UnauthorizedClientError(TokenExchangeError):
    """RFC 6749 ``unauthorized_client``: local policy denied."""


class ServerError(TokenExchangeError):
    """RFC 6749 ``server_error``: audit log or partner unavailable."""


class TemporarilyUnavailableError(TokenExchangeError):
    """RFC 6749 ``temporarily_unavailable`` (reason ``rate_limited``, HTTP 429): retry later."""


OAUTH_ERRORS: Final[Mapping[str, type[TokenExchangeError]]] = {
    "invalid_request": InvalidRequestError,
    "invalid_grant": InvalidGrantError,
    "invalid_target": InvalidTargetError,
    "invalid_scope": InvalidScopeError,
    "unauthorized_client": UnauthorizedClientError,
    "server_error": ServerError,
    "temporarily_unavailable": TemporarilyUnavailableError,
}


class CrossingDenied(GatewayError):
    """A crossing was refused: by the local gateway on egress, or by the partner's gateway
    (its ingress answer is passed back through egress, or comes directly in ``direct`` mode).

    Raised for every gateway denial, whatever its reason code (including codes this SDK does
    not know): ``reason``, ``status``, ``crossing`` (the ``Fedgate-Crossing`` id) and
    ``retry_after`` (seconds, from ``Retry-After``, when given)."""

    retry_after: int | None = None


class PartnerResponseRefused(CrossingDenied):
    """The crossing went through, but the local gateway refused the partner's *answer*
    (``bad_response_signature``, ``response_too_large``, ``response_invalid``; HTTP 502): the
    agent never sees a body that was not signed by the partner gateway or breaks the route's
    response rules."""


class CrossingContextMissing(ConfigError, LookupError):
    """:func:`~fedgate_agent.crossing_of` was called on a request the middleware did not
    accept (is :class:`~fedgate_agent.FedgateMiddleware` installed?)."""


class ReceiveError(FedgateError):
    """The middleware refused an inbound request (no valid crossing link from the local gateway)."""


class ReplayCacheFull(ReceiveError):
    """The middleware's replay cache holds as many unexpired links as it may (reason
    ``state_unavailable``, HTTP 503): new crossing links are refused until entries expire,
    rather than forgetting a link that could still be replayed (fail closed)."""

    def __init__(self, message: str):
        super().__init__(message, reason="state_unavailable")
