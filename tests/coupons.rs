//! Coupons (SPEC §8.2, issue 13) on the real binary: the catalogue, applying a coupon to a
//! customer, the discount of the next invoice (spread pro rata, before tax, shown per line),
//! revenue recognized net of it, refusals that append nothing, and `replay verify` after a
//! restart.

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

fn welcome() -> pb::DefineCouponRequest {
    pb::DefineCouponRequest {
        code: "welcome".into(),
        kind: "fixed_amount".into(),
        amount: "15.00".into(),
        currency: "USD".into(),
        frequency: "once".into(),
        ..Default::default()
    }
}

fn apply(key: &str, code: &str) -> pb::CustomerCouponRequest {
    pb::CustomerCouponRequest {
        idempotency_key: key.into(),
        customer_id: "acme".into(),
        coupon_code: code.into(),
    }
}

#[tokio::test]
async fn a_fixed_coupon_discounts_the_next_invoice_before_tax_and_revenue_is_net_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let server = Server::start(dir.path(), port);
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    c.publish_plan(growth_plan("0.50")).await.unwrap();
    c.define_coupon(welcome()).await.unwrap();
    assert!(c.define_coupon(welcome()).await.unwrap().into_inner().duplicate, "a replay");
    c.apply_coupon(apply("ap-1", "welcome")).await.unwrap();

    // Refusals append nothing.
    let before = append_probe(&mut c).await;
    let twice = c.apply_coupon(apply("ap-2", "welcome")).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    let unknown = c.apply_coupon(apply("ap-3", "nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let free = pb::DefineCouponRequest { code: "free".into(), kind: "free".into(), ..welcome() };
    assert_eq!(c.define_coupon(free).await.unwrap_err().code(), Code::InvalidArgument);
    let over = pb::DefineCouponRequest {
        code: "over".into(),
        kind: "percentage".into(),
        percent: "101".into(),
        ..welcome()
    };
    assert_eq!(c.define_coupon(over).await.unwrap_err().code(), Code::InvalidArgument);
    let remove_unheld = c.remove_coupon(apply("rm-1", "nope")).await.unwrap_err();
    assert_eq!(remove_unheld.code(), Code::FailedPrecondition);
    assert_eq!(append_probe(&mut c).await, before + 1, "refusals appended nothing");

    // 20.00 base fee + 50 calls = 70.00; the 15.00 coupon spread pro rata (4.29 and, with the
    // rounding remainder, 10.71 on the larger line); tax 10 % of 55.00.
    start_sub_1_backdated(&mut c, "growth").await;
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
    let inv = &run.invoices[0];
    let lines: Vec<(&str, &str)> =
        inv.lines.iter().map(|l| (l.amount.as_str(), l.discount.as_str())).collect();
    assert_eq!(lines, [("15.71", "4.29"), ("39.29", "10.71")]);
    assert_eq!(
        (inv.subtotal.as_str(), inv.tax.as_str(), inv.total.as_str()),
        ("55.00", "5.50", "60.50")
    );
    let uses: Vec<(&str, &str)> =
        inv.coupons.iter().map(|u| (u.coupon_code.as_str(), u.amount.as_str())).collect();
    assert_eq!(uses, [("welcome", "15.00")]);
    let head = run.ack.unwrap().position;

    // Revenue: 55.00, net of the discount; the trial balance balances.
    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let read = pb::InvoiceQuery {
        as_recorded_at: None,
        invoice_id: inv.invoice_id.clone(),
        min_position: Some(head),
    };
    let read = q.get_invoice(read).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(read.lines, inv.lines);
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date()
        .to_string();
    let as_of = pb::AsOfRequest { as_recorded_at: None, as_of: today, min_position: Some(head) };
    let usd = q.get_balances(as_of.clone()).await.unwrap().into_inner().balances.remove(0);
    assert_eq!(usd.total_recognized_revenue, "55.00");
    let trial = q.get_trial_balance(as_of).await.unwrap().into_inner();
    common::assert_balanced(&trial);

    // The customer's coupons: welcome used up; a recurring one held, then removed.
    let loyal = pb::DefineCouponRequest {
        code: "loyal".into(),
        kind: "percentage".into(),
        percent: "12.5".into(),
        frequency: "recurring".into(),
        periods: 2,
        ..welcome()
    };
    c.define_coupon(loyal).await.unwrap();
    let at = c.apply_coupon(apply("ap-4", "loyal")).await.unwrap().into_inner().position;
    let list = |min_position| pb::CustomerCouponsQuery { customer_id: "acme".into(), min_position };
    let held = q.list_customer_coupons(list(Some(at))).await.unwrap().into_inner().coupons;
    let summary: Vec<(&str, &str, u32, bool)> = held
        .iter()
        .map(|h| (h.coupon_code.as_str(), h.amount_left.as_str(), h.periods_left, h.used_up))
        .collect();
    assert_eq!(summary, [("welcome", "0.00", 0, true), ("loyal", "", 2, false)]);
    assert_eq!((held[1].kind.as_str(), held[1].percent.as_str()), ("percentage", "12.5"));
    let at = c.remove_coupon(apply("rm-2", "loyal")).await.unwrap().into_inner().position;
    let held = q.list_customer_coupons(list(Some(at))).await.unwrap().into_inner().coupons;
    assert_eq!(held.iter().map(|h| h.coupon_code.as_str()).collect::<Vec<_>>(), ["welcome"]);
    let head = at;

    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
}
