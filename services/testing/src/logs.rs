//! Log capture: what the process logs, kept for a test to read.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

/// Every line the process's subscriber writes. The subscriber is
/// process-wide, and nextest runs each test in a process of its own, so a
/// test that captures sees its own servers' lines only.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Installs the process's subscriber, writing every event at `level`
    /// and above, of every crate, into the capture (plain text, no colour).
    pub fn install(level: tracing::Level) -> Self {
        let captured = Self::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init()
            .expect("no other subscriber is installed in this test process");
        captured
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("the capture")).into_owned()
    }
}
