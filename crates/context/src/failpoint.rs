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

/// Wait here while a test acts, if the pause `name` is switched on: with `LIFEBOAT_PAUSES`
/// naming it and `LIFEBOAT_PAUSE_DIR` a directory, write `DIR/name.reached` and wait (up to two
/// minutes) for `DIR/name.go`. Like [`hit`], only in debug builds or with `failpoints`.
pub fn pause(name: &str) {
    #[cfg(any(debug_assertions, feature = "failpoints"))]
    if std::env::var("LIFEBOAT_PAUSES").is_ok_and(|v| v.split(',').any(|p| p.trim() == name)) {
        if let Ok(dir) = std::env::var("LIFEBOAT_PAUSE_DIR") {
            let dir = std::path::Path::new(&dir);
            eprintln!("{{\"event\":\"pause\",\"name\":\"{name}\"}}");
            let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
            let go = dir.join(format!("{name}.go"));
            let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !go.exists() && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    #[cfg(not(any(debug_assertions, feature = "failpoints")))]
    let _ = name;
}
