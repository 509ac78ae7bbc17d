"""Reads Parquet exports of `accrual export` with pyarrow and with DuckDB (tests/export_parquet.rs).

Usage: read.py FILE.parquet...

For each file, one line `RESULT {json}`: the file's row count, its key-value metadata, and per
column the Arrow type (pyarrow), the DuckDB type, the null count, and for each decimal column its
sum by pyarrow and by DuckDB as exact decimal strings (decimal.Decimal, never a float). The two
readers are compared by the Rust side, with the CSV of the same export.
"""

import json
import sys

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def read(path):
    table = pq.read_table(path)
    meta = pq.read_metadata(path)
    kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items() if not k.startswith(b"ARROW:")}
    columns = {}
    con = duckdb.connect()
    described = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()
    duck_types = {row[0]: row[1] for row in described}
    (duck_rows,) = con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()
    for field in table.schema:
        column = table.column(field.name)
        info = {
            "arrow_type": str(field.type),
            "nullable": field.nullable,
            "nulls": column.null_count,
            "duckdb_type": duck_types[field.name],
        }
        if pa.types.is_decimal(field.type):
            total = pc.sum(column).as_py()
            info["arrow_sum"] = None if total is None else str(total)
            quoted = '"' + field.name.replace('"', '""') + '"'
            (duck_sum,) = con.execute(f"SELECT sum({quoted}) FROM read_parquet(?)", [path]).fetchone()
            info["duckdb_sum"] = None if duck_sum is None else str(duck_sum)
        columns[field.name] = info
    return {
        "file": path,
        "rows": table.num_rows,
        "duckdb_rows": duck_rows,
        "row_groups": meta.num_row_groups,
        "metadata": kv,
        "column_order": [f.name for f in table.schema],
        "columns": columns,
    }


def main():
    for path in sys.argv[1:]:
        print("RESULT " + json.dumps(read(path)), flush=True)


if __name__ == "__main__":
    main()
