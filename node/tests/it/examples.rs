//! examples/compose without containers (no container engine runs where the
//! tests run, and container images cannot be pulled there): the example's own
//! files, read as Docker Compose reads them, and the same processes started
//! from them. What this does and does not check: examples/compose/README.md.
//! (examples/systemd and the walkthrough of docs/operations.md are checked by
//! scripts/test-examples.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::support::nats::NatsServer;
use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::s3::S3Server;
use crate::support::{TestNode, WsClient};

fn compose_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/compose")
}

/// compose.yaml as JSON. No YAML crate is in the tree: Python's PyYAML
/// (Debian's python3-yaml; scripts/test installs it) reads it.
fn compose() -> Value {
    let file = compose_dir().join("compose.yaml");
    let script = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    for python in ["python3", "/usr/bin/python3"] {
        let Ok(out) = Command::new(python)
            .args(["-c", script])
            .arg(&file)
            .stderr(Stdio::piped())
            .output()
        else {
            continue;
        };
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("compose.yaml as JSON");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("No module named 'yaml'"),
            "{} is not valid YAML: {stderr}",
            file.display()
        );
    }
    panic!("no python3 with PyYAML: scripts/test installs Debian's python3-yaml");
}

/// A value with Compose's `${VAR:-default}` replaced by its default (the
/// example as run with none of its variables set). A variable without a
/// default fails the test: the example must run as documented.
fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("${{{inner}}} has no default in compose.yaml"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A service's environment (map or list form), interpolated.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), interpolate(v.as_str().expect("string value"))))
            .collect(),
        Value::Array(list) => list
            .iter()
            .map(|item| {
                let (k, v) = item.as_str().unwrap().split_once('=').expect("KEY=value");
                (k.to_owned(), interpolate(v))
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("environment: {other}"),
    }
}

/// A service's mounts (short syntax) as target → source.
fn mounts(service: &Value) -> BTreeMap<String, String> {
    let Some(list) = service["volumes"].as_array() else {
        return BTreeMap::new();
    };
    list.iter()
        .map(|v| {
            let mut parts = v.as_str().expect("short volume syntax").split(':');
            let source = parts.next().unwrap().to_owned();
            let target = parts.next().expect("SOURCE:TARGET").to_owned();
            (target, source)
        })
        .collect()
}

fn config_text() -> String {
    std::fs::read_to_string(compose_dir().join("natter.toml")).unwrap()
}

/// `host:port` of a URL like `scheme://host:port/…`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").expect("a URL").1;
    rest.split('/').next().unwrap()
}

/// `natterd`'s arguments in the image (Dockerfile's CMD after its ENTRYPOINT).
fn image_command() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(compose_dir().join("Dockerfile")).unwrap();
    let line = |key: &str| {
        let line = dockerfile
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in the Dockerfile"));
        serde_json::from_str::<Vec<String>>(&line[key.len()..]).expect("exec form")
    };
    assert_eq!(line("ENTRYPOINT "), ["natterd"]);
    line("CMD ")
}

fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    let i = args.iter().position(|a| a == name).expect(name);
    &args[i + 1]
}

/// The compose file, the Dockerfile and natter.toml agree with each other:
/// what `docker compose up` would need that can be checked without an engine.
#[test]
fn compose_example_files_fit_together() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for name in ["nats", "minio", "minio-bucket", "natter"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let natter = &services["natter"];
    let dir = compose_dir();
    // Every bind mount's source exists; every named volume is declared.
    for (name, service) in services {
        for (target, source) in mounts(service) {
            if source.starts_with('.') || source.starts_with('/') {
                assert!(dir.join(&source).exists(), "{name}: {source} is missing");
            } else {
                assert!(
                    compose["volumes"].get(&source).is_some(),
                    "{name}: volume {source} ({target}) is not declared"
                );
            }
        }
    }
    let context = dir.join(natter["build"]["context"].as_str().unwrap());
    let dockerfile = natter["build"]["dockerfile"].as_str().unwrap();
    assert!(context.join("Cargo.toml").is_file(), "context is the repo");
    assert!(context.join(dockerfile).is_file(), "{dockerfile}");

    // The image's command reads the mounted file and the data volume.
    let cmd = image_command();
    assert_eq!(cmd[0], "serve");
    let mounted = mounts(natter);
    assert_eq!(
        mounted.get(flag(&cmd, "--config")).map(String::as_str),
        Some("./natter.toml")
    );
    let data = mounted.get(flag(&cmd, "--data")).expect("data mounted");
    assert!(compose["volumes"].get(data).is_some(), "data on a volume");

    // natter.toml: listeners on the published container ports (the admin
    // listener published on the host's loopback only), NATS and S3 at the
    // services' names, the bucket the bucket job makes.
    let config: toml::Table = config_text().parse().unwrap();
    let published: Vec<&str> = natter["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(published.contains(&"127.0.0.1:7070:7070"), "{published:?}");
    assert!(published.contains(&"127.0.0.1:7071:7071"), "{published:?}");
    assert_eq!(config["listen"].as_str(), Some("0.0.0.0:7070"));
    assert_eq!(config["admin"]["listen"].as_str(), Some("0.0.0.0:7071"));
    let nats_url = config["nats"]["url"].as_str().unwrap();
    assert_eq!(authority(nats_url), "nats:4222");
    let nats_cmd = services["nats"]["command"].as_array().unwrap();
    assert!(nats_cmd.contains(&json!("-js")), "natter needs JetStream");
    let endpoint = config["media"]["s3"]["endpoint"].as_str().unwrap();
    assert_eq!(authority(endpoint), "minio:9000");
    let store = config["media"]["store"].as_str().unwrap();
    let bucket = store.strip_prefix("s3://").unwrap().split('/').next();
    let make_bucket = services["minio-bucket"]["command"].to_string();
    assert!(
        make_bucket.contains(&format!("local/{}", bucket.unwrap())),
        "{make_bucket}"
    );
    let depends = natter["depends_on"].as_object().unwrap();
    assert_eq!(depends["nats"]["condition"], "service_healthy");
    assert_eq!(
        depends["minio-bucket"]["condition"],
        "service_completed_successfully"
    );
    // natterd's S3 credentials are MinIO's.
    let env: BTreeMap<_, _> = environment(natter).into_iter().collect();
    let minio: BTreeMap<_, _> = environment(&services["minio"]).into_iter().collect();
    assert_eq!(env["AWS_ACCESS_KEY_ID"], minio["MINIO_ROOT_USER"]);
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], minio["MINIO_ROOT_PASSWORD"]);
}

/// `natterd config check` with the image's command, on the mounted file, in
/// the environment compose.yaml gives natterd.
#[test]
fn compose_example_config_passes_config_check() {
    let compose = compose();
    let natter = &compose["services"]["natter"];
    let data = tempfile::tempdir().unwrap();
    let cmd = image_command();
    let mut command = Command::new(env!("CARGO_BIN_EXE_natterd"));
    command.args(["config", "check"]);
    for (i, arg) in cmd.iter().enumerate().skip(1) {
        // The container's paths, as the mounts map them here.
        match cmd[i - 1].as_str() {
            "--config" => command.arg(compose_dir().join("natter.toml")),
            "--data" => command.arg(data.path()),
            _ => command.arg(arg),
        };
    }
    let inherited: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("NATTER_") || k.starts_with("AWS_") || k == "RUST_LOG")
        .collect();
    for var in inherited {
        command.env_remove(var);
    }
    let out = command.envs(environment(natter)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "registration = \"invite\"  # file",
        "nats.url = \"nats://nats:4222\"  # file",
        "media.store = \"s3://natter-media/attachments\"  # file",
        "media.s3.endpoint = \"http://minio:9000\"  # file",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} in:\n{stdout}");
    }
}

/// PUTs `body` to an upload target with every header it names.
async fn upload(http: &reqwest::Client, target: &Value, body: &[u8]) {
    let mut request = http.put(target["uploadUrl"].as_str().unwrap());
    for (name, value) in target["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let response = request.body(body.to_vec()).send().await.unwrap();
    assert_eq!(response.status(), 200, "upload to the S3 server");
}

/// Registers `name` with a fresh invite (the example's registration is
/// `invite`), as a client would.
async fn register_with_invite(node: &TestNode, name: &str) {
    let (status, invite) = node
        .admin(reqwest::Method::POST, "/invites", Some(json!({"uses": 1})))
        .await;
    assert_eq!(status, 201, "{invite}");
    let (status, body) = node
        .post(
            "/v1/register",
            json!({"username": name, "password": "password123", "invite": invite["code"]}),
        )
        .await;
    assert_eq!(status, 201, "register {name}: {body}");
}

/// The stack of compose.yaml as processes: nats-server with JetStream (what
/// the `nats` service runs), an S3 server with the example's bucket and
/// credentials (s3s-fs standing in for MinIO), and natterd with the example's
/// natter.toml and compose.yaml's environment. Ports are remapped to free
/// loopback ports and the S3 endpoint to the S3 server's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_example_stack_serves_registrations_messages_and_uploads() {
    let compose = compose();
    let env = environment(&compose["services"]["natter"]);
    let var = |name: &str| env.iter().find(|(k, _)| k == name).unwrap().1.clone();
    let mut config: toml::Table = config_text().parse().unwrap();
    let store = config["media"]["store"].as_str().unwrap().to_owned();
    let (bucket, prefix) = store
        .strip_prefix("s3://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let s3 = S3Server::start_with(
        bucket,
        &var("AWS_ACCESS_KEY_ID"),
        &var("AWS_SECRET_ACCESS_KEY"),
    )
    .await;
    let mut s3_table = config["media"]["s3"].as_table().unwrap().clone();
    s3_table.insert("endpoint".into(), s3.endpoint.clone().into());
    config["media"]
        .as_table_mut()
        .unwrap()
        .insert("s3".into(), s3_table.into());
    let nats = NatsServer::start();
    // TestNode's --nats, --listen and --admin-listen flags beat the file's
    // addresses; the S3 credentials come only from the environment.
    let node = TestNode::with_env(
        Topology::Nats,
        &toml::to_string(&config).unwrap(),
        Some(nats),
        &env,
    )
    .await;
    for url in [node.main_url(), node.main_admin_url()] {
        let ready = node.http().get(format!("{url}/readyz")).send().await;
        assert_eq!(ready.unwrap().status(), 200, "{url}/readyz");
    }

    register_with_invite(&node, "dana").await;
    node.add_user("erin").await;
    let mut dana = node.connect(&node.login("dana").await).await;
    let mut erin: WsClient = node.connect(&node.login("erin").await).await;
    let chat = dana
        .ok(json!({"type":"createChat","participants":["erin"]}))
        .await["chatId"]
        .clone();
    let body = b"a file through the example's S3 store";
    let target = dana
        .ok(json!({"type":"getAttachmentTarget","size":body.len(),"contentType":"text/plain","name":"note.txt"}))
        .await;
    upload(node.http(), &target, body).await;
    let id = target["attachmentId"].as_str().unwrap();
    dana.ok(json!({"type":"sendMessage","chatId":chat,"message":"hello","attachments":[id]}))
        .await;
    let events = erin.drain().await;
    let message = events
        .iter()
        .find(|e| e["type"] == "newMessage")
        .expect("erin gets the message");
    assert_eq!(message["message"], "hello", "{message}");
    let link = erin
        .ok(json!({"type":"getAttachmentUrl","attachmentId":id}))
        .await;
    let download = node
        .http()
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap().as_ref(), body);
    // The bytes are in the example's bucket, under its prefix.
    let sealed = s3.object_path(&format!("{prefix}/sent/{id}"));
    assert_eq!(
        std::fs::read(&sealed).unwrap(),
        body,
        "{}",
        sealed.display()
    );
}

/// A minimal host (found running examples/systemd on a bare Debian root)
/// may have no CA certificates: natterd must still serve, and say why
/// federation over HTTPS will fail, instead of panicking at start.
#[tokio::test]
async fn a_host_without_ca_certificates_runs_a_node_and_says_so() {
    let empty = tempfile::tempdir().unwrap();
    let env = [
        ("SSL_CERT_FILE", empty.path().join("none.pem")),
        ("SSL_CERT_DIR", empty.path().to_path_buf()),
    ]
    .map(|(k, v)| (k.to_owned(), v.display().to_string()));
    let node = TestNode::with_env(Topology::Embedded, BASE_CONFIG, None, &env).await;
    node.user("alice").await;
    assert!(
        node.logs().contains("no TLS root certificates"),
        "{}",
        node.logs()
    );
}
