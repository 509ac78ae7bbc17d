use rust_decimal_macros::dec;

use super::*;

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn fixed(amount: Decimal, frequency: Frequency) -> Coupon {
    Coupon {
        code: format!("fixed-{amount}"),
        kind: CouponKind::FixedAmount { amount, currency: usd() },
        frequency,
        plan_codes: vec![],
        metric_codes: vec![],
        applies_to_add_ons: false,
        expires_on: None,
    }
}

fn percent(p: Decimal, frequency: Frequency) -> Coupon {
    Coupon {
        code: format!("pct-{p}"),
        kind: CouponKind::Percentage { percent: p },
        ..fixed(dec!(0), frequency)
    }
}

fn line(amount: Decimal) -> LineToDiscount {
    LineToDiscount { amount, plan_code: Some("pro".into()), metric_code: None, add_on: false }
}

fn usage(amount: Decimal, metric: &str) -> LineToDiscount {
    LineToDiscount { metric_code: Some(metric.into()), ..line(amount) }
}

fn add_on(amount: Decimal) -> LineToDiscount {
    LineToDiscount { plan_code: None, add_on: true, ..line(amount) }
}

/// (name, coupons, lines, discount per line)
type Case = (&'static str, Vec<Coupon>, Vec<LineToDiscount>, Vec<Decimal>);

#[test]
fn discounts_of_one_invoice_table() {
    use Frequency::{Forever, Once};
    let limited = |metrics: &[&str], plans: &[&str], add_ons: bool| Coupon {
        metric_codes: metrics.iter().map(|m| m.to_string()).collect(),
        plan_codes: plans.iter().map(|p| p.to_string()).collect(),
        applies_to_add_ons: add_ons,
        ..percent(dec!(10), Forever)
    };
    let cases: Vec<Case> = vec![
        (
            "10 % per line, rounded per line",
            vec![percent(dec!(10), Once)],
            vec![line(dec!(100)), line(dec!(50.05))],
            vec![dec!(10), dec!(5.01)],
        ),
        (
            "fixed spread pro rata",
            vec![fixed(dec!(30), Once)],
            vec![line(dec!(100)), line(dec!(50))],
            vec![dec!(20), dec!(10)],
        ),
        (
            "fixed: the remainder goes to the largest line",
            vec![fixed(dec!(10), Forever)],
            vec![line(dec!(33.33)), line(dec!(33.34)), line(dec!(33.33))],
            vec![dec!(3.33), dec!(3.34), dec!(3.33)],
        ),
        (
            "fixed beyond the lines: down to zero, never below",
            vec![fixed(dec!(200), Once)],
            vec![line(dec!(100)), line(dec!(50))],
            vec![dec!(100), dec!(50)],
        ),
        (
            "in the order applied: 50 % then 10.00",
            vec![percent(dec!(50), Once), fixed(dec!(10), Once)],
            vec![line(dec!(100))],
            vec![dec!(60)],
        ),
        (
            "in the order applied: 10.00 then 50 %",
            vec![fixed(dec!(10), Once), percent(dec!(50), Once)],
            vec![line(dec!(100))],
            vec![dec!(55)],
        ),
        (
            "metric limit: usage of that metric only",
            vec![limited(&["calls"], &[], false)],
            vec![line(dec!(30)), usage(dec!(20), "calls"), usage(dec!(40), "storage")],
            vec![dec!(0), dec!(2), dec!(0)],
        ),
        ("plan limit", vec![limited(&[], &["basic"], false)], vec![line(dec!(30))], vec![dec!(0)]),
        (
            "add-ons only when allowed",
            vec![limited(&[], &[], false), limited(&[], &[], true)],
            vec![add_on(dec!(100))],
            vec![dec!(10)],
        ),
        (
            "credits are never discounted",
            vec![percent(dec!(10), Once)],
            vec![line(dec!(-15)), line(dec!(30))],
            vec![dec!(0), dec!(3)],
        ),
        (
            "100 % takes a line to zero",
            vec![percent(dec!(100), Once), fixed(dec!(5), Once)],
            vec![line(dec!(12.34))],
            vec![dec!(12.34)],
        ),
    ];
    for (name, coupons, lines, want) in cases {
        let held: Vec<HeldCoupon> = coupons.into_iter().map(HeldCoupon::new).collect();
        let d = discount(&held, &lines, usd());
        assert_eq!(d.per_line, want, "{name}");
        let given: Decimal = d.given.iter().copied().sum();
        assert_eq!(given, d.per_line.iter().copied().sum::<Decimal>(), "{name}: Σ given = Σ lines");
    }
}

/// A fixed `once` coupon carries what an invoice did not use to the next ones until used up;
/// a recurring one gives its amount on N invoices; `forever` never runs out.
#[test]
fn carry_over_and_periods_table() {
    // (coupon, invoices (their line amounts), discount per invoice)
    let cases: Vec<(Coupon, Vec<Decimal>, Vec<Decimal>)> = vec![
        (
            fixed(dec!(100), Frequency::Once),
            vec![dec!(30), dec!(45), dec!(50), dec!(10)],
            vec![dec!(30), dec!(45), dec!(25), dec!(0)],
        ),
        (
            fixed(dec!(20), Frequency::Recurring { periods: 2 }),
            vec![dec!(30), dec!(15), dec!(30)],
            vec![dec!(20), dec!(15), dec!(0)],
        ),
        (
            percent(dec!(25), Frequency::Recurring { periods: 2 }),
            vec![dec!(0), dec!(40), dec!(40), dec!(40)],
            vec![dec!(0), dec!(10), dec!(10), dec!(0)],
        ),
        (percent(dec!(25), Frequency::Once), vec![dec!(40), dec!(40)], vec![dec!(10), dec!(0)]),
        (
            fixed(dec!(5), Frequency::Forever),
            vec![dec!(40), dec!(3), dec!(40)],
            vec![dec!(5), dec!(3), dec!(5)],
        ),
    ];
    for (coupon, invoices, want) in cases {
        let code = coupon.code.clone();
        let mut held = vec![HeldCoupon::new(coupon)];
        let mut got = Vec::new();
        for amount in invoices {
            let lines = if amount.is_zero() { vec![] } else { vec![line(amount)] };
            let d = discount(&held, &lines, usd());
            got.push(d.given[0]);
            held = d.held;
        }
        assert_eq!(got, want, "{code}");
    }
}
