//! The divergences of generalized knowledge distillation, as every backend receives them: which
//! divergence, its parameter, and the command-line names. The math, and the gradient each backend
//! computes, are written out in `cpu/divergence.rs` (the reference).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Divergence {
    ForwardKl,
    ReverseKl,
    Jsd { beta: f64 },
    Tvd,
    SkewForwardKl { alpha: f64 },
    SkewReverseKl { alpha: f64 },
}

/// The command-line names, in the order of the enum.
pub const DIVERGENCE_NAMES: [&str; 6] = ["fkl", "rkl", "jsd", "tvd", "skew-fkl", "skew-rkl"];

/// β of `jsd` and α of the skew divergences when the name carries no value (TRL's GKD default
/// β = 0.5; DistiLLM's α = 0.1).
pub const DEFAULT_BETA: f64 = 0.5;
pub const DEFAULT_ALPHA: f64 = 0.1;

impl Divergence {
    /// From a command-line name (`fkl|rkl|jsd|tvd|skew-fkl|skew-rkl`); `beta` is used by `jsd`,
    /// `alpha` by the skew divergences, each ignored otherwise.
    pub fn from_cli(name: &str, beta: f64, alpha: f64) -> Result<Divergence> {
        let d = match name {
            "fkl" => Divergence::ForwardKl,
            "rkl" => Divergence::ReverseKl,
            "jsd" => Divergence::Jsd { beta },
            "tvd" => Divergence::Tvd,
            "skew-fkl" => Divergence::SkewForwardKl { alpha },
            "skew-rkl" => Divergence::SkewReverseKl { alpha },
            _ => {
                return Err(Error::Msg(format!(
                    "unknown divergence `{name}`: use one of {}",
                    DIVERGENCE_NAMES.join(", ")
                )))
            }
        };
        d.validate()
    }

    /// The divergence itself when its parameter is in range: 0 ≤ β ≤ 1, 0 ≤ α < 1.
    pub fn validate(self) -> Result<Divergence> {
        match self {
            Divergence::Jsd { beta } if !(0.0..=1.0).contains(&beta) => Err(Error::Msg(format!(
                "jsd: beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}"
            ))),
            Divergence::SkewForwardKl { alpha } | Divergence::SkewReverseKl { alpha }
                if !(0.0..1.0).contains(&alpha) =>
            {
                Err(Error::Msg(format!(
                    "{}: alpha must be in [0, 1) (α = 1 makes the divergence 0), got {alpha}",
                    self.name()
                )))
            }
            d => Ok(d),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Divergence::ForwardKl => "fkl",
            Divergence::ReverseKl => "rkl",
            Divergence::Jsd { .. } => "jsd",
            Divergence::Tvd => "tvd",
            Divergence::SkewForwardKl { .. } => "skew-fkl",
            Divergence::SkewReverseKl { .. } => "skew-rkl",
        }
    }

    /// The formula that is computed: JSD(0) → forward KL, JSD(1) → reverse KL, skew KL with
    /// α = 0 → the plain KL; anything else unchanged.
    pub fn canonical(self) -> Divergence {
        match self {
            Divergence::Jsd { beta: 0.0 } => Divergence::ForwardKl,
            Divergence::Jsd { beta: 1.0 } => Divergence::ReverseKl,
            Divergence::SkewForwardKl { alpha: 0.0 } => Divergence::ForwardKl,
            Divergence::SkewReverseKl { alpha: 0.0 } => Divergence::ReverseKl,
            d => d,
        }
    }
}

/// `fkl`, `rkl`, `tvd`, `jsd` (β = 0.5), `jsd:0.9`, `skew-fkl` (α = 0.1), `skew-rkl:0.2`.
impl FromStr for Divergence {
    type Err = Error;
    fn from_str(s: &str) -> Result<Divergence> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => {
                let x = v
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| Error::Msg(format!("divergence `{s}`: `{v}` is not a number")))?;
                if !matches!(n, "jsd" | "skew-fkl" | "skew-rkl") {
                    return Err(Error::Msg(format!(
                        "divergence `{s}`: only jsd, skew-fkl and skew-rkl take a parameter"
                    )));
                }
                (n, Some(x))
            }
            None => (s, None),
        };
        Divergence::from_cli(name, value.unwrap_or(DEFAULT_BETA), value.unwrap_or(DEFAULT_ALPHA))
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Divergence::Jsd { beta: x }
            | Divergence::SkewForwardKl { alpha: x }
            | Divergence::SkewReverseKl { alpha: x } => write!(f, "{}:{x}", self.name()),
            d => f.write_str(d.name()),
        }
    }
}
