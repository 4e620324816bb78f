//! `trefoil apply`, `get` and `delete`: the control plane's REST API from
//! the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;

use crate::output::{current_thread_runtime, exit, print_structured, Format};

/// Where the control plane's API is.
#[derive(clap::Args)]
pub(crate) struct Server {
    /// Control plane REST API.
    #[arg(long, env = "TREFOIL_SERVER", default_value = "http://127.0.0.1:7070")]
    pub server: String,
}

#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    /// A YAML file, or a directory of *.yaml / *.yml files.
    #[arg(short = 'f', long = "file")]
    path: PathBuf,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
#[command(after_help = "`trefoil get proxies` shows the proxies as the control plane sees them: connected or not, \
the snapshot version each acked and the latest compiled for it, and the last rejection (NACK) with its error. \
`trefoil get Proxy` lists the Proxy resources themselves.")]
pub(crate) struct GetArgs {
    /// Resource kind: Route, routes, service, ...; `proxies` for the proxies' status.
    kind: String,
    /// One resource; all of the kind when absent.
    name: Option<String>,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(clap::Args)]
pub(crate) struct DeleteArgs {
    kind: String,
    name: String,
    #[command(flatten)]
    server: Server,
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// A failed call: what to tell the user and which exit code to use.
pub(crate) struct Failure {
    pub message: String,
    pub code: ExitCode,
}

pub(crate) type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub(crate) async fn call(
    client: &HttpClient,
    server: &str,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Value), Failure> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure { message: format!("bad request to {url}: {e}"), code: exit::bad_input() })?;
    let resp = client.request(req).await.map_err(|e| Failure {
        message: format!("cannot reach the control plane at {server}: {e} (is `trefoil control` running? see --server)"),
        code: exit::failure(),
    })?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

pub(crate) fn server_error(status: u16, body: &Value) -> String {
    let mut msg = format!("{status}: {}", body["error"].as_str().unwrap_or("request failed"));
    for e in body["errors"].as_array().into_iter().flatten() {
        msg.push_str(&format!(
            "\n  {}:{}:{}: {}: {}",
            e["file"].as_str().unwrap_or(""),
            e["line"],
            e["column"],
            e["field"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        ));
    }
    msg
}

pub(crate) fn run_async<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match current_thread_runtime() {
        Some(rt) => rt.block_on(f),
        None => exit::failure(),
    }
}

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[derive(Serialize)]
struct Applied {
    resource: String,
    result: String,
    #[serde(rename = "resourceVersion", skip_serializing_if = "Option::is_none")]
    resource_version: Option<String>,
}

pub(crate) fn apply(args: ApplyArgs) -> ExitCode {
    // Check locally first: errors point into the user's own files, all of them at once.
    let loaded = trefoil_model::load_all_path(&args.path);
    let problems = trefoil_model::check_all(&loaded, false);
    let sources = match problems.is_empty() {
        true => loaded.resources,
        false => {
            let d = trefoil_model::Diagnostics(problems);
            for e in &d.0 {
                eprintln!("{e}");
            }
            eprintln!("nothing applied: {} error(s) in {}", d.0.len(), args.path.display());
            return exit::bad_input();
        }
    };
    run_async(async move {
        let client = client();
        let mut results = Vec::new();
        let mut code = exit::ok();
        for s in &sources {
            let r = &s.resource;
            let id = format!("{}/{}", r.kind(), r.name());
            let body = serde_json::to_vec(r).unwrap_or_default();
            let (result, rv) = match call(
                &client,
                &args.server.server,
                http::Method::PUT,
                &format!("/api/v1/{}/{}", r.kind(), r.name()),
                Some(body),
            )
            .await
            {
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    return f.code;
                }
                Ok((201, v)) => ("created".to_string(), v["metadata"]["resourceVersion"].as_str().map(str::to_string)),
                Ok((200, v)) => ("configured".to_string(), v["metadata"]["resourceVersion"].as_str().map(str::to_string)),
                Ok((status, v)) => {
                    code = if status == 409 || status >= 500 { exit::failure() } else { exit::bad_input() };
                    (format!("failed: {}", server_error(status, &v)), None)
                }
            };
            if args.output == Format::Table {
                println!("{id} {result}");
            }
            results.push(Applied { resource: id, result, resource_version: rv });
        }
        if args.output != Format::Table {
            print_structured(args.output, &results);
        }
        code
    })
}

/// `proxies` (lower case, no name) is the status view; any other spelling of the kind lists Proxy resources.
const PROXY_STATUS: &str = "proxies";

pub(crate) fn get(args: GetArgs) -> ExitCode {
    if args.kind == PROXY_STATUS && args.name.is_none() {
        return get_proxy_status(args);
    }
    run_async(async move {
        let path = match &args.name {
            Some(name) => format!("/api/v1/{}/{name}", args.kind),
            None => format!("/api/v1/{}", args.kind),
        };
        let body = match read(&args.server.server, &path).await {
            Ok(v) => v,
            Err(code) => return code,
        };
        match args.output {
            Format::Table => {
                let items = if args.name.is_some() { vec![body] } else { body["items"].as_array().cloned().unwrap_or_default() };
                if items.first().is_some_and(|i| i["kind"] == "Event") {
                    crate::commands::rollout::print_events(&items);
                    return exit::ok();
                }
                println!("{:<16} {:<32} {:>8} {:>10}", "KIND", "NAME", "VERSION", "GENERATION");
                for item in items {
                    let m = &item["metadata"];
                    println!(
                        "{:<16} {:<32} {:>8} {:>10}",
                        item["kind"].as_str().unwrap_or(""),
                        m["name"].as_str().unwrap_or(""),
                        m["resourceVersion"].as_str().unwrap_or(""),
                        m["generation"]
                    );
                }
            }
            format => print_structured(format, &body),
        }
        exit::ok()
    })
}

pub(crate) fn delete(args: DeleteArgs) -> ExitCode {
    run_async(async move {
        match call(&client(), &args.server.server, http::Method::DELETE, &format!("/api/v1/{}/{}", args.kind, args.name), None).await {
            Err(f) => {
                eprintln!("error: {}", f.message);
                f.code
            }
            Ok((200, v)) => {
                match args.output {
                    Format::Table => println!("{} deleted", v["deleted"].as_str().unwrap_or("")),
                    format => print_structured(format, &v),
                }
                exit::ok()
            }
            Ok((status, v)) => {
                eprintln!("error: {}", server_error(status, &v));
                if status == 404 {
                    exit::bad_input()
                } else {
                    exit::failure()
                }
            }
        }
    })
}

/// A GET whose answer must be 200; otherwise the error is printed and the
/// exit code returned (2 for a 404: the user named something that is not there).
async fn read(server: &str, path: &str) -> Result<Value, ExitCode> {
    match call(&client(), server, http::Method::GET, path, None).await {
        Err(f) => {
            eprintln!("error: {}", f.message);
            Err(f.code)
        }
        Ok((200, v)) => Ok(v),
        Ok((status, v)) => {
            eprintln!("error: {}", server_error(status, &v));
            Err(if status == 404 { exit::bad_input() } else { exit::failure() })
        }
    }
}

/// `trefoil get proxies`: one line per proxy, or the raw items with `-o json|yaml`.
fn get_proxy_status(args: GetArgs) -> ExitCode {
    run_async(async move {
        let body = match read(&args.server.server, "/api/v1/status/proxies").await {
            Ok(v) => v,
            Err(code) => return code,
        };
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if args.output != Format::Table {
            print_structured(args.output, &items);
            return exit::ok();
        }
        let version = |v: &Value| v.as_u64().map_or_else(|| "-".to_string(), |n| n.to_string());
        println!("{:<24} {:<9} {:>8} {:>8}  NACK", "NAME", "CONNECTED", "ACKED", "LATEST");
        for p in &items {
            let nack = match p["nack"].as_object() {
                // The first line of the error is the one that says what; the rest is in -o json.
                Some(n) => {
                    format!("version {}: {}", version(&n["version"]), n["error"].as_str().unwrap_or("").lines().next().unwrap_or(""))
                }
                None => "-".to_string(),
            };
            let connected = if p["connected"].as_bool().unwrap_or(false) { "yes" } else { "no" };
            println!(
                "{:<24} {:<9} {:>8} {:>8}  {nack}",
                p["name"].as_str().unwrap_or(""),
                connected,
                version(&p["ackedVersion"]),
                version(&p["latestVersion"])
            );
        }
        exit::ok()
    })
}
