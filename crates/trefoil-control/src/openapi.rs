//! The OpenAPI document of the REST API, served at `/api/v1/openapi.json`.

use serde_json::{json, Value};
use trefoil_model::resource::{API_VERSION, CONTROLLER_KINDS, KINDS};

/// A resource name as `trefoil-model` validates it: lower-case letters,
/// digits, '-' and '.', starting and ending with a letter or digit, 1 to 253
/// characters.
const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$";

pub fn document() -> Value {
    let mut doc = resources_and_traces();
    secure(&mut doc);
    doc
}

/// Adds the bearer scheme, the token and audit paths, and to every
/// operation but the open ones its 401 and 403 answers (see `crate::auth`).
fn secure(doc: &mut Value) {
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let token_info = json!({"type": "object", "required": ["id", "role", "creator", "createdMs"], "properties": {
        "id": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "editor", "admin"]}, "creator": {"type": "string"},
        "createdMs": {"type": "integer"}, "expiresMs": {"type": "integer"}
    }});
    let mut created = token_info.clone();
    created["properties"]["token"] = json!({"type": "string", "description": "the secret, shown this once"});
    created["required"].as_array_mut().into_iter().for_each(|r| r.push(json!("token")));
    let paths = &mut doc["paths"];
    paths["/api/v1/tokens"] = json!({
        "get": {"summary": "Every token: id, role, creator, expiry; never a secret (admin)", "responses": {"200": {"description": "the tokens", "content": {"application/json": {"schema": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": token_info}}}}}}}},
        "post": {
            "summary": "Create a token (admin); its secret is in this answer only",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["role"], "additionalProperties": false, "properties": {
                "role": {"type": "string", "enum": ["viewer", "editor", "admin"]},
                "ttlSeconds": {"type": "integer", "nullable": true, "minimum": 1, "maximum": 315_360_000u64, "description": "absent or null: until revoked"}
            }}}}},
            "responses": {"201": {"description": "the token", "content": {"application/json": {"schema": created}}}, "400": error, "413": error, "422": error}
        }
    });
    paths["/api/v1/tokens/{id}"] = json!({"delete": {
        "summary": "Revoke a token (admin); its next request is refused",
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "revoked", "content": {"application/json": {"schema": {"type": "object", "required": ["revoked"], "properties": {"revoked": {"type": "string"}}}}}}, "404": error}
    }});
    paths["/api/v1/login-codes"] = json!({"post": {
        "summary": "A one-time login code for the portal's login link (admin): good for one POST /api/v1/login within its lifetime; at most 16 outstanding",
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {
            "role": {"type": "string", "enum": ["viewer", "editor", "admin"], "description": "the session's role; absent: admin"},
            "ttlSeconds": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "absent: 600"}
        }}}}},
        "responses": {"201": {"description": "the code, shown this once", "content": {"application/json": {"schema": {"type": "object", "required": ["id", "role", "expiresMs", "code"], "properties": {
            "id": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "editor", "admin"]}, "expiresMs": {"type": "integer"}, "code": {"type": "string"}
        }}}}}, "400": error, "413": error, "422": error, "429": error}
    }});
    paths["/api/v1/login"] = json!({"post": {
        "summary": "Exchange a login code for a session token (open: the code is the credential): an API token of the code's role that expires in 12 h; a code logs in once",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["code"], "additionalProperties": false, "properties": {"code": {"type": "string"}}}}}},
        "responses": {"200": {"description": "the session token", "content": {"application/json": {"schema": created}}}, "400": error, "401": error, "413": error, "422": error}
    }});
    paths["/api/v1/audit"] = json!({"get": {
        "summary": "The audit log (admin): each write through the API, oldest first, the newest 1000 kept",
        "responses": {"200": {"description": "the entries", "content": {"application/json": {"schema": {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object", "required": ["seq", "timeMs", "tokenId", "role", "verb", "resource"], "properties": {
            "seq": {"type": "integer"}, "timeMs": {"type": "integer"}, "tokenId": {"type": "string"}, "role": {"type": "string"}, "verb": {"type": "string"},
            "resource": {"type": "string", "description": "Kind/name"}, "before": {"type": "string", "description": "resourceVersion before the write"}, "after": {"type": "string", "description": "resourceVersion after"}
        }}}}}}}}}
    }});
    let certificate = json!({"type": "object", "required": ["subject", "fingerprint", "notAfter", "signing", "state"], "properties": {
        "subject": {"type": "string"}, "fingerprint": {"type": "string", "description": "SHA-256 of the DER, colon-separated hex"},
        "notAfter": {"type": "string", "format": "date-time"}, "signing": {"type": "boolean", "description": "new SVIDs are signed by it"},
        "state": {"type": "string", "enum": ["active", "retiring"]}, "dropAt": {"type": "string", "format": "date-time", "description": "a retiring root leaves the trust bundle then"}
    }});
    let ca = json!({"type": "object", "required": ["trustDomain", "source", "signer", "roots", "generation", "svidLifetime"], "properties": {
        "trustDomain": {"type": "string"}, "source": {"type": "string", "enum": ["generated", "operator"]},
        "signer": certificate, "roots": {"type": "array", "items": certificate, "description": "the trust bundle proxies are sent now"},
        "generation": {"type": "integer", "description": "bumped at each rotation"}, "svidLifetime": {"type": "string"}
    }});
    paths["/api/v1/ca"] = json!({"get": {
        "summary": "The mesh CA: the certificate signing SVIDs and the roots in the trust bundle, with fingerprints and expiry; never a key",
        "responses": {"200": {"description": "the CA", "content": {"application/json": {"schema": ca}}}}
    }});
    paths["/api/v1/ca/rotate"] = json!({"post": {
        "summary": "Rotate the generated root (admin): a new root signs from now on, the old one stays in the trust bundle for the overlap (at least the SVID lifetime; default 24 h or the SVID lifetime if longer)",
        "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {
            "overlap": {"type": "string", "nullable": true, "description": "a duration, e.g. 24h; absent or null: the default"}
        }}}}},
        "responses": {"200": {"description": "the CA after the rotation", "content": {"application/json": {"schema": ca}}}, "400": error, "409": error, "413": error}
    }});
    for (path, operations) in paths.as_object_mut().into_iter().flatten() {
        for (method, operation) in operations.as_object_mut().into_iter().flatten() {
            if (path == "/v1/traces" || path == "/api/v1/login") && method == "post" {
                // Open to proxies (decision 0016); a login's code is its credential.
                operation["security"] = json!([]);
                continue;
            }
            let responses = &mut operation["responses"];
            responses["401"] = json!({"description": "no bearer token, or one that is unknown, revoked or expired", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
            if responses.get("403").is_none() {
                responses["403"] = json!({"description": "the token's role may not do this", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
            }
        }
    }
    doc["security"] = json!([{"bearer": []}]);
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer", "description": "a token from `trefoil token create`, or the admin token in the control plane's data directory"}});
}

fn resources_and_traces() -> Value {
    let name_schema = json!({"type": "string", "minLength": 1, "maxLength": 253, "pattern": NAME_PATTERN});
    let kind = json!({"name": "kind", "in": "path", "required": true, "schema": {"type": "string", "enum": KINDS}, "example": "Service"});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": name_schema, "example": "web"});
    let example = json!({"apiVersion": API_VERSION, "kind": "Service", "metadata": {"name": "web"}, "spec": {"endpoints": [{"address": "127.0.0.1:8080", "version": "v1"}]}});
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let too_large =
        json!({"description": "a body over 2 MiB", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    // One event of the live feed, as a reader of text/event-stream parses it.
    let snapshot = json!({"type": "object", "required": ["data"], "properties": {
        "event": {"type": "string", "enum": ["snapshot"]},
        "id": {"type": "string", "description": "the snapshot's sequence number"},
        "data": {"type": "string", "description": "the snapshot as JSON: seq, timeMs, proxies (ProxyStatusList), traffic (trefoil top's rows with `total`), services, workloads, rollouts, rolloutStatuses, events (Resources)"}
    }});
    let busy = json!({"description": "too many watch streams are open", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    // A query string or path that does not parse (`?limit=null`, bytes that are not UTF-8).
    let bad_request = json!({"description": "a malformed path or query parameter, or body", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let resource = json!({"description": "the resource", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StoredResource"}}}});
    // What a client can do next with a resource it wrote: the links let a
    // client (and a stateful API fuzzer) follow one resource through its life.
    let by_body =
        |op: &str| json!({"operationId": op, "parameters": {"kind": "$response.body#/kind", "name": "$response.body#/metadata/name"}});
    let mut written = resource.clone();
    written["links"] = json!({"ReadWritten": by_body("readResource"), "ReplaceWritten": by_body("replaceResource"), "DeleteWritten": by_body("deleteResource")});
    let body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Resource"}, "example": example},
        "application/yaml": {"schema": {"$ref": "#/components/schemas/Resource"}, "example": example}
    }});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Trefoil control plane",
            "version": "v1",
            "description": "Every operation but the OTLP span intake needs a bearer token: viewer reads, editor writes, admin manages tokens and reads the audit log. Limits, for any operation: request line and headers 64 KiB (431) sent within 10 s, \
                which is also how long an idle connection is kept; a request received whole and answered within 30 s (408); bodies 2 MiB (413); \
                by default 512 connections served at once (more wait to be accepted) and 128 watch streams (503; see `trefoil control --help`); \
                a reader that takes no bytes for 60 s is disconnected."
        },
        "paths": {
            "/api/v1/{kind}": {
                "get": {
                    "summary": "List the resources of a kind",
                    "description": "With ?watch=true this answers as /api/v1/watch/{kind} does.",
                    "parameters": [kind],
                    "responses": {"200": {"description": "the list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/List"}}}}, "400": bad_request, "404": error}
                },
                "post": {
                    "operationId": "createResource",
                    "summary": format!("Create a resource; 409 if it exists, 403 for kinds only the control plane writes ({})", CONTROLLER_KINDS.join(", ")),
                    "parameters": [kind],
                    "requestBody": body,
                    "responses": {"201": written, "400": error, "403": error, "404": error, "409": error, "413": too_large, "422": error}
                }
            },
            "/api/v1/validate": {
                "post": {
                    "operationId": "validateResource",
                    "summary": "Check one resource exactly as a create or replace would (shape, handler scripts, agreement with the stored resources, a stale metadata.resourceVersion), storing nothing; answers the resource as it would be stored",
                    "requestBody": body,
                    "responses": {"200": resource, "400": error, "403": error, "409": error, "413": too_large, "422": error}
                }
            },
            "/api/v1/watch/{kind}": {
                "get": {
                    "summary": "Watch a kind: JSON lines, the current objects as ADDED, then MODIFIED and DELETED as they happen; the stream stays open, unless the reader falls more than 1024 changes behind: then an ERROR line (list again) ends it",
                    "parameters": [kind],
                    "responses": {"200": {"description": "a stream of JSON lines {type, object}", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, "400": bad_request, "404": error, "503": busy}
                }
            },
            "/api/v1/rollouts/{name}/{action}": {
                "post": {
                    "summary": "Act on a rollout by hand: promote (all traffic to the canary), abort (all back to stable), pause, resume; recorded in RolloutStatus/{name} with an Event",
                    "parameters": [name, {"name": "action", "in": "path", "required": true, "schema": {"type": "string", "enum": ["promote", "abort", "pause", "resume"]}}],
                    "responses": {"200": {"description": "the rollout's new status", "content": {"application/json": {"schema": {"type": "object", "required": ["name", "status"], "properties": {"name": {"type": "string"}, "status": {"type": "object"}}}}}}, "400": bad_request, "404": error, "409": error}
                }
            },
            "/v1/traces": {
                "post": {
                    "summary": "The trace collector's OTLP/HTTP receiver (JSON encoding): proxies export their spans here. Spans without a valid trace and span id are rejected and counted in partialSuccess; a body whose envelope (down to each span object) is malformed is refused whole",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExportTraceServiceRequest"}}}},
                    "responses": {"200": {"description": "accepted", "content": {"application/json": {"schema": {"type": "object", "properties": {"partialSuccess": {"type": "object"}}}}}}, "400": error, "413": too_large}
                }
            },
            "/api/v1/traces": {
                "get": {
                    "summary": "The most recent traces the collector holds, newest first",
                    "description": "With ?follow=true this answers as /api/v1/watch/traces does.",
                    "parameters": [{"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "default": 50}, "description": "at most this many (capped at 1000)"}],
                    "responses": {"200": {"description": "the traces", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TraceList"}}}}, "400": bad_request}
                }
            },
            "/api/v1/traces/{traceId}": {
                "get": {
                    "summary": "Every span of a trace, ordered by start time, with parent ids, service and attributes",
                    "description": "With ?follow=true: JSON lines {type: SPAN, span}, the spans held, then new ones of this trace as they arrive.",
                    "parameters": [{"name": "traceId", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}],
                    "responses": {"200": {"description": "the trace", "content": {"application/json": {"schema": {"type": "object", "required": ["traceId", "spans"], "properties": {"kind": {"type": "string"}, "traceId": {"type": "string"}, "spans": {"type": "array", "items": {"$ref": "#/components/schemas/Span"}}, "flows": {"type": "array", "description": "the datapath flows of the connections the trace's requests came on through a redirect (same 5-tuple, overlapping time); absent when none", "items": {"$ref": "#/components/schemas/Flow"}}}}}}}, "400": bad_request, "404": error}
                }
            },
            "/api/v1/watch/traces": {
                "get": {
                    "summary": "Follow spans as they arrive: JSON lines {type: SPAN, span} (or {type: LAGGED, missed} when the reader fell behind); with traceId, that trace's spans held so far first, then its new ones; the stream stays open",
                    "parameters": [{"name": "traceId", "in": "query", "required": false, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "a stream of JSON lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, "400": bad_request, "503": busy}
                }
            },
            "/api/v1/datapath/flows": {
                "get": {
                    "summary": "The datapath flows the node agents reported lately, most recently active first (at most 1000)",
                    "parameters": [{"name": "rule", "in": "query", "required": false, "schema": {"type": "string"}, "description": "only this rule's flows"}],
                    "responses": {"200": {"description": "the flows", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowList"}}}}}
                },
                "post": {
                    "summary": "A node agent's report: the flows that saw packets since its last report (at most 4096) and every rule's counters; the control plane keeps each node's 4096 most recent flows for 10 minutes",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowReport"}}}},
                    "responses": {"200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object", "required": ["accepted", "evicted"], "properties": {"accepted": {"type": "integer"}, "evicted": {"type": "integer"}}}}}}, "400": error, "413": too_large}
                }
            },
            "/api/v1/watch/datapath/flows": {
                "get": {
                    "summary": "Follow flows as reports bring them: JSON lines {type: FLOW, flow} (or {type: LAGGED, missed}); the stream stays open",
                    "parameters": [{"name": "rule", "in": "query", "required": false, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "a stream of JSON lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, "503": busy}
                }
            },
            "/api/v1/status/proxies": {
                "get": {
                    "summary": "Every proxy known from a Proxy resource or a config stream: connected, admin address, latest and acked snapshot versions, the last rejection",
                    "responses": {"200": {"description": "the proxies", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProxyStatusList"}}}}}
                }
            },
            "/api/v1/live": {
                "get": {
                    "summary": "The portal's live feed, as server-sent events: `event: snapshot` with a JSON snapshot (proxies' status, trefoil top's traffic rows with totals, services, workloads, rollouts and their status, recent events) every second and after each write, the newest only; a `: heartbeat` comment when quiet",
                    "responses": {"200": {"description": "a stream of server-sent events", "content": {"text/event-stream": {"schema": snapshot}}}, "503": busy}
                }
            },
            "/api/v1/graph": {
                "get": {
                    "summary": "The service graph: nodes (gateways, CNFs with their steps, functions, services; grouped by the namespace label) and edges (route, chain, call) with weights and the live feed's request and error rates",
                    "responses": {"200": {"description": "the graph", "content": {"application/json": {"schema": {"type": "object", "required": ["nodes", "edges"], "properties": {"nodes": {"type": "array", "items": {"type": "object"}}, "edges": {"type": "array", "items": {"type": "object"}}}}}}}}
                }
            },
            "/api/v1/whoami": {
                "get": {
                    "summary": "The caller's token id and role (viewer, editor, admin)",
                    "responses": {"200": {"description": "the caller", "content": {"application/json": {"schema": {"type": "object", "properties": {"tokenId": {"type": "string", "nullable": true}, "role": {"type": "string", "enum": ["viewer", "editor", "admin"], "nullable": true}}}}}}}
                }
            },
            "/api/v1/{kind}/{name}": {
                "get": {"operationId": "readResource", "summary": "Read a resource", "parameters": [kind, name], "responses": {"200": resource, "400": bad_request, "404": error}},
                "put": {
                    "operationId": "replaceResource",
                    "summary": "Create or replace a resource; with metadata.resourceVersion only if it is current (else 409)",
                    "parameters": [kind, name],
                    "requestBody": body,
                    "responses": {"200": written, "201": written, "400": error, "403": error, "404": error, "409": error, "413": too_large, "422": error}
                },
                "delete": {
                    "operationId": "deleteResource",
                    "summary": "Delete a resource; with ?resourceVersion only if it is current",
                    "parameters": [kind, name, {"name": "resourceVersion", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": u64::MAX}}],
                    "responses": {"200": {"description": "deleted", "content": {"application/json": {"schema": {"type": "object", "properties": {"deleted": {"type": "string", "description": "Kind/name"}, "resourceVersion": {"type": "string"}}}}}, "links": {"ReadDeleted": {"operationId": "readResource", "parameters": {"kind": "$request.path.kind", "name": "$request.path.name"}}}}, "400": bad_request, "403": error, "404": error, "409": error}
                }
            }
        },
        "components": {"schemas": {
            "Resource": {
                "type": "object",
                // `spec` may be left out where every field of a kind's spec has a default (a Proxy's does).
                "required": ["apiVersion", "kind", "metadata"],
                "properties": {
                    "apiVersion": {"type": "string", "enum": [API_VERSION]},
                    "kind": {"type": "string", "enum": KINDS},
                    "metadata": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                        "name": name_schema,
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "resourceVersion": {"type": "string", "nullable": true, "pattern": "^[0-9]{1,19}$", "description": "as the server issued it; on a write, the write happens only if it is current (null or absent: unconditionally)"},
                        "generation": {"type": "integer", "nullable": true, "minimum": 0, "maximum": u64::MAX, "description": "set by the server; ignored on writes"}
                    }},
                    "spec": {"type": "object"}
                }
            },
            // What reads answer: a Resource, with the status the server computes.
            "StoredResource": {
                "allOf": [{"$ref": "#/components/schemas/Resource"}],
                "properties": {"status": {"type": "object", "description": "computed by the server when read", "properties": {
                    "applied": {"$ref": "#/components/schemas/Applied"}
                }}}
            },
            "Applied": {
                "type": "object",
                "description": "how many of the connected proxies (and node agents) whose snapshot depends on this resource serve its current resourceVersion (decision 0025)",
                "required": ["acknowledged", "needed", "nacks"],
                "properties": {
                    "acknowledged": {"type": "integer", "minimum": 0, "description": "proxies that need it and serve this version or a newer one"},
                    "needed": {"type": "integer", "minimum": 0, "description": "connected proxies whose snapshot depends on it; 0: none does"},
                    "slowestMs": {"type": "integer", "minimum": 0, "description": "milliseconds from the write to the slowest acknowledgement known"},
                    "nacks": {"type": "array", "description": "every proxy that refused a snapshot holding this version", "items": {"type": "object", "required": ["proxy", "reason", "revision"], "properties": {
                        "proxy": {"type": "string"}, "reason": {"type": "string"}, "revision": {"type": "integer", "minimum": 0, "description": "the snapshot revision it refused"}
                    }}}
                }
            },
            "ExportTraceServiceRequest": {"type": "object", "required": ["resourceSpans"], "properties": {"resourceSpans": {"type": "array", "items": {"type": "object", "properties": {
                "resource": {"type": "object", "properties": {"attributes": {"type": "array"}}},
                "scopeSpans": {"type": "array", "items": {"type": "object", "properties": {"spans": {"type": "array", "items": {"type": "object"}}}}}
            }}}}},
            "List": {"type": "object", "properties": {"kind": {"type": "string"}, "resourceVersion": {"type": "string"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/StoredResource"}}}},
            "ProxyStatusList": {"type": "object", "required": ["items", "compiledRevision"], "properties": {"kind": {"type": "string"}, "compiledRevision": {"type": "integer", "minimum": 0, "description": "the store revision the connected proxies' snapshots were last compiled at; every write up to it is in their latest snapshots"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/ProxyStatus"}}}},
            "ProxyStatus": {
                "type": "object",
                "required": ["name", "connected"],
                "properties": {
                    "name": {"type": "string", "description": "the proxy's name; `agent/<node>` for a node agent"},
                    "node": {"type": "string", "description": "set for a node agent: the node whose datapath table it programs"},
                    "connected": {"type": "boolean"},
                    "adminAddress": {"type": "string", "nullable": true},
                    "latestVersion": {"type": "integer", "nullable": true, "description": "the newest snapshot compiled for this proxy"},
                    "ackedVersion": {"type": "integer", "nullable": true, "description": "the snapshot the proxy said it serves"},
                    "nack": {"type": "object", "nullable": true, "properties": {"version": {"type": "integer"}, "error": {"type": "string"}}},
                    "lastSeen": {"type": "string", "nullable": true, "description": "RFC 3339"},
                    "lag": {"type": "integer", "minimum": 0, "description": "store revisions between the newest snapshot compiled for it and the one it serves; absent while not connected or before its first acknowledgement"},
                    "subscribed": {"type": "integer", "minimum": 0, "description": "resources in its newest snapshot (a node agent's: table lines)"},
                    "scopedServices": {"type": "integer", "minimum": 0, "description": "a scoped proxy (decision 0027): services its newest snapshot holds; absent for one sent the whole mesh"},
                    "lookedUp": {"type": "array", "items": {"type": "string"}, "description": "services it looked up on demand, in its scope from then on"}
                }
            },
            "TraceList": {"type": "object", "required": ["items"], "properties": {"kind": {"type": "string"}, "items": {"type": "array", "items": {"type": "object", "required": ["traceId", "root", "startUnixNano", "durationMs", "spans", "status"], "properties": {
                "traceId": {"type": "string"},
                "root": {"type": "string", "description": "name of the earliest span whose parent is not in the trace"},
                "service": {"type": "string"},
                "startUnixNano": {"type": "string"},
                "durationMs": {"type": "number"},
                "spans": {"type": "integer"},
                "status": {"type": "string", "enum": ["ok", "error"]},
                "cnfs": {"type": "array", "items": {"type": "string"}, "description": "CNFs whose chains ran (trefoil.cnf), sorted, at most 32"},
                "events": {"type": "array", "items": {"type": "string"}, "description": "trefoil.event values and span event names, sorted, at most 32"},
                "paths": {"type": "array", "items": {"type": "string"}, "description": "url.path values, sorted, at most 32"}
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
            "Flow": {"type": "object", "required": ["src", "dst", "protocol", "action", "bytes", "packets", "startUnixNano", "endUnixNano"], "properties": {
                "node": {"type": "string", "description": "the node whose agent reported it"},
                "src": {"type": "string", "description": "sender, address:port"},
                "dst": {"type": "string", "description": "receiver, address:port"},
                "protocol": {"type": "string", "enum": ["tcp", "udp"]},
                "rule": {"type": "string", "description": "empty when the agent knows only the rule's hash"},
                "action": {"type": "string", "enum": ["redirect", "copy", "drop"]},
                "bytes": {"type": "integer"},
                "packets": {"type": "integer"},
                "startUnixNano": {"type": "string", "description": "first packet"},
                "endUnixNano": {"type": "string", "description": "latest packet"}
            }},
            "FlowList": {"type": "object", "required": ["items"], "properties": {"kind": {"type": "string"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/Flow"}}}},
            "FlowReport": {"type": "object", "required": ["node"], "properties": {
                "node": {"type": "string"},
                "flows": {"type": "array", "items": {"$ref": "#/components/schemas/Flow"}},
                "counters": {"type": "array", "items": {"type": "object", "required": ["rule", "action", "packets", "bytes"], "properties": {"rule": {"type": "string"}, "action": {"type": "string", "enum": ["redirect", "copy", "drop"]}, "packets": {"type": "integer"}, "bytes": {"type": "integer"}}}},
                "dropped": {"type": "integer", "description": "flow records the agent left out of this report (the oldest)"}
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::Serialize;
    use trefoil_api::flows::{Flow, FlowList, FlowReport, RuleCounter};
    use trefoil_api::traces::{FollowEvent, Span, SpanEvent, Trace, TraceList, TraceStatus, TraceSummary};
    use trefoil_api::{Applied, AppliedNack, Deleted, ErrorBody, List, Nack, ProxyStatus, ProxyStatusList, RolloutActed};
    use trefoil_model::{Diagnostic, Metadata};

    use super::*;

    /// The names of a schema's properties.
    fn properties(schema: &Value) -> BTreeSet<String> {
        schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    /// The fields `value` has on the wire, with every optional one filled.
    fn fields<T: Serialize>(value: &T) -> BTreeSet<String> {
        serde_json::to_value(value).unwrap().as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }

    /// The schema lists exactly the type's fields, and requires none it may leave out.
    fn agrees<T: Serialize>(what: &str, schema: &Value, full: &T) {
        assert!(schema.is_object(), "{what}: no such schema");
        let wire = fields(full);
        assert_eq!(properties(schema), wire, "{what}: the document's properties against the type's fields");
        for required in schema["required"].as_array().into_iter().flatten() {
            assert!(wire.contains(required.as_str().unwrap()), "{what} requires {required}, which the type does not have");
        }
    }

    fn span() -> Span {
        let event = SpanEvent { name: "checked".into(), time_unix_nano: 2, attributes: BTreeMap::new() };
        Span {
            trace_id: "t".into(),
            span_id: "s".into(),
            parent_span_id: Some("p".into()),
            name: "GET".into(),
            service: "edge".into(),
            start_unix_nano: 1,
            end_unix_nano: 3,
            error: false,
            attributes: BTreeMap::new(),
            events: vec![event],
        }
    }

    fn json_schema<'a>(doc: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
        &doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    }

    #[test]
    fn the_document_lists_the_contract_types_fields() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let proxy = ProxyStatus {
            node: Some("edge".into()),
            admin_address: Some("127.0.0.1:15000".into()),
            latest_version: Some(2.into()),
            acked_version: Some(1.into()),
            nack: Some(Nack { version: 2.into(), error: "bad".into() }),
            last_seen: Some("2026-01-01T00:00:00Z".into()),
            lag: Some(1),
            subscribed: Some(12),
            scoped_services: Some(3),
            looked_up: vec!["billing".into()],
            ..ProxyStatus::declared("edge")
        };
        let applied = Applied {
            acknowledged: 1,
            needed: 2,
            slowest_ms: Some(120),
            nacks: vec![AppliedNack { proxy: "edge".into(), reason: "bad".into(), revision: 2.into() }],
        };
        agrees("Applied", &schemas["Applied"], &applied);
        agrees("Applied.nacks", &schemas["Applied"]["properties"]["nacks"]["items"], &applied.nacks[0]);
        agrees("ProxyStatus", &schemas["ProxyStatus"], &proxy);
        agrees("ProxyStatus.nack", &schemas["ProxyStatus"]["properties"]["nack"], proxy.nack.as_ref().unwrap());
        agrees("ProxyStatusList", &schemas["ProxyStatusList"], &ProxyStatusList::new(1.into(), vec![proxy]));

        let summary = TraceSummary {
            trace_id: "t".into(),
            root: "GET".into(),
            service: "edge".into(),
            start_unix_nano: 1,
            duration_ms: 1.0,
            spans: 1,
            status: TraceStatus::Ok,
            cnfs: vec!["edge-security".into()],
            events: vec!["virus_found".into()],
            paths: vec!["/upload".into()],
        };
        agrees("TraceList", &schemas["TraceList"], &TraceList::new(vec![summary.clone()]));
        agrees("TraceList.items", &schemas["TraceList"]["properties"]["items"]["items"], &summary);
        agrees("Span", &schemas["Span"], &span());
        agrees("Span.events", &schemas["Span"]["properties"]["events"]["items"], &span().events[0]);
        let flow = Flow {
            node: "edge".into(),
            src: "10.0.1.2:40112".parse().unwrap(),
            dst: "10.0.2.5:80".parse().unwrap(),
            protocol: trefoil_model::spec::Protocol::Tcp,
            rule: "web".into(),
            action: trefoil_model::spec::DatapathAction::Redirect,
            bytes: 1,
            packets: 1,
            start_unix_nano: 1,
            end_unix_nano: 2,
        };
        let trace = Trace { flows: vec![flow.clone()], ..Trace::new("t".into(), vec![span()]) };
        agrees("Trace", json_schema(&doc, "/api/v1/traces/{traceId}", "get", "200"), &trace);
        agrees("Flow", &schemas["Flow"], &flow);
        agrees("FlowList", &schemas["FlowList"], &FlowList::new(vec![flow.clone()]));
        let counter = RuleCounter { rule: "web".into(), action: flow.action, packets: 1, bytes: 1 };
        let report = FlowReport { node: "edge".into(), flows: vec![flow], counters: vec![counter.clone()], dropped: 0 };
        agrees("FlowReport", &schemas["FlowReport"], &report);
        agrees("FlowReport.counters", &schemas["FlowReport"]["properties"]["counters"]["items"], &counter);
        // A follow line's span is the same Span.
        assert!(serde_json::to_value(FollowEvent::Span { span: span() }).unwrap()["span"].is_object());

        let diagnostic = Diagnostic { file: "f".into(), line: 1, column: 2, field: "spec".into(), message: "bad".into() };
        let error = ErrorBody { error: "invalid resource".into(), errors: vec![diagnostic.clone()] };
        agrees("Error", &schemas["Error"], &error);
        agrees("Error.errors", &schemas["Error"]["properties"]["errors"]["items"], &diagnostic);

        let list = List::<Value> { kind: "RouteList".into(), resource_version: 1.into(), items: vec![] };
        agrees("List", &schemas["List"], &list);
        let metadata = Metadata {
            name: "web".into(),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            resource_version: Some("1".into()),
            generation: Some(1),
        };
        agrees("Resource.metadata", &schemas["Resource"]["properties"]["metadata"], &metadata);
        let deleted = Deleted { deleted: "Route/web".into(), resource_version: 2.into() };
        agrees("DELETE 200", json_schema(&doc, "/api/v1/{kind}/{name}", "delete", "200"), &deleted);
        let acted = RolloutActed { name: "web".into(), status: Default::default() };
        agrees("rollout action 200", json_schema(&doc, "/api/v1/rollouts/{name}/{action}", "post", "200"), &acted);
    }
}
