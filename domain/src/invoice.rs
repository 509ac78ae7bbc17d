//! Invoices: lines rounded once each, tax once per invoice, totals (SPEC §4), and the
//! payment status that follows from the invoice's events.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::calendar::Period;
use crate::money::Currency;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    Usage,
    UsageInAdvance,
    MinimumCommitmentTrueUp,
    Credit,
}

impl LineKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LineKind::BaseFee => "base_fee",
            LineKind::Usage => "usage",
            LineKind::UsageInAdvance => "usage_in_advance",
            LineKind::MinimumCommitmentTrueUp => "minimum_commitment_true_up",
            LineKind::Credit => "credit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueReason {
    PeriodClose,
    SubscriptionStart,
    TrialEnd,
    PlanUpgrade,
    Cancellation,
    UsageInAdvance,
}

impl IssueReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            IssueReason::PeriodClose => "period_close",
            IssueReason::SubscriptionStart => "subscription_start",
            IssueReason::TrialEnd => "trial_end",
            IssueReason::PlanUpgrade => "plan_upgrade",
            IssueReason::Cancellation => "cancellation",
            IssueReason::UsageInAdvance => "usage_in_advance",
        }
    }
}

/// A line before rounding: what the rating and proration rules produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineDraft {
    pub kind: LineKind,
    pub description: String,
    pub metric_code: Option<String>,
    pub charge_model: Option<String>,
    pub units: Option<Decimal>,
    pub service_period: Period,
    pub unrounded: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    pub metric_code: Option<String>,
    pub charge_model: Option<String>,
    pub units: Option<Decimal>,
    pub service_period: Period,
    /// Rounded once to the currency's minor unit, half away from zero.
    pub amount: Decimal,
}

/// An issued invoice: a fact, carried whole by `InvoiceIssued`, never recomputed on replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub invoice_id: String,
    pub customer_id: String,
    pub subscription_id: String,
    pub currency: Currency,
    pub period: Period,
    pub issued_at: Timestamp,
    pub reason: IssueReason,
    pub lines: Vec<InvoiceLine>,
    pub subtotal: Decimal,
    pub tax_rate: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
}

/// The header of an invoice about to be built.
pub struct InvoiceHeader {
    pub invoice_id: String,
    pub customer_id: String,
    pub subscription_id: String,
    pub currency: Currency,
    pub period: Period,
    pub issued_at: Timestamp,
    pub reason: IssueReason,
    pub tax_rate: Decimal,
}

/// Rounds each line once, then tax = round(Σ rounded line × rate / 100) once; total = Σ + tax.
pub fn build_invoice(h: InvoiceHeader, drafts: Vec<LineDraft>) -> Invoice {
    let lines: Vec<InvoiceLine> = drafts.into_iter().map(|d| round_line(h.currency, d)).collect();
    let subtotal: Decimal = lines.iter().map(|l| l.amount).sum();
    let tax = h.currency.round(subtotal * h.tax_rate / Decimal::ONE_HUNDRED);
    let total = subtotal + tax;
    Invoice {
        invoice_id: h.invoice_id,
        customer_id: h.customer_id,
        subscription_id: h.subscription_id,
        currency: h.currency,
        period: h.period,
        issued_at: h.issued_at,
        reason: h.reason,
        lines,
        subtotal,
        tax_rate: h.tax_rate,
        tax,
        total,
    }
}

fn round_line(currency: Currency, d: LineDraft) -> InvoiceLine {
    InvoiceLine {
        kind: d.kind,
        description: d.description,
        metric_code: d.metric_code,
        charge_model: d.charge_model,
        units: d.units,
        service_period: d.service_period,
        amount: currency.round(d.unrounded),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Open,
    Paid,
    Void,
    Uncollectible,
}

impl InvoiceStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Uncollectible => "uncollectible",
        }
    }
}

/// An invoice with what happened to it since it was issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceAccount {
    pub invoice: Invoice,
    pub amount_paid: Decimal,
    pub failed_attempts: u32,
    pub status: InvoiceStatus,
}

impl InvoiceAccount {
    /// An invoice whose total is zero or negative (a credit) has nothing due and is paid.
    pub fn issued(invoice: Invoice) -> Self {
        let status =
            if invoice.total <= Decimal::ZERO { InvoiceStatus::Paid } else { InvoiceStatus::Open };
        InvoiceAccount { invoice, amount_paid: Decimal::ZERO, failed_attempts: 0, status }
    }

    pub fn amount_due(&self) -> Decimal {
        match self.status {
            InvoiceStatus::Void => Decimal::ZERO,
            _ => (self.invoice.total - self.amount_paid).max(Decimal::ZERO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use rust_decimal_macros::dec;

    fn header(currency: &str, tax_rate: Decimal) -> InvoiceHeader {
        InvoiceHeader {
            invoice_id: "inv-1".into(),
            customer_id: "c".into(),
            subscription_id: "s".into(),
            currency: Currency::parse(currency).unwrap(),
            period: Period { start: date(2025, 1, 1), end: date(2025, 2, 1) },
            issued_at: Timestamp::UNIX_EPOCH,
            reason: IssueReason::PeriodClose,
            tax_rate,
        }
    }

    fn draft(unrounded: Decimal) -> LineDraft {
        LineDraft {
            kind: LineKind::Usage,
            description: "x".into(),
            metric_code: None,
            charge_model: None,
            units: None,
            service_period: Period { start: date(2025, 1, 1), end: date(2025, 2, 1) },
            unrounded,
        }
    }

    #[test]
    fn totals_table() {
        // (currency, tax %, unrounded lines, subtotal, tax, total)
        let cases = [
            ("USD", dec!(0), vec![dec!(0.175), dec!(0.174)], dec!(0.35), dec!(0), dec!(0.35)),
            (
                "USD",
                dec!(20),
                vec![dec!(10.005), dec!(0.004)],
                dec!(10.01),
                dec!(2.00),
                dec!(12.01),
            ),
            // tax on rounded lines: 3 × 0.33 × 7.5 % = 0.07425 → 0.07
            ("USD", dec!(7.5), vec![dec!(0.333); 3], dec!(0.99), dec!(0.07), dec!(1.06)),
            ("JPY", dec!(10), vec![dec!(100.5), dec!(0.4)], dec!(101), dec!(10), dec!(111)),
            ("KWD", dec!(5), vec![dec!(1.0005)], dec!(1.001), dec!(0.050), dec!(1.051)),
            (
                "USD",
                dec!(10),
                vec![dec!(32.0), dec!(-15.483870967)],
                dec!(16.52),
                dec!(1.65),
                dec!(18.17),
            ),
        ];
        for (cur, rate, lines, subtotal, tax, total) in cases {
            let inv = build_invoice(header(cur, rate), lines.into_iter().map(draft).collect());
            assert_eq!((inv.subtotal, inv.tax, inv.total), (subtotal, tax, total), "{cur} {rate}");
            assert_eq!(inv.lines.iter().map(|l| l.amount).sum::<Decimal>(), inv.subtotal);
        }
    }

    #[test]
    fn credit_invoice_is_paid_with_nothing_due() {
        let inv = build_invoice(header("USD", dec!(0)), vec![draft(dec!(-5))]);
        let acc = InvoiceAccount::issued(inv);
        assert_eq!(acc.status, InvoiceStatus::Paid);
        assert_eq!(acc.amount_due(), Decimal::ZERO);
    }
}
