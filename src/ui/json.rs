//! The `--json` output of `peer list` and `peer where`: one JSON object per
//! line, written by serde_json from the structs here, so the fields README
//! documents are exactly the fields of these types (the tracker's web API
//! uses the same names).
//!
//! Owns: the JSON shapes of the command line. Calls `wire` (Locations),
//! `chunks` (bitmaps, content ids), `peer::client` (`content_id`,
//! `FileDescription`) and serde.

use serde::Serialize;

use crate::chunks::{Bitmap, ContentId};
use crate::peer::client::{self, FileDescription};
use crate::wire::Locations;

/// One file, as `peer list --json` prints it.
#[derive(Debug, Serialize)]
pub struct FileJson<'a> {
    pub name: &'a str,
    /// Bytes.
    pub length: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    /// The content id (protocol.md §4.1), 40 lowercase hex digits.
    pub id: String,
    /// Endpoints listed holding at least one chunk (for an empty file,
    /// which has none, every endpoint listed).
    pub sources: u32,
    /// Endpoints listed holding every chunk.
    pub complete_sources: u32,
}

/// One source endpoint of a file, as `peer where --json` prints it.
#[derive(Debug, Serialize)]
pub struct SourceJson<'a> {
    pub name: &'a str,
    pub id: String,
    /// "ip:port", an IPv6 address in brackets ("[::1]:7001").
    pub endpoint: String,
    /// Chunks it holds.
    pub chunks: u32,
    pub chunk_count: u32,
    pub complete: bool,
    /// Its bitmap exactly as on the wire, in lowercase hex: bit 7 (the
    /// most significant) of byte 0 is chunk 0.
    pub have: String,
}

/// The content id of a file described with its hashes; an error if the
/// description has none.
pub fn content_id(l: &Locations) -> Result<ContentId, String> {
    client::content_id(l).ok_or_else(|| format!("the tracker sent no chunk hashes for {}", l.name))
}

/// Each source's bitmap, checked against the file's chunk count.
fn bitmaps(l: &Locations) -> Result<Vec<Bitmap>, String> {
    l.sources
        .iter()
        .map(|s| {
            Bitmap::from_bytes(l.chunk_count, &s.have)
                .map_err(|e| format!("bad bitmap from the tracker for {}: {e}", s.addr))
        })
        .collect()
}

/// The `list` object of a file.
pub fn file(d: &FileDescription) -> FileJson<'_> {
    // An empty file has no chunk: each endpoint holds all of it.
    let complete = |&&(_, n): &&(_, u32)| n == d.chunk_count;
    FileJson {
        name: &d.name,
        length: d.length,
        chunk_size: d.chunk_size,
        chunk_count: d.chunk_count,
        id: d.id.to_string(),
        sources: count(d.sources.iter().filter(|s| s.1 > 0 || complete(s))),
        complete_sources: count(d.sources.iter().filter(complete)),
    }
}

/// The `where` objects of a file described with its hashes, one per source.
pub fn sources(l: &Locations) -> Result<Vec<SourceJson<'_>>, String> {
    let id = content_id(l)?.to_string();
    let maps = bitmaps(l)?;
    Ok(l.sources
        .iter()
        .zip(maps)
        .map(|(s, b)| SourceJson {
            name: &l.name,
            id: id.clone(),
            endpoint: s.addr.to_string(),
            chunks: b.count_ones(),
            chunk_count: l.chunk_count,
            complete: b.is_full(),
            have: s.have.iter().map(|x| format!("{x:02x}")).collect(),
        })
        .collect())
}

fn count<T>(it: impl Iterator<Item = T>) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
}

/// One object as one line (no newline inside: serde_json escapes every
/// control character in strings).
pub fn line<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string(v)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| format!("cannot write JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::sha1;
    use crate::wire::Source;

    fn abc() -> Locations {
        Locations {
            name: "dir/a \"b\"\n.txt".into(),
            length: 2049,
            chunk_size: 1024,
            chunk_count: 3,
            hashes: Some(vec![sha1(b"a"), sha1(b"b"), sha1(b"c")]),
            sources: vec![
                Source {
                    addr: "127.0.0.1:7001".parse().unwrap(),
                    have: vec![0b1110_0000],
                },
                Source {
                    addr: "[::1]:7002".parse().unwrap(),
                    have: vec![0b0100_0000],
                },
                Source {
                    addr: "10.0.0.1:7003".parse().unwrap(),
                    have: vec![0],
                },
            ],
        }
    }

    #[test]
    fn list_and_where_objects_have_the_documented_fields() {
        let l = abc();
        let id = ContentId::compute(2049, 1024, l.hashes.as_ref().unwrap()).to_string();
        let d = FileDescription {
            name: l.name.clone(),
            length: l.length,
            chunk_size: l.chunk_size,
            chunk_count: l.chunk_count,
            id: content_id(&l).unwrap(),
            sources: vec![
                ("127.0.0.1:7001".parse().unwrap(), 3),
                ("[::1]:7002".parse().unwrap(), 1),
                ("10.0.0.1:7003".parse().unwrap(), 0),
            ],
        };
        let f: serde_json::Value = serde_json::from_str(&line(&file(&d)).unwrap()).unwrap();
        assert_eq!(
            f,
            serde_json::json!({"name": "dir/a \"b\"\n.txt", "length": 2049, "chunk_size": 1024,
                "chunk_count": 3, "id": id, "sources": 2, "complete_sources": 1})
        );
        let w = sources(&l).unwrap();
        let lines: Vec<String> = w.iter().map(|s| line(s).unwrap()).collect();
        assert!(
            lines
                .iter()
                .all(|x| x.ends_with('\n') && x.matches('\n').count() == 1)
        );
        let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "dir/a \"b\"\n.txt", "id": id, "endpoint": "[::1]:7002",
                "chunks": 1, "chunk_count": 3, "complete": false, "have": "40"})
        );
        assert_eq!(w[0].have, "e0");
        assert!(w[0].complete);
    }

    #[test]
    fn no_hashes_or_a_bad_bitmap_is_an_error() {
        let mut l = abc();
        l.sources[0].have = vec![0, 0];
        assert!(sources(&l).is_err());
        l.hashes = None;
        assert!(sources(&l).is_err());
    }
}
