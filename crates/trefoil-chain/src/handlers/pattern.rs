//! Lua 5.4 string patterns: lstrlib.c's matcher ported item by item, with
//! every step charged to the run's budget.
//!
//! Why a port: Lua's matcher backtracks inside one C call, which the count
//! hook never sees, so `string.find(string.rep("a", 300), ".-.-.-.-.-.-.-.-.-.-b")`
//! ran 2.7 s past a 1 s deadline while the worker's other requests waited.
//! Here each attempt to match a pattern item at a position, each character a
//! repetition or a `%b` scans and each element of a `[set]` looked at is a
//! step; steps are paid to the [`Budget`] as instructions, so matching stops
//! at the run's bounds like any other work. Semantics are lstrlib's, down to
//! reading a NUL past the end of the pattern and of the subject (the strings
//! Lua hands to C always end with one); `strlib` compares the two on a corpus.

use super::budget::{Budget, Stop};

/// Captures a pattern may have (`LUA_MAXCAPTURES`).
pub(super) const MAXCAPTURES: usize = 32;
/// Nesting of the recursive matcher (`MAXCCALLS` in lstrlib.c): deeper is "pattern too complex".
const MAXCCALLS: u32 = 200;
/// Matching steps charged as one instruction: a step (one comparison and a
/// branch or two) costs about an eighth of an average VM instruction.
pub(super) const STEPS_PER_INSTRUCTION: u64 = 8;
/// Steps are paid in batches of this many, and once more when a call ends.
const PAY_EVERY: u64 = 1024;

const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// How long a capture is: still open, a position capture `()`, or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CapLen {
    Unfinished,
    Position,
    Len(usize),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Capture {
    pub init: usize,
    pub len: CapLen,
}

/// A capture's value: a slice of the subject, or a position (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CapValue {
    Str(usize, usize),
    Position(usize),
}

/// Why matching failed with an error rather than a no-match. The messages
/// are lstrlib's (`strlib` formats them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MatchError {
    EndsWithEscape,
    MissingBracket,
    MissingBalanceArguments,
    MissingFrontierBracket,
    /// The index as Lua prints it (`%n`).
    InvalidCaptureIndex(i32),
    InvalidPatternCapture,
    TooManyCaptures,
    TooComplex,
    UnfinishedCapture,
    /// The run's budget is spent or its deadline passed.
    Stopped(Stop),
}

/// Whether `pattern` has no magic characters, so a plain search finds the same.
pub(super) fn no_specials(pattern: &[u8]) -> bool {
    !pattern.iter().any(|b| SPECIALS.contains(b))
}

/// One match attempt's state (lstrlib's `MatchState`). Plain data only: the
/// Lua glue may raise an error, which longjmps over it, while it is alive.
pub(super) struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    pub level: usize,
    pub capture: [Capture; MAXCAPTURES],
    depth: u32,
    budget: &'a Budget,
    steps: u64,
}

impl<'a> Matcher<'a> {
    pub(super) fn new(src: &'a [u8], pat: &'a [u8], budget: &'a Budget) -> Self {
        Matcher {
            src,
            pat,
            level: 0,
            capture: [Capture { init: 0, len: CapLen::Unfinished }; MAXCAPTURES],
            depth: MAXCCALLS,
            budget,
            steps: 0,
        }
    }

    /// Forgets the captures of the previous attempt (`reprepstate`).
    pub(super) fn reset(&mut self) {
        self.level = 0;
    }

    /// Counts `n` steps of work done for this call (matching, or building a result).
    #[inline]
    pub(super) fn tick(&mut self, n: u64) -> Result<(), MatchError> {
        self.steps += n;
        if self.steps >= PAY_EVERY {
            let units = self.steps / STEPS_PER_INSTRUCTION;
            self.steps %= STEPS_PER_INSTRUCTION;
            self.budget.charge(units).map_err(MatchError::Stopped)?;
        }
        Ok(())
    }

    /// Pays the steps not paid yet, rounded up: a call that ends early still costs.
    pub(super) fn settle(&mut self) -> Result<(), MatchError> {
        let units = self.steps.div_ceil(STEPS_PER_INSTRUCTION);
        self.steps = 0;
        self.budget.charge(units).map_err(MatchError::Stopped)
    }

    /// The pattern byte at `i`, NUL past the end as in C.
    #[inline]
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    /// The subject byte at `i`, NUL past the end as in C.
    #[inline]
    fn s(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    /// Tries the pattern at each start from `init` (only there if `anchor`):
    /// the first match's start and end. `str_find_aux`'s loop.
    pub(super) fn find_from(&mut self, init: usize, anchor: bool) -> Result<Option<(usize, usize)>, MatchError> {
        let mut s1 = init;
        loop {
            self.reset();
            if let Some(e) = self.do_match(s1, 0)? {
                return Ok(Some((s1, e)));
            }
            if s1 >= self.src.len() || anchor {
                return Ok(None);
            }
            s1 += 1;
        }
    }

    /// The `i`-th capture; with no captures, capture 0 is the whole match `whole`.
    pub(super) fn get_capture(&self, i: usize, whole: Option<(usize, usize)>) -> Result<CapValue, MatchError> {
        if i >= self.level {
            return match whole {
                Some((s, e)) if i == 0 => Ok(CapValue::Str(s, e)),
                _ => Err(MatchError::InvalidCaptureIndex(i as i32 + 1)),
            };
        }
        let cap = self.capture[i];
        match cap.len {
            CapLen::Unfinished => Err(MatchError::UnfinishedCapture),
            CapLen::Position => Ok(CapValue::Position(cap.init + 1)),
            CapLen::Len(l) => Ok(CapValue::Str(cap.init, cap.init + l)),
        }
    }

    /// How many values a match yields: its captures, or the whole match when
    /// it has none and `whole` is wanted (`push_captures`).
    pub(super) fn capture_count(&self, whole: bool) -> usize {
        if self.level == 0 && whole {
            1
        } else {
            self.level
        }
    }

    /// Matches the pattern from `p` against the subject from `s`: the end of the match.
    pub(super) fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, MatchError> {
        if self.depth == 0 {
            return Err(MatchError::TooComplex);
        }
        self.depth -= 1;
        let result = self.match_here(s, p);
        self.depth += 1;
        result
    }

    fn match_here(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, MatchError> {
        // Each turn is one `goto init` of the C code (its tail calls).
        loop {
            self.tick(1)?;
            if p == self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' => {
                    return if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, CapLen::Position)
                    } else {
                        self.start_capture(s, p + 1, CapLen::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => return Ok((s == self.src.len()).then_some(s)),
                ESC => match self.p(p + 1) {
                    b'b' => match self.match_balance(s, p + 2)? {
                        Some(e) => {
                            s = e;
                            p += 4;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    b'f' => {
                        p += 2;
                        if self.p(p) != b'[' {
                            return Err(MatchError::MissingFrontierBracket);
                        }
                        let ep = self.class_end(p)?;
                        let previous = if s == 0 { 0 } else { self.s(s - 1) };
                        let current = self.s(s);
                        if !self.match_bracket_class(previous, p, ep - 1)? && self.match_bracket_class(current, p, ep - 1)? {
                            p = ep;
                            continue;
                        }
                        return Ok(None);
                    }
                    d @ b'0'..=b'9' => match self.match_capture(s, d)? {
                        Some(e) => {
                            s = e;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    _ => {}
                },
                _ => {}
            }
            // A single-character class with an optional repetition suffix.
            let ep = self.class_end(p)?;
            let suffix = self.p(ep);
            if !self.single_match(s, p, ep)? {
                if matches!(suffix, b'*' | b'?' | b'-') {
                    p = ep + 1;
                    continue;
                }
                return Ok(None);
            }
            match suffix {
                b'?' => {
                    if let Some(e) = self.do_match(s + 1, ep + 1)? {
                        return Ok(Some(e));
                    }
                    p = ep + 1;
                }
                b'+' => return self.max_expand(s + 1, p, ep),
                b'*' => return self.max_expand(s, p, ep),
                b'-' => return self.min_expand(s, p, ep),
                _ => {
                    s += 1;
                    p = ep;
                }
            }
        }
    }

    /// The end of the single-character class starting at `p`.
    fn class_end(&mut self, mut p: usize) -> Result<usize, MatchError> {
        let c = self.p(p);
        p += 1;
        match c {
            ESC => {
                if p >= self.pat.len() {
                    return Err(MatchError::EndsWithEscape);
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                // The first character is part of the set even if it is ']'.
                loop {
                    if p >= self.pat.len() {
                        return Err(MatchError::MissingBracket);
                    }
                    self.tick(1)?;
                    let c = self.pat[p];
                    p += 1;
                    if c == ESC && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        return Ok(p + 1);
                    }
                }
            }
            _ => Ok(p),
        }
    }

    /// Whether `c` is in the set `[...]` spanning `p` (its '[') to `ec` (its ']').
    fn match_bracket_class(&mut self, c: u8, mut p: usize, ec: usize) -> Result<bool, MatchError> {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return Ok(!sig);
            }
            self.tick(1)?;
            if self.p(p) == ESC {
                p += 1;
                if match_class(c, self.p(p)) {
                    return Ok(sig);
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return Ok(sig);
                }
            } else if self.p(p) == c {
                return Ok(sig);
            }
        }
    }

    /// Whether the subject character at `s` matches the class at `p..ep`.
    fn single_match(&mut self, s: usize, p: usize, ep: usize) -> Result<bool, MatchError> {
        let Some(&c) = self.src.get(s) else {
            return Ok(false);
        };
        Ok(match self.p(p) {
            b'.' => true,
            ESC => match_class(c, self.p(p + 1)),
            b'[' => self.match_bracket_class(c, p, ep - 1)?,
            pc => pc == c,
        })
    }

    /// `%bxy` at `p` (pointing at `x`): the end of a balanced run starting at `s`.
    fn match_balance(&mut self, mut s: usize, p: usize) -> Result<Option<usize>, MatchError> {
        if p + 1 >= self.pat.len() {
            return Err(MatchError::MissingBalanceArguments);
        }
        if self.s(s) != self.pat[p] {
            return Ok(None);
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        let mut depth = 1usize;
        loop {
            s += 1;
            if s >= self.src.len() {
                return Ok(None);
            }
            self.tick(1)?;
            let c = self.src[s];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
    }

    /// Greedy repetition: as many as match, then fewer until the rest matches.
    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, MatchError> {
        let mut i = 0;
        while self.single_match(s + i, p, ep)? {
            i += 1;
            self.tick(1)?;
        }
        loop {
            if let Some(e) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(e));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    /// Lazy repetition: as few as let the rest match.
    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>, MatchError> {
        loop {
            if let Some(e) = self.do_match(s, ep + 1)? {
                return Ok(Some(e));
            }
            if !self.single_match(s, p, ep)? {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: CapLen) -> Result<Option<usize>, MatchError> {
        if self.level >= MAXCAPTURES {
            return Err(MatchError::TooManyCaptures);
        }
        self.capture[self.level] = Capture { init: s, len: what };
        self.level += 1;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, MatchError> {
        let l = self.capture_to_close()?;
        self.capture[l].len = CapLen::Len(s.saturating_sub(self.capture[l].init));
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.capture[l].len = CapLen::Unfinished;
        }
        Ok(result)
    }

    fn capture_to_close(&self) -> Result<usize, MatchError> {
        (0..self.level).rev().find(|&l| self.capture[l].len == CapLen::Unfinished).ok_or(MatchError::InvalidPatternCapture)
    }

    /// A back-reference `%1`..`%9` (`digit` is the character after '%').
    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>, MatchError> {
        let l = i32::from(digit) - i32::from(b'1');
        if l < 0 || l as usize >= self.level || self.capture[l as usize].len == CapLen::Unfinished {
            return Err(MatchError::InvalidCaptureIndex(l + 1));
        }
        let cap = self.capture[l as usize];
        // A position capture's length is negative in C, so as a size it never fits.
        let CapLen::Len(len) = cap.len else {
            return Ok(None);
        };
        self.tick(1 + len as u64 / 16)?;
        if self.src.len() - s >= len && self.src[cap.init..cap.init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }
}

/// Whether `c` is in the class `%cl` (C-locale `ctype`, as the proxy never calls `setlocale`).
fn match_class(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c < 0x20 || c == 0x7f,
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace includes the vertical tab, which Rust's is_ascii_whitespace does not.
        b's' => c == b' ' || (0x09..=0x0d).contains(&c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return cl == c,
    };
    if cl.is_ascii_lowercase() {
        res
    } else {
        !res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn unbounded() -> Budget {
        Budget::new(u64::MAX, Duration::from_secs(3600))
    }

    fn find(s: &str, p: &str) -> Result<Option<(usize, usize)>, MatchError> {
        let budget = unbounded();
        let (anchor, pat) = match p.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        let mut m = Matcher::new(s.as_bytes(), pat.as_bytes(), &budget);
        m.find_from(0, anchor)
    }

    #[test]
    fn items_classes_and_anchors() {
        assert_eq!(find("hello world", "o w"), Ok(Some((4, 7))));
        assert_eq!(find("hello", "^h.l+"), Ok(Some((0, 4))));
        assert_eq!(find("hello", "^e"), Ok(None));
        assert_eq!(find("a1 b2", "%a%d$"), Ok(Some((3, 5))));
        assert_eq!(find("key = value", "(%w+)%s*=%s*(%w+)"), Ok(Some((0, 11))));
        assert_eq!(find("THE (quick) fox", "%f[%a]%a+%f[%A]"), Ok(Some((0, 3))));
        assert_eq!(find("x(a(b)c)y", "%b()"), Ok(Some((1, 8))));
        assert_eq!(find("abcabc", "(abc)%1"), Ok(Some((0, 6))));
        assert_eq!(find("a\x0bb", "%s"), Ok(Some((1, 2))), "the vertical tab is a space in C");
    }

    #[test]
    fn malformed_patterns_are_errors() {
        assert_eq!(find("a", "%"), Err(MatchError::EndsWithEscape));
        assert_eq!(find("a", "[a"), Err(MatchError::MissingBracket));
        assert_eq!(find("a", "%b"), Err(MatchError::MissingBalanceArguments));
        assert_eq!(find("a", "%fa"), Err(MatchError::MissingFrontierBracket));
        assert_eq!(find("a", "%1"), Err(MatchError::InvalidCaptureIndex(1)));
        assert_eq!(find("a", "a)"), Err(MatchError::InvalidPatternCapture));
        assert_eq!(find(&"a".repeat(300), &"a?".repeat(300)), Err(MatchError::TooComplex));
    }

    #[test]
    fn a_backtracking_pattern_stops_at_the_budget() {
        let budget = Budget::new(10_000, Duration::from_secs(3600));
        let s = "a".repeat(300);
        let mut m = Matcher::new(s.as_bytes(), b".-.-.-.-.-.-.-.-.-.-b", &budget);
        assert_eq!(m.find_from(0, false), Err(MatchError::Stopped(Stop::Instructions)));
    }
}
