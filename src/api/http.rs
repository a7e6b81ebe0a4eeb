//! The HTTP edge of the API (axum on tokio): routes, authentication by
//! bearer API key, Idempotency-Key handling, RFC 9457 problem bodies, and the
//! event stream as Server-Sent Events or long-poll. Database calls are short
//! and made under the shared connection's lock; jobs run elsewhere
//! (`runner`). Not for job rules (`jobs`) or key storage (`keys`).

use super::jobs::{self, Job, JobSpec};
use super::keys::{self, Key};
use super::{db, ids, Api};
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Request bodies larger than this are refused before they are read.
const BODY_LIMIT: usize = 64 * 1024;
/// Idempotency records are kept at least this long.
const IDEMPOTENCY_RETENTION_MS: i64 = 48 * 3600 * 1000;

type Shared = State<Arc<Api>>;

/// The problem body's media type, for the OpenAPI descriptions below.
const PROBLEM: &str = "application/problem+json";

/// Every route the API serves, each registered through its handler's
/// `#[utoipa::path]` description (`routes!`): the router and the OpenAPI
/// document are built from this one list, so a route cannot be served
/// without being described. Add routes only here, only with `routes!`
/// (a unit test in `openapi` refuses a plain `.route(`).
pub(super) fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::with_openapi(super::openapi::base())
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(show_job))
        .routes(routes!(cancel_job))
        .routes(routes!(resume_job))
        .routes(routes!(events))
        .routes(routes!(audit))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .routes(routes!(super::ui::redirect))
        .routes(routes!(super::ui::index))
        .routes(routes!(super::ui::script))
        .routes(routes!(super::ui::style))
        .routes(routes!(super::ui::login))
}

/// The OpenAPI document as served.
#[derive(Clone)]
struct Document(Arc<str>);

pub(super) async fn serve(
    api: Arc<Api>,
    listener: std::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("API listener: {e}"),
    };
    let (router, doc) = routes().split_for_parts();
    let doc = super::openapi::finish(doc);
    let doc = Document(doc.to_json().unwrap_or_default().into());
    let app = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(doc))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            rate_limit,
        ))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(api);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        None => axum::serve(listener, app).await,
        Some(config) => {
            use axum::serve::ListenerExt;
            let l = super::tls::Listener {
                tcp: listener,
                acceptor: tokio_rustls::TlsAcceptor::from(config),
            };
            axum::serve(l.tap_io(|_| {}), app).await
        }
    };
    if let Err(e) = served {
        tracing::error!("API server: {e}");
    }
}

/// One log line per request: method, route template, status. Never a header.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |m| m.as_str().to_string());
    let res = next.run(req).await;
    // methods outside the API's own are counted together: a bounded label
    let m = match method.as_str() {
        "GET" | "POST" | "HEAD" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method.as_str(),
        _ => "other",
    };
    super::metrics::http_request(&route, m, res.status().as_u16());
    tracing::info!(%method, route, status = res.status().as_u16(), "api request");
    res
}

/// Spends one request of the caller's quota: the API key's when it is
/// valid, else the client address's. Adds the IETF headers to every answer.
async fn rate_limit(State(api): Shared, req: Request, next: Next) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or("unknown".to_string(), |c| c.0.ip().to_string());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(|s| s.trim().to_string());
    let who = match presented {
        Some(s) => match keys::verify(&api.conn(), &s) {
            Ok(k) => format!("key:{}", k.id),
            Err(_) => format!("addr:{addr}"),
        },
        None => format!("addr:{addr}"),
    };
    let d = api.limiter.check(&who);
    let policy = api.limiter.policy();
    let mut res = if d.allowed {
        next.run(req).await
    } else {
        super::metrics::rate_limited();
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests: try again in {} s", d.reset_secs),
        )
        .policies(&["default"])
        .header(header::RETRY_AFTER, d.reset_secs.to_string())
        .into_response()
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&policy) {
        h.insert("ratelimit-policy", v);
    }
    if let Ok(v) =
        HeaderValue::from_str(&format!("\"default\";r={};t={}", d.remaining, d.reset_secs))
    {
        h.insert("ratelimit", v);
    }
    res
}

/// An RFC 9457 problem: `application/problem+json`, with a stable `code`.
pub struct Problem {
    status: StatusCode,
    body: Box<ProblemBody>,
    headers: Vec<(header::HeaderName, String)>,
}

/// The body of every error answer (RFC 9457 `application/problem+json`).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// urn:ferry:problem:CODE
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase
    pub title: String,
    pub status: u16,
    /// What was wrong, for a person
    pub detail: String,
    /// A stable code, for a program (e.g. unknown_job, idempotency_key_in_use)
    pub code: String,
    /// The fields of the body that were wrong (JSON pointers)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldProblem>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The scope the API key lacks (403)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_scope: Option<String>,
    /// The rate-limit policies exceeded (429)
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    pub violated_policies: Option<Vec<String>>,
}

/// One wrong field of a request body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// A JSON pointer into the body, e.g. /src
    pub pointer: String,
    pub detail: String,
}

impl Problem {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            body: Box::new(ProblemBody {
                kind: format!("urn:ferry:problem:{}", code.replace('_', "-")),
                title: status.canonical_reason().unwrap_or("error").to_string(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.to_string(),
                errors: None,
                job_id: None,
                missing_scope: None,
                violated_policies: None,
            }),
            headers: Vec::new(),
        }
    }
    fn policies(mut self, names: &[&str]) -> Problem {
        self.body.violated_policies = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }
    fn scope(mut self, scope: &str) -> Problem {
        self.body.missing_scope = Some(scope.to_string());
        self
    }
    fn field(mut self, pointer: &str, detail: &str) -> Problem {
        self.body.errors = Some(vec![FieldProblem {
            pointer: pointer.to_string(),
            detail: detail.to_string(),
        }]);
        self
    }
    fn job(mut self, id: &str) -> Problem {
        self.body.job_id = Some(id.to_string());
        self
    }
    fn header(mut self, name: header::HeaderName, v: impl Into<String>) -> Problem {
        self.headers.push((name, v.into()));
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&self.body).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name, v);
            }
        }
        res
    }
}

fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!("API: {e}");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the daemon could not complete the request; see its log",
    )
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut res = (status, v.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not take that method",
    )
}

/// Checks the bearer key and its scope; every denial is audited.
fn authorize(
    api: &Api,
    headers: &HeaderMap,
    scope: &str,
    action: &str,
    remote: SocketAddr,
) -> Result<Key, Problem> {
    let remote = remote.ip().to_string();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let conn = api.conn();
    // the dashboard's session cookie, when no key is presented
    if presented.is_none() {
        if let Some(csrf) = super::ui::session(&conn, headers) {
            if scope != "jobs:read" && scope != "jobs:write" {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!("the dashboard session lacks the scope {scope}"),
                ));
            }
            if scope == "jobs:write" && !super::ui::csrf_ok(headers, &csrf) {
                let _ = db::audit(
                    &conn,
                    &db::Audit {
                        key_id: None,
                        key_name: Some("dashboard"),
                        action,
                        target: None,
                        result: "denied: missing or wrong X-CSRF-Token",
                        remote: Some(&remote),
                    },
                );
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "csrf_failed",
                    "a dashboard request that changes something needs the X-CSRF-Token header",
                ));
            }
            return Ok(Key {
                id: "dashboard".into(),
                name: "dashboard".into(),
                scopes: vec!["jobs:read".into(), "jobs:write".into()],
                modules: Vec::new(),
                created: String::new(),
                revoked: None,
            });
        }
    }
    let found = match presented {
        None => Err(keys::Denied::Missing),
        Some(s) => keys::verify(&conn, s),
    };
    let key = match found {
        Ok(k) => k,
        Err(why) => {
            let _ = db::audit(
                &conn,
                &db::Audit {
                    key_id: None,
                    key_name: None,
                    action,
                    target: None,
                    result: &format!("denied: {}", why.reason()),
                    remote: Some(&remote),
                },
            );
            tracing::warn!(remote, reason = why.reason(), "API authentication failed");
            super::metrics::auth_failure(why.reason());
            let detail = match why {
                keys::Denied::Missing => "an API key is required: Authorization: Bearer fk_...",
                keys::Denied::Revoked => "this API key has been revoked",
                _ => "the API key is not valid",
            };
            return Err(
                Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
                    .header(header::WWW_AUTHENTICATE, "Bearer realm=\"ferry\""),
            );
        }
    };
    if !key.has(scope) {
        super::metrics::auth_failure("insufficient_scope");
        let _ = db::audit(
            &conn,
            &db::Audit {
                key_id: Some(&key.id),
                key_name: Some(&key.name),
                action,
                target: None,
                result: &format!("denied: missing scope {scope}"),
                remote: Some(&remote),
            },
        );
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this API key lacks the scope {scope}"),
        )
        .scope(scope));
    }
    Ok(key)
}

fn audit_ok(api: &Api, key: &Key, action: &str, target: &str, result: &str, remote: SocketAddr) {
    let _ = db::audit(
        &api.conn(),
        &db::Audit {
            key_id: Some(&key.id),
            key_name: Some(&key.name),
            action,
            target: Some(target),
            result,
            remote: Some(&remote.ip().to_string()),
        },
    );
}

/// Reads a JSON body: content type, size (checked before reading), syntax.
pub(super) async fn json_body(headers: &HeaderMap, body: Body) -> Result<Value, Problem> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: application/json (got {:?})", ctype),
        ));
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {BODY_LIMIT} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice::<Value>(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// The Idempotency-Key header, checked: an RFC 8941 string (quotes
/// optional), 1-255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters (optionally a quoted string)",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// A test hook: with `FERRY_TEST_HOOKS=1` in the daemon's environment,
/// `FERRY_TEST_SUBMIT_DELAY_MS` holds a submit with an Idempotency-Key
/// between claiming the key and creating the job, so a test can send the
/// same key while the first request is still being processed. Without
/// `FERRY_TEST_HOOKS=1` it is never read.
fn submit_delay() -> Option<Duration> {
    if std::env::var_os("FERRY_TEST_HOOKS").is_none_or(|v| v != "1") {
        return None;
    }
    let ms: u64 = std::env::var("FERRY_TEST_SUBMIT_DELAY_MS")
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.min(60_000)))
}

fn sha256_hex(b: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn job_by_id(api: &Api, id: &str) -> Result<Option<Value>, Problem> {
    api.conn()
        .query_row("SELECT * FROM jobs WHERE id = ?1", [id], jobs::view)
        .optional()
        .map_err(internal)
}

/// Whether `key` may see a job (its module allow-list covers both sides).
fn visible(api: &Api, key: &Key, job: &Value) -> bool {
    if key.modules.is_empty() {
        return true;
    }
    let mut addrs: Vec<&str> = vec![job["src"].as_str().unwrap_or("")];
    match job["options"]["destinations"].as_array() {
        // a fan-out: its source and every destination
        Some(d) => addrs.extend(d.iter().map(|a| a.as_str().unwrap_or(""))),
        None => addrs.push(job["dst"].as_str().unwrap_or("")),
    }
    addrs.iter().all(|addr| {
        jobs::side(addr, "/src", &api.modules, false)
            .map(|s| key.may_use_module(&s.module))
            .unwrap_or(false)
    })
}

/// Submits a job; with an Idempotency-Key, at most once per API key.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    summary = "Submit a job",
    security(("bearer" = ["jobs:write"])),
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters; the same key and body return the first answer (with Idempotent-Replayed: true) and never start a second job; kept 48 h")),
    request_body(content = JobSpec, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the job, queued (or the first answer again)", body = Job,
            headers(("Location" = String, description = "/v1/jobs/{id}"),
                    ("Idempotent-Replayed" = String, description = "true on a replayed answer"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "A request with this Idempotency-Key is still being processed", body = ProblemBody, content_type = PROBLEM),
        (status = 413, description = "The body is over 64 KiB (checked before reading)", body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = "Not Content-Type: application/json", body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "An invalid job (unknown field, bad address or option), or the Idempotency-Key was used with another body", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn create_job(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let key = authorize(&api, &headers, "jobs:write", "job.create", remote)?;
    let idem = idempotency_key(&headers)?;
    let value = json_body(&headers, body).await?;
    let fingerprint = sha256_hex(value.to_string().as_bytes());
    // the first request with a key claims it; a second one sees it in flight
    if let Some(k) = &idem {
        let now = ids::now_ms();
        let prior = api
            .write(|tx| {
                tx.execute(
                    "DELETE FROM idempotency WHERE created_ms < ?1",
                    [now - IDEMPOTENCY_RETENTION_MS],
                )?;
                let prior = tx
                    .query_row(
                        "SELECT fingerprint, status, body FROM idempotency WHERE key_id = ?1 AND idem_key = ?2",
                        params![key.id, k],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<u16>>(1)?, r.get::<_, Option<String>>(2)?)),
                    )
                    .optional()?;
                if prior.is_none() {
                    tx.execute(
                        "INSERT INTO idempotency (key_id, idem_key, fingerprint, created_ms) VALUES (?1, ?2, ?3, ?4)",
                        params![key.id, k, fingerprint, now],
                    )?;
                }
                Ok(prior)
            })
            .map_err(internal)?;
        match prior {
            None => {}
            Some((fp, _, _)) if fp != fingerprint => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request body",
                ))
            }
            Some((_, None, _)) => {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still being processed",
                ))
            }
            Some((_, Some(status), body)) => {
                let v: Value = serde_json::from_str(&body.unwrap_or_default()).unwrap_or_default();
                let mut res =
                    json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &v);
                res.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                if let Some(id) = v["id"].as_str() {
                    if let Ok(l) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
                        res.headers_mut().insert(header::LOCATION, l);
                    }
                }
                return Ok(res);
            }
        }
        // the key is claimed ("processing", status NULL): a second request
        // with it gets 409 until this one has answered
        if let Some(d) = submit_delay() {
            tokio::time::sleep(d).await;
        }
    }
    let result = create_checked(&api, &key, value, &fingerprint, idem.as_deref(), remote);
    if result.is_err() {
        // a request that did not get as far as a job is not remembered
        if let Some(k) = &idem {
            let _ = api.write(|tx| {
                tx.execute(
                    "DELETE FROM idempotency WHERE key_id = ?1 AND idem_key = ?2 AND status IS NULL",
                    params![key.id, k],
                )
            });
        }
    }
    result
}

fn create_checked(
    api: &Api,
    key: &Key,
    value: Value,
    _fingerprint: &str,
    idem: Option<&str>,
    remote: SocketAddr,
) -> Result<Response, Problem> {
    let spec: JobSpec = serde_json::from_value(value).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the job is not valid: {e}"),
        )
    })?;
    let now = ids::now_ms();
    let resolved = jobs::resolve(&spec, &api.modules, now, &|m| key.may_use_module(m));
    let resolved = match resolved {
        Ok(r) => r,
        Err(jobs::Invalid::Forbidden(d)) => {
            audit_ok(api, key, "job.create", "-", &format!("denied: {d}"), remote);
            return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", d));
        }
        Err(jobs::Invalid::Field { pointer, detail }) => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_job",
                detail.clone(),
            )
            .field(pointer, &detail))
        }
    };
    let id = ids::new_id();
    let spec_text = serde_json::to_string(&spec).map_err(internal)?;
    let view = api
        .write(|tx| {
            tx.execute(
                "INSERT INTO jobs (id, key_id, spec, state, status_detail, deadline_ms, created_ms, updated_ms) VALUES (?1, ?2, ?3, 'queued', 'queued', ?4, ?5, ?5)",
                params![id, key.id, spec_text, resolved.deadline_ms, now],
            )?;
            let mut data = json!({"op": spec.op, "src": spec.src, "dst": spec.dst, "label": spec.label});
            if !spec.destinations.is_empty() {
                data["destinations"] = json!(spec.destinations);
            }
            db::event(tx, Some(&id), "created", &data)?;
            let view = tx.query_row("SELECT * FROM jobs WHERE id = ?1", [&id], jobs::view)?;
            if let Some(k) = idem {
                tx.execute(
                    "UPDATE idempotency SET status = 202, body = ?3 WHERE key_id = ?1 AND idem_key = ?2",
                    params![key.id, k, view.to_string()],
                )?;
            }
            Ok(view)
        })
        .map_err(internal)?;
    audit_ok(api, key, "job.create", &id, "ok", remote);
    api.wake_runner();
    let mut res = json_response(StatusCode::ACCEPTED, &view);
    if let Ok(l) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        res.headers_mut().insert(header::LOCATION, l);
    }
    Ok(res)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only jobs in this state
    #[param(value_type = Option<jobs::State>)]
    state: Option<String>,
    /// At most this many (1 to 1000; default 100)
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /v1/jobs`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct JobList {
    #[schema(value_type = Vec<Job>)]
    jobs: Vec<Value>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    summary = "List jobs, newest first",
    security(("bearer" = ["jobs:read"])),
    params(ListQuery),
    responses(
        (status = 200, description = "The jobs the key may see", body = JobList),
        (status = 400, description = "A bad query", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn list_jobs(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let key = authorize(&api, &headers, "jobs:read", "job.list", remote)?;
    let Query(q) =
        q.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let jobs: Vec<Value> = {
        let conn = api.conn();
        let mut st = conn
            .prepare(
                "SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![q.state, limit], jobs::view)
            .map_err(internal)?;
        rows.collect::<Result<_, _>>().map_err(internal)?
    };
    let jobs: Vec<Value> = jobs
        .into_iter()
        .filter(|j| visible(&api, &key, j))
        .collect();
    Ok(json_response(StatusCode::OK, &json!(JobList { jobs })))
}

fn unknown_job(id: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "unknown_job", format!("no job {id}")).job(id)
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    summary = "Show a job",
    security(("bearer" = ["jobs:read"])),
    params(("id" = String, Path, description = "The job's id (a ULID)")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job (or not one the key may see)", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn show_job(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let key = authorize(&api, &headers, "jobs:read", "job.show", remote)?;
    match job_by_id(&api, &id)? {
        Some(j) if visible(&api, &key, &j) => Ok(json_response(StatusCode::OK, &j)),
        _ => Err(unknown_job(&id)),
    }
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    summary = "Cancel a queued or running job",
    security(("bearer" = ["jobs:write"])),
    params(("id" = String, Path, description = "The job's id (a ULID)")),
    responses(
        (status = 202, description = "The job, canceled (or stopping)", body = Job),
        (status = 404, description = "No such job", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "The job has ended: nothing to cancel", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn cancel_job(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let key = authorize(&api, &headers, "jobs:write", "job.cancel", remote)?;
    let job = match job_by_id(&api, &id)? {
        Some(j) if visible(&api, &key, &j) => j,
        _ => return Err(unknown_job(&id)),
    };
    let state = job["state"].as_str().unwrap_or("").to_string();
    if !matches!(state.as_str(), "queued" | "running") {
        audit_ok(&api, &key, "job.cancel", &id, "refused: finished", remote);
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("job {id} has already ended ({state}): nothing to cancel"),
        )
        .job(&id));
    }
    // a queued job ends here; a running one through its cancel handle
    let canceled_queued = api
        .write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET state = 'canceled', error_code = 'canceled', error_detail = 'canceled by request before it started', status_detail = 'canceled', finished_ms = ?2, updated_ms = ?2 WHERE id = ?1 AND state = 'queued'",
                params![id, ids::now_ms()],
            )?;
            if n > 0 {
                db::event(tx, Some(&id), "canceled", &json!({"state": "canceled"}))?;
            }
            Ok(n > 0)
        })
        .map_err(internal)?;
    if !canceled_queued {
        if let Some(c) = api
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            c.cancel();
        }
        // wait a little for the transfer to stop, so the answer is current
        for _ in 0..50 {
            let st: Option<String> = api
                .conn()
                .query_row("SELECT state FROM jobs WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(internal)?;
            if st.as_deref() != Some("running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    audit_ok(&api, &key, "job.cancel", &id, "ok", remote);
    let job = job_by_id(&api, &id)?.ok_or_else(|| unknown_job(&id))?;
    Ok(json_response(StatusCode::ACCEPTED, &job))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/resume", tag = "jobs",
    summary = "Resume a fan-out job that some hosts missed",
    description = "Queues a partial or failed fan-out job again, under its own id: it runs \
only for the hosts that have not got the tree (their hosts[].state is not done), each \
repaired by delta from what it already holds, and ends succeeded, partial or failed again. \
A job whose source has changed since its first run (some hosts hold the earlier version) is \
refused (409, source_changed): submit a new job to send the new version to every host. \
Only fan-out jobs resume: a copy or sync job is submitted again (it sends only what changed).",
    security(("bearer" = ["jobs:write"])),
    params(("id" = String, Path, description = "The job's id (a ULID)")),
    responses(
        (status = 202, description = "The job, queued again", body = Job),
        (status = 404, description = "No such job", body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "Not a fan-out job, not ended, every host has it already, or its source changed since the first run", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn resume_job(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let key = authorize(&api, &headers, "jobs:write", "job.resume", remote)?;
    let job = match job_by_id(&api, &id)? {
        Some(j) if visible(&api, &key, &j) => j,
        _ => return Err(unknown_job(&id)),
    };
    let state = job["state"].as_str().unwrap_or("").to_string();
    let refuse = |why: String| {
        audit_ok(
            &api,
            &key,
            "job.resume",
            &id,
            &format!("refused: {why}"),
            remote,
        );
        Err(Problem::new(StatusCode::CONFLICT, "not_resumable", why).job(&id))
    };
    if job["op"] != "fanout" {
        return refuse(format!(
            "job {id} is not a fan-out job: submit it again (a sync sends only what changed)"
        ));
    }
    if !matches!(state.as_str(), "partial" | "failed" | "canceled") {
        return refuse(match state.as_str() {
            "succeeded" => format!("job {id} has succeeded: every host has it already"),
            s => format!("job {id} is {s}: only an ended job is resumed"),
        });
    }
    // the hosts that have it hold the source as it was: a source that has
    // changed since is not sent to the rest (that would mix versions)
    let changed = {
        let (api, id) = (api.clone(), id.clone());
        tokio::task::spawn_blocking(move || super::fanout::changed_source(&api, &id))
            .await
            .map_err(internal)?
    };
    if let Some(why) = changed {
        audit_ok(
            &api,
            &key,
            "job.resume",
            &id,
            "refused: source changed",
            remote,
        );
        return Err(Problem::new(StatusCode::CONFLICT, "source_changed", why).job(&id));
    }
    let missed: Vec<String> = job["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["state"] != "done")
        .map(|h| h["host"].as_str().unwrap_or("").to_string())
        .collect();
    let requeued = api
        .write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET state = 'queued', error_code = NULL, error_detail = NULL, status_detail = 'queued to resume', finished_ms = NULL, updated_ms = ?2 WHERE id = ?1 AND state = ?3",
                params![id, ids::now_ms(), state],
            )?;
            if n > 0 {
                db::event(tx, Some(&id), "requeued", &json!({"hosts": missed}))?;
            }
            Ok(n > 0)
        })
        .map_err(internal)?;
    if !requeued {
        return refuse(format!("job {id} changed state meanwhile; look again"));
    }
    audit_ok(&api, &key, "job.resume", &id, "ok", remote);
    api.wake_runner();
    let job = job_by_id(&api, &id)?.ok_or_else(|| unknown_job(&id))?;
    let mut res = json_response(StatusCode::ACCEPTED, &job);
    if let Ok(l) = HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        res.headers_mut().insert(header::LOCATION, l);
    }
    Ok(res)
}

/// The events of jobs `key` may see (a key limited to some modules sees
/// only their jobs' events).
fn seen_by(api: &Api, key: &Key, events: Vec<Value>) -> Vec<Value> {
    if key.modules.is_empty() {
        return events;
    }
    let mut known: std::collections::HashMap<String, bool> = Default::default();
    events
        .into_iter()
        .filter(|e| {
            let Some(id) = e["job_id"].as_str() else {
                return false;
            };
            *known.entry(id.to_string()).or_insert_with(
                || matches!(job_by_id(api, id), Ok(Some(j)) if visible(api, key, &j)),
            )
        })
        .collect()
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Events after this id (else Last-Event-ID, else from the start)
    after: Option<i64>,
    /// Long-poll: wait up to this many seconds (at most 60) for an event
    #[param(maximum = 60)]
    wait: Option<u64>,
    /// Only this job's events
    job: Option<String>,
}

/// A long-poll's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct EventPage {
    #[schema(value_type = Vec<db::Event>)]
    events: Vec<Value>,
    /// The id to ask after next
    last_id: i64,
    /// The newest event id of all
    latest_id: i64,
}

/// The event log: Server-Sent Events with `Accept: text/event-stream`
/// (resumable with Last-Event-ID), else a long-poll.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    summary = "Events: Server-Sent Events (Accept: text/event-stream, resumable with Last-Event-ID) or a long-poll (after, wait)",
    security(("bearer" = ["jobs:read"])),
    params(EventQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "Events after the given id", content(
            (EventPage = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "A bad query", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn events(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let key = authorize(&api, &headers, "jobs:read", "events.read", remote)?;
    let Query(q) =
        q.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut after = q.after.or(last_id).unwrap_or(0);
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let mut rx = api.events.subscribe();
    if !wants_sse || q.wait.is_some() {
        // long-poll: answer at once if there is something, else wait
        let wait = Duration::from_secs(q.wait.unwrap_or(0).min(60));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            let raw =
                db::events_after(&api.conn(), after, q.job.as_deref(), 500).map_err(internal)?;
            let last = raw
                .last()
                .map_or(after, |e| e["id"].as_i64().unwrap_or(after));
            let batch = seen_by(&api, &key, raw);
            if batch.is_empty() && last > after {
                // only other modules' events: look further
                after = last;
                continue;
            }
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                let latest = db::last_event(&api.conn()).map_err(internal)?;
                let page = EventPage {
                    events: batch,
                    last_id: last,
                    latest_id: latest,
                };
                return Ok(json_response(
                    StatusCode::OK,
                    &serde_json::to_value(page).map_err(internal)?,
                ));
            }
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }
    struct Feed {
        api: Arc<Api>,
        key: Key,
        after: i64,
        job: Option<String>,
        rx: tokio::sync::watch::Receiver<i64>,
        buf: VecDeque<Value>,
    }
    let feed = Feed {
        api: api.clone(),
        key,
        after,
        job: q.job,
        rx,
        buf: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                let id = e["id"].as_i64().unwrap_or(0);
                let ev = SseEvent::default()
                    .id(id.to_string())
                    .event(e["type"].as_str().unwrap_or("event"))
                    .data(e.to_string());
                return Some((Ok::<_, std::convert::Infallible>(ev), f));
            }
            f.rx.borrow_and_update();
            let raw = db::events_after(&f.api.conn(), f.after, f.job.as_deref(), 500).ok()?;
            match raw.last().and_then(|e| e["id"].as_i64()) {
                None => f.rx.changed().await.ok()?,
                Some(last) => {
                    f.buf.extend(seen_by(&f.api, &f.key, raw));
                    f.after = last;
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response())
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Entries after this id
    after: Option<i64>,
    /// At most this many (default 500, at most 5000)
    limit: Option<u32>,
}

/// One audit entry.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct AuditEntry {
    id: i64,
    time: String,
    key_id: Option<String>,
    key_name: Option<String>,
    /// e.g. job.create, job.cancel, events.read
    action: String,
    target: Option<String>,
    /// ok, or why it was denied or refused
    result: String,
    remote: Option<String>,
}

/// `GET /v1/audit`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct AuditPage {
    entries: Vec<AuditEntry>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "admin",
    summary = "The audit log: every change and every denial",
    security(("bearer" = ["admin"])),
    params(AuditQuery),
    responses(
        (status = 200, description = "Entries, oldest first", body = AuditPage),
        (status = 400, description = "A bad query", body = ProblemBody, content_type = PROBLEM),
    ))]
async fn audit(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    authorize(&api, &headers, "admin", "audit.read", remote)?;
    let Query(q) =
        q.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let conn = api.conn();
    let mut st = conn
        .prepare("SELECT id, at_ms, key_id, key_name, action, target, result, remote FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2")
        .map_err(internal)?;
    let rows = st
        .query_map(
            params![q.after.unwrap_or(0), q.limit.unwrap_or(500).min(5000)],
            |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    time: ids::rfc3339(r.get(1)?),
                    key_id: r.get(2)?,
                    key_name: r.get(3)?,
                    action: r.get(4)?,
                    target: r.get(5)?,
                    result: r.get(6)?,
                    remote: r.get(7)?,
                })
            },
        )
        .map_err(internal)?;
    let entries: Vec<AuditEntry> = rows.collect::<Result<_, _>>().map_err(internal)?;
    let page = serde_json::to_value(AuditPage { entries }).map_err(internal)?;
    Ok(json_response(StatusCode::OK, &page))
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    summary = "Prometheus metrics (text format 0.0.4)",
    security(("bearer" = ["metrics:read"])),
    responses((status = 200, description = "The exposition", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(
    State(api): Shared,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorize(&api, &headers, "metrics:read", "metrics.read", remote)?;
    let text = super::metrics::render(&api.conn()).map_err(internal)?;
    let mut res = (StatusCode::OK, text).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

/// The OpenAPI document: public, like a login page (it holds no data).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    summary = "This document (OpenAPI 3.1), generated from the code",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi(axum::Extension(doc): axum::Extension<Document>) -> Response {
    let mut res = (StatusCode::OK, doc.0.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
