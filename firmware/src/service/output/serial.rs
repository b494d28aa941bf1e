//! `--serial DEV --baud N`: one JSON line per caption. The port is opened lazily and reopened
//! after it vanishes (USB unplugged, gadget reset); lines written while it is away wait in a
//! bounded buffer.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Sink;
use crate::service::config::SerialConfig;
use crate::service::log_limit::LogLimit;
use crate::service::queue::DropOldest;
use crate::service::record::CaptionRecord;
use crate::service::stats::Stats;

const RETRY: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    queue: Mutex<State>,
    changed: Condvar,
}

struct State {
    lines: DropOldest<String>,
    closing: bool,
    /// Set by `finish` when its deadline passes: give up on what is left.
    abandon: bool,
}

pub struct Serial {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    /// While the port is away every new caption drops one.
    drops: LogLimit,
}

impl Serial {
    pub fn start(config: &SerialConfig, stats: Arc<Stats>) -> std::io::Result<Serial> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(State { lines: DropOldest::new(config.queue), closing: false, abandon: false }),
            changed: Condvar::new(),
        });
        let port = first_open(config)?;
        let warned = port.is_none();
        let mut writer =
            Writer { stats: Arc::clone(&stats), device: config.device.clone(), baud: config.baud, port, warned };
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("serial".into()).spawn(move || writer.run(&worker))?;
        Ok(Serial { shared, thread: Some(thread), stats, drops: LogLimit::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for Serial {
    fn send(&mut self, record: &Arc<CaptionRecord>) {
        let dropped = self.lock().lines.push(record.json() + "\n");
        if dropped.is_some() {
            self.stats.serial_dropped.inc();
            if let Some(note) = self.drops.check() {
                log::warn!(
                    "serial: buffer full, dropped the oldest caption ({} dropped so far){note}",
                    self.stats.serial_dropped.get()
                );
            }
        }
        self.shared.changed.notify_all();
    }

    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        self.lock().closing = true;
        self.shared.changed.notify_all();
        let mut state = self.lock();
        while !state.lines.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        let left = state.lines.len() as u64;
        state.abandon = true;
        drop(state);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if left > 0 {
            self.stats.serial_dropped.add(left);
            log::warn!("serial: {left} captions undelivered at shutdown");
        }
        left
    }
}

/// The port at start. Absent (a USB adapter not plugged in yet) is worth waiting for; present
/// but not a character device, or one this user may not open (not in the `dialout` group), will
/// fail every retry: start-up stops with the reason.
fn first_open(config: &SerialConfig) -> std::io::Result<Option<Box<dyn serialport::SerialPort>>> {
    use std::os::unix::fs::FileTypeExt;
    let device = &config.device;
    match serialport::new(device.to_string_lossy(), config.baud).timeout(WRITE_TIMEOUT).open() {
        Ok(port) => Ok(Some(port)),
        Err(e) => match std::fs::metadata(device) {
            Ok(meta) if !meta.file_type().is_char_device() => Err(std::io::Error::other(format!(
                "not a serial device (a character device such as /dev/ttyUSB0): {e}"
            ))),
            Ok(_) if matches!(e.kind(), serialport::ErrorKind::Io(std::io::ErrorKind::PermissionDenied)) => {
                Err(std::io::Error::other(format!("{e} (is the user in the dialout group?)")))
            }
            _ => {
                log::warn!("serial: cannot open {}: {e}; retrying every {}s", device.display(), RETRY.as_secs());
                Ok(None)
            }
        },
    }
}

struct Writer {
    stats: Arc<Stats>,
    device: PathBuf,
    baud: u32,
    port: Option<Box<dyn serialport::SerialPort>>,
    /// The port's absence is logged once per outage.
    warned: bool,
}

impl Writer {
    fn run(&mut self, shared: &Shared) {
        loop {
            let line = {
                let mut state = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if state.abandon || (state.closing && state.lines.is_empty()) {
                        return;
                    }
                    if let Some(front) = state.lines.front() {
                        break front.clone();
                    }
                    state = shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            if self.write(&line) {
                self.stats.serial_delivered.inc();
                let mut state = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                // The front may have been dropped meanwhile (buffer full): pop only our line.
                if state.lines.front() == Some(&line) {
                    state.lines.pop();
                }
                shared.changed.notify_all();
            } else {
                self.wait(shared, RETRY);
            }
        }
    }

    /// Writes one line, (re)opening the port first if needed. False if it did not go out.
    fn write(&mut self, line: &str) -> bool {
        if self.port.is_none() {
            match serialport::new(self.device.to_string_lossy(), self.baud).timeout(WRITE_TIMEOUT).open() {
                Ok(port) => {
                    log::info!("serial: {} open at {} baud", self.device.display(), self.baud);
                    self.port = Some(port);
                    self.warned = false;
                }
                Err(e) => {
                    if !self.warned {
                        log::warn!(
                            "serial: cannot open {}: {e}; retrying every {}s",
                            self.device.display(),
                            RETRY.as_secs()
                        );
                        self.warned = true;
                    }
                    return false;
                }
            }
        }
        let port = self.port.as_mut().expect("opened above");
        match port.write_all(line.as_bytes()).and_then(|_| port.flush()) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("serial: {} lost: {e}; reopening", self.device.display());
                self.port = None;
                self.warned = true;
                false
            }
        }
    }

    /// Sleeps up to `d`, returning early when the service is shutting down.
    fn wait(&self, shared: &Shared, d: Duration) {
        let state = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !state.abandon {
            let _ = shared.changed.wait_timeout(state, d);
        }
    }
}
