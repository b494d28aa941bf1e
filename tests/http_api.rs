//! `edgecap serve`, the HTTP API, end to end with real clients: curl, the official `openai`
//! Python package (scripts/test.sh installs it in `target/test-venv`), concurrent requests, and
//! raw sockets for what well-behaved clients never send (a body that stops coming).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgecap_tests::{binary, image, tiny_bundle};
use serde_json::Value;

fn bundle() -> &'static Path {
    tiny_bundle()
}

const PHOTOS: [&str; 4] = ["astronaut.jpg", "chelsea.png", "coffee.webp", "rocket.bmp"];

/// `edgecap caption --json` of one image: (caption, tokens).
fn cli_caption(image: &Path, extra: &[&str]) -> (String, Vec<u64>) {
    let out = Command::new(binary("edgecap"))
        .args(["caption", "--json", "--bundle"])
        .arg(bundle())
        .args(extra)
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["caption"].as_str().unwrap().to_string(), tokens(&v))
}

fn tokens(v: &Value) -> Vec<u64> {
    v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

/// A running `edgecap serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// `edgecap serve --bundle <tiny> --http 127.0.0.1:0 ARGS` (environment `env`), once it has
/// said where it listens.
fn serve(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(binary("edgecap"))
        .args(["serve", "--bundle"])
        .arg(bundle())
        .args(["--http", "127.0.0.1:0"])
        .args(args)
        .env_remove("EDGECAP_HTTP_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&stderr);
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let said = stderr.lock().unwrap().iter().find_map(|l| l.split("on http://").nth(1).map(str::to_string));
        if let Some(addr) = said {
            return Server { child, addr, stderr };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("edgecap serve exited ({status}): {:?}", stderr.lock().unwrap());
        }
        assert!(Instant::now() < deadline, "edgecap serve did not start: {:?}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{}: {e}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The JSON error's message, checked to have the shape every error has.
    fn error(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["error"]["type"], kind, "{}", self.body);
        assert_eq!(v["error"]["code"], status, "{}", self.body);
        let message = v["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
        message
    }
}

/// Parses a whole HTTP/1.1 response (the connection closed after it).
fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (mut head, mut body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    // curl's uploads ask `Expect: 100-continue`: an interim `100 Continue` head comes first.
    while head.starts_with("HTTP/1.1 1") {
        (head, body) = body.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    }
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

/// `curl -s -i ARGS URL`.
fn curl(args: &[&str], url: &str) -> Reply {
    let out = Command::new("curl").args(["-s", "-S", "-i", "--max-time", "60"]).args(args).arg(url).output().unwrap();
    assert!(out.status.success(), "curl {args:?} {url}: {}", String::from_utf8_lossy(&out.stderr));
    parse(&out.stdout)
}

/// `curl` posting a file as the body with its Content-Type.
fn post_file(server: &Server, path: &str, file: &Path, content_type: &str) -> Reply {
    let data = format!("@{}", file.display());
    curl(&["-X", "POST", "-H", &format!("Content-Type: {content_type}"), "--data-binary", &data], &server.url(path))
}

/// One request over a fresh socket, written at once; the whole response read back.
fn raw_request(addr: &str, head: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse(&out)
}

fn post_head(path: &str, content_type: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: edgecap\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit('.').next().unwrap() {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        other => panic!("{other}"),
    }
}

#[test]
fn the_caption_route_answers_what_the_cli_captions() {
    let server = serve(&[], &[]);
    for photo in PHOTOS {
        let (caption, toks) = cli_caption(&image(photo), &[]);
        let raw = post_file(&server, "/v1/caption", &image(photo), content_type(photo));
        assert_eq!(raw.status, 200, "{photo}: {}", raw.body);
        let v = raw.json();
        assert_eq!((v["caption"].as_str().unwrap(), tokens(&v)), (caption.as_str(), toks.clone()), "{photo}");
        assert_eq!(v["model"], "tiny");
        assert!(v["latency_ms"].as_f64().unwrap() > 0.0);
        // The same as a form upload, as a browser or Node-RED sends it.
        let form = curl(
            &["-F", "note=hello", "-F", &format!("image=@{}", image(photo).display())],
            &server.url("/v1/caption"),
        );
        assert_eq!(form.status, 200, "{photo}: {}", form.body);
        assert_eq!(form.json()["caption"], caption, "{photo}");
    }
    // Per-request decoding options, as `caption --max-tokens 3 --beam 2` gives them.
    let photo = image(PHOTOS[0]);
    let (caption, toks) = cli_caption(&photo, &["--max-tokens", "3", "--beam", "2"]);
    let data = format!("@{}", photo.display());
    let short = curl(
        &["-H", "Content-Type: application/octet-stream", "--data-binary", &data],
        &server.url("/v1/caption?max_tokens=3&beam=2"),
    );
    assert_eq!(short.status, 200, "{}", short.body);
    assert_eq!((short.json()["caption"].as_str().unwrap(), tokens(&short.json())), (caption.as_str(), toks));
    let models = curl(&[], &server.url("/v1/models")).json();
    assert_eq!(models["data"][0]["id"], "tiny");
    let health = curl(&[], &server.url("/healthz"));
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("ok")));
}

/// The interpreter with the `openai` package: `$EDGECAP_TEST_PYTHON`, else the virtual
/// environment scripts/test.sh makes.
fn openai_python() -> PathBuf {
    let python = std::env::var_os("EDGECAP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python"));
    let ok = Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{} cannot import openai: run scripts/test.sh, which installs it", python.display());
    python
}

#[test]
fn the_official_openai_client_gets_the_caption() {
    let python = openai_python();
    let server = serve(&["--http-token", "sk-edgecap-test"], &[]);
    let photos = [image("astronaut.jpg"), image("coffee.webp")];
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("http/openai_client.py"))
        .arg(server.url("/v1"))
        .arg("sk-edgecap-test")
        .args(&photos)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai_client.py: {stderr}");
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), photos.len() + 1, "{lines:?}");
    for (photo, answer) in photos.iter().zip(&lines) {
        // max_tokens 30 is above the bundle's own limit: the CLI's default caption.
        let (caption, toks) = cli_caption(photo, &[]);
        assert_eq!(answer["content"], caption, "{answer}");
        assert_eq!(answer["streamed"], caption, "{answer}");
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], "tiny");
        assert_eq!(answer["models"], serde_json::json!(["tiny"]));
        assert_eq!(answer["completion_tokens"], toks.len());
        assert_eq!(answer["streamed_completion_tokens"], toks.len());
        assert!(["stop", "length"].contains(&answer["finish_reason"].as_str().unwrap()), "{answer}");
        assert_eq!(answer["streamed_finish"], answer["finish_reason"]);
    }
    let refused = &lines[photos.len()];
    assert_eq!(refused["refused"], 400, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("fetches nothing"), "{refused}");
}

#[test]
fn bad_requests_get_one_json_error_and_the_server_carries_on() {
    let server = serve(&["--http-max-body", "4096"], &[]);
    let text = std::env::temp_dir().join(format!("edgecap-http-{}.txt", std::process::id()));
    std::fs::write(&text, "not an image at all").unwrap();
    let m = post_file(&server, "/v1/caption", &text, "image/png").error(400, "bad_image");
    assert!(m.contains("not an image"), "{m}");
    let m = post_file(&server, "/v1/caption", &text, "text/plain").error(415, "bad_request");
    assert!(m.contains("text/plain"), "{m}");
    let m = curl(&["-F", "other=@/dev/null"], &server.url("/v1/caption")).error(400, "bad_request");
    assert!(m.contains("`image` part"), "{m}");
    let m = post_file(&server, "/v1/caption?beam=100", &text, "image/png").error(400, "bad_request");
    assert!(m.contains("beam width must be at most 16"), "{m}");
    let m = post_file(&server, "/v1/caption?max_tokens=0", &text, "image/png").error(400, "bad_request");
    assert!(m.contains("at least 1"), "{m}");
    let m = post_file(&server, "/v1/caption?max_tokens=lots", &text, "image/png").error(400, "bad_request");
    assert!(m.contains("max_tokens"), "{m}");
    // Over --http-max-body: refused whole, as a file upload or a form.
    let big = image("astronaut.jpg");
    assert!(std::fs::metadata(&big).unwrap().len() > 4096);
    post_file(&server, "/v1/caption", &big, "image/jpeg").error(413, "too_large");
    curl(&["-F", &format!("image=@{}", big.display())], &server.url("/v1/caption")).error(413, "too_large");
    // Chat requests: not JSON, no image, an image that is not one.
    let chat = |body: &str| {
        curl(&["-H", "Content-Type: application/json", "--data-binary", body], &server.url("/v1/chat/completions"))
    };
    let m = chat("{\"messages\": [").error(400, "bad_request");
    assert!(m.contains("request body"), "{m}");
    let m = chat(r#"{"messages": [{"role": "user", "content": "hello"}]}"#).error(400, "bad_request");
    assert!(m.contains("no image"), "{m}");
    let bad_url = r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]}"#;
    chat(bad_url).error(400, "bad_image");
    let m = curl(&[], &server.url("/v2/anything")).error(404, "not_found");
    assert!(m.contains("/v2/anything"), "{m}");
    // Still serving, and the failures counted.
    let ok = post_file(&server, "/v1/caption", &image("coffee_small.jpg"), "image/jpeg");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let metrics = curl(&[], &server.url("/metrics")).body;
    assert!(metrics.contains("edgecap_http_errors_total{kind=\"too_large\"} 2\n"), "{metrics}");
    assert!(metrics.contains("edgecap_http_errors_total{kind=\"bad_image\"} 2\n"), "{metrics}");
    assert!(metrics.contains("edgecap_http_requests_total{route=\"/v1/caption\",code=\"200\"} 1\n"), "{metrics}");
    assert!(metrics.contains("edgecap_http_captions_total 1\n"), "{metrics}");
    let _ = std::fs::remove_file(text);
}

/// 32 requests at once over four photographs (with a queue that holds them all): each answer
/// is the caption of its own request's image.
fn load_of_32(addr: &str) {
    let expected: Vec<String> = PHOTOS.iter().map(|p| cli_caption(&image(p), &[]).0).collect();
    let bodies: Vec<Vec<u8>> = PHOTOS.iter().map(|p| std::fs::read(image(p)).unwrap()).collect();
    let replies: Vec<(usize, Reply)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let (body, kind) = (&bodies[i % 4], content_type(PHOTOS[i % 4]));
                scope.spawn(move || (i % 4, raw_request(addr, &post_head("/v1/caption", kind, body.len()), body)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (photo, reply) in replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["caption"], expected[photo], "{}", PHOTOS[photo]);
    }
}

#[test]
fn concurrent_requests_each_get_their_own_caption() {
    let server = serve(&["--http-queue", "32"], &[]);
    load_of_32(&server.addr);
}

/// A JPEG slow to decode (36 megapixels) and small to send: a smooth gradient.
fn slow_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(6000, 6000, |x, y| image::Rgb([(x / 24) as u8, (y / 24) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_loses_nothing() {
    let server = serve(&["--http-queue", "1", "--http-max-body", "33554432"], &[]);
    let jpeg = slow_jpeg();
    let head = post_head("/v1/caption", "image/jpeg", jpeg.len());
    // Connected first, then sent together: they arrive within milliseconds, while one caption of
    // this image takes hundreds.
    let n = 6;
    let barrier = std::sync::Barrier::new(n);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (addr, head, jpeg, barrier) = (&server.addr, &head, &jpeg, &barrier);
                scope.spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                    barrier.wait();
                    s.write_all(head.as_bytes()).unwrap();
                    s.write_all(jpeg).unwrap();
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).unwrap();
                    parse(&out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let full: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok.len() + full.len(), n, "{:?}", replies.iter().map(|r| (r.status, &r.body)).collect::<Vec<_>>());
    assert!(ok.len() >= 2 && !full.is_empty(), "{} answered, {} refused", ok.len(), full.len());
    let caption = &ok[0].json()["caption"];
    assert!(ok.iter().all(|r| &r.json()["caption"] == caption));
    for r in &full {
        r.error(429, "queue_full");
        let wait: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!(wait >= 1);
    }
    let metrics = curl(&[], &server.url("/metrics")).body;
    let count = |line: &str| format!("{line} {}\n", full.len());
    assert!(metrics.contains(&count("edgecap_http_requests_total{route=\"/v1/caption\",code=\"429\"}")), "{metrics}");
    assert!(metrics.contains(&count("edgecap_http_dropped_total")), "{metrics}");
    assert!(metrics.contains(&format!("edgecap_http_captions_total {}\n", ok.len())), "{metrics}");
}

#[test]
fn a_body_that_stops_coming_is_cut_off_at_the_timeout() {
    let server = serve(&["--http-timeout", "1"], &[]);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(post_head("/v1/caption", "image/jpeg", 100_000).as_bytes()).unwrap();
    s.write_all(&[0xff, 0xd8, 0xff]).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let m = parse(&out).error(504, "timeout");
    assert!(m.contains("1.0 s"), "{m}");
    let health = curl(&[], &server.url("/healthz"));
    assert_eq!(health.status, 200);
}

#[test]
fn the_bearer_token_guards_the_v1_routes() {
    for server in [serve(&["--http-token", "s3cret"], &[]), serve(&[], &[("EDGECAP_HTTP_TOKEN", "s3cret")])] {
        let none = curl(&[], &server.url("/v1/models"));
        none.error(401, "unauthorized");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        curl(&["-H", "Authorization: Bearer s3cre"], &server.url("/v1/models")).error(401, "unauthorized");
        let jpeg = image("astronaut.jpg");
        post_file(&server, "/v1/caption", &jpeg, "image/jpeg").error(401, "unauthorized");
        let good = curl(&["-H", "Authorization: Bearer s3cret"], &server.url("/v1/models"));
        assert_eq!(good.status, 200, "{}", good.body);
        // Health and metrics stay open to a LAN's monitoring.
        assert_eq!(curl(&[], &server.url("/healthz")).status, 200);
        assert_eq!(curl(&[], &server.url("/metrics")).status, 200);
    }
}

/// `edgecap serve ARGS` expected to fail at start: (exit code, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary("edgecap")).arg("serve").arg("--bundle").arg(bundle()).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_server_options_stop_start_up_with_exit_2() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (args, expected) in [
        (vec!["--http", addr.as_str()], format!("cannot listen on {addr}")),
        (vec!["--http", "localhost"], "expected ADDR:PORT".to_string()),
        (vec!["--http", "127.0.0.1:0", "--http-queue", "0"], "http queue must be from 1".to_string()),
        (vec!["--http", "127.0.0.1:0", "--http-timeout", "nan"], "http timeout".to_string()),
        (vec!["--http", "127.0.0.1:0", "--http-token", "two words"], "http token".to_string()),
        (vec!["--http", "127.0.0.1:0", "--beam", "99"], "beam width must be at most 16".to_string()),
    ] {
        let (code, stderr) = refused(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = serve(&[], &[]);
    let ok = Command::new("kill").args(["-s", "TERM", &server.child.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{:?}", server.stderr.lock().unwrap());
    assert!(TcpStream::connect(&server.addr).is_err(), "still listening after exit");
}

#[test]
fn run_serves_the_api_beside_the_camera_service() {
    let mut child = Command::new(binary("edgecap"))
        .args(["run", "--bundle"])
        .arg(bundle())
        .args(["--source", "test-pattern", "--fps", "5", "--interval", "0.2", "--scene-threshold", "0", "--no-stdout"])
        .args(["--http", "127.0.0.1:0", "--http-queue", "32"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (sink, pipe) = (Arc::clone(&stderr), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    // Killed on drop whatever happens below.
    let mut server = Server { child, addr: String::new(), stderr: Arc::clone(&stderr) };
    let deadline = Instant::now() + Duration::from_secs(120);
    server.addr = loop {
        let said = stderr.lock().unwrap().iter().find_map(|l| l.split("on http://").nth(1).map(str::to_string));
        if let Some(addr) = said {
            break addr;
        }
        assert!(Instant::now() < deadline, "no API: {:?}", stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    let photo = image("chelsea.png");
    let (caption, _) = cli_caption(&photo, &[]);
    let data = format!("@{}", photo.display());
    let reply = curl(&["-H", "Content-Type: image/png", "--data-binary", &data], &server.url("/v1/caption"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["caption"], caption);
    load_of_32(&server.addr);
    // The service keeps captioning its own frames meanwhile; /metrics shows both.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = curl(&[], &server.url("/metrics")).body;
        let captioned = metrics
            .lines()
            .find_map(|l| l.strip_prefix("edgecap_service_total{counter=\"captioned\"} "))
            .map(|n| n.parse::<u64>().unwrap());
        if captioned.is_some_and(|n| n >= 2) {
            assert!(metrics.contains("edgecap_http_captions_total 33\n"), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "the service did not caption: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = Command::new("kill").args(["-s", "TERM", &server.child.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{:?}", server.stderr.lock().unwrap());
}

#[test]
fn check_config_shows_the_http_section_without_its_token() {
    let out = Command::new(binary("edgecap"))
        .args(["check-config", "--bundle"])
        .arg(bundle())
        .args([
            "--source",
            "test-pattern",
            "--http",
            "0.0.0.0:8080",
            "--http-token",
            "secret-token",
            "--http-queue",
            "7",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: toml::Value = toml::from_str(&stdout).unwrap();
    assert_eq!(config["http"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(config["http"]["queue"].as_integer(), Some(7));
    assert_eq!(config["http"]["token"].as_str(), Some("***"));
    assert!(!stdout.contains("secret-token"));
    // An HTTP option without an address, and a bad [http] value in the file: exit 2, one line.
    let out = Command::new(binary("edgecap")).args(["check-config", "--http-queue", "3"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--http-queue needs --http"), "{stderr}");
    let file = std::env::temp_dir().join(format!("edgecap-http-{}.toml", std::process::id()));
    std::fs::write(&file, "source = \"test-pattern\"\n[http]\nlisten = \"0.0.0.0:8080\"\ntimeout = -1\n").unwrap();
    let out = Command::new(binary("edgecap")).arg("check-config").arg("--config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("http timeout must be more than 0"), "{stderr}");
    let _ = std::fs::remove_file(file);
}
