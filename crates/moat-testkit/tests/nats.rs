//! The tests' own `nats-server`: it starts with JetStream, survives a kill and a restart on the
//! same port, stops gracefully, and dies with its handle.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::Duration;

use moat_testkit::nats::NatsServer;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Connects, reads the server's `INFO` line, then does `CONNECT` + `PING` and expects `PONG`.
/// Returns the `INFO` JSON.
fn handshake(port: u16) -> serde_json::Value {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let json = line.strip_prefix("INFO ").unwrap_or_else(|| panic!("expected INFO, got {line:?}"));
    let info: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    (&stream).write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\r\n");
    info
}

fn assert_refused(port: u16) {
    let error = TcpStream::connect(("127.0.0.1", port)).map(|_| ()).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), None).is_ok()
}

#[test]
fn starts_with_jetstream_and_restarts_after_a_kill_on_the_same_port() {
    let mut server = NatsServer::start();
    let port = server.port();
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
    let info = handshake(port);
    assert_eq!(info["jetstream"], true, "{info}");
    assert_eq!(info["port"], port, "{info}");
    assert!(server.store_dir().join("jetstream").is_dir());
    let first = server.pid().unwrap();

    server.kill();
    assert_eq!(server.pid(), None);
    assert!(!server.is_running());
    assert!(!alive(first));
    assert_refused(port);

    server.restart();
    assert_eq!(server.port(), port);
    let second = server.pid().unwrap();
    assert_ne!(first, second);
    assert!(server.is_running());
    assert_eq!(handshake(port)["jetstream"], true);

    // A restart of a running server kills it first.
    server.restart();
    assert!(!alive(second));
    assert_eq!(handshake(port)["jetstream"], true);
}

#[test]
fn stops_gracefully_and_starts_again() {
    let mut server = NatsServer::start();
    let port = server.port();
    let pid = server.pid().unwrap();
    server.stop();
    assert_eq!(server.pid(), None);
    assert!(!alive(pid));
    assert_refused(port);
    server.stop();

    server.restart();
    assert_eq!(handshake(port)["jetstream"], true);
}

#[test]
fn dropping_the_server_kills_it() {
    let server = NatsServer::start();
    let port = server.port();
    let pid = server.pid().unwrap();
    assert!(alive(pid));
    drop(server);
    assert!(!alive(pid));
    assert_refused(port);
}

#[test]
fn servers_of_parallel_tests_are_separate() {
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
    assert_ne!(handshake(a.port())["server_id"], handshake(b.port())["server_id"]);
}
