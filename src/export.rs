//! `accrual export`: read models as CSV or JSON for analysts and auditors.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportKind {
    Invoices,
    Journal,
    TrialBalance,
    RevenueWaterfall,
    MrrMovements,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// What to export.
    #[arg(value_enum)]
    pub kind: ExportKind,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Data directory of a stopped `accrual serve`, or the output of `accrual replay`.
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    anyhow::bail!("accrual export is not built yet: {args:?}")
}
