//! The agent's DTLS endpoint ([`agent::dtls::Handshake`], the code the engine runs) against OpenSSL
//! over real UDP on loopback, in both roles: the handshake completes with
//! TLS_PSK_WITH_AES_128_GCM_SHA256 and the extended master secret, PSK identities arrive intact, and
//! the RFC 5705 export the data plane is keyed from equals OpenSSL's. A wrong PSK fails on both sides.
//!
//! Needs `openssl` on PATH (Debian package `openssl`, listed in .ci/apt-packages.txt).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use agent::crypto::EXPORT_LEN;
use agent::dtls::{AcceptIdentity, EXPORTER_LABEL, Established, Handshake, Role, is_dtls};
use rolodex::keys::{KeyUse, derive, to_hex};

const SECRET: &[u8] = b"openssl interop test secret";
const NETWORK: &str = "interop";
const CIPHER: &str = "PSK-AES128-GCM-SHA256";
/// Identities in the agent's format, `rm1;<name>;<incarnation>;<rx index>` (docs/design.md).
const AGENT_ID: &str = "rm1;agent;00000000000000a1;00000001";
const OPENSSL_ID: &str = "rm1;openssl;00000000000000b2;00000002";
/// Bounds every wait; a failing agent handshake ends by `agent::dtls::HANDSHAKE_TIMEOUT` (20 s).
const DEADLINE: Duration = Duration::from_secs(30);
/// How often the pump looks at its stop condition while no datagram arrives.
const POLL: Duration = Duration::from_millis(50);

fn psk(secret: &[u8]) -> [u8; 32] {
    derive(secret, NETWORK, KeyUse::DtlsPsk)
}

fn accept_only(expected: &'static str) -> AcceptIdentity {
    Arc::new(move |id: &[u8]| id == expected.as_bytes())
}

/// Output of a running `openssl` (stdout and stderr interleaved), and whether both streams ended.
#[derive(Default)]
struct Output {
    text: String,
    closed_streams: u8,
}

/// A running `openssl` command, killed when dropped (also when an assertion fails).
struct Openssl {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl Openssl {
    /// `args` split on whitespace. Stdin stays open until [`Self::close_stdin`]: both tools end
    /// the session on EOF.
    fn spawn(args: &str) -> Self {
        let mut child = Command::new("openssl")
            .args(args.split_whitespace())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `openssl {args}`: {e}"));
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for mut stream in [stdout, stderr].into_iter().flatten() {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    let mut out = output.0.lock().unwrap_or_else(|e| e.into_inner());
                    if n == 0 {
                        out.closed_streams += 1;
                    } else {
                        out.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                    output.1.notify_all();
                    if n == 0 {
                        return;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Self { child, stdin, output }
    }

    fn text(&self) -> String {
        self.output.0.lock().unwrap_or_else(|e| e.into_inner()).text.clone()
    }

    /// Whether the process closed its output, i.e. exited.
    fn closed(&self) -> bool {
        self.output.0.lock().unwrap_or_else(|e| e.into_inner()).closed_streams == 2
    }

    /// Waits until `ready` holds for the output; false at the deadline.
    fn wait_output(&self, deadline: Instant, ready: impl Fn(&Output) -> bool) -> bool {
        let (lock, changed) = &*self.output;
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !ready(&out) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            out = changed.wait_timeout(out, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for the process to exit; None at the deadline.
    fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        if !self.wait_output(deadline, |o| o.closed_streams == 2) {
            return None;
        }
        self.child.wait().ok()
    }
}

impl Drop for Openssl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl version`, failing clearly when the binary is missing.
fn openssl_version() -> String {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!("`openssl version` failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`openssl` is not on PATH: install the Debian package `openssl` (.ci/apt-packages.txt lists it)"
        ),
        Err(e) => panic!("running `openssl version`: {e}"),
    }
}

/// The text after `key` on the first line that starts with it (leading spaces ignored).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim_start().strip_prefix(key)).map(str::trim)
}

/// Decodes the session PEM `s_server` prints, as `s_client` would show it.
fn session_text(server_output: &str) -> String {
    let pem: String = server_output
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN SSL SESSION PARAMETERS-----"))
        .take_while(|l| !l.starts_with("-----END SSL SESSION PARAMETERS-----"))
        .chain(["-----END SSL SESSION PARAMETERS-----"])
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(pem.starts_with("-----BEGIN"), "no session in s_server output:\n{server_output}");
    let mut cmd = Command::new("openssl")
        .args(["sess_id", "-text", "-noout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting openssl sess_id");
    cmd.stdin.take().expect("sess_id stdin").write_all(pem.as_bytes()).expect("writing session PEM");
    let out = cmd.wait_with_output().expect("running openssl sess_id");
    assert!(out.status.success(), "openssl sess_id failed on:\n{pem}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The 40 exported bytes, rebuilt from the keys the agent derived from them (see
/// `SessionKeys::from_exported`: client key ‖ server key ‖ client salt ‖ server salt).
fn exported(est: &Established) -> String {
    let (client, server) = match est.role {
        Role::Client => (&est.keys.send, &est.keys.recv),
        Role::Server => (&est.keys.recv, &est.keys.send),
    };
    let bytes = [&client.key[..], &server.key[..], &client.salt[..], &server.salt[..]].concat();
    assert_eq!(bytes.len(), EXPORT_LEN);
    to_hex(&bytes)
}

/// Runs `hs` over `sock` until `stop` holds (true) or the deadline passes (false). `peer` is where
/// datagrams go; a server learns it from the first datagram and ignores other sources.
fn pump(
    sock: &UdpSocket,
    hs: &mut Handshake,
    peer: &mut Option<SocketAddr>,
    deadline: Instant,
    mut stop: impl FnMut(&Handshake) -> bool,
) -> bool {
    let mut buf = [0u8; 2048];
    loop {
        if let Some(to) = *peer {
            while let Some(datagram) = hs.poll_transmit() {
                sock.send_to(&datagram, to).expect("sending to openssl");
            }
        }
        if stop(hs) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let wake = hs.poll_timeout().unwrap_or(deadline).min(deadline).min(now + POLL);
        let wait = wake.saturating_duration_since(now).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait)).expect("setting read timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let datagram = &buf[..n];
                if peer.get_or_insert(from) == &from && is_dtls(datagram) {
                    // Errors are recorded in the handshake (`failure`), as in the engine.
                    let _ = hs.handle_datagram(Instant::now(), datagram);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receiving from openssl: {e}"),
        }
        let now = Instant::now();
        if hs.poll_timeout().is_some_and(|t| now >= t) {
            let _ = hs.handle_timeout(now);
        }
    }
}

fn done(hs: &Handshake) -> bool {
    hs.is_established() || hs.failed()
}

fn loopback_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("binding UDP socket on 127.0.0.1")
}

/// A finished (or failed) agent handshake and the OpenSSL process it ran against.
struct Run {
    agent: Handshake,
    openssl: Openssl,
}

/// Agent as DTLS server, `openssl s_client` as client, the PSK of `openssl_secret` on its side.
fn agent_server(openssl_secret: &[u8]) -> Run {
    eprintln!("using {}", openssl_version());
    let sock = loopback_socket();
    let addr = sock.local_addr().expect("socket address").to_string();
    let start = Instant::now();
    let mut agent =
        Handshake::new(Role::Server, start, AGENT_ID.into(), psk(SECRET), accept_only(OPENSSL_ID))
            .expect("agent DTLS server");
    let hex = to_hex(&psk(openssl_secret));
    let mut openssl = Openssl::spawn(&format!(
        "s_client -dtls1_2 -psk {hex} -psk_identity {OPENSSL_ID} -cipher {CIPHER} -connect {addr} \
         -keymatexport {EXPORTER_LABEL} -keymatexportlen {EXPORT_LEN}"
    ));
    let deadline = start + DEADLINE;
    let mut peer = None;
    assert!(
        pump(&sock, &mut agent, &mut peer, deadline, done),
        "agent server neither established nor failed"
    );
    if agent.is_established() {
        // s_client ends the session on stdin EOF; keep answering until it has.
        openssl.close_stdin();
        pump(&sock, &mut agent, &mut peer, deadline, |_| openssl.closed());
        let status = openssl.wait_exit(deadline);
        assert!(status.is_some_and(|s| s.success()), "s_client failed ({status:?}):\n{}", openssl.text());
    }
    Run { agent, openssl }
}

/// Agent as DTLS client, `openssl s_server` as server, the PSK of `openssl_secret` on its side.
fn agent_client(openssl_secret: &[u8]) -> Run {
    eprintln!("using {}", openssl_version());
    // A free port for s_server, which cannot report the one it picks itself.
    let port = loopback_socket().local_addr().expect("probe address").port();
    let accept = format!("127.0.0.1:{port}");
    let hex = to_hex(&psk(openssl_secret));
    let mut openssl = Openssl::spawn(&format!(
        "s_server -dtls1_2 -psk {hex} -psk_hint {OPENSSL_ID} -psk_identity {AGENT_ID} -nocert \
         -cipher {CIPHER} -accept {accept} -naccept 1 \
         -keymatexport {EXPORTER_LABEL} -keymatexportlen {EXPORT_LEN}"
    ));
    let start = Instant::now();
    let deadline = start + DEADLINE;
    let listening =
        openssl.wait_output(deadline, |o| o.text.lines().any(|l| l == "ACCEPT") || o.closed_streams == 2);
    assert!(listening && !openssl.closed(), "s_server did not start:\n{}", openssl.text());

    let sock = loopback_socket();
    let mut agent =
        Handshake::new(Role::Client, Instant::now(), AGENT_ID.into(), psk(SECRET), accept_only(OPENSSL_ID))
            .expect("agent DTLS client");
    let mut peer = Some(accept.parse().expect("s_server address"));
    assert!(
        pump(&sock, &mut agent, &mut peer, deadline, done),
        "agent client neither established nor failed"
    );
    if agent.is_established() {
        // s_server prints the session when the handshake completes and ends it on stdin EOF.
        let printed = openssl.wait_output(deadline, |o| o.text.contains("Keying material:"));
        assert!(printed, "s_server printed no session:\n{}", openssl.text());
        openssl.close_stdin();
        let status = openssl.wait_exit(deadline);
        assert!(status.is_some_and(|s| s.success()), "s_server failed ({status:?}):\n{}", openssl.text());
    }
    Run { agent, openssl }
}

fn established(hs: &Handshake, what: &str) -> Established {
    hs.established().unwrap_or_else(|| panic!("{what} not established: {:?}", hs.failure()))
}

#[test]
fn agent_server_completes_with_openssl_s_client() {
    let run = agent_server(SECRET);
    let out = run.openssl.text();
    eprintln!("s_client output:\n{out}");
    let est = established(&run.agent, "agent server");
    assert_eq!(est.peer_identity, OPENSSL_ID.as_bytes(), "s_client's PSK identity reaches the agent");

    // s_client exited 0 (checked in `agent_server`): it completed. It prints these even on failure.
    assert!(out.contains(&format!("Cipher is {CIPHER}")), "s_client negotiated another suite:\n{out}");
    assert_eq!(field(&out, "Protocol  :"), Some("DTLSv1.2"));
    assert_eq!(field(&out, "PSK identity hint:"), Some(AGENT_ID), "agent identity reaches OpenSSL");
    assert_eq!(field(&out, "Extended master secret:"), Some("yes"));
    let theirs = field(&out, "Keying material:").expect("s_client keying material");
    assert_eq!(theirs.to_lowercase(), exported(&est), "RFC 5705 export differs");
}

#[test]
fn agent_client_completes_with_openssl_s_server() {
    let run = agent_client(SECRET);
    let out = run.openssl.text();
    eprintln!("s_server output:\n{out}");
    let est = established(&run.agent, "agent client");
    assert_eq!(est.peer_identity, OPENSSL_ID.as_bytes(), "s_server's identity hint reaches the agent");

    assert!(out.contains(&format!("CIPHER is {CIPHER}")), "s_server did not complete:\n{out}");
    assert!(!out.contains("PSK warning"), "s_server got another identity than {AGENT_ID}:\n{out}");
    let session = session_text(&out);
    eprintln!("s_server session:\n{session}");
    assert_eq!(field(&session, "Protocol  :"), Some("DTLSv1.2"));
    assert_eq!(field(&session, "PSK identity:"), Some(AGENT_ID));
    assert_eq!(field(&session, "Extended master secret:"), Some("yes"));
    let theirs = field(&out, "Keying material:").expect("s_server keying material");
    assert_eq!(theirs.to_lowercase(), exported(&est), "RFC 5705 export differs");
}

#[test]
fn wrong_psk_fails_with_openssl_s_client() {
    let mut run = agent_server(b"some other network secret");
    assert!(!run.agent.is_established(), "agent established with a wrong PSK");
    eprintln!("agent failure: {:?}", run.agent.failure());
    assert!(run.agent.failed());
    // The agent's fatal alert ends s_client. It prints its session parameters (and an export from
    // its own master secret) even then, so only the exit status tells.
    let status = run.openssl.wait_exit(Instant::now() + DEADLINE);
    let out = run.openssl.text();
    eprintln!("s_client output:\n{out}");
    assert!(status.is_some_and(|s| !s.success()), "s_client did not fail ({status:?}):\n{out}");
}

#[test]
fn wrong_psk_fails_with_openssl_s_server() {
    let run = agent_client(b"some other network secret");
    assert!(!run.agent.is_established(), "agent established with a wrong PSK");
    eprintln!("agent failure: {:?}", run.agent.failure());
    assert!(run.agent.failed());
    // s_server drops the undecryptable Finished and would wait for minutes; it prints these lines
    // as soon as a handshake completes (see the test above), so their absence is the failure.
    let out = run.openssl.text();
    eprintln!("s_server output:\n{out}");
    for success in ["CIPHER is", "Keying material:"] {
        assert!(!out.contains(success), "s_server printed {success:?} with a wrong PSK:\n{out}");
    }
}
