//! The OpenAPI document of the REST API, served at `/api/v1/openapi.json`.

use serde_json::{json, Value};
use trefoil_model::resource::{API_VERSION, KINDS};

pub fn document() -> Value {
    let kind = json!({"name": "kind", "in": "path", "required": true, "schema": {"type": "string", "enum": KINDS}});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"}});
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let resource = json!({"description": "the resource", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}}});
    let body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Resource"}},
        "application/yaml": {"schema": {"$ref": "#/components/schemas/Resource"}}
    }});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Trefoil control plane", "version": "v1"},
        "paths": {
            "/api/v1/{kind}": {
                "get": {
                    "summary": "List the resources of a kind",
                    "description": "With ?watch=true this answers as /api/v1/watch/{kind} does.",
                    "parameters": [kind],
                    "responses": {"200": {"description": "the list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/List"}}}}, "404": error}
                },
                "post": {
                    "summary": "Create a resource; 409 if it exists, 403 for kinds only the control plane writes (RolloutStatus, Event)",
                    "parameters": [kind],
                    "requestBody": body,
                    "responses": {"201": resource, "400": error, "403": error, "404": error, "409": error, "422": error}
                }
            },
            "/api/v1/watch/{kind}": {
                "get": {
                    "summary": "Watch a kind: JSON lines, the current objects as ADDED, then MODIFIED and DELETED as they happen; the stream stays open",
                    "parameters": [kind],
                    "responses": {"200": {"description": "a stream of JSON lines {type, object}", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, "404": error}
                }
            },
            "/api/v1/rollouts/{name}/{action}": {
                "post": {
                    "summary": "Act on a rollout by hand: promote (all traffic to the canary), abort (all back to stable), pause, resume; recorded in RolloutStatus/{name} with an Event",
                    "parameters": [name, {"name": "action", "in": "path", "required": true, "schema": {"type": "string", "enum": ["promote", "abort", "pause", "resume"]}}],
                    "responses": {"200": {"description": "the rollout's new status", "content": {"application/json": {"schema": {"type": "object", "required": ["name", "status"], "properties": {"name": {"type": "string"}, "status": {"type": "object"}}}}}}, "404": error, "409": error}
                }
            },
            "/v1/traces": {
                "post": {
                    "summary": "The trace collector's OTLP/HTTP receiver (JSON encoding): proxies export their spans here. Spans without a valid trace and span id are rejected and counted in partialSuccess",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["resourceSpans"], "properties": {"resourceSpans": {"type": "array", "items": {"type": "object"}}}}}}},
                    "responses": {"200": {"description": "accepted", "content": {"application/json": {"schema": {"type": "object", "properties": {"partialSuccess": {"type": "object"}}}}}}, "400": error}
                }
            },
            "/api/v1/traces": {
                "get": {
                    "summary": "The most recent traces the collector holds, newest first",
                    "description": "With ?follow=true this answers as /api/v1/watch/traces does.",
                    "parameters": [{"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "default": 50}, "description": "at most this many (capped at 1000)"}],
                    "responses": {"200": {"description": "the traces", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TraceList"}}}}}
                }
            },
            "/api/v1/traces/{traceId}": {
                "get": {
                    "summary": "Every span of a trace, ordered by start time, with parent ids, service and attributes",
                    "description": "With ?follow=true: JSON lines {type: SPAN, span}, the spans held, then new ones of this trace as they arrive.",
                    "parameters": [{"name": "traceId", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}],
                    "responses": {"200": {"description": "the trace", "content": {"application/json": {"schema": {"type": "object", "required": ["traceId", "spans"], "properties": {"kind": {"type": "string"}, "traceId": {"type": "string"}, "spans": {"type": "array", "items": {"$ref": "#/components/schemas/Span"}}}}}}}, "404": error}
                }
            },
            "/api/v1/watch/traces": {
                "get": {
                    "summary": "Follow spans as they arrive: JSON lines {type: SPAN, span} (or {type: LAGGED, missed} when the reader fell behind); with traceId, that trace's spans held so far first, then its new ones; the stream stays open",
                    "parameters": [{"name": "traceId", "in": "query", "required": false, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "a stream of JSON lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}
                }
            },
            "/api/v1/status/proxies": {
                "get": {
                    "summary": "Every proxy known from a Proxy resource or a config stream: connected, admin address, latest and acked snapshot versions, the last rejection",
                    "responses": {"200": {"description": "the proxies", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProxyStatusList"}}}}}
                }
            },
            "/api/v1/{kind}/{name}": {
                "get": {"summary": "Read a resource", "parameters": [kind, name], "responses": {"200": resource, "404": error}},
                "put": {
                    "summary": "Create or replace a resource; with metadata.resourceVersion only if it is current (else 409)",
                    "parameters": [kind, name],
                    "requestBody": body,
                    "responses": {"200": resource, "201": resource, "400": error, "403": error, "404": error, "409": error, "422": error}
                },
                "delete": {
                    "summary": "Delete a resource; with ?resourceVersion only if it is current",
                    "parameters": [kind, name, {"name": "resourceVersion", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}}],
                    "responses": {"200": {"description": "deleted", "content": {"application/json": {"schema": {"type": "object"}}}}, "403": error, "404": error, "409": error}
                }
            }
        },
        "components": {"schemas": {
            "Resource": {
                "type": "object",
                "required": ["apiVersion", "kind", "metadata", "spec"],
                "properties": {
                    "apiVersion": {"type": "string", "enum": [API_VERSION]},
                    "kind": {"type": "string", "enum": KINDS},
                    "metadata": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "resourceVersion": {"type": "string"},
                        "generation": {"type": "integer"}
                    }},
                    "spec": {"type": "object"}
                }
            },
            "List": {"type": "object", "properties": {"kind": {"type": "string"}, "resourceVersion": {"type": "string"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/Resource"}}}},
            "ProxyStatusList": {"type": "object", "required": ["items", "compiledRevision"], "properties": {"kind": {"type": "string"}, "compiledRevision": {"type": "integer", "minimum": 0, "description": "the store revision the connected proxies' snapshots were last compiled at; every write up to it is in their latest snapshots"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/ProxyStatus"}}}},
            "ProxyStatus": {
                "type": "object",
                "required": ["name", "connected"],
                "properties": {
                    "name": {"type": "string"},
                    "connected": {"type": "boolean"},
                    "adminAddress": {"type": "string", "nullable": true},
                    "latestVersion": {"type": "integer", "nullable": true, "description": "the newest snapshot compiled for this proxy"},
                    "ackedVersion": {"type": "integer", "nullable": true, "description": "the snapshot the proxy said it serves"},
                    "nack": {"type": "object", "nullable": true, "properties": {"version": {"type": "integer"}, "error": {"type": "string"}}},
                    "lastSeen": {"type": "string", "nullable": true, "description": "RFC 3339"}
                }
            },
            "TraceList": {"type": "object", "required": ["items"], "properties": {"kind": {"type": "string"}, "items": {"type": "array", "items": {"type": "object", "required": ["traceId", "root", "startUnixNano", "durationMs", "spans", "status"], "properties": {
                "traceId": {"type": "string"},
                "root": {"type": "string", "description": "name of the earliest span whose parent is not in the trace"},
                "service": {"type": "string"},
                "startUnixNano": {"type": "string"},
                "durationMs": {"type": "number"},
                "spans": {"type": "integer"},
                "status": {"type": "string", "enum": ["ok", "error"]}
            }}}}},
            "Span": {"type": "object", "required": ["traceId", "spanId", "name", "service", "startUnixNano", "endUnixNano", "error", "attributes"], "properties": {
                "traceId": {"type": "string"},
                "spanId": {"type": "string"},
                "parentSpanId": {"type": "string"},
                "name": {"type": "string"},
                "service": {"type": "string", "description": "the exporter's service.name: a proxy's name unless its tracing names another"},
                "startUnixNano": {"type": "string"},
                "endUnixNano": {"type": "string"},
                "error": {"type": "boolean"},
                "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                "events": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "timeUnixNano": {"type": "string"}, "attributes": {"type": "object", "additionalProperties": {"type": "string"}}}}}
            }},
            "Error": {"type": "object", "properties": {
                "error": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "properties": {
                    "file": {"type": "string"}, "line": {"type": "integer"}, "column": {"type": "integer"}, "field": {"type": "string"}, "message": {"type": "string"}
                }}}
            }}
        }}
    })
}
