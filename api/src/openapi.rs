//! The OpenAPI 3.0 document of the API, served at `GET /api/v1/openapi.json`. Paths and methods
//! come from [`ROUTES`](crate::routes::ROUTES); a test checks that the document and the router
//! agree.

use crate::routes::ROUTES;
use serde_json::{json, Map, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn operation(method: &str, path: &str, summary: &str) -> Value {
    let order = json!({"$ref": "#/components/schemas/Order"});
    let mut op = match (method, path) {
        ("GET", "/") => {
            json!({"responses": {"200": ok_json("Service information", json!({"type": "object"}))}})
        }
        ("GET", "/ping") => json!({"responses": {
            "200": ok_json("The database answers", json!({"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}})),
            "503": error_response("The database does not answer")}}),
        ("GET", "/healthz") => json!({"responses": {"200": {"description": "The process serves",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}),
        ("GET", "/readyz") => json!({"responses": {
            "200": {"description": "The database answered the last probe", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "503": {"description": "Not ready, and why", "content": {"text/plain": {"schema": {"type": "string"}}}}}}),
        ("GET", "/metrics") => json!({"responses": {"200": {"description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}),
        ("GET", "/api/v1/openapi.json") => {
            json!({"responses": {"200": ok_json("This document", json!({"type": "object"}))}})
        }
        ("GET", "/api/v1/orders") => json!({
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                {"name": "cursor", "in": "query", "description": "`next` of the previous page", "schema": {"type": "string"}},
                {"name": "customerId", "in": "query", "schema": {"type": "integer", "format": "int64", "minimum": 1}},
                {"name": "from", "in": "query", "description": "Inclusive lower bound on createdAt: a date or an RFC 3339 timestamp", "schema": {"type": "string"}},
                {"name": "to", "in": "query", "description": "Exclusive upper bound on createdAt: a date or an RFC 3339 timestamp", "schema": {"type": "string"}}
            ],
            "responses": {
                "200": ok_json("One page, newest first", json!({"$ref": "#/components/schemas/OrderPage"})),
                "400": error_response("Invalid query parameter"),
                "503": error_response("Database unavailable")}}),
        ("POST", "/api/v1/orders") => json!({
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Retries with the same key and body return the original order (200); the same key with another body is refused (409)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewOrder"}}}},
            "responses": {
                "201": {"description": "Created", "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": order.clone()}}},
                "200": ok_json("Idempotent retry: the order created by the first request with this key", order.clone()),
                "400": error_response("Malformed JSON or an invalid field"),
                "409": error_response("Insufficient stock, or an Idempotency-Key reused with another body"),
                "413": error_response("Body over the size limit"),
                "415": error_response("Body is not JSON"),
                "422": error_response("Unknown customer, payment method or product"),
                "503": error_response("Database unavailable")}}),
        ("GET", "/api/v1/orders/{id}") => json!({
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "format": "int64", "minimum": 1}}],
            "responses": {
                "200": ok_json("The order", order.clone()),
                "400": error_response("The id is not a positive integer"),
                "404": error_response("No such order"),
                "503": error_response("Database unavailable")}}),
        _ => json!({"responses": {}}),
    };
    let object = op.as_object_mut().expect("operation object");
    object.insert("summary".into(), json!(summary));
    object.insert("operationId".into(), json!(operation_id(method, path)));
    op
}

fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches(|c| c == '{' || c == '}').replace('.', "_"))
        .collect();
    format!("{}_{}", method.to_lowercase(), if words.is_empty() { "root".into() } else { words.join("_") })
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for r in &ROUTES {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry
            .as_object_mut()
            .expect("path item")
            .insert(r.method.to_lowercase(), operation(r.method, r.path, r.summary));
    }
    let money = json!({"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{2}$", "description": "Exact VND amount with two decimals"});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Rainbow order API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string", "nullable": true}}}}},
            "NewOrder": {"type": "object", "required": ["customerId", "payment_id", "products"], "additionalProperties": false,
                "properties": {
                    "customerId": {"type": "integer", "format": "int64", "minimum": 1},
                    "payment_id": {"type": "integer", "format": "int64", "minimum": 1},
                    "createdAt": {"type": "string", "format": "date-time", "description": "Optional, for backfills: when the order happened (not in the future)"},
                    "products": {"type": "array", "minItems": 1, "maxItems": crate::model::MAX_LINES, "items": {
                        "type": "object", "required": ["productId", "quantity"], "additionalProperties": false,
                        "properties": {
                            "productId": {"type": "integer", "format": "int64", "minimum": 1},
                            "quantity": {"type": "integer", "minimum": 1, "maximum": crate::model::MAX_QUANTITY}}}}}},
            "Order": {"type": "object", "properties": {
                "id": {"type": "integer", "format": "int64"},
                "customer": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "email": {"type": "string"}}},
                "payment": {"type": "object", "properties": {"id": {"type": "integer"}, "method": {"type": "string"}}},
                "createdAt": {"type": "string", "format": "date-time"},
                "updatedAt": {"type": "string", "format": "date-time"},
                "lines": {"type": "array", "items": {"type": "object", "properties": {
                    "productId": {"type": "integer"}, "productName": {"type": "string"}, "quantity": {"type": "integer"},
                    "unitPrice": money, "promotion": {"type": "object", "nullable": true, "properties": {
                        "id": {"type": "integer"}, "name": {"type": "string"},
                        "couponType": {"type": "string", "enum": ["Percentage", "Fixed Amount"]}, "priceTreatment": money}},
                    "discountUnitPrice": money, "netUnitPrice": money, "extendedSalesAmount": money,
                    "extendedDiscountAmount": money, "netAmount": money}}},
                "totals": {"type": "object", "properties": {"lines": {"type": "integer"}, "quantity": {"type": "integer"},
                    "salesAmount": money, "discountAmount": money, "netAmount": money}}}},
            "OrderPage": {"type": "object", "properties": {
                "orders": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "customerId": {"type": "integer"}, "paymentId": {"type": "integer"},
                    "createdAt": {"type": "string", "format": "date-time"}, "updatedAt": {"type": "string", "format": "date-time"},
                    "lines": {"type": "integer"}, "quantity": {"type": "integer"}, "salesAmount": money, "href": {"type": "string"}}}},
                "next": {"type": "string", "nullable": true}}}
        }}
    })
}
