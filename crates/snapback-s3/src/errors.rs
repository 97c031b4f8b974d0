//! How S3 failures become [`StoreError`]s.
//!
//! Rules:
//! - The kind comes from the HTTP status and the S3 error code, never from
//!   message text: 5xx, 408, 429, throttling codes, timeouts and connection
//!   failures are `Transient`; 404 is `NotFound`; 403 is `PermissionDenied`;
//!   a damaged transfer (`BadDigest`, a short body) is `Corrupt`.
//! - The message says what was attempted, what the server answered (status,
//!   code, message, request id) and, where it helps, what to check.
//! - Inside this crate a failure also says whether another attempt can
//!   help ([`Fail::retry`]): a range past the end of an object is `Corrupt`
//!   for the caller but asking again will not change the answer.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId;
use snapback_storage::{ErrorKind, StoreError};

/// One failed attempt.
#[derive(Debug)]
pub(crate) struct Fail {
    pub kind: ErrorKind,
    pub message: String,
    /// Whether another attempt may succeed.
    pub retry: bool,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The S3 error code, when the server sent one.
    pub code: Option<String>,
}

impl Fail {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Fail {
            kind,
            message: message.into(),
            retry: kind.is_retryable(),
            status: None,
            code: None,
        }
    }

    /// A failure that another attempt will not cure.
    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        Fail {
            retry: false,
            ..Fail::new(kind, message)
        }
    }

    /// The message already holds the causes' text (see [`classify`]): it
    /// is not attached again as a `source()`, which the CLI would print a
    /// second time.
    pub fn into_store_error(self, key: &str, suffix: &str) -> StoreError {
        StoreError::new(self.kind, key, format!("{}{suffix}", self.message))
    }

    pub fn is_status(&self, status: u16) -> bool {
        self.status == Some(status)
    }

    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Error codes that mean "slow down or try again".
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
    "OperationAborted",
];

/// Classifies an SDK error for operation `what` (e.g. "PUT").
pub(crate) fn classify<E>(what: &str, err: &SdkError<E, HttpResponse>) -> Fail
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // One clean line: the Display of each cause, each once. Not
    // DisplayErrorContext, which ends with the Debug dump of the whole error.
    let detail = clean_detail(err as &(dyn std::error::Error + 'static));
    if let Some(f) = credentials_failure(what, err as &(dyn std::error::Error + 'static)) {
        return f;
    }
    let fail = match err {
        SdkError::ConstructionFailure(_) => Fail::new(
            ErrorKind::Other,
            format!("S3 {what} request could not be built: {detail}"),
        ),
        SdkError::TimeoutError(_) => Fail::new(
            ErrorKind::Transient,
            format!("S3 {what} timed out: {detail}"),
        ),
        SdkError::DispatchFailure(d) => {
            if d.is_user() {
                Fail::new(
                    ErrorKind::Other,
                    format!("S3 {what} could not be sent (check the endpoint URL): {detail}"),
                )
            } else {
                Fail::new(
                    ErrorKind::Transient,
                    format!("S3 {what} failed to reach the server: {detail}"),
                )
            }
        }
        SdkError::ResponseError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let mut f = Fail::new(
                ErrorKind::Transient,
                format!(
                    "S3 {what}: unreadable response{}: {detail}",
                    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
                ),
            );
            f.status = status;
            f
        }
        // The answer's status, code and message are the whole story.
        SdkError::ServiceError(_) => return service_error(what, err),
        _ => Fail::new(ErrorKind::Other, format!("S3 {what} failed: {detail}")),
    };
    fail
}

/// The messages of an error and its causes on one line, each said once
/// (a cause whose text its parent already printed is left out), with the
/// line breaks of multi-line messages folded.
pub(crate) fn clean_detail(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Credentials that cannot be loaded are not a network failure: say so,
/// and do not retry what no retry can cure.
fn credentials_failure(what: &str, err: &(dyn std::error::Error + 'static)) -> Option<Fail> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            let f = match c {
                CredentialsError::CredentialsNotLoaded(_) => Fail::permanent(
                    ErrorKind::PermissionDenied,
                    format!("S3 {what}: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws), or run where an instance or container role provides them"),
                ),
                CredentialsError::ProviderTimedOut(_) => Fail::new(
                    ErrorKind::Transient,
                    format!("S3 {what}: the AWS credential provider timed out: {}", clean_detail(c)),
                ),
                _ => Fail::permanent(
                    ErrorKind::PermissionDenied,
                    format!("S3 {what}: the AWS credentials cannot be loaded: {}", clean_detail(c)),
                ),
            };
            return Some(f);
        }
        cur = e.source();
    }
    None
}

fn service_error<E>(what: &str, err: &SdkError<E, HttpResponse>) -> Fail
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let mut answered = String::new();
    if let Some(s) = status {
        answered.push_str(&format!("HTTP {s}"));
    }
    if let Some(c) = &code {
        answered.push_str(&format!(" {c}"));
    }
    if let Some(m) = err.message() {
        answered.push_str(&format!(": {m}"));
    }
    if let Some(id) = err.request_id() {
        answered.push_str(&format!(" (request id {id})"));
    }
    let answered = answered.trim().to_string();
    let kind = kind_of(status, code.as_deref());
    let hint = match (kind, code.as_deref()) {
        (_, Some("NoSuchBucket")) => {
            "; the bucket does not exist: check the bucket name, the endpoint and the region"
        }
        (
            _,
            Some(
                "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException",
            ),
        ) => "; the bucket is in another region: set AWS_REGION (or the profile's region)",
        (_, Some("RequestTimeTooSkewed")) => "; the clock of this machine is wrong",
        (ErrorKind::PermissionDenied, _) => {
            "; check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy"
        }
        _ => "",
    };
    let mut f = Fail::new(kind, format!("S3 {what} refused: {answered}{hint}"));
    f.status = status;
    f.code = code;
    f
}

/// The kind of a server answer, from its status and error code.
pub(crate) fn kind_of(status: Option<u16>, code: Option<&str>) -> ErrorKind {
    if let Some(c) = code {
        if TRANSIENT_CODES.contains(&c) {
            return ErrorKind::Transient;
        }
        match c {
            "NoSuchKey" | "NotFound" => return ErrorKind::NotFound,
            "NoSuchBucket" => return ErrorKind::Other,
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AllAccessDisabled"
            | "InvalidToken"
            | "ExpiredToken"
            | "AccountProblem" => return ErrorKind::PermissionDenied,
            "BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" | "IncompleteBody" => {
                return ErrorKind::Corrupt
            }
            "QuotaExceeded" | "StorageFull" | "XMinioStorageFull" => return ErrorKind::NoSpace,
            _ => {}
        }
    }
    match status {
        Some(404) => ErrorKind::NotFound,
        Some(401 | 403) => ErrorKind::PermissionDenied,
        Some(412) => ErrorKind::AlreadyExists,
        Some(507) => ErrorKind::NoSpace,
        Some(408 | 409 | 429) => ErrorKind::Transient,
        Some(501) => ErrorKind::Other,
        Some(s) if s >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_map_to_kinds() {
        use ErrorKind::*;
        let cases: &[(Option<u16>, Option<&str>, ErrorKind)] = &[
            (Some(500), Some("InternalError"), Transient),
            (Some(503), Some("SlowDown"), Transient),
            (Some(503), None, Transient),
            (Some(502), None, Transient),
            (Some(429), None, Transient),
            (Some(400), Some("RequestTimeout"), Transient),
            (Some(409), Some("ConditionalRequestConflict"), Transient),
            (Some(404), Some("NoSuchKey"), NotFound),
            (Some(404), None, NotFound),
            (Some(404), Some("NoSuchBucket"), Other),
            (Some(403), Some("AccessDenied"), PermissionDenied),
            (Some(403), Some("SignatureDoesNotMatch"), PermissionDenied),
            (Some(403), None, PermissionDenied),
            (Some(412), Some("PreconditionFailed"), AlreadyExists),
            (Some(400), Some("BadDigest"), Corrupt),
            (Some(501), Some("NotImplemented"), Other),
            (Some(400), Some("InvalidArgument"), Other),
        ];
        for (status, code, want) in cases {
            assert_eq!(kind_of(*status, *code), *want, "{status:?} {code:?}");
        }
    }
}
