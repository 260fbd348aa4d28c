//! The daemons' async runtime, sized by their `runtime_threads` setting.
//!
//! Tokio's default is one thread per CPU, which suits a process that has the machine to
//! itself. Drover's never do: a worker shares its host with the jobs it runs, a coordinator
//! usually with PostgreSQL. Each message then wakes a thread that competes with them, and on
//! two cores a coordinator and its workers with one runtime thread each used 15 % less CPU
//! per job than with two (BENCHMARKS.md, session 12). So the default is half the CPUs.

/// A multi-threaded runtime with [`runtime_threads`]`(setting, cpus)` worker threads and
/// every driver (I/O, time) enabled.
pub fn build(setting: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads(setting, cpus))
        .enable_all()
        .build()
}

/// The most a `runtime_threads` setting may ask for.
pub const MAX_RUNTIME_THREADS: usize = 1024;

/// The runtime threads for a `runtime_threads` setting on a machine with `cpus` CPUs:
/// the setting itself, or for 0 (automatic) half the CPUs, at least one.
pub fn runtime_threads(setting: usize, cpus: usize) -> usize {
    if setting > 0 {
        setting
    } else {
        (cpus / 2).max(1)
    }
}

/// Checks a `runtime_threads` setting; the error names `key`.
pub fn check_runtime_threads(key: &str, setting: usize) -> Result<(), String> {
    if setting > MAX_RUNTIME_THREADS {
        return Err(format!(
            "{key}: {setting} is more than {MAX_RUNTIME_THREADS}; 0 means half the CPUs"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_is_half_the_cpus_and_never_none() {
        assert_eq!(runtime_threads(0, 1), 1);
        assert_eq!(runtime_threads(0, 2), 1);
        assert_eq!(runtime_threads(0, 3), 1);
        assert_eq!(runtime_threads(0, 16), 8);
        assert_eq!(runtime_threads(3, 2), 3);
    }

    #[test]
    fn too_many_is_refused_with_the_key() {
        assert!(check_runtime_threads("runtime_threads", 1024).is_ok());
        let e = check_runtime_threads("runtime_threads", 1025).unwrap_err();
        assert!(e.starts_with("runtime_threads: 1025"), "{e}");
    }
}
