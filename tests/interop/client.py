#!/usr/bin/env python3
"""A Python grpcio client of a running Accrual server: the interop test of tests/interop.rs.

Generates the Python stubs from proto/ with grpcio-tools into a temporary directory, then
drives the server at ADDRESS: health and reflection, commands, a client-streaming and a bidi
usage batch with per-item results, read-your-writes queries, and errors whose google.rpc
details it decodes with grpcio-status. Every check prints one line; the first mismatch exits
with status 1. On success the last line is `RESULT {json}` for the Rust side to verify.

Usage: python client.py --address 127.0.0.1:50051 --proto-dir proto
With access control on, the bearer token comes from ACCRUAL_TOKEN (or --token); it then also
checks that a call without it is UNAUTHENTICATED.
Needs a data dir of its own: the ids it writes (py-acme, py-sub-1, ...) must be new.
"""

from __future__ import annotations

import argparse
import calendar
import importlib
import importlib.resources
import json
import os
import sys
import tempfile
import time
from datetime import date, datetime, time as clock_time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

RPC_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 30.0
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT

# Filled by generate_stubs(): the modules grpcio-tools generated from proto/accrual/v1.
pb: dict[str, Any] = {}


class Mismatch(Exception):
    """A check that failed: what was expected and what came back."""


class Checks:
    """Counts and prints the checks; raises Mismatch on the first failure."""

    def __init__(self) -> None:
        self.passed = 0

    def that(self, condition: bool, what: str, got: Any = None) -> None:
        if not condition:
            raise Mismatch(f"{what}: got {got!r}")
        self.passed += 1
        print(f"ok {self.passed:>2} {what}", flush=True)

    def equal(self, got: Any, want: Any, what: str) -> None:
        self.that(got == want, f"{what} == {want!r}", got)


def generate_stubs(proto_dir: Path, out_dir: Path) -> None:
    """grpcio-tools' protoc: accrual/v1/*.proto to *_pb2.py and *_pb2_grpc.py in out_dir."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.glob("accrual/v1/*.proto"))
    if not protos:
        raise Mismatch(f"no accrual/v1/*.proto under {proto_dir}")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise Mismatch(f"grpc_tools.protoc failed on {protos}")
    sys.path.insert(0, str(out_dir))
    for name in ("common", "command", "query"):
        pb[name] = importlib.import_module(f"accrual.v1.{name}_pb2")
        pb[f"{name}_grpc"] = importlib.import_module(f"accrual.v1.{name}_pb2_grpc")
    print(f"generated stubs for {', '.join(protos)}", flush=True)


def dec(text: str) -> Decimal:
    return Decimal(text)


def timestamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=0)


def refused(call: Callable[..., Any], request: Any, code: grpc.StatusCode) -> status_pb2.Status:
    """Calls and expects `code`; returns the google.rpc.Status decoded by grpcio-status."""
    try:
        reply = call(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as err:
        if err.code() != code:
            raise Mismatch(f"expected {code}, got {err.code()}: {err.details()}") from err
        status = rpc_status.from_call(err)
        if status is None:
            raise Mismatch(f"{code} without google.rpc.Status details: {err.details()}") from err
        return status
    raise Mismatch(f"expected {code}, the call was accepted: {reply}")


def detail(status: status_pb2.Status, message_type: Any) -> Any:
    """The first detail of `status` of type `message_type` (a google.rpc message class)."""
    for packed in status.details:
        if packed.Is(message_type.DESCRIPTOR):
            message = message_type()
            packed.Unpack(message)
            return message
    kinds = [d.type_url for d in status.details]
    raise Mismatch(f"no {message_type.DESCRIPTOR.full_name} among the details {kinds}")


def check_health(channel: grpc.Channel, checks: Checks) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("accrual.v1.CommandService", "accrual.v1.QueryService"):
        request = health_pb2.HealthCheckRequest(service=service)
        reply = health.Check(request, timeout=RPC_TIMEOUT_S)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        checks.equal(status, "SERVING", f"health {service}")


def check_reflection(channel: grpc.Channel, checks: Checks) -> None:
    """The server's descriptors, fetched by reflection, decode in Python's protobuf."""
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    wanted = {"accrual.v1.CommandService", "accrual.v1.QueryService"}
    checks.that(wanted <= services, "reflection lists CommandService and QueryService", services)
    command = DescriptorPool(database).FindServiceByName("accrual.v1.CommandService")
    stream, ingest = command.methods_by_name["StreamUsage"], command.methods_by_name["IngestUsage"]
    shapes = (stream.client_streaming, stream.server_streaming, ingest.server_streaming)
    checks.equal(shapes, (True, False, True), "reflected StreamUsage/IngestUsage streaming")


class Book:
    """The ids and times of one run against a fresh data dir."""

    customer = "py-acme"
    metric = "py_calls"
    plan = "py-growth"
    subscription = "py-sub-1"

    def __init__(self) -> None:
        # The subscription starts a month ago in Berlin (a backdated start): its first period
        # has ended, and a billing run at the server's clock closes it (a run in the future is
        # refused). The usage lies inside that period: noon the day after the start.
        berlin = ZoneInfo("Europe/Berlin")
        self.start_date = month_before(datetime.now(berlin).date())
        noon = datetime.combine(self.start_date + timedelta(days=1), clock_time(12), berlin)
        self.usage_s = int(noon.timestamp())

    def usage(self, tx: str, calls: str, subscription: str | None = None) -> Any:
        return pb["command"].UsageEvent(
            subscription_id=subscription or self.subscription,
            transaction_id=tx,
            metric_code=self.metric,
            occurred_at=timestamp(self.usage_s),
            properties={"calls": calls},
        )


def month_before(day: date) -> date:
    """The same day a month earlier, clamped to that month's last day (as jiff does)."""
    year, month = (day.year, day.month - 1) if day.month > 1 else (day.year - 1, 12)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def growth_plan(book: Book, code: str, currency: str) -> Any:
    """20.00 a month in arrears; calls graduated: 100 at 1.00 (+5 flat), 900 at 0.50, 0.10."""
    c = pb["common"]
    tiers = [
        c.Tier(up_to="100", unit_price="1.00", flat_fee="5"),
        c.Tier(up_to="1000", unit_price="0.50"),
        c.Tier(unit_price="0.10"),
    ]
    charge = c.Charge(metric_code=book.metric, graduated=c.TieredModel(tiers=tiers))
    return pb["command"].PublishPlanRequest(
        idempotency_key=f"plan-{code}",
        code=code,
        name="Growth",
        currency=currency,
        interval="monthly",
        base_fee="20.00",
        charges=[charge],
    )


def register(command: Any, book: Book, checks: Checks) -> None:
    """RegisterCustomer twice with one idempotency key: the second is a replay."""
    request = pb["command"].RegisterCustomerRequest(
        idempotency_key="py-cust-acme",
        customer_id=book.customer,
        name="Acme (Python)",
        currency="USD",
        time_zone="Europe/Berlin",
        tax_rate="10",
    )
    first = command.RegisterCustomer(request, timeout=RPC_TIMEOUT_S)
    checks.equal((first.events_appended, first.duplicate), (1, False), "RegisterCustomer appends")
    again = command.RegisterCustomer(request, timeout=RPC_TIMEOUT_S)
    checks.equal(
        (again.duplicate, again.position, again.events_appended),
        (True, first.position, 0),
        "RegisterCustomer replay is the original ack",
    )


def set_up_books(command: Any, book: Book, checks: Checks) -> None:
    """Customer, metric, plan and an active subscription."""
    register(command, book, checks)
    metric = pb["command"].DefineMetricRequest(
        idempotency_key="py-metric", code=book.metric, name="Calls", aggregation="sum",
        property="calls",
    )
    checks.equal(command.DefineMetric(metric, timeout=RPC_TIMEOUT_S).events_appended, 1,
                 "DefineMetric appends")
    plan = command.PublishPlan(growth_plan(book, book.plan, "USD"), timeout=RPC_TIMEOUT_S)
    checks.equal(plan.version, 1, "PublishPlan version")
    start = pb["command"].StartSubscriptionRequest(
        idempotency_key="py-start", subscription_id=book.subscription,
        customer_id=book.customer, plan_code=book.plan, start_date=book.start_date.isoformat(),
    )
    sub = command.StartSubscription(start, timeout=RPC_TIMEOUT_S)
    checks.equal((sub.status, sub.stream_version), ("active", 0), "StartSubscription")


def stream_usage(command: Any, book: Book, checks: Checks) -> int:
    """Client streaming: one reply with a result per item, in order. Returns tx-1's position."""
    items = [
        book.usage("tx-1", "200"),
        book.usage("tx-2", "30"),
        book.usage("tx-3", "lots"),
        book.usage("tx-1", "200"),
    ]
    reply = command.StreamUsage(iter(items), timeout=RPC_TIMEOUT_S)
    got = [(r.status, r.code) for r in reply.results]
    bad = INVALID_ARGUMENT.value[0]
    want = [("accepted", 0), ("accepted", 0), ("rejected", bad), ("duplicate", 0)]
    checks.equal(got, want, "StreamUsage per-item results")
    counts = (reply.accepted, reply.duplicates, reply.rejected)
    checks.equal(counts, (2, 1, 1), "StreamUsage accepted/duplicates/rejected")
    positions = (reply.results[3].position, reply.results[0].position)
    checks.that(positions[0] == positions[1], "a duplicate reports the original position", positions)
    checks.that("calls" in reply.results[2].message, "the rejection names the property",
                reply.results[2].message)
    return reply.results[0].position


def ingest_usage(command: Any, book: Book, checks: Checks) -> int:
    """Bidi streaming: each batch acknowledged with per-item results. Returns the last position."""
    batches = [
        pb["command"].UsageBatch(events=[book.usage("tx-4", "20"), book.usage("tx-2", "30")]),
        pb["command"].UsageBatch(
            events=[book.usage("tx-5", "0"), book.usage("tx-6", "1", subscription="py-ghost")]
        ),
    ]
    acks = list(command.IngestUsage(iter(batches), timeout=RPC_TIMEOUT_S))
    got = [(a.accepted, a.duplicates, a.rejected) for a in acks]
    checks.equal(got, [(1, 1, 0), (1, 0, 1)], "IngestUsage one ack per batch")
    ghost = acks[1].results[1]
    checks.equal((ghost.status, ghost.code), ("rejected", grpc.StatusCode.NOT_FOUND.value[0]),
                 "IngestUsage rejects an unknown subscription per item")
    return acks[1].results[0].position


def current_usage(query: Any, book: Book, checks: Checks, seen: int) -> None:
    """The draft of the open period once the read model includes position `seen`."""
    request = pb["query"].CurrentUsageQuery(subscription_id=book.subscription, min_position=seen)
    view = query.GetCurrentUsage(request, timeout=RPC_TIMEOUT_S)
    checks.that(view.position >= seen, f"GetCurrentUsage reflects position {seen}", view.position)
    draft = view.invoice
    lines = [(line.kind, dec(line.amount)) for line in draft.lines]
    # 250 calls graduated: 100 × 1.00 + 5 + 150 × 0.50 = 180.00; 10 % tax on 200.00.
    checks.equal(lines, [("base_fee", dec("20.00")), ("usage", dec("180.00"))], "draft lines")
    checks.equal((draft.status, dec(draft.total)), ("draft", dec("220.00")), "draft total")
    future = pb["query"].CurrentUsageQuery(subscription_id=book.subscription, min_position=seen + 10**6)
    try:
        query.GetCurrentUsage(future, timeout=3.0)
        raise Mismatch("a min_position far ahead of the log was answered")
    except grpc.RpcError as err:
        checks.equal(err.code(), grpc.StatusCode.OUT_OF_RANGE, "min_position beyond the log head")


def bill(command: Any, query: Any, book: Book, checks: Checks) -> Any:
    """RunBilling at the clock closes the first period; the query side lists the invoice."""
    as_of = timestamp(int(time.time()))
    run = command.RunBilling(
        pb["command"].RunBillingRequest(idempotency_key="py-bill", as_of=as_of), timeout=RPC_TIMEOUT_S
    )
    checks.equal((run.periods_closed, len(run.invoices)), (1, 1), "RunBilling closes one period")
    issued = run.invoices[0]
    mine = pb["query"].ListInvoicesRequest(customer_id=book.customer, min_position=run.ack.position)
    listed = query.ListInvoices(mine, timeout=RPC_TIMEOUT_S)
    rows = [(i.invoice_id, i.status, dec(i.total), dec(i.amount_due)) for i in listed.invoices]
    want = [(issued.invoice_id, "open", dec("220.00"), dec("220.00"))]
    checks.equal(rows, want, "ListInvoices after RunBilling (read-your-writes)")
    return issued


def bad_request(command: Any, query: Any, checks: Checks) -> None:
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming each bad field."""
    bad = pb["command"].RegisterCustomerRequest(customer_id="bad id!", name="x", currency="XYZ")
    violations = detail(refused(command.RegisterCustomer, bad, INVALID_ARGUMENT),
                        error_details_pb2.BadRequest).field_violations
    fields = [v.field for v in violations]
    checks.equal(fields, ["currency", "customer_id"], "BadRequest field violations")
    checks.that(all(v.description for v in violations), "each violation is described", violations)
    too_big = pb["query"].ListInvoicesRequest(page_size=1_001)
    violations = detail(refused(query.ListInvoices, too_big, INVALID_ARGUMENT),
                        error_details_pb2.BadRequest).field_violations
    checks.equal([v.field for v in violations], ["page_size"], "query BadRequest field")


def not_found(command: Any, query: Any, book: Book, checks: Checks) -> None:
    """NOT_FOUND with a google.rpc.ResourceInfo naming the unknown id."""
    start = pb["command"].StartSubscriptionRequest(
        subscription_id="py-sub-2", customer_id=book.customer, plan_code="nope"
    )
    status = refused(command.StartSubscription, start, grpc.StatusCode.NOT_FOUND)
    checks.equal(detail(status, error_details_pb2.ResourceInfo).resource_name, "nope",
                 "NOT_FOUND ResourceInfo.resource_name")
    ghost = pb["query"].InvoiceQuery(invoice_id="inv-ghost")
    status = refused(query.GetInvoice, ghost, grpc.StatusCode.NOT_FOUND)
    info = detail(status, error_details_pb2.ResourceInfo)
    checks.equal((info.resource_type, info.resource_name), ("invoice", "inv-ghost"),
                 "query NOT_FOUND ResourceInfo")


def preconditions(command: Any, book: Book, checks: Checks) -> None:
    """FAILED_PRECONDITION (PreconditionFailure) and ABORTED (ErrorInfo) on ChangePlan."""
    eur = growth_plan(book, "py-growth-eur", "EUR")
    command.PublishPlan(eur, timeout=RPC_TIMEOUT_S)
    change = pb["command"].ChangePlanRequest(subscription_id=book.subscription, plan_code=eur.code)
    status = refused(command.ChangePlan, change, grpc.StatusCode.FAILED_PRECONDITION)
    violation = detail(status, error_details_pb2.PreconditionFailure).violations[0]
    checks.equal(violation.type, "CURRENCY_MISMATCH", "PreconditionFailure type")
    stale = pb["command"].ChangePlanRequest(
        subscription_id=book.subscription, plan_code=book.plan, expected_version=7
    )
    info = detail(refused(command.ChangePlan, stale, grpc.StatusCode.ABORTED),
                  error_details_pb2.ErrorInfo)
    checks.equal(info.reason, "WRONG_EXPECTED_VERSION", "ABORTED ErrorInfo reason")
    checks.that("7" in info.metadata["expected"] and "actual" in info.metadata,
                "ABORTED ErrorInfo names the expected and actual versions", dict(info.metadata))
    print(f"   ErrorInfo.metadata {dict(info.metadata)}", flush=True)


def errors(command: Any, query: Any, book: Book, checks: Checks, anonymous: str | None) -> int:
    """Every refused call appends nothing: a probe lands right after the one accepted plan.
    With `anonymous` (the address, when access control is on) a tokenless call is refused too."""
    before = command.DefineMetric(
        pb["command"].DefineMetricRequest(code="py_before", name="Before", aggregation="count"),
        timeout=RPC_TIMEOUT_S,
    ).position
    bad_request(command, query, checks)
    not_found(command, query, book, checks)
    preconditions(command, book, checks)
    if anonymous:
        unauthenticated(anonymous, checks)
    reused = pb["command"].RegisterCustomerRequest(
        idempotency_key="py-cust-acme", customer_id="other", name="Other", currency="USD"
    )
    try:
        command.RegisterCustomer(reused, timeout=RPC_TIMEOUT_S)
        raise Mismatch("a reused idempotency key with another payload was accepted")
    except grpc.RpcError as err:
        checks.equal(err.code(), grpc.StatusCode.ALREADY_EXISTS, "reused idempotency key")
    probe = pb["command"].DefineMetricRequest(code="py_probe", name="Probe", aggregation="count")
    after = command.DefineMetric(probe, timeout=RPC_TIMEOUT_S).position
    checks.equal(after, before + 2, "refused calls appended nothing (EUR plan + probe only)")
    return after


def open_channel(address: str, token: str | None) -> grpc.Channel:
    """Plaintext to a loopback server; with a token, sent as `authorization: Bearer <token>`
    (gRPC sends call credentials only over a channel it deems secure: a local TCP one is)."""
    if not token:
        return grpc.insecure_channel(address)
    local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    bearer = grpc.access_token_call_credentials(token)
    return grpc.secure_channel(address, grpc.composite_channel_credentials(local, bearer))


def unauthenticated(address: str, checks: Checks) -> None:
    """Without the token, a command is UNAUTHENTICATED (and appends nothing)."""
    with grpc.insecure_channel(address) as channel:
        command = pb["command_grpc"].CommandServiceStub(channel)
        metric = pb["command"].DefineMetricRequest(code="py_anon", name="A", aggregation="count")
        try:
            command.DefineMetric(metric, timeout=RPC_TIMEOUT_S)
            raise Mismatch("a command without the bearer token was accepted")
        except grpc.RpcError as err:
            checks.equal(err.code(), grpc.StatusCode.UNAUTHENTICATED, "a call without the token")


def run(address: str, proto_dir: Path, token: str | None) -> dict[str, Any]:
    checks, book = Checks(), Book()
    with tempfile.TemporaryDirectory(prefix="accrual-stubs-") as out_dir:
        generate_stubs(proto_dir, Path(out_dir))
        with open_channel(address, token) as channel:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
            command = pb["command_grpc"].CommandServiceStub(channel)
            query = pb["query_grpc"].QueryServiceStub(channel)
            check_health(channel, checks)
            check_reflection(channel, checks)
            set_up_books(command, book, checks)
            stream_usage(command, book, checks)
            seen = ingest_usage(command, book, checks)
            current_usage(query, book, checks, seen)
            invoice = bill(command, query, book, checks)
            last = errors(command, query, book, checks, address if token else None)
    return {
        "checks": checks.passed,
        "last_position": last,
        "invoice_id": invoice.invoice_id,
        "invoice_total": invoice.total,
        "customer_id": book.customer,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="host:port of accrual serve")
    parser.add_argument("--proto-dir", required=True, type=Path, help="the repository's proto/")
    parser.add_argument("--token", default=os.environ.get("ACCRUAL_TOKEN"),
                        help="bearer token (default: $ACCRUAL_TOKEN); none: no access control")
    args = parser.parse_args()
    try:
        result = run(args.address, args.proto_dir.resolve(), args.token)
    except (Mismatch, grpc.RpcError, grpc.FutureTimeoutError) as err:
        print(f"FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"interop: {result['checks']} checks passed against {args.address}", flush=True)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
