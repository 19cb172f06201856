//! A consistent copy of this process's memory, written out by a forked child while the parent
//! goes on: the child sees the memory as it was at the fork (copy-on-write), so a large
//! structure can be serialised without holding up the thread that keeps changing it. This is how
//! Redis saves its dataset in the background; the processor writes its checkpoints this way.
//!
//! Contract: [`Forked::spawn`] forks; the child runs the given closure with a [`ChildWriter`]
//! (whose bytes go through a pipe to the parent) and ends with `_exit`, 0 if the closure returned
//! true. The parent gets a [`Forked`] at once; [`Forked::wait`] (blocking) returns everything the
//! child wrote once it ended well, or why it did not. Only the forking thread exists in the child,
//! and locks that other threads held at the fork stay held there for ever: the closure must not
//! allocate, lock, log or panic (hence `unsafe`). Signals that stop a process (SIGTERM, SIGINT,
//! SIGHUP) end the child at once, whatever the parent's handlers. Linux only; elsewhere `spawn`
//! fails with `Unsupported` and the caller does the work itself.

use std::io::Read;

/// Why a forked child's output is not available.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("reading the child's output failed: {0}")]
    Read(std::io::Error),
    #[error("waiting for the child failed: {0}")]
    Wait(std::io::Error),
    #[error("the child failed ({0}) after writing {1} bytes")]
    Failed(String, usize),
}

/// Where the child writes: a buffer allocated before the fork, emptied into the pipe when full.
pub struct ChildWriter {
    fd: i32,
    buf: Vec<u8>,
    failed: bool,
}

impl ChildWriter {
    /// Capacity of the buffer (allocated by the parent before the fork).
    const BUFFER: usize = 256 * 1024;

    /// Appends `bytes`; false once a write to the pipe failed (the parent went away).
    pub fn write(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() && !self.failed {
            let room = self.buf.capacity() - self.buf.len();
            if room == 0 {
                self.flush();
                continue;
            }
            let n = room.min(bytes.len());
            // Within the capacity: no allocation.
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        !self.failed
    }

    /// Empties the buffer into the pipe.
    fn flush(&mut self) -> bool {
        let mut done = 0;
        while done < self.buf.len() && !self.failed {
            let rest = &self.buf[done..];
            // SAFETY: write(2) on a descriptor this process owns, from a live buffer.
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n > 0 {
                done += n as usize;
            } else if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                self.failed = true;
            }
        }
        self.buf.clear();
        !self.failed
    }
}

/// A forked child writing its output (see the module documentation).
pub struct Forked {
    pid: i32,
    output: Option<std::fs::File>,
}

impl Forked {
    /// Forks a child that runs `write` and exits (see the module documentation).
    ///
    /// # Safety
    /// `write` runs in a copy of the process with one thread: it must not allocate, take a lock,
    /// log or panic. Reading memory and writing to the [`ChildWriter`] are fine.
    #[cfg(target_os = "linux")]
    pub unsafe fn spawn(write: impl FnOnce(&mut ChildWriter) -> bool) -> std::io::Result<Forked> {
        use std::os::fd::FromRawFd;
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills the two descriptors; close-on-exec keeps them from other programs.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let [read, write_end] = fds;
        let mut writer =
            ChildWriter { fd: write_end, buf: Vec::with_capacity(ChildWriter::BUFFER), failed: false };
        // SAFETY: the child runs only async-signal-safe calls and `write`, which the caller
        // vouches for; it leaves with _exit (no destructors, no atexit handlers, no flushes).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                libc::close(read);
                let wrote = write(&mut writer);
                let ok = writer.flush() && wrote;
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let forked = std::io::Error::last_os_error();
        // SAFETY: the parent's copy of the write end is its own to close.
        unsafe { libc::close(write_end) };
        // Not touched in the parent: its memory goes without the child's bytes.
        drop(writer);
        // SAFETY: `read` is a descriptor this process owns and nothing else holds.
        let output = unsafe { std::fs::File::from_raw_fd(read) };
        if pid < 0 {
            return Err(forked);
        }
        Ok(Forked { pid, output: Some(output) })
    }

    /// Not available on this platform: the caller does the work itself.
    ///
    /// # Safety
    /// None needed; `unsafe` for the same signature as on Linux.
    #[cfg(not(target_os = "linux"))]
    pub unsafe fn spawn(_write: impl FnOnce(&mut ChildWriter) -> bool) -> std::io::Result<Forked> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "forking a writer needs Linux"))
    }

    /// Blocks until the child ended: everything it wrote, if it ended well. `expected` is how
    /// many bytes it will likely write (the buffer starts that large).
    pub fn wait(mut self, expected: usize) -> Result<Vec<u8>, ForkError> {
        let mut bytes = Vec::with_capacity(expected);
        let read = self.output.take().expect("read once").read_to_end(&mut bytes);
        let status = self.reap().map_err(ForkError::Wait)?;
        read.map_err(ForkError::Read)?;
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(bytes)
        } else if libc::WIFSIGNALED(status) {
            Err(ForkError::Failed(format!("killed by signal {}", libc::WTERMSIG(status)), bytes.len()))
        } else {
            Err(ForkError::Failed(format!("exit status {}", libc::WEXITSTATUS(status)), bytes.len()))
        }
    }

    /// Waits for the child's end; its status.
    fn reap(&mut self) -> std::io::Result<i32> {
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child, once.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.pid = 0;
                return Ok(status);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                self.pid = 0;
                return Err(e);
            }
        }
    }
}

impl Drop for Forked {
    /// Not waited for: closing the pipe ends the child (its next write fails), which is reaped.
    fn drop(&mut self) {
        self.output = None;
        if self.pid > 0 {
            let _ = self.reap();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_child_sees_memory_as_it_was_at_the_fork() {
        let mut data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        // SAFETY: the closure only reads memory and writes to the writer.
        let forked = unsafe { Forked::spawn(|w| w.write(&data[..1_000_000]) && w.write(&data[1_000_000..])) }
            .expect("forks");
        // The parent goes on changing what the child writes.
        data.iter_mut().for_each(|b| *b = 0);
        let written = forked.wait(0).expect("the child ends well");
        assert_eq!(written.len(), expected.len());
        assert!(written == expected, "the child wrote the memory of the fork's moment");
    }

    #[test]
    fn a_child_that_fails_is_an_error_with_what_it_wrote() {
        // SAFETY: as above.
        let forked = unsafe {
            Forked::spawn(|w| {
                w.write(b"half");
                false
            })
        }
        .expect("forks");
        match forked.wait(4) {
            Err(ForkError::Failed(why, 4)) => assert_eq!(why, "exit status 1"),
            other => panic!("expected a failure after 4 bytes, got {other:?}"),
        }
    }

    #[test]
    fn dropping_an_unread_child_reaps_it() {
        let big = vec![7u8; 8 << 20];
        // SAFETY: as above.
        let forked = unsafe { Forked::spawn(|w| w.write(&big)) }.expect("forks");
        let pid = forked.pid;
        drop(forked);
        // SAFETY: probing a pid: ESRCH (or a reaped child's absence) once it is gone.
        let gone = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(gone, -1, "the child was reaped by the drop");
    }
}
