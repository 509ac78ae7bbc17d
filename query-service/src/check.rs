//! Request validation (SPEC §3): every bad field of a request is collected, then reported at
//! once as one INVALID_ARGUMENT with a `google.rpc.BadRequest` field violation per bad field,
//! the command service's contract ([`command_service::status::from_domain`]).

use std::str::FromStr;

use domain::error::Violations;
use domain::money::Currency;
use domain::DomainError;
use jiff::civil::Date;
use projections::mrr::Granularity;
use projections::ProjectionError;
use tonic::Status;

/// Largest `page_size` a listing accepts (0 means the listing's default, 100).
pub const PAGE_SIZE_MAX: u32 = 1_000;

/// The violations of one request. Each parser returns `None` exactly when it recorded one.
#[derive(Debug, Default)]
pub struct Check(Violations);

impl Check {
    pub fn bad(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(field, description);
    }

    /// A required date `YYYY-MM-DD`.
    pub fn date(&mut self, field: &str, s: &str) -> Option<Date> {
        let parsed = (s.len() == 10).then(|| Date::from_str(s).ok()).flatten();
        if parsed.is_none() {
            self.bad(field, format!("{s:?} is not a date YYYY-MM-DD"));
        }
        parsed
    }

    /// An optional date: empty gives `Some(None)`.
    pub fn opt_date(&mut self, field: &str, s: &str) -> Option<Option<Date>> {
        if s.is_empty() {
            return Some(None);
        }
        self.date(field, s).map(Some)
    }

    /// A month `YYYY-MM`, as its first day.
    pub fn month(&mut self, field: &str, s: &str) -> Option<Date> {
        let parsed = (s.len() == 7).then(|| Date::from_str(&format!("{s}-01")).ok()).flatten();
        if parsed.is_none() {
            self.bad(field, format!("{s:?} is not a month YYYY-MM"));
        }
        parsed
    }

    pub fn currency(&mut self, field: &str, s: &str) -> Option<Currency> {
        match Currency::parse(s) {
            Ok(c) => Some(c),
            Err(DomainError::Invalid(list)) => {
                list.into_iter().for_each(|v| self.bad(field, v.description));
                None
            }
            Err(other) => {
                self.bad(field, other.to_string());
                None
            }
        }
    }

    /// `day` or `month`; empty gives `default`.
    pub fn granularity(
        &mut self,
        field: &str,
        s: &str,
        default: Granularity,
    ) -> Option<Granularity> {
        match s {
            "" => Some(default),
            "day" => Some(Granularity::Day),
            "month" => Some(Granularity::Month),
            other => {
                self.bad(field, format!("{other:?} is not day or month"));
                None
            }
        }
    }

    /// A listing's page size, at most [`PAGE_SIZE_MAX`] (0 stays 0: the default).
    pub fn page_size(&mut self, field: &str, n: u32) -> usize {
        if n > PAGE_SIZE_MAX {
            self.bad(field, format!("{n} is over the maximum of {PAGE_SIZE_MAX}"));
        }
        n.min(PAGE_SIZE_MAX) as usize
    }

    /// An id a write could have made (customer, subscription): the write path's bound
    /// ([`domain::catalog::check_id`]), so also never a '/' of the read models' keys.
    pub fn id(&mut self, field: &str, s: &str) {
        domain::catalog::check_id(&mut self.0, field, s);
    }

    /// An invoice id the ledger could have given ([`domain::catalog::check_invoice_id`]).
    pub fn invoice_id(&mut self, field: &str, s: &str) {
        domain::catalog::check_invoice_id(&mut self.0, field, s);
    }

    /// `from ≤ to` when both are known (a violation of `to_field`).
    pub fn order(&mut self, to_field: &str, from: Option<Option<Date>>, to: Option<Option<Date>>) {
        if let (Some(Some(from)), Some(Some(to))) = (from, to) {
            if from > to {
                self.bad(to_field, format!("{to} is before {from}"));
            }
        }
    }

    /// INVALID_ARGUMENT with every violation, if there is one.
    pub fn done(self) -> Result<(), Status> {
        self.0.into_result().map_err(command_service::status::from_domain)
    }
}

/// A value whose check passed ([`Check::done`] returned `Ok`): it is there.
pub fn checked<T>(value: Option<T>) -> Result<T, Status> {
    value.ok_or_else(|| Status::internal("a validated field is missing"))
}

/// A read model's error: INVALID_ARGUMENT on `field` for a refused argument, else INTERNAL.
pub fn read_error(field: &'static str) -> impl Fn(ProjectionError) -> Status {
    move |e| match e {
        ProjectionError::InvalidArgument(m) => command_service::status::bad_field(field, m),
        other => Status::internal(other.to_string()),
    }
}

/// NOT_FOUND with a `google.rpc.ResourceInfo` naming the resource.
pub fn not_found(kind: &'static str, id: impl std::fmt::Display) -> Status {
    command_service::status::from_domain(DomainError::not_found(kind, id))
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn fields(status: &Status) -> Vec<String> {
        let request = status.get_details_bad_request().expect("a BadRequest");
        request.field_violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn every_bad_field_is_reported_once() {
        let mut c = Check::default();
        assert_eq!(c.date("a", "2025-02-30"), None);
        assert_eq!(c.date("b", "2025-2-3"), None);
        assert_eq!(c.month("c", "2025-13"), None);
        assert_eq!(c.currency("d", "XYZ"), None);
        assert_eq!(c.granularity("e", "week", Granularity::Day), None);
        assert_eq!(c.page_size("f", 1_001), 1_000);
        c.id("g", "a/b");
        c.order("h", Some(Some(date(2025, 2, 2))), Some(Some(date(2025, 2, 1))));
        let status = c.done().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(fields(&status), ["a", "b", "c", "d", "e", "f", "g", "h"]);
    }

    #[test]
    fn good_fields_pass() {
        let mut c = Check::default();
        assert_eq!(c.date("a", "2025-02-28"), Some(date(2025, 2, 28)));
        assert_eq!(c.opt_date("a", ""), Some(None));
        assert_eq!(c.month("c", "2025-12"), Some(date(2025, 12, 1)));
        assert_eq!(c.currency("d", "JPY").map(|c| c.code()), Some("JPY"));
        assert_eq!(c.granularity("e", "", Granularity::Month), Some(Granularity::Month));
        assert_eq!(c.page_size("f", 0), 0);
        c.order("h", Some(Some(date(2025, 2, 1))), Some(None));
        assert!(c.done().is_ok());
    }

    #[test]
    fn read_model_refusals_name_the_field() {
        let status = read_error("page_token")(ProjectionError::InvalidArgument("bad".into()));
        assert_eq!(fields(&status), ["page_token"]);
        assert_eq!(not_found("invoice", "inv-x").code(), Code::NotFound);
    }
}
