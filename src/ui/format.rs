//! Text shared by every command: sizes, rates, chunk maps, the files of the
//! network, a download's summary, and the lines a tracker-session event is
//! worth. Pure functions from engine types to strings, so the one-shot
//! commands and the prompt read the same and are tested without I/O.
//!
//! Owns nothing. Calls `peer` (types), `wire` (types) and `chunks`.

use std::net::SocketAddr;

use crate::chunks::Bitmap;
use crate::peer::download::Summary;
use crate::peer::session::SessionEvent;
use crate::wire::{FileSummary, Locations};

/// "12.3 MiB" style sizes (powers of 1024).
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// "5.1 MiB/s": `bytes` over `secs` (at least a millisecond, so a very
/// quick transfer does not divide by zero).
pub fn rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", human(bytes as f64 / secs.max(1e-3)))
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
        "{}: {} bytes ({}), {} chunks of {}, {} source(s)\n",
        l.name,
        l.length,
        human(l.length as f64),
        l.chunk_count,
        human(f64::from(l.chunk_size)),
        l.sources.len()
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

/// What `peer list` prints: one line per file (name, exact size, size in
/// units), and a last line if the tracker cut the list short.
pub fn format_file_list(files: &[FileSummary], truncated: bool) -> String {
    let mut s = String::new();
    if files.is_empty() {
        s.push_str("no files on the network\n");
    }
    let w = files
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(0);
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

/// What `peer get` prints when done: totals, then what each source gave.
pub fn format_summary(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    let mut text = format!(
        "downloaded {}: {} ({} bytes) in {:.2} s, {}; {} chunks, {} resumed from disk, \
         {} duplicate(s)\n",
        s.name,
        human(s.length as f64),
        s.length,
        secs,
        rate(s.bytes_downloaded, secs),
        s.chunks_total,
        s.chunks_resumed,
        s.duplicates
    );
    for src in &s.sources {
        text.push_str(&format!(
            "  from {}: {} ({} bytes), {} chunk(s)",
            src.addr,
            human(src.bytes as f64),
            src.bytes,
            src.chunks
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
/// round that neither accepted nor refused anything).
pub fn describe_event(ev: &SessionEvent) -> Vec<String> {
    match ev {
        SessionEvent::Registered {
            tracker,
            accepted,
            refused,
        } => {
            let mut v = Vec::new();
            if !accepted.is_empty() {
                v.push(format!(
                    "registered {} file(s) with the tracker {tracker}",
                    accepted.len()
                ));
            }
            for (name, why) in refused {
                v.push(format!("refused by the tracker {tracker}: {name}: {why}"));
            }
            v
        }
        SessionEvent::Disconnected { tracker, why } => {
            vec![format!(
                "connection to the tracker {tracker} lost ({why}); reconnecting"
            )]
        }
        SessionEvent::Reconnected { tracker } => {
            vec![format!(
                "reconnected to the tracker {tracker}; files registered again"
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_read_well() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1023.0), "1023 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(32.0 * 1024.0 * 1024.0), "32.0 MiB");
        assert_eq!(rate(3 << 20, 2.0), "1.5 MiB/s");
        assert_eq!(rate(1, 0.0), "1000 B/s", "no division by zero");
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
            "f: 10240 bytes (10.0 KiB), 10 chunks of 1.0 KiB, 2 source(s)"
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
