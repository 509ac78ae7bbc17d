//! Parquet output of an export: the same cells as CSV and JSON ([`super::format::Sink`]),
//! typed by their column ([`ColumnType`]) and written in bounded row groups.
//!
//! Types: Text → Utf8; Amount and Decimal → Decimal128(38, s), where s is the largest number
//! of fractional digits among the column's values in the file (found by a first pass over the
//! rows, `super::write`), so a one-currency file holds its currency's scale and values are
//! exact (never rounded: a value that needs more than 38 digits at that scale is an error);
//! Date → Date32; Timestamp → Timestamp(µs, UTC) (digits below the microsecond are cut:
//! instants are for ordering and grouping; the CSV and JSON keep every digit); Int → Int64
//! (signed, which every BI reader takes; a count above i64::MAX is an error). A nullable column
//! is optional; the others are required.
//!
//! Memory: at most [`ROW_GROUP_ROWS_MAX`] rows are held in the column builders, then encoded
//! into one row group (snappy) and written; the writer keeps nothing of earlier row groups but
//! their footer entries.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context as _;
use arrow_array::builder::{
    Date32Builder, Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use rust_decimal::Decimal;

use super::format::{Cell, Column, ColumnType};

/// Rows per row group (64 Ki): the most rows held in memory at once.
pub const ROW_GROUP_ROWS_MAX: usize = 64 * 1024;
/// Digits of a Decimal128 column.
pub const DECIMAL_PRECISION: u8 = 38;
/// Largest unscaled value of a Decimal128(38, _): 10^38 - 1.
const DECIMAL_UNSCALED_MAX: i128 = 10i128.pow(38) - 1;
/// The time zone of instant columns.
const UTC: &str = "UTC";

/// The number of fractional digits of a decimal cell as written (`12.50` → 2, `1250` → 0).
pub fn decimal_scale(text: &str) -> anyhow::Result<u32> {
    Ok(parse_decimal(text)?.scale())
}

fn parse_decimal(text: &str) -> anyhow::Result<Decimal> {
    Decimal::from_str_exact(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is not an exact decimal: {e}"))
}

/// `text` as the unscaled integer of a decimal with `scale` fractional digits: exact, or an
/// error (more digits than `scale`, or more than 38 digits in all).
pub fn unscaled(text: &str, scale: u32) -> anyhow::Result<i128> {
    let d = parse_decimal(text)?;
    anyhow::ensure!(
        d.scale() <= scale,
        "{text} has {} fractional digits, more than the column's {scale} (values are never \
         rounded; did the read model change during the export?)",
        d.scale()
    );
    let factor = 10i128.checked_pow(scale - d.scale());
    let value = factor.and_then(|f| d.mantissa().checked_mul(f));
    match value {
        Some(v) if v.abs() <= DECIMAL_UNSCALED_MAX => Ok(v),
        _ => anyhow::bail!(
            "{text} does not fit a decimal of {DECIMAL_PRECISION} digits with {scale} after \
             the point"
        ),
    }
}

/// Days from 1970-01-01 to a `YYYY-MM-DD` cell.
fn days(text: &str) -> anyhow::Result<i32> {
    let d: jiff::civil::Date = text.parse().with_context(|| format!("{text:?} is not a date"))?;
    let span = jiff::civil::date(1970, 1, 1).until(d)?;
    Ok(span.get_days())
}

/// Microseconds since the Unix epoch of an RFC 3339 cell (digits below the microsecond cut).
fn micros(text: &str) -> anyhow::Result<i64> {
    let t: jiff::Timestamp = text.parse().with_context(|| format!("{text:?} is not an instant"))?;
    Ok(t.as_microsecond())
}

/// One column's values of the current row group.
enum Builder {
    Text(StringBuilder),
    Decimal(Decimal128Builder, u32),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Int(Int64Builder),
}

/// One typed value of a row, checked before any builder takes the row.
enum Value<'a> {
    Text(&'a str),
    Decimal(i128),
    Date(i32),
    Timestamp(i64),
    Int(i64),
    Null,
}

impl Builder {
    fn new(column: &Column, scale: u32, capacity: usize) -> anyhow::Result<Builder> {
        Ok(match column.ty {
            ColumnType::Text => {
                Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnType::Amount | ColumnType::Decimal => {
                let b = Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(DECIMAL_PRECISION, decimal_scale_i8(scale)?)?;
                Builder::Decimal(b, scale)
            }
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamp => Builder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(UTC),
            ),
            ColumnType::Int => Builder::Int(Int64Builder::with_capacity(capacity)),
        })
    }

    fn value<'a>(&self, cell: &'a Cell) -> anyhow::Result<Value<'a>> {
        Ok(match (self, cell) {
            (_, Cell::Null) => Value::Null,
            (Builder::Text(_), Cell::Text(s)) => Value::Text(s),
            (Builder::Decimal(_, scale), Cell::Text(s)) => Value::Decimal(unscaled(s, *scale)?),
            (Builder::Date(_), Cell::Text(s)) => Value::Date(days(s)?),
            (Builder::Timestamp(_), Cell::Text(s)) => Value::Timestamp(micros(s)?),
            (Builder::Int(_), Cell::Int(n)) => Value::Int(
                i64::try_from(*n).map_err(|_| anyhow::anyhow!("{n} is above Int64's range"))?,
            ),
            (_, Cell::Text(s)) => anyhow::bail!("{s:?} is text where a number is expected"),
            (_, Cell::Int(n)) => anyhow::bail!("{n} is a number where text is expected"),
        })
    }

    fn append(&mut self, value: Value<'_>) {
        match (self, value) {
            (Builder::Text(b), Value::Text(s)) => b.append_value(s),
            (Builder::Decimal(b, _), Value::Decimal(v)) => b.append_value(v),
            (Builder::Date(b), Value::Date(d)) => b.append_value(d),
            (Builder::Timestamp(b), Value::Timestamp(t)) => b.append_value(t),
            (Builder::Int(b), Value::Int(n)) => b.append_value(n),
            (Builder::Text(b), _) => b.append_null(),
            (Builder::Decimal(b, _), _) => b.append_null(),
            (Builder::Date(b), _) => b.append_null(),
            (Builder::Timestamp(b), _) => b.append_null(),
            (Builder::Int(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Decimal(b, _) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
        }
    }
}

fn decimal_scale_i8(scale: u32) -> anyhow::Result<i8> {
    match i8::try_from(scale) {
        Ok(s) if u32::from(DECIMAL_PRECISION) >= scale => Ok(s),
        _ => anyhow::bail!("a scale of {scale} is more than {DECIMAL_PRECISION} digits"),
    }
}

/// The Arrow schema of `columns` with the decimal `scales`.
pub fn schema(columns: &[Column], scales: &[u32]) -> anyhow::Result<Schema> {
    anyhow::ensure!(
        scales.len() == columns.len(),
        "{} scales for {} columns (did the read model change during the export?)",
        scales.len(),
        columns.len()
    );
    let mut fields = Vec::with_capacity(columns.len());
    for (c, scale) in columns.iter().zip(scales) {
        let ty = match c.ty {
            ColumnType::Text => DataType::Utf8,
            ColumnType::Amount | ColumnType::Decimal => {
                DataType::Decimal128(DECIMAL_PRECISION, decimal_scale_i8(*scale)?)
            }
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            ColumnType::Int => DataType::Int64,
        };
        fields.push(Field::new(c.name.as_ref(), ty, c.nullable));
    }
    Ok(Schema::new(fields))
}

/// A Parquet file being written: the current row group's builders and the file writer.
pub struct ParquetOut<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    columns: Vec<Column>,
    builders: Vec<Builder>,
    buffered_rows: usize,
    row_group_rows_max: usize,
}

impl<W: Write + Send> ParquetOut<W> {
    /// Starts a file of `columns` with the decimal `scales` (one per column; 0 for the others),
    /// file-level key-value `metadata`, and row groups of at most `row_group_rows_max` rows.
    pub fn new(
        writer: W,
        columns: &[Column],
        scales: &[u32],
        metadata: &[(String, String)],
        row_group_rows_max: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(row_group_rows_max > 0, "a row group holds at least one row");
        let schema = Arc::new(schema(columns, scales)?);
        let metadata = metadata.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group_rows_max))
            .set_key_value_metadata(Some(metadata))
            .set_created_by(format!("accrual {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(writer, schema.clone(), Some(props))?;
        let capacity = row_group_rows_max.min(1024);
        let builders = columns
            .iter()
            .zip(scales)
            .map(|(c, s)| Builder::new(c, *s, capacity))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ParquetOut {
            writer,
            schema,
            columns: columns.to_vec(),
            builders,
            buffered_rows: 0,
            row_group_rows_max,
        })
    }

    /// Adds one row (cells in column order); a full row group is written out.
    pub fn push(&mut self, cells: &[Cell]) -> anyhow::Result<()> {
        anyhow::ensure!(cells.len() == self.builders.len(), "a row of {} cells", cells.len());
        let mut values = Vec::with_capacity(cells.len());
        for ((builder, cell), column) in self.builders.iter().zip(cells).zip(&self.columns) {
            values.push(builder.value(cell).with_context(|| format!("column {}", column.name))?);
        }
        for (builder, value) in self.builders.iter_mut().zip(values) {
            builder.append(value);
        }
        self.buffered_rows += 1;
        if self.buffered_rows >= self.row_group_rows_max {
            self.write_row_group()?;
        }
        Ok(())
    }

    fn write_row_group(&mut self) -> anyhow::Result<()> {
        if self.buffered_rows == 0 {
            return Ok(());
        }
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        self.writer.flush()?;
        self.buffered_rows = 0;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.write_row_group()?;
        Ok(self.writer.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::format::{col, opt, Output, Sink};
    use arrow_array::{Array, Date32Array, Decimal128Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn unscaled_values_are_exact_at_the_scale_or_refused() {
        for (text, scale, expected) in [
            ("12.50", 2, 1250),
            ("12.5", 2, 1250),
            ("-0.01", 2, -1),
            ("1250", 0, 1250),
            ("1250", 3, 1_250_000),
            ("1.250", 3, 1250),
            ("0", 28, 0),
            (
                "79228162514264337593543950335",
                9,
                79_228_162_514_264_337_593_543_950_335_000_000_000,
            ),
        ] {
            assert_eq!(unscaled(text, scale).unwrap(), expected, "{text} at {scale}");
        }
        for (text, scale, why) in [
            ("12.505", 2, "fractional digits"),
            ("0.1", 0, "fractional digits"),
            ("79228162514264337593543950335", 10, "38 digits"),
            ("-79228162514264337593543950335", 28, "38 digits"),
            ("1e3", 2, "exact decimal"),
            ("", 2, "exact decimal"),
            ("0.12345678901234567890123456789", 28, "exact decimal"),
        ] {
            let err = unscaled(text, scale).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?} at {scale}: {err}");
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            col("id", ColumnType::Text),
            col("currency", ColumnType::Text),
            col("amount", ColumnType::Amount),
            opt("units", ColumnType::Decimal),
            col("date", ColumnType::Date),
            col("at", ColumnType::Timestamp),
            opt("count", ColumnType::Int),
        ]
    }

    fn row(
        id: &str,
        cur: &str,
        amount: &str,
        units: Option<&str>,
        count: Option<u64>,
    ) -> Vec<Cell> {
        vec![
            Cell::from(id),
            Cell::from(cur),
            Cell::from(amount),
            units.map_or(Cell::Null, Cell::from),
            Cell::from("2025-03-07"),
            Cell::from("2025-03-07T12:00:00.123456789Z"),
            count.map_or(Cell::Null, Cell::Int),
        ]
    }

    /// What a written file reads back as: its batches, row groups and key-value metadata.
    type ReadBack = (Vec<RecordBatch>, usize, Vec<(String, String)>);

    /// Both passes through the sink, as `export::write` does, into a file; read back.
    fn write_and_read(rows: &[Vec<Cell>], row_group_rows_max: usize) -> anyhow::Result<ReadBack> {
        let (scan, scales) = Output::scan(None);
        let mut sink = Sink::new(&scan, std::io::sink(), columns())?;
        for r in rows {
            sink.row(r, &[])?;
        }
        sink.finish()?;
        let metadata = vec![("accrual.export_kind".to_string(), "test".to_string())];
        let scales = scales.borrow().clone();
        let mut output = Output::parquet(scales, metadata, None);
        if let crate::export::format::Target::Parquet { row_group_rows_max: max, .. } =
            &mut output.target
        {
            *max = row_group_rows_max;
        }
        let file = tempfile::tempfile()?;
        let mut sink = Sink::new(&output, file, columns())?;
        for r in rows {
            sink.row(r, &[])?;
        }
        let (file, n) = sink.finish()?;
        assert_eq!(n as usize, rows.len());
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let groups = builder.metadata().num_row_groups();
        let kv =
            builder.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
        let kv = kv
            .into_iter()
            .filter(|k| !k.key.starts_with("ARROW:"))
            .map(|k| (k.key, k.value.unwrap_or_default()))
            .collect();
        let batches = builder.build()?.collect::<Result<Vec<_>, _>>()?;
        Ok((batches, groups, kv))
    }

    fn decimal(batch: &RecordBatch, i: usize) -> &Decimal128Array {
        batch.column(i).as_any().downcast_ref().unwrap()
    }

    #[test]
    fn scale_is_the_largest_fraction_in_the_file_and_values_are_exact() {
        // (amounts, expected scale of `amount`, their unscaled values at it)
        for (amounts, scale, unscaled) in [
            (vec![("USD", "12.50"), ("USD", "-0.01")], 2, vec![1250, -1]),
            (vec![("JPY", "1250"), ("JPY", "7")], 0, vec![1250, 7]),
            (vec![("KWD", "1.250")], 3, vec![1250]),
            (
                vec![("USD", "12.50"), ("JPY", "1250"), ("KWD", "0.125")],
                3,
                vec![12500, 1250000, 125],
            ),
        ] {
            let rows: Vec<Vec<Cell>> =
                amounts.iter().map(|(c, a)| row("x", c, a, Some("1.5"), Some(3))).collect();
            let (batches, _, kv) = write_and_read(&rows, 1024).unwrap();
            assert_eq!(kv, vec![("accrual.export_kind".to_string(), "test".to_string())]);
            let batch = &batches[0];
            let field = batch.schema().field(2).clone();
            assert_eq!(field.data_type(), &DataType::Decimal128(38, scale as i8), "{amounts:?}");
            assert!(!field.is_nullable());
            let got: Vec<i128> = decimal(batch, 2).iter().map(|v| v.unwrap()).collect();
            assert_eq!(got, unscaled, "{amounts:?}");
            assert_eq!(batch.schema().field(3).data_type(), &DataType::Decimal128(38, 1));
            assert_eq!(batch.schema().field(4).data_type(), &DataType::Date32);
            let date: &Date32Array = batch.column(4).as_any().downcast_ref().unwrap();
            assert_eq!(date.value(0), 20154, "2025-03-07 is day 20154 since 1970-01-01");
            assert_eq!(
                batch.schema().field(5).data_type(),
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            );
        }
    }

    #[test]
    fn null_cells_are_parquet_nulls_in_nullable_columns() {
        let rows =
            vec![row("a", "USD", "1.00", None, None), row("b", "USD", "2.00", Some("7"), Some(4))];
        let (batches, _, _) = write_and_read(&rows, 1024).unwrap();
        let batch = &batches[0];
        assert!(batch.schema().field(3).is_nullable() && batch.schema().field(6).is_nullable());
        assert!(decimal(batch, 3).is_null(0) && !decimal(batch, 3).is_null(1));
        assert_eq!(decimal(batch, 3).value(1), 7, "units 7 at scale 0 (the only value)");
        let counts: &Int64Array = batch.column(6).as_any().downcast_ref().unwrap();
        assert!(counts.is_null(0));
        assert_eq!(counts.value(1), 4);
        let ids: &StringArray = batch.column(0).as_any().downcast_ref().unwrap();
        assert_eq!((ids.value(0), ids.value(1)), ("a", "b"));
    }

    #[test]
    fn overflow_and_bad_cells_are_errors_naming_the_column() {
        // 29 digits at scale 10 (another row's scale) need 39: refused, not rounded.
        let rows = vec![
            row("a", "USD", "79228162514264337593543950335", None, None),
            row("b", "USD", "0.0000000001", None, None),
        ];
        let err = format!("{:#}", write_and_read(&rows, 1024).unwrap_err());
        assert!(err.contains("column amount") && err.contains("38 digits"), "{err}");
        let mut bad_date = row("a", "USD", "1.00", None, None);
        bad_date[4] = Cell::from("2025-02-30");
        let err = format!("{:#}", write_and_read(&[bad_date], 1024).unwrap_err());
        assert!(err.contains("column date"), "{err}");
        let mut too_big = row("a", "USD", "1.00", None, None);
        too_big[6] = Cell::Int(u64::MAX);
        let err = format!("{:#}", write_and_read(&[too_big], 1024).unwrap_err());
        assert!(err.contains("column count") && err.contains("Int64"), "{err}");
    }

    #[test]
    fn rows_are_written_in_bounded_row_groups() {
        for (rows, max, groups) in
            [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (9, 4, 3), (10, 1, 10)]
        {
            let data: Vec<Vec<Cell>> = (0..rows)
                .map(|i| row(&format!("r{i}"), "USD", &format!("{i}.00"), None, Some(i)))
                .collect();
            let (batches, got, _) = write_and_read(&data, max).unwrap();
            assert_eq!(got, groups, "{rows} rows in groups of {max}");
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(n, rows as usize);
            let sum: i128 =
                batches.iter().flat_map(|b| decimal(b, 2).iter().map(|v| v.unwrap())).sum();
            assert_eq!(sum, (0..rows as i128).map(|i| i * 100).sum::<i128>());
        }
    }
}
