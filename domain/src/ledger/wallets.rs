//! Prepaid wallets in the write model (SPEC §8.1, docs/decisions/0033-wallets.md): opening a
//! wallet, topping it up (a paid top-up issues its purchase invoice), the credits an invoice
//! takes at issue, expiry in billing runs, and the low-balance event that follows any of them.
//! The rules themselves are `crate::wallet`'s; this file only decides and applies events.

use jiff::Timestamp;
use rust_decimal::Decimal;

use super::add_ons::{issue_day, one_off_header};
use super::billing::with_credit_applied;
use super::{CustomerState, Ledger};
use crate::calendar::local_date;
use crate::commands::Context;
use crate::error::DomainError;
use crate::events::Event;
use crate::invoice::{build_invoice, Invoice, IssueReason, LineDraft, LineKind};
use crate::wallet::{
    CreditKind, OpenWallet, TopUp, TopUpRequest, WalletAccount, WalletOpened, WalletUse,
    TOP_UPS_MAX, WALLETS_PER_CUSTOMER_MAX,
};

impl Ledger {
    fn wallet(&self, id: &str) -> Result<&WalletAccount, DomainError> {
        self.wallets.get(id).ok_or_else(|| DomainError::not_found("wallet", id))
    }

    pub(super) fn decide_open_wallet(
        &self,
        w: &OpenWallet,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        let customer = self.customer(&w.customer_id)?;
        let currency = customer.customer.currency;
        w.validate(currency)?;
        if self.wallets.contains_key(&w.wallet_id) {
            return Err(DomainError::Conflict(format!(
                "wallet {} is already open (an identical request is a replay)",
                w.wallet_id
            )));
        }
        if customer.wallets.len() >= WALLETS_PER_CUSTOMER_MAX {
            return Err(DomainError::precondition(
                "WALLETS_MAX",
                format!("customer-{}", w.customer_id),
                format!("a customer may open at most {WALLETS_PER_CUSTOMER_MAX} wallets"),
            ));
        }
        Ok(vec![Event::WalletOpened(WalletOpened {
            wallet_id: w.wallet_id.clone(),
            customer_id: w.customer_id.clone(),
            name: w.name.clone(),
            currency,
            rate_amount: w.rate_amount,
            low_balance_threshold: w.low_balance_threshold,
            occurred_at: ctx.now,
        })])
    }

    /// A granted top-up is usable at once; a paid one issues its purchase invoice (one
    /// untaxed `prepaid_credits` line, numbered as one-off invoices are) and is usable once
    /// that is paid, or at once if asked.
    pub(super) fn decide_top_up(
        &self,
        req: &TopUpRequest,
        ctx: &Context,
    ) -> Result<Vec<Event>, DomainError> {
        req.validate()?;
        let account = self.wallet(&req.wallet_id)?;
        let customer = &self.customers[&account.customer_id];
        let subject = format!("wallet-{}", req.wallet_id);
        let today = local_date(ctx.now, &customer.time_zone);
        if let Some(e) = req.expires_on {
            if e <= today {
                return Err(DomainError::invalid(
                    "expires_on",
                    format!("must be after today ({today} in the customer's time zone)"),
                ));
            }
        }
        let wallet = &account.wallet;
        let amount = wallet.currency.round(req.credits * wallet.rate_amount);
        if amount <= Decimal::ZERO || amount > crate::money::AMOUNT_MAX {
            return Err(DomainError::invalid(
                "credits",
                format!(
                    "credits × rate {} is {amount} {}: must be positive and at most {}",
                    wallet.rate_amount,
                    wallet.currency,
                    crate::money::AMOUNT_MAX
                ),
            ));
        }
        if account.top_ups >= TOP_UPS_MAX {
            return Err(DomainError::precondition(
                "TOP_UPS_MAX",
                subject,
                format!("a wallet takes at most {TOP_UPS_MAX} top-ups: open another"),
            ));
        }
        let mut events = Vec::with_capacity(2);
        let mut invoice_id = None;
        if req.kind == CreditKind::Paid {
            let invoice = self.top_up_invoice(customer, account, req.credits, amount, ctx.now)?;
            invoice_id = Some(invoice.invoice_id.clone());
            events.push(Event::InvoiceIssued(invoice));
        }
        events.push(Event::WalletToppedUp(TopUp {
            wallet_id: req.wallet_id.clone(),
            customer_id: account.customer_id.clone(),
            top_up: account.top_ups + 1,
            kind: req.kind,
            credits: req.credits,
            amount,
            expires_on: req.expires_on,
            usable: req.kind == CreditKind::Granted || req.usable_at_once,
            invoice_id,
            occurred_at: ctx.now,
        }));
        Ok(events)
    }

    fn top_up_invoice(
        &self,
        customer: &CustomerState,
        account: &WalletAccount,
        credits: Decimal,
        amount: Decimal,
        now: Timestamp,
    ) -> Result<Invoice, DomainError> {
        let day = issue_day(customer, now)?;
        let name = if account.name.is_empty() { &account.wallet_id } else { &account.name };
        // Credits are taxed when they pay an invoice, not when they are bought.
        let header = one_off_header(customer, day, now, IssueReason::WalletTopUp, Decimal::ZERO)?;
        let line = LineDraft {
            kind: LineKind::PrepaidCredits,
            description: format!("Prepaid credits for wallet {name}"),
            metric_code: None,
            charge_model: None,
            units: Some(credits),
            service_period: day,
            unrounded: amount,
        };
        build_invoice(header, vec![line])
    }

    /// `invoice` with, after tax (SPEC §8 order), the customer's credit balance and then its
    /// wallets' credits applied: wallets in the order opened, each by `Wallet::consume`'s rule
    /// (granted before paid, the earliest-expiring first), never past what is due.
    pub(super) fn with_credits_applied(
        &self,
        customer: &CustomerState,
        invoice: Invoice,
    ) -> Invoice {
        let mut invoice = with_credit_applied(customer, invoice);
        let day = local_date(invoice.issued_at, &customer.time_zone);
        let mut due = invoice.due_at_issue();
        for id in &customer.wallets {
            if due <= Decimal::ZERO {
                break;
            }
            let account = &self.wallets[id];
            let mut wallet = account.wallet.clone();
            for t in wallet.consume(due, day) {
                due -= t.amount;
                invoice.wallet_applied.push(WalletUse {
                    wallet_id: id.clone(),
                    top_up: t.top_up,
                    kind: t.kind,
                    amount: t.amount,
                });
            }
        }
        debug_assert!(invoice.due_at_issue() >= Decimal::ZERO.min(invoice.total));
        invoice
    }

    /// Records (and applies) the expiry of every lot whose date is on or before `as_of` (the
    /// customer's local date), one `WalletCreditsExpired` per wallet and date, then any
    /// low-balance crossing. Billing runs call it before billing the subscriptions.
    pub fn expire_wallets(&mut self, as_of: Timestamp, ctx: &Context, position: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for account in self.wallets.values() {
            let tz = &self.customers[&account.customer_id].time_zone;
            for (expired_on, lots) in account.expiring_by(local_date(as_of, tz)) {
                events.push(Event::WalletCreditsExpired {
                    wallet_id: account.wallet_id.clone(),
                    customer_id: account.customer_id.clone(),
                    currency: account.wallet.currency,
                    expired_on,
                    lots,
                });
            }
        }
        self.apply_all(&events, position);
        let low = self.follow_wallets(&events, ctx.now, position + events.len() as u64);
        events.extend(low);
        events
    }

    /// The `WalletBalanceLow` events due after `decided` (already applied): one per wallet
    /// those events took below its threshold. Applied before they are returned.
    pub(super) fn follow_wallets(
        &mut self,
        decided: &[Event],
        now: Timestamp,
        position: u64,
    ) -> Vec<Event> {
        let mut touched: Vec<&str> = Vec::new();
        for e in decided {
            match e {
                Event::InvoiceIssued(inv) => {
                    touched.extend(inv.wallet_applied.iter().map(|u| u.wallet_id.as_str()))
                }
                Event::WalletCreditsExpired { wallet_id, .. } => touched.push(wallet_id),
                _ => {}
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let mut events = Vec::new();
        for id in touched {
            let account = &self.wallets[id];
            if account.crossed_low() {
                events.push(Event::WalletBalanceLow {
                    wallet_id: id.to_string(),
                    customer_id: account.customer_id.clone(),
                    balance: account.balance(),
                    threshold: account.low_balance_threshold.expect("crossed a threshold"),
                    occurred_at: now,
                });
            }
        }
        self.apply_all(&events, position);
        events
    }

    /// The `WalletCreditsUsable` a payment of `amount` on a paid top-up's invoice brings, if
    /// it pays the invoice in full.
    pub(super) fn credits_usable_on_payment(
        &self,
        invoice: &Invoice,
        amount: Decimal,
        due: Decimal,
        at: Timestamp,
    ) -> Option<Event> {
        if invoice.reason != IssueReason::WalletTopUp || amount < due {
            return None;
        }
        let customer = self.customers.get(&invoice.customer_id)?;
        customer.wallets.iter().find_map(|id| {
            let pending = self.wallets[id].pending_of(&invoice.invoice_id)?;
            Some(Event::WalletCreditsUsable {
                wallet_id: id.clone(),
                customer_id: invoice.customer_id.clone(),
                top_up: pending.lot.top_up,
                occurred_at: at,
            })
        })
    }

    /// Why voiding `invoice` would break a wallet, if it would: wallet credits paid part of it
    /// (correct it with a credit note instead), or it bought credits that are already usable.
    pub(super) fn wallet_void_refusal(&self, invoice: &Invoice) -> Option<String> {
        if !invoice.wallet_applied.is_empty() {
            return Some(format!(
                "wallet credits paid {} of invoice {}: correct it with a credit note",
                invoice.wallet_total(),
                invoice.invoice_id
            ));
        }
        if invoice.reason != IssueReason::WalletTopUp {
            return None;
        }
        let customer = self.customers.get(&invoice.customer_id)?;
        let pending = customer
            .wallets
            .iter()
            .any(|id| self.wallets[id].pending_of(&invoice.invoice_id).is_some());
        (!pending).then(|| {
            format!(
                "the credits invoice {} bought are already usable in their wallet",
                invoice.invoice_id
            )
        })
    }

    /// Applies a wallet event.
    pub(super) fn evolve_wallet(&mut self, event: &Event) {
        match event {
            Event::WalletOpened(w) => {
                let customer = self.customers.get_mut(&w.customer_id).expect("customer exists");
                customer.wallets.push(w.wallet_id.clone());
                let previous = self.wallets.insert(w.wallet_id.clone(), WalletAccount::opened(w));
                assert!(previous.is_none(), "wallet ids are unique");
            }
            Event::WalletToppedUp(t) => self.wallet_mut(&t.wallet_id).top_up(t),
            Event::WalletCreditsUsable { wallet_id, top_up, .. } => {
                self.wallet_mut(wallet_id).make_usable(*top_up)
            }
            Event::WalletCreditsExpired { wallet_id, lots, .. } => {
                self.wallet_mut(wallet_id).expire(lots)
            }
            Event::WalletBalanceLow { wallet_id, .. } => self.wallet_mut(wallet_id).mark_low(),
            _ => unreachable!("not a wallet event: {}", event.type_name()),
        }
    }

    /// An issued invoice's wallet uses come off the lots; a voided top-up invoice's pending
    /// credits never arrive.
    pub(super) fn evolve_wallet_uses(&mut self, uses: &[WalletUse]) {
        for u in uses {
            self.wallet_mut(&u.wallet_id).take(u);
        }
    }

    pub(super) fn evolve_wallet_void(&mut self, invoice: &Invoice) {
        if invoice.reason != IssueReason::WalletTopUp {
            return;
        }
        let ids = self.customers[&invoice.customer_id].wallets.clone();
        for id in ids {
            self.wallet_mut(&id).cancel_pending(&invoice.invoice_id);
        }
    }

    fn wallet_mut(&mut self, id: &str) -> &mut WalletAccount {
        self.wallets.get_mut(id).expect("wallet exists")
    }
}
