//! What of an answer may be kept: every field an answer carries is bounded and cleaned here
//! before it is stored, logged or exported. Codes and ids keep `[A-Za-z0-9._-]` and 64
//! characters; messages 300 printable characters, without the gateway's echo of the string to
//! sign, query strings or anything that looks like a token.

/// Longest code or RequestId kept, characters.
pub(crate) const MAX_CODE: usize = 64;
/// Longest message kept, characters.
pub(crate) const MAX_MESSAGE: usize = 300;
/// Longest excerpt kept of a body that is not the API's JSON, characters.
const MAX_EXCERPT: usize = 120;
/// A run of token-like characters this long is taken for a secret and dropped.
const TOKEN_RUN: usize = 24;

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// An error code as it may be stored and exported: other characters become `_`, at most
/// [`MAX_CODE`] of them; `Unknown` when nothing is left.
pub(crate) fn code(raw: &str) -> String {
    let out: String = raw
        .trim()
        .chars()
        .take(MAX_CODE)
        .map(|c| if is_code_char(c) { c } else { '_' })
        .collect();
    if out.is_empty() {
        "Unknown".into()
    } else {
        out
    }
}

/// A RequestId as it may be stored: only `[A-Za-z0-9._-]`, at most [`MAX_CODE`] of them;
/// `None` when none is left.
pub(crate) fn request_id(raw: &str) -> Option<String> {
    let out: String = raw
        .trim()
        .chars()
        .filter(|c| is_code_char(*c))
        .take(MAX_CODE)
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The API's `Message`: without the gateway's echo of the string to sign (with V2 it holds
/// the STS token), scrubbed and bounded.
pub(crate) fn message(raw: &str) -> String {
    let raw = match raw.find(" server string to sign is:") {
        Some(at) => &raw[..at],
        None => raw,
    };
    bounded(&scrub(raw), MAX_MESSAGE)
}

/// A transport error's text, bounded.
pub(crate) fn transport(raw: &str) -> String {
    bounded(&scrub(raw), MAX_MESSAGE)
}

/// What is kept of a body that is not the API's JSON (a proxy's HTML page, a truncated
/// answer): its status and length, and a scrubbed excerpt of its text without markup.
pub(crate) fn foreign_body(status: u16, body: &[u8]) -> String {
    if body.is_empty() {
        return format!("HTTP {status} with an empty body");
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]);
    let excerpt = bounded(&scrub(&without_markup(&text)), MAX_EXCERPT);
    format!(
        "HTTP {status} with a {}-byte body that is not the API's JSON: {excerpt}",
        body.len()
    )
}

/// What is kept of a body that is not the API's JSON and may carry a secret: status and length.
pub(crate) fn withheld_body(status: u16, body: &[u8]) -> String {
    format!(
        "HTTP {status} with a {}-byte body that is not the API's JSON (not kept: it may carry a device secret)",
        body.len()
    )
}

/// Text with `<...>` markup dropped and white space folded.
fn without_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if in_tag => {}
            _ => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Drops what may carry a secret: a query string (from `?` to the next blank or quote), the
/// value of any `name=value` whose name says token, signature, secret, key or password, and
/// any long run of token-like characters.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().count() >= TOKEN_RUN {
            out.push('…');
        } else if let Some((name, _)) = word.split_once('=').filter(|(n, _)| secretive(n)) {
            out.push_str(name);
            out.push_str("=…");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| !n.is_whitespace()) {
            flush(&mut word, &mut out);
            out.push_str("?…");
            while chars
                .peek()
                .is_some_and(|n| !n.is_whitespace() && !matches!(n, '"' | '\'' | '<' | '>'))
            {
                chars.next();
            }
        } else if c.is_alphanumeric() || matches!(c, '+' | '/' | '=' | '%' | '_' | '-' | '.' | ':')
        {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn secretive(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "signature",
        "secret",
        "key",
        "password",
        "credential",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// At most `max` characters, control characters as spaces, `…` when cut.
fn bounded(text: &str, max: usize) -> String {
    let text = text.trim();
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_ids_keep_their_character_class_and_length() {
        assert_eq!(code("Throttling.User"), "Throttling.User");
        assert_eq!(code("Bad Code<script>"), "Bad_Code_script_");
        assert_eq!(code(&"A".repeat(10_000_000)).len(), MAX_CODE);
        assert_eq!(code(""), "Unknown");
        assert_eq!(
            request_id("E4581CCD-62AF-44D9-B5B4-D1DBDC0E****").as_deref(),
            Some("E4581CCD-62AF-44D9-B5B4-D1DBDC0E")
        );
        assert_eq!(request_id(&"9".repeat(10_000_000)).unwrap().len(), MAX_CODE);
        assert_eq!(request_id("<>"), None);
    }

    #[test]
    fn a_proxy_page_echoing_a_signed_url_keeps_no_token() {
        let token = "CAIS9AF1q6Ft5B2yfSjIr5bkEOvZn5oQ2ZWtd1XQj2cGS+5Q3Y";
        let page = format!(
            "<html><body><h1>502 Bad Gateway</h1><p>upstream failed for \
             POST /?AccessKeyId=STS.abc&SecurityToken={token}&Signature=xyz%3D HTTP/1.1</p>\
             <p>token={token}</p><p>auth secret_key=shortone</p></body></html>"
        );
        let kept = foreign_body(502, page.as_bytes());
        assert!(!kept.contains(token), "{kept}");
        assert!(!kept.contains("CAIS9AF1"), "{kept}");
        assert!(!kept.contains("shortone"), "{kept}");
        assert!(!kept.contains("Signature=xyz"), "{kept}");
        assert!(kept.starts_with("HTTP 502 with a "), "{kept}");
        assert!(kept.contains("502 Bad Gateway"), "{kept}");
        assert!(!kept.contains('<'), "{kept}");
    }

    #[test]
    fn messages_are_bounded_and_lose_the_echoed_string_to_sign() {
        let m = message("Specified signature is not matched. server string to sign is:POST&x");
        assert_eq!(m, "Specified signature is not matched.");
        let long = message(&"word ".repeat(1_000_000));
        assert!(long.chars().count() <= MAX_MESSAGE + 1);
        assert_eq!(message("line\nbreak"), "line break");
    }
}
