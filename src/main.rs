//! The `gkd` command line.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Every training step allocates and frees the same activation buffers. glibc maps buffers over
/// its mmap threshold fresh from the kernel and unmaps them on free, so each step paid a page
/// fault and a page clear for every page it touched (a fifth of a small model's step): serve
/// them from the heap and keep freed memory there for the next step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[derive(Parser)]
#[command(name = "gkd", version, about = "On-policy knowledge distillation (GKD) of language models on CUDA")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks printed as tables (and JSON): `gkd bench divergence`.
    Bench(cli::bench::BenchArgs),
    /// Write a built-in dataset as prompt/completion JSONL (`gkd data arithmetic --n N --seed S`).
    Data(cli::data::DataArgs),
    /// Report the CPU threads, the CUDA driver, each GPU, and how the kernels were compiled.
    Doctor(cli::doctor::DoctorArgs),
    /// Print ln p(token | previous tokens) for each token of a text or id sequence, as JSON.
    Score(cli::score::ScoreArgs),
    /// Sample continuations of a prompt (greedy, temperature, top-k, top-p), one JSON line each.
    Generate(cli::generate::GenerateArgs),
    /// Write a fresh random model (gpt2, llama, qwen2, mistral) in Hugging Face layout.
    Init(cli::init::InitArgs),
    /// Supervised fine-tuning on completions: `gkd sft --model DIR --data D.jsonl --out DIR`.
    Sft(cli::sft::SftArgs),
    /// Generalized knowledge distillation of a student from a teacher (on-policy, mixed, supervised KD).
    Distill(Box<cli::distill::DistillArgs>),
    /// Generate a completion for every prompt and print exact match, ROUGE or BLEU as JSON.
    Eval(cli::eval::EvalArgs),
    /// The bundled example: distill the small arithmetic student on-policy and compare exact match.
    Demo(cli::demo::DemoArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let args = Args::parse();
    let result = match args.command {
        Command::Bench(a) => cli::bench::run(a),
        Command::Data(a) => cli::data::run(a),
        Command::Doctor(a) => cli::doctor::run(a),
        Command::Score(a) => cli::score::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Sft(a) => cli::sft::run(a),
        Command::Distill(a) => cli::distill::run(*a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Demo(a) => cli::demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
