//! Failpoints: named places where a test can make the process die as if `kill -9`ed, to prove
//! that a daemon killed in the middle of a failover resumes it cleanly. Active only in debug
//! builds or with the `failpoints` feature, and only when `LIFEBOAT_FAILPOINTS` (a comma-separated
//! list of names) names the point; release builds compile them to nothing.

/// Die here, without unwinding or cleanup, if the failpoint `name` is switched on.
pub fn hit(name: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    if std::env::var("LIFEBOAT_FAILPOINTS").is_ok_and(|v| v.split(',').any(|p| p.trim() == name)) {
        eprintln!("{{\"event\":\"failpoint\",\"name\":\"{name}\"}}");
        // SAFETY: plain libc calls; SIGKILL ends the process at once, as the test wants.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(any(debug_assertions, feature = "failpoints")))]
    let _ = name;
}
