//! Reading the processes' log files for `trefoil logs`.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `follow` looks for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The directory of process logs in a state directory.
pub fn dir(state: &Path) -> PathBuf {
    state.join("logs")
}

/// The log file of process `name`.
pub fn path(state: &Path, name: &str) -> PathBuf {
    dir(state).join(format!("{name}.log"))
}

/// Every process name with a log: those in `up.json` and those with a file
/// (a process of an earlier run may have left one).
pub fn known_names(state: &Path) -> Vec<String> {
    let mut names: BTreeSet<String> = crate::view::read(state).map(|v| v.processes.into_keys().collect()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir(state)) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "log") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    names.insert(stem.to_string());
                }
            }
        }
    }
    names.into_iter().collect()
}

/// The last `lines` lines of `text` (all of it when `None`).
pub fn tail(text: &[u8], lines: Option<usize>) -> &[u8] {
    let Some(n) = lines else { return text };
    if n == 0 {
        return &text[text.len()..];
    }
    // A final newline ends the last line; it does not start another.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// Writes the file's last `lines` lines (all when `None`) to `out`; with
/// `follow`, keeps writing what is appended until `out` fails. A log that
/// shrank (rotated or cleared) is read again from its start.
pub fn print(file: &Path, lines: Option<usize>, follow: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let mut f = std::fs::File::open(file)?;
    let mut text = Vec::new();
    f.read_to_end(&mut text)?;
    out.write_all(tail(&text, lines))?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut offset = text.len() as u64;
    let mut buf = Vec::new();
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(offset);
        if len < offset {
            offset = 0;
        }
        if len == offset {
            continue;
        }
        f = std::fs::File::open(file)?;
        f.seek(SeekFrom::Start(offset))?;
        buf.clear();
        f.read_to_end(&mut buf)?;
        offset += buf.len() as u64;
        out.write_all(&buf)?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_lines() {
        let text = b"a\nb\nc\n";
        assert_eq!(tail(text, Some(2)), b"b\nc\n");
        assert_eq!(tail(text, Some(3)), b"a\nb\nc\n");
        assert_eq!(tail(text, Some(10)), b"a\nb\nc\n");
        assert_eq!(tail(text, Some(0)), b"");
        assert_eq!(tail(text, None), text);
        assert_eq!(tail(b"a\nb", Some(1)), b"b");
    }
}
