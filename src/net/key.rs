//! The network key of a private network: generating it, writing and reading
//! key files, and the one key this process uses.
//!
//! Owns: the key file format (docs/protocol.md §14.1), the file checks (a
//! regular file, readable by its owner only, as ssh demands of private
//! keys; well formed) and the process's key ([`install`] once at start-up,
//! [`process`] everywhere a connection is made or served).
//!
//! Why one key per process rather than an argument threaded through every
//! connection: a process is a member of exactly one network, chosen on its
//! command line, and every connection it makes or accepts (tracker, chunk
//! server, downloads, one-shot queries) must use that key; a process-wide
//! setting makes forgetting it at one call site impossible. The server
//! skeleton and the client take an explicit key too
//! ([`super::server::Server::start_keyed`], [`super::client::Conn::connect_keyed`]),
//! which tests use to run keyed and clear sides in one process.
//!
//! Calls `limits` only (and ring's system random generator).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::limits::{MAX_KEY_FILE_LEN, NETWORK_KEY_LEN};

/// First line of every key file.
pub const KEY_FILE_HEADER: &str = "p2pfs network key v1";
/// Environment variable naming the key file when `--key-file` is not given.
pub const KEY_FILE_ENV: &str = "P2PFS_KEY_FILE";

/// A network key: the 32 bytes every member of a private network shares.
/// Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey([u8; NETWORK_KEY_LEN]);

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NetworkKey(..)")
    }
}

/// Why a key file cannot be used or written.
#[derive(Debug)]
pub struct KeyError {
    pub path: PathBuf,
    pub what: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key file {}: {}", self.path.display(), self.what)
    }
}

impl std::error::Error for KeyError {}

fn err(path: &Path, what: impl Into<String>) -> KeyError {
    KeyError {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl NetworkKey {
    pub fn from_bytes(bytes: [u8; NETWORK_KEY_LEN]) -> NetworkKey {
        NetworkKey(bytes)
    }

    /// A new random key from the operating system's generator.
    pub fn generate() -> io::Result<NetworkKey> {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut k = [0u8; NETWORK_KEY_LEN];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| io::Error::other("the system random generator failed"))?;
        Ok(NetworkKey(k))
    }

    /// The bytes, as the Noise pre-shared key.
    pub(crate) fn psk(&self) -> &[u8; NETWORK_KEY_LEN] {
        &self.0
    }

    /// The key file text: the header line, then the key in 64 lowercase
    /// hex digits, each line ending in `\n`.
    pub fn to_file_text(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{KEY_FILE_HEADER}\n{hex}\n")
    }

    /// Parses key file text: exactly two lines, [`KEY_FILE_HEADER`] and 64
    /// hex digits (either case); spaces around a line and a missing final
    /// newline are allowed, nothing else.
    pub fn parse(text: &str) -> Result<NetworkKey, String> {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let lines: &[&str] = match lines.as_slice() {
            [a, b, ""] => &[a, b],
            l => l,
        };
        let [header, hex] = lines else {
            return Err(format!(
                "not a p2pfs key file: expected 2 lines (\"{KEY_FILE_HEADER}\" and 64 hex digits), \
                 found {}; make one with `peer keygen FILE`",
                lines.len()
            ));
        };
        if *header != KEY_FILE_HEADER {
            return Err(format!(
                "not a p2pfs key file: the first line must be \"{KEY_FILE_HEADER}\"; \
                 make one with `peer keygen FILE`"
            ));
        }
        let digits = hex.as_bytes();
        if digits.len() != 2 * NETWORK_KEY_LEN {
            return Err(format!(
                "the key must be {} hex digits, found {} characters",
                2 * NETWORK_KEY_LEN,
                digits.len()
            ));
        }
        let mut k = [0u8; NETWORK_KEY_LEN];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let byte = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| {
                    "the key line holds a character that is not a hex digit".to_owned()
                })?;
            k[i] = byte;
        }
        Ok(NetworkKey(k))
    }

    /// Reads a key file, refusing one that is not a regular file, that
    /// group or others may read or write (like ssh), or that is malformed.
    pub fn load(path: &Path) -> Result<NetworkKey, KeyError> {
        let mut f = fs::File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
        let meta = f
            .metadata()
            .map_err(|e| err(path, format!("cannot read its metadata: {e}")))?;
        if !meta.is_file() {
            return Err(err(path, "not a regular file"));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(
                path,
                format!(
                    "permissions {mode:04o} are too open: a network key must be readable by its \
                     owner only; run: chmod 600 {}",
                    path.display()
                ),
            ));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(err(
                path,
                format!("{} bytes is too long for a key file", meta.len()),
            ));
        }
        let mut text = String::new();
        Read::by_ref(&mut f)
            .take(MAX_KEY_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(|e| err(path, format!("cannot read: {e}")))?;
        NetworkKey::parse(&text).map_err(|why| err(path, why))
    }

    /// Writes a new random key to `path`, created with mode 0600; an
    /// existing file is never overwritten.
    pub fn write_new(path: &Path) -> Result<NetworkKey, KeyError> {
        let key = NetworkKey::generate().map_err(|e| err(path, e.to_string()))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => err(
                    path,
                    "already exists; not overwriting a key (remove it first)",
                ),
                _ => err(path, format!("cannot create: {e}")),
            })?;
        let written = f
            .write_all(key.to_file_text().as_bytes())
            .and_then(|()| f.sync_all());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(path);
            return Err(err(path, format!("cannot write: {e}")));
        }
        Ok(key)
    }
}

static PROCESS_KEY: OnceLock<Option<NetworkKey>> = OnceLock::new();

/// Sets the key every connection of this process uses (`None`: a clear,
/// open network). Once per process, before any connection; a second call
/// is refused.
pub fn install(key: Option<NetworkKey>) -> Result<(), &'static str> {
    PROCESS_KEY
        .set(key)
        .map_err(|_| "the network key was already set for this process")
}

/// The key of this process, if it is a member of a private network.
pub fn process() -> Option<&'static NetworkKey> {
    PROCESS_KEY.get().and_then(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("p2pfs-key-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keygen_writes_0600_refuses_to_overwrite_and_loads_back() {
        let dir = scratch("gen");
        let p = dir.join("net.key");
        let k = NetworkKey::write_new(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(NetworkKey::load(&p).unwrap(), k);
        let before = fs::read(&p).unwrap();
        let e = NetworkKey::write_new(&p).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), before);
        assert_ne!(NetworkKey::write_new(&dir.join("other")).unwrap(), k);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn open_permissions_and_malformed_files_are_refused() {
        let dir = scratch("bad");
        let p = dir.join("net.key");
        NetworkKey::write_new(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let e = NetworkKey::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("0640 are too open") && e.contains("chmod 600"),
            "{e}"
        );
        let cases = [
            ("", "expected 2 lines"),
            ("hello\n", "expected 2 lines"),
            ("ssh-rsa x\n00\n", "first line"),
            ("p2pfs network key v1\n0011\n", "64 hex digits"),
            (
                &format!("p2pfs network key v1\n{}zz\n", "00".repeat(31)),
                "not a hex digit",
            ),
            (
                &format!("p2pfs network key v1\n{}\nmore\n", "00".repeat(32)),
                "expected 2 lines",
            ),
        ];
        for (text, why) in cases {
            let _ = fs::remove_file(&p);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            let e = NetworkKey::load(&p).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(NetworkKey::load(&dir).is_err());
        assert!(NetworkKey::load(&dir.join("missing")).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn parse_accepts_upper_case_and_no_final_newline() {
        let k = NetworkKey::parse(&format!("{KEY_FILE_HEADER}\n{}", "AB".repeat(32))).unwrap();
        assert_eq!(k.psk(), &[0xab; 32]);
        assert_eq!(NetworkKey::parse(&k.to_file_text()).unwrap(), k);
        assert_eq!(format!("{k:?}"), "NetworkKey(..)");
    }
}
