//! The runtime's calls to the control plane go through trefoil-api's one
//! client; this is how the runtime configures it and words its refusals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trefoil_api::{ApiError, Client};

/// One call may take this long before it counts as failed (and is retried
/// when retrying can help).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the control plane the runtime started at `api`, showing it `token`.
pub fn client(api: SocketAddr, token: &str) -> Client {
    Client::for_addr(api).with_timeout(CALL_TIMEOUT).with_token(Some(token))
}

/// The admin token the control plane writes in its data directory on
/// start (`trefoil control`: `<data>/admin.token`); the runtime's own calls
/// and the CLI's context use it.
pub fn admin_token_file(state: &Path) -> PathBuf {
    state.join("data").join("admin.token")
}

/// The datapath agent's token file: a viewer token `up` mints for it on each
/// start, handed over by path (`TREFOIL_TOKEN_FILE`) so no secret is on a
/// command line where `ps` shows it.
pub fn agent_token_file(state: &Path) -> PathBuf {
    state.join("datapath.token")
}

/// A failed write as the runtime reports it: the status and the API's
/// error with each refused field on one line.
pub fn refusal(e: &ApiError) -> String {
    match e {
        ApiError::Status { status, body, .. } => format!("{status}: {}", body.one_line()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use trefoil_api::ErrorBody;

    use super::*;

    #[test]
    fn a_refusal_names_the_status_and_each_field() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":"invalid resource","errors":[{"file":"request body","line":4,"column":3,"field":"spec.port","message":"not a port"}]}"#,
        )
        .unwrap();
        let e = ApiError::Status { base: "http://127.0.0.1:1".into(), request: "PUT /api/v1/Workload/web".into(), status: 422, body };
        assert_eq!(refusal(&e), "422: invalid resource; spec.port: not a port");
        assert!(!e.is_transient());
    }
}
