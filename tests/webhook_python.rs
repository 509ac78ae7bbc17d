//! A webhook receiver in Python, written from docs/events.md with only `hmac` and `hashlib`
//! (tests/interop/webhook_receiver.py), verifies real deliveries of the real binary: every
//! event arrives with a signature it accepts, and the same body changed by one byte is refused.
//! Without python3 the test says so on stderr and is skipped; with ACCRUAL_REQUIRE_INTEROP=1
//! (set by .ci/run) it fails instead.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, register_acme_and_api_calls, Server};
use proto::v1 as pb;
use proto::v1::webhook_service_client::WebhookServiceClient;

fn python() -> Option<String> {
    let name = std::env::var("ACCRUAL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&name).arg("--version").stdout(Stdio::null()).status();
    ok.is_ok_and(|s| s.success()).then_some(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_receiver_verifies_every_delivery_with_hmac_and_hashlib() {
    let Some(python) = python() else {
        let required = std::env::var("ACCRUAL_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(!required, "python3 is required (ACCRUAL_REQUIRE_INTEROP=1)");
        eprintln!("skipped: no python3 (set ACCRUAL_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--webhooks-allow-loopback", "--webhook-backoff-ms", "50"];
    let server = Server::start_with(&dir.path().join("data"), free_port(), &flags);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let head = common::append_probe(&mut c).await;
    let receiver_port = free_port();
    let mut w = WebhookServiceClient::new(server.serving("accrual.v1.WebhookService").await);
    let req = pb::CreateWebhookEndpointRequest {
        url: format!("http://127.0.0.1:{receiver_port}/hooks"),
        types: vec![],
        from_position: Some(0),
    };
    let secret = w.create_webhook_endpoint(req).await.unwrap().into_inner().secret;
    let out = dir.path().join("received.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/webhook_receiver.py");
    let mut receiver = Command::new(python)
        .arg(script)
        .arg(receiver_port.to_string())
        .arg(&secret)
        .arg(&out)
        .spawn()
        .expect("start the Python receiver");
    let mut lines = Vec::new();
    for _ in 0..600 {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        lines =
            text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect();
        if lines.len() as u64 >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = receiver.kill();
    let _ = receiver.wait();
    let positions: Vec<u64> = lines.iter().map(|l| l["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (0..head).collect::<Vec<_>>(), "every event, in order");
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:?}");
    assert!(lines.iter().all(|l| l["tampered_verified"] == false), "{lines:?}");
    assert!(server.terminate().await.success());
}
