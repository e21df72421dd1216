//! One module per subcommand.

pub mod bench;
pub mod data;
pub mod doctor;
pub mod generate;
pub mod init;
pub mod score;
