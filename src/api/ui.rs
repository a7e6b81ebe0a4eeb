//! The dashboard at `/ui/`: one embedded page (HTML, script and style served
//! from this binary, nothing from another host) under a strict
//! Content-Security-Policy. A user logs in with a one-time link from `ferry
//! dashboard-link` (the token travels in the URL fragment, so it never
//! reaches a log or a Referer) that the page exchanges for an HttpOnly
//! session cookie and a CSRF token, which state-changing requests must send
//! back as `X-CSRF-Token`. Not for the job API itself (`http`).

use super::{db, ids, Api};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// A login link is good for this long, once.
const LINK_TTL_MS: i64 = 10 * 60 * 1000;
/// A dashboard session lasts this long.
const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn secret() -> String {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn hash(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes a one-time login token (stored hashed); `ferry dashboard-link`.
pub fn create_link(conn: &Connection) -> rusqlite::Result<String> {
    let token = secret();
    conn.execute(
        "INSERT INTO ui_tokens (hash, created_ms) VALUES (?1, ?2)",
        params![hash(&token), ids::now_ms()],
    )?;
    db::audit(
        conn,
        &db::Audit {
            key_id: None,
            key_name: Some("dashboard"),
            action: "dashboard.link",
            target: None,
            result: "ok",
            remote: Some("cli"),
        },
    )?;
    Ok(token)
}

/// The session a cookie names, if it is live: its CSRF token.
pub fn session(conn: &Connection, headers: &HeaderMap) -> Option<String> {
    let cookie = headers.get(header::COOKIE)?.to_str().ok()?;
    let value = cookie
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "ferry_session")?
        .1;
    conn.query_row(
        "SELECT csrf FROM ui_sessions WHERE hash = ?1 AND expires_ms > ?2",
        params![hash(value), ids::now_ms()],
        |r| r.get(0),
    )
    .optional()
    .ok()
    .flatten()
}

/// Whether the request carries the session's CSRF token.
pub fn csrf_ok(headers: &HeaderMap, csrf: &str) -> bool {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            aws_lc_rs::constant_time::verify_slices_are_equal(t.as_bytes(), csrf.as_bytes()).is_ok()
        })
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `/ui` goes to the page.
#[utoipa::path(get, path = "/ui", tag = "dashboard", summary = "The dashboard (redirects to /ui/)",
    responses((status = 308, description = "To /ui/", headers(("Location" = String)))))]
pub(super) async fn redirect() -> axum::response::Redirect {
    axum::response::Redirect::permanent("/ui/")
}

/// The page; for a logged-in user with the jobs table already filled in
/// (the script keeps it live from there).
#[utoipa::path(get, path = "/ui/", tag = "dashboard", summary = "The dashboard page",
    description = "Log in through a one-time link from ferry dashboard-link (the token travels in the URL fragment); served under a strict Content-Security-Policy",
    responses((status = 200, description = "The page", body = String, content_type = "text/html")))]
pub(super) async fn index(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let logged_in = session(&api.conn(), &headers).is_some();
    let mut page = INDEX.to_string();
    if logged_in {
        let rows = rows(&api.conn()).unwrap_or_default();
        let modules: String = api
            .modules
            .iter()
            .map(|m| {
                format!(
                    "<li>{}{}{}</li>",
                    escape(&m.name),
                    if m.read_only { " (read-only)" } else { "" },
                    if m.comment.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", escape(&m.comment))
                    }
                )
            })
            .collect();
        // the daemons this one's jobs may reach: its known_hosts
        let peers: String = std::fs::read_to_string(api.config_dir.join("known_hosts"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next())
            .map(|h| format!("<li>{}</li>", escape(h)))
            .collect();
        page = page
            .replace("<tbody></tbody>", &format!("<tbody>{rows}</tbody>"))
            .replace(
                "<ul id=\"modules\"></ul>",
                &format!("<ul id=\"modules\">{modules}</ul>"),
            )
            .replace(
                "<ul id=\"peers\"></ul>",
                &format!("<ul id=\"peers\">{peers}</ul>"),
            );
    }
    let mut res = asset("text/html; charset=utf-8", "");
    *res.body_mut() = axum::body::Body::from(page);
    res
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A size as the script's `human()` prints it ("512 B", "8.0 MiB"), so a row
/// reads the same before and after the script redraws it.
fn iec(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The jobs table's rows, as the script draws them.
fn rows(conn: &Connection) -> rusqlite::Result<String> {
    let mut st = conn.prepare("SELECT * FROM jobs ORDER BY seq DESC LIMIT 200")?;
    let jobs = st
        .query_map([], super::jobs::view)?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = String::new();
    for j in jobs {
        let s = |k: &str| escape(j[k].as_str().unwrap_or(""));
        let n = |k: &str| j[k].as_i64().unwrap_or(0);
        let state = s("state");
        let pct = if n("bytes_total") > 0 {
            n("bytes_done") * 100 / n("bytes_total")
        } else if state == "succeeded" {
            100
        } else {
            0
        };
        let detail = match j["error"].as_object() {
            Some(e) => escape(&format!(
                "{}: {}",
                e["code"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            )),
            None => s("status_detail"),
        };
        let id = s("id");
        out.push_str(&format!(
            "<tr id=\"job-{id}\"><td>{}</td><td>{}</td><td class=\"state state-{state}\">{state}</td><td>{} → {}</td><td><span class=\"pct\"> {pct}% of {}</span></td><td></td><td>{}</td><td>{detail}</td><td></td></tr>",
            &id[id.len().saturating_sub(8)..],
            s("label"),
            s("src"),
            match j["options"]["destinations"].as_array() {
                // a fan-out: its daemons, in chain order
                Some(d) => escape(
                    &d.iter()
                        .filter_map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => s("dst"),
            },
            iec(n("bytes_total").max(0) as u64),
            n("faults"),
        ));
    }
    Ok(out)
}
#[utoipa::path(get, path = "/ui/app.js", tag = "dashboard", summary = "The dashboard's script",
    responses((status = 200, description = "The script", body = String, content_type = "text/javascript")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
#[utoipa::path(get, path = "/ui/app.css", tag = "dashboard", summary = "The dashboard's style sheet",
    responses((status = 200, description = "The style sheet", body = String, content_type = "text/css")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The body of `POST /ui/login`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    /// The token from the login link's fragment (#login=...)
    token: String,
}

/// A dashboard session's CSRF token.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct LoggedIn {
    /// Send it back as X-CSRF-Token on requests that change something
    csrf: String,
}

/// Exchanges a one-time token for a session cookie and a CSRF token.
#[utoipa::path(post, path = "/ui/login", tag = "dashboard",
    summary = "Exchange a one-time login token for a session cookie (HttpOnly) and a CSRF token",
    request_body(content = Login, content_type = "application/json"),
    responses(
        (status = 200, description = "Logged in", body = LoggedIn,
            headers(("Set-Cookie" = String, description = "ferry_session=...; HttpOnly; SameSite=Strict"))),
        (status = 400, description = "Malformed JSON", body = super::http::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "The link was used already, has expired or is unknown", body = super::http::ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body is over 64 KiB", body = super::http::ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not Content-Type: application/json", body = super::http::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a login body", body = super::http::ProblemBody, content_type = "application/problem+json"),
    ))]
pub(super) async fn login(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, super::http::Problem> {
    use super::http::Problem;
    let v = super::http::json_body(&headers, body).await?;
    let l: Login = serde_json::from_value(v).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
    })?;
    let now = ids::now_ms();
    let (session, csrf) = (secret(), secret());
    let ok = api
        .write(|tx| {
            let n = tx.execute(
                "UPDATE ui_tokens SET used_ms = ?2 WHERE hash = ?1 AND used_ms IS NULL AND created_ms > ?3",
                params![hash(&l.token), now, now - LINK_TTL_MS],
            )?;
            if n == 1 {
                tx.execute(
                    "INSERT INTO ui_sessions (hash, csrf, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![hash(&session), csrf, now, now + SESSION_TTL_MS],
                )?;
            }
            db::audit(
                tx,
                &db::Audit {
                    key_id: None,
                    key_name: Some("dashboard"),
                    action: "dashboard.login",
                    target: None,
                    result: if n == 1 { "ok" } else { "denied: used, expired or unknown link" },
                    remote: None,
                },
            )?;
            Ok(n == 1)
        })
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()))?;
    if !ok {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "login_link_invalid",
            "this login link was used already, has expired or is unknown: run ferry dashboard-link again",
        ));
    }
    let secure = if api.tls { "; Secure" } else { "" };
    let mut res = (
        StatusCode::OK,
        serde_json::to_string(&LoggedIn { csrf }).unwrap_or_default(),
    )
        .into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(c) = HeaderValue::from_str(&format!(
        "ferry_session={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_TTL_MS / 1000
    )) {
        h.insert(header::SET_COOKIE, c);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_the_script_prints_them() {
        assert_eq!(super::iec(512), "512 B");
        assert_eq!(super::iec(8 << 20), "8.0 MiB");
        assert_eq!(super::iec(1536), "1.5 KiB");
    }
}
