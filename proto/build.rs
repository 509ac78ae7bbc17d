//! Compiles `accrual/v1/*.proto` with protox (pure Rust, no system protoc) into tonic code,
//! and writes the descriptor set used by gRPC server reflection.

/// Messages reachable from `FeedEvent` (the public event's JSON).
/// (A message's attribute reaches its nested types, `FeedEvent.data` too.)
const PUBLIC_JSON_TYPES: [&str; 15] = [
    ".accrual.v1.FeedEvent",
    ".accrual.v1.Invoice",
    ".accrual.v1.InvoiceLine",
    ".accrual.v1.CouponUse",
    ".accrual.v1.WalletUse",
    ".accrual.v1.AnomalyFlag",
    ".accrual.v1.CreditNote",
    ".accrual.v1.CreditNoteLine",
    ".accrual.v1.UsageEvent",
    ".accrual.v1.InvoiceChange",
    ".accrual.v1.SubscriptionChange",
    ".accrual.v1.WalletChange",
    ".accrual.v1.CatalogChange",
    ".accrual.v1.UsageAlertChange",
    ".accrual.v1.Heartbeat",
];

/// Their `google.protobuf.Timestamp` fields.
const PUBLIC_JSON_TIMESTAMPS: [&str; 6] = [
    ".accrual.v1.FeedEvent.occurred_at",
    ".accrual.v1.FeedEvent.recorded_at",
    ".accrual.v1.Invoice.issued_at",
    ".accrual.v1.CreditNote.issued_at",
    ".accrual.v1.UsageEvent.occurred_at",
    ".accrual.v1.Heartbeat.at",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "accrual/v1/common.proto",
        "accrual/v1/command.proto",
        "accrual/v1/query.proto",
        "accrual/v1/audit.proto",
        "accrual/v1/feed.proto",
        "accrual/v1/webhooks.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("accrual_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Every service's codec: prost's, with undecodable bytes as INVALID_ARGUMENT (src/codec.rs).
    // The feed's public event has a JSON form too (webhook bodies): its message types derive
    // Serialize, timestamps as RFC 3339 strings (`crate::json`).
    let mut config = tonic_build::configure().btree_map(["."]);
    for t in PUBLIC_JSON_TYPES {
        config = config.type_attribute(t, "#[derive(serde::Serialize)]");
    }
    config = config
        .type_attribute(".accrual.v1.FeedEvent.data", "#[serde(rename_all = \"snake_case\")]");
    for f in PUBLIC_JSON_TIMESTAMPS {
        config = config.field_attribute(f, "#[serde(serialize_with = \"crate::json::timestamp\")]");
    }
    config.codec_path("crate::codec::WireCodec").compile_fds(fds)?;
    Ok(())
}
