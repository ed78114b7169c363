//! Kubernetes `Status` error bodies, with the field order the Go apiserver writes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::resources::Resource;

#[derive(Debug, Serialize)]
struct StatusDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<StatusCause>,
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "is_zero")]
    retry_after_seconds: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One reason an object is invalid, with the path of the offending field.
#[derive(Debug, Clone, Serialize)]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
    /// Go's `field,omitempty`: causes that name no field (a disruption budget's) leave it out.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// The `Status` body, fields in the Go apiserver's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    kind: &'static str,
    api_version: &'static str,
    metadata: serde_json::Map<String, serde_json::Value>,
    status: &'static str,
    message: String,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<StatusDetails>,
    code: u16,
}

/// A failed API call, rendered as a `Status` object. Boxed: errors travel through every
/// handler's `Result`, and the body is large.
#[derive(Debug)]
pub struct ApiError(Box<StatusBody>);

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> ApiError {
        ApiError(Box::new(StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: Default::default(),
            status: "Failure",
            message,
            reason,
            details: None,
            code,
        }))
    }

    fn with_details(mut self, r: &Resource, name: &str) -> ApiError {
        self.0.details = Some(StatusDetails {
            name: Some(name.to_owned()),
            group: (!r.group.is_empty()).then(|| r.group.to_owned()),
            kind: Some(r.plural.to_owned()),
            causes: vec![],
            retry_after_seconds: 0,
        });
        self
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified_plural()),
        )
        .with_details(r, name)
    }

    pub fn namespace_not_found(ns: &str) -> ApiError {
        let r = crate::resources::find("", "v1", "namespaces").expect("namespaces are served");
        ApiError::not_found(r, ns)
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.qualified_plural()),
        )
        .with_details(r, name)
    }

    pub fn conflict(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                r.qualified_plural()
            ),
        )
        .with_details(r, name)
    }

    /// 409 for a DeleteOptions precondition that does not hold.
    /// 409 for a server-side apply that would change fields other managers own.
    pub fn apply_conflict(
        r: &Resource,
        name: &str,
        conflicts: &[crate::apply::Conflict],
    ) -> ApiError {
        let causes: Vec<StatusCause> = conflicts
            .iter()
            .map(|c| StatusCause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                field: c.field.clone(),
            })
            .collect();
        let listed: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.message, c.field))
            .collect();
        let n = causes.len();
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                listed.join(", ")
            ),
        )
        .with_details(r, name);
        if let Some(d) = e.0.details.as_mut() {
            d.causes = causes;
        }
        e
    }

    /// 409 with a specific message.
    pub fn conflict_msg(r: &Resource, name: &str, message: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {message}",
                r.qualified_plural()
            ),
        )
        .with_details(r, name)
    }

    /// 403 for a request the object's state forbids.
    pub fn forbidden(r: &Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", r.qualified_plural()),
        )
        .with_details(r, name)
    }

    /// The HTTP status code.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    pub fn code(&self) -> u16 {
        self.0.code
    }

    pub fn precondition_failed(r: &Resource, name: &str, message: &str) -> ApiError {
        ApiError::new(409, "Conflict", message.to_owned()).with_details(r, name)
    }

    /// 422 with one cause per invalid field.
    pub fn invalid(r: &Resource, name: &str, causes: Vec<StatusCause>) -> ApiError {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {}", r.kind, list.join(", ")),
        );
        e.0.details = Some(StatusDetails {
            name: Some(name.to_owned()),
            group: (!r.group.is_empty()).then(|| r.group.to_owned()),
            kind: Some(r.kind.to_owned()),
            causes,
            retry_after_seconds: 0,
        });
        e
    }

    /// 422 for invalid query options (`ListOptions`), worded as the apiserver words it.
    pub fn invalid_options(field: &str, message: &str) -> ApiError {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: {message}"),
        );
        e.0.details = Some(StatusDetails {
            name: None,
            group: Some("meta.k8s.io".into()),
            kind: Some("ListOptions".into()),
            causes: vec![StatusCause {
                reason: "FieldValueForbidden".into(),
                message: message.into(),
                field: field.into(),
            }],
            retry_after_seconds: 0,
        });
        e
    }

    /// 422 for invalid `DeleteOptions`, worded as the apiserver words it.
    pub fn invalid_delete_options(field: &str, reason: &str, message: &str) -> ApiError {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("DeleteOptions.meta.k8s.io \"\" is invalid: {field}: {message}"),
        );
        e.0.details = Some(StatusDetails {
            name: None,
            group: Some("meta.k8s.io".into()),
            kind: Some("DeleteOptions".into()),
            causes: vec![StatusCause {
                reason: reason.into(),
                message: message.into(),
                field: field.into(),
            }],
            retry_after_seconds: 0,
        });
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message.into())
    }

    pub fn path_not_found() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    }

    pub fn path_not_found_msg(message: &str) -> ApiError {
        ApiError::new(404, "NotFound", message.to_owned())
    }

    pub fn method_not_allowed(what: &str) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", format!("{what} is not supported"))
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message.into())
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message.into())
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message.into())
    }

    /// 429 (`NewTooManyRequests`): the client should retry later; `causes` say why.
    pub fn too_many_requests(
        message: impl Into<String>,
        retry_after_seconds: u32,
        causes: Vec<StatusCause>,
    ) -> ApiError {
        let mut e = ApiError::new(429, "TooManyRequests", message.into());
        e.0.details = Some(StatusDetails {
            name: None,
            group: None,
            kind: None,
            causes,
            retry_after_seconds,
        });
        e
    }

    /// 500 as `NewInternalError` words it, with the error as its one cause.
    pub fn internal_error(message: &str) -> ApiError {
        let mut e = ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        );
        e.0.details = Some(StatusDetails {
            name: None,
            group: None,
            kind: None,
            causes: vec![StatusCause {
                reason: String::new(),
                message: message.to_owned(),
                field: String::new(),
            }],
            retry_after_seconds: 0,
        });
        e
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message.into())
    }
}

impl From<flotilla_consensus::StoreError> for ApiError {
    fn from(e: flotilla_consensus::StoreError) -> ApiError {
        use flotilla_consensus::StoreError as E;
        match e {
            E::NoLeader(_) | E::NotLeader | E::Unavailable(_) => {
                ApiError::unavailable(e.to_string())
            }
            E::Unknown(_) => ApiError::timeout(e.to_string()),
            E::Expired { .. } => ApiError::new(410, "Expired", e.to_string()),
            E::Invalid(_) => ApiError::bad_request(e.to_string()),
            E::Storage(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The Go apiserver ends JSON bodies with a newline; some clients compare bytes.
        let mut body = serde_json::to_vec(&*self.0).unwrap_or_default();
        body.push(b'\n');
        let mut resp = (code, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self
            .0
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|s| *s > 0)
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if code == StatusCode::PAYLOAD_TOO_LARGE {
            // The unread rest of the body makes the connection unusable; say so, or a client
            // may send its next request on it and see the connection close under it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
