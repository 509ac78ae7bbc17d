//! `accrual demo`: a short simulation exits 0, its trial balance balances, and the same seed
//! prints the same report.

use std::process::Command;

fn demo(seed: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_accrual"))
        .args(["demo", "--seed", seed, "--months", "2"])
        .output()
        .expect("run accrual demo");
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 report")
}

#[test]
fn demo_balances_and_is_deterministic() {
    let first = demo("7");
    assert!(first.contains("trial balance: balances"), "report:\n{first}");
    assert!(first.contains("MRR by month"), "report:\n{first}");
    assert_eq!(first, demo("7"), "same seed, same report");
}
