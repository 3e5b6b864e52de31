//! `--help` texts that state limits and defaults without copying them.
//!
//! argh takes a command's description from its doc comment, a string
//! literal, so a number cannot be formatted into it. The doc comments say
//! `{PEER_MAX_PER_IP}` instead, and [`fill`] replaces each such placeholder
//! with the value of the constant of that name in [`crate::limits`] before
//! the text is printed. A test renders every help text and checks that
//! each placeholder is known and shows its constant's value.
//!
//! Owns: the table of placeholders. Calls `limits` only.

use std::time::Duration;

use crate::limits;

/// Every placeholder a help text may use, with the text it stands for.
pub fn placeholders() -> Vec<(&'static str, String)> {
    vec![
        (
            "PEER_MAX_CONNECTIONS",
            limits::PEER_MAX_CONNECTIONS.to_string(),
        ),
        ("PEER_MAX_PER_IP", limits::PEER_MAX_PER_IP.to_string()),
        ("PEER_IDLE_TIMEOUT", secs(limits::PEER_IDLE_TIMEOUT)),
        ("HELLO_TIMEOUT", secs(limits::HELLO_TIMEOUT)),
        ("KEEPALIVE_INTERVAL", secs(limits::KEEPALIVE_INTERVAL)),
        ("TRACKER_IDLE_TIMEOUT", secs(limits::TRACKER_IDLE_TIMEOUT)),
        (
            "TRACKER_IDLE_TIMEOUT_SECS",
            limits::TRACKER_IDLE_TIMEOUT.as_secs().to_string(),
        ),
        (
            "TRACKER_MAX_CONNECTIONS",
            limits::TRACKER_MAX_CONNECTIONS.to_string(),
        ),
        ("TRACKER_MAX_PER_IP", limits::TRACKER_MAX_PER_IP.to_string()),
        (
            "DEFAULT_TRACKER_PORT",
            limits::DEFAULT_TRACKER_PORT.to_string(),
        ),
        (
            "DEFAULT_DASHBOARD_PORT",
            limits::DEFAULT_DASHBOARD_PORT.to_string(),
        ),
        ("DEFAULT_CHUNK_SIZE", size(limits::DEFAULT_CHUNK_SIZE)),
        ("MIN_CHUNK_SIZE", size(limits::MIN_CHUNK_SIZE)),
        ("MAX_CHUNK_SIZE", size(limits::MAX_CHUNK_SIZE)),
        ("PIPELINE_DEPTH", limits::PIPELINE_DEPTH.to_string()),
        ("WHERE_MAP_WIDTH", limits::WHERE_MAP_WIDTH.to_string()),
    ]
}

/// "10 s", or "1.5 s" for a part second.
pub fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A size as the options take it: "16M", "1K", or bytes.
pub fn size(bytes: u32) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

/// `text` with every `{NAME}` replaced by its value, or the names that
/// have none. A brace not followed by an upper-case name and `}` is text.
/// argh doubles the braces of a subcommand's description in the list of
/// commands, so `{{NAME}}` is replaced too.
pub fn try_fill(text: &str) -> Result<String, Vec<String>> {
    let (out, unknown) = fill_parts(text);
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(unknown)
    }
}

/// The text with the known placeholders filled, and the unknown names.
fn fill_parts(text: &str) -> (String, Vec<String>) {
    let table = placeholders();
    let mut out = String::with_capacity(text.len());
    let mut unknown = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let doubled = rest[i..].starts_with("{{");
        let open = if doubled { 2 } else { 1 };
        let after = &rest[i + open..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let close = if doubled { "}}" } else { "}" };
        if name_len == 0 || !after[name_len..].starts_with(close) {
            out.push_str(&rest[i..i + open]);
            rest = after;
            continue;
        }
        let name = &after[..name_len];
        match table.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                unknown.push(name.to_owned());
                out.push_str(&rest[i..i + open + name_len + close.len()]);
            }
        }
        rest = &after[name_len + close.len()..];
    }
    out.push_str(rest);
    (out, unknown)
}

/// `text` with every known `{NAME}` replaced by its value and everything
/// else (other braces, unknown names) left as it is: for texts that are
/// not only help, like a completion script.
pub fn fill_known(text: &str) -> String {
    fill_parts(text).0
}

/// [`try_fill`], leaving an unknown placeholder as it is (the unit test
/// makes sure there is none), then [`rewrap`]: argh wrapped the text with
/// the placeholders' lengths.
pub fn fill(text: &str) -> String {
    rewrap(&try_fill(text).unwrap_or_else(|_| text.to_owned()))
}

/// Column where argh starts the description of an option or command.
const DESCRIPTION_COLUMN: usize = 20;
/// Width argh wraps descriptions at.
const WRAP_WIDTH: usize = 80;

/// Wraps again, as argh does, every description that starts at
/// `DESCRIPTION_COLUMN` and continues on lines indented that far.
pub fn rewrap(text: &str) -> String {
    let indent = " ".repeat(DESCRIPTION_COLUMN);
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let Some((head, desc)) = split_description(lines[i]) else {
            out.push(lines[i].to_owned());
            i += 1;
            continue;
        };
        let mut words: Vec<&str> = desc.split(' ').filter(|w| !w.is_empty()).collect();
        i += 1;
        while i < lines.len() && is_continuation(lines[i]) {
            words.extend(lines[i].split(' ').filter(|w| !w.is_empty()));
            i += 1;
        }
        let mut line = head.to_owned();
        let mut empty = true;
        for w in words {
            if !empty && line.chars().count() + 1 + w.chars().count() > WRAP_WIDTH {
                out.push(std::mem::replace(&mut line, indent.clone()));
                empty = true;
            }
            if !empty {
                line.push(' ');
            }
            line.push_str(w);
            empty = false;
        }
        out.push(line);
    }
    out.join("\n")
}

/// An argh entry line ("  --name   description") or a continuation line,
/// split into the part before the description column and the description.
fn split_description(line: &str) -> Option<(&str, &str)> {
    let (head, desc) = line.split_at_checked(DESCRIPTION_COLUMN)?;
    let entry = head.starts_with("  ") && !head[2..].starts_with(' ') && head.ends_with(' ');
    let ok = (entry || head.trim().is_empty()) && !desc.is_empty() && !desc.starts_with(' ');
    ok.then_some((head, desc))
}

fn is_continuation(line: &str) -> bool {
    line.split_at_checked(DESCRIPTION_COLUMN)
        .is_some_and(|(h, d)| h.trim().is_empty() && !d.is_empty() && !d.starts_with(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_unknown_ones_reported() {
        assert_eq!(
            try_fill("at most {PEER_MAX_PER_IP} from one address, {HELLO_TIMEOUT}").unwrap(),
            format!(
                "at most {} from one address, {} s",
                limits::PEER_MAX_PER_IP,
                limits::HELLO_TIMEOUT.as_secs()
            )
        );
        assert_eq!(try_fill("{} {x} {A b}").unwrap(), "{} {x} {A b}");
        assert_eq!(
            try_fill("{NOPE} and {ALSO}"),
            Err(vec!["NOPE".into(), "ALSO".into()])
        );
        assert_eq!(fill("{NOPE}"), "{NOPE}");
        assert_eq!(
            try_fill("{{PEER_MAX_PER_IP}} {{x}}").unwrap(),
            format!("{} {{{{x}}}}", limits::PEER_MAX_PER_IP)
        );
    }

    #[test]
    fn descriptions_are_wrapped_again_as_argh_does() {
        let pad = |s: &str| format!("{s:<20}");
        let text = format!(
            "Options:\n{}requests kept in flight per source (default\n{}4)\n{}short\nEnd.",
            pad("  --pipeline"),
            pad(""),
            pad("  -v, --verbose")
        );
        assert_eq!(
            rewrap(&text),
            format!(
                "Options:\n{}requests kept in flight per source (default 4)\n{}short\nEnd.",
                pad("  --pipeline"),
                pad("  -v, --verbose")
            )
        );
        let long = format!("{}{}", pad("  --x"), ["word"; 30].join(" "));
        for l in rewrap(&long).lines() {
            assert!(l.len() <= 80, "{l}");
            assert!(l.starts_with(&pad("")) || l.starts_with("  --x"), "{l}");
        }
    }

    #[test]
    fn sizes_and_durations_read_as_the_options_take_them() {
        assert_eq!(size(1 << 20), "1M");
        assert_eq!(size(16 << 20), "16M");
        assert_eq!(size(1024), "1K");
        assert_eq!(size(1500), "1500");
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(1500)), "1.5 s");
    }
}
