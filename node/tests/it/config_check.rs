//! `natterd config check`: the real binary, its exit code and output.

use std::process::{Command, Output};

fn check(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_natterd"));
    command.args(["config", "check"]).args(args);
    for var in [
        "RUST_LOG",
        "NATTER_CONFIG",
        "NATTER_DATA",
        "NATTER_LISTEN",
        "NATTER_NAME",
        "NATTER_NATS",
        "NATTER_NATS_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("run natterd")
}

/// The line of `key` in the output.
fn line<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
}

#[test]
fn config_check_prints_each_setting_with_its_source_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("natter.toml");
    std::fs::write(
        &file,
        "name = \"chat.example.org\"\nlisten = \"127.0.0.1:7000\"\n[websocket]\nwindow = 100\n\
         [nats]\nuser = \"core\"\npassword = \"hunter2-secret\"\n",
    )
    .unwrap();
    let out = check(
        &[
            "--config",
            file.to_str().unwrap(),
            "--data",
            "/srv/natter",
            "--nats",
            "nats://127.0.0.1:4222",
        ],
        &[("NATTER_LISTEN", "127.0.0.1:9000")],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("# {}: valid", file.display())),
        "{stdout}"
    );
    assert_eq!(line(&stdout, "data"), "data = \"/srv/natter\"  # flag");
    // The environment beats the file.
    assert_eq!(
        line(&stdout, "listen"),
        "listen = \"127.0.0.1:9000\"  # env"
    );
    assert_eq!(line(&stdout, "name"), "name = \"chat.example.org\"  # file");
    assert_eq!(
        line(&stdout, "websocket.window"),
        "websocket.window = 100  # file"
    );
    assert_eq!(
        line(&stdout, "registration"),
        "registration = \"invite\"  # default"
    );
    assert_eq!(
        line(&stdout, "retention.device_ttl"),
        "retention.device_ttl = \"90d\"  # default"
    );
    assert_eq!(
        line(&stdout, "nats.url"),
        "nats.url = \"nats://127.0.0.1:4222\"  # flag"
    );
    assert_eq!(line(&stdout, "nats.user"), "nats.user = \"core\"  # file");
    assert_eq!(
        line(&stdout, "nats.password"),
        "nats.password = (redacted)  # file"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    // A check opens nothing: no data folder was made.
    assert!(!std::path::Path::new("/srv/natter").exists());
}

#[test]
fn config_check_refuses_an_invalid_config_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[websocket]\nwindow = 0\n").unwrap();
    let out = check(&["--config", bad.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("the configuration is not valid: invalid setting websocket.send_queue"),
        "{stderr}"
    );

    std::fs::write(&bad, "[websocket]\nwindwo = 10\n").unwrap();
    let out = check(&["--config", bad.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown field `windwo`"), "{stderr}");

    // A core needs NATS.
    let out = check(&["--role", "core"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid setting nats"), "{stderr}");
}
