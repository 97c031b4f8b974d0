use std::fmt;
use std::time::Duration;

use snapback_storage::{validate_key, ErrorKind, RetryPolicy, StoreError};

/// Where an S3 repository is and how to talk to it.
///
/// Build one with [`S3Config::from_url`] (or `S3Config { bucket, prefix,
/// ..Default::default() }`), adjust the fields the user set, and pass it to
/// [`crate::S3Store::open`].
#[derive(Clone)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; empty
    /// for the bucket's root. Every object of the repository lives under it.
    pub prefix: String,
    /// Endpoint URL of an S3-compatible store (`http://127.0.0.1:9000`).
    /// `None` uses `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` or the profile's
    /// `endpoint_url` if set, and AWS S3 otherwise.
    pub endpoint: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`) instead of virtual
    /// hosts (`http://bucket.host/key`). Most self-hosted stores need it.
    pub path_style: bool,
    /// Region. `None` uses the standard chain (`AWS_REGION`, the profile);
    /// `us-east-1` if that finds nothing.
    pub region: Option<String>,
    /// Static credentials. `None` (the normal case) uses the standard AWS
    /// chain: environment, shared profile, web identity, ECS, EC2 instance
    /// role.
    pub credentials: Option<S3Credentials>,
    /// Timeouts; see [`Timeouts`].
    pub timeouts: Timeouts,
    /// Retries of one request (the store's own retry loop; the SDK's
    /// retries are off).
    pub retry: RetryPolicy,
    /// Objects larger than this use a multipart upload.
    pub multipart_threshold: usize,
    /// Size of each part of a multipart upload: 5 MiB to 5 GiB (S3's
    /// limits); grown for objects that would need more than 10,000 parts.
    pub part_size: usize,
    /// Parts of one multipart upload in flight at once.
    pub multipart_concurrency: usize,
    /// Treat a PUT response that does not echo our SHA-256 checksum as a
    /// failed upload (AWS S3 always echoes it; some compatible stores do not).
    pub require_checksum_echo: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            path_style: false,
            region: None,
            credentials: None,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            multipart_concurrency: 4,
            require_checksum_echo: false,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_deref().map(redact_userinfo))
            .field("path_style", &self.path_style)
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("timeouts", &self.timeouts)
            .field("retry", &self.retry)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("multipart_concurrency", &self.multipart_concurrency)
            .field("require_checksum_echo", &self.require_checksum_echo)
            .finish()
    }
}

impl S3Config {
    /// A configuration for `s3://BUCKET/PREFIX`, everything else default.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let (bucket, prefix) = parse_s3_url(url)?;
        Ok(S3Config {
            bucket,
            prefix,
            ..Default::default()
        })
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let bad = |msg: String| Err(StoreError::new(ErrorKind::Other, "", msg));
        if let Err(why) = check_bucket(&self.bucket) {
            return bad(format!("invalid S3 bucket name '{}': {why}", self.bucket));
        }
        if !self.prefix.is_empty() && validate_key(&self.prefix).is_err() {
            return bad(format!(
                "invalid S3 prefix '{}': use '/'-separated segments of A-Z, a-z, 0-9, '.', '_' and '-'",
                self.prefix
            ));
        }
        if self.part_size < 5 << 20
            || self.part_size > 5 << 30
            || self.multipart_threshold < self.part_size
        {
            return bad(format!(
                "S3 part size {} must be 5 MiB to 5 GiB and not above the multipart threshold {}",
                self.part_size, self.multipart_threshold
            ));
        }
        if self.multipart_concurrency == 0 || self.retry.attempts == 0 {
            return bad("S3 multipart concurrency and retry attempts must be at least 1".into());
        }
        if let Some(ep) = &self.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return bad(format!(
                    "S3 endpoint '{}' must start with http:// or https://",
                    redact_userinfo(ep)
                ));
            }
        }
        Ok(())
    }
}

/// Static credentials, for tests and for callers that hold keys themselves.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Time limits. A request never waits forever, even on a server that
/// accepts the connection and then trickles bytes.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection.
    pub connect: Duration,
    /// From the end of sending a request to the first byte of the response.
    pub read: Duration,
    /// One attempt of one request, body transfer included, for a request
    /// with no body to speak of ...
    pub attempt: Duration,
    /// ... plus this much per MiB sent or received, so that large parts get
    /// time in proportion to their size (a floor on throughput).
    pub attempt_per_mib: Duration,
    /// One operation, all its attempts and backoff delays included (scaled
    /// by size like an attempt).
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
            attempt: Duration::from_secs(60),
            attempt_per_mib: Duration::from_secs(4),
            operation: Duration::from_secs(300),
        }
    }
}

impl Timeouts {
    pub(crate) fn attempt_for(&self, bytes: u64) -> Duration {
        self.attempt + scale(self.attempt_per_mib, bytes)
    }

    pub(crate) fn operation_for(&self, bytes: u64) -> Duration {
        self.operation + scale(self.attempt_per_mib, bytes)
    }
}

fn scale(per_mib: Duration, bytes: u64) -> Duration {
    let mibs = bytes.div_ceil(1 << 20);
    per_mib.saturating_mul(u32::try_from(mibs).unwrap_or(u32::MAX))
}

/// Splits `s3://BUCKET/PREFIX` into the bucket and the prefix (without
/// leading or trailing `/`; empty when the URL names only the bucket).
pub fn parse_s3_url(url: &str) -> Result<(String, String), StoreError> {
    // Never repeat credentials put in the URL (s3://KEY:SECRET@bucket/p;
    // an AWS secret may hold '/', so everything before the last '@' goes:
    // '@' is valid in neither a bucket name nor a prefix).
    let shown = match url.rfind('@') {
        Some(i) => format!("s3://<credentials removed>@{}", &url[i + 1..]),
        None => url.to_string(),
    };
    let bad = |why: &str| {
        Err(StoreError::new(
            ErrorKind::Other,
            "",
            format!("invalid S3 repository URL '{shown}': {why}; expected s3://BUCKET or s3://BUCKET/PREFIX"),
        ))
    };
    let Some(rest) = url.strip_prefix("s3://") else {
        return bad("it does not start with s3://");
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') || bucket.contains(':') {
        return bad("credentials or ports do not belong in the URL; use the AWS credential chain and --s3-endpoint");
    }
    if let Err(why) = check_bucket(bucket) {
        return bad(&why);
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() && validate_key(prefix).is_err() {
        return bad("the prefix must be '/'-separated segments of A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.len() < 3 || bucket.len() > 63 {
        return Err("the bucket name must be 3 to 63 characters long".into());
    }
    // AWS allows lowercase letters, digits, '.' and '-'; some compatible
    // stores also allow uppercase and '_', so accept those too.
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err("the bucket name may hold only letters, digits, '.', '-' and '_'".into());
    }
    Ok(())
}

/// `scheme://user:pass@host/...` → `scheme://host/...`, for messages.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return url.to_string(),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rfind('@') {
        Some(i) => format!("{scheme}://{}{path}", &authority[i + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_url_with_credentials_is_refused_without_repeating_them() {
        for url in [
            "s3://AKIAKEY:s3cr3tValue@bucket/p",
            "s3://s3cr3tValue@bucket",
            "s3://AKIAKEY:s3cr3tValue@bucket:9000/p/q",
            "s3://AKIAKEY:s3cr/3tValue@bucket/p",
        ] {
            let msg = parse_s3_url(url).expect_err(url).to_string();
            assert!(
                !msg.contains("s3cr3tValue") && !msg.contains("AKIAKEY"),
                "{msg}"
            );
            assert!(msg.contains("credentials"), "{msg}");
        }
    }

    #[test]
    fn s3_urls_parse() {
        let ok = |u: &str| parse_s3_url(u).expect(u);
        assert_eq!(ok("s3://bucket"), ("bucket".into(), "".into()));
        assert_eq!(ok("s3://bucket/"), ("bucket".into(), "".into()));
        assert_eq!(
            ok("s3://my.bucket-1/a/b/c/"),
            ("my.bucket-1".into(), "a/b/c".into())
        );
        for bad in [
            "",
            "bucket/x",
            "https://bucket/x",
            "s3://",
            "s3://ab",
            "s3://key:secret@bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://buc ket/x",
        ] {
            let e = parse_s3_url(bad).expect_err(bad);
            assert!(e.to_string().contains("s3://BUCKET"), "{bad}: {e}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cfg = S3Config {
            bucket: "bucket".into(),
            endpoint: Some("http://user:topsecret@127.0.0.1:9000/".into()),
            credentials: Some(S3Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI".into(),
                session_token: Some("tokensecret".into()),
            }),
            ..Default::default()
        };
        let dbg = format!("{cfg:?}");
        for secret in ["topsecret", "wJalrXUtnFEMI", "tokensecret"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("127.0.0.1:9000"), "{dbg}");
    }

    #[test]
    fn attempt_time_grows_with_size() {
        let t = Timeouts::default();
        assert_eq!(t.attempt_for(0), t.attempt);
        assert_eq!(t.attempt_for(1), t.attempt + t.attempt_per_mib);
        assert_eq!(t.attempt_for(16 << 20), t.attempt + t.attempt_per_mib * 16);
    }

    #[test]
    fn config_is_validated() {
        let good = S3Config::from_url("s3://bucket/p").expect("url");
        assert!(good.validate().is_ok());
        let mut c = good.clone();
        c.endpoint = Some("127.0.0.1:9000".into());
        assert!(c.validate().is_err(), "endpoint without scheme");
        let mut c = good.clone();
        c.part_size = 1024;
        assert!(c.validate().is_err(), "tiny parts");
        let mut c = good;
        c.multipart_threshold = 6 << 20;
        c.part_size = 7 << 20;
        assert!(c.validate().is_err(), "parts above the threshold");
    }
}

/// Where a repository is: what `--repo` (and the VFS's `repo=`) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

/// Parses a repository URL: a local path, `file:///PATH` or
/// `s3://BUCKET/PREFIX`. The error says what is wrong and what to write.
pub fn parse_repo_url(url: &str) -> Result<RepoUrl, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("the repository URL is empty; give --repo PATH, --repo file:///PATH or --repo s3://BUCKET/PREFIX".into());
    }
    // `s3:/b/p`, `s3:b/p`, `S3://b/p`: an S3 URL mistyped, never a local
    // directory named `s3:` (that would silently ignore --s3-endpoint).
    if url.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("s3:")) && !url.starts_with("s3://") {
        let rest = url[3..].trim_start_matches('/');
        return Err(format!(
            "invalid repository URL '{url}': an S3 repository is written s3://BUCKET/PREFIX (two slashes, lowercase s3), e.g. s3://{rest}; for a local directory whose name starts with 's3:', write ./{url}"
        ));
    }
    if url.starts_with("s3://") {
        let (bucket, prefix) = parse_s3_url(url).map_err(|e| e.to_string())?;
        return Ok(RepoUrl::S3 { bucket, prefix });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!("invalid repository URL '{url}': a file URL needs an absolute path, like file:///var/backups/repo"));
        }
        return Ok(RepoUrl::Local(rest.into()));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(format!("unsupported repository URL scheme '{scheme}://' in '{url}'; use a local path, file:// or s3://"));
    }
    Ok(RepoUrl::Local(url.into()))
}
