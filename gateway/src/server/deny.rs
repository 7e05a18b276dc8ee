//! Denials: one type for every refusal of the HTTP layer. The client gets the status, the reason
//! code and the crossing id (internal callers also get a one-line description); the detail goes
//! to the log under the crossing id. Who caused it is tagged for the log, as pingora's
//! `ErrorSource` does.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::reason::Reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller sent something wrong or not allowed.
    Client,
    /// The partner gateway or the upstream failed.
    Partner,
    /// Something in this gateway failed (audit log, keys).
    Internal,
}

#[derive(Debug, Clone)]
pub struct Denial {
    pub reason: Reason,
    pub message: String,
    pub crossing: String,
    pub source: Source,
    /// Include the description in the response (internal listener only).
    pub describe: bool,
    /// Answer in RFC 6749 error form (token endpoint).
    pub oauth: bool,
    /// Answer as a JSON-RPC error object with this id (an MCP or A2A call).
    pub rpc: Option<serde_json::Value>,
}

impl Denial {
    pub fn new(reason: Reason, message: impl Into<String>, crossing: &str) -> Self {
        let source = match reason {
            Reason::AuditUnavailable | Reason::StateUnavailable => Source::Internal,
            Reason::PartnerUnavailable
            | Reason::BadResponseSignature
            | Reason::ResponseTooLarge
            | Reason::ResponseInvalid => Source::Partner,
            _ => Source::Client,
        };
        Denial {
            reason,
            message: message.into(),
            crossing: crossing.to_string(),
            source,
            describe: false,
            oauth: false,
            rpc: None,
        }
    }

    /// In the JSON-RPC error shape of the call with `id` (`None`: unchanged).
    pub fn rpc(mut self, id: Option<&serde_json::Value>) -> Self {
        if let Some(id) = id {
            self.rpc = Some(id.clone());
        }
        self
    }

    pub fn described(mut self) -> Self {
        self.describe = true;
        self
    }

    pub fn oauth(mut self) -> Self {
        self.oauth = true;
        self.describe = true;
        self
    }

    /// RFC 6749 / RFC 8693 error code for a reason.
    pub fn oauth_error(reason: Reason) -> &'static str {
        match reason {
            Reason::Malformed | Reason::TooLarge => "invalid_request",
            Reason::NoAgreement
            | Reason::RuleDenied
            | Reason::UnknownDomain
            | Reason::AgreementExpired
            | Reason::AgreementTerminated => "invalid_target",
            Reason::ScopeEscalation | Reason::ScopeExceedsAgreement | Reason::ApprovalRequired => {
                "invalid_scope"
            }
            Reason::PolicyDenied => "unauthorized_client",
            Reason::AuditUnavailable | Reason::PartnerUnavailable | Reason::StateUnavailable => {
                "server_error"
            }
            // RFC 6749 section 4.1.2.1's code for "not now"; the answer is 429.
            Reason::RateLimited => "temporarily_unavailable",
            _ => "invalid_grant",
        }
    }

    fn short(reason: Reason) -> &'static str {
        match reason {
            Reason::Malformed => "invalid request",
            Reason::TooLarge => "request too large",
            Reason::AuditUnavailable => "audit log unavailable",
            Reason::StateUnavailable => "state store unavailable",
            Reason::PartnerUnavailable => "partner unavailable",
            Reason::BadResponseSignature | Reason::ResponseTooLarge | Reason::ResponseInvalid => {
                "partner response refused"
            }
            _ => "crossing denied",
        }
    }
}

impl IntoResponse for Denial {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        tracing::info!(crossing = %self.crossing, reason = %self.reason, source = ?self.source, detail = %self.message, "denied");
        let body = if let Some(id) = &self.rpc {
            let detail = self.describe.then_some(self.message.as_str());
            crate::server::protocol::rpc_denial(id, self.reason, &self.crossing, detail)
        } else if self.oauth {
            serde_json::json!({
                "error": Denial::oauth_error(self.reason),
                "error_description": self.message,
                "reason": self.reason.code(),
                "crossing": self.crossing,
            })
        } else if self.describe {
            serde_json::json!({"error": Denial::short(self.reason), "reason": self.reason.code(), "crossing": self.crossing, "message": self.message})
        } else {
            serde_json::json!({"error": Denial::short(self.reason), "reason": self.reason.code(), "crossing": self.crossing})
        };
        let mut r = (status, Json(body)).into_response();
        // Every denial names its crossing in a header too (the response signature covers it).
        if let Ok(v) = http::HeaderValue::from_str(&self.crossing) {
            r.headers_mut()
                .insert(crate::federation::httpsig::CROSSING_HEADER, v);
        }
        if self.oauth {
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
        }
        r
    }
}
