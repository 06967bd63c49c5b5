//! Pattern-based detection of personal data in text, with the entity names Microsoft Presidio
//! uses (so results compare kind by kind): `EMAIL_ADDRESS`, `PHONE_NUMBER`, `CREDIT_CARD`
//! (Luhn-checked), `IBAN_CODE` (mod-97-checked), `US_SSN` and `IP_ADDRESS` (v4 and v6).
//!
//! Detection is pure and allocation-light: [`find`] returns the spans, [`mask`] replaces them
//! with typed placeholders (`<EMAIL_ADDRESS>`). Spans never overlap: when two kinds match the
//! same characters, the checked kinds (card, IBAN, SSN) win over phone numbers.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::OnceLock;

use regex::Regex;

/// A kind of personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    /// An e-mail address.
    Email,
    /// A payment card number that passes the Luhn check.
    CreditCard,
    /// An IBAN whose check digits pass mod 97.
    Iban,
    /// A US social security number (dashed or spaced, valid area and group).
    UsSsn,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// A phone number (7 to 15 digits, international or North American form).
    Phone,
    /// Not personal data: marks a refused keyword among the findings of a streamed answer.
    Keyword,
}

impl PiiKind {
    /// Presidio's name of the kind, used in placeholders and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "EMAIL_ADDRESS",
            Self::CreditCard => "CREDIT_CARD",
            Self::Iban => "IBAN_CODE",
            Self::UsSsn => "US_SSN",
            Self::IpAddress => "IP_ADDRESS",
            Self::Phone => "PHONE_NUMBER",
            Self::Keyword => "KEYWORD",
        }
    }
}

/// One finding: a kind and its byte range in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// What was found.
    pub kind: PiiKind,
    /// Byte offset of its start.
    pub start: usize,
    /// Byte offset past its end.
    pub end: usize,
}

struct Patterns {
    email: Regex,
    card: Regex,
    iban: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
}

fn patterns() -> &'static Patterns {
    static PATTERNS: OnceLock<Patterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("a valid built-in pattern");
        Patterns {
            email: re(r"(?i)\b[a-z0-9._%+\-]+@(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}\b"),
            // The ways cards are written: one run of digits, groups of four, or Amex's 4-6-5.
            card: re(concat!(
                r"\b(?:\d{13,19}",
                r"|\d{4}(?:[ \-]\d{4}){2,3}(?:[ \-]\d{1,3})?",
                r"|\d{4}[ \-]\d{6}[ \-]\d{4,5})\b",
            )),
            iban: re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
            ssn: re(r"\b(\d{3})([ \-])(\d{2})[ \-](\d{4})\b"),
            ipv4: re(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"),
            ipv6: re(r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}"),
            // International (+CC …), North American ((212) 555-0173, 212-555-0173) and
            // national trunk forms (020 7946 0958).
            phone: re(concat!(
                r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?)(?:[ .\-]?\d{2,4}){1,4}\b",
                r"|(?:\(\d{3}\) ?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4}\b",
                r"|\b0\d{1,4}[ .\-]\d{3,4}[ .\-]?\d{3,4}\b",
            )),
        }
    })
}

/// Whether the digits of `text` pass the Luhn check.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut d = u32::from(*d);
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Whether `iban` (letters and digits, no spaces) passes the ISO 13616 mod-97 check.
pub fn iban_valid(iban: &[u8]) -> bool {
    if !(15..=34).contains(&iban.len()) {
        return false;
    }
    let rotated = iban[4..].iter().chain(&iban[..4]);
    let mut remainder = 0u32;
    for &c in rotated {
        let value = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn digits(text: &str) -> Vec<u8> {
    text.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// Every finding in `text`, in order, none overlapping.
pub fn find(text: &str) -> Vec<Span> {
    let p = patterns();
    // Spans by start: a new one is kept only if it overlaps neither neighbour (O(log n) each,
    // so a body full of findings stays linear-ish).
    let mut found: BTreeMap<usize, Span> = BTreeMap::new();
    let mut add = |kind: PiiKind, start: usize, end: usize| {
        let before = found
            .range(..end)
            .next_back()
            .is_some_and(|(_, s)| s.end > start);
        if !before {
            found.insert(start, Span { kind, start, end });
        }
    };
    // The checked kinds first: they win a contested span (an IBAN's digits over a card's).
    for m in p.email.find_iter(text) {
        add(PiiKind::Email, m.start(), m.end());
    }
    for m in p.iban.find_iter(text) {
        let compact: Vec<u8> = m.as_str().bytes().filter(|b| *b != b' ').collect();
        if iban_valid(&compact) {
            add(PiiKind::Iban, m.start(), m.end());
        }
    }
    for m in p.card.find_iter(text) {
        let d = digits(m.as_str());
        if (13..=19).contains(&d.len()) && luhn(&d) {
            add(PiiKind::CreditCard, m.start(), m.end());
        }
    }
    for c in p.ssn.captures_iter(text) {
        let (area, group, serial) = (&c[1], &c[3], &c[4]);
        let valid = area != "000"
            && area != "666"
            && !area.starts_with('9')
            && group != "00"
            && serial != "0000";
        if valid && let Some(m) = c.get(0) {
            add(PiiKind::UsSsn, m.start(), m.end());
        }
    }
    for m in p.ipv4.find_iter(text) {
        add(PiiKind::IpAddress, m.start(), m.end());
    }
    for m in p.ipv6.find_iter(text) {
        let candidate = m.as_str().trim_end_matches(':');
        if candidate.matches(':').count() >= 2 && candidate.parse::<Ipv6Addr>().is_ok() {
            add(PiiKind::IpAddress, m.start(), m.start() + candidate.len());
        }
    }
    for m in p.phone.find_iter(text) {
        let n = digits(m.as_str()).len();
        let start_ok = m.start() == 0
            || !text[..m.start()].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '.');
        if (7..=15).contains(&n) && start_ok {
            add(PiiKind::Phone, m.start(), m.end());
        }
    }
    found.into_values().collect()
}

/// `text` with every finding replaced by `<KIND>`; `None` when nothing was found.
pub fn mask(text: &str, spans: &[Span]) -> Option<String> {
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push('<');
        out.push_str(span.kind.name());
        out.push('>');
        at = span.end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        find(text).iter().map(|s| s.kind.name()).collect()
    }

    #[test]
    fn each_kind_is_found_and_checked() {
        assert_eq!(
            kinds("write to jane.doe@example.co.uk today"),
            ["EMAIL_ADDRESS"]
        );
        assert_eq!(kinds("card 4111 1111 1111 1111 please"), ["CREDIT_CARD"]);
        assert_eq!(kinds("card 4111 1111 1111 1112 please"), Vec::<&str>::new());
        assert_eq!(kinds("amex 3782 822463 10005"), ["CREDIT_CARD"]);
        assert_eq!(
            kinds("ISBN 978-1-88-786619-8"),
            Vec::<&str>::new(),
            "Luhn-valid by chance"
        );
        assert_eq!(
            kinds("IBAN DE77 9410 9543 8846 4941 05"),
            ["IBAN_CODE"],
            "not a card"
        );
        assert_eq!(
            kinds("IBAN GB82 WEST 1234 5698 7654 32"),
            ["IBAN_CODE"],
            "not a card"
        );
        assert_eq!(kinds("IBAN DE89 3704 0044 0532 0130 00."), ["IBAN_CODE"]);
        assert!(!kinds("IBAN DE88 3704 0044 0532 0130 00.").contains(&"IBAN_CODE"));
        assert_eq!(kinds("ssn 078-05-1120"), ["US_SSN"]);
        assert_eq!(kinds("ssn 666-05-1120"), Vec::<&str>::new());
        assert_eq!(
            kinds("from 192.168.10.254 and 2001:db8::8a2e:370:7334"),
            ["IP_ADDRESS", "IP_ADDRESS"]
        );
        assert_eq!(
            kinds("call +44 20 7946 0958 or (212) 555-0173"),
            ["PHONE_NUMBER", "PHONE_NUMBER"]
        );
        assert_eq!(
            kinds("version 1.2.3, 42 apples, order 123456789"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn masks_are_typed_placeholders() {
        let text = "mail a@b.io, card 4111-1111-1111-1111";
        assert_eq!(
            mask(text, &find(text)).as_deref(),
            Some("mail <EMAIL_ADDRESS>, card <CREDIT_CARD>")
        );
        assert_eq!(mask("nothing here", &find("nothing here")), None);
    }

    #[test]
    fn checks_follow_their_standards() {
        assert!(luhn(&digits("79927398713")));
        assert!(!luhn(&digits("79927398710")));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(!iban_valid(b"GB82WEST12345698765431"));
    }
}
