//! The binary's answers to bad input: one clear line on stderr and a failing exit code, never a panic.

use std::process::Command;

fn rolomesh(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rolomesh")).args(args).output().expect("running rolomesh");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn secret_file(dir: &std::path::Path) -> String {
    let p = dir.join("secret");
    std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
    p.to_string_lossy().into_owned()
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rolomesh-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn agent_error(extra: &[&str], secret: &str) -> String {
    let mut args = vec!["agent", "--network", "prod", "--secret-file", secret, "--name", "n1"];
    args.extend_from_slice(extra);
    let (ok, err) = rolomesh(&args);
    assert!(!ok, "agent accepted {extra:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn agent_rejects_bad_input_with_one_clear_line() {
    let d = tmpdir("agent");
    let s = secret_file(&d);
    let ok_rolodex = ["--rolodex", "127.0.0.1"];
    let e = agent_error(&[&["--address", "10.0.0.0/33"][..], &ok_rolodex].concat(), &s);
    assert!(e.contains("invalid address \"10.0.0.0/33\"") && e.contains("exceeds 32"), "{e}");
    let e = agent_error(&["--address", "100.64.0.1/10", "--rolodex", "no-such-host.invalid:6264"], &s);
    assert!(e.contains("cannot resolve rolodex \"no-such-host.invalid:6264\""), "{e}");
    let e = agent_error(&[&["--address", "100.64.0.1/10"][..], &ok_rolodex].concat(), "/nonexistent/secret");
    assert!(e.contains("/nonexistent/secret"), "{e}");
    let e = agent_error(&[&["--address", "100.64.0.1/10", "--mtu", "70000"][..], &ok_rolodex].concat(), &s);
    assert!(e.contains("mtu"), "{e}");
    let e =
        agent_error(&[&["--address", "100.64.0.1/10", "--keepalive", "soon"][..], &ok_rolodex].concat(), &s);
    assert!(e.contains("keepalive"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn rolodex_rejects_bad_key_files_and_flags() {
    let d = tmpdir("rolodex");
    let (ok, err) = rolomesh(&["rolodex", "--network", "prod=/nonexistent/key"]);
    assert!(!ok && err.contains("cannot read rolodex key file /nonexistent/key"), "{err}");
    let bad = d.join("bad.key");
    std::fs::write(&bad, "not hex").unwrap();
    let spec = format!("prod={}", bad.display());
    let (ok, err) = rolomesh(&["rolodex", "--network", &spec]);
    assert!(!ok && err.contains("is not hex"), "{err}");
    let (ok, err) = rolomesh(&["rolodex", "--network", "prod"]);
    assert!(!ok && err.contains("expected NAME=KEYFILE"), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn keys_give_the_rolodex_a_key_that_is_not_the_secret() {
    let d = tmpdir("keys");
    let (ok, _) = rolomesh(&["keys", "generate"]);
    assert!(ok);
    let s = secret_file(&d);
    let out = Command::new(env!("CARGO_BIN_EXE_rolomesh"))
        .args(["keys", "rolodex-key", "--network", "prod", "--secret-file", &s])
        .output()
        .unwrap();
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(key.len(), 64, "{key}");
    assert!(!key.contains("0123456789abcdef0123456789abcdef"));
    let _ = std::fs::remove_dir_all(d);
}
