//! The webhook over real HTTPS: a certificate made with `openssl`, the server on loopback,
//! and `curl` posting an AdmissionReview, as the API server would.

use std::process::Command;
use std::time::{Duration, Instant};

// Two workers: the test blocks one on curl while the server runs on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_answers_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (Debian package openssl)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (c, k) = (cert.clone(), key.clone());
    let server =
        tokio::spawn(async move { heddle_manager::webhook::serve(None, listen, &c, &k).await });
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "tls-1",
            "kind": {"group": "heddle.dev", "version": "v1alpha1", "kind": "ProviderNetwork"},
            "resource": {"group": "heddle.dev", "version": "v1alpha1", "resource": "providernetworks"},
            "name": "ok", "operation": "CREATE", "userInfo": {},
            "object": {"apiVersion": "heddle.dev/v1alpha1", "kind": "ProviderNetwork", "metadata": {"name": "ok"},
                       "spec": {"interface": "eth1", "vlanPool": [{"start": 100, "end": 199}]}}
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&cert)
            .args([
                "-H",
                "Content-Type: application/json",
                "--data",
                &review.to_string(),
            ])
            .arg(format!("https://localhost:{port}/validate"))
            .output()
            .expect("curl is installed (Debian package curl)");
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"]["uid"], "tls-1");
    assert_eq!(v["response"]["allowed"], true, "{v}");
    server.abort();
}
