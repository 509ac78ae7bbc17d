//! Credit notes (SPEC §8.3, issue 13) on the real binary: issued through gRPC against an issued
//! invoice, with their effect on the invoice (amount due, status, amount credited), the
//! customer's credit balance, the journal (SPEC §8.5: tax reversed pro rata, the trial balance
//! balances) and the query service; refused notes append nothing; a restart and `replay
//! verify` keep everything.

mod common;

use common::{
    append_probe, growth_plan, in_first_period, register_acme_and_api_calls, replay_verify_at,
    start_sub_1_backdated, Server,
};
use proto::v1 as pb;
use proto::v1::command_service_client::CommandServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;
use tonic::Code;

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date()
        .to_string()
}

fn note(key: &str, lines: &[(u32, &str)], destination: &str) -> pb::IssueCreditNoteRequest {
    pb::IssueCreditNoteRequest {
        idempotency_key: key.into(),
        invoice_id: "inv-sub-1-1".into(),
        lines: lines
            .iter()
            .map(|(i, a)| pb::CreditNoteLineRequest { line_index: *i, amount: a.to_string() })
            .collect(),
        reason: "service outage on the 3rd".into(),
        destination: destination.into(),
    }
}

/// The type (google.rpc.PreconditionFailure) of a FAILED_PRECONDITION.
fn refused<T: std::fmt::Debug>(reply: Result<tonic::Response<T>, tonic::Status>) -> String {
    use tonic_types::StatusExt;
    let status = reply.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let failure = status.get_details_precondition_failure().expect("a PreconditionFailure");
    failure.violations[0].r#type.clone()
}

/// acme's sub-1 on `growth`, started a month ago, 50 calls in its first period, billed now:
/// base fee 20.00 + 50 calls × 1.00, 10 % tax → 70.00 + 7.00 = 77.00 (`inv-sub-1-1`).
async fn billed_invoice(c: &mut CommandServiceClient<Channel>) -> pb::Invoice {
    register_acme_and_api_calls(c).await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    start_sub_1_backdated(c, "growth").await;
    let usage = pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: "t-1".into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(in_first_period()),
        properties: [("calls".to_string(), "50".to_string())].into(),
    };
    c.record_usage(usage).await.unwrap();
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    let invoice = run.invoices.into_iter().next().expect("the first period's invoice");
    assert_eq!(invoice.invoice_id, "inv-sub-1-1");
    assert_eq!((invoice.subtotal.as_str(), invoice.tax.as_str()), ("70.00", "7.00"));
    invoice
}

#[tokio::test]
async fn credit_notes_credit_an_invoice_without_changing_it_and_keep_the_books_balanced() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let invoice = billed_invoice(&mut c).await;
    let lines: Vec<(&str, &str)> =
        invoice.lines.iter().map(|l| (l.kind.as_str(), l.amount.as_str())).collect();
    assert_eq!(lines, vec![("base_fee", "20.00"), ("usage", "50.00")]);

    // An offset of 10.00 on the usage line: tax 10 % pro rata, the amount due drops.
    let offset = c.issue_credit_note(note("cn-a", &[(1, "10.00")], "offset")).await;
    let offset = offset.unwrap().into_inner();
    let n = offset.credit_note.as_ref().unwrap();
    assert_eq!((n.credit_note_id.as_str(), n.number), ("cn-acme-1", 1));
    assert_eq!((n.subtotal.as_str(), n.tax.as_str(), n.total.as_str()), ("10.00", "1.00", "11.00"));
    let after = offset.invoice.as_ref().unwrap();
    assert_eq!((after.total.as_str(), after.amount_due.as_str()), ("77.00", "66.00"));
    assert_eq!((after.amount_credited.as_str(), after.status.as_str()), ("11.00", "open"));
    assert_eq!(after.lines, invoice.lines, "the invoice document never changes");

    // The same key again: the original note, nothing appended.
    let again = c.issue_credit_note(note("cn-a", &[(1, "10.00")], "offset")).await.unwrap();
    let again = again.into_inner();
    assert!(again.ack.as_ref().unwrap().duplicate);
    assert_eq!(again.credit_note, offset.credit_note);

    // Refusals append nothing.
    let before = append_probe(&mut c).await;
    let cases = [
        (note("r1", &[(1, "10.00")], "refund"), "CREDIT_EXCEEDS_PAID"),
        (note("r2", &[(1, "40.01")], "offset"), "CREDIT_EXCEEDS_CREDITABLE"),
        (note("r3", &[(0, "")], "credit"), "CREDIT_EXCEEDS_PAID"),
    ];
    for (request, reason) in cases {
        assert_eq!(refused(c.issue_credit_note(request).await), reason);
    }
    let bad = c.issue_credit_note(note("r4", &[(0, "5")], "gift")).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let unknown = pb::IssueCreditNoteRequest {
        invoice_id: "inv-none".into(),
        ..note("r5", &[(0, "")], "offset")
    };
    assert_eq!(c.issue_credit_note(unknown).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(append_probe(&mut c).await, before + 1, "refused notes appended nothing");

    // Paid in full, then the base fee is credited to the customer's balance.
    let pay = pb::RecordPaymentRequest {
        idempotency_key: "pay-1".into(),
        invoice_id: "inv-sub-1-1".into(),
        succeeded: true,
        amount: "66.00".into(),
        ..Default::default()
    };
    let paid = c.record_payment(pay).await.unwrap().into_inner();
    assert_eq!(paid.invoice.as_ref().unwrap().status, "paid");
    let credit = c.issue_credit_note(note("cn-b", &[(0, "")], "credit")).await.unwrap();
    let credit = credit.into_inner();
    let n = credit.credit_note.as_ref().unwrap();
    assert_eq!((n.credit_note_id.as_str(), n.total.as_str()), ("cn-acme-2", "22.00"));
    let void = pb::VoidInvoiceRequest {
        idempotency_key: "void-1".into(),
        invoice_id: "inv-sub-1-1".into(),
        reason: "mistake".into(),
    };
    assert_eq!(refused(c.void_invoice(void).await), "INVOICE_NOT_VOIDABLE");
    let head = credit.ack.as_ref().unwrap().position;

    // The read side.
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let at = Some(head);
    let get = pb::CreditNoteQuery { credit_note_id: "cn-acme-2".into(), min_position: at };
    let got = q.get_credit_note(get).await.unwrap().into_inner();
    assert_eq!(got.credit_note, credit.credit_note);
    let of_invoice = pb::ListCreditNotesRequest {
        invoice_id: "inv-sub-1-1".into(),
        min_position: at,
        ..Default::default()
    };
    let listed = q.list_credit_notes(of_invoice).await.unwrap().into_inner();
    let ids: Vec<&str> = listed.credit_notes.iter().map(|n| n.credit_note_id.as_str()).collect();
    assert_eq!(ids, ["cn-acme-1", "cn-acme-2"]);
    let both = pb::ListCreditNotesRequest {
        invoice_id: "inv-sub-1-1".into(),
        customer_id: "acme".into(),
        min_position: at,
    };
    assert_eq!(q.list_credit_notes(both).await.unwrap_err().code(), Code::InvalidArgument);
    let balance = pb::CustomerCreditQuery { customer_id: "acme".into(), min_position: at };
    let balance = q.get_customer_credit(balance).await.unwrap().into_inner();
    assert_eq!((balance.currency.as_str(), balance.balance.as_str()), ("USD", "22.00"));
    let read = pb::InvoiceQuery {
        as_recorded_at: None,
        invoice_id: "inv-sub-1-1".into(),
        min_position: at,
    };
    let read = q.get_invoice(read).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(
        (read.status.as_str(), read.amount_due.as_str(), read.amount_credited.as_str()),
        ("paid", "0.00", "33.00")
    );
    assert_eq!(read.credit_note_ids, ["cn-acme-1", "cn-acme-2"]);

    // The journal: tax payable 7.00 - 1.00 - 2.00, customer credit 22.00, trial balance even.
    let as_of = pb::AsOfRequest { as_recorded_at: None, as_of: today(), min_position: at };
    let balances = q.get_balances(as_of.clone()).await.unwrap().into_inner();
    let usd = &balances.balances[0];
    assert_eq!((usd.tax_payable.as_str(), usd.customer_credit.as_str()), ("4.00", "22.00"));
    assert_eq!((usd.accounts_receivable.as_str(), usd.cash.as_str()), ("0.00", "66.00"));
    // Revenue: 70.00 billed, less the 30.00 credited (all recognized before the notes).
    assert_eq!(usd.total_recognized_revenue, "40.00");
    let trial = q.get_trial_balance(as_of).await.unwrap().into_inner();
    common::assert_balanced(&trial);
    let entries = pb::ListJournalEntriesRequest { min_position: at, ..Default::default() };
    let entries = q.list_journal_entries(entries).await.unwrap().into_inner().entries;
    let notes: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "credit_note")
        .map(|e| e.credit_note_id.as_str())
        .collect();
    assert_eq!(notes, ["cn-acme-1", "cn-acme-2"]);

    // After a restart the write model still numbers and checks notes from the log.
    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    let third = c.issue_credit_note(note("cn-c", &[(1, "")], "refund")).await.unwrap();
    let third = third.into_inner().credit_note.unwrap();
    // 40.00 left on the usage line; its tax completes the invoice's 7.00 (1.00 + 2.00 + 4.00).
    assert_eq!((third.credit_note_id.as_str(), third.total.as_str()), ("cn-acme-3", "44.00"));
    let nothing_left = c.issue_credit_note(note("cn-d", &[(0, "0.01")], "refund")).await;
    assert_eq!(refused(nothing_left), "CREDIT_EXCEEDS_CREDITABLE");
}
