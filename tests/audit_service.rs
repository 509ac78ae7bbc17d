//! `accrual.v1.AuditService` on the real `accrual serve`, over a log written through its
//! CommandService: GetDigest and VerifyChain agree with each other and with `accrual audit
//! digest`, a kept digest that the chain does not have fails naming both hashes, Replay writes a
//! directory that `accrual serve --role query --read-only` serves at the cutoff, Export streams
//! balanced books in chunks, VerifyReadModels finds the live models equal to a rebuild, and bad
//! input is INVALID_ARGUMENT (or OUT_OF_RANGE) naming each bad field.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{free_port, growth_plan, register_acme_and_api_calls, start_sub_1_backdated, Server};
use proto::v1 as pb;
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use rust_decimal::Decimal;
use tonic::transport::Channel;
use tonic::Code;

const AUDIT: &str = "accrual.v1.AuditService";
const QUERY: &str = "accrual.v1.QueryService";

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn days_later(days: i64) -> prost_types::Timestamp {
    let mut t = now();
    t.seconds += days * 86_400;
    t
}

fn usage(tx: String, calls: u32) -> pb::UsageEvent {
    pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: tx,
        metric_code: "api_calls".into(),
        occurred_at: Some(now()),
        properties: [("calls".to_string(), calls.to_string())].into(),
    }
}

/// A customer on a plan billed in advance, started a month ago (an invoice at once), usage, a
/// payment, and a billing run now (the first period closes: a second invoice). Returns the
/// last position.
async fn write_books(c: &mut CommandServiceClient<Channel>) -> u64 {
    register_acme_and_api_calls(c).await;
    let plan = pb::PublishPlanRequest { base_fee_in_advance: true, ..growth_plan("0.10") };
    c.publish_plan(plan).await.unwrap();
    start_sub_1_backdated(c, "growth").await;
    for i in 0..3 {
        let one = c.record_usage(usage(format!("one-{i}"), i + 1)).await.unwrap().into_inner();
        assert_eq!(one.status, "accepted");
    }
    for b in 0..3 {
        let events = (0..5).map(|i| usage(format!("batch-{b}-{i}"), 10 + i)).collect();
        let batch = pb::UsageBatch { events };
        let mut acks = c.ingest_usage(tokio_stream::iter(vec![batch])).await.unwrap().into_inner();
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!((ack.accepted, ack.rejected), (5, 0));
    }
    let payment = pb::RecordPaymentRequest {
        invoice_id: "inv-sub-1-1".into(),
        amount: "10.00".into(),
        succeeded: true,
        ..Default::default()
    };
    c.record_payment(payment).await.unwrap();
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    assert!(!run.invoices.is_empty(), "the billing run issues an invoice");
    run.ack.unwrap().position
}

/// The bad fields of an INVALID_ARGUMENT (or OUT_OF_RANGE) with a BadRequest.
fn bad_fields(status: &tonic::Status, code: Code) -> Vec<String> {
    assert_eq!(status.code(), code, "{status:?}");
    common::violation_fields(status)
}

/// Streams an export; checks every chunk is at most 64 KiB. Returns the text and the position
/// in the `accrual-position` header.
async fn export(a: &mut AuditServiceClient<Channel>, req: pb::ExportRequest) -> (String, u64) {
    let (data, position) = export_bytes(a, req).await;
    (String::from_utf8(data).expect("utf-8"), position)
}

/// The concatenated chunks of an export and its position header.
async fn export_bytes(
    a: &mut AuditServiceClient<Channel>,
    req: pb::ExportRequest,
) -> (Vec<u8>, u64) {
    let response = a.export(req).await.unwrap();
    let position = response.metadata().get("accrual-position").expect("a position header");
    let position = position.to_str().unwrap().parse().unwrap();
    let mut stream = response.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(!chunk.data.is_empty() && chunk.data.len() <= 64 * 1024, "{}", chunk.data.len());
        data.extend(chunk.data);
    }
    (data, position)
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is not a decimal"))
}

/// The journal CSV: header, then rows; every entry's debits equal its credits. Returns the
/// rows' log positions.
fn check_journal_csv(text: &str) -> Vec<u64> {
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(
        header,
        [
            "entry",
            "date",
            "kind",
            "invoice_id",
            "subscription_id",
            "currency",
            "account",
            "debit",
            "credit",
            "log_position",
            "credit_note_id",
            "wallet_id"
        ]
    );
    let mut entries: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    let mut positions = Vec::new();
    for record in reader.records() {
        let r = record.expect("every row has the header's fields");
        let e = entries.entry(r[0].to_string()).or_default();
        e.0 += dec(&r[7]);
        e.1 += dec(&r[8]);
        positions.push(r[9].parse().unwrap());
    }
    for (entry, (debit, credit)) in &entries {
        assert_eq!(debit, credit, "entry {entry} balances");
    }
    positions
}

/// `accrual audit digest --data-dir <dir> [--position N]`'s head hash.
fn cli_digest(data: &Path, position: Option<u64>) -> (u64, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accrual"));
    cmd.args(["audit", "digest", "--data-dir"]).arg(data);
    if let Some(p) = position {
        cmd.args(["--position", &p.to_string()]);
    }
    let out = cmd.output().expect("run accrual audit digest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // position=N head=HEX
    let fields: BTreeMap<&str, &str> =
        stdout.split_whitespace().filter_map(|w| w.split_once('=')).collect();
    (fields["position"].parse().unwrap(), fields["head"].to_string())
}

/// The services reflection lists (what grpcurl does first).
async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel);
    let replies = client.server_reflection_info(tokio_stream::iter(vec![request])).await;
    let mut replies = replies.unwrap().into_inner();
    match replies.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

async fn health(channel: Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
    health.check(req).await.map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_service_over_the_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, free_port());
    let channel = server.serving(AUDIT).await;
    assert!(reflected_services(channel.clone()).await.iter().any(|s| s == AUDIT));
    let mut c = CommandServiceClient::new(channel.clone());
    let last = write_books(&mut c).await;
    let mut a = AuditServiceClient::new(channel.clone());

    // The digest of the whole log, and the chain verified up to it.
    let digest = a.get_digest(pb::GetDigestRequest::default()).await.unwrap().into_inner();
    let head = digest.position;
    assert_eq!(head, last, "the head is the last acknowledged position (a log length)");
    let chain = a.verify_chain(pb::VerifyChainRequest::default()).await.unwrap().into_inner();
    assert!(chain.ok && chain.first_break.is_none(), "{chain:?}");
    assert_eq!((chain.position, chain.events_verified), (head, head));
    assert_eq!(chain.head_hash, digest.head_hash);

    // A digest kept at the middle: the chain still has it; another hash there is a break
    // naming both.
    let half = head / 2;
    let at_half = pb::GetDigestRequest { position: Some(half) };
    let kept = a.get_digest(at_half).await.unwrap().into_inner();
    assert_eq!(kept.position, half);
    assert_ne!(kept.head_hash, digest.head_hash);
    let check = |expected: &str| pb::VerifyChainRequest {
        position: Some(half),
        expected_digest: expected.to_string(),
    };
    let same = a.verify_chain(check(&kept.head_hash)).await.unwrap().into_inner();
    assert!(same.ok, "{same:?}");
    assert_eq!((same.events_verified, same.head_hash.as_str()), (half, kept.head_hash.as_str()));
    let wrong = a.verify_chain(check(&digest.head_hash)).await.unwrap().into_inner();
    assert!(!wrong.ok, "a digest the chain does not have");
    let b = wrong.first_break.expect("the break");
    assert_eq!((b.position, b.kind.as_str()), (half, "digest"));
    assert_eq!((b.expected.as_str(), b.actual.as_str()), (&*digest.head_hash, &*kept.head_hash));
    assert!(b.description.contains(&digest.head_hash) && b.description.contains(&kept.head_hash));

    // Replay to the middle: the digests at that position, a directory the query service serves.
    let replay = pb::ReplayRequest {
        cutoff: Some(pb::replay_request::Cutoff::Position(half)),
        name: "half".into(),
        ..Default::default()
    };
    let done = a.replay(replay.clone()).await.unwrap().into_inner();
    assert_eq!((done.name.as_str(), done.end_position, done.events), ("half", half, half));
    assert_eq!(done.log_head_hash, kept.head_hash, "tied to the log at the cutoff");
    let names: Vec<&str> = done.projections.iter().map(|p| p.projection.as_str()).collect();
    assert_eq!(names, ["invoices", "mrr", "journal"]);
    assert!(done.projections.iter().all(|p| p.position == half && p.sha256.len() == 64));
    assert!(done.secs >= 0.0 && done.events_per_s >= 0.0);
    let replayed = Path::new(&done.directory);
    assert!(replayed.is_absolute() && replayed.ends_with("replays/half"), "{replayed:?}");
    assert!(replayed.join("replay.json").is_file() && replayed.join("read-models").is_dir());
    let again = a.replay(replay).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // By recorded time, one projection, a generated name: everything recorded so far.
    let later = pb::ReplayRequest {
        cutoff: Some(pb::replay_request::Cutoff::RecordedAt(days_later(1))),
        projections: vec!["journal".into()],
        ..Default::default()
    };
    let all = a.replay(later).await.unwrap().into_inner();
    assert!(all.name.starts_with("replay-"), "{}", all.name);
    assert_eq!((all.end_position, all.projections.len()), (head, 1));
    assert_eq!(all.log_head_hash, digest.head_hash);

    // Exports: the live journal balances entry by entry; at a cutoff only earlier events. A live
    // export reads the read model as it stands, so first wait until it includes the whole log.
    let mut live = QueryServiceClient::new(channel.clone());
    let caught_up = pb::AsOfRequest {
        as_recorded_at: None,
        as_of: "2099-12-31".into(),
        min_position: Some(head),
    };
    live.get_trial_balance(caught_up).await.unwrap();
    let journal = pb::ExportRequest { kind: "journal".into(), ..Default::default() };
    let (csv, position) = export(&mut a, journal.clone()).await;
    let positions = check_journal_csv(&csv);
    assert!(!positions.is_empty() && position <= head, "{position}");
    let at_half = pb::ExportRequest {
        cutoff: Some(pb::export_request::Cutoff::Position(half)),
        ..journal.clone()
    };
    let (csv, position) = export(&mut a, at_half.clone()).await;
    assert_eq!(position, half);
    assert!(check_journal_csv(&csv).iter().all(|p| *p < half), "only events before the cutoff");
    // The same export as Parquet (one currency's rows, as --currency): the CSV's row count.
    let parquet = pb::ExportRequest { format: "parquet".into(), currency: "USD".into(), ..at_half };
    let (bytes, position) = export_bytes(&mut a, parquet).await;
    assert_eq!(position, half);
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"), "a Parquet file");
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let rows = reader.metadata().file_metadata().num_rows();
    assert_eq!(rows as usize, csv.lines().count() - 1, "the CSV's rows");
    let tb = pb::ExportRequest {
        kind: "trial-balance".into(),
        format: "json".into(),
        effective: "2099-12-31".into(),
        ..Default::default()
    };
    let (json, _) = export(&mut a, tb).await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("a JSON array");
    let total = rows.iter().find(|r| r["account"] == "TOTAL").expect("a TOTAL row");
    assert_eq!(dec(total["debit"].as_str().unwrap()), dec(total["credit"].as_str().unwrap()));
    assert!(dec(total["debit"].as_str().unwrap()) > Decimal::ZERO, "{json}");

    // The live read models equal a rebuild at their checkpoints.
    let verdicts = a.verify_read_models(pb::VerifyReadModelsRequest::default()).await.unwrap();
    let verdicts = verdicts.into_inner();
    assert!(verdicts.ok, "{verdicts:?}");
    let names: Vec<&str> = verdicts.verdicts.iter().map(|v| v.projection.as_str()).collect();
    assert_eq!(names, ["invoices", "mrr", "journal"]);
    assert!(verdicts.verdicts.iter().all(|v| v.equal && v.live_sha256 == v.rebuilt_sha256));

    // Bad input: every bad field named; a position beyond the head is OUT_OF_RANGE.
    let bad = pb::ReplayRequest {
        cutoff: None,
        projections: vec!["ledger".into()],
        name: "Q1_close".into(),
    };
    let status = a.replay(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["cutoff", "projections[0]", "name"]);
    let bad = pb::ReplayRequest {
        cutoff: Some(pb::replay_request::Cutoff::RecordedAt(prost_types::Timestamp {
            seconds: 0,
            nanos: 2_000_000_000,
        })),
        ..Default::default()
    };
    let status = a.replay(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["recorded_at"]);
    let beyond = pb::ReplayRequest {
        cutoff: Some(pb::replay_request::Cutoff::Position(head + 5)),
        name: "beyond".into(),
        ..Default::default()
    };
    let status = a.replay(beyond).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::OutOfRange), ["position"]);
    assert!(!data.join("replays/beyond").exists(), "a refused replay leaves nothing");
    let status = a.get_digest(pb::GetDigestRequest { position: Some(head + 1) }).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::OutOfRange), ["position"]);
    let bad = pb::VerifyChainRequest { position: None, expected_digest: "abc".into() };
    let status = a.verify_chain(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["expected_digest"]);
    let bad = pb::VerifyChainRequest { position: None, expected_digest: kept.head_hash.clone() };
    let status = a.verify_chain(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["position"]);
    let bad = pb::ExportRequest {
        kind: "ledger".into(),
        format: "xlsx".into(),
        from: "2025-02-30".into(),
        granularity: "week".into(),
        currency: "usd".into(),
        ..Default::default()
    };
    let status = a.export(bad).await.unwrap_err();
    assert_eq!(
        bad_fields(&status, Code::InvalidArgument),
        ["kind", "format", "from", "granularity", "currency"]
    );
    let bad = pb::ExportRequest {
        kind: "usage-daily".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    let status = a.export(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["currency"]);
    let bad = pb::ExportRequest {
        kind: "trial-balance".into(),
        from: "2025-01-01".into(),
        granularity: "day".into(),
        ..Default::default()
    };
    let status = a.export(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["granularity", "from"]);
    let bad = pb::VerifyReadModelsRequest { projections: vec!["mrr".into(), "books".into()] };
    let status = a.verify_read_models(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status, Code::InvalidArgument), ["projections[1]"]);

    // The replay is served read-only at its cutoff (while the live server runs), without an
    // AuditService: that process has no log.
    let past = Server::start_with(replayed, free_port(), &["--role", "query", "--read-only"]);
    let past_channel = past.serving(QUERY).await;
    let mut q = QueryServiceClient::new(past_channel.clone());
    let as_of =
        pb::AsOfRequest { as_recorded_at: None, as_of: "2099-12-31".into(), min_position: None };
    let tb = q.get_trial_balance(as_of).await.unwrap().into_inner();
    assert_eq!(tb.position, half, "the replay states its cutoff");
    let status = health(past_channel.clone(), AUDIT).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "no AuditService without a log");
    assert!(!reflected_services(past_channel.clone()).await.iter().any(|s| s == AUDIT));
    let mut past_audit = AuditServiceClient::new(past_channel);
    let status = past_audit.get_digest(pb::GetDigestRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    drop(past);

    // After the server stops, the CLI's audit reads the same digests from the raw log.
    assert!(server.terminate().await.success(), "SIGTERM: graceful exit 0");
    assert_eq!(cli_digest(&data, None), (head, digest.head_hash.clone()));
    assert_eq!(cli_digest(&data, Some(half)), (half, kept.head_hash.clone()));
}
