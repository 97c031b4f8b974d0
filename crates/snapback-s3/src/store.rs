use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use snapback_storage::{
    validate_key, ErrorKind, ObjectInfo, PutOutcome, RequestStats, Store, StoreError, Tuning,
};
use tokio::runtime::Runtime;

use crate::config::{redact_userinfo, S3Config};
use crate::errors::{classify, Fail};

/// A [`Store`] on an S3 bucket (AWS S3 or an S3-compatible server).
///
/// Synchronous: each method blocks the calling thread on a process-wide
/// tokio runtime private to this crate. It is `Send + Sync`, and many
/// threads may call it at once. Do not call it from inside an async task
/// (use `spawn_blocking`): blocking inside a runtime panics.
///
/// It retries by itself, in one loop of its own (see [`S3Config::retry`]);
/// the SDK's retries are off.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    rt: &'static Runtime,
    bucket: String,
    /// The configured prefix followed by `/`, or empty.
    prefix: String,
    location: String,
    cfg: S3Config,
    stats: Stats,
    /// Cleared when the server answers `501 NotImplemented` to
    /// `If-None-Match: *`; from then on `put_if_absent` is HEAD-then-PUT.
    conditional_writes: AtomicBool,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Stats {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestStats {
        RequestStats {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            heads: self.heads.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// The runtime that runs every S3 request of the process. Two worker
/// threads drive the I/O; the calling threads run their own requests in
/// `block_on`, so concurrency is bounded by the callers, not by this pool.
fn runtime() -> Result<&'static Runtime, StoreError> {
    static RT: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("snapback-s3")
        .enable_all()
        .build()
        .map_err(|e| StoreError::from_io("", "cannot start the S3 I/O runtime", e))?;
    // If another thread won the race, ours is dropped here, outside any
    // async context, which is fine.
    Ok(RT.get_or_init(|| rt))
}

fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// How many GETs a restore runs at once (see `Tuning::read_parallelism`).
const S3_READ_PARALLELISM: usize = 16;

/// How many bytes a restore fetches ahead of the window it fills, and the
/// longest range it asks for (see `Tuning::read_ahead`): 16 GETs of 4 MiB.
const S3_READ_AHEAD: u64 = 64 << 20;
const S3_READ_AHEAD_RANGE: u64 = 4 << 20;

/// The most parts a multipart upload may have.
const MAX_PARTS: usize = 10_000;

/// Which billing class a request belongs to.
#[derive(Clone, Copy)]
enum Req {
    Put,
    Get,
    Head,
    List,
    Delete,
}

impl S3Store {
    /// Opens the repository at `cfg.bucket`/`cfg.prefix`.
    ///
    /// Sends no request: credentials are resolved on first use, and a wrong
    /// bucket shows on the first operation. Credentials come from
    /// `cfg.credentials` or else the standard AWS chain; the endpoint from
    /// `cfg.endpoint` or else `AWS_ENDPOINT_URL`; the region from
    /// `cfg.region` or else the chain, falling back to `us-east-1`.
    pub fn open(cfg: S3Config) -> Result<S3Store, StoreError> {
        cfg.validate()?;
        let rt = runtime()?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.timeouts.connect)
            .read_timeout(cfg.timeouts.read)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            // Retries are ours (one loop, body reads included): see `retrying`.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            // We send our own SHA-256 on every upload; the SDK's default CRC
            // checksums and aws-chunked bodies break many compatible stores.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep.clone());
        }
        if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "snapback-static",
            ));
        }
        let sdk = rt.block_on(loader.load());
        let region = sdk
            .region()
            .cloned()
            .unwrap_or_else(|| Region::from_static("us-east-1"));
        let endpoint = sdk.endpoint_url().map(redact_userinfo);
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .region(region.clone())
            .force_path_style(cfg.path_style)
            .build();
        let client = Client::from_conf(conf);

        let prefix = if cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", cfg.prefix.trim_matches('/'))
        };
        let mut location = format!("s3://{}/{}", cfg.bucket, prefix.trim_end_matches('/'));
        if let Some(ep) = &endpoint {
            location.push_str(&format!(" at {ep}"));
        }
        tracing::debug!(%location, region = %region, path_style = cfg.path_style, "opened S3 store");
        Ok(S3Store {
            inner: Arc::new(Inner {
                client,
                rt,
                bucket: cfg.bucket.clone(),
                prefix,
                location,
                cfg,
                stats: Stats::default(),
                conditional_writes: AtomicBool::new(true),
            }),
        })
    }

    /// Checks that the bucket exists and the credentials may use it (one
    /// HEAD request on the bucket). For `init` and diagnostics.
    pub fn check_bucket(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner.rt.block_on(inner.retrying("HEAD bucket", "", Some(0), |_| async move {
            inner.count(Req::Head, 0);
            match inner.client.head_bucket().bucket(&inner.bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let mut f = classify("HEAD bucket", &e);
                    if f.is_status(404) {
                        f = Fail::permanent(
                            ErrorKind::Other,
                            format!(
                                "bucket '{}' does not exist at {}: check the bucket name, the endpoint and the region",
                                inner.bucket, inner.location
                            ),
                        );
                    }
                    Err(f)
                }
            }
        }))
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn count(&self, req: Req, bytes_sent: u64) {
        let c = match req {
            Req::Put => &self.stats.puts,
            Req::Get => &self.stats.gets,
            Req::Head => &self.stats.heads,
            Req::List => &self.stats.lists,
            Req::Delete => &self.stats.deletes,
        };
        Stats::add(c, 1);
        Stats::add(&self.stats.bytes_sent, bytes_sent);
    }

    /// Runs `op` until it succeeds, fails for good, runs out of attempts or
    /// runs out of time. `op` gets the attempt number, 1-based.
    ///
    /// With `size` known (the bytes to send or receive), each attempt is
    /// bounded by the attempt timeout scaled by `size`, and the whole by the
    /// operation timeout. With `size` unknown (a whole-object GET), `op`
    /// bounds each attempt itself once it learns the size, and the
    /// operation timeout only stops further retries.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        key: &str,
        size: Option<u64>,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        let t = &self.cfg.timeouts;
        let policy = &self.cfg.retry;
        let started = Instant::now();
        let deadline = started + t.operation_for(size.unwrap_or(0));
        let mut attempt = 1u32;
        loop {
            let result = match size {
                None => op(attempt).await,
                Some(size) => {
                    let limit = t
                        .attempt_for(size)
                        .min(deadline.saturating_duration_since(Instant::now()));
                    match tokio::time::timeout(limit, op(attempt)).await {
                        Ok(r) => r,
                        Err(_) => Err(timed_out(what, limit)),
                    }
                }
            };
            let fail = match result {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let elapsed = started.elapsed();
            if !fail.retry {
                let suffix = if attempt > 1 {
                    format!(" (on attempt {attempt})")
                } else {
                    String::new()
                };
                return Err(fail.into_store_error(key, &suffix));
            }
            let delay = policy.delay(attempt);
            if attempt >= policy.attempts || Instant::now() + delay >= deadline {
                tracing::warn!(op = what, key, attempt, error = %fail.message, "giving up");
                let suffix = format!(
                    " (gave up after {attempt} attempt{} in {:.1}s)",
                    if attempt == 1 { "" } else { "s" },
                    elapsed.as_secs_f64()
                );
                return Err(fail.into_store_error(key, &suffix));
            }
            tracing::warn!(
                op = what,
                key,
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %fail.message,
                "retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// HEAD: size and SHA-256 (when the store keeps it) of an object, or
    /// `None`. One attempt.
    async fn head_once(&self, full: &str) -> Result<Option<(u64, Option<String>)>, Fail> {
        self.count(Req::Head, 0);
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match r {
            Ok(out) => {
                let size = out.content_length().unwrap_or(0).max(0) as u64;
                Ok(Some((size, out.checksum_sha256().map(str::to_string))))
            }
            Err(e) => {
                let f = classify("HEAD", &e);
                if f.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(f)
                }
            }
        }
    }

    async fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let full = self.full_key(key);
        let r = self
            .retrying("HEAD", key, Some(0), |_| self.head_once(&full))
            .await?;
        Ok(r.map(|(size, _)| size))
    }

    /// Checks the SHA-256 that the server echoed for an upload.
    fn check_echo(&self, what: &str, echoed: Option<&str>, ours: &str) -> Result<(), Fail> {
        match echoed {
            Some(got) if got == ours => Ok(()),
            Some(got) => Err(Fail::permanent(
                ErrorKind::Corrupt,
                format!(
                    "S3 {what}: the server stored data with SHA-256 {got}, but {ours} was sent; \
                     something between here and the store altered the upload"
                ),
            )),
            None if self.cfg.require_checksum_echo => Err(Fail::new(
                ErrorKind::Corrupt,
                format!(
                    "S3 {what}: the response does not confirm the SHA-256 of the upload \
                     (no x-amz-checksum-sha256); the upload is not verified"
                ),
            )),
            None => Ok(()),
        }
    }

    // ---- put ----

    async fn put(self: &Arc<Self>, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        if data.len() > self.cfg.multipart_threshold {
            return self.put_multipart(key, &full, data).await;
        }
        let body = Bytes::copy_from_slice(data);
        let sha = sha256_b64(data);
        let len = data.len() as u64;
        self.retrying("PUT", key, Some(len), |attempt| {
            self.put_attempt(&full, body.clone(), &sha, attempt)
        })
        .await
    }

    async fn put_attempt(
        &self,
        full: &str,
        body: Bytes,
        sha: &str,
        attempt: u32,
    ) -> Result<PutOutcome, Fail> {
        let len = body.len() as u64;
        loop {
            let conditional = self.conditional_writes.load(Ordering::Relaxed);
            if !conditional {
                // Racy: another writer may create the object between this
                // HEAD and the PUT below, and the PUT then replaces it. See
                // docs/s3.md.
                if let Some(found) = self.head_once(full).await? {
                    return Ok(outcome_of_existing(found, sha, len, attempt));
                }
            }
            self.count(Req::Put, len);
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(full)
                .content_length(len as i64)
                .checksum_sha256(sha)
                .body(ByteStream::from(body.clone()));
            if conditional {
                req = req.if_none_match("*");
            }
            let err = match req.send().await {
                Ok(out) => {
                    self.check_echo("PUT", out.checksum_sha256(), sha)?;
                    return Ok(PutOutcome::Created);
                }
                Err(e) => classify("PUT", &e),
            };
            if err.is_status(412) || err.has_code("PreconditionFailed") {
                return self.existing_outcome(full, sha, len, attempt).await;
            }
            if conditional && (err.is_status(501) || err.has_code("NotImplemented")) {
                tracing::warn!(
                    location = %self.location,
                    "the S3 store does not support conditional writes (If-None-Match); \
                     falling back to HEAD then PUT, which is racy"
                );
                self.conditional_writes.store(false, Ordering::Relaxed);
                continue;
            }
            return Err(err);
        }
    }

    /// The conditional write found an object. On a retry it may be ours,
    /// stored by an attempt whose response was lost: compare checksums.
    async fn existing_outcome(
        &self,
        full: &str,
        sha: &str,
        len: u64,
        attempt: u32,
    ) -> Result<PutOutcome, Fail> {
        if attempt == 1 {
            return Ok(PutOutcome::AlreadyExists);
        }
        Ok(match self.head_once(full).await? {
            Some(found) => outcome_of_existing(found, sha, len, attempt),
            None => PutOutcome::AlreadyExists,
        })
    }

    async fn put_multipart(
        self: &Arc<Self>,
        key: &str,
        full: &str,
        data: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        // A HEAD first: it spares uploading a large body that is already
        // there, and is the whole check on stores without conditional writes.
        if self.stat(key).await?.is_some() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let upload_id = self
            .retrying("CreateMultipartUpload", key, Some(0), |_| async move {
                self.count(Req::Put, 0);
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .send()
                    .await
                    .map_err(|e| classify("CreateMultipartUpload", &e))?;
                out.upload_id().map(str::to_string).ok_or_else(|| {
                    Fail::new(
                        ErrorKind::Transient,
                        "S3 CreateMultipartUpload: the response has no upload id",
                    )
                })
            })
            .await?;
        let result = self.upload_and_complete(key, full, data, &upload_id).await;
        if let Err(e) = &result {
            // Nothing to abort once complete succeeded (the object exists),
            // but an abort then is harmless: S3 answers NoSuchUpload.
            tracing::warn!(key, error = %e, "multipart upload failed; aborting it");
            self.count(Req::Put, 0);
            if let Err(ae) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await
            {
                let f = classify("AbortMultipartUpload", &ae);
                tracing::warn!(key, upload_id, error = %f.message,
                    "could not abort the multipart upload; a bucket lifecycle rule \
                     (AbortIncompleteMultipartUpload) will clean it up");
            }
        }
        result
    }

    async fn upload_and_complete(
        self: &Arc<Self>,
        key: &str,
        full: &str,
        data: &[u8],
        upload_id: &str,
    ) -> Result<PutOutcome, StoreError> {
        let all = Bytes::copy_from_slice(data);
        // S3 allows at most 10,000 parts: grow the parts for huge objects.
        let part_size = self.cfg.part_size.max(all.len().div_ceil(MAX_PARTS));
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.multipart_concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, start) in (0..all.len()).step_by(part_size).enumerate() {
            let part = all.slice(start..(start + part_size).min(all.len()));
            let number = i as i32 + 1;
            let (inner, sem) = (Arc::clone(self), Arc::clone(&sem));
            let (key, full, upload_id) = (key.to_string(), full.to_string(), upload_id.to_string());
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                inner
                    .upload_part(&key, &full, &upload_id, number, part)
                    .await
            });
        }
        let mut parts = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let part = joined.map_err(|e| {
                StoreError::new(
                    ErrorKind::Other,
                    key,
                    format!("S3 multipart upload: a part upload task failed: {e}"),
                )
            })??;
            parts.push(part);
        }
        parts.sort_by_key(|(p, _)| p.part_number());
        // Composite checksum of a multipart object: SHA-256 of the part
        // digests, then "-<parts>".
        let mut h = Sha256::new();
        for (_, digest) in &parts {
            h.update(digest);
        }
        let composite = base64::engine::general_purpose::STANDARD.encode(h.finalize());
        let whole = sha256_b64(data);
        let nparts = parts.len();
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts.into_iter().map(|(p, _)| p).collect()))
            .build();
        let len = data.len() as u64;
        let complete_conditional = AtomicBool::new(self.conditional_writes.load(Ordering::Relaxed));
        let outcome = self
            .retrying("CompleteMultipartUpload", key, Some(len), |attempt| {
                let completed = completed.clone();
                let (composite, whole, cond) = (&composite, &whole, &complete_conditional);
                async move {
                    let conditional = cond.load(Ordering::Relaxed);
                    self.count(Req::Put, 0);
                    let mut req = self
                        .client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .multipart_upload(completed);
                    if conditional {
                        req = req.if_none_match("*");
                    }
                    match req.send().await {
                        Ok(out) => {
                            if let Some(got) = out.checksum_sha256() {
                                let got = got.split('-').next().unwrap_or(got);
                                if got != composite && got != whole {
                                    return Err(Fail::permanent(
                                        ErrorKind::Corrupt,
                                        format!(
                                            "S3 CompleteMultipartUpload: the server reports SHA-256 {got}, \
                                             expected {composite}-{nparts} for the parts sent"
                                        ),
                                    ));
                                }
                            }
                            Ok(PutOutcome::Created)
                        }
                        Err(e) => {
                            let f = classify("CompleteMultipartUpload", &e);
                            if f.is_status(412) || f.has_code("PreconditionFailed") {
                                return Ok(PutOutcome::AlreadyExists);
                            }
                            if conditional && (f.is_status(501) || f.has_code("NotImplemented")) {
                                // Conditional PUT but not conditional
                                // complete: the HEAD before the upload is
                                // the (racy) check.
                                tracing::warn!(key = full, "the S3 store does not support \
                                    If-None-Match on CompleteMultipartUpload; completing without it");
                                cond.store(false, Ordering::Relaxed);
                                return Err(Fail::new(ErrorKind::Transient, "S3 CompleteMultipartUpload: \
                                    conditional completion not implemented; retrying without it"));
                            }
                            // A retry after a lost response finds the upload
                            // gone (NoSuchUpload, or 403/404 on some stores):
                            // the object is there if our complete went through.
                            if attempt > 1 && matches!(f.kind, ErrorKind::NotFound | ErrorKind::PermissionDenied)
                            {
                                if let Some((size, _)) = self.head_once(full).await? {
                                    if size == len {
                                        return Ok(PutOutcome::Created);
                                    }
                                }
                            }
                            Err(f)
                        }
                    }
                }
            })
            .await?;
        if outcome == PutOutcome::Created {
            // Confirm what the store now serves under the key.
            match self.stat(key).await? {
                Some(size) if size == len => {}
                other => {
                    return Err(StoreError::new(
                        ErrorKind::Corrupt,
                        key,
                        format!(
                            "S3 multipart upload completed, but the object is {} instead of {len} bytes",
                            other.map_or("missing".to_string(), |s| format!("{s} bytes"))
                        ),
                    ))
                }
            }
        }
        Ok(outcome)
    }

    /// Uploads one part; returns it with its raw SHA-256 digest.
    async fn upload_part(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<(CompletedPart, Vec<u8>), StoreError> {
        let digest = Sha256::digest(&body).to_vec();
        let sha = base64::engine::general_purpose::STANDARD.encode(&digest);
        let len = body.len() as u64;
        let what = format!("UploadPart {number}");
        let part = self
            .retrying(&what, key, Some(len), |_| {
                let (body, sha, what) = (body.clone(), &sha, &what);
                async move {
                    self.count(Req::Put, len);
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(len as i64)
                        .checksum_sha256(sha)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| classify(what, &e))?;
                    self.check_echo(what, out.checksum_sha256(), sha)?;
                    let etag = out.e_tag().ok_or_else(|| {
                        Fail::new(
                            ErrorKind::Transient,
                            format!("S3 {what}: the response has no ETag"),
                        )
                    })?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .checksum_sha256(sha)
                        .build())
                }
            })
            .await?;
        Ok((part, digest))
    }

    // ---- get ----

    /// One GET attempt of the whole object or of `len` bytes at `offset`.
    async fn get_once(&self, full: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>, Fail> {
        self.count(Req::Get, 0);
        let mut req = self.client.get_object().bucket(&self.bucket).key(full);
        match range {
            Some((off, len)) => req = req.range(format!("bytes={off}-{}", off + len - 1)),
            None => req = req.checksum_mode(ChecksumMode::Enabled),
        }
        let t = &self.cfg.timeouts;
        let sent = match range {
            // A range read is bounded as a whole by `retrying`.
            Some(_) => req.send().await,
            None => tokio::time::timeout(t.attempt, req.send())
                .await
                .map_err(|_| timed_out("GET", t.attempt))?,
        };
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                let f = classify("GET", &e);
                if f.is_status(416) || f.has_code("InvalidRange") {
                    return Err(Fail::permanent(
                        ErrorKind::Corrupt,
                        format!(
                            "S3 GET: range {}+{} is past the end of the object",
                            range.map_or(0, |r| r.0),
                            range.map_or(0, |r| r.1)
                        ),
                    ));
                }
                return Err(f);
            }
        };
        let declared = out.content_length();
        let content_range = out.content_range().map(str::to_string);
        let echoed = out.checksum_sha256().map(str::to_string);
        let body = match range {
            Some(_) => out.body.collect().await,
            None => {
                // Time for the body in proportion to its declared size.
                let limit = t.attempt_for(declared.unwrap_or(0).max(0) as u64);
                tokio::time::timeout(limit, out.body.collect())
                    .await
                    .map_err(|_| timed_out("GET", limit))?
            }
        }
        .map_err(|e| body_error(&e))?;
        let body = body_bytes(body);
        Stats::add(&self.stats.bytes_received, body.len() as u64);
        if let Some(n) = declared {
            if body.len() as u64 != n.max(0) as u64 {
                return Err(Fail::new(
                    ErrorKind::Corrupt,
                    format!(
                        "S3 GET: received {} bytes, the response declared {n}",
                        body.len()
                    ),
                ));
            }
        }
        match range {
            Some((off, len)) => {
                if let Some(total) = content_range.as_deref().and_then(range_total) {
                    if off + len > total {
                        return Err(Fail::permanent(
                            ErrorKind::Corrupt,
                            format!(
                                "S3 GET: range {off}+{len} is past the end of the object ({total} bytes)"
                            ),
                        ));
                    }
                } else if content_range.is_none() && body.len() as u64 >= off + len {
                    // The server ignored the Range header and sent it all.
                    return Ok(body[off as usize..(off + len) as usize].to_vec());
                }
                if body.len() as u64 != len {
                    return Err(Fail::new(
                        ErrorKind::Corrupt,
                        format!(
                            "S3 GET: asked for {len} bytes at {off}, received {}",
                            body.len()
                        ),
                    ));
                }
            }
            None => {
                // Whole-object SHA-256, when the store kept the one we sent
                // (multipart objects carry a composite "…-N": not checkable).
                if let Some(theirs) = echoed.as_deref().filter(|s| !s.contains('-')) {
                    let ours = sha256_b64(&body);
                    if ours != theirs {
                        return Err(Fail::new(
                            ErrorKind::Corrupt,
                            format!(
                                "S3 GET: the body's SHA-256 is {ours}, the object's is {theirs}"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(body)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        self.retrying("GET", key, None, |_| self.get_once(&full, None))
            .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        validate_key(key)?;
        let past_end = |size: u64| {
            StoreError::new(
                ErrorKind::Corrupt,
                key,
                format!("range {offset}+{len} is past the end of the object ({size} bytes)"),
            )
        };
        if offset.checked_add(len).is_none() {
            return Err(past_end(u64::MAX));
        }
        if len == 0 {
            return match self.stat(key).await? {
                None => Err(StoreError::new(ErrorKind::NotFound, key, "no such object")),
                Some(size) if offset > size => Err(past_end(size)),
                Some(_) => Ok(Vec::new()),
            };
        }
        let full = self.full_key(key);
        self.retrying("GET range", key, Some(len), |_| {
            self.get_once(&full, Some((offset, len)))
        })
        .await
    }

    // ---- list, delete ----

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying("LIST", prefix, Some(0), |_| {
                    let token = token.clone();
                    let full_prefix = &full_prefix;
                    async move {
                        self.count(Req::List, 0);
                        self.client
                            .list_objects_v2()
                            .bucket(&self.bucket)
                            .prefix(full_prefix)
                            .set_continuation_token(token)
                            .send()
                            .await
                            .map_err(|e| classify("LIST", &e))
                    }
                })
                .await?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                if validate_key(rel).is_err() {
                    tracing::debug!(key = k, "listing skips an object with a foreign key");
                    continue;
                }
                out.push(ObjectInfo {
                    key: rel.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    modified: obj
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        self.retrying("DELETE", key, Some(0), |_| async {
            self.count(Req::Delete, 0);
            match self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    let f = classify("DELETE", &e);
                    if f.kind == ErrorKind::NotFound && !f.has_code("NoSuchBucket") {
                        Ok(())
                    } else {
                        Err(f)
                    }
                }
            }
        })
        .await
    }
}

/// An object exists where a PUT wanted to create one. On a retry it may be
/// ours, stored by an attempt whose response was lost: it is when its size
/// and stored SHA-256 are ours.
fn outcome_of_existing(
    (size, theirs): (u64, Option<String>),
    sha: &str,
    len: u64,
    attempt: u32,
) -> PutOutcome {
    if attempt > 1 && size == len && theirs.as_deref() == Some(sha) {
        tracing::debug!("an earlier attempt stored the object");
        PutOutcome::Created
    } else {
        PutOutcome::AlreadyExists
    }
}

fn timed_out(what: &str, limit: std::time::Duration) -> Fail {
    Fail::new(
        ErrorKind::Transient,
        format!(
            "S3 {what} did not complete within {:.1}s (a stalled or very slow server)",
            limit.as_secs_f64()
        ),
    )
}

/// A failure while reading a response body: the SDK's own checksum check
/// (a body altered in transit) or a broken connection.
/// A response body as one `Vec`, its segments copied whole:
/// `AggregatedBytes::to_vec` collects it byte by byte, which took a fifth
/// of a restore's CPU time over S3.
fn body_bytes(body: aws_sdk_s3::primitives::AggregatedBytes) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes::Buf::remaining(&body));
    for seg in body.into_segments() {
        v.extend_from_slice(&seg);
    }
    v
}

fn body_error(e: &(dyn std::error::Error + 'static)) -> Fail {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(m) = err.downcast_ref::<aws_smithy_checksums::body::validate::Error>() {
            return Fail::new(
                ErrorKind::Corrupt,
                format!("S3 GET: the body does not match the object's SHA-256 (altered in transit): {m}"),
            );
        }
        cur = err.source();
    }
    Fail::new(
        ErrorKind::Transient,
        format!(
            "S3 GET: the response body broke off: {}",
            crate::errors::clean_detail(e)
        ),
    )
}

/// `bytes 0-9/1234` → 1234.
fn range_total(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

impl Store for S3Store {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.inner.rt.block_on(self.inner.put(key, data))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.inner.rt.block_on(self.inner.get(key))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner
            .rt
            .block_on(self.inner.get_range(key, offset, len))
    }

    fn stat(&self, key: &str) -> Result<Option<u64>, StoreError> {
        validate_key(key)?;
        self.inner.rt.block_on(self.inner.stat(key))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.rt.block_on(self.inner.list(prefix))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.rt.block_on(self.inner.delete(key))
    }

    fn request_stats(&self) -> RequestStats {
        self.inner.stats.snapshot()
    }

    /// Range GETs wait on the network and the server, not on a core: 16
    /// at once keep a link busy without flooding the server, and as many
    /// PUTs. A request waits on the server, and one stream is slower than
    /// several (docs/benchmarks.md, "Restore": the floor on the local S3
    /// server): a restore keeps its GETs in flight ahead of the windows it
    /// fills.
    fn tuning(&self) -> Tuning {
        Tuning {
            read_parallelism: S3_READ_PARALLELISM,
            write_parallelism: S3_READ_PARALLELISM,
            read_ahead: S3_READ_AHEAD,
            read_ahead_range: S3_READ_AHEAD_RANGE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_totals_parse() {
        assert_eq!(range_total("bytes 0-9/1234"), Some(1234));
        assert_eq!(range_total("bytes 0-9/*"), None);
        assert_eq!(range_total("garbage"), None);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<S3Store>();
    }

    #[test]
    fn location_and_debug_hide_credentials() {
        let store = S3Store::open(S3Config {
            bucket: "bucket".into(),
            prefix: "some/prefix".into(),
            endpoint: Some("http://user:hunter2@127.0.0.1:1".into()),
            path_style: true,
            region: Some("us-east-1".into()),
            credentials: Some(crate::S3Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "verysecret".into(),
                session_token: None,
            }),
            ..Default::default()
        })
        .expect("open sends no request");
        let loc = store.location();
        assert_eq!(loc, "s3://bucket/some/prefix at http://127.0.0.1:1");
        let dbg = format!("{store:?}");
        for s in ["hunter2", "verysecret", "AKIDEXAMPLE"] {
            assert!(!loc.contains(s) && !dbg.contains(s), "{loc} {dbg}");
        }
    }

    #[test]
    fn sha256_is_base64_of_the_digest() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            sha256_b64(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }
}
