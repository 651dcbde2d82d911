//! Subcommands. Each lives in its own file; this module only lists them.

use clap::{Parser, Subcommand};

pub mod increment;
pub mod memory_node;
pub mod probe;
pub mod serve;
pub mod vhost_user;

/// Any error a subcommand reports, printed with its chain of causes.
pub type CmdError = Box<dyn std::error::Error + Send + Sync>;

/// oxio runs devices in user space: virtio devices served to VMMs over vhost-user, an NBD
/// server and kernel NBD attach, and OmniXtend remote memory as a block device.
#[derive(Debug, Parser)]
#[command(name = "oxio", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. New ones add a variant here and a file beside this one.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve block devices over NBD (TCP, Unix sockets, systemd socket activation).
    Serve(serve::ServeArgs),
    /// Write or verify the seed's incrementing 32-bit test pattern.
    MakeIncrementFile(increment::IncrementArgs),
    // Help text (short and long) comes from the argument struct.
    MemoryNode(memory_node::MemoryNodeArgs),
    /// OmniXtend tools (probe a memory node).
    #[command(subcommand)]
    Omnixtend(probe::OmnixtendCommand),
    /// Serve virtio devices to a VMM over vhost-user (blk).
    #[command(subcommand)]
    VhostUser(vhost_user::VhostUserCommand),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> Result<(), CmdError> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::MakeIncrementFile(args) => increment::run(args),
        Command::MemoryNode(args) => memory_node::run(args),
        Command::Omnixtend(cmd) => probe::run(cmd),
        Command::VhostUser(cmd) => vhost_user::run(cmd),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
