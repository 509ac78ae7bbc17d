//! Coupons in the ledger (SPEC §8.2): the catalogue, applying a coupon to a customer and
//! removing it, and the discount step of building an invoice (coupons before tax). The rules of
//! the discount itself are `crate::coupon`'s; this file never computes a discount of its own.

use super::{CustomerState, Ledger};
use crate::calendar::local_date;
use crate::commands::Context;
use crate::coupon::{
    applies_to_reason, discount, uses_up_coupons, Coupon, CouponKind, CouponUse, HeldCoupon,
    LineToDiscount,
};
use crate::error::DomainError;
use crate::events::Event;
use crate::invoice::{with_discounts, Invoice, LineKind};

/// The coupon is already held by the customer (and not used up).
pub const COUPON_ALREADY_APPLIED: &str = "COUPON_ALREADY_APPLIED";
/// The coupon's offer ended.
pub const COUPON_EXPIRED: &str = "COUPON_EXPIRED";
/// The customer does not hold the coupon.
pub const COUPON_NOT_APPLIED: &str = "COUPON_NOT_APPLIED";

impl Ledger {
    pub(super) fn decide_define_coupon(&self, c: &Coupon) -> Result<Vec<Event>, DomainError> {
        c.validate()?;
        if self.coupons.contains_key(&c.code) {
            return Err(DomainError::Conflict(format!(
                "coupon {} is already defined otherwise (coupons are immutable; an identical \
                 request is a replay)",
                c.code
            )));
        }
        Ok(vec![Event::CouponDefined(c.clone())])
    }

    pub(super) fn decide_apply_coupon(
        &self,
        customer_id: &str,
        code: &str,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let customer = self.customer(customer_id)?;
        let coupon =
            self.coupons.get(code).ok_or_else(|| DomainError::not_found("coupon", code))?;
        let subject = format!("customer-{customer_id}");
        let today = local_date(ctx.now, &customer.time_zone);
        if coupon.expires_on.is_some_and(|e| today >= e) {
            let until = coupon.expires_on.expect("checked");
            let why = format!("coupon {code} could be applied until {until} (exclusive)");
            return Err(DomainError::precondition(COUPON_EXPIRED, subject, why));
        }
        if let CouponKind::FixedAmount { currency, .. } = &coupon.kind {
            if *currency != customer.customer.currency {
                let why = format!(
                    "coupon {code} is in {currency}, customer {customer_id} is billed in {}",
                    customer.customer.currency
                );
                return Err(DomainError::precondition("CURRENCY_MISMATCH", subject, why));
            }
        }
        if held(customer, code).is_some_and(|h| !h.is_used_up()) {
            let why = format!("customer {customer_id} already holds coupon {code}");
            return Err(DomainError::precondition(COUPON_ALREADY_APPLIED, subject, why));
        }
        Ok(vec![Event::CouponApplied {
            customer_id: customer_id.to_string(),
            coupon_code: code.to_string(),
            occurred_at: ctx.now,
        }])
    }

    pub(super) fn decide_remove_coupon(
        &self,
        customer_id: &str,
        code: &str,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let customer = self.customer(customer_id)?;
        if held(customer, code).is_none_or(|h| h.is_used_up()) {
            let why = format!("customer {customer_id} holds no coupon {code} that is not used up");
            let subject = format!("customer-{customer_id}");
            return Err(DomainError::precondition(COUPON_NOT_APPLIED, subject, why));
        }
        Ok(vec![Event::CouponRemoved {
            customer_id: customer_id.to_string(),
            coupon_code: code.to_string(),
            occurred_at: ctx.now,
        }])
    }

    /// `invoice` discounted by the coupons the customer holds (in the order applied), with
    /// what each gave recorded on it. `plan_code`: the subscription's plan (none: one-off).
    pub(super) fn discounted(
        customer: &CustomerState,
        plan_code: Option<&str>,
        invoice: Invoice,
    ) -> Result<Invoice, DomainError> {
        let coupons: Vec<HeldCoupon> = customer
            .coupons
            .iter()
            .filter(|h| applies_to_reason(h, invoice.reason))
            .cloned()
            .collect();
        if coupons.is_empty() {
            return Ok(invoice);
        }
        let lines: Vec<LineToDiscount> = invoice
            .lines
            .iter()
            .map(|l| LineToDiscount {
                amount: l.amount,
                plan_code: plan_code.map(str::to_string),
                metric_code: l
                    .metric_code
                    .clone()
                    .filter(|_| matches!(l.kind, LineKind::Usage | LineKind::UsageInAdvance)),
                add_on: l.kind == LineKind::AddOn,
            })
            .collect();
        let d = discount(&coupons, &lines, invoice.currency);
        let uses: Vec<CouponUse> = coupons
            .iter()
            .zip(&d.given)
            .map(|(h, amount)| CouponUse { coupon_code: h.coupon.code.clone(), amount: *amount })
            .collect();
        let counts_pending = uses_up_coupons(invoice.reason);
        let mut invoice = with_discounts(invoice, &d.per_line, uses.clone())?;
        // A coupon whose period a progressive invoice left pending is recorded even when it
        // gives nothing here, so this invoice counts that period (decision 0037).
        let pending = |h: &HeldCoupon| h.pending_periods.contains(&invoice.subscription_id);
        if counts_pending && coupons.iter().any(pending) {
            let recorded = coupons.iter().zip(uses);
            let recorded = recorded.filter(|(h, u)| pending(h) || !u.amount.is_zero());
            invoice.coupons = recorded.map(|(_, u)| u).collect();
        }
        Ok(invoice)
    }

    pub(super) fn evolve_coupon_applied(&mut self, customer_id: &str, code: &str) {
        let coupon = self.coupons[code].clone();
        let customer = self.customers.get_mut(customer_id).expect("customer exists");
        customer.coupons.retain(|h| h.coupon.code != code);
        customer.coupons.push(crate::coupon::HeldCoupon::new(coupon));
    }

    pub(super) fn evolve_coupon_removed(&mut self, customer_id: &str, code: &str) {
        let customer = self.customers.get_mut(customer_id).expect("customer exists");
        customer.coupons.retain(|h| h.coupon.code != code);
    }

    /// What an issued invoice's coupons gave comes off what the customer holds.
    pub(super) fn evolve_coupon_uses(&mut self, inv: &crate::invoice::Invoice) {
        let customer = self.customers.get_mut(&inv.customer_id).expect("customer exists");
        for u in &inv.coupons {
            let held = customer.coupons.iter_mut().find(|h| h.coupon.code == u.coupon_code);
            held.expect("an invoice's coupon is held").record_use(
                u.amount,
                inv.reason,
                &inv.subscription_id,
            );
        }
    }
}

fn held<'a>(customer: &'a CustomerState, code: &str) -> Option<&'a crate::coupon::HeldCoupon> {
    customer.coupons.iter().find(|h| h.coupon.code == code)
}
