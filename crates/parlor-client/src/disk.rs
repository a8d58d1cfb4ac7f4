//! The file operations the shell carries out for the session
//! ([`super::FileOp`], [`Record`]), with `std::fs`. They block: hashing a
//! whole file runs on a blocking thread; the rest touch one chunk or one
//! line at a time.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::memory::{Memory, MemoryFile, Record};
use super::transfer::numbered_name;

/// How much is read at a time while hashing.
const HASH_BUFFER: usize = 1 << 20;

/// How many numbered names [`save`] tries before it gives up.
const MAX_NUMBERED: u32 = 10_000;

/// The size and SHA-256 of a file, reading it once, a buffer at a time.
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; HASH_BUFFER];
    let mut size = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((size, hasher.finalize().into()))
}

/// Exactly `len` bytes at `offset`.
pub(crate) fn read_chunk(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = vec![0; len];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// Creates the partial file, emptying one left from before.
pub(crate) fn create(path: &Path) -> io::Result<()> {
    File::create(path).map(drop)
}

/// Writes `data` at `offset` of an existing file.
pub(crate) fn write_at(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(data)
}

/// Moves `part` to `dir/name`, or to the first numbered name that does not
/// exist yet; never over an existing file. The new name is claimed with an
/// exclusive create first, so two saves cannot pick the same one.
pub(crate) fn save(part: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..=MAX_NUMBERED {
        let candidate = match n {
            0 => dir.join(name),
            n => dir.join(numbered_name(name, n)),
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(_) => {
                if let Err(err) = fs::rename(part, &candidate) {
                    let _ = fs::remove_file(&candidate);
                    return Err(err);
                }
                return Ok(candidate);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other(format!(
        "{MAX_NUMBERED} files named like '{name}' already exist"
    )))
}

/// What the data directory remembers; nothing if it has no files yet.
pub(crate) fn load_memory(data_dir: &Path) -> io::Result<Memory> {
    let read = |file: MemoryFile| {
        let path = data_dir.join(file.file_name());
        match fs::read_to_string(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            read => {
                read.map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))
            }
        }
    };
    Ok(Memory::parse(
        &read(MemoryFile::KnownPeers)?,
        &read(MemoryFile::SecureRooms)?,
    ))
}

/// Appends `record` as one line to its file in the data directory, made
/// (mode 0600, in a directory of mode 0700) if need be. One `write` of a
/// whole line with `O_APPEND`: two clients appending at once do not
/// interleave within a line.
pub(crate) fn remember(data_dir: &Path, record: &Record) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(data_dir.join(record.file.file_name()))?;
    file.write_all(format!("{}\n", record.line).as_bytes())
}

/// Deletes a file that may not be there.
pub(crate) fn delete(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parlor-disk-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn hashes_reads_and_writes_chunks() {
        let dir = scratch("chunks");
        let path = dir.join("data");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let (size, digest) = hash_file(&path).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(read_chunk(&path, 1000, 10).unwrap(), &data[1000..1010]);
        assert!(read_chunk(&path, data.len() as u64 - 5, 10).is_err());
        assert!(hash_file(&dir).is_err(), "a directory");

        let part = dir.join("copy.part");
        create(&part).unwrap();
        write_at(&part, 0, b"abc").unwrap();
        write_at(&part, 3, b"def").unwrap();
        write_at(&part, 3, b"def").unwrap();
        assert_eq!(fs::read(&part).unwrap(), b"abcdef");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn remembers_by_appending_lines_to_private_files() {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch("memory").join("data");
        assert_eq!(load_memory(&dir).unwrap(), Memory::default(), "nothing yet");
        let mut memory = Memory::default();
        let records = [
            memory.pin("h:1", b"bob", &[1; 32]),
            memory.mark_secure("h:1", b"vault").unwrap(),
            memory.pin("h:1", b"bob", &[2; 32]),
        ];
        for record in &records {
            remember(&dir, record).unwrap();
        }
        assert_eq!(load_memory(&dir).unwrap(), memory);
        let peers = dir.join(MemoryFile::KnownPeers.file_name());
        assert_eq!(fs::read_to_string(&peers).unwrap().lines().count(), 2);
        assert_eq!(fs::metadata(&peers).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn saves_without_overwriting() {
        let dir = scratch("save");
        fs::write(dir.join("a.txt"), b"mine").unwrap();
        fs::write(dir.join("a (1).txt"), b"mine too").unwrap();
        let part = dir.join("a.txt.part");
        fs::write(&part, b"theirs").unwrap();
        let saved = save(&part, &dir, "a.txt").unwrap();
        assert_eq!(saved, dir.join("a (2).txt"));
        assert_eq!(fs::read(&saved).unwrap(), b"theirs");
        assert_eq!(fs::read(dir.join("a.txt")).unwrap(), b"mine");
        assert!(!part.exists());
        fs::write(&part, b"new").unwrap();
        assert_eq!(save(&part, &dir, "b").unwrap(), dir.join("b"));
        delete(&dir.join("b")).unwrap();
        delete(&dir.join("b")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
