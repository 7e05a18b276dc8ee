"""Limits and fixed strings, matching the gateway's Rust constants one for one.

`gateway/src/chain/mod.rs`, `gateway/src/scope.rs`, `gateway/src/jose.rs`,
`gateway/src/spiffe/{id,svid,bundle}.rs`. A chain the SDK builds within these limits is
one the gateway can accept; a chain outside them is refused client-side with the reason the
gateway would give.
"""

from __future__ import annotations

from typing import Final

# Chains (SPEC section 3).
DEFAULT_MAX_LINKS: Final = 16
"""Default most links in a chain, a crossing root's ``dep`` included (rule 7)."""
MAX_LINKS_HARD: Final = 64
"""No configuration may allow more links than this."""
MAX_LINK_BYTES: Final = 16 * 1024
"""Largest single link (compact JWS)."""
MAX_CHAIN_BYTES: Final = 64 * 1024
"""Largest whole chain, checked before any parsing (rule 7, ``too_large``)."""
MAX_X5C_CERTS: Final = 4
"""Most certificates in a link's ``x5c`` (leaf plus intermediates)."""
MAX_TASK_BYTES: Final = 128
MAX_PRINCIPAL_BYTES: Final = 256
MAX_JTI_BYTES: Final = 128
DEFAULT_CLOCK_SKEW: Final = 30
"""Seconds of clock skew tolerated on ``iat`` (rule 6)."""
MAX_CLOCK_SKEW: Final = 300

TYP_LINK: Final = "delegation+jwt"
TYP_TOKEN: Final = "federation+jwt"
SUB_HUMAN: Final = "human"
SUB_AGENT: Final = "agent"
SEPARATOR: Final = "~"
"""Links are joined with ``~`` on the wire."""

# Scopes (SPEC section 4).
MAX_SCOPE_BYTES: Final = 256
MIN_SCOPES: Final = 1
MAX_SCOPES: Final = 64
"""A link carries 1-64 scopes; requests are held to the same bound."""
SCOPE_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:/*-"

# JOSE.
MAX_JWS_BYTES: Final = 64 * 1024
ALGORITHMS: Final = ("ES256", "EdDSA")
"""The only JWS algorithms fedgate signs or accepts."""

# SPIFFE.
MAX_SPIFFE_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN_BYTES: Final = 255
MAX_SVID_CHAIN_CERTS: Final = 8
MAX_SVID_CERT_BYTES: Final = 64 * 1024
MAX_BUNDLE_BYTES: Final = 1024 * 1024
MAX_BUNDLE_KEYS: Final = 256
MAX_KID_BYTES: Final = 256
ROLE_MEMBER: Final = "fedgate_role"
"""JWK member naming a ``jwt-svid`` key's role: ``idp``, ``gateway``, ``audit`` or ``witness``."""
KEY_ROLES: Final = ("idp", "gateway", "audit", "witness")

# HTTP surface (SPEC section 7).
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPE: Final = "urn:fedgate:token-type:delegation-chain"
ISSUED_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
HEADER_CHAIN: Final = "Delegation-Chain"
HEADER_TARGET: Final = "Fedgate-Target"
HEADER_SCOPE: Final = "Fedgate-Scope"
HEADER_RECEIPT: Final = "Fedgate-Receipt"
