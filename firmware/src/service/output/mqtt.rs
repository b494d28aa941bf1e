//! `--mqtt mqtt://[user:pass@]host[:port]`: captions to an MQTT broker, Home Assistant style.
//!
//! * `P/<camera>/caption`: the full JSON record, QoS 1, retained (the sensor's attributes);
//!   `P/<camera>/state`: the caption cut to 255 characters, QoS 1, retained (the sensor's
//!   state). Retained: Home Assistant subscribes about a second after discovery arrives, and
//!   after it restarts the sensor shows the last caption instead of `unknown`.
//! * `P/<camera>/available`: `online` / `offline`, retained; `offline` is also the last will. Per
//!   camera: edgecap is one process per camera, and one stopping must not mark the others away.
//! * `P/<camera>/image`: the captioned frame, a JPEG at most 640 px on its long side, QoS 1,
//!   retained, before its caption (off with `image = false`).
//! * `homeassistant/image/<node>/frame/config`: the image entity's discovery (emptied, which
//!   removes the entity, when `image = false`).
//! * `homeassistant/sensor/<node>/caption/config`: discovery, retained, sent with `online` on
//!   every connect and again whenever `homeassistant/status` says `online` (Home Assistant
//!   restarted). `<node>` is the client id in the characters Home Assistant allows.
//!
//! Delivery: every caption goes into our own bounded drop-oldest buffer and leaves it only when
//! the broker acknowledges it (PUBACK). rumqttc forgets its pending queue on a clean-session
//! reconnect, so each connection uses a fresh client and everything unacknowledged is sent again
//! after reconnecting (at-least-once, as QoS 1 promises). Reconnects back off from 0.5 s to 30 s.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{
    Client, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    TlsError, Transport,
};

use edgecap_engine::error::excerpt;

use super::Sink;
use crate::service::config::limits::MAX_NAME_BYTES;
use crate::service::config::{redact_password, MqttConfig};
use crate::service::log_limit::LogLimit;
use crate::service::queue::DropOldest;
use crate::service::record::CaptionRecord;
use crate::service::stats::Stats;

/// Home Assistant's limit for a sensor state.
pub const MAX_STATE_CHARS: usize = 255;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Captions handed to the client before waiting for acknowledgements.
const MAX_INFLIGHT: usize = 16;
const TICK: Duration = Duration::from_millis(50);
/// How long start-up waits for the broker's first answer.
const START_WAIT: Duration = Duration::from_secs(10);
/// rumqttc's smallest keep-alive; MQTT's largest (a 16-bit field).
const KEEP_ALIVE_MIN_S: u64 = 5;
const KEEP_ALIVE_MAX_S: u64 = 65_535;

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// `mqtts://` (or `ssl://`): TLS, port 8883 by default.
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(raw: &str) -> Result<BrokerUrl> {
        // Errors quote the address without its password.
        let url = &excerpt(&redact_password(raw), 200);
        let (rest, tls) = match raw.split_once("://") {
            Some(("mqtt", rest)) | Some(("tcp", rest)) => (rest, false),
            Some(("mqtts", rest)) | Some(("ssl", rest)) => (rest, true),
            _ => bail!("mqtt url {url:?}: expected mqtt://[user:pass@]host[:port] or mqtts://"),
        };
        let default_port = if tls { 8883 } else { 1883 };
        let rest = rest.trim_end_matches('/');
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_string(), pass.to_string())), hostport)
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h, p.parse::<u16>().with_context(|| format!("mqtt url {url:?}: bad port {p:?}"))?)
            }
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            bail!("mqtt url {url:?}: missing or bad host");
        }
        Ok(BrokerUrl { host: host.to_string(), port, credentials, tls })
    }
}

/// The checks `run` and `check-config` make on the `[mqtt]` section before connecting: every
/// topic edgecap will publish to or subscribe to must be one the broker accepts, since a broker
/// refuses a bad one by closing the connection (every later caption lost) or, for a `$` topic,
/// acknowledges the publish and drops it.
/// Returns the broker to connect to, its URL and TLS files read once here.
pub fn check_config(config: &MqttConfig) -> Result<Broker> {
    topic_part("mqtt prefix", &config.prefix, true)?;
    if !config.discovery_prefix.is_empty() {
        topic_part("mqtt discovery_prefix", &config.discovery_prefix, true)?;
    }
    if let Some(id) = &config.client_id {
        topic_part("mqtt client_id", id, false)?;
    }
    let url = BrokerUrl::parse(&config.url)?;
    let transport = transport(config, &url)?;
    if !(KEEP_ALIVE_MIN_S..=KEEP_ALIVE_MAX_S).contains(&config.keep_alive) {
        bail!(
            "mqtt keep_alive must be from {KEEP_ALIVE_MIN_S} to {KEEP_ALIVE_MAX_S} seconds (MQTT carries it in 16 bits), got {}",
            config.keep_alive
        );
    }
    // The camera name is checked with the rest of the configuration. Parts of at most 256 bytes
    // keep every topic far under MQTT's limit of 65535.
    Ok(Broker { url, transport })
}

/// Where the MQTT output connects, as `check_config` resolved it from the configuration.
pub struct Broker {
    url: BrokerUrl,
    transport: Transport,
}

/// A prefix (`levels`: '/' allowed) or a single topic level: 1 to 256 bytes, none of MQTT's
/// wildcards, no NUL, and not starting with '$' (topics the broker keeps for itself).
fn topic_part(name: &str, value: &str, levels: bool) -> Result<()> {
    let forbidden: &[char] = if levels { &['+', '#', '\0'] } else { &['+', '#', '\0', '/'] };
    let what = if levels { "'+', '#' and NUL" } else { "'/', '+', '#' and NUL" };
    if value.is_empty() || value.len() > MAX_NAME_BYTES || value.contains(forbidden) || value.starts_with('$') {
        bail!(
            "{name} {:?} must be 1 to {MAX_NAME_BYTES} bytes, free of {what}, and not start with '$' (the broker's own topics)",
            excerpt(value, 64)
        );
    }
    Ok(())
}

/// TCP, or TLS with the configured certificates (read and checked here, so that check-config
/// names a bad file).
fn transport(config: &MqttConfig, url: &BrokerUrl) -> Result<Transport> {
    let client = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => bail!("mqtt cert and key go together: give both or neither"),
    };
    if !url.tls {
        if config.ca.is_some() || client.is_some() {
            bail!("mqtt ca, cert and key are for TLS: the url must be mqtts://");
        }
        return Ok(Transport::Tcp);
    }
    let tls = super::tls::client_config(&super::tls::TlsFiles { ca: config.ca.as_deref(), client })?;
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
}

/// The MQTT client id: `client_id`, else `edgecap_<device>_<camera>`, unique per board (two
/// boards left at the default camera name must not take each other's connection over).
fn client_id(config: &MqttConfig, camera: &str) -> String {
    config.client_id.clone().unwrap_or_else(|| format!("edgecap_{}_{}", device_id(), ha_id(camera)))
}

/// This board: the first 12 characters of `/etc/machine-id` (systemd's per-installation id),
/// else the host name, in [`ha_id`]'s characters.
fn device_id() -> String {
    let machine = std::fs::read_to_string("/etc/machine-id").ok().map(|s| s.trim().chars().take(12).collect());
    let id: String = machine
        .filter(|s: &String| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()))
        .unwrap_or_default();
    if id.is_empty() {
        "device".into()
    } else {
        ha_id(&id)
    }
}

/// `name` in the characters Home Assistant allows in node and object ids, `[a-zA-Z0-9_-]`:
/// every other character becomes `_` (`front door` → `front_door`, `Küche` → `K_che`). Its
/// discovery otherwise logs "illegal discovery topic" and creates nothing.
pub fn ha_id(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Topic names, fixed for a run.
#[derive(Clone)]
struct Topics {
    caption: String,
    state: String,
    /// Where the captioned frame goes, if it is sent.
    image: Option<String>,
    image_discovery: Option<String>,
    available: String,
    discovery: Option<String>,
    ha_status: Option<String>,
    node: String,
    camera: String,
}

impl Topics {
    fn new(config: &MqttConfig, camera: &str, client_id: &str) -> Topics {
        let p = &config.prefix;
        let dp = &config.discovery_prefix;
        let ha = !dp.is_empty();
        let node = ha_id(client_id);
        Topics {
            caption: format!("{p}/{camera}/caption"),
            state: format!("{p}/{camera}/state"),
            image: config.image.then(|| format!("{p}/{camera}/image")),
            image_discovery: ha.then(|| format!("{dp}/image/{node}/frame/config")),
            available: format!("{p}/{camera}/available"),
            discovery: ha.then(|| format!("{dp}/sensor/{node}/caption/config")),
            ha_status: ha.then(|| format!("{dp}/status")),
            node,
            camera: camera.to_string(),
        }
    }

    /// Home Assistant's device block, shared by the sensor and the image entity.
    fn device(&self) -> serde_json::Value {
        serde_json::json!({
            "identifiers": [self.node],
            "name": format!("edgecap {}", self.camera),
            "manufacturer": "edgecap",
            "model": "edgecap",
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// The Home Assistant image entity showing the captioned frame; empty (the entity removed)
    /// when no frame is sent.
    fn image_discovery_payload(&self) -> String {
        let Some(image) = &self.image else { return String::new() };
        serde_json::json!({
            "name": "Frame",
            "unique_id": format!("{}_frame", self.node),
            "object_id": format!("{}_frame", self.node),
            "image_topic": image,
            "content_type": "image/jpeg",
            "availability_topic": self.available,
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": 1,
            "device": self.device(),
        })
        .to_string()
    }

    /// The Home Assistant sensor: state = caption (≤255 chars), attributes = the full record.
    fn discovery_payload(&self) -> String {
        serde_json::json!({
            "name": "Caption",
            "unique_id": format!("{}_caption", self.node),
            "object_id": format!("{}_caption", self.node),
            "state_topic": self.state,
            "json_attributes_topic": self.caption,
            "availability_topic": self.available,
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": 1,
            "icon": "mdi:image-text",
            "device": self.device(),
        })
        .to_string()
    }
}

/// The caption cut to Home Assistant's state limit, on a character boundary; none for an empty
/// caption, which would blank the sensor (the record still goes to the attributes topic).
pub fn state_text(caption: &str) -> Option<String> {
    let state: String = caption.trim().chars().take(MAX_STATE_CHARS).collect();
    (!state.is_empty()).then_some(state)
}

struct Shared {
    buffer: Mutex<Buffer>,
}

struct Buffer {
    /// Records without their pictures.
    records: DropOldest<Arc<CaptionRecord>>,
    /// The newest caption's frame, by record id: Home Assistant shows only the latest, so a
    /// buffer of hundreds of captions across an outage holds one picture, not hundreds.
    picture: Option<(u64, Arc<Vec<u8>>)>,
    /// Set by `finish`, with the time by which everything must be done.
    closing: Option<Instant>,
    /// Set by `finish` at its deadline.
    abandon: bool,
}

pub struct Mqtt {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    /// While the broker is away every new caption drops one.
    drops: LogLimit,
}

impl Mqtt {
    pub fn start(config: &MqttConfig, broker: Broker, camera: &str, stats: Arc<Stats>) -> Result<Mqtt> {
        let Broker { url, transport } = broker;
        let node = client_id(config, camera);
        let topics = Topics::new(config, camera, &node);
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                records: DropOldest::new(config.buffer),
                picture: None,
                closing: None,
                abandon: false,
            }),
        });
        let mut options = MqttOptions::new(node.clone(), url.host.clone(), url.port);
        options.set_keep_alive(Duration::from_secs(config.keep_alive));
        options.set_clean_session(true);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        options.set_last_will(LastWill::new(&topics.available, "offline", QoS::AtLeastOnce, true));
        if let Some((user, pass)) = &url.credentials {
            options.set_credentials(user, pass);
        }
        options.set_transport(transport);
        let (started_tx, started) = mpsc::channel();
        let mut link = Link {
            stats: Arc::clone(&stats),
            options,
            topics,
            shared: Arc::clone(&shared),
            conn: None,
            backoff: BACKOFF_MIN,
            started: Some(started_tx),
        };
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || link.run())
            .context("cannot start mqtt thread")?;
        let scheme = if url.tls { "mqtts" } else { "mqtt" };
        let mut mqtt = Mqtt { shared, thread: Some(thread), stats, drops: LogLimit::default() };
        // A broker that refuses us (credentials, certificates, client id) will refuse every
        // retry: stop start-up with the reason. One that is away may come back: go on, buffered.
        match started.recv_timeout(START_WAIT) {
            Ok(Started::Connected) => log::info!("mqtt: connected to {scheme}://{}:{} as {node}", url.host, url.port),
            Ok(Started::Unreachable(e)) => {
                log::warn!(
                    "mqtt: broker {}:{} unreachable: {e}; captions are buffered, retrying with backoff",
                    url.host,
                    url.port
                )
            }
            Ok(Started::Refused(reason)) => {
                mqtt.stop();
                bail!("mqtt: {scheme}://{}:{} refused the connection: {reason}", url.host, url.port);
            }
            Err(_) => log::warn!(
                "mqtt: no answer from {}:{} in {} s; captions are buffered, retrying",
                url.host,
                url.port,
                START_WAIT.as_secs()
            ),
        }
        Ok(mqtt)
    }

    /// Ends the link thread at once, delivering nothing more.
    fn stop(&mut self) {
        self.lock().abandon = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for Mqtt {
    fn send(&mut self, record: &Arc<CaptionRecord>) {
        let mut buffer = self.lock();
        let dropped = match &record.picture {
            Some(picture) => {
                buffer.picture = Some((record.id, Arc::clone(picture)));
                buffer.records.push(Arc::new(CaptionRecord { picture: None, ..(**record).clone() }))
            }
            None => buffer.records.push(Arc::clone(record)),
        };
        drop(buffer);
        if let Some(dropped) = dropped {
            self.stats.mqtt_dropped.inc();
            if let Some(note) = self.drops.check() {
                log::warn!(
                    "mqtt: buffer full while the broker is away; dropped caption {} ({} dropped so far){note}",
                    dropped.id,
                    self.stats.mqtt_dropped.get()
                );
            }
        }
    }

    fn finish(mut self: Box<Self>, deadline: Instant) -> u64 {
        self.lock().closing = Some(deadline);
        // The link delivers what is left, says `offline` and disconnects, then ends; at the
        // deadline it is told to give up, and does at once.
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(TICK);
        }
        let left = {
            let mut buffer = self.lock();
            buffer.abandon = true;
            buffer.records.len() as u64
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if left > 0 {
            self.stats.mqtt_dropped.add(left);
            log::warn!("mqtt: {left} captions undelivered at shutdown");
        }
        left
    }
}

/// One connection: a fresh client, and its event loop on a thread of its own.
struct Conn {
    client: Client,
    events: Receiver<Result<Event, ConnectionError>>,
    connected: bool,
    /// Record id (0 for other messages) of each QoS 1 publish not yet acknowledged, in the
    /// order sent; the broker acknowledges in that order.
    inflight: VecDeque<u64>,
    /// Highest record id handed to this connection.
    last_sent: u64,
}

struct Link {
    stats: Arc<Stats>,
    options: MqttOptions,
    topics: Topics,
    shared: Arc<Shared>,
    conn: Option<Conn>,
    backoff: Duration,
    /// Told how the first connection went, then dropped.
    started: Option<mpsc::Sender<Started>>,
}

/// Why a connection ended, and whether retrying can help.
struct LinkError {
    message: String,
    permanent: Option<String>,
}

impl From<String> for LinkError {
    fn from(message: String) -> LinkError {
        LinkError { message, permanent: None }
    }
}

/// How the first connection went.
enum Started {
    Connected,
    /// Away or not answering: worth retrying.
    Unreachable(String),
    /// Refused for a reason every retry would meet again.
    Refused(String),
}

/// The reason a broker refused us, when retrying cannot help: a refused CONNECT other than
/// "server unavailable", or a TLS handshake that failed on certificates or protocol (not an
/// I/O failure underneath it).
fn permanent(e: &ConnectionError) -> Option<String> {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => Some("bad user name or password (the url's user:pass@)".into()),
            ConnectReturnCode::NotAuthorized => {
                Some("not authorised (the url's user:pass@, or the broker's ACL)".into())
            }
            ConnectReturnCode::BadClientId => Some("client id rejected (client_id)".into()),
            ConnectReturnCode::RefusedProtocolVersion => Some("MQTT 3.1.1 not accepted".into()),
            ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => None,
        },
        ConnectionError::Tls(TlsError::Io(io)) if io.kind() != std::io::ErrorKind::InvalidData => None,
        ConnectionError::Tls(tls) => {
            Some(format!("TLS: {}", edgecap_engine::error::collapse_whitespace(&tls.to_string())))
        }
        // TLS 1.3 finishes the client's side of the handshake before the server checks the
        // client's certificate: its refusal arrives as an alert on the first read.
        other => tls_error(other).map(|tls| format!("TLS: {tls}")),
    }
}

/// The rustls error somewhere in `e`'s chain of causes (an I/O error carries it inside).
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inside_io = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>());
        if inside_io.is_some() {
            return inside_io;
        }
        next = e.source();
    }
    None
}

impl Link {
    fn run(&mut self) {
        let mut retry_at = Instant::now();
        let mut warned = false;
        loop {
            let (closing, abandon, empty) = {
                let b = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
                (b.closing, b.abandon, b.records.is_empty())
            };
            let settled = match &self.conn {
                Some(c) => c.inflight.is_empty(),
                None => true,
            };
            // Past the flush deadline nothing more is sent, not even `offline`: the broker may be
            // what is stuck, and the last will says it when the connection drops.
            if abandon {
                return;
            }
            if let Some(deadline) = closing.filter(|_| empty && settled) {
                self.shutdown(deadline);
                return;
            }
            if self.conn.is_none() {
                if Instant::now() < retry_at {
                    std::thread::sleep(TICK);
                    continue;
                }
                self.conn = Some(self.connect());
            }
            match self.pump() {
                Ok(()) => {}
                Err(e) => {
                    if let Some(started) = self.started.take() {
                        let refused = e.permanent.clone();
                        let _ = started.send(refused.map_or(Started::Unreachable(e.message.clone()), Started::Refused));
                        warned = true; // start() says it
                    } else if let Some(reason) = &e.permanent {
                        if !warned {
                            log::error!("mqtt: the broker refused the connection: {reason}; captions are buffered, retrying with backoff");
                            warned = true;
                        }
                    }
                    if !warned {
                        log::warn!(
                            "mqtt: broker unreachable: {}; captions are buffered, retrying with backoff",
                            e.message
                        );
                        warned = true;
                    }
                    self.conn = None; // drops the client: its thread ends, its pending queue goes
                    retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            if self.conn.as_ref().is_some_and(|c| c.connected) && warned {
                log::info!("mqtt: reconnected");
                warned = false;
            }
        }
    }

    fn connect(&self) -> Conn {
        let (client, mut connection) = Client::new(self.options.clone(), 64);
        let (tx, events) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("mqtt-conn".into()).spawn(move || {
            for event in connection.iter() {
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return; // the link dropped this connection, or it failed: a fresh one comes next
                }
            }
        });
        if let Err(e) = spawned {
            log::error!("mqtt: cannot start connection thread: {e}");
        }
        Conn { client, events, connected: false, inflight: VecDeque::new(), last_sent: 0 }
    }

    /// Handles events for one tick and sends what the buffer holds.
    fn pump(&mut self) -> Result<(), LinkError> {
        let conn = self.conn.as_mut().expect("connected before pumping");
        match conn.events.recv_timeout(TICK) {
            Ok(Ok(event)) => self.on_event(event)?,
            Ok(Err(e)) => return Err(LinkError { message: e.to_string(), permanent: permanent(&e) }),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(String::from("connection closed").into()),
        }
        Ok(self.send_buffered()?)
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("connected");
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                conn.connected = true;
                if let Some(started) = self.started.take() {
                    let _ = started.send(Started::Connected);
                }
                self.backoff = BACKOFF_MIN;
                self.announce(true)?;
            }
            Event::Incoming(Packet::PubAck(_)) => {
                if let Some(id) = conn.inflight.pop_front().filter(|&id| id != 0) {
                    self.stats.mqtt_delivered.inc();
                    let mut b = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
                    // Usually the front; it may already be gone if the buffer overflowed meanwhile.
                    if let Some(pos) = (0..b.records.len()).find(|&i| b.records.get(i).is_some_and(|r| r.id == id)) {
                        b.records.remove(pos);
                    }
                }
            }
            Event::Incoming(Packet::Publish(p))
                if Some(&p.topic) == self.topics.ha_status.as_ref() && &p.payload[..] == b"online" =>
            {
                log::info!("mqtt: Home Assistant is online; announcing the sensor again");
                self.announce(false)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// After connecting, and when Home Assistant restarts: availability and discovery; after
    /// connecting also the Home Assistant status subscription.
    fn announce(&mut self, first: bool) -> Result<(), String> {
        let topics = self.topics.clone();
        let conn = self.conn.as_mut().expect("connected");
        let publish = |conn: &mut Conn, topic: &str, payload: Vec<u8>| -> Result<(), String> {
            conn.client.try_publish(topic, QoS::AtLeastOnce, true, payload).map_err(|e| e.to_string())?;
            conn.inflight.push_back(0);
            Ok(())
        };
        publish(conn, &topics.available, "online".into())?;
        if let Some(discovery) = &topics.discovery {
            publish(conn, discovery, topics.discovery_payload().into())?;
        }
        if let Some(discovery) = &topics.image_discovery {
            publish(conn, discovery, topics.image_discovery_payload().into())?;
        }
        if first {
            if let Some(status) = &topics.ha_status {
                conn.client.try_subscribe(status, QoS::AtLeastOnce).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Hands buffered captions not yet sent on this connection to the client.
    fn send_buffered(&mut self) -> Result<(), String> {
        let Some(conn) = self.conn.as_mut().filter(|c| c.connected) else { return Ok(()) };
        let (next, picture): (Vec<Arc<CaptionRecord>>, _) = {
            let b = self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_INFLIGHT.saturating_sub(conn.inflight.len());
            let next = (0..b.records.len())
                .filter_map(|i| b.records.get(i))
                .filter(|r| r.id > conn.last_sent)
                .take(room)
                .cloned()
                .collect();
            (next, b.picture.clone())
        };
        for record in next {
            // The picture and state first: their acknowledgements carry no record, the
            // caption's removes it.
            let frame = picture.as_ref().filter(|(id, _)| *id == record.id);
            if let (Some(topic), Some((_, frame))) = (&self.topics.image, frame) {
                conn.client.try_publish(topic, QoS::AtLeastOnce, true, frame.as_slice()).map_err(|e| e.to_string())?;
                conn.inflight.push_back(0);
            }
            if let Some(state) = state_text(&record.caption) {
                conn.client
                    .try_publish(&self.topics.state, QoS::AtLeastOnce, true, state)
                    .map_err(|e| e.to_string())?;
                conn.inflight.push_back(0);
            }
            conn.client
                .try_publish(&self.topics.caption, QoS::AtLeastOnce, true, record.json())
                .map_err(|e| e.to_string())?;
            conn.inflight.push_back(record.id);
            conn.last_sent = record.id;
        }
        Ok(())
    }

    /// Publishes `offline` (retained) and disconnects cleanly, so the will is not needed.
    /// Within `deadline` (the flush timeout's), and 2 s at most for the acknowledgement.
    fn shutdown(&mut self, deadline: Instant) {
        let Some(conn) = self.conn.as_mut().filter(|c| c.connected) else { return };
        if conn.client.try_publish(&self.topics.available, QoS::AtLeastOnce, true, "offline").is_err() {
            return;
        }
        conn.inflight.push_back(0);
        let acked_by = deadline.min(Instant::now() + Duration::from_secs(2));
        while !conn.inflight.is_empty() && Instant::now() < acked_by {
            match conn.events.recv_timeout(TICK) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                    conn.inflight.pop_front();
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
        let _ = conn.client.try_disconnect();
        // Let the event loop send DISCONNECT before the client is dropped.
        let sent_by = deadline.min(Instant::now() + Duration::from_millis(500));
        while let Ok(Ok(event)) = conn.events.recv_timeout(sent_by.saturating_duration_since(Instant::now())) {
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ha_id, redact_password, state_text, BrokerUrl};

    #[test]
    fn parses_broker_urls() {
        let plain = BrokerUrl::parse("mqtt://127.0.0.1:18830").unwrap();
        assert_eq!(plain, BrokerUrl { host: "127.0.0.1".into(), port: 18830, credentials: None, tls: false });
        let auth = BrokerUrl::parse("mqtt://ha:s3cret@homeassistant.local").unwrap();
        assert_eq!((auth.host.as_str(), auth.port), ("homeassistant.local", 1883));
        assert_eq!(auth.credentials, Some(("ha".into(), "s3cret".into())));
        let tls = BrokerUrl::parse("mqtts://broker.example").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert!(!plain.tls);
        for bad in ["http://x:1", "mqtt://:1883", "mqtt://host:port", "mqtts://", "host:1883"] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_and_printed_urls_keep_the_password_out() {
        let err = BrokerUrl::parse("mqtt://ha:s3cret@host:port").unwrap_err().to_string();
        assert!(err.contains("mqtt://ha:***@host:port") && !err.contains("s3cret"), "{err}");
        assert_eq!(redact_password("mqtt://ha:s3cret@host:1883"), "mqtt://ha:***@host:1883");
        assert_eq!(redact_password("mqtt://ha@host"), "mqtt://ha@host");
        assert_eq!(redact_password("mqtt://host:1883"), "mqtt://host:1883");
    }

    #[test]
    fn state_is_cut_to_255_characters_on_a_character_boundary() {
        let long = "é".repeat(300);
        assert_eq!(state_text(&long).unwrap().chars().count(), 255);
        assert_eq!(state_text("a dog.").as_deref(), Some("a dog."));
        assert_eq!(state_text(""), None);
        assert_eq!(state_text("  "), None);
    }

    #[test]
    fn home_assistant_ids_keep_only_the_characters_it_allows() {
        assert_eq!(ha_id("front door"), "front_door");
        assert_eq!(ha_id("garage.1"), "garage_1");
        assert_eq!(ha_id("Küche"), "K_che");
        assert_eq!(ha_id("cam-2_b"), "cam-2_b");
    }
}
