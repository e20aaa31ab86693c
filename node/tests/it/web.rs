//! The web client's server side: `GET /v1/info`, the embedded client at `/`,
//! its compression, caching and security headers.

use std::io::Read;

use crate::support::TestNode;
use crate::support::node::{BASE_CONFIG, Topology};

async fn get(node: &TestNode, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = node.http().get(format!("{}{path}", node.url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The policy's directive `name`, split into its sources.
fn directive(csp: &str, name: &str) -> Vec<String> {
    csp.split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {name} in {csp}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

async fn info_is_public_and_says_what_a_client_needs(t: Topology) {
    let node = TestNode::with_config(t, &BASE_CONFIG.replace("\"open\"", "\"invite\"")).await;
    let r = get(&node, "/v1/info", &[]).await;
    assert_eq!(r.status(), 200);
    let info: serde_json::Value = r.json().await.unwrap();
    assert_eq!(info["node"], "localhost");
    assert_eq!(info["protocol"], 1);
    assert_eq!(info["registration"], "invite");
    assert_eq!(info["limits"]["maxMessageBytes"], 16 * 1024);
    assert_eq!(info["limits"]["maxAttachmentBytes"], 100 << 20);
    assert_eq!(info["limits"]["maxAttachments"], 10);
    assert_eq!(info["mediaOrigin"], node.url.as_str());

    let closed = TestNode::with_config(t, &BASE_CONFIG.replace("\"open\"", "\"closed\"")).await;
    let info: serde_json::Value = get(&closed, "/v1/info", &[]).await.json().await.unwrap();
    assert_eq!(info["registration"], "closed");
}

async fn client_is_served_compressed_with_strict_headers(t: Topology) {
    let node = TestNode::start(t).await;
    let r = get(&node, "/", &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), "br");
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "referrer-policy"), "no-referrer");
    let csp = header(&r, "content-security-policy").to_owned();
    let ws = node.url.replacen("http://", "ws://", 1);
    assert_eq!(
        directive(&csp, "connect-src"),
        ["'self'", node.url.as_str(), ws.as_str()]
    );
    assert_eq!(directive(&csp, "script-src"), ["'self'"]);
    assert_eq!(directive(&csp, "default-src"), ["'none'"]);
    assert_eq!(directive(&csp, "frame-ancestors"), ["'none'"]);
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    let etag = header(&r, "etag").to_owned();
    let mut html = Vec::new();
    brotli::BrotliDecompress(&mut &r.bytes().await.unwrap()[..], &mut html).unwrap();
    let html = String::from_utf8(html).unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(!html.contains("<script>"), "no inline script");

    // Revalidation: the same ETag answers 304 without a body.
    let r = get(&node, "/", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), etag);

    // Modules come gzipped to clients without brotli, plain to the rest.
    let r = get(&node, "/web/app.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), "gzip");
    assert_eq!(header(&r, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    let mut js = String::new();
    flate2::read::GzDecoder::new(&r.bytes().await.unwrap()[..])
        .read_to_string(&mut js)
        .unwrap();
    let plain = get(&node, "/web/app.js", &[]).await;
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.text().await.unwrap(), js);

    for missing in ["/web/nope.js", "/web/index.html", "/web/..%2fCargo.toml"] {
        assert_eq!(get(&node, missing, &[]).await.status(), 404, "{missing}");
    }
}

crate::in_every_topology!(
    info_is_public_and_says_what_a_client_needs,
    client_is_served_compressed_with_strict_headers
);

/// With S3 media the policy lets the page reach the bucket, and nothing else.
#[tokio::test]
async fn policy_names_the_s3_media_origin() {
    let config = format!(
        "{BASE_CONFIG}\n[media]\nstore = \"s3://pics/natter\"\n[media.s3]\n\
         endpoint = \"https://s3.example.net\"\nregion = \"eu-west-1\"\n\
         access_key_id = \"ak\"\nsecret_access_key = \"sk\"\n"
    );
    let node = TestNode::with_config(Topology::Embedded, &config).await;
    let r = get(&node, "/", &[]).await;
    let csp = header(&r, "content-security-policy").to_owned();
    let ws = node.url.replacen("http://", "ws://", 1);
    assert_eq!(
        directive(&csp, "connect-src"),
        [
            "'self'",
            node.url.as_str(),
            ws.as_str(),
            "https://pics.s3.example.net"
        ]
    );
    assert_eq!(
        directive(&csp, "img-src"),
        ["'self'", "blob:", "https://pics.s3.example.net"]
    );
    let info: serde_json::Value = get(&node, "/v1/info", &[]).await.json().await.unwrap();
    assert_eq!(info["mediaOrigin"], "https://pics.s3.example.net");

    // An operator can name it when natter cannot tell, and turn the client off.
    let config = format!(
        "{BASE_CONFIG}\n[web]\nenabled = false\nmedia_origin = \"https://m.example.org\"\n"
    );
    let node = TestNode::with_config(Topology::Embedded, &config).await;
    assert_eq!(get(&node, "/", &[]).await.status(), 404);
    let info: serde_json::Value = get(&node, "/v1/info", &[]).await.json().await.unwrap();
    assert_eq!(info["mediaOrigin"], "https://m.example.org");
}
