//! An external CA as a plug-in (`trefoil control --ca-external-command
//! PATH --ca-bundle FILE`): for each certificate the control plane runs the
//! operator's command (no shell) with the CSR in PEM on its stdin and what
//! to sign in the environment, and reads the chain (leaf first) from its
//! stdout. Time and output are bounded, and what comes back is verified
//! before a proxy sees it: the CSR's key, exactly the names asked for, not
//! a CA, valid now for a bounded life, and a chain to the trust bundle.
//! Anything else refuses the request, naming the command; nothing is issued.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::authority::{IssueError, MAX_LIFETIME, MIN_LIFETIME};

/// How long the command may take to answer one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A chain of a few certificates is a few KiB; more than this is refused.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// What of the command's stderr is kept for the error message.
const MAX_STDERR_BYTES: usize = 4 * 1024;
/// Certificates in an answer, at most (leaf and intermediates).
const MAX_CHAIN: usize = 8;
/// Intermediates remembered to check renewals against, at most.
const MAX_SEEN: usize = 16;
/// A leaf may start this far in the future (clocks a little ahead of ours).
const SKEW: Duration = Duration::from_secs(300);

/// The operator's signing command and the roots its chains must end at.
pub struct ExternalCommand {
    pub command: PathBuf,
    pub timeout: Duration,
    /// The roots of `--ca-bundle`, DER.
    roots: Vec<Vec<u8>>,
    /// Intermediates the command returned: renewals presenting a leaf they signed are ours.
    seen: Mutex<Vec<Vec<u8>>>,
}

/// What the command is asked to sign.
pub struct Request<'a> {
    pub csr_der: &'a [u8],
    pub spiffe_id: &'a str,
    pub trust_domain: &'a str,
    pub lifetime: Duration,
    /// The subject alternative names, in openssl's syntax (`URI:…`, `DNS:…`, `IP:…`);
    /// the leaf must carry exactly these.
    pub names: &'a [String],
}

/// A verified answer: the chain in PEM (leaf first) and the leaf's validity.
pub struct Signed {
    pub chain_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Why the command cannot be used at start; names the path.
pub fn check_command(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{}: not executable (chmod +x it)", path.display()));
    }
    Ok(())
}

impl ExternalCommand {
    /// The command at `command` (checked: an executable file), whose chains must end at a root in `roots` (DER).
    pub fn new(command: PathBuf, roots: Vec<Vec<u8>>) -> Result<Self, String> {
        check_command(&command)?;
        if roots.is_empty() {
            return Err("the trust bundle holds no certificate".into());
        }
        Ok(ExternalCommand { command, timeout: DEFAULT_TIMEOUT, roots, seen: Mutex::new(Vec::new()) })
    }

    /// The certificates a leaf this command issued may be signed by: the roots and the intermediates seen.
    pub fn signers(&self) -> Vec<Vec<u8>> {
        let mut all = self.roots.clone();
        all.extend(self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
        all
    }

    fn refuse(&self, message: impl std::fmt::Display) -> IssueError {
        IssueError::Sign(format!("the external CA command {}: {message}", self.command.display()))
    }

    /// Runs the command for `request` and verifies its answer.
    pub fn sign(&self, request: &Request<'_>, now: SystemTime) -> Result<Signed, IssueError> {
        let output = self.run(request)?;
        let text = String::from_utf8(output).map_err(|_| self.refuse("printed something that is not text, not a PEM chain"))?;
        let chain: Vec<Vec<u8>> = rustls_pemfile::certs(&mut text.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| self.refuse(format!("printed something that is not a PEM chain: {e}")))?;
        if chain.is_empty() {
            return Err(self.refuse("printed no CERTIFICATE block"));
        }
        if chain.len() > MAX_CHAIN {
            return Err(self.refuse(format!("printed {} certificates; a chain has at most {MAX_CHAIN}", chain.len())));
        }
        let (not_before, not_after) = self.verify(&chain, request, now)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for der in &chain[1..] {
            if !seen.contains(der) && !self.roots.contains(der) {
                if seen.len() >= MAX_SEEN {
                    seen.remove(0);
                }
                seen.push(der.clone());
            }
        }
        let chain_pem = chain.iter().filter(|der| !self.roots.contains(der)).map(|der| super::operator::pem_of(der)).collect();
        Ok(Signed { chain_pem, not_before, not_after })
    }

    /// The command's stdout, within the time and size bounds and on a zero exit.
    fn run(&self, request: &Request<'_>) -> Result<Vec<u8>, IssueError> {
        let csr_pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}-----END CERTIFICATE REQUEST-----\n",
            super::operator::base64_lines(request.csr_der)
        );
        let mut child = Command::new(&self.command)
            .env("TREFOIL_SPIFFE_ID", request.spiffe_id)
            .env("TREFOIL_LIFETIME_SECONDS", request.lifetime.as_secs().to_string())
            .env("TREFOIL_TRUST_DOMAIN", request.trust_domain)
            .env("TREFOIL_SUBJECT_ALT_NAMES", request.names.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.refuse(format!("cannot start: {e}")))?;
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        std::thread::spawn(move || {
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(csr_pem.as_bytes());
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_err = std::thread::spawn(move || {
                if let Some(e) = stderr {
                    let _ = e.take(MAX_STDERR_BYTES as u64).read_to_end(&mut err);
                }
                err
            });
            if let Some(o) = stdout {
                let _ = o.take(MAX_OUTPUT_BYTES as u64 + 1).read_to_end(&mut out);
            }
            let err = read_err.join().unwrap_or_default();
            let _ = tx.send((out, err));
        });
        let deadline = Instant::now() + self.timeout;
        let timed_out = || self.refuse(format!("gave no answer within {}", humantime::format_duration(self.timeout)));
        let Ok((out, err)) = rx.recv_timeout(self.timeout) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        };
        if out.len() > MAX_OUTPUT_BYTES {
            let _ = child.kill();
            let _ = child.wait();
            return Err(self.refuse(format!("printed more than {} KiB; a certificate chain is a few KiB", MAX_OUTPUT_BYTES / 1024)));
        }
        // Its output is closed; it has until the deadline to exit.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(timed_out());
                }
            }
        };
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let err = err.trim();
            return Err(self.refuse(format!("{status}{}", if err.is_empty() { String::new() } else { format!(": {err}") })));
        }
        Ok(out)
    }

    /// The leaf's validity, once `chain` is shown to be what `request` asked for.
    fn verify(&self, chain: &[Vec<u8>], request: &Request<'_>, now: SystemTime) -> Result<(SystemTime, SystemTime), IssueError> {
        let mut parsed: Vec<X509Certificate<'_>> = Vec::new();
        for (i, der) in chain.iter().enumerate() {
            let (_, cert) =
                x509_parser::parse_x509_certificate(der).map_err(|e| self.refuse(format!("certificate {} does not parse: {e}", i + 1)))?;
            parsed.push(cert);
        }
        let leaf = &parsed[0];
        let (_, csr) =
            <x509_parser::certification_request::X509CertificationRequest<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(
                request.csr_der,
            )
            .map_err(|e| IssueError::Malformed(e.to_string()))?;
        if leaf.public_key().raw != csr.certification_request_info.subject_pki.raw {
            return Err(self.refuse("returned a certificate for another key than the CSR's"));
        }
        let mut names: Vec<String> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.iter().map(openssl_name).collect())
            .unwrap_or_default();
        let mut asked: Vec<String> = request.names.to_vec();
        names.sort();
        asked.sort();
        if names != asked {
            return Err(self.refuse(format!("returned a certificate naming [{}], not [{}]", names.join(", "), asked.join(", "))));
        }
        if leaf.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
            return Err(self.refuse("returned a CA certificate; an SVID is not a CA"));
        }
        let time = |t: x509_parser::time::ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
        let not_before = time(leaf.validity().not_before);
        let not_after = time(leaf.validity().not_after);
        if not_before > now + SKEW || not_after < now + MIN_LIFETIME {
            return Err(self.refuse(format!(
                "returned a certificate valid {} to {}, not now",
                humantime::format_rfc3339_seconds(not_before),
                humantime::format_rfc3339_seconds(not_after)
            )));
        }
        if not_after > now + MAX_LIFETIME + SKEW {
            return Err(self.refuse("returned a certificate living longer than 30 days"));
        }
        // Each certificate signed by the next, the last by a root of the bundle.
        for (i, pair) in parsed.windows(2).enumerate() {
            let issuer = &pair[1];
            if !issuer.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
                return Err(self.refuse(format!("certificate {} of the chain is not a CA", i + 2)));
            }
            if !issuer.validity().is_valid() {
                return Err(self.refuse(format!("certificate {} of the chain is not valid now", i + 2)));
            }
            pair[0]
                .verify_signature(Some(issuer.public_key()))
                .map_err(|_| self.refuse(format!("certificate {} is not signed by certificate {}", i + 1, i + 2)))?;
        }
        let last = parsed.last().unwrap_or(leaf);
        let anchored = self.roots.iter().any(|root| {
            x509_parser::parse_x509_certificate(root).is_ok_and(|(_, root)| last.verify_signature(Some(root.public_key())).is_ok())
        });
        if !anchored {
            return Err(self.refuse("returned a chain that does not verify to the trust bundle (--ca-bundle)"));
        }
        Ok((not_before, not_after))
    }
}

/// A subject alternative name in openssl's syntax.
fn openssl_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
            16 => format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
            _ => "IP:?".to_string(),
        },
        other => format!("{other}"),
    }
}

/// The flags of an external CA: `--ca-external-command PATH --ca-bundle FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCa {
    pub command: PathBuf,
    /// The roots the command's chains end at: the trust bundle proxies are sent.
    pub bundle: PathBuf,
}

/// The authority of `flags`, checked: the command an executable file, the bundle a PEM file of certificates.
pub fn load(flags: &ExternalCa, trust_domain: super::TrustDomain) -> Result<super::Authority, super::OperatorCaError> {
    let roots = super::operator::certificates(&flags.bundle)?;
    let command = ExternalCommand::new(flags.command.clone(), roots.clone())
        .map_err(|message| super::operator::refuse(Path::new("--ca-external-command"), message))?;
    let bundle_pem: String = roots.iter().map(|der| super::operator::pem_of(der)).collect();
    tracing::info!(command = %flags.command.display(), bundle = %flags.bundle.display(), "an external command signs SVIDs");
    Ok(super::Authority::external(trust_domain, command, bundle_pem))
}
