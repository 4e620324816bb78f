//! Many requests from a real client: curl on one keep-alive connection,
//! for splits and counts that need hundreds of requests quickly.

use std::process::Command;
use std::time::Duration;

use crate::process::run_with_timeout;

/// Sends `n` GETs over one keep-alive curl and returns (status, x-served-by) per request.
pub fn curl_many(url: &str, n: usize, extra: &[&str]) -> Vec<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code} %header{x-served-by}\\n"]).args(extra);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (code, who) = l.split_once(' ').unwrap_or((l, ""));
            Some((code.parse().ok()?, who.trim().to_string()))
        })
        .collect()
}

/// How many of `results` satisfy `pred`.
pub fn count(results: &[(u16, String)], pred: impl Fn(&(u16, String)) -> bool) -> usize {
    results.iter().filter(|r| pred(r)).count()
}
