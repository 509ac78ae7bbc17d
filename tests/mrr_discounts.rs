//! The MRR `discount` effect of coupons (issue 13, item 6; docs/decisions/0034-mrr-discounts.md)
//! on the real binary: a 20 % forever coupon lowers a customer's MRR from the day it is applied
//! (a contraction), and a 50 % coupon for 3 periods lowers it until the end of the third period
//! its invoices discounted (then an expansion), in GetMrr and ListMrrMovements; `replay verify`
//! agrees after a restart.

mod common;

use common::{acme_request, register_acme_and_api_calls, replay_verify_at, Server};
use jiff::civil::Date;
use proto::v1 as pb;
use proto::v1::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

fn today_in_berlin() -> Date {
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    jiff::Timestamp::now().to_zoned(berlin).date()
}

fn plus_days(d: Date, days: i64) -> Date {
    d.checked_add(jiff::Span::new().days(days)).unwrap()
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: 0 }
}

fn coupon(code: &str, percent: &str, frequency: &str, periods: u32) -> pb::DefineCouponRequest {
    pb::DefineCouponRequest {
        code: code.into(),
        kind: "percentage".into(),
        percent: percent.into(),
        frequency: frequency.into(),
        periods,
        ..Default::default()
    }
}

fn apply(customer: &str, code: &str) -> pb::CustomerCouponRequest {
    pb::CustomerCouponRequest {
        idempotency_key: format!("apply-{customer}-{code}"),
        customer_id: customer.into(),
        coupon_code: code.into(),
    }
}

fn plan(code: &str, interval: &str, fee: &str, in_advance: bool) -> pb::PublishPlanRequest {
    pb::PublishPlanRequest {
        code: code.into(),
        name: code.into(),
        currency: "USD".into(),
        interval: interval.into(),
        base_fee: fee.into(),
        base_fee_in_advance: in_advance,
        ..Default::default()
    }
}

fn start(sub: &str, customer: &str, plan: &str, on: Date) -> pb::StartSubscriptionRequest {
    pb::StartSubscriptionRequest {
        subscription_id: sub.into(),
        customer_id: customer.into(),
        plan_code: plan.into(),
        start_date: on.to_string(),
        ..Default::default()
    }
}

/// (day, [(kind, count, amount)] with count > 0, MRR at the day).
type Bucket = (String, Vec<(String, u64, String)>, String);

async fn mrr(q: &mut QueryServiceClient<Channel>, customer: &str, on: Date, at: u64) -> String {
    let req = pb::MrrRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        date: on.to_string(),
        customer_id: customer.into(),
        min_position: Some(at),
    };
    q.get_mrr(req).await.unwrap().into_inner().mrr
}

#[tokio::test]
async fn forever_and_recurring_coupons_lower_mrr_while_they_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), common::free_port());
    let mut c = server.client().await;
    register_acme_and_api_calls(&mut c).await;
    let beta = pb::RegisterCustomerRequest {
        idempotency_key: "cust-beta".into(),
        customer_id: "beta".into(),
        name: "Beta".into(),
        ..acme_request()
    };
    c.register_customer(beta).await.unwrap();
    // Weekly periods are exactly 7 days, so the dates below never depend on month lengths.
    c.publish_plan(plan("weekly", "weekly", "30.00", true)).await.unwrap();
    c.publish_plan(plan("monthly", "monthly", "20.00", false)).await.unwrap();
    c.define_coupon(coupon("intro3", "50", "recurring", 3)).await.unwrap();
    c.define_coupon(coupon("forever20", "20", "forever", 0)).await.unwrap();

    // acme: weekly 30.00 in advance (130.00 a month) from 14 days ago; intro3 applied today.
    // Its start bills the first week, the billing run closes the first two weeks and bills
    // the second and third in advance: three invoices discounted, the last one for the week
    // starting today.
    let today = today_in_berlin();
    let (acme_start, beta_start) = (plus_days(today, -14), plus_days(today, -35));
    c.apply_coupon(apply("acme", "intro3")).await.unwrap();
    c.start_subscription(start("sub-1", "acme", "weekly", acme_start)).await.unwrap();
    // beta: monthly 20.00 from 35 days ago; forever20 applied today.
    c.start_subscription(start("sub-2", "beta", "monthly", beta_start)).await.unwrap();
    c.apply_coupon(apply("beta", "forever20")).await.unwrap();
    let run = pb::RunBillingRequest { as_of: Some(now()), ..Default::default() };
    let head = c.run_billing(run).await.unwrap().into_inner().ack.unwrap().position;

    let mut q = QueryServiceClient::new(server.serving("accrual.v1.QueryService").await);
    let list = pb::ListInvoicesRequest {
        customer_id: "acme".into(),
        min_position: Some(head),
        ..Default::default()
    };
    let invoices = q.list_invoices(list).await.unwrap().into_inner().invoices;
    let intro_uses: Vec<(&str, &str)> = invoices
        .iter()
        .flat_map(|i| &i.coupons)
        .map(|u| (u.coupon_code.as_str(), u.amount.as_str()))
        .collect();
    assert_eq!(intro_uses, [("intro3", "15.00"); 3], "three weeks at half price");

    let week_after = plus_days(today, 7);
    let yesterday = plus_days(today, -1);
    assert_eq!(mrr(&mut q, "acme", yesterday, head).await, "130.00");
    assert_eq!(mrr(&mut q, "acme", today, head).await, "65.00");
    assert_eq!(mrr(&mut q, "acme", plus_days(today, 6), head).await, "65.00");
    assert_eq!(mrr(&mut q, "acme", week_after, head).await, "130.00");
    assert_eq!(mrr(&mut q, "beta", yesterday, head).await, "20.00");
    assert_eq!(mrr(&mut q, "beta", today, head).await, "16.00");
    assert_eq!(mrr(&mut q, "beta", plus_days(today, 400), head).await, "16.00");
    assert_eq!(mrr(&mut q, "", today, head).await, "81.00");
    assert_eq!(mrr(&mut q, "", week_after, head).await, "146.00");

    let moves = pb::MrrMovementsRequest {
        as_recorded_at: None,
        currency: "USD".into(),
        from: beta_start.to_string(),
        to: week_after.to_string(),
        granularity: "day".into(),
        min_position: Some(head),
    };
    let moves = q.list_mrr_movements(moves).await.unwrap().into_inner();
    let buckets: Vec<Bucket> = moves
        .buckets
        .iter()
        .map(|b| {
            let kinds = b
                .totals
                .iter()
                .filter(|t| t.count > 0)
                .map(|t| (t.kind.clone(), t.count, t.amount.clone()))
                .collect();
            (b.start.clone(), kinds, b.mrr.clone())
        })
        .collect();
    let row = |d: Date, kind: &str, n: u64, amount: &str, mrr: &str| {
        (d.to_string(), vec![(kind.to_string(), n, amount.to_string())], mrr.to_string())
    };
    assert_eq!(
        buckets,
        [
            row(beta_start, "new", 1, "20.00", "20.00"),
            row(acme_start, "new", 1, "130.00", "150.00"),
            row(today, "contraction", 2, "-69.00", "81.00"),
            row(week_after, "expansion", 1, "65.00", "146.00"),
        ]
    );
    assert_eq!((moves.mrr_before.as_str(), moves.mrr_at_to.as_str()), ("0.00", "146.00"));

    assert!(server.terminate().await.success());
    replay_verify_at(dir.path(), head);
}
