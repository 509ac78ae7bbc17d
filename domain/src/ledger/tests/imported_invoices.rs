//! Imported subscriptions and invoices (issue 16, docs/import.md): a history whose invoices
//! another biller issued, imported as facts with a cutover (`billed_until`), bills from the
//! cutover on exactly as the same history billed live; every refusal changes nothing.

use super::*;
use crate::imported_invoice::ImportedInvoice;
use crate::invoice::InvoiceLine;

const CUTOVER: &str = "2025-04-01";
/// When the import runs: after the cutover, before the period it opens ends.
const IMPORTED_AT: &str = "2025-04-06T09:00:00Z";

/// One row: a history up to the cutover (2025-04-01) then April's usage, billed on May 1.
struct Case {
    name: &'static str,
    timing: FeeTiming,
    trial_days: u32,
    /// An upgrade basic → pro made live on this day (before the cutover).
    upgrade_on: Option<i8>,
}

fn world(case: &Case) -> World {
    let mut w = World::new(dec!(10));
    let calls = || vec![graduated_spec_charge()];
    w.plan("basic", dec!(30.00), case.timing, case.trial_days, calls(), None);
    w.plan("pro", dec!(62.00), case.timing, case.trial_days, calls(), None);
    w
}

fn start(billed_until: Option<jiff::civil::Date>) -> Command {
    Command::StartSubscription {
        subscription_id: "s1".into(),
        customer_id: "acme".into(),
        plan_code: "basic".into(),
        plan_version: None,
        anchor: Anchor::Anniversary,
        start_date: Some(date(2025, 1, 1)),
        billed_until,
    }
}

fn upgrade(on: Option<jiff::civil::Date>) -> Command {
    Command::ChangePlan {
        subscription_id: "s1".into(),
        plan_code: "pro".into(),
        plan_version: None,
        effective_date: on,
    }
}

/// The record an importer would write for an invoice the previous biller issued.
fn imported(inv: &Invoice) -> ImportedInvoice {
    ImportedInvoice {
        invoice_id: format!("prev-{}", inv.invoice_id),
        customer_id: inv.customer_id.clone(),
        subscription_id: Some(inv.subscription_id.clone()),
        currency: inv.currency,
        period: inv.period,
        issued_at: inv.issued_at,
        lines: inv.lines.clone(),
        tax_rate: inv.tax_rate,
        tax: inv.tax,
        total: inv.total,
    }
}

/// April's usage and the May 1 billing run: the invoices it issues.
fn april_and_close(w: &mut World) -> Vec<Invoice> {
    w.usage("a1", "120", "2025-04-10T10:00:00Z", "2025-04-10T10:00:00Z").unwrap();
    w.usage("a2", "130", "2025-04-20T10:00:00Z", "2025-04-20T10:00:00Z").unwrap();
    w.bill("2025-05-01T00:00:00Z")
}

#[test]
fn an_imported_history_bills_from_its_cutover_as_the_live_history_did() {
    let cases = [
        Case { name: "in advance", timing: FeeTiming::Advance, trial_days: 0, upgrade_on: None },
        Case { name: "in arrears", timing: FeeTiming::Arrears, trial_days: 0, upgrade_on: None },
        Case {
            name: "in advance, upgraded Feb 15",
            timing: FeeTiming::Advance,
            trial_days: 0,
            upgrade_on: Some(15),
        },
        Case {
            name: "in arrears, upgraded Feb 15",
            timing: FeeTiming::Arrears,
            trial_days: 0,
            upgrade_on: Some(15),
        },
        Case {
            name: "trial ended before the cutover",
            timing: FeeTiming::Advance,
            trial_days: 45,
            upgrade_on: None,
        },
        Case {
            name: "trial ends after the cutover",
            timing: FeeTiming::Advance,
            trial_days: 100,
            upgrade_on: None,
        },
    ];
    for case in &cases {
        // Live: every command on its day, a billing run on each first of the month.
        let mut live = world(case);
        live.run(start(None), "2025-01-01T09:00:00Z").unwrap();
        for month in 2..=4 {
            if let Some(day) = case.upgrade_on.filter(|_| month == 3) {
                live.run(upgrade(None), &format!("2025-02-{day:02}T09:00:00Z")).unwrap();
            }
            live.bill(&format!("2025-{month:02}-01T00:00:00Z"));
        }
        let before: Vec<Invoice> = invoices(&live.log);
        assert!(
            !before.is_empty() || case.trial_days > 0,
            "{}: the live history billed",
            case.name
        );

        // Imported: the subscription with its cutover, the plan history, the invoices as facts.
        let mut imp = world(case);
        let cutover: jiff::civil::Date = CUTOVER.parse().unwrap();
        let appended = imp.run(start(Some(cutover)), IMPORTED_AT).unwrap();
        assert_eq!(invoices(&appended), vec![], "{}: no start invoice", case.name);
        if let Some(day) = case.upgrade_on {
            let events = imp.run(upgrade(Some(date(2025, 2, day))), IMPORTED_AT).unwrap();
            assert_eq!(invoices(&events), vec![], "{}: history only", case.name);
            assert_eq!(events.len(), 1, "{}: PlanChanged alone", case.name);
        }
        for inv in &before {
            let events = imp.run(Command::ImportInvoice(imported(inv)), IMPORTED_AT).unwrap();
            let [Event::InvoiceIssued(fact)] = events.as_slice() else { panic!("{events:?}") };
            assert_eq!(fact.reason, IssueReason::Imported);
            assert_eq!((&fact.lines, fact.total), (&inv.lines, inv.total), "{}", case.name);
        }

        let live_may = april_and_close(&mut live);
        let imp_may = april_and_close(&mut imp);
        assert!(!live_may.is_empty(), "{}: May 1 closes April", case.name);
        // Anomaly flags are notes, compared apart: the imported baseline counts the invoices
        // issued once their period had ended, and a live billing run may issue a trial-end
        // invoice on the period's last boundary (docs/import.md).
        let flags = |invs: &[Invoice]| invs.iter().map(|i| i.anomalies.len()).collect::<Vec<_>>();
        assert_eq!(flags(&imp_may), flags(&live_may), "{}: the same flags", case.name);
        let notes_apart = |mut invs: Vec<Invoice>| {
            invs.iter_mut().for_each(|i| i.anomalies.clear());
            invs
        };
        assert_eq!(
            notes_apart(imp_may),
            notes_apart(live_may),
            "{}: the same invoices from the cutover on",
            case.name
        );
        let sub = |w: &World| w.ledger.subscriptions["s1"].plans.clone();
        assert_eq!(sub(&imp), sub(&live), "{}: the same plan history", case.name);
    }
}

fn imported_world() -> World {
    let mut w =
        world(&Case { name: "", timing: FeeTiming::Advance, trial_days: 0, upgrade_on: None });
    w.run(start(Some(CUTOVER.parse().unwrap())), IMPORTED_AT).unwrap();
    w
}

fn fee_invoice(id: &str, month: i8) -> ImportedInvoice {
    let period = Period { start: date(2025, month, 1), end: date(2025, month + 1, 1) };
    ImportedInvoice {
        invoice_id: id.into(),
        customer_id: "acme".into(),
        subscription_id: Some("s1".into()),
        currency: Currency::parse("USD").unwrap(),
        period,
        issued_at: at("2025-03-01T00:00:00Z"),
        lines: vec![InvoiceLine {
            kind: LineKind::BaseFee,
            description: "Base fee".into(),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: period,
            amount: dec!(30.00),
            discount: Decimal::ZERO,
        }],
        tax_rate: dec!(10),
        tax: dec!(3.00),
        total: dec!(33.00),
    }
}

fn refusal(r: Result<Vec<Event>, DomainError>) -> String {
    match r {
        Err(DomainError::Precondition { kind, .. }) => kind.to_string(),
        Err(DomainError::Invalid(v)) => format!("invalid {}", v[0].field),
        Err(DomainError::Conflict(_)) => "conflict".into(),
        Err(DomainError::NotFound { .. }) => "not found".into(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn bad_imports_are_refused_and_change_nothing() {
    type Edit = fn(&mut ImportedInvoice);
    let rows: &[(&str, Edit, &str)] = &[
        (
            "an id Accrual numbers its own invoices with",
            |i| i.invoice_id = "inv-s1-9".into(),
            "invalid invoice_id",
        ),
        ("a total that does not add up", |i| i.total = dec!(33.01), "invalid total"),
        (
            "an amount finer than the cent",
            |i| i.lines[0].amount = dec!(29.995),
            "invalid lines[0].amount",
        ),
        ("a negative fee", |i| i.lines[0].amount = dec!(-30.00), "invalid lines[0].amount"),
        ("no lines", |i| i.lines.clear(), "invalid lines"),
        (
            "a discount beside the amount",
            |i| i.lines[0].discount = dec!(1.00),
            "invalid lines[0].discount",
        ),
        (
            "prepaid credits",
            |i| i.lines[0].kind = LineKind::PrepaidCredits,
            "invalid lines[0].kind",
        ),
        ("another currency", |i| i.currency = Currency::parse("EUR").unwrap(), "invalid currency"),
        ("an unknown metric", |i| i.lines[0].metric_code = Some("nope".into()), "not found"),
        ("an unknown customer", |i| i.customer_id = "nobody".into(), "not found"),
        ("issued in the future", |i| i.issued_at = at("2025-05-01T00:00:00Z"), "invalid issued_at"),
        (
            "a period after the cutover",
            |i| {
                i.period = Period { start: date(2025, 4, 1), end: date(2025, 5, 1) };
                i.lines[0].service_period = i.period;
            },
            BILLED_HERE,
        ),
        (
            "usage from the cutover on",
            |i| {
                i.lines[0].kind = LineKind::Usage;
                i.lines[0].service_period =
                    Period { start: date(2025, 3, 1), end: date(2025, 4, 2) };
            },
            BILLED_HERE,
        ),
        (
            "a fee past the period the cutover opens",
            |i| {
                i.lines[0].service_period =
                    Period { start: date(2025, 4, 1), end: date(2025, 5, 2) };
            },
            BILLED_HERE,
        ),
    ];
    for (name, edit, expected) in rows {
        let mut w = imported_world();
        let before = serde_json::to_string(&w.ledger).unwrap();
        let mut inv = fee_invoice("prev-1", 2);
        edit(&mut inv);
        let got = refusal(w.run(Command::ImportInvoice(inv), IMPORTED_AT));
        assert_eq!(&got, expected, "{name}");
        assert_eq!(serde_json::to_string(&w.ledger).unwrap(), before, "{name}: changed nothing");
    }

    // The same id twice; a subscription Accrual bills from its start; dates before the cutover.
    let mut w = imported_world();
    w.run(Command::ImportInvoice(fee_invoice("prev-1", 2)), IMPORTED_AT).unwrap();
    assert_eq!(
        refusal(w.run(Command::ImportInvoice(fee_invoice("prev-1", 3)), IMPORTED_AT)),
        "conflict"
    );
    let cancel = Command::CancelSubscription {
        subscription_id: "s1".into(),
        immediately: false,
        effective_date: Some(date(2025, 3, 10)),
    };
    assert_eq!(refusal(w.run(cancel, IMPORTED_AT)), BILLED_ELSEWHERE);
    let usage = w.usage("old", "5", "2025-03-20T10:00:00Z", IMPORTED_AT);
    assert!(usage.is_err(), "usage before the cutover is in a closed period: {usage:?}");

    let mut native =
        world(&Case { name: "", timing: FeeTiming::Arrears, trial_days: 0, upgrade_on: None });
    native.run(start(None), "2025-01-01T09:00:00Z").unwrap();
    let got = native.run(Command::ImportInvoice(fee_invoice("prev-1", 2)), IMPORTED_AT);
    assert_eq!(refusal(got), BILLED_HERE, "Accrual bills this one from its start");

    for (cutover, why) in [
        (date(2025, 1, 1), "the start itself"),
        (date(2025, 3, 15), "inside a period"),
        (date(2025, 5, 1), "after today"),
    ] {
        let mut w =
            world(&Case { name: "", timing: FeeTiming::Advance, trial_days: 0, upgrade_on: None });
        let got = refusal(w.run(start(Some(cutover)), IMPORTED_AT));
        assert_eq!(got, "invalid billed_until", "{why}");
    }
}

#[test]
fn an_imported_invoice_is_numbered_with_the_subscription_and_takes_payments() {
    let mut w = imported_world();
    w.run(Command::ImportInvoice(fee_invoice("prev-1", 2)), IMPORTED_AT).unwrap();
    let pay = Command::RecordPayment {
        invoice_id: "prev-1".into(),
        outcome: PaymentOutcome::Succeeded { amount: dec!(33.00) },
        occurred_at: at("2025-03-05T00:00:00Z"),
    };
    w.run(pay, IMPORTED_AT).unwrap();
    assert_eq!(w.ledger.invoices["prev-1"].status, InvoiceStatus::Paid);
    let may = april_and_close(&mut w);
    assert_eq!(may[0].invoice_id, "inv-s1-2", "Accrual's next number follows the import");
}
