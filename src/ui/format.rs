//! Text shared by every command: sizes, rates, chunk maps, the files of the
//! network, a download's summary, and the lines a tracker-session event is
//! worth. Pure functions from engine types to strings, so the one-shot
//! commands and the prompt read the same and are tested without I/O.
//!
//! Owns nothing. Calls `peer` (types), `wire` (types), `chunks` and
//! `limits`.

use std::net::SocketAddr;

use crate::chunks::Bitmap;
use crate::peer::client::FileDescription;
use crate::peer::download::Summary;
use crate::peer::session::SessionEvent;
use crate::peer::watch::WatchEvent;
use crate::wire::{FileSummary, Locations};

/// "12.3 MiB" style sizes (powers of 1024). Never four digits before the
/// point: from 1000 of a unit on, the next unit is used ("0.98 GiB", not
/// "1001.0 MiB"), with two decimals below 1.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    // 999.95 would print as "1000.0".
    while v >= 999.95 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else if v < 0.995 {
        format!("{v:.2} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A count with thousands separated: "2,001".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    s
}

/// "1 chunk", "2,001 chunks": a count and a noun, plural when it is not 1.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", count(n))
    }
}

/// "5.1 MiB/s": `bytes` over `secs` (at least a millisecond, so a very
/// quick transfer does not divide by zero).
pub fn rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", human(bytes as f64 / secs.max(1e-3)))
}

/// A rough duration for messages: "42 s", "3 min", "29 h", "12 days".
pub fn duration(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.0} h", s / 3600.0),
        s => format!("{:.0} days", s / 86_400.0),
    }
}

/// What the peer says about its upload limit at start: the limit, and a
/// warning when one chunk of `chunk_size` bytes would take longer than
/// [`crate::limits::SLOW_CHUNK_WARNING`] to send at it.
pub fn upload_limit_lines(limit: Option<u64>, chunk_size: u32) -> (String, Option<String>) {
    let Some(rate_bps) = limit.filter(|&r| r > 0) else {
        return ("uploads: unlimited".into(), None);
    };
    let line = format!(
        "uploads: limited to {}/s for all peers together",
        human(rate_bps as f64)
    );
    let secs = f64::from(chunk_size) / rate_bps as f64;
    let slow = (secs > crate::limits::SLOW_CHUNK_WARNING.as_secs_f64()).then(|| {
        format!(
            "warning: at {}/s one {} chunk takes {} to send; the limit is in bytes per \
             second (500K, 10M, 1G)",
            human(rate_bps as f64),
            human(f64::from(chunk_size)),
            duration(secs)
        )
    });
    (line, slow)
}

/// What the peer says about its download limit at start (nothing when
/// unlimited), and a warning when it is so low that a source's connection
/// may be cut: each source must be read at `MIN_CHUNK_TRANSFER_RATE` at
/// least, and under twice that a download takes from one source at a time.
pub fn download_limit_lines(limit: Option<u64>) -> Option<(String, Option<String>)> {
    let rate_bps = limit.filter(|&r| r > 0)?;
    let line = format!(
        "downloads: limited to {}/s for all files and sources together",
        human(rate_bps as f64)
    );
    let min = crate::limits::MIN_CHUNK_TRANSFER_RATE;
    let slow = (rate_bps < 2 * min).then(|| {
        format!(
            "warning: at {}/s a download takes from one source at a time, and a source may \
             close a connection read slower than {}/s; the limit is in bytes per second \
             (500K, 10M, 1G)",
            human(rate_bps as f64),
            human(min as f64)
        )
    });
    Some((line, slow))
}

/// What `where` prints: a header line, then one line per source with its
/// chunk count and map (`#` all held, `+` some, `.` none). `me`, if given,
/// is marked "(this peer)".
pub fn format_locations(
    l: &Locations,
    width: usize,
    me: Option<SocketAddr>,
) -> Result<String, String> {
    let mut s = format!(
        "{}: {} bytes ({}), {} of {}, {}\n",
        l.name,
        l.length,
        human(l.length as f64),
        plural(u64::from(l.chunk_count), "chunk"),
        human(f64::from(l.chunk_size)),
        plural(l.sources.len() as u64, "source")
    );
    for src in &l.sources {
        let b = Bitmap::from_bytes(l.chunk_count, &src.have)
            .map_err(|e| format!("bad bitmap from the tracker: {e}"))?;
        s.push_str(&format!(
            "  {:<22} {:>6}/{:<6} {}{}\n",
            src.addr.to_string(),
            b.count_ones(),
            l.chunk_count,
            b.render(width.max(1)),
            if Some(src.addr) == me {
                "  (this peer)"
            } else {
                ""
            }
        ));
    }
    Ok(s)
}

/// The start of a file list (a line saying there are none, or nothing)
/// and the width of its name column: the longest name, in characters.
fn list_start<'a>(names: impl Iterator<Item = &'a str> + Clone) -> (String, usize) {
    let w = names.clone().map(|n| n.chars().count()).max();
    let s = if w.is_none() {
        "no files on the network\n".to_owned()
    } else {
        String::new()
    };
    (s, w.unwrap_or(0))
}

/// What `peer list` prints: one line per file (name, exact size, size in
/// units), and a last line if the tracker cut the list short.
pub fn format_file_list(files: &[FileSummary], truncated: bool) -> String {
    let (mut s, w) = list_start(files.iter().map(|f| f.name.as_str()));
    for f in files {
        s.push_str(&format!(
            "{:<w$}  {:>14} bytes  ({})\n",
            f.name,
            f.length,
            human(f.length as f64)
        ));
    }
    if truncated {
        s.push_str("(list cut short by the tracker)\n");
    }
    s
}

/// What `peer list --long` prints: per file its name, exact size, size in
/// units, content id, chunks and sources (from its `--json` object, so both
/// say the same), and a last line if a tracker cut the list short.
pub fn format_long_list(files: &[FileDescription], truncated: bool) -> String {
    let (mut s, w) = list_start(files.iter().map(|f| f.name.as_str()));
    for l in files {
        let f = super::json::file(l);
        s.push_str(&format!(
            "{:<w$}  {:>14} bytes  ({})  id {}  {} of {}, {} ({} complete)\n",
            f.name,
            f.length,
            human(f.length as f64),
            f.id,
            plural(u64::from(f.chunk_count), "chunk"),
            human(f64::from(f.chunk_size)),
            plural(u64::from(f.sources), "source"),
            f.complete_sources
        ));
    }
    if truncated {
        s.push_str("(list cut short by the tracker)\n");
    }
    s
}

/// Whether a download found every chunk on disk and fetched nothing.
pub fn already_complete(s: &Summary) -> bool {
    s.bytes_downloaded == 0 && s.chunks_resumed == s.chunks_total
}

/// How the bytes of a download came: "in 7.49 s, 4.3 MiB/s" for a fresh
/// one; "622.0 MiB fetched in 6.60 s, 94.2 MiB/s; 402.0 MiB (25 of 64
/// chunks) already on disk" for a resumed one, whose rate is over the
/// fetched part only and says so.
pub fn transfer_phrase(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    if s.chunks_resumed == 0 {
        return format!("in {secs:.2} s, {}", rate(s.bytes_downloaded, secs));
    }
    let on_disk = s.length.saturating_sub(s.bytes_downloaded);
    format!(
        "{} fetched in {secs:.2} s, {}; {} ({} of {}) already on disk",
        human(s.bytes_downloaded as f64),
        rate(s.bytes_downloaded, secs),
        human(on_disk as f64),
        count(u64::from(s.chunks_resumed)),
        plural(u64::from(s.chunks_total), "chunk")
    )
}

/// What `peer get` prints when done: totals, then what each source gave.
pub fn format_summary(s: &Summary) -> String {
    if already_complete(s) {
        return format!(
            "{} is already complete: {} ({} bytes), every chunk verified; in {}\n",
            s.name,
            human(s.length as f64),
            s.length,
            s.path.display()
        );
    }
    let mut text = format!(
        "downloaded {}: {} ({} bytes) {}; {}",
        s.name,
        human(s.length as f64),
        s.length,
        transfer_phrase(s),
        plural(u64::from(s.chunks_total), "chunk"),
    );
    if s.duplicates > 0 {
        text.push_str(&format!(
            ", {} received twice",
            plural(u64::from(s.duplicates), "duplicate")
        ));
    }
    text.push('\n');
    for src in &s.sources {
        text.push_str(&format!(
            "  from {}: {} ({} bytes), {}",
            src.addr,
            human(src.bytes as f64),
            src.bytes,
            plural(u64::from(src.chunks), "chunk")
        ));
        if src.hash_failures > 0 {
            text.push_str(&format!(", {} failed verification", src.hash_failures));
        }
        if let Some(why) = &src.dropped {
            text.push_str(&format!(", dropped: {why}"));
        }
        text.push('\n');
    }
    text.push_str(&format!("saved to {}\n", s.path.display()));
    text
}

/// The lines a tracker-session event is worth (none for a registration
/// round that neither accepted nor refused anything). With `several`
/// trackers, each line names the tracker it is about.
/// One line for what the folder watcher did (live sharing).
pub fn describe_watch(ev: &WatchEvent) -> String {
    match ev {
        WatchEvent::Added { name, length } => {
            format!("added {name} ({}): now shared", human(*length as f64))
        }
        WatchEvent::Changed { name } => {
            format!("changed {name}: its old content is no longer shared")
        }
        WatchEvent::Updated { name, length } => {
            format!(
                "changed {name}: its new content is shared ({})",
                human(*length as f64)
            )
        }
        WatchEvent::Removed { name } => format!("removed {name}: no longer shared"),
        WatchEvent::Skipped { path, why } => format!("not sharing {}: {why}", path.display()),
    }
}

pub fn describe_event(ev: &SessionEvent, several: bool) -> Vec<String> {
    let the = |t: &std::net::SocketAddr| {
        if several {
            format!("the tracker {t}")
        } else {
            "the tracker".to_owned()
        }
    };
    match ev {
        SessionEvent::Registered {
            tracker,
            accepted,
            refused,
        } => {
            let mut v = Vec::new();
            if !accepted.is_empty() {
                v.push(format!(
                    "registered {} with {}",
                    plural(accepted.len() as u64, "file"),
                    the(tracker)
                ));
            }
            for (name, why) in refused {
                v.push(format!("refused by {}: {name}: {why}", the(tracker)));
            }
            v
        }
        SessionEvent::Disconnected { tracker, why } if several => {
            vec![format!(
                "connection to the tracker {tracker} lost ({why}); reconnecting"
            )]
        }
        SessionEvent::Disconnected { why, .. } => {
            vec![format!("tracker connection lost ({why}); reconnecting")]
        }
        SessionEvent::Reconnected { tracker } => {
            vec![format!(
                "reconnected to {}; files registered again",
                the(tracker)
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The low-limit warning is one sentence with single spaces (its
    /// source lines are joined by `\` continuations, not kept as runs of
    /// spaces).
    #[test]
    fn the_low_download_limit_warning_reads_as_one_sentence() {
        let (line, warning) = download_limit_lines(Some(4 * 1024)).unwrap();
        assert_eq!(
            line,
            "downloads: limited to 4.0 KiB/s for all files and sources together"
        );
        let w = warning.expect("a warning under 16 KiB/s");
        assert!(!w.contains("  "), "{w:?}");
        assert!(
            w.contains("a source may close a connection read slower than 8.0 KiB/s"),
            "{w:?}"
        );
        assert!(download_limit_lines(Some(1 << 20)).unwrap().1.is_none());
        assert!(download_limit_lines(Some(0)).is_none());
    }

    fn summary(length: u64, fetched: u64, total: u32, resumed: u32) -> Summary {
        Summary {
            name: "f".into(),
            path: "/d/f".into(),
            length,
            chunks_total: total,
            chunks_resumed: resumed,
            bytes_downloaded: fetched,
            duplicates: 0,
            elapsed: std::time::Duration::from_secs(2),
            sources: vec![crate::peer::download::SourceStats {
                addr: "127.0.0.1:7001".parse().unwrap(),
                bytes: fetched,
                chunks: total - resumed,
                hash_failures: 0,
                dropped: None,
            }],
        }
    }

    /// Issue 14: "in 0.02 s, 0 B/s; 32 chunks, 32 resumed from disk" for a
    /// file already in place, a rate over the fetched part only without
    /// saying so for a resumed one, and "1 chunks".
    #[test]
    fn summaries_say_plainly_where_the_bytes_came_from() {
        let fresh = format_summary(&summary(4 << 20, 4 << 20, 4, 0));
        assert!(
            fresh.starts_with(
                "downloaded f: 4.0 MiB (4194304 bytes) in 2.00 s, 2.0 MiB/s; 4 chunks\n"
            ),
            "{fresh}"
        );
        let resumed = format_summary(&summary(4 << 20, 3 << 20, 4, 1));
        assert!(
            resumed.starts_with(
                "downloaded f: 4.0 MiB (4194304 bytes) 3.0 MiB fetched in 2.00 s, 1.5 MiB/s; \
                 1.0 MiB (1 of 4 chunks) already on disk; 4 chunks\n"
            ),
            "{resumed}"
        );
        assert!(resumed.contains("(3145728 bytes), 3 chunks\n"), "{resumed}");
        let done = format_summary(&summary(4 << 20, 0, 4, 4));
        assert_eq!(
            done,
            "f is already complete: 4.0 MiB (4194304 bytes), every chunk verified; in /d/f\n"
        );
        let one = format_summary(&summary(1000, 1000, 1, 0));
        assert!(
            one.contains("; 1 chunk\n") && one.contains(", 1 chunk\n"),
            "{one}"
        );
    }

    /// Issue 14: `--upload-limit 10` (10 bytes per second) was accepted
    /// without a word.
    #[test]
    fn upload_limits_are_echoed_and_absurd_ones_warned_about() {
        assert_eq!(
            upload_limit_lines(None, 1 << 20),
            ("uploads: unlimited".into(), None)
        );
        assert_eq!(upload_limit_lines(Some(0), 1 << 20).1, None);
        let (line, warn) = upload_limit_lines(Some(10), 1 << 20);
        assert_eq!(line, "uploads: limited to 10 B/s for all peers together");
        let warn = warn.expect("a warning");
        assert!(
            warn.contains("one 1.0 MiB chunk takes 29 h to send"),
            "{warn}"
        );
        assert_eq!(upload_limit_lines(Some(10 << 20), 1 << 20).1, None);
        assert!(upload_limit_lines(Some(100 << 10), 1 << 20).1.is_some());
        assert_eq!(duration(42.0), "42 s");
        assert_eq!(duration(600.0), "10 min");
    }

    #[test]
    fn counts_and_plurals() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(2001), "2,001");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(plural(1, "chunk"), "1 chunk");
        assert_eq!(plural(0, "file"), "0 files");
        assert_eq!(plural(2001, "file"), "2,001 files");
    }

    #[test]
    fn session_events_name_the_tracker_only_when_there_are_several() {
        let tracker: std::net::SocketAddr = "10.0.0.1:7000".parse().unwrap();
        let reg = SessionEvent::Registered {
            tracker,
            accepted: vec!["a".into()],
            refused: vec![("b".into(), "conflict".into())],
        };
        assert_eq!(
            describe_event(&reg, false),
            [
                "registered 1 file with the tracker",
                "refused by the tracker: b: conflict"
            ]
        );
        assert_eq!(
            describe_event(&reg, true),
            [
                "registered 1 file with the tracker 10.0.0.1:7000",
                "refused by the tracker 10.0.0.1:7000: b: conflict"
            ]
        );
        let lost = SessionEvent::Disconnected {
            tracker,
            why: "reset".into(),
        };
        assert_eq!(
            describe_event(&lost, false),
            ["tracker connection lost (reset); reconnecting"]
        );
        assert_eq!(
            describe_event(&lost, true),
            ["connection to the tracker 10.0.0.1:7000 lost (reset); reconnecting"]
        );
        assert_eq!(
            describe_event(&SessionEvent::Reconnected { tracker }, true),
            ["reconnected to the tracker 10.0.0.1:7000; files registered again"]
        );
    }

    #[test]
    fn sizes_and_rates_read_well() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(999.0), "999 B");
        assert_eq!(human(1023.0), "1.0 KiB");
        assert_eq!(human(1000.0), "0.98 KiB");
        assert_eq!(human(1001.0 * 1024.0 * 1024.0), "0.98 GiB", "issue 14");
        assert_eq!(human(999.9 * 1024.0 * 1024.0), "999.9 MiB");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(32.0 * 1024.0 * 1024.0), "32.0 MiB");
        assert_eq!(rate(3 << 20, 2.0), "1.5 MiB/s");
        assert_eq!(rate(1, 0.0), "0.98 KiB/s", "no division by zero");
    }

    #[test]
    fn chunk_maps_mark_this_peer() {
        let me: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let mut half = Bitmap::new(10);
        for i in 0..5 {
            half.set(i);
        }
        let l = Locations {
            name: "f".into(),
            length: 10 * 1024,
            chunk_size: 1024,
            chunk_count: 10,
            hashes: None,
            sources: vec![
                crate::wire::Source {
                    addr: "127.0.0.1:4001".parse().unwrap(),
                    have: Bitmap::full(10).as_bytes().to_vec(),
                },
                crate::wire::Source {
                    addr: me,
                    have: half.as_bytes().to_vec(),
                },
            ],
        };
        let text = format_locations(&l, 64, Some(me)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "f: 10240 bytes (10.0 KiB), 10 chunks of 1.0 KiB, 2 sources"
        );
        assert!(lines[1].ends_with("10/10     ##########"), "{text}");
        assert!(
            lines[2].ends_with("5/10     #####.....  (this peer)"),
            "{text}"
        );
        let bad = Locations {
            sources: vec![crate::wire::Source {
                addr: me,
                have: vec![0; 7],
            }],
            ..l
        };
        assert!(format_locations(&bad, 64, None).is_err());
    }

    #[test]
    fn file_lists_align_and_say_when_cut() {
        let f = |name: &str, length| FileSummary {
            name: name.into(),
            length,
        };
        assert_eq!(format_file_list(&[], false), "no files on the network\n");
        let text = format_file_list(&[f("a", 1), f("long.bin", 2048)], true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "a                      1 bytes  (1 B)");
        assert_eq!(lines[1], "long.bin            2048 bytes  (2.0 KiB)");
        assert_eq!(lines[2], "(list cut short by the tracker)");
    }
}
