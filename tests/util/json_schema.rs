//! A small JSON Schema (draft 2020-12) validator for the `--json` tests: it
//! checks a value against `docs/json-schema.json`, the one schema the README
//! links, so the tests and the documentation cannot drift apart. It knows the
//! keywords that file uses (`type`, `const`, `enum`, `properties`,
//! `required`, `minimum`, `pattern`, `allOf`, `anyOf`, `oneOf`,
//! `if`/`then`/`else`, annotations) and panics on any other, so the schema
//! cannot use a keyword this validator would silently ignore. It is not a
//! general validator: no `$ref`, no arrays, no formats.

use serde_json::Value;

/// The schema the README documents, as the repository holds it.
pub fn load() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json-schema.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"))
}

/// Every way `v` breaks `schema`, each as `path: what`; empty when valid.
pub fn errors(schema: &Value, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, v, "$", &mut out);
    out
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        other => panic!("schema: unknown type {other:?}"),
    }
}

fn check(schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        match schema {
            Value::Bool(true) => {}
            Value::Bool(false) => out.push(format!("{at}: nothing is allowed here")),
            other => panic!("schema: {other} is not a schema"),
        }
        return;
    };
    for (key, k) in s {
        match key.as_str() {
            "$schema" | "$id" | "$comment" | "title" | "description" => {}
            "type" => {
                let ok = match k {
                    Value::String(t) => type_ok(t, v),
                    Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
                    other => panic!("schema: bad type {other}"),
                };
                if !ok {
                    out.push(format!("{at}: {v} is not of type {k}"));
                }
            }
            "const" => {
                if v != k {
                    out.push(format!("{at}: {v} is not {k}"));
                }
            }
            "enum" => {
                if !k.as_array().unwrap().contains(v) {
                    out.push(format!("{at}: {v} is not one of {k}"));
                }
            }
            "minimum" => {
                if let (Some(n), Some(min)) = (v.as_f64(), k.as_f64()) {
                    if n < min {
                        out.push(format!("{at}: {v} is below {k}"));
                    }
                }
            }
            "pattern" => {
                if let Some(text) = v.as_str() {
                    let re = regex::Regex::new(k.as_str().unwrap()).expect("schema pattern");
                    if !re.is_match(text) {
                        out.push(format!("{at}: {v} does not match {k}"));
                    }
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for f in k.as_array().unwrap() {
                        if !o.contains_key(f.as_str().unwrap()) {
                            out.push(format!("{at}: {f} is missing"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(o) = v.as_object() {
                    for (name, sub) in k.as_object().unwrap() {
                        if let Some(field) = o.get(name) {
                            check(sub, field, &format!("{at}.{name}"), out);
                        }
                    }
                }
            }
            "allOf" => {
                for sub in k.as_array().unwrap() {
                    check(sub, v, at, out);
                }
            }
            "anyOf" | "oneOf" => {
                let results: Vec<Vec<String>> =
                    k.as_array().unwrap().iter().map(|s| errors(s, v)).collect();
                let passed = results.iter().filter(|e| e.is_empty()).count();
                if passed == 0 {
                    // the branch that came closest says most about what is wrong
                    let closest = results.iter().min_by_key(|e| e.len()).unwrap();
                    out.push(format!(
                        "{at}: matches no branch of {key}; nearest: {}",
                        closest.join("; ")
                    ));
                } else if key == "oneOf" && passed > 1 {
                    out.push(format!("{at}: matches {passed} branches of oneOf"));
                }
            }
            "if" => {
                let branch = if errors(k, v).is_empty() {
                    s.get("then")
                } else {
                    s.get("else")
                };
                if let Some(b) = branch {
                    check(b, v, at, out);
                }
            }
            "then" | "else" => {}
            other => {
                panic!("schema: keyword {other:?} is not supported by tests/util/json_schema.rs")
            }
        }
    }
}
