#!/usr/bin/env python3
"""Convert a Lago export into an `accrual import` JSON Lines file (docs/import.md).

Input: a directory with Lago API responses, one JSON document per file, as
`GET /api/v1/<resource>` returns them: billable_metrics.json ({"billable_metrics": [...]}),
plans.json ({"plans": [...]}), customers.json ({"customers": [...]}), subscriptions.json
({"subscriptions": [...]}) and, optionally, events.json ({"events": [...]}).
Output: JSON Lines on stdout, in the order the import needs (metrics, plans, customers,
subscriptions, usage). Standard library only.

Mapping: ids are Lago's `external_id`s (`code`s for metrics and plans); `amount_cents` becomes
a decimal string in the plan's currency (minor units by ISO 4217: 0 for JPY/KRW/..., 3 for
BHD/KWD/..., else 2); `pay_in_advance` becomes `fee_timing`; `trial_period` days;
`billing_time` the anchor; charge models standard, graduated, volume, package, percentage and
graduated_percentage map one to one (Lago's inclusive `to_value` is Accrual's `up_to`). What
has no counterpart (Lago's `dynamic`, `custom` or `graduated` with `prorated`, filters and
grouped properties, minimum per charge) is reported on stderr and the record is skipped.

Usage: scripts/lago-to-accrual.py EXPORT_DIR > history.jsonl
"""
import json
import sys
from decimal import Decimal
from pathlib import Path

ZERO_DECIMALS = {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
                 "VND", "VUV", "XAF", "XOF", "XPF"}
THREE_DECIMALS = {"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"}
AGGREGATIONS = {"count_agg": "count", "sum_agg": "sum", "max_agg": "max",
                "unique_count_agg": "unique_count", "latest_agg": "latest",
                "weighted_sum_agg": "weighted_sum"}
INTERVALS = {"weekly", "monthly", "quarterly", "semiannual", "yearly"}


def load(directory, name):
    path = Path(directory) / f"{name}.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())[name]


def money(cents, currency):
    digits = 0 if currency in ZERO_DECIMALS else 3 if currency in THREE_DECIMALS else 2
    return str((Decimal(int(cents)) / (Decimal(10) ** digits)).quantize(Decimal(1).scaleb(-digits)))


def skip(what, why):
    print(f"skipped {what}: {why}", file=sys.stderr)


def tiers(ranges, price_key):
    out = []
    for r in ranges:
        tier = {"up_to": "" if r.get("to_value") is None else str(r["to_value"]),
                "unit_price": str(r.get(price_key) or "0")}
        if r.get("flat_amount") not in (None, "0", 0):
            tier["flat_fee"] = str(r["flat_amount"])
        out.append(tier)
    return out


def charge(c):
    model, p = c["charge_model"], c.get("properties") or {}
    out = {"metric_code": c["billable_metric_code"], "model": model,
           "pay_in_advance": bool(c.get("pay_in_advance"))}
    if c.get("filters") or p.get("grouped_by"):
        return None, "filters and grouped properties have no counterpart"
    if model == "standard":
        out["unit_price"] = str(p["amount"])
    elif model == "graduated":
        out["tiers"] = tiers(p["graduated_ranges"], "per_unit_amount")
    elif model == "volume":
        out["tiers"] = tiers(p["volume_ranges"], "per_unit_amount")
    elif model == "graduated_percentage":
        out["tiers"] = tiers(p["graduated_percentage_ranges"], "rate")
    elif model == "package":
        out.update(package_size=str(p["package_size"]), package_price=str(p["amount"]),
                   free_units=str(p.get("free_units") or "0"))
    elif model == "percentage":
        out.update(rate=str(p["rate"]), fixed_amount=str(p.get("fixed_amount") or "0"))
        if p.get("free_units_per_events") is not None:
            out["free_events"] = int(p["free_units_per_events"])
        if p.get("free_units_per_total_aggregation") is not None:
            out["free_amount"] = str(p["free_units_per_total_aggregation"])
        if p.get("per_transaction_min_amount") is not None:
            out["min_per_event"] = str(p["per_transaction_min_amount"])
        if p.get("per_transaction_max_amount") is not None:
            out["max_per_event"] = str(p["per_transaction_max_amount"])
    else:
        return None, f"charge model {model!r} has no counterpart"
    if c.get("min_amount_cents"):
        return None, "a minimum per charge has no counterpart"
    return out, None


def main(directory):
    emit = lambda record: print(json.dumps(record))
    for m in load(directory, "billable_metrics"):
        agg = AGGREGATIONS.get(m["aggregation_type"])
        if agg is None:
            skip(f"metric {m['code']}", f"aggregation {m['aggregation_type']!r}")
            continue
        record = {"type": "metric", "code": m["code"], "name": m["name"], "aggregation": agg}
        if m.get("field_name"):
            record["property"] = m["field_name"]
        emit(record)
    for p in load(directory, "plans"):
        if p["interval"] not in INTERVALS:
            skip(f"plan {p['code']}", f"interval {p['interval']!r}")
            continue
        charges, why = [], None
        for c in p.get("charges") or []:
            converted, why = charge(c)
            if converted is None:
                break
            charges.append(converted)
        if why:
            skip(f"plan {p['code']}", why)
            continue
        currency = p["amount_currency"]
        emit({"type": "plan", "code": p["code"], "name": p["name"], "currency": currency,
              "interval": p["interval"], "base_fee": money(p["amount_cents"], currency),
              "fee_timing": "advance" if p.get("pay_in_advance") else "arrears",
              "trial_days": int(p.get("trial_period") or 0), "charges": charges})
    for c in load(directory, "customers"):
        record = {"type": "customer", "customer_id": c["external_id"], "name": c.get("name") or c["external_id"],
                  "currency": c["currency"], "time_zone": c.get("timezone") or "UTC"}
        taxes = c.get("taxes") or []
        record["tax_rate"] = str(sum(Decimal(str(t["rate"])) for t in taxes)) if taxes else "0"
        emit(record)
    for s in load(directory, "subscriptions"):
        if s.get("status") not in (None, "active", "pending"):
            skip(f"subscription {s['external_id']}", f"status {s.get('status')!r}")
            continue
        start = (s.get("started_at") or s.get("subscription_at"))[:10]
        emit({"type": "subscription", "subscription_id": s["external_id"],
              "customer_id": s["external_customer_id"], "plan_code": s["plan_code"],
              "billing_anchor": "calendar" if s.get("billing_time") == "calendar" else "anniversary",
              "start_date": start})
    for e in load(directory, "events"):
        ts = e["timestamp"]
        if isinstance(ts, (int, float)) or str(ts).replace(".", "", 1).isdigit():
            from datetime import datetime, timezone
            ts = datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat().replace("+00:00", "Z")
        emit({"type": "usage", "subscription_id": e["external_subscription_id"],
              "transaction_id": e["transaction_id"], "metric_code": e["code"],
              "occurred_at": ts, "properties": e.get("properties") or {}})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
