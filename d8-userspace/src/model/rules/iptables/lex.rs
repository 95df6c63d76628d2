//! Lexing: one `iptables-save` rule line into words, and its words into the options the model
//! reads ([`Fields`]), without allocating.
//!
//! iptables-save prints options in an order that depends on the iptables version and backend, and
//! kube-proxy's own input form differs again, so options are looked up by name, never by position:
//! [`FIELDS`] names what the model reads, and a rule keeps, for each, the byte range of its first
//! argument in the rule's text. This is its own file because it is the innermost loop of the reader
//! (a 10,000-Service dump has ~170,000 rules, each read once) and knows nothing of tables, chains
//! or kube-proxy; the table stage (`table.rs`) decides what a line is and keeps the result.

use std::borrow::Cow;
use std::net::IpAddr;

use super::super::address::is_ipv4_mapped;
pub(super) use super::super::address::odd_address;

/// The options the model reads, by name: field `i` is the first option of the rule whose name is
/// in `FIELDS[i]` (options are looked up by name, never by position), with its first argument
/// (the model reads no second one, e.g. the `dst,dst` of `--match-set NAME dst,dst`; the rule's
/// text keeps everything). A 50,000-endpoint dump has ~170,000 rules: the fields are spans of the
/// rule's text in the rule itself, so reading a rule allocates nothing.
#[cfg_attr(not(test), expect(dead_code, reason = "the table `field_mask` is tested against"))]
pub(super) const FIELDS: [&[&str]; N_FIELDS] = [
    &["-j", "--jump", "-g", "--goto"],
    &["--comment"],
    &["-p", "--protocol"],
    &["--dport", "--destination-port"],
    &["-d", "--destination"],
    &["-s", "--source"],
    &["--dst-type"],
    &["-d", "-s"],
    &["--seconds"],
    &["--probability"],
    &["--to-destination"],
    &["-d"],
    &["--match-set"],
    &["--rcheck"],
    &["--every", "--nth"],
];
const N_FIELDS: usize = 15;
/// Fields from `N_ARGS` on are read for their presence only: no argument is kept.
const N_ARGS: usize = 11;
pub(super) const TARGET: usize = 0;
pub(super) const COMMENT: usize = 1;
pub(super) const PROTO: usize = 2;
pub(super) const DPORT: usize = 3;
pub(super) const DST: usize = 4;
pub(super) const SRC: usize = 5;
pub(super) const DST_TYPE: usize = 6;
/// The first of `-d` and `-s` (the IPv6 check).
pub(super) const D_OR_S: usize = 7;
pub(super) const SECONDS: usize = 8;
pub(super) const PROBABILITY: usize = 9;
pub(super) const TO_DESTINATION: usize = 10;
/// `-d` as written (not `--destination`).
pub(super) const D_SHORT: usize = 11;
pub(super) const MATCH_SET: usize = 12;
pub(super) const RCHECK: usize = 13;
pub(super) const NTH: usize = 14;

/// The fields an option name belongs to (bit `i`: `FIELDS[i]`).
pub(super) fn field_mask(name: &str) -> u16 {
    let bits: &[usize] = match name {
        "-j" | "--jump" | "-g" | "--goto" => &[TARGET],
        "--comment" => &[COMMENT],
        "-p" | "--protocol" => &[PROTO],
        "--dport" | "--destination-port" => &[DPORT],
        "-d" => &[DST, D_OR_S, D_SHORT],
        "--destination" => &[DST],
        "-s" => &[SRC, D_OR_S],
        "--source" => &[SRC],
        "--dst-type" => &[DST_TYPE],
        "--match-set" => &[MATCH_SET],
        "--rcheck" => &[RCHECK],
        "--seconds" => &[SECONDS],
        "--probability" => &[PROBABILITY],
        "--every" | "--nth" => &[NTH],
        "--to-destination" => &[TO_DESTINATION],
        _ => &[],
    };
    bits.iter().fold(0, |m, b| m | 1 << b)
}

/// An option as [`Fields::opt`] finds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Opt<'r> {
    pub(super) negated: bool,
    pub(super) first: Option<&'r str>,
}

impl<'r> Opt<'r> {
    pub(super) fn arg(&self) -> Option<&'r str> {
        self.first
    }
}

/// No argument.
const NO_SPAN: (u32, u32) = (u32::MAX, 0);

/// The options of one rule (see [`FIELDS`]).
#[derive(Debug, Clone)]
pub(super) struct Fields {
    /// Bit `i`: the rule has field `i`.
    present: u16,
    /// Bit `i`: field `i`'s option is negated (`! -s ...`).
    negated: u16,
    /// Field `i`'s first argument: a byte range of the rule's text, or [`NO_SPAN`].
    args: [(u32, u32); N_ARGS],
    /// Arguments that unescaping changed, by field (rare: quoted words with `\"` or `\\`).
    unescaped: Option<Box<[(u8, String)]>>,
}

impl Fields {
    /// Field `f` of [`FIELDS`], its argument read from `text`, the rule's text the spans point into.
    #[inline]
    pub(super) fn opt<'r>(&'r self, text: &'r str, f: usize) -> Option<Opt<'r>> {
        if self.present & (1 << f) == 0 {
            return None;
        }
        let (start, end) = self.args.get(f).copied().unwrap_or(NO_SPAN);
        let first = if start == u32::MAX {
            None
        } else if let Some(u) = self
            .unescaped
            .as_deref()
            .and_then(|u| u.iter().find(|(i, _)| *i as usize == f))
        {
            Some(u.1.as_str())
        } else {
            text.get(start as usize..end as usize)
        };
        Some(Opt {
            negated: self.negated & (1 << f) != 0,
            first,
        })
    }

    /// The rule has field `f`.
    #[inline]
    pub(super) fn has(&self, f: usize) -> bool {
        self.present & (1 << f) != 0
    }
}

/// Words of a rule: whitespace separates, double quotes group, `\"` and `\\` escape. Yields
/// (start, end, quoted, escaped) byte ranges (a quoted word's range is inside its quotes), or an
/// error for an unterminated quote.
pub(super) struct Words<'s> {
    bytes: &'s [u8],
    i: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Word {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) quoted: bool,
    pub(super) escaped: bool,
}

impl Word {
    pub(super) fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let raw = &s[self.start..self.end];
        if self.escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        }
    }
}

impl<'s> Words<'s> {
    pub(super) fn new(s: &'s str) -> Self {
        Words {
            bytes: s.as_bytes(),
            i: 0,
        }
    }
}

impl Iterator for Words<'_> {
    type Item = Result<Word, &'static str>;
    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.bytes;
        let mut i = self.i;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            self.i = i;
            return None;
        }
        if bytes[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            let mut escaped = false;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    escaped = true;
                    j += 1;
                }
                j += 1;
            }
            if j >= bytes.len() {
                self.i = bytes.len();
                return Some(Err("unterminated quote"));
            }
            self.i = j + 1;
            Some(Ok(Word {
                start,
                end: j,
                quoted: true,
                escaped,
            }))
        } else {
            let start = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            self.i = i;
            Some(Ok(Word {
                start,
                end: i,
                quoted: false,
                escaped: false,
            }))
        }
    }
}

/// Splits a rule into words: (word, was_quoted) pairs, or an error for an unterminated quote.
#[cfg(test)]
pub(super) fn tokenize(s: &str) -> Result<Vec<(Cow<'_, str>, bool)>, &'static str> {
    Words::new(s).map(|w| w.map(|w| (w.text(s), w.quoted))).collect()
}

/// `\"` -> `"`, `\\` -> `\`; other escapes are kept as written.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An unquoted word that starts an option: `-x`/`--xx`, but not a negative number (`-1`, `-inf`).
pub(super) fn is_option_name(w: &str) -> bool {
    let b = w.as_bytes();
    if b.len() < 2 || b[0] != b'-' {
        return false;
    }
    // Only these can begin an `f64` after the sign: digits, `.`, `inf(inity)`, `nan`.
    if b[1].is_ascii_digit() || matches!(b[1], b'.' | b'i' | b'I' | b'n' | b'N') {
        return w.parse::<f64>().is_err();
    }
    true
}

/// Groups the words after `-A CHAIN` into [`Fields`]. An unquoted word starting with `-` (and
/// longer than `-`, not a number) starts an option; `!` negates the next one; the first other word
/// after an option is its argument. Errors: an unterminated quote.
pub(super) fn options(s: &str, words: &mut Words<'_>) -> Result<Fields, &'static str> {
    let mut f = Fields {
        present: 0,
        negated: 0,
        args: [NO_SPAN; N_ARGS],
        unescaped: None,
    };
    let mut unescaped: Vec<(u8, String)> = Vec::new();
    let mut negate = false;
    // The fields the current option claimed, and whether it still waits for its argument.
    let mut current: u16 = 0;
    let mut open = false;
    for w in words {
        let w = w?;
        let word = &s[w.start..w.end];
        if !w.quoted && word == "!" {
            negate = true;
        } else if !w.quoted && is_option_name(word) {
            let m = field_mask(word) & !f.present;
            f.present |= m;
            if negate {
                f.negated |= m;
            }
            current = m;
            open = true;
            negate = false;
        } else if open {
            open = false;
            let mut m = current;
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                if i >= N_ARGS {
                    continue;
                }
                f.args[i] = (w.start as u32, w.end as u32);
                if w.escaped {
                    unescaped.push((i as u8, unescape(word)));
                }
            }
        }
    }
    if !unescaped.is_empty() {
        f.unescaped = Some(unescaped.into_boxed_slice());
    }
    Ok(f)
}

/// `10.0.0.1`, `10.0.0.1/32`, `fd00::1/128` -> the address. An IPv4-mapped IPv6 address
/// (`::ffff:10.0.0.1`) is none: kube-proxy writes IPv4 addresses in IPv4 rules only.
pub(super) fn host_ip(s: &str) -> Option<IpAddr> {
    let ip = match s.split_once('/') {
        None => s.parse().ok()?,
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(ip)?
        }
    };
    (!is_ipv4_mapped(ip)).then_some(ip)
}

/// `10.0.0.1:80`, `[fd00::1]:80` -> (address, port); not a zone-scoped (`[fe80::1%eth0]:80`) or
/// IPv4-mapped one.
pub(super) fn host_port(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
    let ip: IpAddr = ip.parse().ok()?;
    (!is_ipv4_mapped(ip)).then_some((ip, port.parse().ok()?))
}
