//! A guest's stdout and stderr: captured per invocation (bounded by the
//! plugin's log cap), then written to the plugin's log a line at a time, and
//! the tail of stderr kept to explain a trap (a Python traceback, a Rust
//! panic message, an uncaught JavaScript error).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::sync::lock;

/// The most of stderr's end kept to explain a failure, bytes.
pub const FAILURE_TAIL: usize = 2048;

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One captured stream. Writes never fail: past `cap` bytes they are
/// counted and dropped, so a chatty guest cannot trap itself by printing.
#[derive(Debug, Clone)]
pub struct Capture {
    inner: Arc<Mutex<Captured>>,
    cap: usize,
}

impl Capture {
    /// A stream keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Capture {
        Capture {
            inner: Arc::default(),
            cap,
        }
    }

    fn push(&self, buf: &[u8]) {
        let mut c = lock(&self.inner);
        let room = self.cap.saturating_sub(c.bytes.len()).min(buf.len());
        c.bytes.extend_from_slice(&buf[..room]);
        c.dropped += buf.len() - room;
    }

    /// Takes what was written so far: its complete lines (lossy UTF-8, a
    /// trailing partial line included) and how many bytes were dropped.
    pub fn take(&self) -> (Vec<String>, usize) {
        let mut c = lock(&self.inner);
        if c.bytes.is_empty() && c.dropped == 0 {
            return (Vec::new(), 0);
        }
        let bytes = std::mem::take(&mut c.bytes);
        let dropped = std::mem::take(&mut c.dropped);
        let text = String::from_utf8_lossy(&bytes);
        let lines = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        (lines, dropped)
    }
}

/// The last `max` bytes of `lines` joined by newlines, cut at a character
/// boundary; `None` if there is nothing.
pub fn tail(lines: &[String], max: usize) -> Option<String> {
    let joined = lines.join("\n");
    if joined.trim().is_empty() {
        return None;
    }
    if joined.len() <= max {
        return Some(joined);
    }
    let mut start = joined.len() - max;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    Some(format!("…{}", &joined[start..]))
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_cap_is_counted_not_kept() {
        let c = Capture::new(10);
        c.push(b"hello\nwor");
        c.push(b"ld and more");
        let (lines, dropped) = c.take();
        assert_eq!(lines, vec!["hello", "worl"]);
        assert_eq!(dropped, 10);
        assert_eq!(c.take(), (vec![], 0));
    }

    #[test]
    fn the_tail_is_cut_at_a_character_boundary() {
        let lines = vec!["Traceback (most recent call last):".to_string(), "ValueError: héllo".to_string()];
        assert_eq!(tail(&lines, 4096).unwrap(), lines.join("\n"));
        let t = tail(&lines, 5).unwrap();
        assert!(t.starts_with('…') && t.ends_with("llo"), "{t}");
        assert_eq!(tail(&[], 10), None);
    }
}
