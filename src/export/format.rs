//! How exported values are written: amounts at the currency's minor unit, the columns of an
//! export (name, type, nullability), and a sink that writes rows as CSV (RFC 4180), as a JSON
//! array with one record per line, or as Parquet (`super::parquet`), all from the same cells.
//! The sink also filters rows on `--currency`, once for every kind.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use domain::money::Currency;
use rust_decimal::Decimal;

use super::parquet::{decimal_scale, ParquetOut, ROW_GROUP_ROWS_MAX};

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

/// What a column holds. CSV and JSON write every cell as its text (or number); Parquet types
/// the column by it (`super::parquet`): Text → Utf8, Amount and Decimal → Decimal128(38, s),
/// Date → Date32, Timestamp → Timestamp(µs, UTC), Int → Int64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    /// Money: exactly its currency's minor-unit digits (the row's `currency` column).
    Amount,
    /// Any other exact decimal (a tax rate, units).
    Decimal,
    /// `YYYY-MM-DD`.
    Date,
    /// An RFC 3339 instant in UTC.
    Timestamp,
    /// A count or a position.
    Int,
}

/// One column of an export: its name, what it holds, and whether a row may leave it empty
/// (an empty CSV field, JSON null, Parquet null).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: Cow<'static, str>,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// A column no row leaves empty.
pub const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name: Cow::Borrowed(name), ty, nullable: false }
}

/// A column a row may leave empty ([`Cell::Null`]).
pub const fn opt(name: &'static str, ty: ColumnType) -> Column {
    Column { name: Cow::Borrowed(name), ty, nullable: true }
}

/// The column called `name` (a name made at run time, e.g. a waterfall month).
pub fn named(name: String, ty: ColumnType) -> Column {
    Column { name: Cow::Owned(name), ty, nullable: false }
}

/// The largest number of fractional digits of each decimal column (0 for other columns), as a
/// first pass over the rows finds them for the Parquet schema.
pub type Scales = Rc<RefCell<Vec<u32>>>;

/// Where a [`Sink`]'s rows go.
#[derive(Clone, Debug)]
pub enum Target {
    Csv,
    Json,
    /// Nothing is written: the decimal columns' scales are recorded (the first of Parquet's
    /// two passes).
    Scan(Scales),
    /// Parquet with the scales a [`Target::Scan`] of the same rows found, and file-level
    /// key-value metadata.
    Parquet {
        scales: Vec<u32>,
        metadata: Vec<(String, String)>,
        row_group_rows_max: usize,
    },
}

/// How an export writes its rows: the target, and the currency rows must have to be kept
/// (`--currency`; the rows' `currency` column).
#[derive(Clone, Debug)]
pub struct Output {
    pub target: Target,
    pub currency: Option<Currency>,
}

impl Output {
    pub fn new(target: Target, currency: Option<Currency>) -> Output {
        Output { target, currency }
    }

    /// A first pass that records the decimal columns' scales.
    pub fn scan(currency: Option<Currency>) -> (Output, Scales) {
        let scales = Scales::default();
        (Output::new(Target::Scan(scales.clone()), currency), scales)
    }

    /// Parquet with `scales` (from [`Output::scan`]) and `metadata`, in row groups of at most
    /// [`ROW_GROUP_ROWS_MAX`] rows.
    pub fn parquet(
        scales: Vec<u32>,
        metadata: Vec<(String, String)>,
        currency: Option<Currency>,
    ) -> Output {
        let row_group_rows_max = ROW_GROUP_ROWS_MAX;
        Output::new(Target::Parquet { scales, metadata, row_group_rows_max }, currency)
    }
}

/// Writes rows with a fixed set of columns, one at a time (nothing is buffered beyond the
/// writer's buffer, or one Parquet row group). CSV: the header row first, then one record per
/// row. JSON: `[`, one object per line (keys in column order, then any JSON-only fields), `]`;
/// `[]` when there is no row. Rows of another currency than [`Output::currency`] are skipped.
pub struct Sink<W: Write + Send> {
    columns: Vec<Column>,
    out: Out<W>,
    rows: u64,
    /// The `currency` column's index and the code to keep.
    keep: Option<(usize, &'static str)>,
}

enum Out<W: Write + Send> {
    Csv(Box<csv::Writer<W>>),
    Json(W),
    Scan { writer: W, scales: Scales, found: Vec<u32> },
    Parquet(Box<ParquetOut<W>>),
}

impl<W: Write + Send> Sink<W> {
    /// Starts the output (the CSV header row is written at once).
    pub fn new(output: &Output, writer: W, columns: Vec<Column>) -> anyhow::Result<Self> {
        let keep = match output.currency {
            None => None,
            Some(cur) => {
                let index = columns.iter().position(|c| c.name == "currency");
                let index = index.ok_or_else(|| {
                    anyhow::anyhow!("this export has no currency column to filter on")
                })?;
                Some((index, cur.code()))
            }
        };
        let out = match &output.target {
            Target::Csv => {
                let mut csv =
                    csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(writer);
                csv.write_record(columns.iter().map(|c| c.name.as_ref()))?;
                Out::Csv(Box::new(csv))
            }
            Target::Json => Out::Json(writer),
            Target::Scan(scales) => {
                Out::Scan { writer, scales: scales.clone(), found: vec![0; columns.len()] }
            }
            Target::Parquet { scales, metadata, row_group_rows_max } => {
                let out = ParquetOut::new(writer, &columns, scales, metadata, *row_group_rows_max)?;
                Out::Parquet(Box::new(out))
            }
        };
        Ok(Sink { columns, out, rows: 0, keep })
    }

    /// Writes one row: `cells` in column order; `json_only` fields (name, serialized JSON) are
    /// added to JSON records (nested data, e.g. an invoice's lines) and left out of CSV and
    /// Parquet. A row of another currency than the one kept is skipped.
    pub fn row(&mut self, cells: &[Cell], json_only: &[(&str, String)]) -> anyhow::Result<()> {
        anyhow::ensure!(
            cells.len() == self.columns.len(),
            "a row of {} cells for {} columns",
            cells.len(),
            self.columns.len()
        );
        if let Some((index, code)) = self.keep {
            if !matches!(&cells[index], Cell::Text(c) if c == code) {
                return Ok(());
            }
        }
        for (column, cell) in self.columns.iter().zip(cells) {
            if matches!(cell, Cell::Null) && !column.nullable {
                anyhow::bail!("column {} has no value (it is never empty)", column.name);
            }
        }
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
                for (i, (column, cell)) in self.columns.iter().zip(cells).enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *w, column.name.as_ref())?;
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
            Out::Scan { found, .. } => {
                for ((column, cell), scale) in self.columns.iter().zip(cells).zip(found.iter_mut())
                {
                    if let (ColumnType::Amount | ColumnType::Decimal, Cell::Text(text)) =
                        (column.ty, cell)
                    {
                        let s = decimal_scale(text)
                            .map_err(|e| anyhow::anyhow!("column {}: {e}", column.name))?;
                        *scale = (*scale).max(s);
                    }
                }
            }
            Out::Parquet(parquet) => parquet.push(cells)?,
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
            Out::Scan { writer, scales, found } => {
                *scales.borrow_mut() = found;
                writer
            }
            Out::Parquet(parquet) => parquet.finish()?,
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

    fn text_columns(names: &[&'static str]) -> Vec<Column> {
        names.iter().map(|n| opt(n, ColumnType::Text)).collect()
    }

    fn plain(target: Target) -> Output {
        Output::new(target, None)
    }

    fn sink_output(format: Target, rows: &[Vec<Cell>]) -> String {
        let columns = text_columns(&["a", "b", "c"]);
        let mut sink = Sink::new(&plain(format), Vec::new(), columns).unwrap();
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
            sink_output(Target::Csv, &rows),
            "a,b,c\r\n\"x,y\",7,\r\n\"say \"\"hi\"\"\",-1.00,2025-01-31\r\n"
        );
        assert_eq!(sink_output(Target::Csv, &[]), "a,b,c\r\n");
    }

    #[test]
    fn json_is_an_array_with_one_record_per_line() {
        let rows = vec![
            vec![Cell::from("x\"y"), Cell::Int(7), Cell::Null],
            vec![Cell::from("z"), Cell::from("-1.00"), Cell::from("2025-01-31")],
        ];
        let text = sink_output(Target::Json, &rows);
        assert_eq!(
            text,
            "[\n{\"a\":\"x\\\"y\",\"b\":7,\"c\":null},\n{\"a\":\"z\",\"b\":\"-1.00\",\"c\":\"2025-01-31\"}\n]\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert_eq!(sink_output(Target::Json, &[]), "[]\n");
    }

    #[test]
    fn json_only_fields_follow_the_columns() {
        let columns = text_columns(&["id"]);
        let mut sink = Sink::new(&plain(Target::Json), Vec::new(), columns.clone()).unwrap();
        let lines = r#"[{"amount":"1.00"}]"#.to_string();
        sink.row(&[Cell::from("inv-1")], &[("lines", lines.clone())]).unwrap();
        let text = String::from_utf8(sink.finish().unwrap().0).unwrap();
        assert_eq!(text, "[\n{\"id\":\"inv-1\",\"lines\":[{\"amount\":\"1.00\"}]}\n]\n");
        let mut sink = Sink::new(&plain(Target::Csv), Vec::new(), columns).unwrap();
        sink.row(&[Cell::from("inv-1")], &[("lines", lines)]).unwrap();
        assert_eq!(String::from_utf8(sink.finish().unwrap().0).unwrap(), "id\r\ninv-1\r\n");
        let mut sink = Sink::new(&plain(Target::Csv), Vec::new(), text_columns(&["id"])).unwrap();
        assert!(sink.row(&[], &[]).is_err(), "a short row is a bug");
    }

    fn currency_rows() -> Vec<Vec<Cell>> {
        [("a", "USD", "1.00"), ("b", "JPY", "100"), ("c", "USD", "2.50"), ("d", "KWD", "0.125")]
            .into_iter()
            .map(|(id, cur, amount)| vec![Cell::from(id), Cell::from(cur), Cell::from(amount)])
            .collect()
    }

    fn currency_columns() -> Vec<Column> {
        vec![
            col("id", ColumnType::Text),
            col("currency", ColumnType::Text),
            col("amount", ColumnType::Amount),
        ]
    }

    #[test]
    fn currency_keeps_the_rows_of_one_currency_in_every_format() {
        for (code, ids) in [("USD", "a,c"), ("JPY", "b"), ("KWD", "d"), ("EUR", "")] {
            let output = Output::new(Target::Csv, Some(cur(code)));
            let mut sink = Sink::new(&output, Vec::new(), currency_columns()).unwrap();
            for row in currency_rows() {
                sink.row(&row, &[]).unwrap();
            }
            let (bytes, n) = sink.finish().unwrap();
            let text = String::from_utf8(bytes).unwrap();
            let kept: Vec<&str> = text.lines().skip(1).map(|l| &l[..1]).collect();
            assert_eq!(kept.join(","), ids, "{code}");
            assert_eq!(n as usize, kept.len(), "{code}: rows counts kept rows only");
            // The scan of the first Parquet pass sees the same rows: one currency's scale.
            let (output, scales) = Output::scan(Some(cur(code)));
            let mut sink = Sink::new(&output, std::io::sink(), currency_columns()).unwrap();
            for row in currency_rows() {
                sink.row(&row, &[]).unwrap();
            }
            assert_eq!(sink.finish().unwrap().1 as usize, kept.len());
            let expected = if ids.is_empty() { 0 } else { cur(code).minor_units() };
            assert_eq!(scales.borrow().clone(), vec![0, 0, expected], "{code}");
        }
        let (output, scales) = Output::scan(None);
        let mut sink = Sink::new(&output, std::io::sink(), currency_columns()).unwrap();
        for row in currency_rows() {
            sink.row(&row, &[]).unwrap();
        }
        sink.finish().unwrap();
        assert_eq!(scales.borrow().clone(), vec![0, 0, 3], "all currencies: KWD's 3 places");
    }

    #[test]
    fn a_currency_filter_needs_a_currency_column_and_null_needs_a_nullable_column() {
        let output = Output::new(Target::Csv, Some(cur("USD")));
        let err = Sink::new(&output, Vec::new(), text_columns(&["id"])).err().unwrap();
        assert!(err.to_string().contains("no currency column"), "{err}");
        let mut sink =
            Sink::new(&plain(Target::Csv), Vec::new(), vec![col("id", ColumnType::Text)]).unwrap();
        let err = sink.row(&[Cell::Null], &[]).unwrap_err();
        assert!(err.to_string().contains("never empty"), "{err}");
    }
}
