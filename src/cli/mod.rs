//! One module per subcommand.

pub mod bench;
pub mod compute;
pub mod data;
pub mod demo;
pub mod distill;
pub mod doctor;
pub mod eval;
pub mod generate;
pub mod init;
pub mod score;
pub mod sft;
