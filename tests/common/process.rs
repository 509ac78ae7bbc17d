//! A child process bounded in time, with its output in a log file (the Python interop client,
//! pip, the API tour's bash).

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How much of a failed command's output a message quotes.
pub const LOG_TAIL_BYTES_MAX: usize = 4_000;
const POLL_INTERVAL_MS: u64 = 50;

/// The last `LOG_TAIL_BYTES_MAX` bytes of a log file, for failure messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(LOG_TAIL_BYTES_MAX);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_string()
}

/// Runs `cmd` with stdout and stderr into `log`, killed after `timeout_ms`. Ok: the log's tail;
/// Err: what ran, its status and the log's tail.
pub fn run_bounded(cmd: &mut Command, log: &Path, timeout_ms: u64) -> Result<String, String> {
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("clone {}: {e}", log.display()))?;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        match child.try_wait().map_err(|e| format!("wait for {what}: {e}"))? {
            Some(status) if status.success() => return Ok(log_tail(log)),
            Some(status) => return Err(format!("{what} exited {status}:\n{}", log_tail(log))),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} timed out after {timeout_ms} ms:\n{}", log_tail(log)));
            }
            None => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
        }
    }
}
