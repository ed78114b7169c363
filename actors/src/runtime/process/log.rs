//! CRI-format container log files, written by the shim: one `<RFC3339Nano> <stream> <P|F> <text>`
//! record per line; lines longer than [`MAX_LINE`] are split into `P` (partial) records ending
//! in an `F` one. Files rotate by size: `0.log` → `0.log.1` → … (`max_files` counts them all).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest record before a line is split (containerd uses 16 KiB too).
pub(crate) const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub(crate) struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
    /// Bytes of an unfinished line, per stream.
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    pub(crate) fn open(path: &Path, max_bytes: u64, max_files: u32) -> io::Result<LogWriter> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_owned(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Appends what a stream produced; complete lines become `F` records at once.
    pub(crate) fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let ts = rfc3339_nano(SystemTime::now());
        let pending = &mut self.pending[stream as usize];
        pending.extend_from_slice(data);
        let mut out = Vec::with_capacity(pending.len() + 64);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            record(&mut out, &ts, stream, 'F', &pending[start..start + pos]);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            record(&mut out, &ts, stream, 'P', &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
        self.emit(&out)
    }

    /// Writes unfinished lines as full records (the stream ended without a newline).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        let ts = rfc3339_nano(SystemTime::now());
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                record(&mut out, &ts, stream, 'F', &pending);
            }
        }
        self.emit(&out)
    }

    fn emit(&mut self, out: &[u8]) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.file.write_all(out)?;
        self.size += out.len() as u64;
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.max_files <= 1 {
            // Nothing is kept: start the file over.
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(self.max_files - 1));
        for i in (1..self.max_files - 1).rev() {
            let _ = std::fs::rename(numbered(i), numbered(i + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn record(out: &mut Vec<u8>, ts: &str, stream: Stream, tag: char, line: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    out.push(tag as u8);
    out.push(b' ');
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// `2006-01-02T15:04:05.999999999Z` in UTC, nanoseconds always written (RFC 3339 allows it and
/// Go's RFC3339Nano parser accepts it).
pub(crate) fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339_nano(t), "2024-02-29T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn lines_partials_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1 << 20, 2).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nwor").unwrap();
        w.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 10]).unwrap();
        w.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let recs: Vec<(&str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let _ts = it.next().unwrap();
                (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
            })
            .collect();
        assert_eq!(recs[0], ("stderr", "F", "oops"));
        assert_eq!(recs[1], ("stdout", "F", "hello"));
        assert_eq!(recs[2].1, "P");
        assert_eq!(recs[2].2.len(), MAX_LINE);
        assert!(recs[2].2.starts_with("worx"));
        assert_eq!(recs[3].1, "F");
        assert_eq!(recs[3].2.len(), 13);

        let mut w = LogWriter::open(&path, 4096, 2).unwrap();
        for _ in 0..200 {
            w.write(
                Stream::Stdout,
                b"0123456789012345678901234567890123456789\n",
            )
            .unwrap();
        }
        assert!(dir.path().join("0.log.1").exists());
        assert!(!dir.path().join("0.log.2").exists());
        assert!(std::fs::metadata(&path).unwrap().len() < 4096);
    }
}
