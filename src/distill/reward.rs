//! Rewards of RL + GKD (`--reward`): a number per sampled completion, from the decoded completion
//! (special tokens dropped) and the example's reference completion (the dataset's "completion").
//!
//! - `exact-match`: 1 when the final answers match (`eval::exact_match`), else 0;
//! - `rouge`: ROUGE-L F-measure (`eval::rouge`), in [0, 1];
//! - `bleu`: sentence BLEU (`eval::corpus_bleu` of the one pair, sacrebleu's defaults) / 100, in [0, 1];
//! - `cmd:PROGRAM [ARGS…]`: PROGRAM (split on whitespace, no shell) runs once per step, reads one
//!   JSON line per sample `{"prompt": str, "completion": str, "reference": str}` on its standard
//!   input and writes one number per line, in order, on its standard output. A program that cannot
//!   start, exits non-zero, runs past the timeout (it is killed, with its process group), or writes
//!   a line that is not a finite number or the wrong number of lines is an error naming the cause.

use crate::error::{Error, Result};
use crate::eval::{corpus_bleu, exact_match, rouge};
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The reward names `--reward` takes (besides `cmd:PROGRAM`).
pub const REWARD_NAMES: [&str; 3] = ["exact-match", "rouge", "bleu"];

/// Default of `--reward-timeout`, in seconds.
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;

/// How much of a failed program's standard error an error message quotes (its end).
const STDERR_TAIL: usize = 2000;

#[derive(Clone, Debug, PartialEq)]
pub enum Reward {
    ExactMatch,
    RougeL,
    Bleu,
    /// An external scorer: the program, its arguments and how long one call may take.
    Command {
        program: String,
        args: Vec<String>,
        timeout: Duration,
    },
}

/// One sample to score: the prompt, the decoded completion and the reference completion.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RewardInput {
    pub prompt: String,
    pub completion: String,
    pub reference: String,
}

impl Reward {
    /// `exact-match`, `rouge`, `bleu` or `cmd:PROGRAM [ARGS…]`; `timeout_s` bounds one call of a
    /// program.
    pub fn parse(spec: &str, timeout_s: f64) -> Result<Reward> {
        if let Some(cmd) = spec.strip_prefix("cmd:") {
            let mut words = cmd.split_whitespace().map(str::to_string);
            let Some(program) = words.next() else {
                return Err(Error::Msg(
                    "--reward cmd: needs a program after `cmd:` (e.g. --reward \"cmd:python3 score.py\")"
                        .into(),
                ));
            };
            if !(timeout_s > 0.0 && timeout_s.is_finite()) {
                return Err(Error::Msg(format!(
                    "--reward-timeout must be a positive number of seconds, got {timeout_s}"
                )));
            }
            return Ok(Reward::Command {
                program,
                args: words.collect(),
                timeout: Duration::from_secs_f64(timeout_s),
            });
        }
        match spec {
            "exact-match" => Ok(Reward::ExactMatch),
            "rouge" => Ok(Reward::RougeL),
            "bleu" => Ok(Reward::Bleu),
            other => Err(Error::Msg(format!(
                "unknown reward `{other}`: use {} or cmd:PROGRAM",
                REWARD_NAMES.join(", ")
            ))),
        }
    }

    /// One reward per input, in order.
    pub fn score(&self, inputs: &[RewardInput]) -> Result<Vec<f64>> {
        match self {
            Reward::ExactMatch => Ok(inputs
                .iter()
                .map(|s| f64::from(u8::from(exact_match(&s.completion, &s.reference))))
                .collect()),
            Reward::RougeL => {
                Ok(inputs.iter().map(|s| rouge(&s.completion, &s.reference).rouge_l.fmeasure).collect())
            }
            Reward::Bleu => inputs
                .iter()
                // ≤ 1 but for rounding (a perfect match scores 100 + 1 ulp).
                .map(|s| Ok((corpus_bleu(&[&s.completion], &[&s.reference])?.score / 100.0).clamp(0.0, 1.0)))
                .collect(),
            Reward::Command { program, args, timeout } => run_program(program, args, *timeout, inputs),
        }
    }
}

impl std::fmt::Display for Reward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reward::ExactMatch => write!(f, "exact-match"),
            Reward::RougeL => write!(f, "rouge"),
            Reward::Bleu => write!(f, "bleu"),
            Reward::Command { program, args, .. } => {
                write!(f, "cmd:{program}")?;
                args.iter().try_for_each(|a| write!(f, " {a}"))
            }
        }
    }
}

/// The program's rewards for `inputs`; see the module documentation.
fn run_program(
    program: &str,
    args: &[String],
    timeout: Duration,
    inputs: &[RewardInput],
) -> Result<Vec<f64>> {
    let name = std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    let fail = |what: String| Error::Msg(format!("the reward program `{name}` {what}"));
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own process group, so that a timeout stops whatever it started too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| {
        fail(format!(
            "cannot be started: {e} (check that the program exists, is executable and is on PATH; the command is split on whitespace and run without a shell)"
        ))
    })?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("has no standard input".into()))?;
    let mut text = String::new();
    for s in inputs {
        text.push_str(&serde_json::to_string(s).map_err(|e| fail(format!("input: {e}")))?);
        text.push('\n');
    }
    // Writer and readers on their own threads: a program may write before it has read everything.
    let writer = std::thread::spawn(move || {
        // A program that exits without reading all its input is judged by its exit and output.
        let _ = stdin.write_all(text.as_bytes());
    });
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = match wait_for(&mut child, timeout)
        .map_err(|e| fail(format!("could not be waited for: {e}")))?
    {
        Some(s) => s,
        None => {
            kill_group(&mut child);
            return Err(fail(format!(
                "ran past the reward timeout of {} s and was stopped (make it faster, or raise --reward-timeout)",
                timeout.as_secs_f64()
            )));
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let tail = tail(stderr.trim_end(), STDERR_TAIL);
        let code = status
            .code()
            .map_or_else(|| format!("was killed ({status})"), |c| format!("exited with status {c}"));
        return Err(fail(if tail.is_empty() {
            format!("{code} and wrote nothing on its standard error")
        } else {
            format!("{code}; the end of its standard error:\n{tail}")
        }));
    }
    let stdout = String::from_utf8_lossy(&stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.len() != inputs.len() {
        return Err(fail(format!(
            "wrote {} lines for {} samples: it must write exactly one number per line, one line per sample, in the order of its input",
            lines.len(),
            inputs.len()
        )));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| match l.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(fail(format!(
                "wrote `{l}` on line {} (the reward of sample {i}, counting from 0), which is not a finite number",
                i + 1
            ))),
        })
        .collect()
}

/// The exit status, or None when `timeout` passes first.
fn wait_for(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5).min(timeout));
    }
}

/// Kills the program and everything in its process group, then reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads (it was
        // spawned with process_group(0)); it touches no memory of this process.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `max` bytes of `s` (on a character boundary).
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// The mean of `rewards` per group of `k` consecutive samples subtracted from each (the
/// per-prompt baseline of the policy gradient): A_s = r_s − mean of its prompt's K rewards.
pub fn advantages(rewards: &[f64], k: usize) -> Vec<f64> {
    rewards
        .chunks(k.max(1))
        .flat_map(|g| {
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            g.iter().map(move |r| r - mean)
        })
        .collect()
}

/// Mean and (population) standard deviation.
pub fn mean_std(x: &[f64]) -> (f64, f64) {
    if x.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}
