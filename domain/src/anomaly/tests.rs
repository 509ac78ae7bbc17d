//! The rules as tables: a history of period charges, a candidate, the flags expected.

use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::*;

const CENT: Decimal = dec!(0.01);

fn period(plan: &str, calls: Option<Decimal>, fee: Decimal) -> PeriodCharges {
    let usage: BTreeMap<String, Decimal> =
        calls.into_iter().map(|c| ("calls".to_string(), c)).collect();
    let total = fee + calls.unwrap_or_default();
    PeriodCharges {
        period_start: jiff::civil::date(2025, 1, 1),
        plan_code: plan.to_string(),
        total,
        usage,
    }
}

fn history(plan: &str, calls: &[Decimal]) -> Vec<PeriodCharges> {
    calls.iter().map(|c| period(plan, Some(*c), dec!(20))).collect()
}

fn kinds(flags: &[AnomalyFlag]) -> Vec<(&'static str, &str)> {
    flags.iter().map(|f| (f.kind.as_str(), f.subject.as_str())).collect()
}

/// name, past calls, this period's calls (None: no line), completeness, flags expected.
type HistoryCase<'a> =
    (&'a str, &'a [Decimal], Option<Decimal>, Completeness, &'a [(&'a str, &'a str)]);

#[test]
fn a_subscription_is_compared_with_its_own_history() {
    let steady = [dec!(100), dec!(110), dec!(95), dec!(105), dec!(100), dec!(90)];
    let noisy = [dec!(60), dec!(140), dec!(100), dec!(80), dec!(130), dec!(100)];
    let few = [dec!(100), dec!(100)];
    let plans = [dec!(40)];
    #[rustfmt::skip]
    let table: &[HistoryCase] = &[
        ("steady, as usual", &steady, Some(dec!(104)), Completeness::WholePeriod, &[]),
        ("steady, 30 % up: usual noise", &steady, Some(dec!(130)), Completeness::WholePeriod, &[]),
        ("steady, 5× up", &steady, Some(dec!(500)), Completeness::WholePeriod, &[("spike", "calls")]),
        ("steady, just under 2×", &steady, Some(dec!(199)), Completeness::WholePeriod, &[]),
        ("steady, 2×", &steady, Some(dec!(200)), Completeness::WholePeriod, &[("spike", "calls")]),
        ("steady, to zero", &steady, Some(dec!(0)), Completeness::WholePeriod, &[("usage_stopped", "calls")]),
        ("steady, metric absent", &steady, None, Completeness::WholePeriod, &[("usage_stopped", "calls")]),
        ("a zero long ago, zero again", &[dec!(0), dec!(100), dec!(90), dec!(120), dec!(110)], Some(dec!(0)), Completeness::WholePeriod, &[("usage_stopped", "calls")]),
        ("zero two periods ago: no stop, a drop", &[dec!(100), dec!(90), dec!(0), dec!(120), dec!(110)], Some(dec!(0)), Completeness::WholePeriod, &[("drop", "calls")]),
        ("steady, a tenth", &steady, Some(dec!(10)), Completeness::WholePeriod, &[("drop", "calls")]),
        ("steady, 60 %", &steady, Some(dec!(60)), Completeness::WholePeriod, &[]),
        ("noisy, 2.5×: within its own spread", &noisy, Some(dec!(250)), Completeness::WholePeriod, &[]),
        ("noisy, 6×", &noisy, Some(dec!(600)), Completeness::WholePeriod, &[("spike", "calls")]),
        ("two periods are too few", &few, Some(dec!(900)), Completeness::WholePeriod, &[]),
        ("so far: a spike shows", &steady, Some(dec!(500)), Completeness::PeriodSoFar, &[("spike", "calls")]),
        ("so far: zero is no drop yet", &steady, Some(dec!(0)), Completeness::PeriodSoFar, &[]),
        ("so far: a tenth is no drop yet", &steady, Some(dec!(10)), Completeness::PeriodSoFar, &[]),
    ];
    for (name, past, calls, completeness, expected) in table {
        let flags = flags(
            &period("basic", *calls, dec!(20)),
            &history("basic", past),
            &plans,
            CENT,
            *completeness,
        );
        assert_eq!(kinds(&flags), *expected, "{name}: {flags:?}");
        for f in &flags {
            assert!(f.reason().starts_with("calls: "), "{name}: {}", f.reason());
            assert_eq!(f.baseline_size as usize, past.len().min(HISTORY_PERIODS_MAX));
        }
    }
}

#[test]
fn a_metric_that_was_zero_needs_to_matter_against_the_total_to_flag() {
    // `storage` was never used; 1.00 of it on a bill of about 1,000 is no spike, 900.00 is.
    let mut past = history("basic", &[dec!(1000), dec!(1000), dec!(980), dec!(1010)]);
    for p in &mut past {
        p.usage.insert("storage".into(), dec!(0));
    }
    for (storage, expected) in [(dec!(1), vec![]), (dec!(900), vec![("spike", "storage")])] {
        let mut c = period("basic", Some(dec!(1000)), dec!(20));
        c.usage.insert("storage".into(), storage);
        let got = flags(&c, &past, &[], CENT, Completeness::WholePeriod);
        assert_eq!(kinds(&got), expected, "storage {storage}");
    }
}

#[test]
fn only_the_newest_periods_on_the_candidates_plan_count() {
    // Large on `pro` long ago, then `basic`: a basic-sized period is not a drop, and the
    // baseline is the newest basic periods only.
    let mut past = history("pro", &[dec!(5000); 6]);
    past.extend(history("basic", &[dec!(100), dec!(100), dec!(100)]));
    let got = flags(
        &period("basic", Some(dec!(100)), dec!(20)),
        &past,
        &[],
        CENT,
        Completeness::WholePeriod,
    );
    assert!(got.is_empty(), "{got:?}");
    let got = flags(
        &period("basic", Some(dec!(900)), dec!(20)),
        &past,
        &[],
        CENT,
        Completeness::WholePeriod,
    );
    assert_eq!(kinds(&got), [("spike", "calls")]);
    assert_eq!(got[0].baseline_size, 3);
    assert_eq!(got[0].typical, dec!(100));
    // (900 − 100) / max(0 × 1.4826, 10 % of 100, 5 % of 120) = 800 / 10.
    assert_eq!(got[0].score, dec!(80));
}

#[test]
fn a_first_invoice_is_compared_with_the_plans_closing_invoices() {
    let plan = [dec!(100), dec!(120), dec!(80), dec!(150), dec!(90), dec!(110)];
    #[rustfmt::skip]
    let table: &[(&str, &[Decimal], Decimal, bool)] = &[
        ("typical", &plan, dec!(130), false),
        ("twice the median", &plan, dec!(210), false),
        ("ten times", &plan, dec!(1050), true),
        ("ten times, plan too new", &plan[..4], dec!(1050), false),
    ];
    for (name, totals, total, flagged) in table {
        let mut c = period("basic", None, total - dec!(20));
        c.total = *total;
        let got = flags(&c, &[], totals, CENT, Completeness::WholePeriod);
        assert_eq!(!got.is_empty(), *flagged, "{name}: {got:?}");
        if *flagged {
            assert_eq!(kinds(&got), [("first_invoice_high", SUBJECT_TOTAL)]);
            assert_eq!(got[0].typical, dec!(105));
            assert!(
                got[0].reason().contains("the plan's last 6 closing invoices"),
                "{}",
                got[0].reason()
            );
        }
    }
    // After a plan change the first period on the new plan is a first invoice on it.
    let past = history("basic", &[dec!(100); 4]);
    let mut c = period("pro", Some(dec!(100)), dec!(20));
    c.total = dec!(5000);
    let got = flags(&c, &past, &plan, CENT, Completeness::WholePeriod);
    assert_eq!(kinds(&got), [("first_invoice_high", SUBJECT_TOTAL)]);
}

#[test]
fn baselines_are_median_and_scaled_mad_with_floors() {
    #[rustfmt::skip]
    let table: &[(&[Decimal], Decimal, Decimal, Decimal)] = &[
        // values, floor, median, spread
        (&[dec!(1), dec!(2), dec!(3), dec!(4), dec!(100)], CENT, dec!(3), dec!(1.4826)),
        (&[dec!(10), dec!(10), dec!(10)], CENT, dec!(10), dec!(1)),
        (&[dec!(0), dec!(0)], CENT, dec!(0), CENT),
        (&[dec!(0), dec!(0)], dec!(7), dec!(0), dec!(7)),
        (&[dec!(4), dec!(8)], CENT, dec!(6), dec!(2.9652)),
    ];
    for (values, floor, m, spread) in table {
        let b = baseline(values, *floor).unwrap();
        assert_eq!((b.median, b.spread), (*m, *spread), "{values:?}");
    }
    assert!(baseline(&[], CENT).is_none());
    assert!(baseline(&[dec!(1)], Decimal::ZERO).is_none(), "a spread must be positive");
    let huge = Decimal::MAX;
    assert!(baseline(&[huge, -huge], CENT).is_none(), "overflow is no baseline, never a panic");
    let b = baseline(&[dec!(1)], CENT).unwrap();
    assert!(b.score(Decimal::MIN).is_none());
}

#[test]
fn histories_stay_bounded() {
    let mut h = Vec::new();
    for i in 0..20u32 {
        push_bounded(&mut h, i, 6);
        assert!(h.len() <= 6);
    }
    assert_eq!(h, [14, 15, 16, 17, 18, 19]);
}
