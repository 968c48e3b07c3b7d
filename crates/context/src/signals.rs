//! SIGINT/SIGTERM handled on one thread, for commands that must clean up (a restore sandbox)
//! or shut down gracefully (the daemon).

/// Block SIGINT and SIGTERM for this thread and every thread created after (they inherit the
/// mask; child processes do not: std resets it on spawn), and run `then` on a dedicated thread
/// when one arrives. Call before creating other threads.
pub fn on_termination(then: impl FnOnce() + Send + 'static) {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for the calling thread;
    // the waiting thread only calls sigwait on that set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            then();
        });
    }
}
