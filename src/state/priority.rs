//! Thread priority for background work that must never delay a request (the ledger's WAL checkpoints).

/// Puts the calling thread in Linux's `SCHED_IDLE` class: it runs only when its core has nothing else to run,
/// and a request's thread preempts it on wake-up. Elsewhere, or if refused, the thread keeps its priority.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn lowest_for_this_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler(0, ...)` changes the calling thread's policy; `param` is a valid, initialised
    // `sched_param` that outlives the call. No memory is shared with the kernel after it returns.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not lower the ledger checkpointer's priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub fn lowest_for_this_thread() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_calling_thread_moves_to_sched_idle() {
        std::thread::spawn(|| {
            super::lowest_for_this_thread();
            let stat = std::fs::read_to_string("/proc/thread-self/sched").unwrap();
            // `policy : 5` is SCHED_IDLE.
            let policy = stat
                .lines()
                .find(|l| l.starts_with("policy"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim);
            assert_eq!(policy, Some("5"), "{stat}");
        })
        .join()
        .unwrap();
    }
}
