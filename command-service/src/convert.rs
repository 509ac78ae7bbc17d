//! The wire boundary: `accrual.v1` requests parsed into domain commands (every bad field
//! reported at once as a BadRequest violation), and domain results turned into replies.

use std::str::FromStr;

use domain::add_on::{AddOn, OneOffLine, OneOffRequest};
use domain::alert::{AlertOn, UsageAlert};
use domain::calendar::{Anchor, Interval, Period};
use domain::catalog::{Charge, Customer, FeeTiming, Metric, Plan};
use domain::commands::{Command, PaymentOutcome};
use domain::coupon::{Coupon, CouponKind, Frequency};
use domain::credit_note::{CreditDestination, CreditLineRequest, CreditNote, CreditNoteRequest};
use domain::error::{DomainError, Violations};
use domain::events::Usage;
use domain::imported_invoice::ImportedInvoice;
use domain::invoice::{InvoiceAccount, InvoiceLine, LineKind};
use domain::money::Currency;
use domain::rating::{Aggregation, ChargeModel, PercentTier, Tier};
use domain::wallet::{CreditKind, OpenWallet, TopUpRequest};
use jiff::civil::Date;
use jiff::Timestamp;
use proto::v1 as pb;
use rust_decimal::Decimal;

type Parsed<T> = Result<T, DomainError>;

/// Parses a decimal string; empty is `None` (a violation if `required`). "-0" (a negative
/// zero: a typo or a sign bug in the client) is refused in every decimal field.
fn dec(v: &mut Violations, field: &str, s: &str, required: bool) -> Option<Decimal> {
    if s.is_empty() {
        if required {
            v.push(field, "is required (an empty string is not a decimal)");
        }
        return None;
    }
    match Decimal::from_str(s) {
        Ok(d) if d.is_zero() && s.trim_start().starts_with('-') => {
            v.push(field, format!("{s:?} is a negative zero: write 0"));
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            v.push(field, format!("{s:?} is not a decimal number"));
            None
        }
    }
}

/// An optional decimal whose absence means zero (a flat fee, free units, a tax rate...).
fn dec_or_zero(v: &mut Violations, field: &str, s: &str) -> Decimal {
    dec(v, field, s, false).unwrap_or_default()
}

/// A required decimal (a base fee, a price, a rate): "" is refused, "0" is written out.
fn dec_required(v: &mut Violations, field: &str, s: &str) -> Decimal {
    dec(v, field, s, true).unwrap_or_default()
}

fn parse_enum<T>(v: &mut Violations, r: Result<T, DomainError>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(DomainError::Invalid(list)) => {
            v.0.extend(list);
            None
        }
        Err(other) => {
            v.push("request", other.to_string());
            None
        }
    }
}

fn date(v: &mut Violations, field: &str, s: &str) -> Option<Date> {
    if s.is_empty() {
        return None;
    }
    Date::from_str(s).map_err(|_| v.push(field, format!("{s:?} is not a date YYYY-MM-DD"))).ok()
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range of a valid
/// `google.protobuf.Timestamp`.
const TIMESTAMP_SECONDS_MIN: i64 = -62_135_596_800;
const TIMESTAMP_SECONDS_MAX: i64 = 253_402_300_799;

/// A caller-supplied instant: a valid protobuf Timestamp (nanos in [0, 999,999,999], years
/// 0001..9999), for every Timestamp field of every request alike. The domain then bounds it
/// by the service clock where a future instant makes no sense.
pub fn timestamp(field: &str, t: Option<&prost_types::Timestamp>) -> Parsed<Timestamp> {
    let t = t.ok_or_else(|| DomainError::invalid(field, "is required"))?;
    if !(0..=999_999_999).contains(&t.nanos) {
        return Err(DomainError::invalid(field, "nanos must be in [0, 999999999]"));
    }
    if !(TIMESTAMP_SECONDS_MIN..=TIMESTAMP_SECONDS_MAX).contains(&t.seconds) {
        return Err(DomainError::invalid(field, "is not a valid instant (years 0001..9999)"));
    }
    Timestamp::new(t.seconds, t.nanos)
        .map_err(|_| DomainError::invalid(field, "is not a valid instant (years 0001..9999)"))
}

pub fn to_timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() }
}

pub fn register_customer(r: &pb::RegisterCustomerRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let currency = parse_enum(&mut v, Currency::parse(&r.currency));
    let tax_rate = dec_or_zero(&mut v, "tax_rate", &r.tax_rate);
    let time_zone = if r.time_zone.is_empty() { "UTC".to_string() } else { r.time_zone.clone() };
    let customer = Customer {
        customer_id: r.customer_id.clone(),
        name: r.name.clone(),
        currency: currency.unwrap_or_else(placeholder_currency),
        time_zone,
        tax_rate,
    };
    also_validate(v, customer.validate())?;
    Ok(Command::RegisterCustomer(customer))
}

pub fn update_customer(r: &pb::UpdateCustomerRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let tax_rate = r.tax_rate.as_deref().and_then(|s| dec(&mut v, "tax_rate", s, true));
    v.into_result()?;
    Ok(Command::UpdateCustomer {
        customer_id: r.customer_id.clone(),
        name: r.name.clone(),
        tax_rate,
    })
}

pub fn define_metric(r: &pb::DefineMetricRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let aggregation = parse_enum(&mut v, Aggregation::parse(&r.aggregation));
    v.into_result()?;
    let property = (!r.property.is_empty()).then(|| r.property.clone());
    Ok(Command::DefineMetric(Metric {
        code: r.code.clone(),
        name: r.name.clone(),
        aggregation: aggregation.expect("checked"),
        property,
        allow_negative: r.allow_negative,
    }))
}

pub fn publish_plan(r: &pb::PublishPlanRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let currency = parse_enum(&mut v, Currency::parse(&r.currency));
    let interval = parse_enum(&mut v, Interval::parse(&r.interval));
    let base_fee = dec_required(&mut v, "base_fee", &r.base_fee);
    let minimum_commitment = dec(&mut v, "minimum_commitment", &r.minimum_commitment, false);
    let charges: Vec<Option<Charge>> = r
        .charges
        .iter()
        .enumerate()
        .map(|(i, c)| charge(&mut v, &format!("charges[{i}]."), c))
        .collect();
    let thresholds: Vec<Option<Decimal>> = r
        .progressive_thresholds
        .iter()
        .enumerate()
        .map(|(i, t)| dec(&mut v, &format!("progressive_thresholds[{i}]"), t, true))
        .collect();
    let every = dec(&mut v, "progressive_every", &r.progressive_every, false);
    let all_parsed = charges.iter().all(Option::is_some) && thresholds.iter().all(Option::is_some);
    let progressive_billing = (!thresholds.is_empty() || every.is_some()).then(|| {
        domain::progressive::ProgressiveBilling {
            thresholds: thresholds.into_iter().flatten().collect(),
            every,
        }
    });
    let plan = Plan {
        code: r.code.clone(),
        version: 0,
        name: r.name.clone(),
        currency: currency.unwrap_or_else(placeholder_currency),
        interval: interval.unwrap_or(Interval::Monthly),
        base_fee,
        fee_timing: if r.base_fee_in_advance { FeeTiming::Advance } else { FeeTiming::Arrears },
        trial_days: r.trial_days,
        minimum_commitment,
        charges: charges.into_iter().flatten().collect(),
        progressive_billing,
    };
    // With a charge or threshold unparsed the indices no longer match: report the parse errors only.
    let checked = if all_parsed { plan.validate() } else { Ok(()) };
    also_validate(v, checked)?;
    Ok(Command::PublishPlan(plan))
}

/// Stands in for an unparsable currency so the rest of the request is still validated and every
/// bad field is reported at once; the request is refused either way.
fn placeholder_currency() -> Currency {
    Currency::parse("USD").expect("USD is a currency")
}

/// Adds the domain's own violations to the wire parser's, and fails if there are any.
fn also_validate(mut v: Violations, domain: Result<(), DomainError>) -> Parsed<()> {
    match domain {
        Err(DomainError::Invalid(list)) => v.0.extend(list),
        Err(other) => return Err(other),
        Ok(()) => {}
    }
    v.into_result()
}

fn charge(v: &mut Violations, prefix: &str, c: &pb::Charge) -> Option<Charge> {
    use pb::charge::Model;
    let f = |name: &str| format!("{prefix}{name}");
    let model = match c.model.as_ref() {
        None => {
            v.push(f("model"), "one charge model is required");
            return None;
        }
        Some(Model::Standard(m)) => ChargeModel::Standard {
            unit_price: dec_required(v, &f("standard.unit_price"), &m.unit_price),
        },
        Some(Model::Graduated(m)) => {
            ChargeModel::Graduated { tiers: tiers(v, &f("graduated."), m)? }
        }
        Some(Model::Volume(m)) => ChargeModel::Volume { tiers: tiers(v, &f("volume."), m)? },
        Some(Model::Package(m)) => ChargeModel::Package {
            package_size: dec_required(v, &f("package.package_size"), &m.package_size),
            package_price: dec_required(v, &f("package.package_price"), &m.package_price),
            free_units: dec_or_zero(v, &f("package.free_units"), &m.free_units),
        },
        Some(Model::Percentage(m)) => percentage(v, &f("percentage."), m),
        Some(Model::GraduatedPercentage(m)) => ChargeModel::GraduatedPercentage {
            tiers: tiers(v, &f("graduated_percentage."), m)?
                .into_iter()
                .map(|t| PercentTier { up_to: t.up_to, rate: t.unit_price, flat_fee: t.flat_fee })
                .collect(),
        },
    };
    Some(Charge { metric_code: c.metric_code.clone(), model, pay_in_advance: c.pay_in_advance })
}

/// The tiers, or `None` (one violation, the charge then left out of validation) when there are
/// more than `TIERS_MAX`: 10,000 tiers are refused without parsing them.
fn tiers(v: &mut Violations, prefix: &str, m: &pb::TieredModel) -> Option<Vec<Tier>> {
    let bound = domain::rating::TIERS_MAX;
    if m.tiers.len() > bound {
        v.push(format!("{prefix}tiers"), format!("at most {bound} tiers"));
        return None;
    }
    let parsed = m
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = |name: &str| format!("{prefix}tiers[{i}].{name}");
            Tier {
                up_to: dec(v, &f("up_to"), &t.up_to, false),
                unit_price: dec_required(v, &f("unit_price"), &t.unit_price),
                flat_fee: dec_or_zero(v, &f("flat_fee"), &t.flat_fee),
            }
        })
        .collect();
    Some(parsed)
}

fn percentage(v: &mut Violations, prefix: &str, m: &pb::PercentageModel) -> ChargeModel {
    let f = |name: &str| format!("{prefix}{name}");
    let opt = |v: &mut Violations, name: &str, s: &Option<String>| {
        s.as_deref().and_then(|s| dec(v, &f(name), s, true))
    };
    ChargeModel::Percentage {
        rate: dec_required(v, &f("rate"), &m.rate),
        fixed_amount: dec_or_zero(v, &f("fixed_amount"), &m.fixed_amount),
        free_events: m.free_events,
        free_amount: opt(v, "free_amount", &m.free_amount),
        min_per_event: opt(v, "min_per_event", &m.min_per_event),
        max_per_event: opt(v, "max_per_event", &m.max_per_event),
    }
}

pub fn start_subscription(r: &pb::StartSubscriptionRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let anchor = match r.billing_anchor.as_str() {
        "" => Some(Anchor::Anniversary),
        s => parse_enum(&mut v, Anchor::parse(s)),
    };
    let start_date = date(&mut v, "start_date", &r.start_date);
    let billed_until = date(&mut v, "billed_until", &r.billed_until);
    v.into_result()?;
    Ok(Command::StartSubscription {
        subscription_id: r.subscription_id.clone(),
        customer_id: r.customer_id.clone(),
        plan_code: r.plan_code.clone(),
        plan_version: (r.plan_version > 0).then_some(r.plan_version),
        anchor: anchor.expect("checked"),
        start_date,
        billed_until,
    })
}

/// An `ImportInvoice` request as a command: every field parsed, the invoice's own consistency
/// left to `ImportedInvoice::validate`.
pub fn import_invoice(r: &pb::ImportInvoiceRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let currency = parse_enum(&mut v, Currency::parse(&r.currency));
    let invoice_period = period(&mut v, "period", &r.period_start, &r.period_end);
    let issued_at = parse_enum(&mut v, timestamp("issued_at", r.issued_at.as_ref()));
    let lines: Vec<_> = r
        .lines
        .iter()
        .take(domain::imported_invoice::IMPORTED_LINES_MAX + 1)
        .enumerate()
        .map(|(i, l)| {
            let f = |name: &str| format!("lines[{i}].{name}");
            Some(InvoiceLine {
                kind: parse_enum(&mut v, LineKind::parse(&f("kind"), &l.kind))?,
                description: l.description.clone(),
                metric_code: (!l.metric_code.is_empty()).then(|| l.metric_code.clone()),
                charge_model: (!l.charge_model.is_empty()).then(|| l.charge_model.clone()),
                units: dec(&mut v, &f("units"), &l.units, false),
                service_period: period(&mut v, &f("service"), &l.service_start, &l.service_end)?,
                amount: dec(&mut v, &f("amount"), &l.amount, true)?,
                discount: Decimal::ZERO,
            })
        })
        .collect();
    let tax_rate = dec_or_zero(&mut v, "tax_rate", &r.tax_rate);
    let tax = dec_or_zero(&mut v, "tax", &r.tax);
    let total = dec_required(&mut v, "total", &r.total);
    v.into_result()?;
    Ok(Command::ImportInvoice(ImportedInvoice {
        invoice_id: r.invoice_id.clone(),
        customer_id: r.customer_id.clone(),
        subscription_id: (!r.subscription_id.is_empty()).then(|| r.subscription_id.clone()),
        currency: currency.expect("checked"),
        period: invoice_period.expect("checked"),
        issued_at: issued_at.expect("checked"),
        lines: lines.into_iter().map(|l| l.expect("checked")).collect(),
        tax_rate,
        tax,
        total,
    }))
}

/// A period from two local dates `<prefix>_start` and `<prefix>_end`, both required.
fn period(v: &mut Violations, prefix: &str, start: &str, end: &str) -> Option<Period> {
    let (start_field, end_field) = (format!("{prefix}_start"), format!("{prefix}_end"));
    for (field, s) in [(&start_field, start), (&end_field, end)] {
        if s.is_empty() {
            v.push(field.as_str(), "is required (a date YYYY-MM-DD)");
        }
    }
    let start = date(v, &start_field, start)?;
    let end = date(v, &end_field, end)?;
    Some(Period { start, end })
}

pub fn change_plan(r: &pb::ChangePlanRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let effective_date = date(&mut v, "effective_date", &r.effective_date);
    v.into_result()?;
    Ok(Command::ChangePlan {
        subscription_id: r.subscription_id.clone(),
        plan_code: r.plan_code.clone(),
        plan_version: (r.plan_version > 0).then_some(r.plan_version),
        effective_date,
    })
}

pub fn cancel_subscription(r: &pb::CancelSubscriptionRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let effective_date = date(&mut v, "effective_date", &r.effective_date);
    v.into_result()?;
    Ok(Command::CancelSubscription {
        subscription_id: r.subscription_id.clone(),
        immediately: r.immediately,
        effective_date,
    })
}

pub fn usage(r: pb::UsageEvent) -> Parsed<Usage> {
    Ok(Usage {
        occurred_at: timestamp("occurred_at", r.occurred_at.as_ref())?,
        subscription_id: r.subscription_id,
        transaction_id: r.transaction_id,
        metric_code: r.metric_code,
        properties: r.properties,
    })
}

pub fn record_payment(r: &pb::RecordPaymentRequest, now: Timestamp) -> Parsed<Command> {
    let occurred_at = match r.occurred_at.as_ref() {
        Some(t) => timestamp("occurred_at", Some(t))?,
        None => now,
    };
    let outcome = if r.succeeded {
        let mut v = Violations::default();
        let amount = dec(&mut v, "amount", &r.amount, true);
        v.into_result()?;
        PaymentOutcome::Succeeded { amount: amount.expect("checked") }
    } else {
        let mut v = Violations::default();
        domain::catalog::check_text(&mut v, "reason", &r.reason, true);
        if !v.0.is_empty() {
            return Err(DomainError::invalid(
                "reason",
                "a failed payment needs a reason: 1 to 256 characters, no control characters",
            ));
        }
        PaymentOutcome::Failed { reason: r.reason.clone() }
    };
    Ok(Command::RecordPayment { invoice_id: r.invoice_id.clone(), outcome, occurred_at })
}

/// A `DefineAddOn` request as a command.
pub fn define_add_on(r: &pb::DefineAddOnRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let currency = parse_enum(&mut v, Currency::parse(&r.currency));
    let amount = dec_required(&mut v, "amount", &r.amount);
    v.into_result()?;
    Ok(Command::DefineAddOn(AddOn {
        code: r.code.clone(),
        name: r.name.clone(),
        currency: currency.expect("checked"),
        amount,
        description: r.description.clone(),
    }))
}

/// A `DefineCoupon` request as a command (the bounds are the domain's).
pub fn define_coupon(r: &pb::DefineCouponRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let kind = match r.kind.as_str() {
        "fixed_amount" => {
            let currency = parse_enum(&mut v, Currency::parse(&r.currency));
            let amount = dec_required(&mut v, "amount", &r.amount);
            currency.map(|currency| CouponKind::FixedAmount { amount, currency })
        }
        "percentage" => {
            let percent = dec_required(&mut v, "percent", &r.percent);
            Some(CouponKind::Percentage { percent })
        }
        other => {
            v.push("kind", format!("{other:?} is not one of fixed_amount, percentage"));
            None
        }
    };
    let frequency = match r.frequency.as_str() {
        "once" => Some(Frequency::Once),
        "recurring" => Some(Frequency::Recurring { periods: r.periods }),
        "forever" => Some(Frequency::Forever),
        other => {
            v.push("frequency", format!("{other:?} is not one of once, recurring, forever"));
            None
        }
    };
    let expires_on = date(&mut v, "expires_on", &r.expires_on);
    v.into_result()?;
    Ok(Command::DefineCoupon(Coupon {
        code: r.code.clone(),
        kind: kind.expect("checked"),
        frequency: frequency.expect("checked"),
        plan_codes: r.plan_codes.clone(),
        metric_codes: r.metric_codes.clone(),
        applies_to_add_ons: r.applies_to_add_ons,
        expires_on,
    }))
}

/// An `OpenWallet` request as a command (the bounds are the domain's).
pub fn open_wallet(r: &pb::OpenWalletRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let rate_amount = dec(&mut v, "rate_amount", &r.rate_amount, false).unwrap_or(Decimal::ONE);
    let low_balance_threshold =
        dec(&mut v, "low_balance_threshold", &r.low_balance_threshold, false);
    v.into_result()?;
    Ok(Command::OpenWallet(OpenWallet {
        wallet_id: r.wallet_id.clone(),
        customer_id: r.customer_id.clone(),
        name: r.name.clone(),
        rate_amount,
        low_balance_threshold,
    }))
}

/// A `TopUpWallet` request as a command (the bounds are the domain's).
pub fn top_up_wallet(r: &pb::TopUpWalletRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let kind = match r.kind.as_str() {
        "granted" => Some(CreditKind::Granted),
        "paid" => Some(CreditKind::Paid),
        other => {
            v.push("kind", format!("{other:?} is not one of granted, paid"));
            None
        }
    };
    let credits = dec(&mut v, "credits", &r.credits, true);
    let expires_on = date(&mut v, "expires_on", &r.expires_on);
    let req = TopUpRequest {
        wallet_id: r.wallet_id.clone(),
        kind: kind.unwrap_or(CreditKind::Granted),
        credits: credits.unwrap_or(Decimal::ONE),
        expires_on,
        usable_at_once: r.usable_at_once,
    };
    // Every bad field at once: the domain's bounds too.
    if let (Err(DomainError::Invalid(more)), Some(_)) = (req.validate(), credits) {
        v.0.extend(more.into_iter().filter(|f| f.field == "credits"));
    }
    v.into_result()?;
    Ok(Command::TopUpWallet(req))
}

/// A `CreateUsageAlert` request as a command (the bounds are the domain's).
pub fn create_usage_alert(r: &pb::CreateUsageAlertRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let on = match r.on.as_str() {
        "units" => Some(AlertOn::Units),
        "amount" => Some(AlertOn::Amount),
        other => {
            v.push("on", format!("{other:?} is not one of units, amount"));
            None
        }
    };
    let threshold = dec(&mut v, "threshold", &r.threshold, true);
    let every = dec(&mut v, "every", &r.every, false);
    let alert = UsageAlert {
        alert_id: r.alert_id.clone(),
        subscription_id: r.subscription_id.clone(),
        metric_code: (!r.metric_code.is_empty()).then(|| r.metric_code.clone()),
        on: on.unwrap_or(AlertOn::Amount),
        threshold: threshold.unwrap_or(Decimal::ONE),
        every,
    };
    // Every bad field at once: the domain's bounds too.
    if let Err(DomainError::Invalid(more)) = alert.validate() {
        let parsed = |f: &str| {
            (f != "threshold" || threshold.is_some()) && (f != "metric_code" || on.is_some())
        };
        v.0.extend(more.into_iter().filter(|f| parsed(&f.field)));
    }
    v.into_result()?;
    Ok(Command::CreateUsageAlert(alert))
}

/// A wallet credit kind's wire name.
pub fn credit_kind(kind: CreditKind) -> &'static str {
    match kind {
        CreditKind::Granted => "granted",
        CreditKind::Paid => "paid",
    }
}

/// An `IssueOneOffInvoice` request as a command (the bounds are the domain's).
pub fn one_off_invoice(r: &pb::IssueOneOffInvoiceRequest) -> Parsed<Command> {
    if r.lines.len() > domain::add_on::ONE_OFF_LINES_MAX {
        let max = domain::add_on::ONE_OFF_LINES_MAX;
        return Err(DomainError::invalid("lines", format!("must hold 1 to {max} lines")));
    }
    let mut v = Violations::default();
    let mut lines = Vec::with_capacity(r.lines.len());
    for (i, l) in r.lines.iter().enumerate() {
        let field = |f: &str| format!("lines[{i}].{f}");
        let quantity = dec(&mut v, &field("quantity"), &l.quantity, false).unwrap_or(Decimal::ONE);
        let unit_amount = dec(&mut v, &field("unit_amount"), &l.unit_amount, false);
        let start = date(&mut v, &field("service_start"), &l.service_start);
        let end = date(&mut v, &field("service_end"), &l.service_end);
        let service_period =
            match (start, end, l.service_start.is_empty(), l.service_end.is_empty()) {
                (Some(start), Some(end), _, _) => Some(domain::calendar::Period { start, end }),
                (_, _, true, true) => None,
                _ => {
                    v.push(
                        field("service_start"),
                        "give both service_start and service_end, or neither",
                    );
                    None
                }
            };
        lines.push(OneOffLine {
            add_on_code: l.add_on_code.clone(),
            quantity,
            unit_amount,
            description: (!l.description.is_empty()).then(|| l.description.clone()),
            service_period,
        });
    }
    v.into_result()?;
    Ok(Command::IssueOneOffInvoice(OneOffRequest { customer_id: r.customer_id.clone(), lines }))
}

/// An `IssueCreditNote` request as a command (amounts parsed; the rules are the domain's).
pub fn credit_note(r: &pb::IssueCreditNoteRequest) -> Parsed<Command> {
    let mut v = Violations::default();
    let destination = CreditDestination::parse(&r.destination);
    if destination.is_none() {
        v.push("destination", format!("{:?} is not one of credit, refund, offset", r.destination));
    }
    if r.lines.len() > domain::credit_note::CREDIT_NOTE_LINES_MAX {
        let max = domain::credit_note::CREDIT_NOTE_LINES_MAX;
        v.push("lines", format!("must name 1 to {max} invoice lines"));
    }
    let lines: Vec<CreditLineRequest> = r
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| CreditLineRequest {
            line_index: l.line_index,
            amount: dec(&mut v, &format!("lines[{i}].amount"), &l.amount, false),
        })
        .collect();
    v.into_result()?;
    Ok(Command::IssueCreditNote(CreditNoteRequest {
        invoice_id: r.invoice_id.clone(),
        lines,
        reason: r.reason.clone(),
        destination: destination.expect("checked"),
    }))
}

/// A credit note on the wire.
pub fn credit_note_reply(n: &CreditNote) -> pb::CreditNote {
    let m = |amount: Decimal| money(n.currency, amount);
    pb::CreditNote {
        credit_note_id: n.credit_note_id.clone(),
        number: n.number,
        customer_id: n.customer_id.clone(),
        invoice_id: n.invoice_id.clone(),
        currency: n.currency.code().to_string(),
        issued_at: Some(to_timestamp(n.issued_at)),
        reason: n.reason.clone(),
        destination: n.destination.as_str().to_string(),
        lines: n
            .lines
            .iter()
            .map(|l| pb::CreditNoteLine {
                line_index: l.line_index,
                description: l.description.clone(),
                amount: m(l.amount),
            })
            .collect(),
        subtotal: m(n.subtotal),
        tax: m(n.tax),
        total: m(n.total),
    }
}

/// Money on the wire: exactly the currency's minor-unit digits ("5.00" USD, "5" JPY, "5.000"
/// KWD; [`Currency::format`], as the exports write it). An amount with more digits (none in
/// the ledger) is written whole, never rounded, and logged.
pub fn money(currency: Currency, amount: Decimal) -> String {
    currency.format(amount).unwrap_or_else(|exact| {
        tracing::error!(%currency, amount = %exact, "an amount has more digits than its minor unit");
        exact
    })
}

pub fn invoice(acc: &InvoiceAccount) -> pb::Invoice {
    let i = &acc.invoice;
    let m = |amount: Decimal| money(i.currency, amount);
    pb::Invoice {
        invoice_id: i.invoice_id.clone(),
        customer_id: i.customer_id.clone(),
        subscription_id: i.subscription_id.clone(),
        currency: i.currency.code().to_string(),
        period_start: i.period.start.to_string(),
        period_end: i.period.end.to_string(),
        issued_at: Some(to_timestamp(i.issued_at)),
        lines: i.lines.iter().map(|l| line(l, i.currency)).collect(),
        subtotal: m(i.subtotal),
        tax_rate: i.tax_rate.to_string(),
        tax: m(i.tax),
        total: m(i.total),
        amount_paid: m(acc.amount_paid),
        amount_due: m(acc.amount_due()),
        status: acc.status.as_str().to_string(),
        failed_attempts: acc.failed_attempts,
        reason: i.reason.as_str().to_string(),
        amount_credited: m(acc.credits.total()),
        credit_applied: m(i.credit_applied),
        coupons: i
            .coupons
            .iter()
            .map(|u| pb::CouponUse { coupon_code: u.coupon_code.clone(), amount: m(u.amount) })
            .collect(),
        wallet_applied: i
            .wallet_applied
            .iter()
            .map(|u| pb::WalletUse {
                wallet_id: u.wallet_id.clone(),
                top_up: u.top_up,
                kind: credit_kind(u.kind).to_string(),
                amount: m(u.amount),
            })
            .collect(),
        credit_note_ids: acc.credits.credit_note_ids.clone(),
        anomalies: i
            .anomalies
            .iter()
            .map(|f| pb::AnomalyFlag {
                kind: f.kind.as_str().to_string(),
                subject: f.subject.clone(),
                amount: m(f.amount),
                typical: m(f.typical),
                score: format!("{:.2}", f.score),
                baseline_size: f.baseline_size,
                reason: f.reason(),
            })
            .collect(),
    }
}

/// A current-usage draft: an invoice that is not issued (status `draft`, nothing paid or due).
pub fn draft(invoice: domain::invoice::Invoice) -> pb::Invoice {
    let mut out = self::invoice(&InvoiceAccount::issued(invoice));
    out.status = "draft".to_string();
    out.amount_due = out.total.clone();
    out.issued_at = None;
    out
}

fn line(l: &domain::invoice::InvoiceLine, currency: Currency) -> pb::InvoiceLine {
    pb::InvoiceLine {
        kind: l.kind.as_str().to_string(),
        description: l.description.clone(),
        metric_code: l.metric_code.clone().unwrap_or_default(),
        charge_model: l.charge_model.clone().unwrap_or_default(),
        units: l.units.map(|u| u.normalize().to_string()).unwrap_or_default(),
        service_start: l.service_period.start.to_string(),
        service_end: l.service_period.end.to_string(),
        amount: money(currency, l.amount),
        discount: money(currency, l.discount),
    }
}
