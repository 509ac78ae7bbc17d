//! The coupons each customer holds, kept in the `invoices` read model: `cpd/<code>` → the
//! coupon as defined, `cph/<customer>` → the customer's [`HeldCoupon`]s in the order applied.
//! Folded from `CouponDefined`, `CouponApplied`, `CouponRemoved` and what each issued invoice's
//! coupons gave, with the domain's own rules (`HeldCoupon::new`, `record_use`), so the list
//! equals the write model's. It never decides a discount.

use domain::coupon::{Coupon, HeldCoupon};
use domain::events::Event;
use domain::invoice::Invoice;
use event_store::Position;

use crate::invoices::{inconsistent, InvoiceReader, NAME};
use crate::store::{corrupt, Writes};
use crate::Result;

fn coupon_key(code: &str) -> Vec<u8> {
    format!("cpd/{code}").into_bytes()
}

fn held_key(customer_id: &str) -> Vec<u8> {
    format!("cph/{customer_id}").into_bytes()
}

fn decode_held(bytes: Option<sled::IVec>) -> Result<Vec<HeldCoupon>> {
    match bytes {
        Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt(NAME, format!("coupons: {e}"))),
        None => Ok(Vec::new()),
    }
}

fn load_held(w: &Writes<'_>, customer_id: &str) -> Result<Vec<HeldCoupon>> {
    decode_held(w.get(&held_key(customer_id))?)
}

fn store_held(w: &mut Writes<'_>, customer_id: &str, held: &[HeldCoupon]) {
    w.put(held_key(customer_id), serde_json::to_vec(held).expect("coupons serialize"));
}

/// Applies a coupon event; other events are ignored.
pub(crate) fn apply(w: &mut Writes<'_>, event: &Event, position: Position) -> Result<()> {
    match event {
        Event::CouponDefined(c) => {
            w.put(coupon_key(&c.code), serde_json::to_vec(c).expect("coupons serialize"));
        }
        Event::CouponApplied { customer_id, coupon_code, .. } => {
            let bytes = w.get(&coupon_key(coupon_code))?.ok_or_else(|| {
                inconsistent(position, format!("coupon {coupon_code} applied before defined"))
            })?;
            let coupon: Coupon = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(NAME, format!("coupon {coupon_code}: {e}")))?;
            let mut held = load_held(w, customer_id)?;
            held.retain(|h| h.coupon.code != *coupon_code);
            held.push(HeldCoupon::new(coupon));
            store_held(w, customer_id, &held);
        }
        Event::CouponRemoved { customer_id, coupon_code, .. } => {
            let mut held = load_held(w, customer_id)?;
            held.retain(|h| h.coupon.code != *coupon_code);
            store_held(w, customer_id, &held);
        }
        _ => {}
    }
    Ok(())
}

/// What an issued invoice's coupons gave comes off what the customer holds.
pub(crate) fn used(w: &mut Writes<'_>, invoice: &Invoice, position: Position) -> Result<()> {
    if invoice.coupons.is_empty() {
        return Ok(());
    }
    let mut held = load_held(w, &invoice.customer_id)?;
    for u in &invoice.coupons {
        let Some(h) = held.iter_mut().find(|h| h.coupon.code == u.coupon_code) else {
            let detail =
                format!("invoice {} uses unheld coupon {}", invoice.invoice_id, u.coupon_code);
            return Err(inconsistent(position, detail));
        };
        let fixed_once = matches!(
            (&h.coupon.kind, h.coupon.frequency),
            (domain::coupon::CouponKind::FixedAmount { .. }, domain::coupon::Frequency::Once)
        );
        if fixed_once && h.amount_left < u.amount {
            let detail = format!(
                "invoice {} uses more of coupon {} than is left",
                invoice.invoice_id, u.coupon_code
            );
            return Err(inconsistent(position, detail));
        }
        h.record_use(u.amount, invoice.reason, &invoice.subscription_id);
    }
    store_held(w, &invoice.customer_id, &held);
    Ok(())
}

/// The coupons `customer_id` holds (used-up ones included, in the order applied).
pub fn held(reader: &InvoiceReader, customer_id: &str) -> Result<Vec<HeldCoupon>> {
    reader.model().read(|snap| decode_held(snap.get(&held_key(customer_id))?))
}
