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

/// Keep the process on 4 KiB pages (`PR_SET_THP_DISABLE`). mimalloc asks for transparent huge
/// pages on its arenas; each touch of a new 2 MiB region then faults in and zeroes a whole huge
/// page, so a server that touches a few KiB here and there sits on megabytes: measured, peak RSS
/// through the k6 push, chunked push and 1 MiB pull rows 83 MiB with huge pages, 48 MiB without
/// (docs/performance.md). Best effort: a kernel without the flag keeps its default.
pub fn disable_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) takes integers only and sets a flag on the
    // calling process's memory map.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Hand this thread's freed mimalloc pages back to the kernel.
pub fn return_freed_pages() {
    // SAFETY: mi_collect only walks this thread's heap; no pointers are passed.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Open `path` only if the kernel can do it without I/O: every path component in the dentry cache
/// (`openat2` with `RESOLVE_CACHED`, Linux ≥ 5.12). `WouldBlock` when the lookup needs the disk
/// (or the kernel lacks the flag): the caller takes a blocking thread instead. `NotFound` from a
/// cached negative entry is a real answer. `flags` are `open(2)` flags (`O_CLOEXEC` is added).
pub fn open_cached(path: &std::path::Path, flags: i32) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: zeroed is a valid `open_how` (all integers); its fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: `c` is a NUL-terminated string and `how` a valid struct of the size passed, both
    // alive for the call; the kernel returns a new descriptor we then own, or -1 and errno.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            // EAGAIN: not all cached; ENOSYS/EINVAL: no openat2 or no RESOLVE_CACHED here.
            Some(libc::EAGAIN | libc::ENOSYS | libc::EINVAL | libc::E2BIG) => {
                io::Error::from(io::ErrorKind::WouldBlock)
            }
            _ => e,
        });
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as RawFd) })
}

/// Read `buf.len()` bytes at `offset` from the page cache only (`preadv2` with `RWF_NOWAIT`);
/// `WouldBlock` if any of it would need the disk, `UnexpectedEof` if the file is shorter.
pub fn read_exact_cached(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::other("offset too large"))?;
        // SAFETY: `iov` points into `buf[done..]`, valid and exclusively borrowed for the call,
        // with its exact remaining length; the kernel writes at most that much.
        let n = unsafe { libc::preadv2(fd, &iov, 1, at, libc::RWF_NOWAIT) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// Whether all of `fd`'s bytes `[offset, offset + len)` sit in the page cache (`cachestat(2)`);
/// `None` when the kernel cannot say (no `cachestat`, Linux before 6.5).
pub fn all_cached(fd: RawFd, offset: u64, len: u64) -> Option<bool> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number on every architecture (the generic syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    if len == 0 {
        return Some(true);
    }
    // SAFETY: sysconf reads a constant.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (first, last) = (offset / page, (offset + len - 1) / page);
    let range = Range {
        off: first * page,
        len: (last - first + 1) * page,
    };
    let mut stat = Stat::default();
    // SAFETY: `range` and `stat` are valid `cachestat_range` / `cachestat` structs alive for
    // the call; the kernel reads the one and writes the other, or fails with errno.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    (r == 0).then_some(stat.nr_cache > last - first)
}

/// Lower (or raise) the calling thread's CPU priority (Linux: `nice` is per thread).
pub fn set_thread_nice(nice: i32) -> bool {
    // SAFETY: setpriority with who = 0 changes only the calling thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}
