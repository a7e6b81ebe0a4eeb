//! The API's OpenAPI 3.1 description, served at `/v1/openapi.json`. Written
//! beside the router: a unit test checks that every route the router serves
//! is described here, with its error bodies (RFC 9457 problems). Not for
//! validating requests: the handlers do that.

use serde_json::{json, Value};

fn problem(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn errors(codes: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (code, desc) in [
        ("401", "No valid API key (with WWW-Authenticate: Bearer)"),
        ("403", "The key lacks the scope or the module"),
        ("429", "Over the rate limit (with Retry-After)"),
    ]
    .iter()
    .chain(codes)
    {
        m.insert(code.to_string(), problem(desc));
    }
    m
}

fn op(
    summary: &str,
    op_id: &str,
    scope: &str,
    extra: Value,
    ok_code: &str,
    ok_body: Value,
    errs: &[(&str, &str)],
) -> Value {
    let mut responses = errors(errs);
    responses.insert(ok_code.to_string(), ok_body);
    let mut o = json!({
        "summary": summary,
        "operationId": op_id,
        "security": [{"bearer": [scope]}],
        "responses": responses,
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            o[k] = v;
        }
    }
    o
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "ferry daemon API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable transfer jobs, events and metrics of a ferry daemon (ferry serve --api)."
        },
        "paths": paths(),
        "components": components(),
    })
}

fn paths() -> Value {
    let job = json!({"$ref": "#/components/schemas/Job"});
    let id_param = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$"}});
    json!({
        "/v1/jobs": {
            "post": op("Submit a job", "createJob", "jobs:write", json!({
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}}}
            }), "202", ok("Accepted: the job, queued (or the first response again, with Idempotent-Replayed: true)", job.clone()), &[
                ("400", "Malformed JSON or Idempotency-Key"),
                ("409", "A request with this Idempotency-Key is still being processed"),
                ("413", "The body is over 64 KiB"),
                ("415", "Not application/json"),
                ("422", "An invalid job, or the Idempotency-Key was used with another body"),
            ]),
            "get": op("List jobs, newest first", "listJobs", "jobs:read", json!({
                "parameters": [
                    {"name": "state", "in": "query", "required": false, "schema": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "canceled"]}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
                ]
            }), "200", ok("The jobs", json!({"type": "object", "properties": {"jobs": {"type": "array", "items": job.clone()}}})), &[("400", "A bad query")]),
        },
        "/v1/jobs/{id}": {
            "get": op("Show a job", "getJob", "jobs:read", json!({"parameters": [id_param.clone()]}), "200", ok("The job", job.clone()), &[("404", "No such job")]),
        },
        "/v1/jobs/{id}/cancel": {
            "post": op("Cancel a queued or running job", "cancelJob", "jobs:write", json!({"parameters": [id_param]}), "202", ok("The job, canceled or stopping", job), &[("404", "No such job"), ("409", "The job has ended")]),
        },
        "/v1/events": {
            "get": op("Events: Server-Sent Events (Accept: text/event-stream, resumable with Last-Event-ID) or long-poll (after, wait)", "events", "jobs:read", json!({
                "parameters": [
                    {"name": "after", "in": "query", "required": false, "schema": {"type": "integer"}},
                    {"name": "wait", "in": "query", "required": false, "schema": {"type": "integer", "maximum": 60}},
                    {"name": "job", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}}
                ]
            }), "200", json!({"description": "Events after the given id", "content": {
                "application/json": {"schema": {"type": "object", "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}, "last_id": {"type": "integer"}, "latest_id": {"type": "integer"}}}},
                "text/event-stream": {"schema": {"type": "string"}}
            }}), &[("400", "A bad query")]),
        },
        "/v1/audit": {
            "get": op("The audit log", "audit", "admin", json!({
                "parameters": [
                    {"name": "after", "in": "query", "required": false, "schema": {"type": "integer"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer"}}
                ]
            }), "200", ok("Entries, oldest first", json!({"type": "object", "properties": {"entries": {"type": "array", "items": {"type": "object"}}}})), &[("400", "A bad query")]),
        },
        "/metrics": {
            "get": op("Prometheus metrics (text format 0.0.4)", "metrics", "metrics:read", json!({}), "200", json!({"description": "The exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}), &[]),
        },
        "/v1/openapi.json": {
            "get": {"summary": "This document", "operationId": "openapi", "security": [], "responses": {"200": ok("OpenAPI 3.1", json!({"type": "object"}))}}
        }
    })
}

fn components() -> Value {
    serde_json::from_str(COMPONENTS).expect("the components are valid JSON")
}

const COMPONENTS: &str = r#"{
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key (fk_...) from ferry api-key create"}},
        "schemas": {
            "Problem": {"type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}}}},
                "job_id": {"type": "string"}, "missing_scope": {"type": "string"},
                "violated-policies": {"type": "array", "items": {"type": "string"}}
            }},
            "JobSpec": {"type": "object", "additionalProperties": false, "required": ["op", "src", "dst"], "properties": {
                "op": {"type": "string", "enum": ["copy", "sync"]},
                "src": {"type": "string", "description": "MODULE/PATH of this daemon, HOST::MODULE/PATH or ferry://HOST[:PORT]/MODULE/PATH"},
                "dst": {"type": "string"},
                "label": {"type": "string", "maxLength": 128},
                "deadline": {"oneOf": [{"type": "integer", "minimum": 0, "description": "seconds after submission"}, {"type": "string", "description": "RFC 3339 UTC time"}]},
                "max_faults": {"type": "integer", "minimum": 0},
                "delete": {"type": "boolean"}, "checksum": {"type": "boolean"}, "compress": {"type": "boolean"},
                "compress_level": {"type": "integer", "minimum": 1, "maximum": 19},
                "include": {"type": "array", "items": {"type": "string"}},
                "exclude": {"type": "array", "items": {"type": "string"}},
                "bwlimit": {"oneOf": [{"type": "integer", "description": "KiB/s"}, {"type": "string", "description": "e.g. 10M"}]},
                "dry_run": {"type": "boolean"}, "update": {"type": "boolean"}, "sparse": {"type": "boolean"},
                "hard_links": {"type": "boolean"}, "fsync": {"type": "boolean"},
                "streams": {"type": "integer", "minimum": 1, "maximum": 8}
            }},
            "Job": {"type": "object", "properties": {
                "id": {"type": "string"}, "op": {"type": "string"}, "src": {"type": "string"}, "dst": {"type": "string"},
                "label": {"type": ["string", "null"]},
                "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "canceled"]},
                "attempts": {"type": "integer"}, "faults": {"type": "integer"}, "max_faults": {"type": ["integer", "null"]},
                "status_detail": {"type": "string"},
                "bytes_done": {"type": "integer"}, "bytes_total": {"type": "integer"},
                "files_done": {"type": "integer"}, "files_total": {"type": "integer"},
                "rate_bytes_per_second": {"type": "integer"}, "eta_seconds": {"type": ["integer", "null"]},
                "literal_bytes": {"type": "integer"}, "reused_bytes": {"type": "integer"},
                "error": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {"code": {"type": "string"}, "detail": {"type": "string"}}}]},
                "files": {"oneOf": [{"type": "null"}, {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "size": {"type": "integer"}, "blake3": {"type": ["string", "null"]}}}}]},
                "options": {"type": "object"},
                "created_at": {"type": "string", "format": "date-time"},
                "started_at": {"type": ["string", "null"], "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "deadline": {"type": ["string", "null"], "format": "date-time"}
            }},
            "Event": {"type": "object", "properties": {
                "id": {"type": "integer"}, "job_id": {"type": ["string", "null"]},
                "type": {"type": "string", "enum": ["created", "started", "progress", "fault", "interrupted", "resumed", "succeeded", "failed", "canceled"]},
                "data": {"type": "object"}, "time": {"type": "string", "format": "date-time"}
            }}
        }
    }"#;

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_described() {
        let doc = super::document();
        for (method, path) in super::super::http::ROUTES {
            assert!(
                doc["paths"][path][method.to_ascii_lowercase()].is_object(),
                "{method} {path} is not in the OpenAPI document"
            );
        }
    }
}
