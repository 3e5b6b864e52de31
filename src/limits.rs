//! Every limit and default of p2pfs, stated once.
//!
//! Owns: the numbers that the codec ([`crate::wire`]), the chunk geometry
//! ([`crate::chunks`]), both servers, the download engine and every `--help`
//! text read. A number that appears in a help string or an error message is
//! formatted from here, never copied by hand, so the two cannot drift apart.
//!
//! Depends on nothing (plain constants); `wire` and `chunks` may use it and
//! stay leaves otherwise. Protocol limits (the first section) are part of
//! docs/protocol.md: changing one changes the protocol.

use std::time::Duration;

// ---- Protocol limits (docs/protocol.md §4) --------------------------------

/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest single `/`-separated component of a name, in bytes (what common
/// file systems allow).
pub const MAX_NAME_COMPONENT_LEN: usize = 255;
/// Longest error or refusal message, in bytes of UTF-8.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Most files in one Register (a peer sharing more sends several).
pub const MAX_FILES_PER_REGISTER: usize = 1024;
/// Smallest chunk size accepted anywhere (1 KiB).
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk size accepted anywhere (16 MiB). A chunk travels in one
/// frame, so this also sizes [`MAX_FRAME_LEN`].
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Most chunks one file may have (2^19 = 524,288; 512 GiB at 1 MiB chunks).
/// Bounds the hash list (10 MiB) and one bitmap (64 KiB).
pub const MAX_CHUNKS_PER_FILE: u32 = 1 << 19;
/// Most sources in one Locations reply; the tracker sends a random sample
/// when more peers hold the file.
pub const MAX_SOURCES_PER_REPLY: usize = 64;
/// Most files in one FileList reply; the reply says when it was cut short.
pub const MAX_LIST_FILES: usize = 10_000;
/// Largest value of a frame's `len` field (type byte + payload): one maximal
/// chunk plus room for its header. Every other message is smaller by the
/// limits above (a Locations with hashes of a maximal file and 64 bitmaps is
/// 14,682,326 bytes, about 14.0 MiB).
pub const MAX_FRAME_LEN: u32 = MAX_CHUNK_SIZE + 1024;
/// Length of a SHA-1 digest in bytes.
pub const DIGEST_LEN: usize = 20;

// ---- Private networks (docs/protocol.md §14) -----------------------------

/// Bytes of a network key (the Noise pre-shared key).
pub const NETWORK_KEY_LEN: usize = 32;
/// Largest Noise message, and so the largest encrypted record body
/// (ciphertext and tag), in bytes: the Noise specification's limit.
pub const MAX_RECORD_LEN: usize = 65_535;
/// Bytes of the authentication tag that ends every encrypted record.
pub const RECORD_TAG_LEN: usize = 16;
/// Most plaintext bytes one record carries: a 1 MiB chunk spans 17 records.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - RECORD_TAG_LEN;
/// Length of each of the two handshake messages (an ephemeral public key
/// and the tag of the empty payload).
pub const HANDSHAKE_MESSAGE_LEN: usize = 32 + RECORD_TAG_LEN;
/// Largest key file read (a valid one is 86 bytes); anything bigger is not
/// a key file.
pub const MAX_KEY_FILE_LEN: u64 = 4096;

// ---- Protocol timing (docs/protocol.md §8) --------------------------------

/// How often a registered peer sends Keepalive on an otherwise idle tracker
/// connection. Shared by both sides so they cannot drift apart.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// The tracker drops a control connection silent this long (three missed
/// keepalives) and forgets that peer's chunks.
pub const TRACKER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Both servers close a connection whose Hello has not fully arrived this
/// long after it was accepted (a deadline, not a per-read timeout).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The chunk server closes a connection that sends no request this long.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a registered peer has to answer the tracker's Keepalive probe
/// (sent when another connection registers the same endpoint) before its
/// registration is found dead, its connection closed and the endpoint given
/// to the newcomer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A peer from which the tracker received any byte this recently is alive:
/// a Register for its endpoint is refused `Busy` without probing it. Also
/// how long a connection refused `Busy` for an endpoint is refused again
/// without a new probe, so many connections cannot make the tracker probe
/// one holder more than about once per this period.
pub const PROBE_QUIET: Duration = PROBE_TIMEOUT;
/// Slowest transfer a whole frame is allowed, in bytes per second, on top
/// of the per-read or per-write timeout: a reply must be written within
/// `write timeout + len / MIN_TRANSFER_RATE`, a large request must arrive
/// within `idle timeout + len / MIN_TRANSFER_RATE`, and a client waits for a
/// reply at most `I/O timeout + len / MIN_TRANSFER_RATE`. A party that
/// trickles a few bytes now and then cannot hold a frame's memory, a write
/// lock or a client for longer (64 KiB/s: a maximal frame gets 256 s more).
/// `ChunkData` gets [`MIN_CHUNK_TRANSFER_RATE`] instead.
pub const MIN_TRANSFER_RATE: u64 = 64 * 1024;
/// [`MIN_TRANSFER_RATE`] for `ChunkData` (the chunk server writing one, a
/// downloader reading one): lower, because a sharer with an upload cap
/// splits it among all its downloaders (a 1 MiB/s cap shared by 100 of
/// them is about 10 KiB/s each), and a downloader may be on a slow link. A
/// 1 MiB chunk gets 128 s on top of the I/O or write timeout.
pub const MIN_CHUNK_TRANSFER_RATE: u64 = 8 * 1024;

// ---- Defaults -------------------------------------------------------------

/// Default chunk size (1 MiB): big enough that per-chunk overhead (a request,
/// a hash, a tracker register) is negligible, small enough that a 50 MiB file
/// still has 50 chunks to spread across sources.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// The tracker's port when none is given.
pub const DEFAULT_TRACKER_PORT: u16 = 7000;

// ---- Tracker caps -----------------------------------------------------------

/// Connections the kernel may hold completed but not yet accepted, for both
/// servers (Linux caps it at `net.core.somaxconn`, 4096 by default). A
/// tracker that restarts is reconnected to by all its peers at once; SYNs
/// beyond a full queue are dropped and retried only after a second.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Most connections the tracker serves at once (each is a thread).
pub const TRACKER_MAX_CONNECTIONS: usize = 4096;
/// Most tracker connections from one address (IPv6: one /64), so one host
/// cannot take every slot.
pub const TRACKER_MAX_PER_IP: usize = 256;
/// Most files one registration (one control connection) may hold.
pub const MAX_FILES_PER_PEER: usize = 65_536;
/// Most chunks one registration may claim, summed over its files.
pub const MAX_CHUNKS_PER_PEER: u64 = 4 << 20;
/// Most endpoints of one address (IPv4 address or IPv6 /64) in one
/// Locations reply when the file has sources on other addresses too: one
/// host cannot crowd the others out of a reply however many connections it
/// registers. A file held from one address only (a swarm on one host) gets
/// up to [`MAX_SOURCES_PER_REPLY`] of them.
pub const MAX_REPLY_SOURCES_PER_ADDRESS: usize = 8;
/// Most chunks the registrations of one address (IPv4 address or IPv6 /64)
/// may claim together, summed over its connections and their files: two
/// peers' worth, about a sixth of [`MAX_TOTAL_CHUNKS`], so one host cannot
/// fill the registry and it takes at least seven to do so.
pub const MAX_CHUNKS_PER_ADDRESS: u64 = 2 * MAX_CHUNKS_PER_PEER;
/// Most chunks the whole registry holds (each file counted once); bounds
/// the tracker's memory: about 20.4 bytes per chunk (its SHA-1, a bit per
/// holder), so about 1.0 GiB when full (docs/protocol.md §9, Size caps).
pub const MAX_TOTAL_CHUNKS: u64 = 50 << 20;

/// Frames whose `len` is at most this are read without a share of the
/// tracker's frame budget (the connection cap bounds them: 4,096 x 16 KiB
/// is 64 MiB).
pub const FRAME_BUDGET_EXEMPT_LEN: u32 = 16 * 1024;
/// Most bytes of larger request frames the tracker receives and handles at
/// once, summed over all connections (`len` is charged when the header
/// arrives and given back when the request has been answered): sixteen
/// maximal frames. A frame that does not fit is answered `Error{Busy}` and
/// the connection closed.
pub const TRACKER_FRAME_BUDGET: u64 = 256 << 20;
/// The part of [`TRACKER_FRAME_BUDGET`] the connections of one address
/// (IPv4 address or IPv6 /64) may hold at once: four maximal frames, so it
/// takes at least four hosts to spend the whole budget.
pub const TRACKER_FRAME_BUDGET_PER_ADDRESS: u64 = 64 << 20;

// ---- Chunk server caps ------------------------------------------------------

/// Most chunk-server connections at once (each is a thread).
pub const PEER_MAX_CONNECTIONS: usize = 256;
/// Most chunk-server connections from one address (IPv6: one /64).
pub const PEER_MAX_PER_IP: usize = 64;
/// Largest request frame (its `len`) the chunk server reads: a
/// `ChunkRequest` with a name at [`MAX_NAME_LEN`] (type, name length,
/// name, index: 1 + 2 + 1,024 + 4 = 1,031). It is the largest request a
/// chunk server accepts (a `Hello` is 7); a header announcing more is
/// answered `Error{Malformed}` and the connection closed before any of
/// the payload is read.
pub const PEER_MAX_REQUEST_LEN: u32 = 1 + 2 + MAX_NAME_LEN as u32 + 4;

// ---- Client side ------------------------------------------------------------

/// How long to wait for a TCP connection to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any single read or write of a client may block before the other
/// side is considered gone; a source that leaves a request unanswered this
/// long is dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer leaving waits for each tracker session to send Leave and
/// read the tracker's Ok (or finish what it is sending) before cutting the
/// connection: a tracker that accepts and never answers must not hold a
/// peer's exit for the whole io timeout. Leave is a courtesy; a tracker
/// forgets a peer when its connection closes anyway.
pub const LEAVE_WAIT: Duration = Duration::from_secs(1);
/// How often a sharing peer looks at its folder for files added, changed
/// or removed (one `lstat` per file; files are opened and hashed only when
/// new or changed).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// A new or changed file is shared only once two looks at least this far
/// apart saw the same size, modification time, change time and inode: a
/// file still being written is not offered half-written.
pub const WATCH_STABLE: Duration = Duration::from_secs(1);
/// A question put to several trackers at once (`peer list`, `peer where`,
/// the start of a download) waits at most this long for the others once
/// one has answered; the rest are left out, named, so one tracker that
/// accepts connections and never answers does not hold every command for
/// [`IO_TIMEOUT`].
pub const TRACKER_GRACE: Duration = Duration::from_secs(1);

// ---- Download engine ----------------------------------------------------------

/// Requests a worker keeps in flight on its connection. Four 1 MiB chunks
/// cover the bandwidth-delay product of any LAN and keep loopback busy,
/// while bounding per-source memory.
pub const PIPELINE_DEPTH: usize = 4;
/// Files of one `peer get` (several names, or a folder) downloaded at
/// once by default (`--jobs`). Each job keeps its own connections, so
/// several keep a fast link and both cores busy across what each small
/// file waits for (its Locate, its sources), while the connections per
/// source stay far below [`PEER_MAX_PER_IP`].
pub const BATCH_JOBS: usize = 8;
/// Most files one `peer get` may download at once (`--jobs` above it is
/// lowered to it): each costs a thread per source and a connection to each,
/// and [`FINISHERS_PER_JOB`] `finish-N` threads naming its small files.
pub const MAX_BATCH_JOBS: usize = 16;
/// Threads that name a set's small files (`finish-N`: fsync, then link),
/// per job. A file waits for the disk there, not the job that fetched it;
/// more syncs in flight at once than jobs let the disk's flushes serve
/// several files each.
pub const FINISHERS_PER_JOB: usize = 2;
/// Largest file of a set fetched by the fast path (`peer::download::small`:
/// on its `batch-N` thread over connections kept for the set, into an
/// unnamed file, no `.part`). Larger ones go to the engine, whose threads
/// per source, pipelining and endgame pay off only over many chunks; and a
/// file this small is fetched again whole after a kill rather than resumed.
pub const SMALL_FILE_MAX_BYTES: u64 = 16 << 20;
/// Rounds of requests the fast path makes for one file (each to the
/// sources that have not failed it yet) before leaving it to the engine.
pub const SMALL_FILE_ROUNDS: usize = 3;
/// Sources the fast path asks for one file (more only for chunks none of
/// them holds): two already stream at once, and every source asked is a
/// connection kept open.
pub const SMALL_FILE_SOURCES: usize = 4;
/// Source connections one `batch-N` thread keeps at most (the least
/// recently used is closed first).
pub const SMALL_POOL_SOURCES: usize = 16;
/// A kept connection unused this long is made again rather than reused:
/// well within the idle timeouts after which the other side closes it.
pub const KEPT_IDLE: Duration = Duration::from_secs(20);
/// The fast path skips a source for a file when one reply takes longer
/// than this plus the chunk's length at [`SMALL_FILE_MIN_RATE`], and gives
/// the file to the engine (which goes on from its verified chunks) after
/// this plus the file's length at that rate, once per round
/// ([`SMALL_FILE_ROUNDS`]): a slow source then holds neither.
pub const SMALL_FILE_PATIENCE: Duration = Duration::from_secs(1);
/// See [`SMALL_FILE_PATIENCE`].
pub const SMALL_FILE_MIN_RATE: u64 = 1 << 20;
/// How long the fast path leaves alone a source it could not connect to
/// or greet (the engine, with its own retries, may still use it).
pub const SMALL_SOURCE_BACKOFF: Duration = Duration::from_secs(10);
/// How often locations are refreshed while downloading, at the least
/// (large replies); small ones are asked for more often, down to
/// [`MIN_REFRESH_INTERVAL`], within [`LOCATE_BYTES_PER_SEC`].
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(1500);
/// The shortest interval between location refreshes of a download.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes of Locations replies a download asks for per second at most (it
/// refreshes less often than every [`MIN_REFRESH_INTERVAL`] when replies
/// are large; 64 sources of a 2^19-chunk file make a 4 MiB reply).
pub const LOCATE_BYTES_PER_SEC: u64 = 256 * 1024;
/// Chunks from one source that may fail verification before it is dropped.
pub const MAX_HASH_FAILURES: u32 = 3;
/// How long a download may write no chunk with nothing in flight before it
/// gives up naming the chunks nobody can supply; with requests in flight,
/// the longer of this and one chunk's deadline (the I/O timeout plus the
/// chunk at [`MIN_CHUNK_TRANSFER_RATE`]).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// An idle worker asks for a second copy of a chunk already requested from
/// another source (the endgame) only once it has had nothing else to ask
/// for this long: the other source usually delivers first, and a copy
/// received twice is a whole chunk sent, read and thrown away (for a file
/// of one or two chunks, twice its bytes).
pub const ENDGAME_GRACE: Duration = Duration::from_millis(100);
/// Most sources downloaded from at once; more add little and cost a thread
/// and a connection each.
pub const MAX_ACTIVE_SOURCES: usize = 32;
/// A chunk a source answered `NotHeld` for is asked of that source again
/// after this long, doubling on each further `NotHeld` for it up to
/// [`NOT_HELD_RETRY_MAX`]. Super-seeding turns a chunk away while it is
/// sent elsewhere and for 3 s after (so that it is fetched from there):
/// asking again sooner would only be turned away again.
pub const NOT_HELD_RETRY: Duration = Duration::from_secs(3);
/// The longest wait before asking a source again for a chunk it said it
/// does not hold.
pub const NOT_HELD_RETRY_MAX: Duration = Duration::from_secs(8);
/// A source that answers `NotHeld` this many times in a row, delivering no
/// chunk in between, is dropped for now (and backed off from like one that
/// does not answer). Super-seeding turns a chunk away only while it is
/// being fetched elsewhere, so an honest seed delivers others meanwhile.
pub const MAX_NOT_HELD_IN_A_ROW: u32 = 64;
/// A peer whose uploads are capped sends one chunk at a time at its whole
/// rate, the turns going round the addresses asking (in the order asked
/// within one), booking each at most this far ahead; a
/// request beyond that waits its turn for up to [`UPLOAD_QUEUE_WAIT`].
pub const UPLOAD_BACKLOG_MAX: Duration = Duration::from_millis(500);
/// How long a request to a capped peer may wait for its turn before it is
/// answered `Busy` (ask later or elsewhere): so no request sits long at a
/// source busy with others while the chunk may be had elsewhere. With
/// [`UPLOAD_BACKLOG_MAX`] well under the client's I/O timeout.
pub const UPLOAD_QUEUE_WAIT: Duration = Duration::from_millis(500);
/// A worker told `Busy` for a chunk sends that source no new request for
/// about this long (the chunk goes back to the pool for the other
/// sources), longer after several `Busy` in a row.
pub const BUSY_PAUSE: Duration = Duration::from_millis(500);
/// A source that answers `Busy` this many times in a row is dropped for
/// now (asked again after the base delay, without the growing back-off
/// of one that does not answer: it is there, only busy), so that a
/// download's places for
/// sources ([`MAX_ACTIVE_SOURCES`]) go to sources with room rather than
/// staying with the first ones found, which everybody found first.
pub const MAX_BUSY_IN_A_ROW: u32 = 2;
/// A source that has not delivered a chunk to this download yet must accept
/// the connection and answer Hello within this long; a proven source gets
/// the full connect and I/O timeouts. Silent, full or unreachable sources
/// then cost a worker slot for seconds, not the I/O timeout.
pub const NEW_SOURCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most workers at once on probation: for a source that has not delivered
/// to this download yet, from the start of its connection until it answers
/// a request (or turns out to hold nothing we need). Sources that delivered
/// then always find a free slot.
pub const MAX_PROBES: usize = 24;
/// Most probes at once to one host (IPv4 address or IPv6 /64), so one
/// host's silent endpoints cannot keep other hosts' sources from being tried.
pub const MAX_PROBES_PER_HOST: usize = 4;
/// Most sources a download remembers that have not delivered to it and are
/// neither in the latest locations nor being downloaded from (their
/// backoff and strikes; not what they hold): a swarm's churn cannot grow a
/// download's memory without bound. Banned sources are always remembered.
pub const MAX_REMEMBERED_SOURCES: usize = 1024;
/// A source whose connections keep failing without delivering anything is
/// retried after the retry delay doubled per failure, up to this long.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// Most bytes of requests a download worker leaves unanswered on one
/// connection, whatever the pipeline depth: the source reads no request
/// while it writes a reply, so this much must fit in the socket buffers
/// between the two (it does in any default ones), or both sides would wait
/// for each other for good.
pub const MAX_REQUEST_BYTES_IN_FLIGHT: usize = 32 << 10;

// ---- The tracker's web dashboard (`tracker --http`) -------------------------

/// The dashboard's port that README suggests (`--http 127.0.0.1:7080`); a
/// port given alone binds loopback on it.
pub const DEFAULT_DASHBOARD_PORT: u16 = 7080;
/// HTTP requests handled at once: one worker thread each. The page polls
/// once a second, so a few viewers need one or two.
pub const HTTP_WORKERS: usize = 4;
/// Accepted HTTP connections waiting for a worker; beyond this a connection
/// is answered 503 and closed at once.
pub const HTTP_QUEUE: usize = 32;
/// Largest request head (request line and headers) read, in bytes; a longer
/// one is answered 431 and closed.
pub const HTTP_MAX_HEAD: usize = 8 << 10;
/// Most header lines in a request head.
pub const HTTP_MAX_HEADERS: usize = 48;
/// Time allowed for a whole request head, however slowly its bytes come
/// (a client sending a byte a second is cut off here), and for the wait in
/// the queue before it.
pub const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for writing one response.
pub const HTTP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most holders of one file in `/api/files/NAME` and on the page (the rest
/// are counted, not listed): the same sample size as a Locations reply.
pub const DASHBOARD_MAX_HOLDERS: usize = MAX_SOURCES_PER_REPLY;
/// How long a snapshot of the registry serves dashboard requests before it
/// is taken again: however many requests come, the registry lock is taken
/// for the dashboard at most a few times a second per question.
pub const DASHBOARD_SNAPSHOT_TTL: Duration = Duration::from_millis(250);
/// The seconds over which a holder's speed (chunks per second) is averaged:
/// the last complete seconds before now.
pub const DASHBOARD_RATE_WINDOW: u32 = 5;

// ---- User interface ---------------------------------------------------------

/// Default width, in characters, of the chunk maps `peer where` and the
/// prompt's `where` draw (one character per chunk or group of chunks).
pub const WHERE_MAP_WIDTH: usize = 64;
/// An upload limit at which one chunk takes longer than this to send is
/// probably a mistake (`--upload-limit 10` is 10 bytes per second): the
/// peer says so at start.
pub const SLOW_CHUNK_WARNING: Duration = Duration::from_secs(5);
