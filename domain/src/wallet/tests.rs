use jiff::civil::date;
use rust_decimal_macros::dec;

use super::*;
use CreditKind::{Granted, Paid};

/// Granted 10 (no expiry), paid 50 (expires Mar 1), granted 5 (expires Feb 1), paid 20.
fn wallet() -> Wallet {
    let lot = |top_up, kind, amount, expires_on| Lot { top_up, kind, amount, expires_on };
    Wallet {
        currency: Currency::parse("USD").unwrap(),
        rate_amount: dec!(1),
        lots: vec![
            lot(1, Granted, dec!(10), None),
            lot(2, Paid, dec!(50), Some(date(2025, 3, 1))),
            lot(3, Granted, dec!(5), Some(date(2025, 2, 1))),
            lot(4, Paid, dec!(20), None),
        ],
    }
}

/// (due, day, what each lot gives in order, balance left that day)
#[test]
fn consumption_order_table() {
    let cases = [
        // Granted before paid; the earliest-expiring first.
        (dec!(12), date(2025, 1, 15), vec![(3, dec!(5)), (1, dec!(7))], dec!(73)),
        // Never more than the wallet holds, never below zero.
        (
            dec!(100),
            date(2025, 1, 15),
            vec![(3, dec!(5)), (1, dec!(10)), (2, dec!(50)), (4, dec!(20))],
            dec!(0),
        ),
        // A lot is not usable on its expiry date.
        (dec!(12), date(2025, 2, 1), vec![(1, dec!(10)), (2, dec!(2))], dec!(68)),
        (dec!(12), date(2025, 3, 1), vec![(1, dec!(10)), (4, dec!(2))], dec!(18)),
        (dec!(0), date(2025, 1, 15), vec![], dec!(85)),
        (dec!(-3), date(2025, 1, 15), vec![], dec!(85)),
    ];
    for (due, day, want, left) in cases {
        let mut w = wallet();
        let taken = w.consume(due, day);
        let got: Vec<(u32, Decimal)> = taken.iter().map(|t| (t.top_up, t.amount)).collect();
        assert_eq!(got, want, "{due} on {day}");
        let paid: Decimal = taken.iter().map(|t| t.amount).sum();
        assert!(paid <= due.max(Decimal::ZERO), "never more than due");
        assert_eq!(w.balance_on(day), left, "{due} on {day}");
    }
}

/// (day, expired (top-up, kind, amount), balance after)
#[test]
fn expiry_table() {
    let cases = [
        (date(2025, 1, 31), vec![], dec!(85)),
        (date(2025, 2, 1), vec![(3, Granted, dec!(5))], dec!(80)),
        (date(2025, 3, 1), vec![(2, Paid, dec!(50)), (3, Granted, dec!(5))], dec!(30)),
    ];
    for (day, want, left) in cases {
        let mut w = wallet();
        let gone: Vec<(u32, CreditKind, Decimal)> =
            w.expire(day).into_iter().map(|t| (t.top_up, t.kind, t.amount)).collect();
        assert_eq!(gone, want, "{day}");
        assert_eq!(w.balance_on(day), left, "{day}");
        assert!(w.expire(day).is_empty(), "{day}: expiry happens once");
    }
}

#[test]
fn the_low_balance_threshold_fires_once_per_downward_crossing() {
    let cases = [
        (dec!(100), dec!(40), true),
        (dec!(50), dec!(49.99), true),
        (dec!(40), dec!(30), false),
        (dec!(60), dec!(50), false),
        (dec!(40), dec!(60), false),
    ];
    for (before, after, fires) in cases {
        assert_eq!(crossed_below(before, after, dec!(50)), fires, "{before} -> {after}");
    }
}
