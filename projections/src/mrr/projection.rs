//! The `mrr` projection: applies catalog, subscription, coupon and invoice events to the keys
//! of the model (plans, customers, coupons, subscriptions, customer accounts with their
//! movements, day totals, usage revenue). It only dates and stores what `domain::mrr` and
//! `domain::coupon` decide; it never serves a query.

use domain::calendar::{local_date, parse_time_zone};
use domain::catalog::Customer;
use domain::mrr::coupon_affects_mrr;
use jiff::Timestamp;

use super::*;

/// The `mrr` projection.
#[derive(Clone, Copy, Debug, Default)]
pub struct MrrProjection;

impl Projection for MrrProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    /// 2: coupons (`cust/`, `cpn/`, the accounts' coupon spans, plan intervals).
    fn version(&self) -> u32 {
        2
    }

    fn wants(&self, event_type: &str) -> bool {
        [
            "CustomerRegistered",
            "CouponDefined",
            "CouponApplied",
            "CouponRemoved",
            "PlanPublished",
            "SubscriptionStarted",
            "TrialEnded",
            "PlanChanged",
            "SubscriptionCanceled",
            "InvoiceIssued",
            "InvoiceVoided",
        ]
        .contains(&event_type)
    }

    /// Writes the accounts this batch changed (kept decoded in [`Writes::memo`] until now).
    fn finish_batch(&mut self, w: &mut Writes<'_>) -> Result<()> {
        for (key, acct) in std::mem::take(w.memo::<Account>()) {
            w.put(key, encode(&acct));
        }
        Ok(())
    }

    fn apply(&mut self, w: &mut Writes<'_>, event: &RecordedEvent, decoded: &Event) -> Result<()> {
        let pos = event.position;
        match decoded {
            Event::CustomerRegistered(c) => register(w, c),
            Event::CouponDefined(c) => {
                let rec = CouponRecord { v: RECORD_VERSION, coupon: c.clone() };
                w.put(coupon_key(&c.code), encode(&rec));
                Ok(())
            }
            Event::CouponApplied { customer_id, coupon_code, occurred_at } => {
                apply_coupon(w, customer_id, coupon_code, *occurred_at, pos)
            }
            Event::CouponRemoved { customer_id, coupon_code, occurred_at } => {
                remove_coupon(w, customer_id, coupon_code, *occurred_at, pos)
            }
            Event::PlanPublished(plan) => publish(w, plan),
            Event::SubscriptionStarted {
                subscription_id,
                customer_id,
                plan,
                start_date,
                trial_end,
                ..
            } => {
                let rec = load_plan(w, plan, pos)?;
                if w.get(sub_key(subscription_id).as_bytes())?.is_some() {
                    let detail = format!("subscription {subscription_id} started twice");
                    return Err(inconsistent(pos, detail));
                }
                let pointer = SubPointer {
                    v: RECORD_VERSION,
                    customer_id: customer_id.clone(),
                    currency: rec.currency,
                };
                w.put(sub_key(subscription_id), encode(&pointer));
                let state = SubState {
                    start: *start_date,
                    plans: vec![PlanSegment {
                        from: *start_date,
                        plan: plan.clone(),
                        interval: rec.interval,
                        mrr: rec.mrr,
                    }],
                    trial: trial_end.is_some(),
                    trial_ended: None,
                    ends_on: None,
                };
                change_account(w, rec.currency, customer_id, pos, |acct| {
                    acct.subs.insert(subscription_id.clone(), state);
                    Ok(())
                })
            }
            Event::TrialEnded { subscription_id, date } => {
                change_sub(w, subscription_id, pos, |_, s| {
                    s.trial_ended = Some(*date);
                    Ok(())
                })
            }
            Event::PlanChanged { subscription_id, plan, effective_date, .. } => {
                let rec = load_plan(w, plan, pos)?;
                change_sub(w, subscription_id, pos, |cur, s| {
                    if rec.currency != cur {
                        return Err(format!("plan {plan:?} is not in {cur}"));
                    }
                    s.plans.retain(|seg| seg.from < *effective_date);
                    let seg = PlanSegment {
                        from: *effective_date,
                        plan: plan.clone(),
                        interval: rec.interval,
                        mrr: rec.mrr,
                    };
                    s.plans.push(seg);
                    Ok(())
                })
            }
            Event::SubscriptionCanceled { subscription_id, effective_date, .. } => {
                change_sub(w, subscription_id, pos, |_, s| {
                    s.ends_on = Some(*effective_date);
                    Ok(())
                })
            }
            Event::InvoiceIssued(invoice) => {
                add_usage(w, invoice, pos)?;
                use_coupons(w, invoice, pos)
            }
            Event::InvoiceVoided { invoice_id, .. } => void_usage(w, invoice_id, pos),
            _ => Ok(()),
        }
    }
}

fn publish(w: &mut Writes<'_>, plan: &Plan) -> Result<()> {
    let rec = PlanRecord {
        v: RECORD_VERSION,
        currency: plan.currency,
        interval: plan.interval,
        mrr: subscription_mrr(plan, false),
    };
    w.put(plan_key(&plan.plan_ref()), encode(&rec));
    Ok(())
}

fn load_plan(w: &Writes<'_>, plan: &PlanRef, pos: Position) -> Result<PlanRecord> {
    match w.get(plan_key(plan).as_bytes())? {
        Some(bytes) => decode("plan record", &bytes),
        None => Err(inconsistent(pos, format!("unknown plan {} v{}", plan.code, plan.version))),
    }
}

fn register(w: &mut Writes<'_>, c: &Customer) -> Result<()> {
    let rec =
        CustomerRecord { v: RECORD_VERSION, currency: c.currency, time_zone: c.time_zone.clone() };
    w.put(customer_key(&c.customer_id), encode(&rec));
    Ok(())
}

/// The customer's currency and the customer-local date of `at`.
fn customer_date(
    w: &Writes<'_>,
    customer: &str,
    at: Timestamp,
    pos: Position,
) -> Result<(Currency, Date)> {
    let bytes = w.get(customer_key(customer).as_bytes())?;
    let bytes = bytes.ok_or_else(|| inconsistent(pos, format!("unknown customer {customer}")))?;
    let rec: CustomerRecord = decode("customer", &bytes)?;
    let tz = parse_time_zone(&rec.time_zone)
        .map_err(|e| corrupt(NAME, format!("customer {customer}: {e}")))?;
    Ok((rec.currency, local_date(at, &tz)))
}

fn load_coupon(w: &Writes<'_>, code: &str, pos: Position) -> Result<Coupon> {
    match w.get(coupon_key(code).as_bytes())? {
        Some(bytes) => Ok(decode::<CouponRecord>("coupon", &bytes)?.coupon),
        None => Err(inconsistent(pos, format!("coupon {code} used before it was defined"))),
    }
}

/// For a coupon event of `customer` at `at`: the coupon, the customer's currency and the local
/// date, or `None` for a coupon that is never MRR.
fn mrr_coupon_event(
    w: &Writes<'_>,
    customer: &str,
    code: &str,
    at: Timestamp,
    pos: Position,
) -> Result<Option<(Coupon, Currency, Date)>> {
    let coupon = load_coupon(w, code, pos)?;
    if !coupon_affects_mrr(&coupon) {
        return Ok(None);
    }
    let (cur, date) = customer_date(w, customer, at, pos)?;
    Ok(Some((coupon, cur, date)))
}

/// A `recurring` or `forever` coupon discounts the customer's subscriptions from the local date
/// it was applied. Applied again (after it was used up), its earlier span ends that day: one
/// coupon never discounts twice at once. `once` coupons are never MRR: not recorded.
fn apply_coupon(
    w: &mut Writes<'_>,
    customer: &str,
    code: &str,
    at: Timestamp,
    pos: Position,
) -> Result<()> {
    let Some((coupon, cur, date)) = mrr_coupon_event(w, customer, code, at, pos)? else {
        return Ok(());
    };
    change_account(w, cur, customer, pos, |acct| {
        if let Some(earlier) = acct.coupons.iter_mut().rev().find(|c| c.held.coupon.code == code) {
            earlier.end(date);
        }
        acct.coupons.push(CouponSpan { held: HeldCoupon::new(coupon), from: date, until: None });
        Ok(())
    })
}

/// A removed coupon stops discounting on the local date it was removed.
fn remove_coupon(
    w: &mut Writes<'_>,
    customer: &str,
    code: &str,
    at: Timestamp,
    pos: Position,
) -> Result<()> {
    let Some((_, cur, date)) = mrr_coupon_event(w, customer, code, at, pos)? else {
        return Ok(());
    };
    change_account(w, cur, customer, pos, |acct| {
        let span = acct.coupons.iter_mut().rev().find(|c| c.held.coupon.code == code);
        let missing = || inconsistent(pos, format!("customer {customer} holds no coupon {code}"));
        span.ok_or_else(missing)?.end(date);
        Ok(())
    })
}

/// What an issued invoice's coupons gave comes off what the customer holds (the domain's
/// `record_use`). A recurring coupon whose last period this invoice used stops discounting at
/// the end of what the invoice discounted: the latest service-period end of its discounted
/// lines (the invoice's period if none shows a discount). A progressive invoice uses none up
/// (`HeldCoupon::record_use`, decision 0037).
fn use_coupons(w: &mut Writes<'_>, invoice: &Invoice, pos: Position) -> Result<()> {
    let mut uses = Vec::new();
    for u in &invoice.coupons {
        if coupon_affects_mrr(&load_coupon(w, &u.coupon_code, pos)?) {
            uses.push(u);
        }
    }
    if uses.is_empty() {
        return Ok(());
    }
    let discounted = invoice.lines.iter().filter(|l| !l.discount.is_zero());
    let end = discounted.map(|l| l.service_period.end).max().unwrap_or(invoice.period.end);
    let customer = &invoice.customer_id;
    change_account(w, invoice.currency, customer, pos, |acct| {
        for u in uses {
            let code = &u.coupon_code;
            let span = acct.coupons.iter_mut().rev().find(|c| c.held.coupon.code == *code);
            let Some(span) = span.filter(|s| s.until.is_none()) else {
                let detail = format!("invoice {} uses unheld coupon {code}", invoice.invoice_id);
                return Err(inconsistent(pos, detail));
            };
            span.held.record_use(u.amount, invoice.reason, &invoice.subscription_id);
            if span.held.is_used_up() {
                span.end(end);
            }
        }
        Ok(())
    })
}

/// Changes one subscription's state and restates its customer's movements.
fn change_sub(
    w: &mut Writes<'_>,
    id: &str,
    pos: Position,
    change: impl FnOnce(Currency, &mut SubState) -> Result<(), String>,
) -> Result<()> {
    let bytes = w.get(sub_key(id).as_bytes())?;
    let bytes = bytes.ok_or_else(|| inconsistent(pos, format!("unknown subscription {id}")))?;
    let pointer: SubPointer = decode("subscription pointer", &bytes)?;
    let cur = pointer.currency;
    change_account(w, cur, &pointer.customer_id, pos, |acct| {
        let missing = || corrupt(NAME, format!("subscription {id} missing from its account"));
        let state = acct.subs.get_mut(id).ok_or_else(missing)?;
        change(cur, state).map_err(|detail| inconsistent(pos, detail))
    })
}

/// Loads an account, changes it, re-derives its movements and writes what differs: the
/// movement keys and the day totals of the movements that appeared or disappeared. An MRR
/// past `Decimal`'s range fails the event (`pos`) and writes nothing.
fn change_account(
    w: &mut Writes<'_>,
    cur: Currency,
    customer: &str,
    pos: Position,
    change: impl FnOnce(&mut Account) -> Result<()>,
) -> Result<()> {
    let key = account_key(cur, customer).into_bytes();
    let mut acct = match w.memo::<Account>().remove(&key) {
        Some(acct) => acct,
        None => match w.get(&key)? {
            Some(bytes) => decode("account", &bytes)?,
            None => Account { v: RECORD_VERSION, ..Account::default() },
        },
    };
    change(&mut acct)?;
    let movements = acct.derive_movements(cur).map_err(|date| {
        overflow(pos, format_args!("MRR of customer {customer} ({cur}) on {date}"))
    })?;
    for old in acct.movements.iter().filter(|m| !movements.contains(m)) {
        w.delete(movement_key(cur, old.date, customer));
        add_to_day(w, cur, old, -1, pos)?;
    }
    for new in movements.iter().filter(|m| !acct.movements.contains(m)) {
        let entry = MovementEntry { v: RECORD_VERSION, record: new.clone() };
        w.put(movement_key(cur, new.date, customer), encode(&entry));
        add_to_day(w, cur, new, 1, pos)?;
    }
    acct.movements = movements;
    // Encoded once per batch, in `finish_batch`: a customer with many subscriptions has a
    // large account, and a batch often changes it many times (its subscriptions starting).
    w.memo::<Account>().insert(key, acct);
    Ok(())
}

/// Adds (`sign` 1) or removes (`sign` −1) one movement from its day's totals.
fn add_to_day(
    w: &mut Writes<'_>,
    cur: Currency,
    m: &MovementRecord,
    sign: i64,
    pos: Position,
) -> Result<()> {
    let key = day_key(cur, m.date);
    let mut day = match w.get(key.as_bytes())? {
        Some(bytes) => decode("day totals", &bytes)?,
        None => DayTotals { v: RECORD_VERSION, ..DayTotals::default() },
    };
    let totals = &mut day.kinds[kind_index(m.movement)];
    totals.count = totals
        .count
        .checked_add_signed(sign)
        .ok_or_else(|| corrupt(NAME, format!("day totals of {} went negative", m.date)))?;
    let what = || format!("{} MRR movements ({cur}) on {}", m.movement.as_str(), m.date);
    let delta = m.after.checked_sub(m.before).map(|d| d * Decimal::from(sign));
    totals.amount =
        delta.and_then(|d| totals.amount.checked_add(d)).ok_or_else(|| overflow(pos, what()))?;
    if day.kinds.iter().all(|k| k.count == 0) {
        w.delete(key);
    } else {
        w.put(key, encode(&day));
    }
    Ok(())
}

/// The last day of a usage line's service period.
fn usage_date(line_period: &domain::calendar::Period) -> Date {
    line_period.end.yesterday().unwrap_or(line_period.end).max(line_period.start)
}

fn add_usage(w: &mut Writes<'_>, invoice: &Invoice, pos: Position) -> Result<()> {
    let mut days: BTreeMap<Date, (u64, Decimal)> = BTreeMap::new();
    for line in &invoice.lines {
        if matches!(line.kind, LineKind::Usage | LineKind::UsageInAdvance) {
            let date = usage_date(&line.service_period);
            let day = days.entry(date).or_default();
            day.0 += 1;
            day.1 = day.1.checked_add(line.amount).ok_or_else(|| {
                overflow(pos, format_args!("usage of invoice {} on {date}", invoice.invoice_id))
            })?;
        }
    }
    if days.is_empty() {
        return Ok(());
    }
    let key = usage_invoice_key(&invoice.invoice_id);
    if w.get(key.as_bytes())?.is_some() {
        return Err(inconsistent(pos, format!("invoice {} issued twice", invoice.invoice_id)));
    }
    let days: Vec<(Date, u64, Decimal)> = days.into_iter().map(|(d, (n, a))| (d, n, a)).collect();
    let cur = invoice.currency;
    for (date, lines, amount) in &days {
        change_usage_day(w, cur, *date, *lines as i64, *amount, pos)?;
    }
    w.put(key, encode(&UsageInvoice { v: RECORD_VERSION, currency: cur, days }));
    Ok(())
}

fn void_usage(w: &mut Writes<'_>, invoice_id: &str, pos: Position) -> Result<()> {
    let key = usage_invoice_key(invoice_id);
    let Some(bytes) = w.get(key.as_bytes())? else { return Ok(()) };
    let rec: UsageInvoice = decode("usage invoice", &bytes)?;
    for (date, lines, amount) in &rec.days {
        change_usage_day(w, rec.currency, *date, -(*lines as i64), -*amount, pos)?;
    }
    w.delete(key);
    Ok(())
}

fn change_usage_day(
    w: &mut Writes<'_>,
    cur: Currency,
    date: Date,
    lines: i64,
    amount: Decimal,
    pos: Position,
) -> Result<()> {
    let key = usage_key(cur, date);
    let mut day = match w.get(key.as_bytes())? {
        Some(bytes) => decode("usage day", &bytes)?,
        None => UsageDay { v: RECORD_VERSION, ..UsageDay::default() },
    };
    day.lines = day
        .lines
        .checked_add_signed(lines)
        .ok_or_else(|| corrupt(NAME, format!("usage lines of {date} went negative")))?;
    day.amount = day
        .amount
        .checked_add(amount)
        .ok_or_else(|| overflow(pos, format_args!("usage revenue ({cur}) on {date}")))?;
    if day.lines == 0 {
        w.delete(key);
    } else {
        w.put(key, encode(&day));
    }
    Ok(())
}
