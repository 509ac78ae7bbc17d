//! Invoices: lines rounded once each, tax once per invoice, totals (SPEC §4), and the
//! payment status that follows from the invoice's events.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::calendar::Period;
use crate::coupon::CouponUse;
use crate::credit_note::{CreditNote, InvoiceCredits};
use crate::error::DomainError;
use crate::money::{checked_sum, Currency};
use crate::wallet::WalletUse;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    Usage,
    UsageInAdvance,
    MinimumCommitmentTrueUp,
    Credit,
    /// A catalogue add-on on a one-off invoice (SPEC §8.4).
    AddOn,
    /// Paid wallet credits bought (SPEC §8.1): a liability, never revenue, untaxed.
    PrepaidCredits,
}

impl LineKind {
    pub const ALL: [LineKind; 7] = [
        LineKind::BaseFee,
        LineKind::Usage,
        LineKind::UsageInAdvance,
        LineKind::MinimumCommitmentTrueUp,
        LineKind::Credit,
        LineKind::AddOn,
        LineKind::PrepaidCredits,
    ];

    /// The kind named `s` (as [`LineKind::as_str`] writes it); INVALID_ARGUMENT on `field`.
    pub fn parse(field: &str, s: &str) -> Result<LineKind, DomainError> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
            DomainError::invalid(field, format!("{s:?} is not one of {}", names.join(", ")))
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            LineKind::BaseFee => "base_fee",
            LineKind::Usage => "usage",
            LineKind::UsageInAdvance => "usage_in_advance",
            LineKind::MinimumCommitmentTrueUp => "minimum_commitment_true_up",
            LineKind::Credit => "credit",
            LineKind::AddOn => "add_on",
            LineKind::PrepaidCredits => "prepaid_credits",
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
    /// A one-off invoice of add-ons, outside any subscription.
    OneOff,
    /// The purchase of paid wallet credits (one `prepaid_credits` line).
    WalletTopUp,
    /// A period's usage so far, when it reached a progressive-billing threshold of the plan
    /// (`crate::progressive`); the period's closing invoice bills only what is left.
    Progressive,
    /// A downgrade with an effective date inside an open period: the in-advance fee credited
    /// from that date, the new plan's days charged.
    PlanDowngrade,
    /// A plan change or cancellation dated back into closed (invoiced) periods: their base
    /// fees corrected by credit and charge lines, the issued invoices untouched.
    Correction,
    /// An invoice another biller issued, imported as a fact (`crate::imported_invoice`).
    Imported,
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
            IssueReason::OneOff => "one_off",
            IssueReason::WalletTopUp => "wallet_top_up",
            IssueReason::Progressive => "progressive",
            IssueReason::PlanDowngrade => "plan_downgrade",
            IssueReason::Correction => "correction",
            IssueReason::Imported => "imported",
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
    /// Rounded once to the currency's minor unit, half away from zero; net of `discount`.
    pub amount: Decimal,
    /// What coupons took off the line (SPEC §8.2): the line was `amount + discount` before.
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    pub discount: Decimal,
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
    /// The customer's credit balance (from `credit` notes) applied at issue, after tax
    /// (SPEC §8): `0 ≤ credit_applied ≤ max(total, 0)`. What is due at issue is
    /// `total − credit_applied`.
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    pub credit_applied: Decimal,
    /// What each coupon gave on this invoice, in the order they apply (SPEC §8.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coupons: Vec<CouponUse>,
    /// What the customer's wallet credits paid at issue, after the credit balance (SPEC §8.1):
    /// per lot, in the order taken; `credit_applied + Σ ≤ max(total, 0)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wallet_applied: Vec<WalletUse>,
    /// Why the invoice looks unusual against the subscription's history (`crate::anomaly`):
    /// notes for a person, decided before issue; they never change an amount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<crate::anomaly::AnomalyFlag>,
}

impl Invoice {
    /// What the customer owed when it was issued: the total less the credit balance and the
    /// wallet credits applied.
    pub fn due_at_issue(&self) -> Decimal {
        self.total - self.credit_applied - self.wallet_total()
    }

    /// Σ of what wallet credits paid at issue.
    pub fn wallet_total(&self) -> Decimal {
        self.wallet_applied.iter().map(|u| u.amount).sum()
    }
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
/// Every step is checked: an amount past `Decimal`'s range (only from a plan or usage far beyond
/// the input bounds) is a [`DomainError::overflow`] of the subscription naming the invoice part,
/// never a panic. Results are otherwise exactly those of plain `+ × /`.
pub fn build_invoice(h: InvoiceHeader, drafts: Vec<LineDraft>) -> Result<Invoice, DomainError> {
    let lines: Vec<InvoiceLine> = drafts.into_iter().map(|d| round_line(h.currency, d)).collect();
    let subtotal = subtotal(&h, &lines)?;
    let tax = tax(&h, subtotal)?;
    let total = subtotal.checked_add(tax).ok_or_else(|| overflow(&h, "total (subtotal + tax)"))?;
    debug_assert_eq!(
        checked_sum(lines.iter().map(|l| l.amount)).and_then(|s| s.checked_add(tax)),
        Some(total),
        "total = Σ lines + tax"
    );
    Ok(Invoice {
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
        credit_applied: Decimal::ZERO,
        coupons: Vec::new(),
        wallet_applied: Vec::new(),
        anomalies: Vec::new(),
    })
}

/// `invoice` with the coupons' `per_line` discounts taken off its lines (each line's `amount`
/// becomes net, its `discount` records the cut) and what each coupon gave (`uses`, zeros left
/// out); subtotal, tax and total recomputed as [`build_invoice`] does, so tax is on the
/// discounted lines (SPEC §8 order: coupons, then tax).
pub fn with_discounts(
    mut invoice: Invoice,
    per_line: &[Decimal],
    uses: Vec<CouponUse>,
) -> Result<Invoice, DomainError> {
    assert_eq!(per_line.len(), invoice.lines.len(), "one discount per line");
    if per_line.iter().all(Decimal::is_zero) {
        return Ok(invoice);
    }
    for (line, cut) in invoice.lines.iter_mut().zip(per_line) {
        assert!(
            *cut >= Decimal::ZERO && *cut <= line.amount.max(Decimal::ZERO),
            "a discount past its line"
        );
        line.amount -= *cut;
        line.discount += *cut;
    }
    let h = InvoiceHeader {
        invoice_id: invoice.invoice_id.clone(),
        customer_id: invoice.customer_id.clone(),
        subscription_id: invoice.subscription_id.clone(),
        currency: invoice.currency,
        period: invoice.period,
        issued_at: invoice.issued_at,
        reason: invoice.reason,
        tax_rate: invoice.tax_rate,
    };
    invoice.subtotal = subtotal(&h, &invoice.lines)?;
    invoice.tax = tax(&h, invoice.subtotal)?;
    let total = invoice.subtotal.checked_add(invoice.tax);
    invoice.total = total.ok_or_else(|| overflow(&h, "total (subtotal + tax)"))?;
    invoice.coupons = uses.into_iter().filter(|u| !u.amount.is_zero()).collect();
    Ok(invoice)
}

/// Σ of the rounded lines; an overflow names the line that took the sum out of range.
fn subtotal(h: &InvoiceHeader, lines: &[InvoiceLine]) -> Result<Decimal, DomainError> {
    lines.iter().enumerate().try_fold(Decimal::ZERO, |sum, (i, line)| {
        sum.checked_add(line.amount).ok_or_else(|| {
            overflow(h, format_args!("subtotal (adding line {i}, {:?})", line.description))
        })
    })
}

/// round(subtotal × rate / 100) to the currency, half away from zero.
fn tax(h: &InvoiceHeader, subtotal: Decimal) -> Result<Decimal, DomainError> {
    let unrounded = subtotal
        .checked_mul(h.tax_rate)
        .and_then(|x| x.checked_div(Decimal::ONE_HUNDRED))
        .ok_or_else(|| overflow(h, format_args!("tax ({} % of {subtotal})", h.tax_rate)))?;
    Ok(h.currency.round(unrounded))
}

fn overflow(h: &InvoiceHeader, what: impl std::fmt::Display) -> DomainError {
    let subject = format!("subscription-{}", h.subscription_id);
    DomainError::overflow(subject, format_args!("invoice {} {what}", h.invoice_id))
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
        discount: Decimal::ZERO,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Open,
    Paid,
    Void,
    Uncollectible,
    /// Nothing due: credit notes offset what payments had not covered (SPEC §8.3).
    Closed,
}

impl InvoiceStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            InvoiceStatus::Open => "open",
            InvoiceStatus::Paid => "paid",
            InvoiceStatus::Void => "void",
            InvoiceStatus::Uncollectible => "uncollectible",
            InvoiceStatus::Closed => "closed",
        }
    }
}

/// An invoice with what happened to it since it was issued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceAccount {
    pub invoice: Invoice,
    pub amount_paid: Decimal,
    pub failed_attempts: u32,
    pub status: InvoiceStatus,
    /// What its credit notes credited (SPEC §8.3).
    #[serde(default)]
    pub credits: InvoiceCredits,
}

impl InvoiceAccount {
    /// An invoice with nothing due at issue (a total of zero or less, or one the customer's
    /// credit balance covered) is paid.
    pub fn issued(invoice: Invoice) -> Self {
        let status = if invoice.due_at_issue() <= Decimal::ZERO {
            InvoiceStatus::Paid
        } else {
            InvoiceStatus::Open
        };
        InvoiceAccount {
            invoice,
            amount_paid: Decimal::ZERO,
            failed_attempts: 0,
            status,
            credits: InvoiceCredits::default(),
        }
    }

    /// Total less the credit applied, payments and offsets (never below zero); nothing on a
    /// void invoice.
    pub fn amount_due(&self) -> Decimal {
        match self.status {
            InvoiceStatus::Void => Decimal::ZERO,
            _ => (self.invoice.due_at_issue() - self.amount_paid - self.credits.offset)
                .max(Decimal::ZERO),
        }
    }

    /// What a `credit` note may return to the customer's credit balance: what was settled
    /// with money or with credit, less what notes already returned.
    pub fn returnable(&self) -> Decimal {
        let settled = self.amount_paid + self.invoice.credit_applied + self.invoice.wallet_total();
        (settled - self.credits.refunded - self.credits.to_balance).max(Decimal::ZERO)
    }

    /// What a `refund` note may return as money: [`InvoiceAccount::returnable`], and never
    /// more than was paid with money.
    pub fn refundable(&self) -> Decimal {
        self.returnable().min((self.amount_paid - self.credits.refunded).max(Decimal::ZERO))
    }

    /// Applies a payment (checked when it was decided): paid once nothing is due.
    pub fn pay(&mut self, amount: Decimal) {
        self.amount_paid += amount;
        let settled = self.amount_paid + self.credits.offset;
        let due = self.invoice.due_at_issue();
        assert!(settled <= due, "overpaid invoice {}", self.invoice.invoice_id);
        if self.status != InvoiceStatus::Void && self.amount_due().is_zero() {
            self.status = InvoiceStatus::Paid;
        }
    }

    /// Applies a credit note (checked when it was decided): an offset that leaves nothing due
    /// closes an open invoice.
    pub fn credit(&mut self, note: &CreditNote) {
        assert_eq!(note.invoice_id, self.invoice.invoice_id, "the note credits this invoice");
        self.credits.add(note);
        assert!(self.credits.subtotal <= self.invoice.subtotal, "credited past the subtotal");
        if self.status == InvoiceStatus::Open && self.amount_due().is_zero() {
            self.status = InvoiceStatus::Closed;
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
            let drafts = lines.into_iter().map(draft).collect();
            let inv = build_invoice(header(cur, rate), drafts).unwrap();
            assert_eq!((inv.subtotal, inv.tax, inv.total), (subtotal, tax, total), "{cur} {rate}");
            assert_eq!(inv.lines.iter().map(|l| l.amount).sum::<Decimal>(), inv.subtotal);
        }
    }

    #[test]
    fn credit_invoice_is_paid_with_nothing_due() {
        let inv = build_invoice(header("USD", dec!(0)), vec![draft(dec!(-5))]).unwrap();
        let acc = InvoiceAccount::issued(inv);
        assert_eq!(acc.status, InvoiceStatus::Paid);
        assert_eq!(acc.amount_due(), Decimal::ZERO);
    }

    /// Amounts far beyond the input bounds: the exact invoice, or the overflow naming the part
    /// that overflowed (never a panic).
    #[test]
    fn extreme_amounts_table() {
        const MAX: Decimal = Decimal::MAX;
        let tiny = Decimal::new(1, 28);
        // (currency, tax %, unrounded lines, Ok((subtotal, tax, total)) or Err(what overflowed))
        type Want = Result<[Decimal; 3], &'static str>;
        let cases: Vec<(&str, Decimal, Vec<Decimal>, Want)> = vec![
            ("USD", dec!(0), vec![MAX], Ok([MAX, dec!(0), MAX])),
            ("USD", dec!(0), vec![MAX, -MAX, MAX], Ok([MAX, dec!(0), MAX])),
            ("USD", dec!(10), vec![dec!(7e27)], Ok([dec!(7e27), dec!(7e26), dec!(7.7e27)])),
            ("KWD", dec!(5), vec![tiny, dec!(1e27)], Ok([dec!(1e27), dec!(5e25), dec!(1.05e27)])),
            ("USD", dec!(0), vec![MAX, dec!(1)], Err("subtotal (adding line 1")),
            ("USD", dec!(0), vec![-MAX, dec!(-1)], Err("subtotal (adding line 1")),
            // Below one unit in the last place of MAX, an addition rounds (as plain `+` does).
            ("USD", dec!(0), vec![-MAX, dec!(-0.01)], Ok([-MAX, dec!(0), -MAX])),
            ("JPY", dec!(0), vec![dec!(1), MAX - dec!(1), dec!(0.5)], Err("adding line 2")),
            ("USD", dec!(10), vec![MAX], Err("tax (10 % of")),
            // 100 % of MAX/2 fits, but subtotal × rate does not: an error, never a reordering.
            ("USD", dec!(100), vec![MAX / dec!(2)], Err("tax (100 % of")),
            ("USD", dec!(1), vec![MAX], Err("total (subtotal + tax)")),
            ("USD", dec!(1e20), vec![dec!(1e9)], Err("tax")),
        ];
        for (cur, rate, lines, want) in cases {
            let got = build_invoice(header(cur, rate), lines.iter().copied().map(draft).collect());
            match (got, want) {
                (Ok(inv), Ok(want)) => {
                    assert_eq!([inv.subtotal, inv.tax, inv.total], want, "{cur} {rate} {lines:?}")
                }
                (Err(e), Err(what)) => {
                    assert!(e.is_overflow(), "{e:?}");
                    let text = e.to_string();
                    assert!(text.starts_with("subscription-s: invoice inv-1 "), "{text}");
                    assert!(text.contains(what), "{cur} {rate} {lines:?}: {text}");
                }
                (got, want) => panic!("{cur} {rate} {lines:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Everyday amounts, amounts near `Decimal::MAX`, and arbitrary bit patterns.
        fn extreme() -> impl Strategy<Value = Decimal> {
            crate::test_strategies::extreme_decimal(1_000_000_000)
        }

        fn rate() -> impl Strategy<Value = Decimal> {
            prop_oneof![
                (0i64..=10_000, 0u32..=2).prop_map(|(m, s)| Decimal::new(m, s)),
                extreme().prop_map(|d| d.abs()),
            ]
        }

        proptest! {
            /// `build_invoice` never panics: an `Ok` is exactly what plain `+ × /` give (so
            /// normal invoices are unchanged), an `Err` is an overflow where plain arithmetic
            /// would have panicked.
            #[test]
            fn build_invoice_is_exact_or_an_overflow(
                cur in prop::sample::select(vec!["USD", "JPY", "KWD"]),
                rate in rate(),
                lines in prop::collection::vec(extreme(), 0..5),
            ) {
                let got = build_invoice(header(cur, rate), lines.iter().copied().map(draft).collect());
                let c = Currency::parse(cur).unwrap();
                let rounded: Vec<Decimal> = lines.iter().map(|l| c.round(*l)).collect();
                let subtotal = checked_sum(rounded.iter().copied());
                let product = subtotal.and_then(|s| s.checked_mul(rate));
                match got {
                    Ok(inv) => {
                        let subtotal: Decimal = rounded.iter().copied().sum();
                        let tax = c.round(subtotal * rate / Decimal::ONE_HUNDRED);
                        prop_assert_eq!(inv.subtotal, subtotal);
                        prop_assert_eq!(inv.tax, tax);
                        prop_assert_eq!(inv.total, subtotal + tax);
                        let amounts: Vec<Decimal> = inv.lines.iter().map(|l| l.amount).collect();
                        prop_assert_eq!(amounts, rounded);
                    }
                    Err(e) => {
                        prop_assert!(e.is_overflow(), "{:?}", e);
                        let tax = product.map(|p| c.round(p / Decimal::ONE_HUNDRED));
                        let total = subtotal.zip(tax).and_then(|(s, t)| s.checked_add(t));
                        prop_assert!(total.is_none(), "refused a computable invoice: {:?}", e);
                    }
                }
            }
        }
    }
}
