//! A complete NBD server and Linux kernel NBD attach on top of oxio-block.

pub mod kernel;
