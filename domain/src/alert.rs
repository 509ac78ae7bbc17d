//! Usage alerts (issue 14, part 3): a threshold on a subscription's usage in its current
//! period, on units of one metric or on the rated usage amount (of one metric or all), one-shot
//! or recurring every N. The rule of [`levels_crossed`]: an alert fires once per threshold
//! level per period: level `threshold`, and for a recurring alert `threshold + k × every` too;
//! every level at or below the period's value that has not fired yet fires, in ascending
//! order. A value that falls back (negative usage) never fires a level twice in one period.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::catalog::check_id;
use crate::error::{DomainError, Violations};
use crate::money::{check_bounded, UNITS_MAX};

/// Most alerts one subscription may carry.
pub const ALERTS_PER_SUBSCRIPTION_MAX: usize = 50;
/// Most levels one usage event fires for one alert; a jump past more records only the highest
/// (an alert is a notification, not a ledger: 100 at once says enough).
pub const LEVELS_PER_EVENT_MAX: usize = 100;
/// Most decimal places of a threshold.
pub const THRESHOLD_SCALE_MAX: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertOn {
    /// Aggregated units of `metric_code` this period (as the invoice would rate them).
    Units,
    /// Rated usage amount this period (of `metric_code`, or of every usage charge), before tax
    /// and coupons.
    Amount,
}

impl AlertOn {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertOn::Units => "units",
            AlertOn::Amount => "amount",
        }
    }
}

/// A usage alert as defined (`CreateUsageAlert`, the payload of `UsageAlertCreated`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAlert {
    pub alert_id: String,
    pub subscription_id: String,
    /// Required for `units`; for `amount`, `None` means every usage charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_code: Option<String>,
    pub on: AlertOn,
    /// The first level (> 0).
    pub threshold: Decimal,
    /// Recurring: every this much above `threshold` is a level too; `None`: one-shot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Decimal>,
}

impl UsageAlert {
    /// The checks that need no ledger.
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut v = Violations::default();
        check_id(&mut v, "alert_id", &self.alert_id);
        check_id(&mut v, "subscription_id", &self.subscription_id);
        if let Some(m) = &self.metric_code {
            check_id(&mut v, "metric_code", m);
        } else if self.on == AlertOn::Units {
            v.push("metric_code", "is required for an alert on units");
        }
        for (field, value) in [("threshold", Some(self.threshold)), ("every", self.every)] {
            let Some(x) = value else { continue };
            if let Err(violation) = check_bounded(field, x, UNITS_MAX) {
                v.0.push(violation);
            } else if x.is_zero() || x.scale() > THRESHOLD_SCALE_MAX {
                v.push(
                    field,
                    format!("must be positive with at most {THRESHOLD_SCALE_MAX} decimal places"),
                );
            }
        }
        v.into_result()
    }
}

/// The levels `alert` fires at for a period value `value`, given the highest level it already
/// fired this period (`None`: none yet), in ascending order (see the module rule).
pub fn levels_crossed(alert: &UsageAlert, value: Decimal, fired: Option<Decimal>) -> Vec<Decimal> {
    let t = alert.threshold;
    if value < t {
        return Vec::new();
    }
    let Some(every) = alert.every else {
        return if fired.is_none() { vec![t] } else { Vec::new() };
    };
    // Levels t + k·every for k in [first, last]: last = ⌊(value − t) / every⌋.
    let last = ((value - t) / every).floor();
    let first = match fired {
        None => Decimal::ZERO,
        Some(f) => ((f - t) / every).floor() + Decimal::ONE,
    };
    if first > last {
        return Vec::new();
    }
    let count = last - first + Decimal::ONE;
    if count > Decimal::from(LEVELS_PER_EVENT_MAX) {
        return vec![t + last * every];
    }
    let mut out = Vec::new();
    let mut k = first;
    while k <= last {
        out.push(t + k * every);
        k += Decimal::ONE;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn alert(threshold: Decimal, every: Option<Decimal>) -> UsageAlert {
        UsageAlert {
            alert_id: "a".into(),
            subscription_id: "s".into(),
            metric_code: Some("calls".into()),
            on: AlertOn::Units,
            threshold,
            every,
        }
    }

    /// (threshold, every, value, fired so far, levels that fire)
    #[test]
    fn levels_table() {
        let cases = [
            (dec!(100), None, dec!(99.9), None, vec![]),
            (dec!(100), None, dec!(100), None, vec![dec!(100)]),
            (dec!(100), None, dec!(500), Some(dec!(100)), vec![]),
            (dec!(100), Some(dec!(50)), dec!(99), None, vec![]),
            (dec!(100), Some(dec!(50)), dec!(100), None, vec![dec!(100)]),
            (
                dec!(100),
                Some(dec!(50)),
                dec!(260),
                None,
                vec![dec!(100), dec!(150), dec!(200), dec!(250)],
            ),
            (dec!(100), Some(dec!(50)), dec!(260), Some(dec!(150)), vec![dec!(200), dec!(250)]),
            (dec!(100), Some(dec!(50)), dec!(120), Some(dec!(150)), vec![]),
            // A jump past more than LEVELS_PER_EVENT_MAX levels records the highest only.
            (dec!(1), Some(dec!(1)), dec!(1000), None, vec![dec!(1000)]),
            (dec!(0.5), Some(dec!(0.25)), dec!(1.1), None, vec![dec!(0.5), dec!(0.75), dec!(1.00)]),
        ];
        for (threshold, every, value, fired, want) in cases {
            let got = levels_crossed(&alert(threshold, every), value, fired);
            assert_eq!(got, want, "{threshold} every {every:?} at {value} after {fired:?}");
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        let bad = UsageAlert {
            alert_id: String::new(),
            subscription_id: "s".into(),
            metric_code: None,
            on: AlertOn::Units,
            threshold: dec!(0),
            every: Some(dec!(-1)),
        };
        let Err(DomainError::Invalid(v)) = bad.validate() else { panic!("invalid") };
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["alert_id", "metric_code", "threshold", "every"]);
        assert!(alert(dec!(10), Some(dec!(2.5))).validate().is_ok());
    }
}
