//! The agent's YAML configuration file and humane durations.
//!
//! The YAML parser (`config::file::parse`) is private and is only reached through
//! `AgentConfig::from_args`, which reads the `--config` file. So the harness writes the input to a
//! scratch file and calls `from_args` with it, exactly as `rolomesh agent --config` does. (On Linux the
//! scratch file is unlinked at once and named as `/proc/self/fd/N`, so fuzzing leaves no files behind.) The
//! `--secret-file` flag (flags win over the file) points at a path that does not exist: validation then
//! checks every field of the file but stops at reading the secret, before any name resolution (no DNS, no
//! reads of paths the input names). Every outcome must be a one-line error, and "cannot read the file"
//! only for non-UTF-8 input.
//!
//! Inputs whose first byte is odd go to `config::parse_duration` instead.

#![no_main]

use std::fs::File;
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use agent::config::{AgentConfig, Args, ConfigError, parse_duration};
use libfuzzer_sys::fuzz_target;

/// The scratch file (kept open) and the path `from_args` reads it by.
fn scratch() -> &'static Mutex<(File, PathBuf)> {
    static SCRATCH: OnceLock<Mutex<(File, PathBuf)>> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let named = std::env::temp_dir().join(format!("rolomesh-fuzz-config-{}.yaml", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&named)
            .expect("create scratch config");
        let path = if cfg!(target_os = "linux") {
            use std::os::fd::AsRawFd;
            let _ = std::fs::remove_file(&named);
            PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
        } else {
            named
        };
        Mutex::new((file, path))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 1 {
        if let Ok(s) = std::str::from_utf8(rest)
            && let Ok(d) = parse_duration(s)
        {
            // Whole milliseconds print and parse back to the same value.
            if d.subsec_nanos() % 1_000_000 == 0 && d.as_millis() <= u128::from(u64::MAX) {
                assert_eq!(parse_duration(&format!("{}ms", d.as_millis())), Ok(d), "{s:?}");
            }
        }
        return;
    }
    let path = {
        let mut guard = scratch().lock().unwrap_or_else(|e| e.into_inner());
        let (file, path) = &mut *guard;
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(rest))
            .expect("write scratch");
        path.clone()
    };
    let args = Args {
        config: Some(path),
        secret_file: Some(PathBuf::from("/nonexistent/rolomesh-fuzz/secret")),
        ..Args::default()
    };
    match AgentConfig::from_args(args) {
        Ok(cfg) => panic!("accepted without a secret: {cfg:?}"),
        Err(ConfigError::ReadFile { reason, .. }) => {
            // Only non-UTF-8 or over-long files are refused at read time.
            let readable = std::str::from_utf8(rest).is_ok() && rest.len() <= 1 << 20;
            assert!(!readable, "could not read the scratch config: {reason}");
        }
        Err(ConfigError::Resolve { spec, .. }) => panic!("resolved {spec:?} before reading the secret"),
        Err(e) => {
            // Errors are one line (they go to logs and terminals).
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
        }
    }
});
