//! The API description's conventions, in one place: the statuses that the
//! layers in front of every handler can answer (so a generated client
//! returns the problem document instead of raising on an undeclared
//! status), and the document as served, with field values typed by the
//! catalogue in force.
//!
//! Handlers declare what only they can answer (404, 409, 422, ...); these
//! conventions add what every route of a kind can answer, only where the
//! handler declared nothing for that status.

use utoipa::ToSchema;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

use super::problem::PROBLEM_JSON;
use crate::policy::{Catalogue, FieldValues};

/// Adds the statuses every operation of a kind can answer, each with the
/// problem document as its body.
pub fn conventions(openapi: &mut OpenApi) {
    for (path, item) in &mut openapi.paths.paths {
        let probe = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        let operations =
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head];
        for operation in operations.into_iter().flatten() {
            operation_conventions(operation, probe);
        }
    }
}

fn operation_conventions(operation: &mut Operation, probe: bool) {
    let secured = operation.security.as_ref().is_some_and(|requirements| !requirements.is_empty());
    let has_body = operation.request_body.is_some();
    let mut add = |status: &str, description: &str, retry_after: bool| {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| problem(description, retry_after));
    };
    add("400", "A malformed body, query or path parameter, or a query on a route that takes none", false);
    if secured {
        add("401", "Missing, expired or invalid token (the same answer whatever check failed)", false);
        add("403", "A token of another role, or of a disabled principal", false);
        add("429", "Too many requests from this principal; `Retry-After` says when to try again", true);
    }
    if has_body {
        add("413", "The body is larger than the vault accepts", false);
        add("415", "The body is not of a media type this operation reads", false);
    }
    add("408", "The request took longer than the vault allows", false);
    add("431", "The request's headers are larger than the vault accepts", false);
    add("500", "An internal failure: opaque, with the request id; the cause is in the vault's log", false);
    if !probe {
        add(
            "503",
            "The store cannot be written (`storage_unavailable`), the stored audit log does not verify \
             (`audit_log_invalid`) or the store is behind a published checkpoint (`store_rolled_back`)",
            true,
        );
    }
    // Handlers that declare a 429 or 503 of their own answer it the same way.
    for status in ["429", "503"] {
        if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) {
            retry_after_declare(response);
        }
    }
}

/// A response whose body is the problem document.
fn problem(description: &str, retry_after: bool) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    let mut response = ResponseBuilder::new().description(description).content(PROBLEM_JSON, content).build();
    if retry_after {
        retry_after_declare(&mut response);
    }
    RefOr::T(response)
}

/// Declares the `Retry-After` header of a 429 or 503 answer.
fn retry_after_declare(response: &mut Response) {
    let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).build();
    let header = HeaderBuilder::new().schema(seconds).description(Some("Seconds to wait before trying again"));
    response.headers.entry("Retry-After".to_owned()).or_insert_with(|| header.build());
}

/// `openapi` as a vault serves it: field values typed by `catalogue`.
pub fn with_catalogue(openapi: &OpenApi, catalogue: &Catalogue) -> OpenApi {
    let mut served = openapi.clone();
    let components = served.components.get_or_insert_with(Default::default);
    components.schemas.insert(FieldValues::name().into_owned(), RefOr::T(catalogue.values_schema()));
    served
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(crate::api::openapi()).unwrap()
    }

    /// Every schema under `value` that says "some object" and nothing more,
    /// by its JSON pointer.
    fn untyped_objects(value: &Value, at: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                let bare = map.get("type") == Some(&Value::from("object"))
                    && !["properties", "additionalProperties", "allOf", "oneOf"]
                        .iter()
                        .any(|key| map.contains_key(*key));
                if bare {
                    found.push(at.to_owned());
                }
                for (key, inner) in map {
                    untyped_objects(inner, &format!("{at}/{key}"), found);
                }
            }
            Value::Array(items) => {
                for (index, inner) in items.iter().enumerate() {
                    untyped_objects(inner, &format!("{at}/{index}"), found);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn no_body_is_an_untyped_object_but_the_description_itself() {
        let mut found = Vec::new();
        untyped_objects(&document(), "", &mut found);
        assert_eq!(found, ["/paths//v1/openapi.json/get/responses/200/content/application/json/schema"]);
    }

    #[test]
    fn every_operation_declares_what_its_layers_can_answer_with_the_problem_schema() {
        let document = document();
        let mut operations = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let responses = operation["responses"].as_object().unwrap();
                let secured = operation.get("security").is_some_and(|s| !s.as_array().unwrap().is_empty());
                let mut expected = vec!["400", "408", "431", "500"];
                if secured {
                    expected.extend(["401", "403", "429"]);
                }
                if operation.get("requestBody").is_some() {
                    expected.extend(["413", "415"]);
                }
                for status in expected {
                    let problem = &responses
                        .get(status)
                        .unwrap_or_else(|| panic!("{method} {path} does not declare {status}"))["content"]["application/problem+json"]
                        ["schema"]["$ref"];
                    assert_eq!(problem, "#/components/schemas/Problem", "{method} {path} {status}");
                }
                if secured {
                    assert!(responses["429"]["headers"].get("Retry-After").is_some(), "{method} {path}");
                }
            }
        }
        assert!(operations >= 40, "{operations}");
    }

    #[test]
    fn statuses_decisions_reasons_roles_and_grant_types_are_enums_and_times_date_times() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let variants = |name: &str| -> Vec<String> {
            let values = schemas[name]["enum"].as_array().unwrap_or_else(|| panic!("{name} is not an enum"));
            values.iter().map(|value| value.as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(variants("GrantStatus"), ["active", "revoked", "expired"]);
        assert_eq!(variants("RequestStatus"), ["pending", "approved", "denied", "expired"]);
        assert_eq!(variants("Decision"), ["allow", "partial", "deny"]);
        assert_eq!(variants("GrantType"), ["client_credentials", "password"]);
        assert!(variants("Role").contains(&"business".to_owned()));
        assert!(variants("FixedReasonCode").contains(&"field_not_granted".to_owned()));
        assert!(variants("EventKind").contains(&"data.read".to_owned()));
        for (schema, property) in [("GrantView", "expires_at"), ("AccessLogItem", "time"), ("GrantChange", "time")] {
            assert_eq!(schemas[schema]["properties"][property]["format"], "date-time", "{schema}.{property}");
        }
        let token = &document["paths"]["/v1/token"]["post"]["requestBody"]["content"];
        assert!(token.get("application/x-www-form-urlencoded").is_some() && token.get("application/json").is_some());
        let entry = &document["paths"]["/v1/audit/entries/{index}"]["get"]["responses"]["200"]["content"];
        assert_eq!(entry["application/octet-stream"]["schema"]["format"], "binary");
    }

    #[test]
    fn the_served_document_types_field_values_by_the_catalogue_in_force() {
        let policies = crate::policy::Policies::built_in();
        let served = super::with_catalogue(&crate::api::openapi(), &policies.catalogue);
        let values = &serde_json::to_value(served).unwrap()["components"]["schemas"]["FieldValues"]["properties"];
        assert_eq!(values["email"]["format"], "email");
        assert_eq!(values["phone"]["type"], "string");
        assert_eq!(policies.catalogue.fields().count(), values.as_object().unwrap().len());
    }
}
