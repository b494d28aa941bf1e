//! The API's routes: what each request is checked for and answered with. Every failure is a JSON
//! `{"error": {"message", "type", "code"}}` with its HTTP status, as OpenAI's API answers.

// A failing step's `Err` is the HTTP answer itself, made once per failed request.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::model::CaptionModel;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use super::openai::{Answer, ChatRequest};
use super::worker::{Done, Failure, Job, Queue, Refused};

/// What every request handler shares.
pub struct Api {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub model: Arc<CaptionModel>,
    /// The options captions run with unless a request overrides max tokens or beam.
    pub opts: GenerationOptions,
    pub model_name: String,
    /// `Authorization: Bearer` token the `/v1/` routes require, if set.
    pub token: Option<String>,
    /// A request's whole time: reading the body, waiting in the queue, captioning.
    pub timeout: Duration,
    /// The camera service's counters, when the API runs beside it (`run --http`).
    pub service: Option<super::ServiceCounters>,
    pub next_id: AtomicU64,
}

type Shared = State<Arc<Api>>;

/// When a request must be answered by: set by [`guard`] on arrival.
#[derive(Clone, Copy)]
struct Deadline(Instant);

pub fn router(api: Arc<Api>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/caption", post(caption))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&api), guard))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(api)
}

/// A JSON error answer.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "message": message.into(), "type": kind, "code": status.as_u16() } });
    (status, Json(body)).into_response()
}

impl Api {
    /// [`error`], counted under `kind` in the metrics.
    fn fail(&self, status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
        self.metrics.count_error(kind);
        error(status, kind, message)
    }

    /// The options of a request that sets `max_tokens` and/or `beam`, checked against the model.
    fn options(&self, max_tokens: Option<usize>, beam: Option<usize>) -> Result<GenerationOptions, Response> {
        let mut opts = self.opts.clone();
        opts.max_tokens = max_tokens.unwrap_or(opts.max_tokens);
        opts.beam_width = beam.unwrap_or(opts.beam_width);
        self.model
            .check_options(&opts)
            .map_err(|e| self.fail(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
        Ok(opts)
    }

    /// Queues `image` and waits for its caption until `deadline`.
    async fn caption(&self, image: Vec<u8>, opts: GenerationOptions, deadline: Instant) -> Result<Done, Response> {
        let (reply, answer) = oneshot::channel();
        match self.queue.submit(Job { image, opts, deadline, reply }) {
            Ok(()) => {}
            Err(Refused::Full) => {
                // Long enough for the queue ahead to drain, by the captions' mean time so far.
                let wait = self.metrics.mean_latency().as_secs_f64() * (self.queue.depth() + 1) as f64;
                let mut response = self.fail(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("{} captions are already waiting; try again later", self.queue.depth()),
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.ceil().max(1.0) as u64));
                return Err(response);
            }
            Err(Refused::Stopped) => {
                return Err(self.fail(StatusCode::SERVICE_UNAVAILABLE, "engine", "the caption worker has stopped"))
            }
        }
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(_)) => Err(self.fail(StatusCode::SERVICE_UNAVAILABLE, "engine", "the caption worker has stopped")),
            Ok(Ok(Err(Failure::BadImage(m)))) => Err(self.fail(StatusCode::BAD_REQUEST, "bad_image", m)),
            Ok(Ok(Err(Failure::Engine(m)))) => Err(self.fail(StatusCode::INTERNAL_SERVER_ERROR, "engine", m)),
            Ok(Ok(Ok(done))) => Ok(done),
        }
    }

    fn timed_out(&self) -> Response {
        let message = format!("no caption within {:.1} s (the request's timeout)", self.timeout.as_secs_f64());
        self.fail(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
    }

    /// `stop` when the caption ended on a stop token or before its limit, `length` when cut.
    fn finish_reason(&self, tokens: &[u32], opts: &GenerationOptions) -> &'static str {
        let stopped = tokens.last().is_some_and(|t| opts.stop_token_ids.contains(t));
        if !stopped && tokens.len() >= opts.max_tokens {
            "length"
        } else {
            "stop"
        }
    }
}

/// Every request: the bearer token on `/v1/` routes, the deadline, and the count by route and
/// status.
async fn guard(State(api): Shared, mut request: Request, next: Next) -> Response {
    let route = route_label(request.uri().path());
    let response = if route.starts_with("/v1/") && !authorized(&api, request.headers()) {
        let mut r = api.fail(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong Authorization: Bearer token");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    } else {
        let deadline = Instant::now() + api.timeout;
        request.extensions_mut().insert(Deadline(deadline));
        // Also bounds reading the body: a client that sends slowly is cut off at the deadline.
        match tokio::time::timeout_at(deadline.into(), next.run(request)).await {
            Ok(response) => response,
            Err(_) => api.timed_out(),
        }
    };
    api.metrics.count_request(route, response.status().as_u16());
    response
}

/// A known route's path, or `other`: the metrics' labels stay a fixed set.
fn route_label(path: &str) -> &'static str {
    ["/v1/caption", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics"]
        .into_iter()
        .find(|r| *r == path)
        .unwrap_or("other")
}

fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let Some(token) = &api.token else { return true };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes()))
}

/// Equality whose time does not depend on where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct CaptionQuery {
    max_tokens: Option<usize>,
    beam: Option<usize>,
}

/// `POST /v1/caption`: the body is the image, or a multipart form with an `image` part.
async fn caption(
    State(api): Shared,
    Extension(Deadline(deadline)): Extension<Deadline>,
    query: Result<Query<CaptionQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return api.fail(StatusCode::BAD_REQUEST, "bad_request", format!("query: {}", e.body_text())),
    };
    let opts = match api.options(query.max_tokens, query.beam) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let image = match image_body(&api, request).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match api.caption(image, opts, deadline).await {
        Ok(done) => Json(json!({
            "caption": done.caption.text,
            "tokens": done.caption.tokens,
            "latency_ms": done.elapsed.as_secs_f64() * 1e3,
            "model": api.model_name,
        }))
        .into_response(),
        Err(r) => r,
    }
}

/// The image bytes of a `/v1/caption` request.
async fn image_body(api: &Arc<Api>, request: Request) -> Result<Vec<u8>, Response> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let image = if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(request, api)
            .await
            .map_err(|e| api.fail(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
        loop {
            let field = form.next_field().await.map_err(|e| body_error(api, e.status(), e.body_text()))?;
            let Some(field) = field else {
                return Err(api.fail(StatusCode::BAD_REQUEST, "bad_request", "multipart form without an `image` part"));
            };
            if field.name() == Some("image") {
                break field.bytes().await.map_err(|e| body_error(api, e.status(), e.body_text()))?;
            }
        }
    } else if content_type.starts_with("image/") || content_type.starts_with("application/octet-stream") {
        Bytes::from_request(request, api).await.map_err(|e| body_error(api, e.status(), e.body_text()))?
    } else {
        let shown = if content_type.is_empty() { "none" } else { content_type.as_str() };
        return Err(api.fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            format!("Content-Type {shown}: send image/*, application/octet-stream or multipart/form-data"),
        ));
    };
    if image.is_empty() {
        return Err(api.fail(StatusCode::BAD_REQUEST, "bad_image", "empty image"));
    }
    Ok(image.to_vec())
}

/// A body that could not be read: too large (413) or malformed (400).
fn body_error(api: &Api, status: StatusCode, text: String) -> Response {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        api.fail(status, "too_large", format!("request body over the limit: {text}"))
    } else {
        api.fail(StatusCode::BAD_REQUEST, "bad_request", text)
    }
}

/// `POST /v1/chat/completions`, OpenAI-compatible: the caption of the request's image.
async fn chat(State(api): Shared, Extension(Deadline(deadline)): Extension<Deadline>, request: Request) -> Response {
    let body = match Bytes::from_request(request, &api).await {
        Ok(b) => b,
        Err(e) => return body_error(&api, e.status(), e.body_text()),
    };
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return api.fail(StatusCode::BAD_REQUEST, "bad_request", format!("request body: {e}")),
    };
    drop(body);
    let opts = match api.options(chat.max_tokens(), None) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let image = match chat.image() {
        Ok(i) => i,
        Err(m) => return api.fail(StatusCode::BAD_REQUEST, "bad_request", m),
    };
    let done = match api.caption(image, opts.clone(), deadline).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let id = format!("chatcmpl-edgecap-{}", api.next_id.fetch_add(1, Ordering::Relaxed));
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let answer = Answer {
        id: &id,
        created,
        model: &api.model_name,
        text: &done.caption.text,
        prompt_tokens: api.model.dims().prefix_length,
        completion_tokens: done.caption.tokens.len(),
        finish_reason: api.finish_reason(&done.caption.tokens, &opts),
    };
    if !chat.stream {
        return Json(answer.completion()).into_response();
    }
    let include_usage = chat.stream_options.is_some_and(|o| o.include_usage);
    let events = answer
        .chunks(include_usage)
        .into_iter()
        .map(|chunk| Event::default().data(chunk.to_string()))
        .chain([Event::default().data("[DONE]")])
        .map(Ok::<_, Infallible>);
    Sse::new(futures_util::stream::iter(events)).into_response()
}

/// `GET /v1/models`: the loaded model.
async fn models(State(api): Shared) -> Response {
    Json(json!({
        "object": "list",
        "data": [{ "id": api.model_name, "object": "model", "created": 0, "owned_by": "edgecap" }],
    }))
    .into_response()
}

/// `GET /healthz`: 200 while captions can be made.
async fn health(State(api): Shared) -> Response {
    let alive = api.queue.is_alive();
    let status = if alive { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        json!({ "status": if alive { "ok" } else { "stopped" }, "model": api.model_name, "queue": api.queue.depth() });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(api): Shared) -> Response {
    let service = api.service.as_ref().map(|f| f()).unwrap_or_default();
    let text = api.metrics.render(api.queue.depth(), &service);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn not_found(State(api): Shared, request: Request) -> Response {
    let path: String = request.uri().path().chars().take(80).collect();
    api.fail(StatusCode::NOT_FOUND, "not_found", format!("no route {} {path}", request.method()))
}
