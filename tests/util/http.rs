//! A real HTTP/1.1 receiver on 127.0.0.1 for tests (webhook deliveries and an OpenAI-compatible chat-completions endpoint), std only plus serde_json.
//!
//! Each connection carries one request and is closed after the reply (`Connection: close`).
//! Requests are recorded before they are answered, so a test can look at what arrived even
//! when the reply is delayed or the client gave up waiting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request target as sent, query string included.
    pub path: String,
    /// Header names are lowercased; values are trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, already de-chunked when it came with `Transfer-Encoding: chunked`.
    pub body: Vec<u8>,
}

impl Received {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.text()))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long to wait before answering (to make a client time out).
    pub delay: Duration,
}

impl Reply {
    /// 200 with body "ok".
    pub fn ok() -> Reply {
        Reply::body("ok")
    }

    /// This status with an empty body.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: code,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with this JSON body and `Content-Type: application/json`.
    pub fn json(v: Value) -> Reply {
        Reply::body(v.to_string()).header("Content-Type", "application/json")
    }

    /// 200 with this body.
    pub fn body(b: impl Into<Vec<u8>>) -> Reply {
        Reply {
            body: b.into(),
            ..Reply::status(200)
        }
    }

    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn after(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Responder = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

struct Shared {
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    responder: Mutex<Responder>,
    stopping: AtomicBool,
}

/// An HTTP server on 127.0.0.1 that records every request and answers as told.
pub struct Receiver {
    port: u16,
    shared: Arc<Shared>,
    accepter: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts on 127.0.0.1:0 answering 200 to everything.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Receiver::serve(listener)
    }

    fn serve(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            responder: Mutex::new(Arc::new(|_: &Received| Reply::ok())),
            stopping: AtomicBool::new(false),
        });
        let accepter = {
            let shared = shared.clone();
            // The listener moves into this thread, so joining it closes the port.
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if shared.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(stream) => {
                            let shared = shared.clone();
                            thread::spawn(move || handle(stream, &shared));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Receiver {
            port,
            shared,
            accepter: Some(accepter),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT/path" (a leading '/' on `path` is optional).
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Replaces how it answers; the closure sees each request.
    pub fn respond(&self, f: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
        *self.shared.responder.lock().unwrap() = Arc::new(f);
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until at least n requests arrived (panics with what arrived after `limit`).
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        let mut got = self.shared.received.lock().unwrap();
        while got.len() < n {
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<String> = got
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.text()))
                    .collect();
                panic!(
                    "expected {n} requests within {limit:?}, got {}:\n{}",
                    got.len(),
                    seen.join("\n")
                );
            }
            got = self
                .shared
                .arrived
                .wait_timeout(got, deadline - now)
                .unwrap()
                .0;
        }
        got.clone()
    }

    /// Stops listening (connections are then refused) and joins its thread.
    /// Requests already being answered finish on their own.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accepter) = self.accepter.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = accepter.join();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads one request, records it, answers, and closes the connection.
fn handle(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let Some(req) = read_request(&mut reader, &mut writer) else {
        return;
    };
    shared.received.lock().unwrap().push(req.clone());
    shared.arrived.notify_all();

    let responder = shared.responder.lock().unwrap().clone();
    let reply = responder(&req);
    thread::sleep(reply.delay);

    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if reply.status != 204 {
        head += &format!("Content-Length: {}\r\n", reply.body.len());
    }
    head += "Connection: close\r\n";
    for (k, v) in &reply.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let mut out = head.into_bytes();
    out.extend_from_slice(&reply.body);
    // The client may have given up during the delay; that is not the receiver's problem.
    let _ = writer.write_all(&out);
    let _ = writer.flush();
    // Send FIN and drain whatever is left, so closing does not reset the connection
    // before the client has read the reply.
    let _ = writer.shutdown(Shutdown::Write);
    let _ = writer.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
}

/// Parses the request line, headers, and a Content-Length or chunked body.
/// None when the client sent something unreadable or went away.
fn read_request(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream) -> Option<Received> {
    let line = read_line(reader)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();

    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut req = Received {
        method,
        path,
        headers,
        body: Vec::new(),
    };

    // curl asks before sending larger bodies; without this it waits a second.
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
    }

    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line(reader)?;
            let size = size_line.split(';').next()?.trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            reader.read_exact(&mut req.body[start..]).ok()?;
            read_line(reader)?; // the CRLF after the chunk
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().ok()?;
        req.body.resize(len, 0);
        reader.read_exact(&mut req.body).ok()?;
    }
    Some(req)
}

/// One line without its CRLF; None at end of stream or on error.
fn read_line(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
