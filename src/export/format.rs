//! How exported values are written: amounts at the currency's minor unit, and a sink that
//! writes rows as CSV (RFC 4180) or as a JSON array with one record per line.

use std::io::Write;

use domain::money::Currency;
use rust_decimal::Decimal;

use super::ExportFormat;

/// `amount` as a decimal string with exactly `currency`'s minor-unit digits
/// ([`Currency::format`], as every reply writes money). Never rounds: an amount with more
/// significant digits than the minor unit is an error (the ledger holds none; one would be a
/// bug worth stopping an export for).
pub fn amount(value: Decimal, currency: Currency) -> anyhow::Result<String> {
    currency.format(value).map_err(|exact| {
        let digits = currency.minor_units();
        anyhow::anyhow!(
            "{exact} {currency} has more digits than the currency's minor unit ({digits})"
        )
    })
}

/// A date as `YYYY-MM-DD` (four-digit years, as the read models key them).
pub fn date(d: jiff::civil::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

/// One value of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Text, amounts and dates: a CSV field as is, a JSON string.
    Text(String),
    /// A count or position: a JSON number.
    Int(u64),
    /// Absent: an empty CSV field, JSON `null`.
    Null,
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Int(n)
    }
}

impl From<Option<String>> for Cell {
    fn from(s: Option<String>) -> Cell {
        s.map_or(Cell::Null, Cell::Text)
    }
}

/// Writes rows with a fixed set of columns, one at a time (nothing is buffered beyond the
/// writer's buffer). CSV: the header row first, then one record per row. JSON: `[`, one object
/// per line (keys in column order, then any JSON-only fields), `]`; `[]` when there is no row.
pub struct Sink<W: Write> {
    columns: Vec<String>,
    out: Out<W>,
    rows: u64,
}

enum Out<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Json(W),
}

impl<W: Write> Sink<W> {
    /// Starts the output (the CSV header row is written at once).
    pub fn new(format: ExportFormat, writer: W, columns: Vec<String>) -> anyhow::Result<Self> {
        let out = match format {
            ExportFormat::Csv => {
                let mut csv =
                    csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(writer);
                csv.write_record(&columns)?;
                Out::Csv(Box::new(csv))
            }
            ExportFormat::Json => Out::Json(writer),
        };
        Ok(Sink { columns, out, rows: 0 })
    }

    /// Writes one row: `cells` in column order; `json_only` fields (name, serialized JSON) are
    /// added to JSON records (nested data, e.g. an invoice's lines) and left out of CSV.
    pub fn row(&mut self, cells: &[Cell], json_only: &[(&str, String)]) -> anyhow::Result<()> {
        anyhow::ensure!(
            cells.len() == self.columns.len(),
            "a row of {} cells for {} columns",
            cells.len(),
            self.columns.len()
        );
        match &mut self.out {
            Out::Csv(csv) => {
                for cell in cells {
                    match cell {
                        Cell::Text(s) => csv.write_field(s)?,
                        Cell::Int(n) => csv.write_field(n.to_string())?,
                        Cell::Null => csv.write_field("")?,
                    }
                }
                csv.write_record(None::<&[u8]>)?;
            }
            Out::Json(w) => {
                w.write_all(if self.rows == 0 { b"[\n{" } else { b",\n{" })?;
                for (i, (key, cell)) in self.columns.iter().zip(cells).enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *w, key)?;
                    w.write_all(b":")?;
                    serde_json::to_writer(&mut *w, &json(cell))?;
                }
                for (key, raw) in json_only {
                    w.write_all(b",")?;
                    serde_json::to_writer(&mut *w, key)?;
                    w.write_all(b":")?;
                    w.write_all(raw.as_bytes())?;
                }
                w.write_all(b"}")?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends the output, flushes it and returns the writer and the number of rows.
    pub fn finish(self) -> anyhow::Result<(W, u64)> {
        let writer = match self.out {
            Out::Csv(csv) => csv.into_inner().map_err(|e| e.into_error())?,
            Out::Json(mut w) => {
                w.write_all(if self.rows == 0 { b"[]\n" } else { b"\n]\n" })?;
                w
            }
        };
        Ok((writer, self.rows))
    }
}

fn json(cell: &Cell) -> serde_json::Value {
    match cell {
        Cell::Text(s) => serde_json::Value::String(s.clone()),
        Cell::Int(n) => serde_json::Value::from(*n),
        Cell::Null => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn amounts_have_exactly_the_minor_unit_digits() {
        for (value, code, expected) in [
            ("12.5", "USD", "12.50"),
            ("12.50", "USD", "12.50"),
            ("12.500000", "USD", "12.50"),
            ("12", "USD", "12.00"),
            ("0", "USD", "0.00"),
            ("0.00", "USD", "0.00"),
            ("-0.00", "USD", "0.00"),
            ("-3.1", "USD", "-3.10"),
            ("0.01", "USD", "0.01"),
            ("-0.01", "EUR", "-0.01"),
            ("1234567890.12", "USD", "1234567890.12"),
            ("1250", "JPY", "1250"),
            ("1250.0", "JPY", "1250"),
            ("-7", "JPY", "-7"),
            ("0", "JPY", "0"),
            ("1.25", "KWD", "1.250"),
            ("0.001", "BHD", "0.001"),
            ("100", "CLF", "100.0000"),
        ] {
            let got = amount(value.parse().unwrap(), cur(code)).unwrap();
            assert_eq!(got, expected, "{value} {code}");
        }
    }

    #[test]
    fn more_digits_than_the_minor_unit_are_refused_not_rounded() {
        for (value, code) in
            [("12.505", "USD"), ("0.001", "EUR"), ("1250.5", "JPY"), ("1.0001", "KWD")]
        {
            let err = amount(value.parse().unwrap(), cur(code)).unwrap_err();
            assert!(err.to_string().contains("minor unit"), "{value} {code}: {err}");
        }
    }

    #[test]
    fn dates_are_iso() {
        assert_eq!(date(jiff::civil::date(2025, 3, 7)), "2025-03-07");
        assert_eq!(date(jiff::civil::date(987, 12, 31)), "0987-12-31");
    }

    fn sink_output(format: ExportFormat, rows: &[Vec<Cell>]) -> String {
        let columns = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let mut sink = Sink::new(format, Vec::new(), columns).unwrap();
        for row in rows {
            sink.row(row, &[]).unwrap();
        }
        let (bytes, n) = sink.finish().unwrap();
        assert_eq!(n, rows.len() as u64);
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn csv_has_a_header_crlf_and_quotes_only_when_needed() {
        let rows = vec![
            vec![Cell::from("x,y"), Cell::Int(7), Cell::Null],
            vec![Cell::from("say \"hi\""), Cell::from("-1.00"), Cell::from("2025-01-31")],
        ];
        assert_eq!(
            sink_output(ExportFormat::Csv, &rows),
            "a,b,c\r\n\"x,y\",7,\r\n\"say \"\"hi\"\"\",-1.00,2025-01-31\r\n"
        );
        assert_eq!(sink_output(ExportFormat::Csv, &[]), "a,b,c\r\n");
    }

    #[test]
    fn json_is_an_array_with_one_record_per_line() {
        let rows = vec![
            vec![Cell::from("x\"y"), Cell::Int(7), Cell::Null],
            vec![Cell::from("z"), Cell::from("-1.00"), Cell::from("2025-01-31")],
        ];
        let text = sink_output(ExportFormat::Json, &rows);
        assert_eq!(
            text,
            "[\n{\"a\":\"x\\\"y\",\"b\":7,\"c\":null},\n{\"a\":\"z\",\"b\":\"-1.00\",\"c\":\"2025-01-31\"}\n]\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert_eq!(sink_output(ExportFormat::Json, &[]), "[]\n");
    }

    #[test]
    fn json_only_fields_follow_the_columns() {
        let columns = vec!["id".to_string()];
        let mut sink = Sink::new(ExportFormat::Json, Vec::new(), columns.clone()).unwrap();
        let lines = r#"[{"amount":"1.00"}]"#.to_string();
        sink.row(&[Cell::from("inv-1")], &[("lines", lines.clone())]).unwrap();
        let text = String::from_utf8(sink.finish().unwrap().0).unwrap();
        assert_eq!(text, "[\n{\"id\":\"inv-1\",\"lines\":[{\"amount\":\"1.00\"}]}\n]\n");
        let mut sink = Sink::new(ExportFormat::Csv, Vec::new(), columns).unwrap();
        sink.row(&[Cell::from("inv-1")], &[("lines", lines)]).unwrap();
        assert_eq!(String::from_utf8(sink.finish().unwrap().0).unwrap(), "id\r\ninv-1\r\n");
        let mut sink = Sink::new(ExportFormat::Csv, Vec::new(), vec!["id".into()]).unwrap();
        assert!(sink.row(&[], &[]).is_err(), "a short row is a bug");
    }
}
