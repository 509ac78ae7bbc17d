//! Effective-dated plan changes and cancellations (issue 16, docs/effective-dates.md): a
//! command dated back into an open period bills as the same command made live on that day;
//! one dated into a closed period issues a correction invoice and leaves every issued invoice
//! as it was, so the customer's billed total equals the live history's; a future date is
//! applied by the billing run on that day.

use super::*;

fn change(plan: &str, on: Option<jiff::civil::Date>) -> Command {
    Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: plan.into(),
        plan_version: None,
        effective_date: on,
    }
}

fn cancel(immediately: bool, on: Option<jiff::civil::Date>) -> Command {
    Command::CancelSubscription { subscription_id: "s1".into(), immediately, effective_date: on }
}

/// basic 30.00 and pro 62.00 (SPEC §4's upgrade example), both billed with `timing`.
fn world(timing: FeeTiming) -> World {
    let mut w = World::new(dec!(0));
    w.plan("basic", dec!(30.00), timing, 0, vec![], None);
    w.plan("pro", dec!(62.00), timing, 0, vec![], None);
    w.plan("lite", dec!(10.00), timing, 0, vec![], None);
    w
}

/// Every invoice total of the log, in order.
fn totals(w: &World) -> Vec<Decimal> {
    invoices(&w.log).iter().map(|i| i.total).collect()
}

fn billed(w: &World) -> Decimal {
    totals(w).iter().sum()
}

fn reasons(events: &[Event]) -> Vec<IssueReason> {
    invoices(events).iter().map(|i| i.reason).collect()
}

fn kind(r: Result<Vec<Event>, DomainError>) -> String {
    match r {
        Err(DomainError::Precondition { kind, .. }) => kind.to_string(),
        Err(DomainError::Invalid(v)) => format!("invalid {}", v[0].field),
        other => panic!("not refused: {other:?}"),
    }
}

/// One row: a command made live on `live_on` (at 09:00 UTC) and the same command dated
/// `effective` and sent on `sent_on`: the invoices it issues have the same lines.
struct OpenPeriodCase {
    name: &'static str,
    timing: FeeTiming,
    live: Command,
    live_on: &'static str,
    dated: Command,
    sent_on: &'static str,
}

#[test]
fn a_command_dated_into_an_open_period_bills_as_the_live_command_on_that_day() {
    let jan = |d| date(2025, 1, d);
    let cases = [
        OpenPeriodCase {
            name: "SPEC upgrade example, in advance",
            timing: FeeTiming::Advance,
            live: change("pro", None),
            live_on: "2025-01-16",
            dated: change("pro", Some(jan(16))),
            sent_on: "2025-01-25",
        },
        OpenPeriodCase {
            name: "upgrade in arrears (billed at close by plan days)",
            timing: FeeTiming::Arrears,
            live: change("pro", None),
            live_on: "2025-01-16",
            dated: change("pro", Some(jan(16))),
            sent_on: "2025-01-30",
        },
        OpenPeriodCase {
            name: "immediate cancellation (ends tomorrow) vs dated end",
            timing: FeeTiming::Advance,
            live: cancel(true, None),
            live_on: "2025-01-20",
            dated: cancel(false, Some(jan(21))),
            sent_on: "2025-01-28",
        },
        OpenPeriodCase {
            name: "immediate cancellation in arrears",
            timing: FeeTiming::Arrears,
            live: cancel(true, None),
            live_on: "2025-01-09",
            dated: cancel(false, Some(jan(10))),
            sent_on: "2025-01-31",
        },
    ];
    for case in cases {
        let mut by_day = Vec::new();
        for (cmd, on) in [(&case.live, case.live_on), (&case.dated, case.sent_on)] {
            let mut w = world(case.timing);
            w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
            w.run(cmd.clone(), &format!("{on}T09:00:00Z")).unwrap();
            w.bill("2025-02-01T00:00:00Z");
            let lines: Vec<_> = invoices(&w.log).iter().map(amounts).collect();
            by_day.push(lines);
        }
        assert_eq!(by_day[0], by_day[1], "{}", case.name);
    }
}

#[test]
fn a_plan_change_dated_into_a_closed_period_corrects_with_a_new_invoice() {
    for timing in [FeeTiming::Advance, FeeTiming::Arrears] {
        // Live: upgraded on Jan 16, billed to Mar 1.
        let mut live = world(timing);
        live.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
        live.run(change("pro", None), "2025-01-16T09:00:00Z").unwrap();
        live.bill("2025-02-01T00:00:00Z");
        live.bill("2025-03-01T00:00:00Z");
        // Back-dated: January closed (and February's fee invoiced, in advance) before the
        // change is sent on Feb 10, effective Jan 16.
        let mut back = world(timing);
        back.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
        back.bill("2025-02-01T00:00:00Z");
        let issued_before: Vec<Invoice> = invoices(&back.log);
        let events =
            back.run(change("pro", Some(date(2025, 1, 16))), "2025-02-10T09:00:00Z").unwrap();
        assert_eq!(reasons(&events), vec![IssueReason::Correction], "{timing:?}");
        let correction = &invoices(&events)[0];
        let expected = match timing {
            // January's days from the 16th, then February's fee already invoiced in advance.
            FeeTiming::Advance => vec![
                (LineKind::Credit, dec!(-15.48)),
                (LineKind::BaseFee, dec!(32.00)),
                (LineKind::Credit, dec!(-30.00)),
                (LineKind::BaseFee, dec!(62.00)),
            ],
            // Only January was invoiced (at its close); February closes on pro by days.
            FeeTiming::Arrears => {
                vec![(LineKind::Credit, dec!(-15.48)), (LineKind::BaseFee, dec!(32.00))]
            }
        };
        assert_eq!(amounts(correction), expected, "{timing:?}");
        assert_eq!(correction.period.start, date(2025, 1, 1));
        back.bill("2025-03-01T00:00:00Z");
        assert_eq!(billed(&back), billed(&live), "{timing:?}: the same money as live");
        // The invoices issued before the correction are in the ledger exactly as issued.
        for inv in issued_before {
            assert_eq!(back.ledger.invoices[&inv.invoice_id].invoice, inv);
        }
        let mrr_plan = back.ledger.subscriptions["s1"].plan_at(date(2025, 1, 16)).code.clone();
        assert_eq!(mrr_plan, "pro");
    }
}

#[test]
fn a_cancellation_dated_into_a_closed_period_credits_the_days_after_it() {
    for timing in [FeeTiming::Advance, FeeTiming::Arrears] {
        let mut live = world(timing);
        live.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
        live.run(cancel(true, None), "2025-01-20T09:00:00Z").unwrap();
        live.bill("2025-03-01T00:00:00Z");

        let mut back = world(timing);
        back.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
        back.bill("2025-02-01T00:00:00Z");
        let events =
            back.run(cancel(false, Some(date(2025, 1, 21))), "2025-02-10T09:00:00Z").unwrap();
        let correction = &invoices(&events)[0];
        assert_eq!(correction.reason, IssueReason::Correction);
        // 11 of January's 31 days at 30.00.
        assert_eq!(amounts(correction), vec![(LineKind::Credit, dec!(-10.65))], "{timing:?}");
        assert!(matches!(
            events.iter().find(|e| matches!(e, Event::SubscriptionCanceled { .. })),
            Some(Event::SubscriptionCanceled { effective_date, .. }) if *effective_date == date(2025, 1, 21)
        ));
        back.bill("2025-03-01T00:00:00Z");
        assert_eq!(billed(&back), billed(&live), "{timing:?}: the same money as live");
        assert_eq!(back.ledger.subscriptions["s1"].next_close, None, "nothing left to close");
    }
}

#[test]
fn future_dates_are_applied_by_the_billing_run_on_that_day() {
    // A plan change effective Jan 20, sent on Jan 10, bills as an upgrade made live on Jan 20.
    let mut live = world(FeeTiming::Advance);
    live.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
    live.run(change("pro", None), "2025-01-20T09:00:00Z").unwrap();
    live.bill("2025-02-01T00:00:00Z");

    let mut ahead = world(FeeTiming::Advance);
    ahead.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
    let scheduled = ahead.run(change("pro", Some(date(2025, 1, 20))), "2025-01-10T09:00:00Z");
    assert!(matches!(scheduled.unwrap()[..], [Event::PlanChangeScheduled { .. }]));
    assert!(ahead.bill("2025-01-19T23:00:00Z").is_empty(), "not before its day");
    assert_eq!(ahead.ledger.subscriptions["s1"].current_plan().code, "basic");
    // A cancellation dated later does not drop the change due before it.
    ahead.run(cancel(false, Some(date(2025, 3, 1))), "2025-01-12T09:00:00Z").unwrap();
    let applied = ahead.bill("2025-01-20T00:00:00Z");
    assert_eq!(applied.len(), 1);
    assert_eq!(ahead.ledger.subscriptions["s1"].current_plan().code, "pro");
    ahead.bill("2025-02-01T00:00:00Z");
    let lines = |w: &World| invoices(&w.log).iter().map(amounts).collect::<Vec<_>>();
    assert_eq!(lines(&ahead), lines(&live));
    // A cancellation dated before a scheduled change drops it.
    let mut w = world(FeeTiming::Advance);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
    w.run(change("pro", Some(date(2025, 1, 25))), "2025-01-10T09:00:00Z").unwrap();
    w.run(cancel(false, Some(date(2025, 1, 20))), "2025-01-11T09:00:00Z").unwrap();
    assert_eq!(w.ledger.subscriptions["s1"].pending_change, None);

    // A cancellation effective Mar 15, sent in January: February bills as usual, March is
    // cut at the 15th (a downgrade is a dated change as well: lite from Feb 1 is applied by
    // February's close).
    let mut w = world(FeeTiming::Arrears);
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
    w.run(change("lite", Some(date(2025, 2, 1))), "2025-01-10T09:00:00Z").unwrap();
    w.bill("2025-02-01T00:00:00Z");
    assert_eq!(w.ledger.subscriptions["s1"].current_plan().code, "lite");
    w.run(cancel(false, Some(date(2025, 3, 15))), "2025-02-02T09:00:00Z").unwrap();
    w.bill("2025-03-01T00:00:00Z");
    w.bill("2025-03-15T00:00:00Z");
    // January on basic 30.00, February on lite 10.00, March 1–14 on lite: 14/31 × 10.00.
    assert_eq!(totals(&w), vec![dec!(30.00), dec!(10.00), dec!(4.52)]);
    assert_eq!(w.ledger.subscriptions["s1"].next_close, None);
}

#[test]
fn dates_outside_the_rules_are_refused_and_change_nothing() {
    let mut w = world(FeeTiming::Advance);
    w.policy.backdate_days_max = 40;
    w.start("basic", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
    w.run(change("pro", Some(date(2025, 1, 10))), "2025-01-12T09:00:00Z").unwrap();
    let before = w.ledger.subscriptions["s1"].clone();
    let now = "2025-02-15T09:00:00Z";
    let cases = [
        (change("lite", Some(date(2025, 1, 5))), "invalid effective_date", "past the horizon"),
        (change("lite", Some(date(2025, 1, 8))), PLAN_CHANGED_LATER, "not after the last change"),
        (
            cancel(true, Some(date(2025, 2, 20))),
            "invalid effective_date",
            "both immediately and a date",
        ),
        (cancel(false, Some(date(2024, 12, 31))), "invalid effective_date", "before the start"),
    ];
    for (cmd, expected, why) in cases {
        assert_eq!(kind(w.run(cmd, now)), expected, "{why}");
    }
    let mut w2 = world(FeeTiming::Arrears);
    let calls = Charge {
        metric_code: "calls".into(),
        model: ChargeModel::Standard { unit_price: dec!(0.10) },
        pay_in_advance: false,
    };
    w2.plan("metered", dec!(30.00), FeeTiming::Arrears, 0, vec![calls], None);
    w2.start("metered", Anchor::Anniversary, date(2025, 1, 1), "2025-01-01T08:00:00Z");
    w2.usage("t1", "5", "2025-02-03T00:00:00Z", "2025-02-03T01:00:00Z").unwrap();
    // January is still open (no billing run yet); February has usage.
    let refused = w2.run(cancel(false, Some(date(2025, 1, 20))), "2025-02-04T09:00:00Z");
    assert_eq!(kind(refused), USAGE_AFTER_END);
    assert_eq!(w.ledger.subscriptions["s1"].plans, before.plans);
    assert_eq!(w.ledger.subscriptions["s1"].ends_on, None);
}
