//! The only module with `unsafe`: thin, safe wrappers over the few system calls std, socket2 and
//! monoio do not offer. Each block says why it is sound; every caller stays safe code.

use std::io;
use std::os::fd::RawFd;

/// Shut the write side of a socket (the peer reads EOF after what was sent).
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown(2) takes a descriptor and a flag, no memory; a stale or wrong descriptor
    // only makes it fail with EBADF/ENOTSOCK, which is ignored (the connection closes anyway).
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// `sendfile(2)` of up to `count` bytes from `file` at `*offset` to `sock`, advancing `offset`.
pub fn sendfile(
    sock: RawFd,
    file: RawFd,
    offset: &mut libc::off_t,
    count: usize,
) -> io::Result<usize> {
    // SAFETY: `offset` is a valid, exclusive pointer for the duration of the call; the
    // descriptors are only read by the kernel, which reports bad ones through errno.
    let n = unsafe { libc::sendfile(sock, file, offset, count) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sets `O_NONBLOCK` on a descriptor and restores the previous flags when dropped.
pub struct NonBlocking {
    fd: RawFd,
    old: i32,
}

impl NonBlocking {
    pub fn set(fd: RawFd) -> io::Result<Self> {
        // SAFETY: fcntl(F_GETFL) passes no memory; failures are reported through errno.
        let old = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if old < 0 {
            return Err(io::Error::last_os_error());
        }
        if old & libc::O_NONBLOCK == 0 {
            // SAFETY: fcntl(F_SETFL) with an integer argument passes no memory.
            let set = unsafe { libc::fcntl(fd, libc::F_SETFL, old | libc::O_NONBLOCK) };
            if set < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(NonBlocking { fd, old })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if self.old & libc::O_NONBLOCK == 0 {
            // SAFETY: as in `set`: an integer argument, no memory.
            unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.old) };
        }
    }
}

/// Raise the soft open-file limit to the hard limit (connections and blob files need descriptors).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed, which lives on this stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Queue writeback of `len` bytes at `start` of `fd` without waiting (`SYNC_FILE_RANGE_WRITE`);
/// only a hint, so a failure is ignored.
pub fn start_writeback(fd: RawFd, start: u64, len: u64) {
    // SAFETY: sync_file_range(2) takes a descriptor and integers, no memory.
    unsafe {
        libc::sync_file_range(
            fd,
            start as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Take an exclusive `flock` on `fd` without waiting; `WouldBlock` if another process holds it.
pub fn try_lock_exclusive(fd: RawFd) -> io::Result<()> {
    // SAFETY: flock(2) takes a descriptor and flags, no memory.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hand this thread's freed mimalloc pages back to the kernel.
pub fn return_freed_pages() {
    // SAFETY: mi_collect only walks this thread's heap; no pointers are passed.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
