//! Shared by the tests that run the `gkd` binary as a user does.
#![allow(dead_code)]

use std::process::Command;

/// Runs `gkd args`: (exit status success, stdout, stderr).
pub fn gkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gkd")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs `gkd args`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = gkd(args);
    assert!(success, "gkd {args:?} failed: {stderr}");
    stdout
}

/// Runs `gkd args`, which must fail; its stderr.
pub fn fails(args: &[&str]) -> String {
    let (success, _, stderr) = gkd(args);
    assert!(!success, "gkd {args:?} should have failed");
    stderr
}
