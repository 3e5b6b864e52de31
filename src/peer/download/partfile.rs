//! The on-disk state of an unfinished download and moving it into place.
//!
//! Owns: `NAME.part` (the preallocated file being filled), `NAME.part.have`
//! (the saved have-bitmap that makes a restart resume instead of starting
//! over), their suffixes, and [`is_artifact`], which the share scan asks so
//! that it never offers one of them. Also owns the rules that keep a
//! download from taking over a file that is not its own: a `.part` without a
//! matching `.part.have` is refused, never overwritten, and the final name is
//! never replaced.
//!
//! Calls `chunks` (geometry, bitmaps, SHA-1), `wire` (the name rule) and the
//! peer's error type only;
//! nothing else of the download and nothing of `share`, so `share` can ask
//! [`is_artifact`] without an import cycle.
//!
//! # `NAME.part.have`
//!
//! `"P2PFHAVE"` | 20-byte identity (SHA-1 over the length, the chunk size and
//! every chunk hash, so a bitmap saved for other content is never trusted) |
//! the bitmap's bytes. Written to `NAME.part.have.tmp` (never following a
//! link planted there) and renamed over the old one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::chunks::{self, Bitmap, Digest, Geometry};
use crate::peer::{PeerError, Result};

/// Suffix of a file still being downloaded.
pub const PART_SUFFIX: &str = ".part";
/// Suffix of the saved have-bitmap beside it.
pub const HAVE_SUFFIX: &str = ".part.have";
/// Suffix of the have-bitmap's temporary file while it is rewritten.
const HAVE_TMP_SUFFIX: &str = ".part.have.tmp";

const HAVE_MAGIC: &[u8; 8] = b"P2PFHAVE";

/// Whether a file named `name` is a download's own state (an unfinished
/// `.part`, its saved bitmap or that bitmap's temporary file): never shared.
pub fn is_artifact(name: &str) -> bool {
    [PART_SUFFIX, HAVE_SUFFIX, HAVE_TMP_SUFFIX]
        .iter()
        .any(|s| name.ends_with(s))
}

/// How deep [`unfinished`] looks into sub-folders.
const UNFINISHED_MAX_DEPTH: usize = 32;

/// The names of the downloads left unfinished in `dir` (a `.part` with its
/// saved bitmap), sorted: what `get NAME` would resume. Symlinks are not
/// followed; unreadable folders are passed over.
pub fn unfinished(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((folder, prefix, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for e in entries.flatten() {
            let (Ok(ft), Some(file_name)) =
                (e.file_type(), e.file_name().to_str().map(str::to_owned))
            else {
                continue;
            };
            let rel = format!("{prefix}{file_name}");
            if ft.is_dir() && depth < UNFINISHED_MAX_DEPTH {
                stack.push((e.path(), format!("{rel}/"), depth + 1));
            } else if ft.is_file() {
                if let Some(name) = rel.strip_suffix(PART_SUFFIX) {
                    let have = folder.join(format!("{file_name}.have"));
                    if have.is_file() && crate::wire::validate_name(name).is_ok() {
                        names.push(name.to_owned());
                    }
                }
            }
        }
    }
    names.sort();
    names
}

/// The three paths a download uses.
pub(super) struct Paths {
    pub(super) final_path: PathBuf,
    pub(super) part: PathBuf,
    pub(super) have: PathBuf,
}

impl Paths {
    pub(super) fn new(dir: &Path, name: &str) -> Paths {
        // `name` passed validate_name: relative, no `..`, so this stays in `dir`.
        let final_path = dir.join(name);
        let with = |suffix: &str| {
            let mut s = final_path.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        Paths {
            part: with(PART_SUFFIX),
            have: with(HAVE_SUFFIX),
            final_path,
        }
    }

    /// Saves `have` as the verified chunks of the `.part`.
    pub(super) fn save_have(&self, id: &Digest, have: &Bitmap) -> std::io::Result<()> {
        save_have(&self.have, id, have)
    }

    fn refuse(&self, why: &str) -> PeerError {
        PeerError::Download(format!(
            "{} {why}; move it away or use another --dir",
            self.part.display()
        ))
    }
}

/// What a `.part.have` must carry to be trusted for this content.
pub(super) fn identity(g: Geometry, hashes: &[Digest]) -> Digest {
    let mut bytes = Vec::with_capacity(12 + hashes.len() * 20);
    bytes.extend_from_slice(&g.length().to_be_bytes());
    bytes.extend_from_slice(&g.chunk_size().to_be_bytes());
    for h in hashes {
        bytes.extend_from_slice(h);
    }
    chunks::sha1(&bytes)
}

/// The saved bitmap at `path`, if it is one for content `id` with `count`
/// chunks; `None` for anything else (missing, truncated, other content).
fn load_have(path: &Path, id: &Digest, count: u32) -> Option<Bitmap> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(8 + 20 + u64::from(count).div_ceil(8) + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() < 28 || &bytes[..8] != HAVE_MAGIC || bytes[8..28] != id[..] {
        return None;
    }
    Bitmap::from_bytes(count, &bytes[28..]).ok()
}

fn save_have(path: &Path, id: &Digest, have: &Bitmap) -> std::io::Result<()> {
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Never follow a link planted at the temporary name.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let mut bytes = Vec::with_capacity(28 + have.as_bytes().len());
    bytes.extend_from_slice(HAVE_MAGIC);
    bytes.extend_from_slice(id);
    bytes.extend_from_slice(have.as_bytes());
    f.write_all(&bytes)?;
    fs::rename(&tmp, path)
}

/// Opens the `.part` file of an interrupted download of this very file, or
/// creates a new one, and works out which chunks in it are already good:
/// those the saved bitmap claims and whose hash checks out now. A `.part`
/// without a matching `.part.have` is somebody else's file: refused, never
/// overwritten.
pub(super) fn open(paths: &Paths, geometry: Geometry, hashes: &[Digest]) -> Result<(File, Bitmap)> {
    let id = identity(geometry, hashes);
    let (file, claimed) = match fs::symlink_metadata(&paths.part) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(paths.refuse("exists and is not a regular file"));
        }
        Ok(_) => {
            let (file, claimed) = open_existing(paths, &id, geometry)?;
            (file, Some(claimed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (create(paths, &id, geometry)?, None),
        Err(e) => return Err(PeerError::io("inspect", &paths.part, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| PeerError::io("stat", &paths.part, e))?
        .len();
    if len != geometry.length() {
        file.set_len(geometry.length())
            .map_err(|e| PeerError::io("preallocate", &paths.part, e))?;
    }
    let have = match claimed {
        Some(c) => verify(&file, geometry, hashes, Some(&c)),
        None => Bitmap::new(geometry.count()),
    };
    Ok((file, have))
}

/// An existing `.part`: ours only if its saved bitmap names this content.
fn open_existing(paths: &Paths, id: &Digest, geometry: Geometry) -> Result<(File, Bitmap)> {
    let Some(claimed) = load_have(&paths.have, id, geometry.count()) else {
        return Err(paths.refuse(
            "exists but is not an unfinished download of this file (no matching .part.have)",
        ));
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths.part)
        .map_err(|e| PeerError::io("open", &paths.part, e))?;
    Ok((file, claimed))
}

/// A new `.part`, marked as ours at once so a restart right away resumes.
fn create(paths: &Paths, id: &Digest, geometry: Geometry) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&paths.part)
        .map_err(|e| PeerError::io("create", &paths.part, e))?;
    if let Err(e) = save_have(&paths.have, id, &Bitmap::new(geometry.count())) {
        // Without its .have a later run would refuse the .part.
        let _ = fs::remove_file(&paths.part);
        return Err(PeerError::io("create", &paths.have, e));
    }
    Ok(file)
}

/// Hashes the chunks of `file` (only those set in `only`, if given) and
/// returns which match.
pub(super) fn verify(file: &File, g: Geometry, hashes: &[Digest], only: Option<&Bitmap>) -> Bitmap {
    let mut good = Bitmap::new(g.count());
    let mut buf = Vec::new();
    for i in g.indices() {
        if only.is_some_and(|b| !b.get(i.get())) {
            continue;
        }
        if chunks::read_chunk(file, &g, i, &mut buf).is_ok()
            && chunks::sha1(&buf) == hashes[i.get() as usize]
        {
            good.set(i.get());
        }
    }
    good
}

/// The file already under the final name, if it is exactly this content
/// (every chunk verifies); refused otherwise, and never overwritten.
pub(super) fn open_finished(
    paths: &Paths,
    name: &str,
    geometry: Geometry,
    hashes: &[Digest],
) -> Result<File> {
    let p = &paths.final_path;
    let file = File::open(p).map_err(|e| PeerError::io("open", p, e))?;
    let len = file
        .metadata()
        .map_err(|e| PeerError::io("stat", p, e))?
        .len();
    if len == geometry.length() && verify(&file, geometry, hashes, None).is_full() {
        return Ok(file);
    }
    Err(PeerError::Download(format!(
        "{} already exists and is not the network's {name}; move it away or use another --dir",
        p.display()
    )))
}

/// Flush, fsync, move `.part` to the final name, drop the saved bitmap.
/// A hard link rather than a rename, so a file that appeared under the final
/// name meanwhile is never replaced.
pub(super) fn finish(paths: &Paths, file: &File) -> Result<()> {
    file.sync_all()
        .map_err(|e| PeerError::io("flush", &paths.part, e))?;
    match fs::hard_link(&paths.part, &paths.final_path) {
        Ok(()) => {
            fs::remove_file(&paths.part).map_err(|e| PeerError::io("remove", &paths.part, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PeerError::Download(format!(
                "{} appeared during the download; the downloaded file is kept as {}",
                paths.final_path.display(),
                paths.part.display()
            )));
        }
        // File systems without hard links: the name was checked to be free.
        Err(_) => fs::rename(&paths.part, &paths.final_path)
            .map_err(|e| PeerError::io("rename", &paths.part, e))?,
    }
    let _ = fs::remove_file(&paths.have);
    if let Some(dir) = paths.final_path.parent() {
        // Make the new name durable; failure here loses nothing.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::testutil::TempDir;

    /// A 10,000-byte file in 1 KiB chunks and its hashes.
    fn content() -> (Vec<u8>, Geometry, Vec<Digest>) {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let g = Geometry::new(10_000, 1024).unwrap();
        let hashes = data.chunks(1024).map(chunks::sha1).collect();
        (data, g, hashes)
    }

    #[test]
    fn unfinished_downloads_are_found_by_their_part_and_bitmap() {
        let dir = TempDir::new("unfinished");
        for f in [
            "a.bin.part",
            "a.bin.part.have",
            "sub/b.bin.part",
            "sub/b.bin.part.have",
        ] {
            let p = dir.0.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        // A .part without its bitmap is not ours; a plain file is nothing.
        fs::write(dir.0.join("foreign.part"), b"x").unwrap();
        fs::write(dir.0.join("c.txt"), b"x").unwrap();
        assert_eq!(unfinished(&dir.0), ["a.bin", "sub/b.bin"]);
        assert!(unfinished(&dir.0.join("missing")).is_empty());
    }

    #[test]
    fn have_file_round_trips_and_rejects_other_content() {
        let dir = TempDir::new("have");
        let p = dir.0.join("x.part.have");
        let g = Geometry::new(10_000, 1024).unwrap();
        let hashes = vec![[1u8; 20]; 10];
        let id = identity(g, &hashes);
        let mut b = Bitmap::new(10);
        b.set(3);
        b.set(9);
        save_have(&p, &id, &b).unwrap();
        assert_eq!(load_have(&p, &id, 10), Some(b));
        let other = identity(g, &[[2u8; 20]; 10]);
        assert_eq!(load_have(&p, &other, 10), None);
        assert_eq!(load_have(&p, &id, 17), None);
        fs::write(&p, b"garbage").unwrap();
        assert_eq!(load_have(&p, &id, 10), None);
    }

    #[test]
    fn a_truncated_have_file_is_not_trusted() {
        let dir = TempDir::new("have-trunc");
        let p = dir.0.join("x.part.have");
        let (_, g, hashes) = content();
        let id = identity(g, &hashes);
        let mut b = Bitmap::new(10);
        b.set(0);
        save_have(&p, &id, &b).unwrap();
        let full = fs::read(&p).unwrap();
        for cut in [0, 7, 8, 27, 28, full.len() - 1] {
            fs::write(&p, &full[..cut]).unwrap();
            assert_eq!(load_have(&p, &id, 10), None, "cut at {cut}");
        }
    }

    #[test]
    fn save_have_never_follows_a_link_at_its_temporary_name() {
        let dir = TempDir::new("have-link");
        let victim = dir.0.join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = dir.0.join("x.part.have");
        std::os::unix::fs::symlink(&victim, dir.0.join("x.part.have.tmp")).unwrap();
        save_have(&p, &[0; 20], &Bitmap::new(3)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_part_resumes_with_only_the_chunks_that_verify() {
        let dir = TempDir::new("part-resume");
        let (data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        let (file, have) = open(&paths, g, &hashes).unwrap();
        assert_eq!(have.count_ones(), 0);
        assert_eq!(fs::metadata(&paths.part).unwrap().len(), 10_000);
        assert_eq!(
            load_have(&paths.have, &identity(g, &hashes), 10),
            Some(have)
        );
        // Chunks 2 and 9 written and claimed; chunk 5 claimed but never written.
        use std::os::unix::fs::FileExt;
        file.write_all_at(&data[2048..3072], 2048).unwrap();
        file.write_all_at(&data[9216..], 9216).unwrap();
        let mut claimed = Bitmap::new(10);
        for i in [2, 5, 9] {
            claimed.set(i);
        }
        paths.save_have(&identity(g, &hashes), &claimed).unwrap();
        drop(file);
        let (_, have) = open(&paths, g, &hashes).unwrap();
        assert_eq!(have.iter_ones().collect::<Vec<_>>(), vec![2, 9]);
    }

    #[test]
    fn a_foreign_part_is_refused_and_left_alone() {
        let dir = TempDir::new("part-foreign");
        let (_, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        // No .part.have at all.
        fs::write(&paths.part, b"not yours").unwrap();
        let e = open(&paths, g, &hashes).unwrap_err();
        assert!(e.to_string().contains("f.part"), "{e}");
        // A .part.have for other content.
        let other = identity(g, &[[9u8; 20]; 10]);
        save_have(&paths.have, &other, &Bitmap::new(10)).unwrap();
        assert!(open(&paths, g, &hashes).is_err());
        assert_eq!(fs::read(&paths.part).unwrap(), b"not yours");
        // Not a regular file.
        fs::remove_file(&paths.part).unwrap();
        fs::create_dir(&paths.part).unwrap();
        let e = open(&paths, g, &hashes).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn finish_moves_the_part_into_place_and_never_replaces_a_file() {
        let dir = TempDir::new("part-finish");
        let (data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        let (file, _) = open(&paths, g, &hashes).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&data, 0).unwrap();
        finish(&paths, &file).unwrap();
        assert_eq!(fs::read(&paths.final_path).unwrap(), data);
        assert!(!paths.part.exists() && !paths.have.exists());
        assert!(open_finished(&paths, "f", g, &hashes).is_ok());
        // A second download whose final name is taken meanwhile keeps its .part.
        let (file, _) = open(&Paths::new(&dir.0, "f"), g, &hashes).unwrap();
        let e = finish(&paths, &file).unwrap_err();
        assert!(
            e.to_string().contains("appeared during the download"),
            "{e}"
        );
        assert!(paths.part.exists());
        assert_eq!(fs::read(&paths.final_path).unwrap(), data);
    }

    #[test]
    fn a_different_file_under_the_final_name_is_refused() {
        let dir = TempDir::new("part-final");
        let (mut data, g, hashes) = content();
        let paths = Paths::new(&dir.0, "f");
        data[5000] ^= 1;
        fs::write(&paths.final_path, &data).unwrap();
        assert!(open_finished(&paths, "f", g, &hashes).is_err());
        fs::write(&paths.final_path, &data[..100]).unwrap();
        assert!(open_finished(&paths, "f", g, &hashes).is_err());
    }

    #[test]
    fn artifacts_are_recognised() {
        for n in ["a.part", "d/a.bin.part", "a.part.have", "a.part.have.tmp"] {
            assert!(is_artifact(n), "{n}");
        }
        for n in ["a", "part", "a.partial", "a.have", "a.part.x"] {
            assert!(!is_artifact(n), "{n}");
        }
    }
}
