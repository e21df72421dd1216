//! `gkd data`: write the built-in datasets as prompt/completion JSONL.

use anyhow::{Context, Result};
use gkd::data::{arithmetic, read_jsonl, write_jsonl, write_jsonl_to};
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    task: Task,
}

#[derive(clap::Subcommand)]
enum Task {
    /// GSM8K-like multi-step arithmetic word problems with a worked solution ending in `#### answer`.
    Arithmetic(ArithmeticArgs),
}

#[derive(clap::Args)]
struct ArithmeticArgs {
    /// Number of problems.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed: the same seed gives the same file; use different seeds for training and held-out sets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output JSONL file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave out problems whose prompt is in this JSONL file (the training set, when writing a
    /// held-out set).
    #[arg(long)]
    exclude: Option<PathBuf>,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.task {
        Task::Arithmetic(a) => {
            let examples: Vec<_> = match &a.exclude {
                None => arithmetic::generate_examples(a.n, a.seed),
                Some(path) => {
                    let exclude: HashSet<String> =
                        read_jsonl(path, false)?.into_iter().map(|e| e.prompt).collect();
                    arithmetic::generate_excluding(a.n, a.seed, &exclude)?
                        .iter()
                        .map(|p| p.example())
                        .collect()
                }
            };
            match &a.out {
                Some(path) => {
                    write_jsonl(path, &examples)?;
                    eprintln!("wrote {} arithmetic problems (seed {}) to {}", a.n, a.seed, path.display());
                }
                None => write_jsonl_to(std::io::stdout().lock(), &examples)
                    .context("writing to standard output")?,
            }
            Ok(())
        }
    }
}
