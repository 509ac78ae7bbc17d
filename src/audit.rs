//! `accrual audit`: walk the log's hash chain (`verify`) and print its head (`digest`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every hash of the log and report the first broken link (non-zero exit).
    Verify(VerifyArgs),
    /// Print the chain head (hash of the last event) at a position, to keep outside the system.
    Digest(DigestArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Data directory of a stopped `accrual serve` (the log is `<dir>/log`).
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
    /// A head hash kept earlier (`audit digest`): the chain must still have it at `--position`.
    #[arg(long, requires = "position")]
    pub digest: Option<String>,
    /// With `--digest`: the position it was taken at (events `[0, N)`).
    #[arg(long, requires = "digest")]
    pub position: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DigestArgs {
    #[arg(long, env = "ACCRUAL_DATA_DIR", default_value = "accrual-data")]
    pub data_dir: PathBuf,
    /// Events `[0, N)`; default: the whole log.
    #[arg(long)]
    pub position: Option<u64>,
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    anyhow::bail!("accrual audit is not built yet: {cmd:?}")
}
