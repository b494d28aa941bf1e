//! `edgecap run` end to end with real parts: a Mosquitto broker on a loopback port, a serial line
//! through a socat pseudo-terminal pair, folders and stdin fed while the service runs, and a
//! memory soak. Mosquitto and socat come from Debian (scripts/test.sh installs them).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgecap_tests::{binary, fixtures, image, tiny_bundle};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

fn bundle() -> &'static Path {
    tiny_bundle()
}

const PHOTOS: [&str; 5] = ["astronaut.jpg", "chelsea.png", "coffee.webp", "rocket.bmp", "camera_gray.png"];

/// `edgecap run --bundle <tiny> --max-tokens 5 ARGS`, stdout and stderr piped.
fn edgecap(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("edgecap"));
    cmd.arg("run").arg("--bundle").arg(bundle()).args(["--max-tokens", "5"]).args(args);
    cmd.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs to completion; returns (exit code, stdout JSON records, stderr).
fn finish(child: Child) -> (Option<i32>, Vec<Value>, String) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let records = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    (out.status.code(), records, stderr)
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").args(["-s", name, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -s {name}");
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of a child's stdout, collected on a thread.
fn collect_lines(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => return,
            }
        }
    });
    lines
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn stat(stderr: &str, key: &str) -> u64 {
    let summary =
        stderr.lines().find(|l| l.contains("edgecap: stopped:")).unwrap_or_else(|| panic!("no summary: {stderr}"));
    let field = summary.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).expect("field");
    field.parse().unwrap()
}

/// A Mosquitto broker on a free loopback port, with persistence so that a restart keeps the
/// test subscriber's session (and the messages queued for it).
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More listeners (mosquitto.conf lines), each with its own settings.
    listeners: String,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with("")
    }

    /// With `listeners` after the plain anonymous one (the test subscriber's).
    fn start_with(listeners: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker { port: free_port(), dir, child: None, listeners: listeners.to_string() };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        // Started as root, mosquitto drops to its own user, which must be able to save its
        // database (the subscriber's session) on shutdown.
        let db = self.dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let text = format!(
            "per_listener_settings true\npersistence true\npersistence_location {}/\nlistener {} 127.0.0.1\nallow_anonymous true\n{}",
            db.display(),
            self.port,
            self.listeners
        );
        std::fs::write(&conf, text).unwrap();
        let exe =
            ["/usr/sbin/mosquitto", "mosquitto"].into_iter().find(|p| !p.starts_with('/') || Path::new(p).exists());
        let child = Command::new(exe.unwrap())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// SIGTERM (mosquitto saves its sessions) and wait.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Clone, Debug)]
struct Message {
    topic: String,
    payload: String,
    bytes: Vec<u8>,
    retain: bool,
}

/// A rumqttc subscriber with a persistent session, reconnecting on its own.
struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
    client: Client,
}

impl Subscriber {
    fn connect(broker: &Broker, filters: &[&str]) -> Subscriber {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut options = MqttOptions::new(format!("test-sub-{}-{n}", broker.port), "127.0.0.1", broker.port);
        // Room for the captioned frames (rumqttc's default refuses packets over 10 KiB).
        options.set_clean_session(false).set_keep_alive(Duration::from_secs(5)).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 16);
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).unwrap();
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        let subscribed = Arc::new(Mutex::new(0usize));
        let acks = Arc::clone(&subscribed);
        std::thread::spawn(move || loop {
            match connection.recv() {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => sink.lock().unwrap().push(Message {
                    topic: p.topic.clone(),
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                    bytes: p.payload.to_vec(),
                    retain: p.retain,
                }),
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => *acks.lock().unwrap() += 1,
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)), // broker away: retry
                Err(_) => return,
            }
        });
        wait_until("subscriptions", Duration::from_secs(10), || *subscribed.lock().unwrap() == filters.len());
        Subscriber { messages, client }
    }

    fn on(&self, topic: &str) -> Vec<Message> {
        self.messages.lock().unwrap().iter().filter(|m| m.topic == topic).cloned().collect()
    }

    /// Caption records by id (a QoS 1 redelivery may repeat one).
    fn captions(&self, topic: &str) -> BTreeMap<u64, Value> {
        self.on(topic)
            .iter()
            .map(|m| serde_json::from_str::<Value>(&m.payload).unwrap())
            .map(|v| (v["id"].as_u64().unwrap(), v))
            .collect()
    }
}

/// A socat pseudo-terminal pair: edgecap writes to `device`, the test reads `peer`.
struct PtyPair {
    device: PathBuf,
    peer: PathBuf,
    child: Option<Child>,
}

impl PtyPair {
    fn start(dir: &Path) -> PtyPair {
        let mut pair = PtyPair { device: dir.join("ttyEDGECAP"), peer: dir.join("ttyPEER"), child: None };
        pair.spawn();
        pair
    }

    fn spawn(&mut self) {
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .args([end(&self.device), end(&self.peer)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_until("socat ptys", Duration::from_secs(10), || self.device.exists() && self.peer.exists());
    }

    /// The device disappears, as a USB serial adapter pulled out.
    fn vanish(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let _ = std::fs::remove_file(&self.device);
        let _ = std::fs::remove_file(&self.peer);
    }

    fn read_lines(&self) -> Arc<Mutex<Vec<String>>> {
        collect_lines(std::fs::File::open(&self.peer).unwrap())
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.vanish();
    }
}

fn check_record(record: &Value, camera: &str) {
    for key in ["id", "camera", "caption", "tokens", "frame_time", "model", "latency_ms"] {
        assert!(record.get(key).is_some(), "{key} missing in {record}");
    }
    assert_eq!(record["camera"], camera);
    assert_eq!(record["model"], "tiny");
    assert!(!record["tokens"].as_array().unwrap().is_empty(), "{record}");
    assert!(record["caption"].is_string() && record["latency_ms"].as_f64().unwrap() > 0.0, "{record}");
    assert!(record["frame_time"].as_str().unwrap().ends_with('Z'), "{record}");
}

/// The node id and payload of the newest discovery config whose node ends with `_<camera>`.
/// A node id is what Home Assistant accepts in a discovery topic: `[a-zA-Z0-9_-]+`.
fn discovery(sub: &Subscriber, camera: &str) -> Option<(String, Value)> {
    let messages = sub.messages.lock().unwrap().clone();
    messages.iter().rev().find_map(|m| {
        let node = m.topic.strip_prefix("homeassistant/sensor/")?.strip_suffix("/caption/config")?;
        assert!(node.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{node}");
        node.ends_with(&format!("_{camera}")).then(|| (node.to_string(), serde_json::from_str(&m.payload).unwrap()))
    })
}

#[test]
fn once_over_a_folder_publishes_one_caption_per_image_to_mqtt_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for (i, name) in PHOTOS.iter().enumerate() {
        std::fs::copy(image(name), photos.join(format!("{i:02}-{name}"))).unwrap();
    }
    let broker = Broker::start();
    let sub = Subscriber::connect(&broker, &["P/#", "homeassistant/#"]);
    let pty = PtyPair::start(dir.path());
    let serial_lines = pty.read_lines();

    let source = format!("dir:{}", photos.display());
    let device = pty.device.display().to_string();
    let mqtt = broker.url();
    let args =
        ["--source", &source, "--once", "--mqtt", &mqtt, "--mqtt-prefix", "P", "--serial", &device, "--baud", "115200"];
    let (code, stdout, stderr) = finish(edgecap(&[&args[..], &["--camera", "door"]].concat()).spawn().unwrap());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.len(), PHOTOS.len(), "one caption per image on stdout: {stdout:?}");

    // MQTT: one caption per image (by id: QoS 1 may deliver one twice), with the documented
    // payload.
    wait_until("captions on MQTT", Duration::from_secs(10), || sub.on("P/door/caption").len() >= PHOTOS.len());
    let by_id = sub.captions("P/door/caption");
    assert_eq!(by_id.keys().copied().collect::<Vec<_>>(), (1..=PHOTOS.len() as u64).collect::<Vec<_>>());
    for (record, printed) in by_id.values().zip(&stdout) {
        check_record(record, "door");
        assert_eq!(record, printed, "MQTT and stdout carry the same record");
    }
    // The sensor state is the caption (≤ 255 characters).
    // (Runs of one state compared once: a redelivered state repeats, as may two photos' captions.)
    let mut states: Vec<String> = sub.on("P/door/state").into_iter().map(|m| m.payload).collect();
    let captions: Vec<String> =
        by_id.values().map(|r| r["caption"].as_str().unwrap().chars().take(255).collect()).collect();
    let mut runs = captions.clone();
    states.dedup();
    runs.dedup();
    assert_eq!(states, runs);
    // Availability: online then offline on a clean stop, both retained for late subscribers; the
    // last state and record retained too (Home Assistant subscribes after discovery arrives).
    let last_available = || sub.on("P/door/available").last().map(|m| m.payload.clone());
    wait_until("offline after the clean stop", Duration::from_secs(5), || {
        last_available().as_deref() == Some("offline")
    });
    let available: Vec<String> = sub.on("P/door/available").into_iter().map(|m| m.payload).collect();
    assert_eq!(available.first().map(String::as_str), Some("online"), "{available:?}");
    let late = Subscriber::connect(&broker, &["P/door/available", "P/door/state", "P/door/caption", "P/door/image"]);
    wait_until("retained messages", Duration::from_secs(5), || late.messages.lock().unwrap().len() >= 4);
    let retained = late.on("P/door/available");
    assert!(retained[0].retain && retained[0].payload == "offline", "{retained:?}");
    let state = late.on("P/door/state");
    assert!(state[0].retain && Some(&state[0].payload) == captions.last(), "{state:?}");
    let record = late.on("P/door/caption");
    assert!(record[0].retain && record[0].payload.contains(&format!("\"id\":{}", PHOTOS.len())), "{record:?}");
    // Home Assistant discovery, under a node id of this board and camera.
    let (node, config) = discovery(&sub, "door").expect("discovery config published");
    assert!(node.starts_with("edgecap_") && node.len() > "edgecap__door".len(), "{node}");
    assert_eq!(config["unique_id"], format!("{node}_caption"));
    assert_eq!(config["state_topic"], "P/door/state");
    assert_eq!(config["json_attributes_topic"], "P/door/caption");
    assert_eq!(config["availability_topic"], "P/door/available");
    assert_eq!(config["qos"], 1);
    assert!(config["device"]["identifiers"].as_array().is_some_and(|ids| ids[0] == node.as_str()), "{config}");
    // The captioned frames, as JPEGs for Home Assistant's image entity on the same device.
    // Only the newest caption's frame waits to be sent, so captions made faster than they go out
    // may share one; the last always goes.
    let pictures = sub.on("P/door/image");
    assert!((1..=PHOTOS.len()).contains(&pictures.len()), "{} pictures", pictures.len());
    for p in &pictures {
        let jpeg = image::load_from_memory_with_format(&p.bytes, image::ImageFormat::Jpeg).unwrap();
        assert!(jpeg.width().max(jpeg.height()) <= 640 && jpeg.width() > 16, "{}x{}", jpeg.width(), jpeg.height());
    }
    let retained = late.on("P/door/image");
    assert!(retained[0].retain && Some(&retained[0].bytes) == pictures.last().map(|p| &p.bytes));
    let frame = sub.on(&format!("homeassistant/image/{node}/frame/config"));
    let frame: Value = serde_json::from_str(&frame.last().expect("image discovery").payload).unwrap();
    assert_eq!(frame["image_topic"], "P/door/image");
    assert_eq!(frame["content_type"], "image/jpeg");
    assert_eq!(frame["device"], config["device"]);

    // Serial: the same records, one intact JSON line each.
    wait_until("serial lines", Duration::from_secs(5), || serial_lines.lock().unwrap().len() >= PHOTOS.len());
    let lines = serial_lines.lock().unwrap().clone();
    let serial: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    assert_eq!(serial, stdout);
}

#[test]
fn last_will_on_kill_and_discovery_again_when_home_assistant_restarts() {
    let broker = Broker::start();
    let sub = Subscriber::connect(&broker, &["Q/#", "homeassistant/sensor/#", "homeassistant/image/#"]);
    let mqtt = broker.url();
    let http = format!("127.0.0.1:{}", free_port());
    let args = ["--source", "test-pattern", "--fps", "2", "--interval", "0", "--mqtt", &mqtt, "--mqtt-prefix", "Q"];
    let mut child = edgecap(&[&args[..], &["--mqtt-no-image", "--http", &http]].concat()).spawn().unwrap();
    wait_until("online and a caption", Duration::from_secs(20), || {
        !sub.on("Q/camera/caption").is_empty() && discovery(&sub, "camera").is_some()
    });
    let (node, _) = discovery(&sub, "camera").unwrap();
    let topic = format!("homeassistant/sensor/{node}/caption/config");
    assert_eq!(sub.on("Q/camera/available")[0].payload, "online");
    // --mqtt-no-image: no frames, and the image entity's discovery emptied (removed).
    let frame = sub.on(&format!("homeassistant/image/{node}/frame/config"));
    assert!(frame.last().is_some_and(|m| m.bytes.is_empty()), "{frame:?}");
    assert!(sub.on("Q/camera/image").is_empty());

    // Home Assistant restarted: discovery again, and `online` with it.
    sub.client.publish("homeassistant/status", QoS::AtLeastOnce, false, "online").unwrap();
    wait_until("discovery re-announced", Duration::from_secs(10), || {
        sub.on(&topic).len() >= 2 && sub.on("Q/camera/available").len() >= 2
    });
    assert!(sub.on("Q/camera/available").iter().all(|m| m.payload == "online"));

    // /metrics counts the records the broker acknowledged, never more than were captioned.
    let counter = |name: &str| {
        let mut conn = TcpStream::connect(&http).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        let line = format!("edgecap_service_total{{counter=\"{name}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse::<u64>().unwrap())
    };
    wait_until("acknowledged captions", Duration::from_secs(10), || counter("mqtt_delivered") >= 1);
    assert!(counter("mqtt_delivered") <= counter("captioned") && counter("mqtt_dropped") == 0);

    child.kill().unwrap(); // SIGKILL: no chance to say goodbye
    child.wait().unwrap();
    wait_until("the last will", Duration::from_secs(10), || {
        sub.on("Q/camera/available").last().is_some_and(|m| m.payload == "offline")
    });
}

/// Two cameras under one prefix (a process each): one stopping leaves the other available, and
/// a camera name Home Assistant's ids do not allow still gets a sensor, under the name shown.
#[test]
fn each_camera_has_its_own_availability_and_any_name_gets_a_sensor() {
    let broker = Broker::start();
    let sub = Subscriber::connect(&broker, &["S/#", "homeassistant/#"]);
    let mqtt = broker.url();
    let common = ["--source", "test-pattern", "--fps", "2", "--interval", "0", "--mqtt", &mqtt, "--mqtt-prefix", "S"];
    let mut porch = edgecap(&[&common[..], &["--camera", "Küche front.1"]].concat()).spawn().unwrap();
    let garage = edgecap(&[&common[..], &["--camera", "garage", "--max-captions", "1"]].concat()).spawn().unwrap();
    let (code, _, stderr) = finish(garage);
    assert_eq!(code, Some(0), "{stderr}");
    wait_until("both announced", Duration::from_secs(20), || {
        discovery(&sub, "K_che_front_1").is_some()
            && sub.on("S/garage/available").last().is_some_and(|m| m.payload == "offline")
            && !sub.on("S/Küche front.1/state").is_empty()
    });
    let (node, config) = discovery(&sub, "K_che_front_1").unwrap();
    assert_eq!(config["device"]["name"], "edgecap Küche front.1", "{config}");
    assert_eq!(config["state_topic"], "S/Küche front.1/state");
    let (garage_node, _) = discovery(&sub, "garage").unwrap();
    assert_ne!(node, garage_node);
    // The garage stopped; the kitchen goes on, still online.
    let kitchen = "S/Küche front.1/available";
    assert_eq!(sub.on(kitchen).last().map(|m| m.payload.as_str()), Some("online"));
    let before = sub.on("S/Küche front.1/caption").len();
    wait_until("the kitchen still captioning", Duration::from_secs(20), || {
        sub.on("S/Küche front.1/caption").len() > before
    });
    assert_eq!(sub.on(kitchen).last().map(|m| m.payload.as_str()), Some("online"));
    signal(&porch, "TERM");
    assert_eq!(porch.wait().unwrap().code(), Some(0));
}

#[test]
fn captions_made_while_the_broker_is_down_arrive_after_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start();
    let sub = Subscriber::connect(&broker, &["R/#"]);
    let source = format!("dir:{}", dir.path().display());
    let mqtt = broker.url();
    let args =
        ["--source", &source, "--interval", "0", "--scene-threshold", "0", "--mqtt", &mqtt, "--mqtt-prefix", "R"];
    let mut child = edgecap(&[&args[..], &["--mqtt-buffer", "50"]].concat()).spawn().unwrap();
    let stdout = collect_lines(child.stdout.take().unwrap());
    // One image at a time: a live folder is a camera, so images dropped faster than they are
    // captioned would be skipped as stale (only the newest is captioned).
    let feed = |i: usize| {
        std::fs::copy(image(PHOTOS[i % PHOTOS.len()]), dir.path().join(format!("{i:03}.img"))).unwrap();
        wait_until("the image's caption", Duration::from_secs(20), || stdout.lock().unwrap().len() == i + 1);
    };

    (0..3).for_each(feed);
    wait_until("3 captions on MQTT", Duration::from_secs(20), || sub.captions("R/camera/caption").len() == 3);
    broker.stop();
    (3..8).for_each(feed);
    std::thread::sleep(Duration::from_secs(1)); // the service keeps failing to reconnect meanwhile
    broker.spawn();
    wait_until("every caption delivered", Duration::from_secs(40), || sub.captions("R/camera/caption").len() == 8);
    assert_eq!(sub.captions("R/camera/caption").keys().copied().collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());

    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop with everything delivered");
    wait_until("offline", Duration::from_secs(5), || {
        sub.on("R/camera/available").last().is_some_and(|m| m.payload == "offline")
    });
}

#[test]
fn serial_port_that_vanishes_and_returns_gets_intact_lines_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = PtyPair::start(dir.path());
    let device = pty.device.display().to_string();
    let args = ["--source", "test-pattern", "--fps", "10", "--interval", "0.2", "--serial", &device, "--no-stdout"];
    let mut child = edgecap(&args).spawn().unwrap();
    let before = pty.read_lines();
    wait_until("lines before", Duration::from_secs(20), || before.lock().unwrap().len() >= 3);
    pty.vanish();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the service survives the port vanishing");
    pty.spawn();
    let after = pty.read_lines();
    wait_until("lines after the port returns", Duration::from_secs(20), || after.lock().unwrap().len() >= 3);
    signal(&child, "TERM");
    let (code, _, stderr) = finish(child);
    assert!(code == Some(0) || code == Some(1), "{stderr}");

    let ids = |lines: &[String]| -> Vec<u64> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("intact JSON line {l:?}: {e}")))
            .inspect(|r| check_record(r, "camera"))
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    let (before, after) = (ids(&before.lock().unwrap()), ids(&after.lock().unwrap()));
    assert!(after.windows(2).all(|w| w[0] < w[1]) && after[0] > *before.last().unwrap(), "{before:?} then {after:?}");
}

#[test]
fn a_folder_fed_while_running_is_captioned_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = format!("dir:{}", dir.path().display());
    let mut child = edgecap(&["--source", &source, "--interval", "0", "--scene-threshold", "0"]).spawn().unwrap();
    let stdout = collect_lines(child.stdout.take().unwrap());
    for (i, name) in PHOTOS.iter().enumerate() {
        // Written in pieces, as a capture script over a slow card would: never read half-done.
        let bytes = std::fs::read(image(name)).unwrap();
        let mut file = std::fs::File::create(dir.path().join(format!("{i:02}-{name}"))).unwrap();
        for piece in bytes.chunks(bytes.len() / 3 + 1) {
            file.write_all(piece).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        drop(file);
        wait_until("the new image's caption", Duration::from_secs(20), || stdout.lock().unwrap().len() == i + 1);
    }
    signal(&child, "INT");
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stat(&stderr, "corrupt"), 0, "{stderr}");
    assert_eq!(stat(&stderr, "captioned"), PHOTOS.len() as u64, "{stderr}");
}

#[test]
fn a_file_whose_writer_paused_mid_file_is_read_again_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let source = format!("dir:{}", dir.path().display());
    let mut child = edgecap(&["--source", &source, "--interval", "0", "--scene-threshold", "0"]).spawn().unwrap();
    let stdout = collect_lines(child.stdout.take().unwrap());
    let bytes = std::fs::read(image("astronaut.jpg")).unwrap();
    let mut file = std::fs::File::create(dir.path().join("slow.jpg")).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    // Longer than two polls: the half file settles, is read, and is skipped as truncated.
    std::thread::sleep(Duration::from_millis(1500));
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    wait_until("the completed file's caption", Duration::from_secs(20), || stdout.lock().unwrap().len() == 1);
    signal(&child, "INT");
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stat(&stderr, "corrupt"), 1, "the half file: {stderr}");
    assert_eq!(stat(&stderr, "captioned"), 1, "{stderr}");
}

#[test]
fn corrupt_and_truncated_frames_are_skipped_counted_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bad = fixtures().join("bad");
    let files = [
        (image("astronaut.jpg"), "a.jpg"),
        (bad.join("truncated.jpg"), "b.jpg"),
        (bad.join("not_an_image.jpg"), "c.jpg"),
        (image("chelsea.png"), "d.png"),
        (bad.join("empty.jpg"), "e.jpg"),
        (image("coffee.webp"), "f.webp"),
    ];
    for (from, to) in &files {
        std::fs::copy(from, dir.path().join(to)).unwrap();
    }
    let source = format!("dir:{}", dir.path().display());
    let (code, stdout, stderr) = finish(edgecap(&["--source", &source, "--once"]).spawn().unwrap());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.len(), 3, "{stdout:?}");
    assert_eq!(stat(&stderr, "corrupt"), 3, "{stderr}");
    for name in ["b.jpg", "c.jpg", "e.jpg"] {
        assert!(stderr.lines().any(|l| l.contains("skipped") && l.contains(name)), "a warning names {name}: {stderr}");
    }
}

#[test]
fn file_sources_that_could_never_settle_are_refused_and_an_empty_file_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    for (path, problem) in
        [(dir.path().to_path_buf(), "a directory (use dir:PATH"), ("/dev/zero".into(), "not a regular file")]
    {
        let source = format!("file:{}", path.display());
        let (code, stdout, stderr) = finish(edgecap(&["--source", &source, "--once"]).spawn().unwrap());
        assert_eq!(code, Some(2), "{source}: {stderr}");
        assert!(
            stdout.is_empty() && stderr.contains(problem) && stderr.trim().lines().count() == 1,
            "{source}: {stderr}"
        );
    }
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let source = format!("file:{}", empty.display());
    let mut child = edgecap(&["--source", &source, "--once"]).spawn().unwrap();
    // The old behaviour waited forever for the file to fill.
    let ended = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > ended {
            child.kill().unwrap();
            panic!("--once on an empty file still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert_eq!(stat(&stderr, "corrupt"), 1, "{stderr}");
}

#[test]
fn a_stream_of_garbage_costs_a_few_log_lines_not_one_per_skip() {
    // 1 MB of xorshift bytes: no image in it, many places that look like a start of one.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..1_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut child = edgecap(&["--source", "-", "--once"]).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(&garbage));
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let corrupt = stat(&stderr, "corrupt");
    let warnings = stderr.lines().filter(|l| l.contains("skipped")).count();
    assert!(corrupt > 20, "{corrupt} skipped regions: too few to show a limit");
    // Five a minute from each of the two places that skip: the stream splitter and the decoder.
    assert!(warnings <= 10, "{warnings} warnings for {corrupt} skipped regions:\n{stderr}");
}

#[test]
fn stdin_stream_of_concatenated_images_with_garbage_and_a_truncated_tail() {
    let jpeg = std::fs::read(image("rocket_exif6.jpg")).unwrap();
    let png = std::fs::read(image("chelsea.png")).unwrap();
    let stream =
        [jpeg.clone(), b"garbage between frames".to_vec(), png.clone(), jpeg[..jpeg.len() / 2].to_vec()].concat();
    let mut child =
        edgecap(&["--source", "-", "--once", "--scene-threshold", "0"]).stdin(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(&stream)); // closing stdin ends the stream
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.len(), 2, "{stdout:?} {stderr}");
    assert_eq!(stat(&stderr, "corrupt"), 2, "garbage and the truncated tail: {stderr}");
}

#[test]
fn check_config_validates_files_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "source = \"test-pattern\"\ninterval = 2.5\n[mqtt]\nurl = \"mqtt://u:p@broker:1884\"\n")
        .unwrap();
    let check = |config: &Path, extra: &[&str]| {
        let mut cmd = Command::new(binary("edgecap"));
        cmd.arg("check-config").arg("--config").arg(config).arg("--bundle").arg(bundle()).args(extra);
        cmd.output().unwrap()
    };
    let out = check(&good, &["--interval", "7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resolved: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(resolved["interval"].as_float(), Some(7.0), "the flag overrides the file");
    assert_eq!(resolved["source"].as_str(), Some("test-pattern"));
    assert_eq!(resolved["mqtt"]["prefix"].as_str(), Some("edgecap"));
    let out = check(&good, &["--threads", "3", "--beam", "2"]);
    let resolved: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!((resolved["threads"].as_integer(), resolved["beam"].as_integer()), (Some(3), Some(2)));

    // The password stays out of what check-config prints.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("mqtt://u:***@broker:1884") && !printed.contains(":p@"), "{printed}");

    let long = "x".repeat(70_000);
    let mqtt = |line: &str| format!("[mqtt]\nurl = \"mqtt://broker\"\n{line}\n");
    let cases = [
        ("threads = 0\n".to_string(), "threads"),
        ("source = \"webcam\"\n".to_string(), "unknown source"),
        ("intervall = 3\n".to_string(), "line 1"),
        ("[mqtt]\nurl = \"http://x\"\n".to_string(), "mqtt url"),
        ("[mqtt]\nurl = \"tcp://u:s3cret@host:port\"\n".to_string(), "mqtt url \"tcp://u:***@host:port\""),
        ("scene_threshold = 4.0\n".to_string(), "scene_threshold"),
        // Numbers out of range, each of which used to panic or wrap once running.
        ("interval = 1e300\n".to_string(), "interval must be a number of seconds from 0 to 86400"),
        ("flush_timeout = 1e19\n".to_string(), "flush_timeout must be"),
        ("resolution = \"100000x100000\"\n".to_string(), "resolution"),
        ("fps = 100000\n".to_string(), "fps must be at most 1000"),
        (format!("camera = \"{long}\"\n"), "camera name"),
        ("[serial]\ndevice = \"/dev/null\"\nqueue = 1000000000000\n".to_string(), "serial queue"),
        (mqtt("buffer = 1000000000000"), "mqtt buffer"),
        (mqtt("keep_alive = 70000"), "keep_alive must be from 5 to 65535"),
        // Topics the broker refuses (closing the connection) or silently drops ($).
        (mqtt("discovery_prefix = \"ha/#\""), "discovery_prefix"),
        (mqtt("client_id = \"a/b#+\""), "client_id"),
        (mqtt("prefix = \"$SYS\""), "not start with '$'"),
        (mqtt(&format!("prefix = \"{long}\"")), "mqtt prefix"),
        // TLS settings: read and checked before start.
        (mqtt("ca = \"/etc/hostname\""), "are for TLS: the url must be mqtts://"),
        (
            "[mqtt]\nurl = \"mqtts://broker\"\nca = \"/nonexistent/ca.pem\"\n".to_string(),
            "/nonexistent/ca.pem: cannot read",
        ),
        ("[mqtt]\nurl = \"mqtts://broker\"\nca = \"/etc/hostname\"\n".to_string(), "/etc/hostname: no PEM certificate"),
        ("[mqtt]\nurl = \"mqtts://broker\"\ncert = \"/etc/hostname\"\n".to_string(), "cert and key go together"),
    ];
    for (text, problem) in &cases {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = check(&bad, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let shown = edgecap_engine::error::excerpt(text, 80);
        assert_eq!(out.status.code(), Some(2), "{shown}: {stderr}");
        assert!(stderr.contains(problem) && stderr.lines().count() == 1, "{shown}: {stderr}");
        assert!(stderr.len() < 400 && !stderr.contains("s3cret"), "{shown}: one short line: {stderr}");
    }
    // The same checks on the flags.
    for (flag, value, problem) in [("--interval", "1e300", "interval"), ("--flush-timeout", "1e19", "flush_timeout")] {
        let out = check(&good, &[flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(problem) && stderr.lines().count() == 1, "{flag} {value}: {stderr}");
    }
}

#[test]
fn threads_are_capped_at_the_cores_the_process_may_use() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let out = Command::new(binary("edgecap"))
        .args(["caption", "--threads", "10000", "--max-tokens", "2", "--bundle"])
        .arg(bundle())
        .arg(image("astronaut.jpg"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("10000 threads asked for, {cores} cores available: using {cores}")), "{stderr}");
    assert!(stderr.contains(&format!("{cores} threads for the matrix products")), "{stderr}");
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a
/// second CA that signed nothing here, all made by the openssl command line.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        let dir = dir.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (k, c, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=edgecap test {ca}"));
            openssl(
                &[&["req", "-x509"][..], &key, &["-keyout", &k, "-out", &c, "-days", "2", "-subj", &subj]].concat(),
            );
        }
        let exts = [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
        ];
        for (name, ext) in exts {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (k, csr, c, e) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            openssl(
                &[&["req", "-new"][..], &key, &["-keyout", &k, "-out", &csr, "-subj", &format!("/CN=edgecap {name}")]]
                    .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &c,
                "-days",
                "2",
                "-extfile",
                &e,
            ]);
        }
        // Mosquitto reads them after dropping to its own user.
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::set_permissions(entry.unwrap().path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }
        for d in [dir.as_path(), dir.parent().unwrap()] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A TLS listener with this CA's server certificate; `require` asks clients for one of theirs.
    fn listener(&self, port: u16, require: bool) -> String {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require}\n",
            self.path("ca.pem"),
            self.path("server.pem"),
            self.path("server.key")
        )
    }
}

/// `edgecap run --once` over one photograph, published to `mqtt` with `extra` flags.
fn once_to(mqtt: &str, extra: &[&str], dir: &Path) -> (Option<i32>, Vec<Value>, String) {
    let photos = dir.join("one");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(image("astronaut.jpg"), photos.join("a.jpg")).unwrap();
    let source = format!("dir:{}", photos.display());
    let args = ["--source", &source, "--once", "--mqtt", mqtt, "--mqtt-prefix", "P", "--camera", "tls"];
    finish(edgecap(&[&args[..], extra].concat()).spawn().unwrap())
}

#[test]
fn mqtts_delivers_with_the_brokers_ca_and_a_client_certificate_and_refuses_a_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let (tls, mutual) = (free_port(), free_port());
    let broker = Broker::start_with(&(certs.listener(tls, false) + &certs.listener(mutual, true)));
    let sub = Subscriber::connect(&broker, &["P/#"]);
    let url = |port: u16| format!("mqtts://127.0.0.1:{port}");

    // The broker's CA: delivered, over TLS.
    let (code, stdout, stderr) = once_to(&url(tls), &["--mqtt-ca", &certs.path("ca.pem")], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    wait_until("the caption over TLS", Duration::from_secs(10), || !sub.on("P/tls/caption").is_empty());
    assert_eq!(sub.captions("P/tls/caption")[&1]["caption"], stdout[0]["caption"]);

    // A CA that did not sign the broker's certificate: refused at start, one line, exit 2.
    let (code, stdout, stderr) = once_to(&url(tls), &["--mqtt-ca", &certs.path("other-ca.pem")], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(errors.len() == 1 && errors[0].contains("refused the connection: TLS"), "{stderr}");

    // A broker that requires a client certificate: without one, refused; with one, delivered.
    let (code, _, stderr) = once_to(&url(mutual), &["--mqtt-ca", &certs.path("ca.pem")], dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("error: ") && l.contains("TLS")), "{stderr}");
    let client = ["--mqtt-ca", &certs.path("ca.pem"), "--mqtt-cert", &certs.path("client.pem")];
    let (code, _, stderr) =
        once_to(&url(mutual), &[&client[..], &["--mqtt-key", &certs.path("client.key")]].concat(), dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    wait_until("the caption over mutual TLS", Duration::from_secs(10), || sub.on("P/tls/caption").len() >= 2);
}

#[test]
fn a_serial_output_that_can_never_open_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("one");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(image("astronaut.jpg"), photos.join("a.jpg")).unwrap();
    let source = format!("dir:{}", photos.display());
    // A regular file is no serial port, now or later: exit 2, one line, nothing captioned.
    let (code, stdout, stderr) =
        finish(edgecap(&["--source", &source, "--once", "--serial", "/etc/hostname"]).spawn().unwrap());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("/etc/hostname") && errors[0].contains("not a serial device"),
        "{stderr}"
    );
    // An absent one may be plugged in: the service runs, its captions counted undelivered.
    let absent = dir.path().join("ttyUSB9").display().to_string();
    let (code, stdout, stderr) =
        finish(edgecap(&["--source", &source, "--once", "--serial", &absent, "--flush-timeout", "0"]).spawn().unwrap());
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout.len(), 1, "{stderr}");
    assert_eq!(stat(&stderr, "serial_dropped"), 1, "{stderr}");
}

#[test]
fn a_frozen_broker_does_not_hold_shutdown_past_the_flush_timeout() {
    let broker = Broker::start();
    let sub = Subscriber::connect(&broker, &["P/#"]);
    let url = broker.url();
    let args = ["--source", "test-pattern", "--resolution", "64x48", "--fps", "4", "--interval", "0"];
    let more = ["--scene-threshold", "0", "--mqtt", &url, "--mqtt-prefix", "P", "--flush-timeout", "2"];
    let child = edgecap(&[&args[..], &more[..]].concat()).spawn().unwrap();
    wait_until("a first caption", Duration::from_secs(30), || !sub.on("P/camera/caption").is_empty());
    // The broker stops answering (its connections stay open), and captions pile up.
    signal(broker.child.as_ref().unwrap(), "STOP");
    std::thread::sleep(Duration::from_secs(1));
    signal(&child, "TERM");
    let asked = Instant::now();
    let (code, _, stderr) = finish(child);
    let took = asked.elapsed();
    signal(broker.child.as_ref().unwrap(), "CONT");
    assert_eq!(code, Some(1), "undelivered captions: {stderr}");
    assert!(stat(&stderr, "mqtt_dropped") > 0, "{stderr}");
    // The flush timeout and the caption in progress, not 2 s more for a goodbye nobody acknowledges.
    assert!(took < Duration::from_millis(3500), "stopped {took:?} after SIGTERM with --flush-timeout 2: {stderr}");
}

#[test]
fn a_broker_refusing_the_credentials_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let status = Command::new("mosquitto_passwd").args(["-b"]).arg(&passwords).args(["cam", "right"]).status().unwrap();
    assert!(status.success());
    std::fs::set_permissions(&passwords, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let auth = free_port();
    let broker = Broker::start_with(&format!(
        "listener {auth} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
        passwords.display()
    ));
    let sub = Subscriber::connect(&broker, &["P/#"]);
    for url in [format!("mqtt://cam:wrong@127.0.0.1:{auth}"), format!("mqtt://127.0.0.1:{auth}")] {
        let (code, stdout, stderr) = once_to(&url, &[], dir.path());
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(stdout.is_empty(), "{stdout:?}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert!(errors.len() == 1 && errors[0].contains("refused the connection"), "{url}: {stderr}");
        assert!(!stderr.contains("wrong"), "the password stays out of the log: {stderr}");
    }
    let (code, _, stderr) = once_to(&format!("mqtt://cam:right@127.0.0.1:{auth}"), &[], dir.path());
    assert_eq!(code, Some(0), "{stderr}");
    wait_until("the caption with the right password", Duration::from_secs(10), || !sub.on("P/tls/caption").is_empty());
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn soak_resident_memory_stays_flat_over_thousands_of_frames() {
    const CAPTIONS: u64 = 3000;
    let max = CAPTIONS.to_string();
    let args = ["--source", "test-pattern", "--resolution", "64x48", "--fps", "0", "--interval", "0"];
    let more = ["--scene-threshold", "0", "--max-captions", &max, "--no-stdout"];
    let mut child = edgecap(&[&args[..], &more[..]].concat()).spawn().unwrap();
    let mut samples = Vec::new();
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = rss_kib(child.id()) {
            samples.push(kib);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stat(&stderr, "captioned"), CAPTIONS, "{stderr}");
    assert!(samples.len() >= 20, "enough samples ({}) to compare", samples.len());
    // After warm-up (first fifth) vs the last fifth: no growth beyond allocator noise.
    let fifth = samples.len() / 5;
    let early = *samples[fifth..2 * fifth].iter().max().unwrap();
    let late = *samples[samples.len() - fifth..].iter().max().unwrap();
    eprintln!("soak: {} samples, early max {early} KiB, late max {late} KiB", samples.len());
    assert!(late <= early + early / 10 + 4096, "resident memory grew from {early} KiB to {late} KiB");
}

/// A real RTSP server on loopback (GStreamer's gst-rtsp-server, `tests/rtsp/server.py`)
/// streaming a photograph as H.264 at `/h264` and MJPEG at `/mjpeg`; killed on drop.
struct RtspServer {
    child: Child,
    port: u16,
}

impl RtspServer {
    fn start(port: u16) -> RtspServer {
        // python3-gi is Debian's, for Debian's python3 (not a virtual environment's).
        let python = std::env::var("EDGECAP_TEST_GI_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = fixtures().join("../rtsp/server.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(image("astronaut.jpg"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for the RTSP server (apt install python3-gi gir1.2-gst-rtsp-server-1.0)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "the RTSP server did not start");
        RtspServer { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rtsp_captions_arrive_and_resume_after_the_server_restarts() {
    let port = free_port();
    let server = RtspServer::start(port);
    let args = ["--source", &server.url("h264"), "--interval", "0.3", "--scene-threshold", "0"];
    let mut child = edgecap(&args).env("RUST_LOG", "warn").spawn().unwrap();
    let lines = collect_lines(child.stdout.take().unwrap());
    let count = || lines.lock().unwrap().len();
    wait_until("captions from the H.264 stream", Duration::from_secs(30), || count() >= 2);
    // The camera reboots: the stream ends, edgecap retries until it is back.
    drop(server);
    std::thread::sleep(Duration::from_secs(2));
    let before = count();
    let _server = RtspServer::start(port);
    wait_until("captions after the server came back", Duration::from_secs(40), || count() >= before + 2);
    signal(&child, "TERM");
    let (code, _, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    let records: Vec<Value> = lines.lock().unwrap().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, record) in records.iter().enumerate() {
        check_record(record, "camera");
        assert_eq!(record["id"], i as u64 + 1);
    }
}

#[test]
fn rtsp_mjpeg_once_and_refusals_that_stop_start_up() {
    let server = RtspServer::start(free_port());
    // MJPEG, one frame with --once; credentials in the URL never reach the logs.
    let mjpeg = server.url("mjpeg").replace("rtsp://", "rtsp://viewer:s3cret@");
    let (code, records, stderr) = finish(edgecap(&["--source", &mjpeg, "--once"]).spawn().unwrap());
    assert_eq!((code, records.len()), (Some(0), 1), "{stderr}");
    check_record(&records[0], "camera");
    // H.264 decoding key frames only.
    let args = ["--source", &server.url("h264"), "--rtsp-keyframes", "--once"];
    let (code, records, stderr) = finish(edgecap(&args).spawn().unwrap());
    assert_eq!((code, records.len()), (Some(0), 1), "{stderr}");
    // No such path: a 404 every retry would meet again stops start-up, exit 2, one line.
    let missing = server.url("nope").replace("rtsp://", "rtsp://viewer:s3cret@");
    let (code, records, stderr) = finish(edgecap(&["--source", &missing]).spawn().unwrap());
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert_eq!((code, records.len()), (Some(2), 0), "{stderr}");
    assert!(line.contains("viewer:***@") && line.contains("404 Not Found"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    // Without ffmpeg, run and check-config refuse the source at once, saying what is missing.
    for command in ["run", "check-config"] {
        let out = Command::new(binary("edgecap"))
            .args([command, "--bundle"])
            .arg(bundle())
            .args(["--source", &mjpeg])
            .env("EDGECAP_FFMPEG", "/nonexistent/ffmpeg")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("RTSP sources need ffmpeg") && !stderr.contains("s3cret"), "{command}: {stderr}");
    }
}
