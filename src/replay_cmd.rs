//! `accrual replay`: rebuild read models up to a cutoff into a fresh directory; `replay verify`.

use clap::Args;

#[derive(Args, Debug)]
pub struct ReplayArgs {}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::bail!("accrual replay is not built yet: {args:?}")
}
