//! The API's OpenAPI 3.1 document, served at `/v1/openapi.json`. It is
//! generated from the code (utoipa): each route's operation comes from its
//! handler's `#[utoipa::path]`, registered with the router in one list
//! (`http::routes`), and the schemas from the types the handlers read and
//! write (`JobSpec`, `Job`, `ProblemBody`, ...). Here: the document's frame
//! (info, the bearer scheme) and what every operation shares (the RFC 9457
//! problem answers for 401/403/429/500 and the rate-limit headers). Not for
//! validating requests: the handlers do that.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Type};
use utoipa::OpenApi as _;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ferry daemon API",
        description = "Durable transfer jobs, events, metrics and the dashboard of a ferry daemon (ferry serve --api). Every error answer is an RFC 9457 problem (application/problem+json) with a stable code; every answer carries the IETF RateLimit and RateLimit-Policy headers."
    ),
    components(schemas(super::http::ProblemBody))
)]
struct Frame;

/// The document before any route is added.
pub(super) fn base() -> OpenApi {
    let mut doc = Frame::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key (fk_...) from ferry api-key create"))
                .build(),
        ),
    );
    doc
}

fn problem(description: &str, header: Option<(&str, &str)>) -> RefOr<Response> {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/problem+json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ProblemBody")))
            .build(),
    );
    if let Some((name, desc)) = header {
        r = r.header(
            name,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(desc))
                .build(),
        );
    }
    RefOr::T(r.build())
}

/// Adds what every route shares: the problem answers a key check and the
/// rate limiter give, and the rate-limit headers on every answer.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let r = &mut op.responses.responses;
            if secured {
                r.entry("401".into()).or_insert_with(|| {
                    problem(
                        "No valid API key",
                        Some(("WWW-Authenticate", "Bearer realm=\"ferry\"")),
                    )
                });
                r.entry("403".into()).or_insert_with(|| {
                    problem(
                        "The key lacks the scope (named in missing_scope) or the module",
                        None,
                    )
                });
            }
            r.entry("429".into()).or_insert_with(|| {
                problem(
                    "Over the rate limit of the key (or of the address, without a valid key)",
                    Some(("Retry-After", "Seconds until a request is allowed again")),
                )
            });
            r.entry("500".into()).or_insert_with(|| {
                problem(
                    "The daemon could not complete the request (see its log)",
                    None,
                )
            });
            for resp in r.values_mut() {
                if let RefOr::T(resp) = resp {
                    for (name, desc) in [
                        ("RateLimit", "IETF draft: \"default\";r=REMAINING;t=SECONDS"),
                        (
                            "RateLimit-Policy",
                            "IETF draft: \"default\";q=QUOTA;w=WINDOW",
                        ),
                    ] {
                        resp.headers.entry(name.into()).or_insert_with(|| {
                            HeaderBuilder::new()
                                .schema(ObjectBuilder::new().schema_type(Type::String))
                                .description(Some(desc))
                                .build()
                        });
                    }
                }
            }
        }
    }
    doc
}

/// The whole document, as served.
#[cfg(test)]
pub(super) fn document() -> serde_json::Value {
    let (_, doc) = super::http::routes().split_for_parts();
    serde_json::to_value(finish(doc)).expect("the document serializes")
}

#[cfg(test)]
mod tests {
    /// Routes reach the router only through `routes!` with their handler's
    /// description: a plain `.route(` (or a nested, merged or service
    /// route) in the API's code would serve a route the document does not
    /// describe.
    #[test]
    fn no_route_is_added_without_its_description() {
        for (name, text) in [
            ("http.rs", include_str!("http.rs")),
            ("ui.rs", include_str!("ui.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("tls.rs", include_str!("tls.rs")),
        ] {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for bad in [
                    ".route(",
                    ".route_service(",
                    ".nest(",
                    ".nest_service(",
                    ".merge(",
                ] {
                    assert!(
                        !code.contains(bad),
                        "{name}:{}: {bad} serves a route without an OpenAPI description; register it with routes!(handler) in http::routes",
                        n + 1
                    );
                }
            }
        }
    }

    #[test]
    fn every_operation_has_its_problem_answers() {
        let doc = super::document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 12, "{paths:?}");
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                let mut want = vec!["429", "500"];
                if secured {
                    want.extend(["401", "403"]);
                }
                for code in want {
                    assert_eq!(
                        responses[code]["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/ProblemBody",
                        "{method} {path} {code}"
                    );
                }
                for (code, r) in responses {
                    if code.starts_with('4') || code.starts_with('5') {
                        assert!(
                            r["content"]["application/problem+json"].is_object(),
                            "{method} {path} {code} is not a problem body"
                        );
                    }
                    assert!(r["headers"]["RateLimit"].is_object(), "{method} {path}");
                }
            }
        }
        // the schemas come from the types the handlers use
        let schemas = &doc["components"]["schemas"];
        for s in [
            "Job",
            "JobSpec",
            "ProblemBody",
            "Event",
            "JobList",
            "EventPage",
        ] {
            assert!(schemas[s].is_object(), "no schema {s}");
        }
        assert_eq!(schemas["JobSpec"]["additionalProperties"], false);
    }
}
