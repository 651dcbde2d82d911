//! VirtIO device emulation.
