//! Applying one event to the journal: [`Journal`] issues an invoice (its issue entry and the
//! recognition schedule of each line, credits matched against earlier base fees), posts
//! payments, write-offs, credit notes and voids, and keeps the daily balances, the invoice
//! states and the revenue waterfall in step with every entry it writes or removes. It must
//! never write an unbalanced entry nor move a daily balance without the entry behind it
//! (every write goes through `write_entry` or `unpost`); usage accruals belong to `accruals`.

use std::collections::BTreeMap;

use domain::accounting::{self, recognition_source};
use domain::calendar::{local_date, Period};
use domain::credit_note::{CreditDestination, CreditNote};
use domain::invoice::{Invoice, InvoiceLine, InvoiceStatus, IssueReason, LineKind};
use domain::money::{checked_sum, Currency};
use domain::recognition::{self, RevenueType};
use domain::wallet::Taken;
use event_store::Position;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rust_decimal::Decimal;

use super::accounts::{Account, EntryKind, JournalEntry, Legs};
use super::records::{
    balance_key, customer_key, entry_key, invoice_key, json, month_key, parse_decimal, sub_key,
    waterfall_key, EntryRef, InvoiceState, LineRef, LineSchedule, WaterfallCell, SEQ_KEY,
};
use super::{
    check_recognizable, inconsistent, overflow, plus, NAME, RECORD_VERSION, SUB_LINES_KEPT,
};
use crate::store::{corrupt, Writes};
use crate::Result;

/// Applying one event.
pub(super) struct Journal<'w, 'a> {
    pub(super) w: &'w mut Writes<'a>,
    pub(super) position: Position,
}

impl Journal<'_, '_> {
    pub(super) fn check_date(&self, d: Date) -> Result<()> {
        if d.year() < 1 {
            return Err(inconsistent(self.position, format!("date {d} is before year 1")));
        }
        Ok(())
    }

    pub(super) fn next_seq(&mut self) -> Result<u64> {
        let seq = match self.w.get(SEQ_KEY)? {
            None => 0,
            Some(b) => <[u8; 8]>::try_from(b.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(NAME, "seq is not 8 bytes"))?,
        };
        self.w.put(SEQ_KEY, &(seq + 1).to_be_bytes());
        Ok(seq)
    }

    /// Writes a balanced entry (none if it has no postings) and adds it to the daily balances.
    fn post(
        &mut self,
        date: Date,
        kind: EntryKind,
        invoice_id: &str,
        currency: Currency,
        legs: &Legs,
    ) -> Result<Option<EntryRef>> {
        self.post_for(date, kind, (invoice_id, "", ""), currency, legs)
    }

    /// [`Journal::post`] for a document: `(invoice_id, credit_note_id, wallet_id)`.
    fn post_for(
        &mut self,
        date: Date,
        kind: EntryKind,
        (invoice_id, credit_note_id, wallet_id): (&str, &str, &str),
        currency: Currency,
        legs: &Legs,
    ) -> Result<Option<EntryRef>> {
        let postings = legs.postings().map_err(|what| {
            overflow(self.position, format_args!("{kind:?} of invoice {invoice_id}: {what}"))
        })?;
        if postings.is_empty() {
            return Ok(None);
        }
        self.check_date(date)?;
        let seq = self.next_seq()?;
        let entry = JournalEntry {
            v: RECORD_VERSION,
            seq,
            date,
            kind,
            invoice_id: invoice_id.to_string(),
            subscription_id: String::new(),
            credit_note_id: credit_note_id.to_string(),
            wallet_id: wallet_id.to_string(),
            currency,
            position: self.position,
            postings,
        };
        self.write_entry(&entry)?;
        Ok(Some(EntryRef { date, seq }))
    }

    pub(super) fn write_entry(&mut self, entry: &JournalEntry) -> Result<()> {
        let r = EntryRef { date: entry.date, seq: entry.seq };
        self.w.put(entry_key(r), serde_json::to_vec(entry).expect("entries serialize"));
        self.w.put(format!("cur/{}", entry.currency.code()), "");
        self.add_to_balances(entry, Decimal::ONE)
    }

    /// Removes a scheduled entry that will never be earned (void).
    pub(super) fn unpost(&mut self, r: EntryRef) -> Result<()> {
        let key = entry_key(r);
        let bytes = self.w.get(&key)?.ok_or_else(|| corrupt(NAME, "scheduled entry missing"))?;
        let entry: JournalEntry = json(&bytes, "entry")?;
        self.add_to_balances(&entry, Decimal::NEGATIVE_ONE)?;
        self.w.delete(key);
        Ok(())
    }

    /// Adds `sign` × the entry's postings to the daily balances; an overflow names the
    /// account, currency, day and what the entry is for.
    fn add_to_balances(&mut self, entry: &JournalEntry, sign: Decimal) -> Result<()> {
        for p in &entry.postings {
            let key = balance_key(entry.currency, p.account, entry.date);
            let old = self.w.get(&key)?.map(|b| parse_decimal(&b)).transpose()?;
            let what = || {
                let of = match entry.invoice_id.as_str() {
                    "" => format!("usage accrual of subscription {}", entry.subscription_id),
                    id => format!("invoice {id}"),
                };
                let (account, cur) = (p.account.as_str(), entry.currency);
                format!("balance of {account} ({cur}) on {} adding {of}", entry.date)
            };
            // One side of a posting is zero: the net and its negation are exact.
            let net = (p.debit - p.credit) * sign;
            let new = plus(old.unwrap_or_default(), net, self.position, what)?;
            if new.is_zero() {
                self.w.delete(key);
            } else {
                self.w.put(key, new.to_string().into_bytes());
            }
        }
        Ok(())
    }

    fn add_to_waterfall(
        &mut self,
        d: Date,
        line: &LineRef,
        currency: Currency,
        revenue_type: RevenueType,
        amount: Decimal,
    ) -> Result<()> {
        if amount.is_zero() {
            return Ok(());
        }
        self.check_date(d)?;
        let key = waterfall_key(d, line);
        let old: Option<WaterfallCell> =
            self.w.get(&key)?.map(|b| json(&b, "waterfall cell")).transpose()?;
        let what = || {
            format!(
                "waterfall of invoice {} line {} in {}",
                line.invoice_id,
                line.line_index,
                month_key(d)
            )
        };
        let total = plus(old.map_or(Decimal::ZERO, |c| c.amount), amount, self.position, what)?;
        if total.is_zero() {
            self.w.delete(key);
        } else {
            let cell = WaterfallCell {
                invoice_id: line.invoice_id.clone(),
                line_index: line.line_index,
                currency,
                revenue_type,
                amount: total,
            };
            self.w.put(key, serde_json::to_vec(&cell).expect("cells serialize"));
        }
        Ok(())
    }

    fn time_zone(&self, customer_id: &str) -> Result<(String, TimeZone)> {
        let name = match self.w.get(&customer_key(customer_id))? {
            Some(b) => String::from_utf8_lossy(&b).into_owned(),
            None => "UTC".to_string(),
        };
        let tz = domain::calendar::parse_time_zone(&name).unwrap_or(TimeZone::UTC);
        Ok((name, tz))
    }

    fn load(&self, invoice_id: &str) -> Result<InvoiceState> {
        match self.w.get(&invoice_key(invoice_id))? {
            Some(b) => InvoiceState::decode(&b),
            None => Err(inconsistent(self.position, format!("unknown invoice {invoice_id}"))),
        }
    }

    fn store(&mut self, s: &InvoiceState) {
        self.w.put(invoice_key(&s.invoice_id), s.encode());
    }

    fn local(&self, s: &InvoiceState, at: Timestamp) -> Date {
        let tz = domain::calendar::parse_time_zone(&s.time_zone).unwrap_or(TimeZone::UTC);
        local_date(at, &tz)
    }

    pub(super) fn issue(&mut self, inv: &Invoice) -> Result<()> {
        let position = self.position;
        if self.w.get(&invoice_key(&inv.invoice_id))?.is_some() {
            return Err(inconsistent(position, format!("invoice {} issued twice", inv.invoice_id)));
        }
        let (tz_name, tz) = self.time_zone(&inv.customer_id)?;
        let issue_date = local_date(inv.issued_at, &tz);
        let cur = inv.currency;
        // A one-off invoice (no subscription) has no base-fee lines to match credits against.
        let one_off = inv.subscription_id.is_empty();
        let mut sub_lines: Vec<(LineRef, Period)> =
            match self.w.get(&sub_key(&inv.subscription_id))?.filter(|_| !one_off) {
                Some(b) => json(&b, "subscription lines")?,
                None => Vec::new(),
            };
        // Receivable, tax, what the credit balance and wallets paid, bought credits
        // (`domain::accounting`); each revenue line's recognition is added below.
        let mut issue = accounting::invoice_settlement_legs(inv);
        let mut days: BTreeMap<Date, Legs> = BTreeMap::new();
        let mut lines = Vec::with_capacity(inv.lines.len());
        for (i, line) in inv.lines.iter().enumerate() {
            let what = || format!("invoice {} line {i}", inv.invoice_id);
            check_recognizable(line.amount, cur, position, what)?;
            if line.kind == LineKind::PrepaidCredits {
                // Bought credits (in the settlement legs): a liability, never revenue.
                lines.push(LineSchedule {
                    kind: line.kind,
                    revenue_type: RevenueType::Breakage,
                    amount: line.amount,
                    service_period: line.service_period,
                    credited_line: None,
                    entries: Vec::new(),
                    adjustments: Vec::new(),
                });
                continue;
            }
            let this = LineRef { invoice_id: inv.invoice_id.clone(), line_index: i };
            let progressive = inv.reason == IssueReason::Progressive;
            let accrued = match line.kind {
                LineKind::Usage => self.take_accrued(&inv.subscription_id, line, progressive)?,
                _ => Vec::new(),
            };
            let (entries, revenue_type, credited_line) = match line.kind {
                LineKind::Usage if progressive => {
                    let s = self.progressive_schedule(line, cur, issue_date, &accrued)?;
                    (s, RevenueType::Usage, None)
                }
                _ => self.schedule(line, cur, issue_date, &sub_lines, &accrued)?,
            };
            let sum = checked_sum(entries.iter().map(|(_, a)| *a));
            let sum = sum.ok_or_else(|| overflow(position, format!("{} schedule", what())))?;
            if sum != line.amount {
                let detail = format!("line {i} schedule sums to {sum}, not {}", line.amount);
                return Err(inconsistent(position, detail));
            }
            // Accrued usage is already recognized: the invoice bills it out of unbilled
            // receivable; the rest of the schedule is posted now.
            let accrued_sum = checked_sum(accrued.iter().map(|(_, a)| *a));
            let accrued_sum =
                accrued_sum.ok_or_else(|| overflow(position, format!("{} accruals", what())))?;
            issue.cr(Account::UnbilledReceivable, accrued_sum);
            for (d, a) in &entries {
                self.add_to_waterfall(*d, &this, cur, revenue_type, *a)?;
            }
            let negated: Entries = accrued.iter().map(|(d, a)| (*d, -*a)).collect();
            let net = merge_nonzero(&entries, &negated).ok_or_else(|| {
                overflow(position, format!("{} schedule net of accruals", what()))
            })?;
            for (d, a) in net.iter() {
                let source = recognition_source(*d, issue_date);
                issue.cr(source, *a);
                let day = days.entry(*d).or_default();
                day.dr(source, *a);
                day.cr(Account::Revenue(revenue_type), *a);
            }
            lines.push(LineSchedule {
                kind: line.kind,
                revenue_type,
                amount: line.amount,
                service_period: line.service_period,
                credited_line,
                entries,
                adjustments: Vec::new(),
            });
        }
        let issue_entry = self
            .post(issue_date, EntryKind::InvoiceIssued, &inv.invoice_id, cur, &issue)?
            .unwrap_or(EntryRef { date: issue_date, seq: u64::MAX });
        let mut scheduled = Vec::new();
        for (d, legs) in &days {
            scheduled.extend(self.post(*d, EntryKind::Recognition, &inv.invoice_id, cur, legs)?);
        }
        for (i, line) in inv.lines.iter().enumerate() {
            if line.kind == LineKind::BaseFee {
                let r = LineRef { invoice_id: inv.invoice_id.clone(), line_index: i };
                sub_lines.push((r, line.service_period));
            }
        }
        let keep_from = sub_lines.len().saturating_sub(SUB_LINES_KEPT);
        sub_lines.drain(..keep_from);
        if !one_off {
            let sub_lines = serde_json::to_vec(&sub_lines).expect("line refs serialize");
            self.w.put(sub_key(&inv.subscription_id), sub_lines);
        }
        let status = if inv.due_at_issue() <= Decimal::ZERO {
            InvoiceStatus::Paid
        } else {
            InvoiceStatus::Open
        };
        self.store(&InvoiceState {
            v: RECORD_VERSION,
            invoice_id: inv.invoice_id.clone(),
            subscription_id: inv.subscription_id.clone(),
            currency: cur,
            time_zone: tz_name,
            issue_date,
            total: inv.total,
            paid: Decimal::ZERO,
            written_off: Decimal::ZERO,
            offset: inv.credit_applied + inv.wallet_total(),
            status,
            voided_on: None,
            issue_entry,
            scheduled,
            lines,
        });
        Ok(())
    }

    /// A line's schedule, revenue type and (for a matched credit) the credited line, whose
    /// adjustments it records.
    fn schedule(
        &mut self,
        line: &InvoiceLine,
        cur: Currency,
        issue_date: Date,
        sub_lines: &[(LineRef, Period)],
        accrued: &[(Date, Decimal)],
    ) -> Result<(Entries, RevenueType, Option<LineRef>)> {
        let p = line.service_period;
        Ok(match line.kind {
            LineKind::BaseFee
            | LineKind::MinimumCommitmentTrueUp
            | LineKind::AddOn
            | LineKind::PrepaidCredits => {
                let s = recognition::schedule_for_line(line, cur);
                (s.entries, s.revenue_type, None)
            }
            LineKind::Usage => {
                let mut total = Decimal::ZERO;
                let mut cumulative: Entries = Vec::with_capacity(accrued.len());
                for (d, a) in accrued {
                    let what = || format!("accrued usage of line {:?}", line.description);
                    total = plus(total, *a, self.position, what)?;
                    cumulative.push((*d, total));
                }
                let entries = recognition::usage_schedule(p, &cumulative, line.amount, cur);
                (entries, RevenueType::Usage, None)
            }
            LineKind::UsageInAdvance => {
                let s = recognition::in_advance_usage_schedule(line, cur, issue_date);
                (s.entries, s.revenue_type, None)
            }
            LineKind::Credit => match self.credited(p.start, sub_lines)? {
                Some((target, mut state)) => {
                    let original = &mut state.lines[target.line_index];
                    let what = || format!("credited schedule of invoice {}", target.invoice_id);
                    let effective = merge(&original.entries, &original.adjustments)
                        .ok_or_else(|| overflow(self.position, what()))?;
                    let reversal =
                        recognition::credit_reversal(&effective, line.amount, p.start, cur);
                    original.adjustments = merge_nonzero(&original.adjustments, &reversal)
                        .ok_or_else(|| overflow(self.position, what()))?;
                    let revenue_type = original.revenue_type;
                    self.store(&state);
                    (reversal, revenue_type, Some(target))
                }
                None => {
                    let s = recognition::schedule_for_line(line, cur);
                    (s.entries, s.revenue_type, None)
                }
            },
        })
    }

    /// A progressive invoice's usage line (docs/decisions/0037): the accruals it took, as
    /// they were recognized, plus what differs from its amount (a coupon's discount, or usage
    /// the journal had not accrued) on the issue day (within the period), so no later day
    /// carries a negative deferral. Sums exactly to the line's amount.
    fn progressive_schedule(
        &self,
        line: &InvoiceLine,
        cur: Currency,
        issue_date: Date,
        accrued: &[(Date, Decimal)],
    ) -> Result<Entries> {
        let p = line.service_period;
        let what = || format!("progressive usage of line {:?}", line.description);
        let taken = checked_sum(accrued.iter().map(|(_, a)| *a));
        let residue = taken.and_then(|t| line.amount.checked_sub(t));
        let residue = residue.ok_or_else(|| overflow(self.position, what()))?;
        let last = p.last_day();
        let day = issue_date.clamp(p.start, last);
        debug_assert_eq!(
            residue,
            cur.round(residue),
            "accruals and lines are at the currency's scale"
        );
        merge_nonzero(accrued, &[(day, residue)]).ok_or_else(|| overflow(self.position, what()))
    }

    /// The newest base-fee line (not voided) whose service period contains `day`.
    fn credited(
        &self,
        day: Date,
        sub_lines: &[(LineRef, Period)],
    ) -> Result<Option<(LineRef, InvoiceState)>> {
        for (r, period) in sub_lines.iter().rev() {
            if !period.contains(day) {
                continue;
            }
            let state = self.load(&r.invoice_id)?;
            if state.voided_on.is_none() && r.line_index < state.lines.len() {
                return Ok(Some((r.clone(), state)));
            }
        }
        Ok(None)
    }

    pub(super) fn pay(&mut self, invoice_id: &str, amount: Decimal, at: Timestamp) -> Result<()> {
        let mut s = self.load(invoice_id)?;
        let date = self.local(&s, at);
        let recovery = if s.status == InvoiceStatus::Uncollectible {
            amount.min(s.written_off).max(Decimal::ZERO)
        } else {
            Decimal::ZERO
        };
        // 0 <= recovery <= amount when amount >= 0; a negative amount recovers nothing.
        let legs = accounting::payment_legs(amount, recovery, write_off_account(&s));
        self.post(date, EntryKind::Payment, invoice_id, s.currency, &legs)?;
        s.written_off -= recovery;
        s.paid =
            plus(s.paid, amount, self.position, || format!("payments of invoice {invoice_id}"))?;
        if s.status != InvoiceStatus::Void && s.paid.saturating_add(s.offset) >= s.total {
            s.status = InvoiceStatus::Paid;
        }
        self.store(&s);
        Ok(())
    }

    pub(super) fn uncollectible(&mut self, invoice_id: &str, at: Timestamp) -> Result<()> {
        let mut s = self.load(invoice_id)?;
        if s.status == InvoiceStatus::Void {
            return Err(inconsistent(self.position, format!("invoice {invoice_id} is void")));
        }
        let date = self.local(&s, at);
        let due = s.total.checked_sub(s.paid).and_then(|x| x.checked_sub(s.written_off));
        let due = due.and_then(|x| x.checked_sub(s.offset));
        let what = || format!("amount due of invoice {invoice_id}");
        let due = due.ok_or_else(|| overflow(self.position, what()))?.max(Decimal::ZERO);
        let legs = accounting::write_off_legs(due, write_off_account(&s));
        self.post(date, EntryKind::Uncollectible, invoice_id, s.currency, &legs)?;
        s.written_off = plus(s.written_off, due, self.position, what)?;
        s.status = InvoiceStatus::Uncollectible;
        self.store(&s);
        Ok(())
    }

    /// A credit note: each credited line's schedule loses the credited amount, its
    /// unrecognized part first (`recognition::credit_reversal` on the note's date, as a credit
    /// line reverses a base fee); the entry debits what that reverses (deferred revenue for
    /// days from the note's date, revenue for the excess recognized on it) and tax payable,
    /// and credits the destination.
    pub(super) fn credit_note(&mut self, note: &CreditNote) -> Result<()> {
        let position = self.position;
        let mut s = self.load(&note.invoice_id)?;
        if s.voided_on.is_some() || s.currency != note.currency {
            let detail = format!("credit note {} on void or foreign invoice", note.credit_note_id);
            return Err(inconsistent(position, detail));
        }
        let date = self.local(&s, note.issued_at).max(s.issue_date);
        let cur = s.currency;
        let mut entry = accounting::credit_note_legs(note);
        let mut days: BTreeMap<Date, Legs> = BTreeMap::new();
        for credited in &note.lines {
            let i = credited.line_index as usize;
            let what = || format!("credit note {} line {i}", note.credit_note_id);
            let Some(line) = s.lines.get_mut(i) else {
                return Err(inconsistent(position, format!("{}: no such line", what())));
            };
            let effective = merge(&line.entries, &line.adjustments)
                .ok_or_else(|| overflow(position, what()))?;
            let reversal = recognition::credit_reversal(&effective, -credited.amount, date, cur);
            line.adjustments = merge_nonzero(&line.adjustments, &reversal)
                .ok_or_else(|| overflow(position, what()))?;
            let revenue_type = line.revenue_type;
            let this = LineRef { invoice_id: note.invoice_id.clone(), line_index: i };
            for (d, a) in &reversal {
                self.add_to_waterfall(*d, &this, cur, revenue_type, *a)?;
                let source = recognition_source(*d, s.issue_date);
                entry.cr(source, *a);
                let day = days.entry(*d).or_default();
                day.dr(source, *a);
                day.cr(Account::Revenue(revenue_type), *a);
            }
        }
        let document = (note.invoice_id.as_str(), note.credit_note_id.as_str(), "");
        self.post_for(date, EntryKind::CreditNote, document, cur, &entry)?;
        for (d, legs) in &days {
            let posted = self.post_for(*d, EntryKind::Recognition, document, cur, legs)?;
            s.scheduled.extend(posted);
        }
        if note.destination == CreditDestination::Offset {
            s.offset = plus(s.offset, note.total, position, || {
                format!("offsets of invoice {}", note.invoice_id)
            })?;
        }
        self.store(&s);
        Ok(())
    }

    /// Paid credits that expired unused become breakage revenue on their expiry date
    /// (SPEC §8.5); granted ones had no entry and leave none.
    pub(super) fn wallet_expiry(
        &mut self,
        wallet_id: &str,
        currency: Currency,
        expired_on: Date,
        lots: &[Taken],
    ) -> Result<()> {
        let legs = accounting::wallet_expiry_legs(lots)
            .ok_or_else(|| overflow(self.position, format!("expiry of wallet {wallet_id}")))?;
        let document = ("", "", wallet_id);
        self.post_for(expired_on, EntryKind::WalletExpiry, document, currency, &legs)?;
        Ok(())
    }

    pub(super) fn void(&mut self, invoice_id: &str, at: Timestamp) -> Result<()> {
        let mut s = self.load(invoice_id)?;
        if s.voided_on.is_some() {
            return Err(inconsistent(self.position, format!("invoice {invoice_id} voided twice")));
        }
        let v = self.local(&s, at);
        let cur = s.currency;
        // Scheduled recognition on or after the void date is never earned.
        let (future, past): (Vec<EntryRef>, Vec<EntryRef>) =
            s.scheduled.iter().partition(|r| r.date >= v);
        for r in future {
            self.unpost(r)?;
        }
        s.scheduled = past;
        // Reverse the issue entry and any write-off.
        let mut reversal = Legs::default();
        if let Some(bytes) = self.w.get(&entry_key(s.issue_entry))? {
            let issued: JournalEntry = json(&bytes, "entry")?;
            for p in &issued.postings {
                reversal.cr(p.account, p.debit - p.credit);
            }
        }
        reversal.dr(Account::AccountsReceivable, s.written_off);
        reversal.cr(write_off_account(&s), s.written_off);
        self.post(v, EntryKind::Void, invoice_id, cur, &reversal)?;
        // A voided credit no longer reduces what later credits may reverse on its target.
        for line in &s.lines {
            let Some(target) = &line.credited_line else { continue };
            if target.invoice_id == s.invoice_id {
                continue;
            }
            let mut credited = self.load(&target.invoice_id)?;
            let negated: Entries = line.entries.iter().map(|(d, a)| (*d, -*a)).collect();
            let adjusted = &mut credited.lines[target.line_index].adjustments;
            let what = || format!("credited schedule of invoice {}", target.invoice_id);
            *adjusted =
                merge_nonzero(adjusted, &negated).ok_or_else(|| overflow(self.position, what()))?;
            self.store(&credited);
        }
        // Reverse, on the void date, what was recognized before it.
        let mut recognized = Legs::default();
        for (i, line) in s.lines.iter_mut().enumerate() {
            let this = LineRef { invoice_id: invoice_id.to_string(), line_index: i };
            let mut before = Decimal::ZERO;
            let mut kept = Vec::new();
            for (d, a) in &line.entries {
                if *d < v {
                    let source = recognition_source(*d, s.issue_date);
                    recognized.dr(Account::Revenue(line.revenue_type), *a);
                    recognized.cr(source, *a);
                    let what = || format!("recognized revenue of invoice {invoice_id} line {i}");
                    before = plus(before, *a, self.position, what)?;
                    kept.push((*d, *a));
                } else {
                    self.add_to_waterfall(*d, &this, cur, line.revenue_type, -*a)?;
                }
            }
            self.add_to_waterfall(v, &this, cur, line.revenue_type, -before)?;
            if !before.is_zero() {
                kept.push((v, -before));
            }
            line.entries = kept;
        }
        self.post(v, EntryKind::VoidRecognition, invoice_id, cur, &recognized)?;
        s.voided_on = Some(v);
        s.status = InvoiceStatus::Void;
        self.store(&s);
        Ok(())
    }
}

/// Dated amounts in date order (a schedule).
pub(super) type Entries = Vec<(Date, Decimal)>;

/// Where this invoice's write-off goes (`domain::accounting::write_off_account`).
fn write_off_account(s: &InvoiceState) -> Account {
    accounting::write_off_account(s.lines.iter().any(|l| l.kind == LineKind::PrepaidCredits))
}

/// Σ of two date-ordered schedules, per date, in date order (a day of either is kept, so a
/// ratable schedule keeps one entry per day).
/// `None` if a day's sum overflows.
pub(super) fn merge(a: &[(Date, Decimal)], b: &[(Date, Decimal)]) -> Option<Vec<(Date, Decimal)>> {
    let mut sum: BTreeMap<Date, Decimal> = BTreeMap::new();
    for (d, x) in a.iter().chain(b) {
        let day = sum.entry(*d).or_default();
        *day = day.checked_add(*x)?;
    }
    Some(sum.into_iter().collect())
}

/// `a + b` without its zero days (adjustments list the days that changed).
pub(super) fn merge_nonzero(
    a: &[(Date, Decimal)],
    b: &[(Date, Decimal)],
) -> Option<Vec<(Date, Decimal)>> {
    Some(merge(a, b)?.into_iter().filter(|(_, x)| !x.is_zero()).collect())
}
