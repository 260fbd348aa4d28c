//! The bench binary's own helper modes, run as jobs (and directly, for the machine's
//! figures). They are dispatched before any argument parsing or runtime start-up, so
//! `stamp` measures process start as closely as a program can.

use std::io::Write;
use std::process::ExitCode;

/// Current unix time in nanoseconds.
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// `drover-bench stamp`: prints the unix time in ns at which this process started running.
pub fn stamp() -> ExitCode {
    let t = now_ns();
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{t}").and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Length of one generated line, newline included.
const LINE: usize = 4096;
/// Lines are written in blocks of this many bytes (a whole number of lines).
const BLOCK: usize = 256 * LINE;

/// `drover-bench spew BYTES`: writes exactly BYTES bytes to stdout: a stamp line (as
/// `stamp`), then 4 KiB lines of text. The text is pseudo-random letters and digits, so
/// PostgreSQL cannot compress it away: the figure is for bytes really stored.
pub fn spew(arg: Option<std::ffi::OsString>) -> ExitCode {
    let t = now_ns();
    let Some(total) = arg
        .as_deref()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<u64>().ok())
    else {
        eprintln!("usage: drover-bench spew BYTES");
        return ExitCode::from(2);
    };
    match write_spew(t, total) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-bench spew: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_spew(t: i128, total: u64) -> std::io::Result<()> {
    // Stdout is line-buffered, but a write_all of whole lines goes straight to the fd.
    let mut out = std::io::stdout().lock();
    let head = format!("{t}\n");
    let head = &head.as_bytes()[..head.len().min(total as usize)];
    out.write_all(head)?;
    let mut left = total - head.len() as u64;
    // Small outputs (the soak's 8 KiB) get a small block: generating a whole 1 MiB block
    // for them cost a few ms of CPU per job, more than the rest of the job together.
    let block_len = (left as usize).div_ceil(LINE).clamp(1, BLOCK / LINE) * LINE;

    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let pool: Vec<u8> = (0..block_len + LINE)
        .map(|_| {
            // xorshift64: cheap, and enough entropy that LZ compression finds nothing.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x >> 58) as usize]
        })
        .collect();
    let mut block = vec![0u8; block_len];
    let mut line_no: u64 = 0;
    while left > 0 {
        for line in block.chunks_mut(LINE) {
            let off = ((line_no.wrapping_mul(7919)) % block_len as u64) as usize;
            line.copy_from_slice(&pool[off..off + LINE]);
            let n = format!("{line_no:012} ");
            line[..n.len()].copy_from_slice(n.as_bytes());
            line[LINE - 1] = b'\n';
            line_no += 1;
        }
        let n = left.min(block_len as u64) as usize;
        if n < block_len {
            block[n - 1] = b'\n';
        }
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}
