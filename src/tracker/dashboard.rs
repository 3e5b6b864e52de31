//! What each path of the dashboard answers (the server is [`super::http`]).
//!
//! - `/` (any query; the page reads `?file=NAME` itself), `/app.js`,
//!   `/style.css`: the page, compiled into the binary from
//!   `src/tracker/dashboard/` (no framework, no build step, nothing from
//!   the internet).
//! - `/api/files`: every file `list` lists, with its geometry, content id
//!   and source counts. `/api/files/NAME` (NAME percent-decoded, checked
//!   with the wire's name rule): that file and up to
//!   [`DASHBOARD_MAX_HOLDERS`] of its sources, each with its bitmap, what
//!   `where` prints, plus how long it has held the file and how fast it
//!   gains chunks. README lists the fields.
//! - `/metrics`: Prometheus text ([`super::metrics::render`]).
//!
//! Owns: the JSON shapes (serde structs: the field names README documents
//! are these structs' fields), a short-lived cache of answers (so, for
//! the questions it has room for, the registry lock is taken for the
//! dashboard at most once per
//! [`DASHBOARD_SNAPSHOT_TTL`] per question, however many requests come),
//! and the content ids of the files (computed outside the registry lock,
//! once per file).
//!
//! Lock rule: the registry lock is held for one copy
//! (`files_view`, `file_detail`, `stats`) and released before anything is
//! computed, serialized or written; the cache's and the ids' own locks are
//! never held with it.
//!
//! Calls [`super::server::View`] (the registry, counters, gauges),
//! [`super::metrics`], `chunks` (content id, hex), `wire` (name rule),
//! `limits` and `sync`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::metrics::{self, Counters};
use super::registry::{FileDetail, FileView, HolderView};
use super::server::View;
use crate::chunks::{ContentId, Digest};
use crate::limits::{
    DASHBOARD_MAX_HOLDERS, DASHBOARD_SNAPSHOT_TTL, MAX_CHUNKS_PER_FILE, MAX_LIST_FILES,
};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Most answers kept in the cache (the file list, /metrics, and the files
/// asked about most recently), and most bytes of them: an answer that
/// would not fit is made again for each request.
const CACHE_ENTRIES: usize = 32;
const CACHE_BYTES: usize = 16 << 20;

/// Sent with every answer: nothing on the page may load or run anything
/// but its own script and style, and no other site may frame it.
const SECURITY_HEADERS: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'\r\n\
     X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
     Cache-Control: no-store\r\n";

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Arc<[u8]>,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Arc<[u8]>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", body.as_bytes())
    }

    fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(mut v) => {
                v.push(b'\n');
                Reply::new(status, "application/json", v)
            }
            Err(e) => Reply::text(500, &format!("cannot encode JSON: {e}\n")),
        }
    }

    /// The status line and headers (`Content-Length` is the body's, also
    /// for HEAD). Every connection is closed after one answer.
    pub fn head(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}{SECURITY_HEADERS}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes()
    }
}

/// `/api/files/NAME`'s and `/api/files`' description of one file: the
/// fields of `peer list --json`.
#[derive(Serialize)]
struct FileJson<'a> {
    name: &'a str,
    length: u64,
    chunk_size: u32,
    chunk_count: u32,
    /// The content id (protocol.md §4.1), 40 lowercase hex digits.
    id: String,
    /// Endpoints holding at least one chunk.
    sources: usize,
    /// Endpoints holding every chunk.
    complete_sources: usize,
}

/// `/api/files`.
#[derive(Serialize)]
struct FilesJson<'a> {
    files: Vec<FileJson<'a>>,
    /// More files than [`MAX_LIST_FILES`] are known; the rest are left out.
    truncated: bool,
}

/// One holder in `/api/files/NAME`: the fields of `peer where --json`, and
/// two only the dashboard has.
#[derive(Serialize)]
struct HolderJson<'a> {
    name: &'a str,
    id: &'a str,
    /// "ip:port", IPv6 as "[::1]:port".
    endpoint: String,
    chunks: u32,
    chunk_count: u32,
    complete: bool,
    /// The bitmap as on the wire, lowercase hex (bit 7 of byte 0 = chunk 0).
    have: String,
    /// Seconds since this endpoint became a holder of the file (an age,
    /// not a clock time).
    registered_at: u32,
    /// Chunks gained per second over the last few complete seconds.
    chunks_per_s: f64,
}

/// `/api/files/NAME`.
#[derive(Serialize)]
struct DetailJson<'a> {
    file: FileJson<'a>,
    holders: Vec<HolderJson<'a>>,
    /// The file has more sources than `holders` lists (at most
    /// [`DASHBOARD_MAX_HOLDERS`] are).
    truncated: bool,
}

/// `{"error": "..."}`, for a 400 or a 404 on /api.
#[derive(Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
}

/// The dashboard's routes and caches; one, shared by the HTTP workers.
pub struct Dashboard {
    view: View,
    /// Recent answers by cache key, with when they were made.
    cache: Mutex<HashMap<String, (Instant, Reply)>>,
    /// Content ids by file name.
    ids: Ids,
}

/// Content ids by file name, with the hash list each was computed from (a
/// file registered again with other content gets a new one). An entry
/// shares its hash list with the registry, so it must not outlive the
/// file by much: once the lists held have grown past twice what was alive
/// at the last look plus one largest file's, the entries whose list
/// nobody else holds any more (the file is gone, or registered again) are
/// dropped. So the cache holds at most twice the lists alive at the last
/// look plus two largest files' (20 MB), whatever the churn of files, at
/// an amortized O(1) per entry made.
struct Ids {
    cache: Mutex<IdCache>,
    /// Digests that may be held beyond twice the live ones before a look.
    slack: usize,
}

#[derive(Default)]
struct IdCache {
    by_name: HashMap<String, IdEntry>,
    /// Digests in the entries' hash lists.
    held: usize,
    /// `held` after the last look.
    live: usize,
}

/// A content id and the hash list it was computed from.
type IdEntry = (Arc<[Digest]>, ContentId);

impl IdCache {
    fn forget_where(&mut self, keep: impl Fn(&str, &Arc<[Digest]>) -> bool) {
        self.by_name.retain(|n, (hashes, _)| keep(n, hashes));
        self.held = self.by_name.values().map(|(h, _)| h.len()).sum();
        self.live = self.held;
    }
}

impl Ids {
    fn new(slack: usize) -> Ids {
        Ids {
            cache: Mutex::new(IdCache::default()),
            slack,
        }
    }

    /// The file's content id: from the cache if its hash list is the one
    /// the id was computed from, else computed now (outside the registry
    /// lock) and cached.
    fn get(&self, f: &FileView) -> ContentId {
        if let Some((hashes, id)) = crate::sync::lock(&self.cache).by_name.get(&f.name)
            && Arc::ptr_eq(hashes, &f.hashes)
        {
            return *id;
        }
        let g = f.geometry;
        let id = ContentId::compute(g.length(), g.chunk_size(), &f.hashes);
        let mut c = crate::sync::lock(&self.cache);
        if c.by_name.len() >= MAX_LIST_FILES {
            c.forget_where(|_, _| false);
        }
        if c.held > c.live.saturating_mul(2).saturating_add(self.slack) {
            c.forget_where(|_, hashes| Arc::strong_count(hashes) > 1);
        }
        if let Some((old, _)) = c
            .by_name
            .insert(f.name.clone(), (Arc::clone(&f.hashes), id))
        {
            c.held = c.held.saturating_sub(old.len());
        }
        c.held += f.hashes.len();
        id
    }

    /// Drops the ids of files that are not in `files`.
    fn keep_only(&self, files: &[FileView]) {
        let names: std::collections::HashSet<&str> =
            files.iter().map(|f| f.name.as_str()).collect();
        crate::sync::lock(&self.cache).forget_where(|n, _| names.contains(n));
    }
}

impl Dashboard {
    pub(super) fn new(view: View) -> Dashboard {
        Dashboard {
            view,
            cache: Mutex::new(HashMap::new()),
            ids: Ids::new(MAX_CHUNKS_PER_FILE as usize),
        }
    }

    pub fn counters(&self) -> &Counters {
        self.view.counters()
    }

    /// The answer to `method target`, counted by route.
    pub fn answer(&self, method: &str, target: &str) -> Reply {
        let (route, reply) = self.route(method, target);
        self.counters().http(route);
        reply
    }

    fn route(&self, method: &str, target: &str) -> (&'static str, Reply) {
        if method != "GET" && method != "HEAD" {
            return (
                "method_not_allowed",
                Reply::text(405, "only GET and HEAD\n"),
            );
        }
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        match path {
            "/" | "/index.html" => ("page", page(INDEX_HTML, "text/html; charset=utf-8")),
            "/app.js" => ("page", page(APP_JS, "text/javascript; charset=utf-8")),
            "/style.css" => ("page", page(STYLE_CSS, "text/css; charset=utf-8")),
            "/metrics" => ("metrics", self.cached("metrics", || self.metrics())),
            "/api/files" | "/api/files/" => ("api", self.cached("files", || self.files())),
            _ => match path.strip_prefix("/api/files/") {
                Some(raw) => ("api", self.file(raw)),
                None => ("not_found", Reply::text(404, "not found\n")),
            },
        }
    }

    /// The answer cached under `key` if it is fresh, else `make`'s (then
    /// cached). `make` runs with no lock of the dashboard's held.
    fn cached(&self, key: &str, make: impl FnOnce() -> Reply) -> Reply {
        if let Some((at, r)) = crate::sync::lock(&self.cache).get(key)
            && at.elapsed() < DASHBOARD_SNAPSHOT_TTL
        {
            return r.clone();
        }
        let reply = make();
        let mut cache = crate::sync::lock(&self.cache);
        let bytes = |c: &HashMap<String, (Instant, Reply)>| -> usize {
            c.values().map(|(_, r)| r.body.len()).sum()
        };
        if cache.len() >= CACHE_ENTRIES || bytes(&cache) + reply.body.len() > CACHE_BYTES {
            cache.retain(|_, (at, _)| at.elapsed() < DASHBOARD_SNAPSHOT_TTL);
        }
        if cache.len() < CACHE_ENTRIES && bytes(&cache) + reply.body.len() <= CACHE_BYTES {
            cache.insert(key.to_owned(), (Instant::now(), reply.clone()));
        }
        reply
    }

    fn metrics(&self) -> Reply {
        let stats = self.view.registry().stats();
        let text = metrics::render(self.counters(), &self.view.gauges(stats));
        Reply::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            text.into_bytes(),
        )
    }

    fn files(&self) -> Reply {
        let (files, truncated) = self.view.registry().files_view(MAX_LIST_FILES);
        let ids: Vec<String> = files.iter().map(|f| self.ids.get(f).to_string()).collect();
        self.ids.keep_only(&files);
        let files = files
            .iter()
            .zip(&ids)
            .map(|(f, id)| file_json(f, id))
            .collect();
        Reply::json(200, &FilesJson { files, truncated })
    }

    fn file(&self, raw: &str) -> Reply {
        let Some(name) = percent_decode(raw) else {
            let error = "the name is not percent-encoded UTF-8";
            return Reply::json(400, &ErrorJson { error });
        };
        if let Err(e) = crate::wire::validate_name(&name) {
            return Reply::json(
                400,
                &ErrorJson {
                    error: &e.to_string(),
                },
            );
        }
        self.cached(&format!("file:{name}"), || {
            let detail = self
                .view
                .registry()
                .file_detail(&name, DASHBOARD_MAX_HOLDERS);
            match detail {
                Some(d) => self.detail(&d),
                None => Reply::json(
                    404,
                    &ErrorJson {
                        error: "no such file on the tracker",
                    },
                ),
            }
        })
    }

    fn detail(&self, d: &FileDetail) -> Reply {
        let id = self.ids.get(&d.file).to_string();
        let f = &d.file;
        let holders = d
            .holders
            .iter()
            .map(|h| holder_json(f, &id, h))
            .collect::<Vec<_>>();
        let truncated = holders.len() < f.sources;
        Reply::json(
            200,
            &DetailJson {
                file: file_json(f, &id),
                holders,
                truncated,
            },
        )
    }
}

fn page(text: &'static str, content_type: &'static str) -> Reply {
    Reply::new(200, content_type, text.as_bytes())
}

fn file_json<'a>(f: &'a FileView, id: &str) -> FileJson<'a> {
    FileJson {
        name: &f.name,
        length: f.geometry.length(),
        chunk_size: f.geometry.chunk_size(),
        chunk_count: f.geometry.count(),
        id: id.to_owned(),
        sources: f.sources,
        complete_sources: f.complete_sources,
    }
}

fn holder_json<'a>(f: &'a FileView, id: &'a str, h: &HolderView) -> HolderJson<'a> {
    HolderJson {
        name: &f.name,
        id,
        endpoint: h.endpoint.to_string(),
        chunks: h.chunks,
        chunk_count: f.geometry.count(),
        complete: h.chunks == f.geometry.count(),
        have: lower_hex(&h.have),
        registered_at: h.registered_for,
        chunks_per_s: (h.chunks_per_s * 100.0).round() / 100.0,
    }
}

/// Bytes as lowercase hex, two digits each.
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `%XX` escapes decoded, the result UTF-8; None for a stray `%` or bytes
/// that are not UTF-8. `+` stays `+` (this is a path, not a form).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits exactly: `u8::from_str_radix` alone would also
            // take a sign ("%+1" as 0x01).
            let hex = |c: u8| char::from(c).to_digit(16);
            let (hi, lo) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_utf8_and_refuses_the_rest() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("d%2Ff.txt").as_deref(), Some("d/f.txt"));
        assert_eq!(percent_decode("%C3%A9t%C3%A9+").as_deref(), Some("été+"));
        assert_eq!(percent_decode("%3Cb%3E%22").as_deref(), Some("<b>\""));
        assert_eq!(percent_decode("50%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
        // A sign is not a hex digit: "%+1" is not an escape of 0x01.
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("a%+41"), None);
        assert_eq!(percent_decode("%-1"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%00").as_deref(), Some("\0"));
    }

    /// Files come and go; the ids cache must not keep their hash lists
    /// alive once the registry has dropped them.
    #[test]
    fn the_id_cache_lets_go_of_hash_lists_the_registry_dropped() {
        use crate::chunks::Geometry;
        // Looks once the lists held pass twice the live ones plus 1000.
        let ids = Ids::new(1000);
        let view = |i: u8| FileView {
            name: format!("f{i}"),
            geometry: Geometry::new(1000 * 1024, 1024).unwrap(),
            hashes: vec![[i; 20]; 1000].into(),
            sources: 1,
            complete_sources: 1,
        };
        let live = view(0);
        let first = ids.get(&live);
        for i in 1..=100 {
            ids.get(&view(i)); // the file is gone right after
        }
        let kept = crate::sync::lock(&ids.cache).by_name.len();
        assert!(kept <= 4, "{kept} hash lists kept for files that are gone");
        assert_eq!(ids.get(&live), first);
        assert!(crate::sync::lock(&ids.cache).by_name.contains_key("f0"));
        ids.keep_only(&[]);
        assert_eq!(crate::sync::lock(&ids.cache).held, 0);
    }

    #[test]
    fn heads_state_length_type_and_close() {
        let r = Reply::text(405, "no\n");
        let h = String::from_utf8(r.head()).unwrap();
        assert!(h.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{h}");
        assert!(h.contains("Content-Length: 3\r\n"));
        assert!(h.contains("Allow: GET, HEAD\r\n"));
        assert!(h.contains("Connection: close\r\n\r\n"));
        assert!(h.contains("Content-Security-Policy: default-src 'none'"));
    }
}
