//! Prepaid wallets (SPEC §8.1, issue 13) on the real binary: opening a wallet, granted and paid
//! top-ups (the purchase invoice, credits usable once it is paid), the ongoing balance against
//! the current-usage draft, an invoice paid by wallet credits after tax (granted before paid),
//! the low-balance transaction, the journal's prepaid-credits liability and discounts, refusals
//! that append nothing, and `replay verify` after a restart.

mod common;

use common::{
    append_probe, growth_plan, in_first_period, register_acme_and_api_calls, replay_verify_at,
    start_sub_1_backdated, Server,
};
use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::Code;

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn top_up(key: &str, kind: &str, credits: &str) -> pb::TopUpWalletRequest {
    pb::TopUpWalletRequest {
        idempotency_key: key.into(),
        wallet_id: "w1".into(),
        kind: kind.into(),
        credits: credits.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn wallet_credits_pay_invoices_after_tax_and_the_books_carry_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    let open = pb::OpenWalletRequest {
        idempotency_key: "open-w1".into(),
        wallet_id: "w1".into(),
        customer_id: "acme".into(),
        name: "Prepaid".into(),
        low_balance_threshold: "50.00".into(),
        ..Default::default()
    };
    c.open_wallet(open.clone()).await.unwrap();
    assert!(c.open_wallet(open.clone()).await.unwrap().into_inner().duplicate, "a replay");

    // Granted credits are usable at once; paid ones wait for their (untaxed) invoice.
    let granted = c.top_up_wallet(top_up("t1", "granted", "10")).await.unwrap().into_inner();
    assert!(granted.usable && granted.invoice.is_none());
    assert_eq!((granted.top_up, granted.amount.as_str()), (1, "10.00"));
    let paid = c.top_up_wallet(top_up("t2", "paid", "100")).await.unwrap().into_inner();
    assert!(!paid.usable);
    let purchase = paid.invoice.expect("the purchase invoice");
    assert_eq!(
        (purchase.reason.as_str(), purchase.tax.as_str(), purchase.total.as_str()),
        ("wallet_top_up", "0.00", "100.00")
    );
    assert_eq!(purchase.lines[0].kind, "prepaid_credits");

    // Refusals append nothing.
    let before = append_probe(&mut c).await;
    let unknown =
        pb::TopUpWalletRequest { wallet_id: "nope".into(), ..top_up("t3", "granted", "1") };
    assert_eq!(c.top_up_wallet(unknown).await.unwrap_err().code(), Code::NotFound);
    let free = c.top_up_wallet(top_up("t4", "free", "-1")).await.unwrap_err();
    assert_eq!(common::violation_fields(&free), ["kind", "credits"]);
    let ghost = pb::OpenWalletRequest {
        idempotency_key: "open-w2".into(),
        wallet_id: "w2".into(),
        customer_id: "ghost".into(),
        ..Default::default()
    };
    assert_eq!(c.open_wallet(ghost).await.unwrap_err().code(), Code::NotFound);
    let note = pb::IssueCreditNoteRequest {
        idempotency_key: "cn-1".into(),
        invoice_id: purchase.invoice_id.clone(),
        lines: vec![pb::CreditNoteLineRequest { line_index: 0, amount: String::new() }],
        reason: "refund".into(),
        destination: "offset".into(),
    };
    let refused = c.issue_credit_note(note).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(append_probe(&mut c).await, before + 1, "refusals appended nothing");

    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let wallet = |min_position| pb::WalletQuery { wallet_id: "w1".into(), min_position };
    let view = q.get_wallet(wallet(Some(before + 1))).await.unwrap().into_inner();
    let w = view.wallet.unwrap();
    assert_eq!((w.balance.as_str(), w.pending.as_str(), w.low), ("10.00", "100.00", true));

    // Paying the purchase invoice makes the paid credits usable.
    let pay = pb::RecordPaymentRequest {
        invoice_id: purchase.invoice_id.clone(),
        amount: "100.00".into(),
        succeeded: true,
        ..Default::default()
    };
    let at = c.record_payment(pay).await.unwrap().into_inner().ack.unwrap().position;
    let w = q.get_wallet(wallet(Some(at))).await.unwrap().into_inner().wallet.unwrap();
    assert_eq!((w.balance.as_str(), w.pending.as_str(), w.low), ("110.00", "0.00", false));

    // The ongoing balance follows the current-usage draft: 20.00 fee + 50 calls, 10 % tax.
    start_sub_1_backdated(&mut c, "growth").await;
    let usage = pb::UsageEvent {
        subscription_id: "sub-1".into(),
        transaction_id: "u-1".into(),
        metric_code: "api_calls".into(),
        occurred_at: Some(in_first_period()),
        properties: [("calls".to_string(), "50".to_string())].into(),
    };
    let at = c.record_usage(usage).await.unwrap().into_inner().position;
    let view = q.get_wallet(wallet(Some(at))).await.unwrap().into_inner();
    assert_eq!((view.ongoing_usage.as_str(), view.ongoing_balance.as_str()), ("77.00", "33.00"));

    // The invoice: total 77.00, then the granted 10.00 and 67.00 of the paid credits.
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let run = c.run_billing(run).await.unwrap().into_inner();
    let inv = &run.invoices[0];
    let used: Vec<(&str, &str)> =
        inv.wallet_applied.iter().map(|u| (u.kind.as_str(), u.amount.as_str())).collect();
    assert_eq!(used, [("granted", "10.00"), ("paid", "67.00")]);
    assert_eq!(
        (inv.total.as_str(), inv.amount_due.as_str(), inv.status.as_str()),
        ("77.00", "0.00", "paid")
    );
    let head = run.ack.unwrap().position;
    let w = q.get_wallet(wallet(Some(head))).await.unwrap().into_inner().wallet.unwrap();
    assert_eq!((w.balance.as_str(), w.low), ("33.00", true), "below the 50.00 threshold");
    let page = pb::WalletTransactionsQuery {
        wallet_id: "w1".into(),
        min_position: Some(head),
        ..Default::default()
    };
    let rows = q.list_wallet_transactions(page).await.unwrap().into_inner().transactions;
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|t| (t.kind.as_str(), t.amount.as_str(), t.balance_after.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("top_up", "10.00", "10.00"),
            ("top_up", "0.00", "10.00"),
            ("usable", "100.00", "110.00"),
            ("consumed", "-10.00", "100.00"),
            ("consumed", "-67.00", "33.00"),
            ("balance_low", "0.00", "33.00"),
        ]
    );
    let listed = pb::CustomerWalletsQuery { customer_id: "acme".into(), min_position: Some(head) };
    let listed = q.list_wallets(listed).await.unwrap().into_inner().wallets;
    assert_eq!(listed.iter().map(|w| w.wallet_id.as_str()).collect::<Vec<_>>(), ["w1"]);

    // A wallet-paid invoice is corrected by a credit note, never voided.
    let void = pb::VoidInvoiceRequest {
        invoice_id: inv.invoice_id.clone(),
        reason: "test".into(),
        ..Default::default()
    };
    assert_eq!(c.void_invoice(void).await.unwrap_err().code(), Code::FailedPrecondition);

    // The books: the unused paid credits are a liability, the granted ones a discount.
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date()
        .to_string();
    let as_of = pb::AsOfRequest { as_recorded_at: None, as_of: today, min_position: Some(head) };
    let usd = q.get_balances(as_of.clone()).await.unwrap().into_inner().balances.remove(0);
    assert_eq!((usd.prepaid_credits.as_str(), usd.discounts.as_str()), ("33.00", "10.00"));
    assert_eq!(usd.cash, "100.00", "only the purchase was paid in money");
    let trial = q.get_trial_balance(as_of).await.unwrap().into_inner();
    common::assert_balanced(&trial);
    assert!(trial.rows.iter().any(|r| r.account == "prepaid_credits"), "{trial:?}");

    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
}
