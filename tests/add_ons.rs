//! Add-ons and one-off invoices (SPEC §8.4, issue 13) on the real binary: the catalogue
//! command, a one-off invoice issued at once outside any subscription (taxed, numbered per
//! customer), its revenue (at issue, or ratably over a service period), refusals that append
//! nothing, payment and a credit note on it, and `replay verify` after a restart.

mod common;

use common::{append_probe, register_acme_and_api_calls, replay_verify_at, Server};
use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::Code;

fn berlin_today() -> jiff::civil::Date {
    jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap()).date()
}

fn add_on(code: &str, currency: &str, amount: &str) -> pb::DefineAddOnRequest {
    pb::DefineAddOnRequest {
        idempotency_key: String::new(),
        code: code.into(),
        name: format!("{code} fee"),
        currency: currency.into(),
        amount: amount.into(),
        description: String::new(),
    }
}

fn line(code: &str, quantity: &str) -> pb::OneOffLine {
    pb::OneOffLine { add_on_code: code.into(), quantity: quantity.into(), ..Default::default() }
}

fn one_off(key: &str, lines: Vec<pb::OneOffLine>) -> pb::IssueOneOffInvoiceRequest {
    pb::IssueOneOffInvoiceRequest { idempotency_key: key.into(), customer_id: "acme".into(), lines }
}

#[tokio::test]
async fn a_one_off_invoice_of_add_ons_is_issued_taxed_recognized_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.define_add_on(add_on("setup", "USD", "100.00")).await.unwrap();
    c.define_add_on(add_on("training", "USD", "500.00")).await.unwrap();
    c.define_add_on(add_on("eu-audit", "EUR", "70.00")).await.unwrap();
    let replay = c.define_add_on(add_on("setup", "USD", "100.00")).await.unwrap().into_inner();
    assert!(replay.duplicate, "an identical add-on is a replay");
    let other = c.define_add_on(add_on("setup", "USD", "120.00")).await;
    assert_eq!(other.unwrap_err().code(), Code::AlreadyExists);

    // Setup once (recognized at issue), two training days delivered over 30 days (ratably).
    let today = berlin_today();
    let end = today.checked_add(jiff::Span::new().days(30)).unwrap();
    let training = pb::OneOffLine {
        service_start: today.to_string(),
        service_end: end.to_string(),
        ..line("training", "2")
    };
    let issued = c.issue_one_off_invoice(one_off("oo-1", vec![line("setup", ""), training])).await;
    let issued = issued.unwrap().into_inner();
    let inv = issued.invoice.unwrap();
    assert_eq!((inv.invoice_id.as_str(), inv.reason.as_str()), ("inv-acme-o1", "one_off"));
    assert_eq!((inv.subscription_id.as_str(), inv.status.as_str()), ("", "open"));
    let lines: Vec<(&str, &str, &str)> =
        inv.lines.iter().map(|l| (l.kind.as_str(), l.units.as_str(), l.amount.as_str())).collect();
    assert_eq!(lines, [("add_on", "1", "100.00"), ("add_on", "2", "1000.00")]);
    assert_eq!(
        (inv.subtotal.as_str(), inv.tax.as_str(), inv.total.as_str()),
        ("1100.00", "110.00", "1210.00")
    );
    let again = c.issue_one_off_invoice(one_off("oo-1", vec![line("setup", "")])).await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists, "same key, other request");

    // Refusals append nothing.
    let before = append_probe(&mut c).await;
    let unknown = c.issue_one_off_invoice(one_off("oo-2", vec![line("nope", "1")])).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    let euro = c.issue_one_off_invoice(one_off("oo-3", vec![line("eu-audit", "1")])).await;
    assert_eq!(euro.unwrap_err().code(), Code::FailedPrecondition);
    for bad in [line("setup", "0"), line("setup", "-1"), line("setup", "1.0000001")] {
        let refused = c.issue_one_off_invoice(one_off("oo-4", vec![bad])).await;
        assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    }
    let half = pb::OneOffLine { service_start: today.to_string(), ..line("setup", "1") };
    let refused = c.issue_one_off_invoice(one_off("oo-5", vec![half])).await;
    assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    let empty = c.issue_one_off_invoice(one_off("oo-6", vec![])).await;
    assert_eq!(empty.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(append_probe(&mut c).await, before + 1, "refusals appended nothing");

    // Paid, then part of the setup refunded by a credit note; a second one-off is numbered o2.
    let pay = pb::RecordPaymentRequest {
        idempotency_key: "pay-oo-1".into(),
        invoice_id: "inv-acme-o1".into(),
        succeeded: true,
        amount: "1210.00".into(),
        ..Default::default()
    };
    assert_eq!(c.record_payment(pay).await.unwrap().into_inner().invoice.unwrap().status, "paid");
    let refund = pb::IssueCreditNoteRequest {
        idempotency_key: "cn-oo".into(),
        invoice_id: "inv-acme-o1".into(),
        lines: vec![pb::CreditNoteLineRequest { line_index: 0, amount: "40.00".into() }],
        reason: "setup partly waived".into(),
        destination: "refund".into(),
    };
    let note = c.issue_credit_note(refund).await.unwrap().into_inner().credit_note.unwrap();
    assert_eq!(note.total, "44.00");
    let second = c.issue_one_off_invoice(one_off("oo-7", vec![line("setup", "3")])).await;
    let second = second.unwrap().into_inner();
    assert_eq!(second.invoice.unwrap().invoice_id, "inv-acme-o2");
    let head = second.ack.unwrap().position;

    // The read side: listed with the customer's invoices; revenue by type add_on.
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let list = pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(head),
        ..Default::default()
    };
    let listed = q.list_invoices(list).await.unwrap().into_inner().invoices;
    let ids: Vec<&str> = listed.iter().map(|i| i.invoice_id.as_str()).collect();
    assert_eq!(ids, ["inv-acme-o1", "inv-acme-o2"]);
    let as_of = pb::AsOfRequest {
        as_recorded_at: None,
        as_of: today.to_string(),
        min_position: Some(head),
    };
    let usd = q.get_balances(as_of.clone()).await.unwrap().into_inner().balances.remove(0);
    // Today: setup 100.00 - 40.00 refunded + 300.00 (o2), and 1 of 30 training days: 33.33.
    assert_eq!(usd.recognized_revenue["add_on"], "393.33");
    assert_eq!(usd.deferred_revenue, "966.67");
    let trial = q.get_trial_balance(as_of).await.unwrap().into_inner();
    common::assert_balanced(&trial);
    assert!(trial.rows.iter().any(|r| r.account == "revenue:add_on"));

    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
}
