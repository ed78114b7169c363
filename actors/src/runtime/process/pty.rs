//! A pseudo-terminal for `exec -t`: the command gets the pty's terminal end as its stdio (the
//! shim's `tty` mode makes it the controlling terminal); the session reads and writes the
//! master end.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// The master end of a pty: a reader, a writer and a handle for resizing, each its own
/// descriptor (tokio files do one operation at a time, and a read waits for output).
pub struct Master {
    pub reader: Reader,
    pub writer: tokio::fs::File,
    pub control: OwnedFd,
}

/// Opens a pty: the master end and the terminal end.
pub fn open() -> io::Result<(Master, OwnedFd)> {
    let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
    let reader = Reader(tokio::fs::File::from_std(std::fs::File::from(
        pty.master.try_clone()?,
    )));
    let writer = tokio::fs::File::from_std(std::fs::File::from(pty.master.try_clone()?));
    Ok((
        Master {
            reader,
            writer,
            control: pty.master,
        },
        pty.slave,
    ))
}

/// Tells the terminal (and so the command, by SIGWINCH) its new size.
pub fn resize(control: &OwnedFd, cols: u16, rows: u16) {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(control, size);
}

/// Reads the master end; EIO (every holder of the terminal end has gone) is the end.
pub struct Reader(tokio::fs::File);

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.0).poll_read(cx, buf)) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}
